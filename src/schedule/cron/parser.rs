//! The cron grammar: tokenizes and validates an expression into a [`FieldSet`], with an
//! error message and the byte span of the offending field or token for everything it
//! rejects.
//!
//! We keep our own parser rather than a crate's because the grammar is a contract: it
//! must reject what is outside it (Quartz `W`, `L-2`, `*/60`, seconds fields, ...) with a
//! message that names the field, and give the config loader a span to turn into
//! `file:line:col`. Libraries accept supersets and report errors without positions.

use std::ops::Range;

use super::CronError;
use super::fields::{FieldKind, FieldSet, MONTH_LONG_NAMES};

/// Macros and the five-field expression each stands for.
const MACROS: [(&str, &str); 7] = [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

/// Years whose calendars, taken together, contain every (leap year, weekday of Jan 1)
/// combination: the Gregorian day/weekday pattern repeats every 28 years between 1901 and
/// 2099, so an expression that fires on no day of 2001..=2030 fires on no day at all.
const NEVER_FIRES_YEARS: std::ops::RangeInclusive<i32> = 2001..=2030;

fn error(message: impl Into<String>, span: Range<usize>) -> CronError {
    CronError {
        message: message.into(),
        span: Some(span),
    }
}

/// One field's parsed value, before the fields are combined.
#[derive(Default)]
struct FieldValue {
    /// Plain values (for day-of-week 0..=7, 7 not yet folded into 0).
    bits: u64,
    /// Exactly `*` or `?`.
    unrestricted: bool,
    /// Day-of-month `L`.
    last_day: bool,
    /// Day-of-week `n#k`: per weekday, bits 1..=5.
    nth: [u8; 7],
    /// Day-of-week `nL`: bits 0..=6.
    last_weekdays: u8,
}

/// Parses a whole expression (five fields or a macro).
pub(crate) fn parse(expr: &str) -> Result<FieldSet, CronError> {
    let start = expr.len() - expr.trim_start().len();
    let end = expr.trim_end().len();
    if start >= end {
        return Err(CronError {
            message: "empty cron expression: expected 5 fields (minute hour day-of-month \
                      month day-of-week) or a macro such as @daily"
                .into(),
            span: Some(0..expr.len()),
        });
    }
    let body = &expr[start..end];
    if body.starts_with('@') {
        return parse_macro(body, start);
    }

    // A field never contains whitespace other than the separators: say so before the
    // field count comes out wrong because of, say, a no-break space.
    if let Some((i, c)) = body
        .char_indices()
        .find(|(_, c)| c.is_whitespace() && *c != ' ' && *c != '\t')
    {
        let at = start + i;
        return Err(error(
            format!(
                "unexpected character {}: fields are separated by spaces or tabs",
                describe_char(c)
            ),
            at..at + c.len_utf8(),
        ));
    }

    let fields = split_fields(expr, start, end);
    if fields.len() != 5 {
        let mut message = format!(
            "expected 5 fields (minute hour day-of-month month day-of-week), found {}",
            fields.len()
        );
        if fields.len() > 5 {
            message.push_str("; seconds and year fields are not supported");
        }
        let span = if fields.len() > 5 {
            fields[5].0.start..end
        } else {
            start..end
        };
        return Err(error(message, span));
    }

    let mut values = Vec::with_capacity(5);
    for (kind, (span, text)) in FieldKind::ALL.into_iter().zip(&fields) {
        values.push(parse_field(kind, text, span.start)?);
    }
    let set = combine(&values);
    check_fires(&set, &fields[2])?;
    Ok(set)
}

fn parse_macro(body: &str, offset: usize) -> Result<FieldSet, CronError> {
    let word_len = body.find([' ', '\t']).unwrap_or(body.len());
    let word = &body[..word_len];
    let word_span = offset..offset + word_len;
    let lower = word.to_ascii_lowercase();
    let Some((_, expansion)) = MACROS.iter().find(|(name, _)| *name == lower) else {
        if lower == "@reboot" {
            return Err(error(
                "@reboot is not supported: schedules fire at clock times, not at start-up",
                word_span,
            ));
        }
        let names: Vec<&str> = MACROS.iter().map(|(name, _)| *name).collect();
        let hint = match closest(&lower, &names) {
            Some(best) => format!(" (did you mean {best}?)"),
            None => format!(" (expected one of {})", names.join(", ")),
        };
        return Err(error(format!("unknown macro {word:?}{hint}"), word_span));
    };
    if word_len < body.len() {
        let rest = body[word_len..].trim_start();
        let rest_start = offset + body.len() - rest.len();
        return Err(error(
            format!("a macro stands alone: unexpected {rest:?} after {word}"),
            rest_start..offset + body.len(),
        ));
    }
    parse(expansion)
}

/// Splits `expr[start..end]` at runs of spaces and tabs, keeping each field's span.
fn split_fields(expr: &str, start: usize, end: usize) -> Vec<(Range<usize>, &str)> {
    let mut fields = Vec::new();
    let mut field_start = None;
    for (i, byte) in expr.as_bytes()[start..end].iter().enumerate() {
        let at = start + i;
        if *byte == b' ' || *byte == b'\t' {
            if let Some(s) = field_start.take() {
                fields.push((s..at, &expr[s..at]));
            }
        } else if field_start.is_none() {
            field_start = Some(at);
        }
    }
    if let Some(s) = field_start {
        fields.push((s..end, &expr[s..end]));
    }
    fields
}

fn parse_field(kind: FieldKind, text: &str, offset: usize) -> Result<FieldValue, CronError> {
    let name = kind.name();
    let is_day_field = matches!(kind, FieldKind::DayOfMonth | FieldKind::DayOfWeek);
    let span = offset..offset + text.len();
    if text == "*" || (text == "?" && is_day_field) {
        let mut value = FieldValue {
            unrestricted: true,
            ..FieldValue::default()
        };
        add_range(&mut value, kind.min(), kind.max(), 1);
        return Ok(value);
    }
    if text == "?" {
        return Err(error(
            format!("{name}: `?` is only allowed in day-of-month and day-of-week"),
            span,
        ));
    }

    let mut value = FieldValue::default();
    let mut item_start = 0;
    for (i, item) in text.split(',').enumerate() {
        let at = offset + item_start;
        if item.is_empty() {
            // Point at the comma(s) around the missing item.
            let before = if i > 0 { at - 1 } else { at };
            let after = if item_start < text.len() { at + 1 } else { at };
            return Err(error(format!("{name}: empty item in list"), before..after));
        }
        parse_item(kind, item, at, &mut value)?;
        item_start += item.len() + 1;
    }
    Ok(value)
}

fn parse_item(
    kind: FieldKind,
    item: &str,
    offset: usize,
    value: &mut FieldValue,
) -> Result<(), CronError> {
    let name = kind.name();
    let span = offset..offset + item.len();
    if let Some(bad) = item.char_indices().find(|(_, c)| !is_token_char(*c)) {
        let (i, c) = bad;
        let what = if c == '?' {
            if matches!(kind, FieldKind::DayOfMonth | FieldKind::DayOfWeek) {
                format!("{name}: `?` must be the whole field, not part of a list")
            } else {
                format!("{name}: `?` is only allowed in day-of-month and day-of-week")
            }
        } else {
            format!("{name}: unexpected character {}", describe_char(c))
        };
        return Err(error(what, offset + i..offset + i + c.len_utf8()));
    }
    let upper = item.to_ascii_uppercase();

    match kind {
        FieldKind::DayOfMonth => {
            if upper == "L" {
                value.last_day = true;
                return Ok(());
            }
            let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
            if let Some(before_w) = upper.strip_suffix('W')
                && (digits(before_w) || before_w == "L")
            {
                return Err(error(
                    format!("{name}: `W` (nearest weekday) is not supported"),
                    span,
                ));
            }
            if upper.starts_with('L') || upper.strip_suffix('L').is_some_and(digits) {
                return Err(error(
                    format!(
                        "{name}: {item:?} is not supported; `L` (the last day of the month) \
                         must stand alone as a list item"
                    ),
                    span,
                ));
            }
        }
        FieldKind::DayOfWeek => {
            if upper == "L" {
                return Err(error(
                    format!(
                        "{name}: `L` alone is not supported; write `5L` or `FRIL` for the last \
                         Friday of the month (or `L` in day-of-month for its last day)"
                    ),
                    span,
                ));
            }
            if let Some(hash) = item.find('#') {
                return parse_nth_weekday(item, hash, offset, value);
            }
            if let Some(weekday_text) = item.get(..item.len() - 1)
                && upper.ends_with('L')
                && is_weekday_word(weekday_text)
            {
                let weekday = parse_value(kind, weekday_text, offset, false)?;
                value.last_weekdays |= 1 << (weekday % 7);
                return Ok(());
            }
            if upper.ends_with('L') && item.contains(['-', '/', '*']) {
                return Err(error(
                    format!("{name}: `L` follows a single weekday, as in `5L` or `FRIL`"),
                    span,
                ));
            }
        }
        _ => {}
    }

    // base[/step]
    let (base, step) = match item.find('/') {
        Some(slash) => (&item[..slash], Some((slash, &item[slash + 1..]))),
        None => (item, None),
    };
    let step_value = match step {
        None => None,
        Some((slash, step_text)) => {
            let step_span = offset + slash + 1..offset + item.len();
            if step_text.is_empty() {
                return Err(error(
                    format!("{name}: missing step after `/`"),
                    offset + slash..offset + slash + 1,
                ));
            }
            if !step_text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(error(
                    format!("{name}: step {step_text:?} is not a number"),
                    step_span,
                ));
            }
            let step = step_text.parse::<u32>().unwrap_or(u32::MAX);
            if step == 0 {
                return Err(error(format!("{name}: step must be at least 1"), step_span));
            }
            if step > kind.max() {
                return Err(error(
                    format!(
                        "{name}: step {step_text} is larger than the field's maximum {}",
                        kind.max()
                    ),
                    step_span,
                ));
            }
            Some(step)
        }
    };
    if base.is_empty() {
        return Err(error(
            format!("{name}: missing value before `/` (write `*/n` or `a-b/n`)"),
            span,
        ));
    }

    let base_span = offset..offset + base.len();
    let (low, high) = if base == "*" {
        (kind.min(), kind.max())
    } else if let Some(dash) = base.find('-') {
        let low_text = &base[..dash];
        let high_text = &base[dash + 1..];
        if low_text.is_empty() {
            return Err(error(
                format!("{name}: range {base:?} is missing its start"),
                base_span,
            ));
        }
        if high_text.is_empty() {
            return Err(error(
                format!("{name}: range {base:?} is missing its end"),
                base_span,
            ));
        }
        if high_text.contains('-') {
            return Err(error(
                format!("{name}: {base:?} is not a range (expected a-b)"),
                base_span,
            ));
        }
        let low = parse_value(kind, low_text, offset, false)?;
        let high = parse_value(kind, high_text, offset + dash + 1, true)?;
        if low > high {
            return Err(error(
                format!("{name}: range {base} is reversed"),
                base_span,
            ));
        }
        (low, high)
    } else {
        let low = parse_value(kind, base, offset, false)?;
        match step_value {
            // `a/n` means `a-MAX/n`.
            Some(_) => (low, kind.max()),
            None => (low, low),
        }
    };
    add_range(value, low, high, step_value.unwrap_or(1));
    Ok(())
}

