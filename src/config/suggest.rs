//! "Did you mean ...?" suggestions for misspelled keys, names, values and time zones.

/// The candidate closest to `input`, if one is close enough to be a likely typo: equal
/// ignoring case, within a Damerau-Levenshtein distance of a third of the length (at least
/// 1), with a high Jaro-Winkler similarity (which favours a shared start: `retries` ->
/// `retry`), or containing one another (`zone` -> `timezone`).
pub fn closest<'a>(input: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let input_len = input.chars().count();
    let mut best: Option<(f64, &'a str)> = None;
    for candidate in candidates {
        let similarity = if candidate.eq_ignore_ascii_case(input) {
            2.0
        } else {
            let len = candidate.chars().count();
            let limit = (input_len.max(len) / 3).max(1);
            // One contains the other: `zone` -> `timezone`, `cron_expr` -> `cron`.
            let contained = input_len.min(len) >= 4
                && (candidate.to_lowercase().contains(&input.to_lowercase())
                    || input.to_lowercase().contains(&candidate.to_lowercase()));
            // Cheap filter first: the edit measures cannot match very different lengths.
            if !contained && input_len.abs_diff(len) > limit.max(len / 2) {
                continue;
            }
            let similarity = strsim::jaro_winkler(input, candidate);
            let close = contained
                || similarity >= 0.85
                || strsim::damerau_levenshtein(input, candidate) <= limit;
            if !close {
                continue;
            }
            similarity
        };
        // Ties go to the smaller name, so that the answer does not depend on the order of
        // the candidates (they may come from a hash set).
        let better = best.is_none_or(|(s, c)| similarity > s || (similarity == s && candidate < c));
        if better {
            best = Some((similarity, candidate));
        }
    }
    best.map(|(_, candidate)| candidate)
}

/// The IANA zone a misspelled zone name most likely means: also matches the city alone
/// (`Shanghai` -> `Asia/Shanghai`) and spaces for underscores (`New York`).
pub fn closest_zone(input: &str) -> Option<&'static str> {
    let names = || chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name());
    let normalized = input.trim().replace(' ', "_");
    if let Some(name) = names().find(|name| name.eq_ignore_ascii_case(&normalized)) {
        return Some(name);
    }
    if let Some(name) = names().find(|name| {
        name.rsplit('/')
            .next()
            .is_some_and(|city| city.eq_ignore_ascii_case(&normalized))
            && name.contains('/')
    }) {
        return Some(name);
    }
    closest(&normalized, names())
}

/// `; did you mean `x`?`, or nothing.
pub fn did_you_mean(suggestion: Option<&str>) -> String {
    match suggestion {
        Some(s) => format!("; did you mean `{s}`?"),
        None => String::new(),
    }
}

/// `` `a`, `b` or `c` ``
pub fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let keys = [
            "timezone",
            "broker",
            "result_expires",
            "queues",
            "tasks",
            "schedules",
        ];
        assert_eq!(closest("schedule", keys), Some("schedules"));
        assert_eq!(closest("time_zone", keys), Some("timezone"));
        assert_eq!(closest("TASKS", keys), Some("tasks"));
        assert_eq!(closest("workers", keys), None);
        assert_eq!(
            closest("retries", ["command", "builtin", "timeout", "retry"]),
            Some("retry")
        );
        assert_eq!(closest("minutez", ["min", "minutes", "m"]), Some("minutes"));
        assert_eq!(closest("q", ["queue"]), None);
        assert_eq!(closest("zone", ["timezone", "task"]), Some("timezone"));
        assert_eq!(closest("cron_expr", ["cron", "every"]), Some("cron"));
        assert_eq!(closest("x", keys), None);
    }

    #[test]
    fn suggests_zones() {
        assert_eq!(closest_zone("Asia/Shangai"), Some("Asia/Shanghai"));
        assert_eq!(closest_zone("asia/shanghai"), Some("Asia/Shanghai"));
        assert_eq!(closest_zone("Shanghai"), Some("Asia/Shanghai"));
        assert_eq!(closest_zone("New York"), Some("America/New_York"));
        assert_eq!(closest_zone("Mars/Olympus_Mons"), None);
    }

    #[test]
    fn lists_choices() {
        assert_eq!(one_of(&["a"]), "`a`");
        assert_eq!(one_of(&["a", "b", "c"]), "`a`, `b` or `c`");
    }
}
