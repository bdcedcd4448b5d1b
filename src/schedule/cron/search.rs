//! Finding the next fire instant of a [`FieldSet`] in an IANA time zone.
//!
//! The expression matches local wall-clock minutes; this file turns them into instants
//! with the DST rules of the contract:
//!
//! - a wall time that happens twice (clocks go back) fires at its first occurrence only
//!   when the hour field is restricted, at both when the hour field is `*`;
//! - a wall time that never happens (clocks go forward) fires once, at the first instant
//!   after the gap, when the hour field is restricted, and not at all when it is `*`.
//!
//! The search walks matching wall-clock minutes in increasing order, resolves each in the
//! zone and keeps the earliest resulting instant after `after`. Wall-clock order and
//! instant order agree everywhere except inside a repeated range, which is the only
//! place where the walk has to look past its first candidate.

use chrono::{
    DateTime, Duration, LocalResult, Months, NaiveDate, NaiveDateTime, Offset, TimeZone, Utc,
};
use chrono_tz::{GapInfo, Tz};

use super::fields::FieldSet;

/// How far `next_after` looks: nothing within this many months means `None`.
pub(crate) const HORIZON_MONTHS: u32 = 30 * 12;

/// The first fire instant strictly after `after`, or `None` if none falls within
/// [`HORIZON_MONTHS`] of it (or the calendar runs out).
pub(crate) fn next_after(set: &FieldSet, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let horizon = after
        .checked_add_months(Months::new(HORIZON_MONTHS))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    // Local dates run up to a day ahead of UTC; two days of slack is always enough.
    let last_date = horizon
        .date_naive()
        .checked_add_days(chrono::Days::new(2))
        .unwrap_or(NaiveDate::MAX);

    let after_utc = after.naive_utc();
    let offset = tz.offset_from_utc_datetime(&after_utc).fix();
    let local = after_utc.checked_add_offset(offset)?;

    // When `after` lies in the first half of a repeated range and the hour field is `*`,
    // the second occurrences of wall times *before* `local` are still ahead: start the
    // walk at the beginning of the repeated range.
    let mut cursor = local;
    if !set.hour_restricted
        && let LocalResult::Ambiguous(earlier, later) = tz.offset_from_local_datetime(&local)
        && earlier.fix() == offset
    {
        let repeated = i64::from(earlier.fix().local_minus_utc() - later.fix().local_minus_utc());
        cursor = local.checked_sub_signed(Duration::seconds(repeated))?;
    }

    let mut best: Option<DateTime<Utc>> = None;
    while let Some(wall) = set.next_local_match(cursor, last_date) {
        let (candidate, settled) = resolve(set, tz, wall, after);
        if let Some(candidate) = candidate {
            best = Some(best.map_or(candidate, |b| b.min(candidate)));
            if settled {
                break;
            }
        }
        let Some(next) = wall.checked_add_signed(Duration::minutes(1)) else {
            break;
        };
        cursor = next;
    }
    best.filter(|b| *b <= horizon)
}

/// The instant at which matching wall-clock minute `wall` fires that is strictly after
/// `after`, if any; and whether no later wall time can fire earlier than it (true except
/// for the second occurrence of a repeated wall time, where first occurrences of later
/// wall times in the same range are earlier instants).
fn resolve(
    set: &FieldSet,
    tz: Tz,
    wall: NaiveDateTime,
    after: DateTime<Utc>,
) -> (Option<DateTime<Utc>>, bool) {
    let instant = |offset: &chrono_tz::TzOffset| {
        wall.checked_sub_offset(offset.fix())
            .map(|utc| utc.and_utc())
            .filter(|t| *t > after)
    };
    match tz.offset_from_local_datetime(&wall) {
        LocalResult::Single(offset) => (instant(&offset), true),
        LocalResult::Ambiguous(earlier, later) => {
            if let Some(first) = instant(&earlier) {
                (Some(first), true)
            } else if !set.hour_restricted {
                (instant(&later), false)
            } else {
                (None, false)
            }
        }
        LocalResult::None if set.hour_restricted => {
            (gap_end(tz, wall).filter(|t| *t > after), true)
        }
        LocalResult::None => (None, false),
    }
}

/// The first instant after the gap that contains wall time `wall`: the moment the
/// clock jumped forward, e.g. 03:00 EDT for New York's 02:00-03:00 gap.
pub(crate) fn gap_end(tz: Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    if let Some(end) = GapInfo::new(&wall, &tz).and_then(|gap| gap.end) {
        return Some(end.with_timezone(&Utc));
    }
    gap_end_by_bisection(tz, wall)
}

/// Fallback for gaps chrono-tz cannot describe (e.g. one followed at once by a repeated
/// range): the earliest instant whose wall-clock time is past `wall`, found by bisection
/// over a window wider than any UTC offset.
fn gap_end_by_bisection(tz: Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    const WINDOW: i64 = 2 * 86_400;
    let wall_seconds = wall.and_utc().timestamp();
    let wall_at = |instant: i64| -> Option<i64> {
        let utc = DateTime::from_timestamp(instant, 0)?.naive_utc();
        let offset = tz.offset_from_utc_datetime(&utc).fix();
        Some(instant + i64::from(offset.local_minus_utc()))
    };
    let mut before = wall_seconds.checked_sub(WINDOW)?;
    let mut past = wall_seconds.checked_add(WINDOW)?;
    if wall_at(before)? > wall_seconds || wall_at(past)? <= wall_seconds {
        return None;
    }
    while past - before > 1 {
        let middle = before + (past - before) / 2;
        if wall_at(middle)? > wall_seconds {
            past = middle;
        } else {
            before = middle;
        }
    }
    DateTime::from_timestamp(past, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn gap_end_is_the_first_instant_after_the_jump() {
        let wall = NaiveDate::from_ymd_opt(2025, 3, 9)
            .unwrap()
            .and_hms_opt(2, 30, 0)
            .unwrap();
        let expected = Utc.with_ymd_and_hms(2025, 3, 9, 7, 0, 0).unwrap();
        assert_eq!(gap_end(chrono_tz::America::New_York, wall), Some(expected));
        assert_eq!(
            gap_end_by_bisection(chrono_tz::America::New_York, wall),
            Some(expected)
        );
    }

    #[test]
    fn gap_end_handles_a_skipped_day() {
        // Samoa skipped 2011-12-30 entirely: 23:59:59 -10:00 was followed by 00:00 +14:00.
        let wall = NaiveDate::from_ymd_opt(2011, 12, 30)
            .unwrap()
            .and_hms_opt(9, 0, 0)
            .unwrap();
        let expected = Utc.with_ymd_and_hms(2011, 12, 30, 10, 0, 0).unwrap();
        assert_eq!(gap_end(chrono_tz::Pacific::Apia, wall), Some(expected));
        assert_eq!(
            gap_end_by_bisection(chrono_tz::Pacific::Apia, wall),
            Some(expected)
        );
    }
}