fn parse_nth_weekday(
    item: &str,
    hash: usize,
    offset: usize,
    value: &mut FieldValue,
) -> Result<(), CronError> {
    let kind = FieldKind::DayOfWeek;
    let name = kind.name();
    let span = offset..offset + item.len();
    let weekday_text = &item[..hash];
    let k_text = &item[hash + 1..];
    if weekday_text.is_empty() || weekday_text.contains(['-', '/', '*', '#']) {
        return Err(error(
            format!("{name}: `#` follows a single weekday, as in `FRI#2` or `5#2`"),
            span,
        ));
    }
    let weekday = parse_value(kind, weekday_text, offset, false)?;
    let k_span = offset + hash + 1..offset + item.len();
    if k_text.is_empty() || !k_text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(error(
            format!("{name}: {item:?}: expected a number 1-5 after `#`"),
            if k_text.is_empty() { span } else { k_span },
        ));
    }
    let k = k_text.parse::<u32>().unwrap_or(u32::MAX);
    if !(1..=5).contains(&k) {
        return Err(error(
            format!("{name}: #{k_text} is out of range 1-5 (the k-th weekday of the month)"),
            k_span,
        ));
    }
    value.nth[(weekday % 7) as usize] |= 1 << k;
    Ok(())
}

/// A number or (in month and day-of-week) a name. `range_end` makes `SUN` count as 7,
/// so that `MON-SUN` is Monday to Sunday rather than a reversed range.
fn parse_value(
    kind: FieldKind,
    text: &str,
    offset: usize,
    range_end: bool,
) -> Result<u32, CronError> {
    let name = kind.name();
    let span = offset..offset + text.len();
    if text.is_empty() {
        return Err(error(format!("{name}: missing value"), span));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        let number = text.parse::<u32>().unwrap_or(u32::MAX);
        if number < kind.min() || number > kind.max() {
            return Err(error(
                format!(
                    "{name}: {text} is out of range {}-{}",
                    kind.min(),
                    kind.max()
                ),
                span,
            ));
        }
        return Ok(number);
    }
    if text.bytes().all(|b| b.is_ascii_alphabetic()) {
        let names = kind.names();
        if names.is_empty() {
            return Err(error(
                format!(
                    "{name}: {text:?} is not a number (expected {}-{})",
                    kind.min(),
                    kind.max()
                ),
                span,
            ));
        }
        let upper = text.to_ascii_uppercase();
        if let Some((_, number)) = names.iter().find(|(n, _)| *n == upper) {
            if range_end && kind == FieldKind::DayOfWeek && *number == 0 {
                return Ok(7);
            }
            return Ok(*number);
        }
        let candidates: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
        let other_field = match kind {
            FieldKind::Month => Some(FieldKind::DayOfWeek),
            FieldKind::DayOfWeek => Some(FieldKind::Month),
            _ => None,
        };
        let hint = if let Some(other) =
            other_field.filter(|other| other.names().iter().any(|(n, _)| *n == upper))
        {
            format!(" ({upper} is a {} name)", other.name())
        } else {
            match closest(&upper, &candidates) {
                Some(best) => format!(" (did you mean {best}?)"),
                None => format!(" (expected one of {})", candidates.join(", ")),
            }
        };
        return Err(error(format!("{name}: unknown name {text:?}{hint}"), span));
    }
    Err(error(format!("{name}: invalid value {text:?}"), span))
}

/// A single weekday as written before `L`: digits, or one of the weekday names.
fn is_weekday_word(text: &str) -> bool {
    let upper = text.to_ascii_uppercase();
    (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
        || FieldKind::DayOfWeek
            .names()
            .iter()
            .any(|(n, _)| *n == upper)
}

fn add_range(value: &mut FieldValue, low: u32, high: u32, step: u32) {
    let mut v = low;
    while v <= high {
        value.bits |= 1 << v;
        v += step;
    }
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '*' | '-' | '/' | ',' | '#')
}

fn describe_char(c: char) -> String {
    if c.is_ascii_graphic() {
        format!("`{c}`")
    } else {
        format!("{:?}", c)
    }
}

/// The candidate closest to `word` for "did you mean" hints: one that `word` starts with
/// (`JANUARY` -> `JAN`), else the nearest by Levenshtein distance (at most 2),
/// case-insensitively.
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    if let Some(prefix) = candidates
        .iter()
        .find(|c| c.len() >= 3 && word.starts_with(&c.to_ascii_lowercase()))
    {
        return Some(prefix);
    }
    candidates
        .iter()
        .map(|c| (strsim::levenshtein(&word, &c.to_ascii_lowercase()), *c))
        .filter(|(distance, _)| *distance <= if word.len() <= 4 { 1 } else { 2 })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

fn combine(values: &[FieldValue]) -> FieldSet {
    let [minute, hour, dom, month, dow] = values else {
        unreachable!("five fields")
    };
    // Day-of-week 7 is Sunday, like 0.
    let weekdays = ((dow.bits & 0x7f) | ((dow.bits >> 7) & 1)) as u8;
    FieldSet::new(
        minute.bits,
        hour.bits as u32,
        dom.bits as u32,
        dom.last_day,
        month.bits as u16,
        weekdays,
        dow.nth,
        dow.last_weekdays,
        !dom.unrestricted,
        !dow.unrestricted,
        !hour.unrestricted,
    )
}

/// Rejects an expression that matches no day at all, saying why.
fn check_fires(set: &FieldSet, dom_field: &(Range<usize>, &str)) -> Result<(), CronError> {
    let fires = NEVER_FIRES_YEARS.into_iter().any(|year| {
        (1..=12).any(|month| set.month_matches(month) && set.day_mask(year, month) != 0)
    });
    if fires {
        return Ok(());
    }
    // Only a day-of-month that no selected month has can get here: every weekday occurs
    // in every month, and `L` exists in every month.
    let months: Vec<&str> = (1..=12u32)
        .filter(|m| set.month_matches(*m))
        .map(|m| MONTH_LONG_NAMES[m as usize])
        .collect();
    let month_list = join_or(&months);
    let (span, text) = dom_field;
    Err(error(
        format!("never fires: day-of-month {text} does not exist in {month_list}"),
        span.clone(),
    ))
}

fn join_or(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_prefers_a_prefix_then_a_near_spelling() {
        let weekdays = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
        assert_eq!(closest("FRIDAY", &weekdays), Some("FRI"));
        assert_eq!(closest("fru", &weekdays), Some("FRI"));
        assert_eq!(closest("XYZ", &weekdays), None);
        assert_eq!(closest("@dayly", &["@daily", "@hourly"]), Some("@daily"));
    }

    #[test]
    fn month_lists_read_as_prose() {
        assert_eq!(join_or(&["February"]), "February");
        assert_eq!(join_or(&["April", "June"]), "April or June");
        assert_eq!(
            join_or(&["February", "April", "June"]),
            "February, April or June"
        );
    }

    #[test]
    fn weekday_seven_folds_into_sunday() {
        let set = parse("0 0 * * 7").unwrap();
        assert_eq!(set.weekdays, 1);
        let set = parse("0 0 * * 5-7").unwrap();
        assert_eq!(set.weekdays, 0b110_0001);
    }

    #[test]
    fn restriction_flags_follow_the_exact_field_text() {
        let set = parse("* * ? * */1").unwrap();
        assert!(!set.hour_restricted);
        assert!(!set.day_of_month_restricted);
        assert!(set.day_of_week_restricted);
        let set = parse("0 */1 * * ?").unwrap();
        assert!(set.hour_restricted);
        assert!(!set.day_of_week_restricted);
    }
}
