//! The schedule engine against its contract: named DST and calendar cases, every class of
//! invalid input with its message and span, regression corpora from `tests/fixtures/cron`,
//! and property tests that compare `next_after` with a brute-force reference that walks
//! local wall-clock minutes and applies the DST rules literally.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use celeriac::schedule::{CronExpr, CronSchedule, IntervalSchedule, Timing, parse_timezone};
use chrono::{
    DateTime, Datelike, LocalResult, Months, NaiveDate, NaiveDateTime, Offset, TimeZone, Timelike,
    Utc,
};
use chrono_tz::Tz;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn tz(name: &str) -> Tz {
    name.parse().unwrap_or_else(|_| panic!("zone {name}"))
}

fn instant(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339}: {e}"))
        .with_timezone(&Utc)
}

fn local_rfc3339(t: DateTime<Utc>, zone: Tz) -> String {
    t.with_timezone(&zone)
        .format("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

fn schedule(expr: &str, zone: &str) -> CronSchedule {
    let parsed = CronExpr::parse(expr).unwrap_or_else(|e| panic!("{expr:?}: {}", e.message));
    CronSchedule::new(parsed, tz(zone))
}

/// The first `n` fires of `expr` in `zone` strictly after `after`, as local RFC 3339.
fn fires(expr: &str, zone: &str, after: &str, n: usize) -> Vec<String> {
    let s = schedule(expr, zone);
    s.iter_after(instant(after))
        .take(n)
        .map(|t| local_rfc3339(t, s.timezone()))
        .collect()
}

#[track_caller]
fn assert_fires(expr: &str, zone: &str, after: &str, expected: &[&str]) {
    assert_eq!(
        fires(expr, zone, after, expected.len()),
        expected,
        "{expr:?} in {zone} after {after}"
    );
}

#[track_caller]
fn assert_rejected(expr: &str, message: &str, span: std::ops::Range<usize>) {
    match CronExpr::parse(expr) {
        Ok(_) => panic!("{expr:?} was accepted, expected: {message}"),
        Err(e) => {
            assert_eq!(e.message, message, "message for {expr:?}");
            assert_eq!(e.span, Some(span), "span for {expr:?} ({message})");
        }
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cron")
        .join(name)
}

// ---------------------------------------------------------------------------------------
// DST: New York (02:00 -> 03:00 on 2025-03-09, 02:00 -> 01:00 on 2025-11-02)
// ---------------------------------------------------------------------------------------

#[test]
fn skipped_local_time_fires_once_at_transition() {
    assert_fires(
        "30 2 * * *",
        "America/New_York",
        "2025-03-08T12:00:00-05:00",
        &["2025-03-09T03:00:00-04:00", "2025-03-10T02:30:00-04:00"],
    );
}

#[test]
fn repeated_local_time_fires_at_first_occurrence_only() {
    assert_fires(
        "30 1 * * *",
        "America/New_York",
        "2025-11-01T12:00:00-04:00",
        &["2025-11-02T01:30:00-04:00", "2025-11-03T01:30:00-05:00"],
    );
}

#[test]
fn repeated_local_time_is_not_fired_again_from_either_half() {
    for after in [
        "2025-11-02T01:30:00-04:00",
        "2025-11-02T01:45:00-04:00",
        "2025-11-02T01:00:00-05:00",
        "2025-11-02T01:29:59-05:00",
    ] {
        assert_fires(
            "30 1 * * *",
            "America/New_York",
            after,
            &["2025-11-03T01:30:00-05:00"],
        );
    }
}

#[test]
fn every_half_hour_fires_at_both_occurrences_of_repeated_times() {
    assert_fires(
        "*/30 * * * *",
        "America/New_York",
        "2025-11-02T00:45:00-04:00",
        &[
            "2025-11-02T01:00:00-04:00",
            "2025-11-02T01:30:00-04:00",
            "2025-11-02T01:00:00-05:00",
            "2025-11-02T01:30:00-05:00",
            "2025-11-02T02:00:00-05:00",
        ],
    );
}

#[test]
fn every_half_hour_skips_the_missing_hour() {
    assert_fires(
        "*/30 * * * *",
        "America/New_York",
        "2025-03-09T01:00:00-05:00",
        &[
            "2025-03-09T01:30:00-05:00",
            "2025-03-09T03:00:00-04:00",
            "2025-03-09T03:30:00-04:00",
        ],
    );
}

#[test]
fn hourly_fires_twice_in_the_repeated_hour_and_skips_the_missing_one() {
    assert_fires(
        "0 * * * *",
        "America/New_York",
        "2025-11-02T00:00:00-04:00",
        &[
            "2025-11-02T01:00:00-04:00",
            "2025-11-02T01:00:00-05:00",
            "2025-11-02T02:00:00-05:00",
        ],
    );
    assert_fires(
        "0 * * * *",
        "America/New_York",
        "2025-03-09T00:30:00-05:00",
        &[
            "2025-03-09T01:00:00-05:00",
            "2025-03-09T03:00:00-04:00",
            "2025-03-09T04:00:00-04:00",
        ],
    );
}

#[test]
fn start_in_first_half_of_repeated_hour_still_sees_second_occurrences() {
    // 01:45 EDT: 01:00 and 01:30 EST (the second occurrences) are still ahead.
    assert_fires(
        "*/30 * * * *",
        "America/New_York",
        "2025-11-02T01:45:00-04:00",
        &[
            "2025-11-02T01:00:00-05:00",
            "2025-11-02T01:30:00-05:00",
            "2025-11-02T02:00:00-05:00",
        ],
    );
    assert_fires(
        "*/30 * * * *",
        "America/New_York",
        "2025-11-02T01:10:00-05:00",
        &["2025-11-02T01:30:00-05:00", "2025-11-02T02:00:00-05:00"],
    );
}

#[test]
fn start_in_first_half_prefers_remaining_first_occurrences() {
    // From 01:20 EDT, 01:30 and 01:45 EDT come before the second occurrence of 01:00.
    assert_fires(
        "*/15 * * * *",
        "America/New_York",
        "2025-11-02T01:20:00-04:00",
        &[
            "2025-11-02T01:30:00-04:00",
            "2025-11-02T01:45:00-04:00",
            "2025-11-02T01:00:00-05:00",
            "2025-11-02T01:15:00-05:00",
        ],
    );
}

#[test]
fn restricted_hour_with_minute_step_fires_first_occurrences_only() {
    assert_fires(
        "*/30 1 * * *",
        "America/New_York",
        "2025-11-02T00:00:00-04:00",
        &[
            "2025-11-02T01:00:00-04:00",
            "2025-11-02T01:30:00-04:00",
            "2025-11-03T01:00:00-05:00",
        ],
    );
    assert_fires(
        "0 0-3 * * *",
        "America/New_York",
        "2025-11-02T00:30:00-04:00",
        &[
            "2025-11-02T01:00:00-04:00",
            "2025-11-02T02:00:00-05:00",
            "2025-11-02T03:00:00-05:00",
        ],
    );
}

#[test]
fn several_skipped_matches_in_one_gap_fire_once() {
    assert_fires(
        "*/10 2 * * *",
        "America/New_York",
        "2025-03-09T01:00:00-05:00",
        &["2025-03-09T03:00:00-04:00", "2025-03-10T02:00:00-04:00"],
    );
}

#[test]
fn transition_instant_that_matches_too_fires_once() {
    assert_fires(
        "0,30 2,3 * * *",
        "America/New_York",
        "2025-03-09T01:59:00-05:00",
        &[
            "2025-03-09T03:00:00-04:00",
            "2025-03-09T03:30:00-04:00",
            "2025-03-10T02:00:00-04:00",
        ],
    );
}

#[test]
fn skipped_hour_in_an_hour_list_fires_at_transition() {
    assert_fires(
        "30 2,4 * * *",
        "America/New_York",
        "2025-03-09T00:00:00-05:00",
        &["2025-03-09T03:00:00-04:00", "2025-03-09T04:30:00-04:00"],
    );
}

#[test]
fn hour_star_with_fixed_minute_skips_the_missing_minute() {
    assert_fires(
        "15 * * * *",
        "America/New_York",
        "2025-03-09T01:30:00-05:00",
        &["2025-03-09T03:15:00-04:00"],
    );
}

#[test]
fn gap_on_a_day_that_does_not_match_fires_nothing() {
    // 2025-03-09 is a Sunday.
    assert_fires(
        "30 2 * * MON",
        "America/New_York",
        "2025-03-08T00:00:00-05:00",
        &["2025-03-10T02:30:00-04:00"],
    );
    assert_fires(
        "30 2 9 3 *",
        "America/New_York",
        "2025-03-01T00:00:00-05:00",
        &["2025-03-09T03:00:00-04:00", "2026-03-09T02:30:00-04:00"],
    );
}

#[test]
fn start_that_is_not_minute_aligned_is_handled() {
    assert_fires(
        "*/30 * * * *",
        "America/New_York",
        "2025-11-02T01:30:00.5-04:00",
        &["2025-11-02T01:00:00-05:00"],
    );
    assert_fires(
        "* * * * *",
        "UTC",
        "2025-01-01T00:00:59.999999999Z",
        &["2025-01-01T00:01:00+00:00"],
    );
}

#[test]
fn next_after_a_fire_is_strictly_later() {
    assert_fires(
        "0 12 * * *",
        "UTC",
        "2025-01-01T12:00:00Z",
        &["2025-01-02T12:00:00+00:00"],
    );
    assert_fires(
        "30 2 * * *",
        "America/New_York",
        "2025-03-09T03:00:00-04:00",
        &["2025-03-10T02:30:00-04:00"],
    );
}

// ---------------------------------------------------------------------------------------
// DST: historic Asia/Shanghai (1986-1991), Lord Howe, midnight transitions, Apia, others
// ---------------------------------------------------------------------------------------

/// tzdata: China observed DST 1986-1991, 02:00 -> 03:00 in spring, 02:00 -> 01:00 in autumn.
const SHANGHAI_DST: [(&str, &str); 6] = [
    ("1986-05-04", "1986-09-14"),
    ("1987-04-12", "1987-09-13"),
    ("1988-04-17", "1988-09-11"),
    ("1989-04-16", "1989-09-17"),
    ("1990-04-15", "1990-09-16"),
    ("1991-04-14", "1991-09-15"),
];

#[test]
fn shanghai_1986_to_1991_gaps_fire_at_three_in_the_morning() {
    for (spring, _) in SHANGHAI_DST {
        let day = NaiveDate::parse_from_str(spring, "%Y-%m-%d").unwrap();
        let before = format!("{}T12:00:00+08:00", day.pred_opt().unwrap());
        assert_fires(
            "30 2 * * *",
            "Asia/Shanghai",
            &before,
            &[
                &format!("{spring}T03:00:00+09:00"),
                &format!("{}T02:30:00+09:00", day.succ_opt().unwrap()),
            ],
        );
        // With the hour `*`, 02:00 and 02:30 simply do not happen.
        assert_fires(
            "*/30 * * * *",
            "Asia/Shanghai",
            &format!("{spring}T01:15:00+08:00"),
            &[
                &format!("{spring}T01:30:00+08:00"),
                &format!("{spring}T03:00:00+09:00"),
            ],
        );
    }
}

#[test]
fn shanghai_1986_to_1991_repeated_hour_fires_once_or_twice_by_hour_field() {
    for (_, autumn) in SHANGHAI_DST {
        let day = NaiveDate::parse_from_str(autumn, "%Y-%m-%d").unwrap();
        assert_fires(
            "30 1 * * *",
            "Asia/Shanghai",
            &format!("{autumn}T00:00:00+09:00"),
            &[
                &format!("{autumn}T01:30:00+09:00"),
                &format!("{}T01:30:00+08:00", day.succ_opt().unwrap()),
            ],
        );
        assert_fires(
            "30 * * * *",
            "Asia/Shanghai",
            &format!("{autumn}T01:00:00+09:00"),
            &[
                &format!("{autumn}T01:30:00+09:00"),
                &format!("{autumn}T01:30:00+08:00"),
                &format!("{autumn}T02:30:00+08:00"),
            ],
        );
    }
}

#[test]
fn shanghai_dst_dates_are_those_of_tzdata() {
    let shanghai = tz("Asia/Shanghai");
    for (spring, autumn) in SHANGHAI_DST {
        let at = |date: &str, hms: (u32, u32)| {
            NaiveDate::parse_from_str(date, "%Y-%m-%d")
                .unwrap()
                .and_hms_opt(hms.0, hms.1, 0)
                .unwrap()
        };
        assert_eq!(
            shanghai.from_local_datetime(&at(spring, (2, 30))),
            LocalResult::None,
            "{spring} 02:30 is skipped"
        );
        assert!(matches!(
            shanghai.from_local_datetime(&at(autumn, (1, 30))),
            LocalResult::Ambiguous(..)
        ));
    }
}

#[test]
fn lord_howe_half_hour_gap_fires_at_half_past_two() {
    // 2025-10-05: 02:00 +10:30 -> 02:30 +11:00.
    assert_fires(
        "15 2 * * *",
        "Australia/Lord_Howe",
        "2025-10-05T00:00:00+10:30",
        &["2025-10-05T02:30:00+11:00", "2025-10-06T02:15:00+11:00"],
    );
    assert_fires(
        "0,15 2 * * *",
        "Australia/Lord_Howe",
        "2025-10-05T00:00:00+10:30",
        &["2025-10-05T02:30:00+11:00", "2025-10-06T02:00:00+11:00"],
    );
    assert_fires(
        "*/15 * * * *",
        "Australia/Lord_Howe",
        "2025-10-05T01:45:00+10:30",
        &["2025-10-05T02:30:00+11:00", "2025-10-05T02:45:00+11:00"],
    );
}

#[test]
fn lord_howe_half_hour_fold_repeats_only_thirty_minutes() {
    // 2025-04-06: 02:00 +11:00 -> 01:30 +10:30; 01:30-01:59 happens twice.
    assert_fires(
        "45 1 * * *",
        "Australia/Lord_Howe",
        "2025-04-06T00:00:00+11:00",
        &["2025-04-06T01:45:00+11:00", "2025-04-07T01:45:00+10:30"],
    );
    assert_fires(
        "*/15 * * * *",
        "Australia/Lord_Howe",
        "2025-04-06T01:10:00+11:00",
        &[
            "2025-04-06T01:15:00+11:00",
            "2025-04-06T01:30:00+11:00",
            "2025-04-06T01:45:00+11:00",
            "2025-04-06T01:30:00+10:30",
            "2025-04-06T01:45:00+10:30",
            "2025-04-06T02:00:00+10:30",
        ],
    );
}

#[test]
fn midnight_gap_fires_daily_job_at_one_on_the_same_day() {
    // Havana 2025-03-09: 00:00 -05:00 -> 01:00 -04:00.
    assert_fires(
        "0 0 * * *",
        "America/Havana",
        "2025-03-08T12:00:00-05:00",
        &["2025-03-09T01:00:00-04:00", "2025-03-10T00:00:00-04:00"],
    );
    assert_fires(
        "30 0 9 3 *",
        "America/Havana",
        "2025-03-01T00:00:00-05:00",
        &["2025-03-09T01:00:00-04:00"],
    );
    // Santiago 2025-09-07 (a Sunday): 00:00 -04:00 -> 01:00 -03:00.
    assert_fires(
        "0 0 * * SUN",
        "America/Santiago",
        "2025-09-06T12:00:00-04:00",
        &["2025-09-07T01:00:00-03:00", "2025-09-14T00:00:00-03:00"],
    );
    // Beirut 2022-03-27: 00:00 +02:00 -> 01:00 +03:00.
    assert_fires(
        "0 0 27 3 *",
        "Asia/Beirut",
        "2022-03-01T00:00:00+02:00",
        &["2022-03-27T01:00:00+03:00"],
    );
}

#[test]
fn midnight_fold_fires_restricted_hour_once() {
    // Havana 2025-11-02: 01:00 -04:00 -> 00:00 -05:00; 00:00-00:59 happens twice.
    assert_fires(
        "0 0 * * *",
        "America/Havana",
        "2025-11-01T12:00:00-04:00",
        &["2025-11-02T00:00:00-04:00", "2025-11-03T00:00:00-05:00"],
    );
    assert_fires(
        "30 * * * *",
        "America/Havana",
        "2025-11-02T00:00:00-04:00",
        &[
            "2025-11-02T00:30:00-04:00",
            "2025-11-02T00:30:00-05:00",
            "2025-11-02T01:30:00-05:00",
        ],
    );
}

#[test]
fn repeated_hour_spanning_midnight_belongs_to_the_previous_day() {
    // Santiago 2025-04-06 00:00 -03:00 -> 2025-04-05 23:00 -04:00: Saturday 23:00-23:59
    // happens twice.
    assert_fires(
        "30 23 * * SAT",
        "America/Santiago",
        "2025-04-05T12:00:00-03:00",
        &["2025-04-05T23:30:00-03:00", "2025-04-12T23:30:00-04:00"],
    );
    assert_fires(
        "*/30 * * * *",
        "America/Santiago",
        "2025-04-05T23:15:00-03:00",
        &[
            "2025-04-05T23:30:00-03:00",
            "2025-04-05T23:00:00-04:00",
            "2025-04-05T23:30:00-04:00",
            "2025-04-06T00:00:00-04:00",
        ],
    );
    assert_fires(
        "*/30 23 * * *",
        "America/Santiago",
        "2025-04-05T23:30:00-03:00",
        &["2025-04-06T23:00:00-04:00"],
    );
    // Beirut 2022-10-30 00:00 +03:00 -> 2022-10-29 23:00 +02:00.
    assert_fires(
        "30 23 29 10 *",
        "Asia/Beirut",
        "2022-10-01T00:00:00+03:00",
        &["2022-10-29T23:30:00+03:00", "2023-10-29T23:30:00+02:00"],
    );
}

#[test]
fn skipped_whole_day_fires_restricted_hour_at_end_of_gap() {
    // Samoa skipped Friday 2011-12-30: 23:59:59 -10:00 was followed by 00:00 +14:00.
    assert_fires(
        "0 9 * * *",
        "Pacific/Apia",
        "2011-12-29T10:00:00-10:00",
        &["2011-12-31T00:00:00+14:00", "2011-12-31T09:00:00+14:00"],
    );
    assert_fires(
        "0 9 30 12 *",
        "Pacific/Apia",
        "2011-12-01T00:00:00-10:00",
        &["2011-12-31T00:00:00+14:00", "2012-12-30T09:00:00+14:00"],
    );
    // The skipped wall time's own date (a Friday) is what the weekday is checked against.
    assert_fires(
        "0 9 * * FRI",
        "Pacific/Apia",
        "2011-12-25T00:00:00-10:00",
        &["2011-12-31T00:00:00+14:00", "2012-01-06T09:00:00+14:00"],
    );
    assert_fires(
        "0 * * * *",
        "Pacific/Apia",
        "2011-12-29T22:30:00-10:00",
        &[
            "2011-12-29T23:00:00-10:00",
            "2011-12-31T00:00:00+14:00",
            "2011-12-31T01:00:00+14:00",
        ],
    );
}

#[test]
fn half_hour_offset_zone_gap_fires_at_transition() {
    // St John's 2025-03-09: 02:00 -03:30 -> 03:00 -02:30.
    assert_fires(
        "30 2 * * *",
        "America/St_Johns",
        "2025-03-08T12:00:00-03:30",
        &["2025-03-09T03:00:00-02:30", "2025-03-10T02:30:00-02:30"],
    );
    assert_fires(
        "30 1 * * *",
        "America/St_Johns",
        "2025-11-01T12:00:00-02:30",
        &["2025-11-02T01:30:00-02:30", "2025-11-03T01:30:00-03:30"],
    );
}

#[test]
fn london_transitions_follow_the_same_rules() {
    assert_fires(
        "30 1 * * *",
        "Europe/London",
        "2025-03-29T12:00:00Z",
        &["2025-03-30T02:00:00+01:00", "2025-03-31T01:30:00+01:00"],
    );
    assert_fires(
        "30 1 * * *",
        "Europe/London",
        "2025-10-25T12:00:00+01:00",
        &["2025-10-26T01:30:00+01:00", "2025-10-27T01:30:00+00:00"],
    );
}

#[test]
fn zones_without_dst_are_plain_offsets() {
    assert_fires(
        "30 2 * * *",
        "Asia/Kolkata",
        "2025-03-09T00:00:00+05:30",
        &["2025-03-09T02:30:00+05:30"],
    );
    assert_fires(
        "0 0 1 1 *",
        "Europe/Moscow",
        "2025-06-01T00:00:00+03:00",
        &["2026-01-01T00:00:00+03:00"],
    );
}

#[test]
fn fires_fall_on_whole_local_minutes() {
    let s = schedule("*/7 * * * *", "Asia/Kolkata");
    for t in s.iter_after(instant("2025-01-01T00:00:13.25Z")).take(50) {
        let local = t.with_timezone(&s.timezone());
        assert_eq!((local.second(), local.nanosecond()), (0, 0), "{local}");
    }
}

// ---------------------------------------------------------------------------------------
// Calendar: leap years, L, nL, #, the day rule, names, steps, macros
// ---------------------------------------------------------------------------------------

#[test]
fn leap_day_fires_only_in_leap_years() {
    assert_fires(
        "0 0 29 2 *",
        "UTC",
        "2025-01-01T00:00:00Z",
        &["2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"],
    );
}

#[test]
fn year_2100_is_not_a_leap_year() {
    assert_fires(
        "0 0 29 2 *",
        "UTC",
        "2096-03-01T00:00:00Z",
        &["2104-02-29T00:00:00+00:00"],
    );
    assert_fires(
        "0 0 L 2 *",
        "UTC",
        "2100-01-01T00:00:00Z",
        &["2100-02-28T00:00:00+00:00"],
    );
}

#[test]
fn last_day_of_february_follows_leap_years() {
    assert_fires(
        "0 0 L 2 *",
        "UTC",
        "2027-01-01T00:00:00Z",
        &["2027-02-28T00:00:00+00:00", "2028-02-29T00:00:00+00:00"],
    );
}

#[test]
fn last_day_works_inside_a_list() {
    assert_fires(
        "0 0 1,15,L * *",
        "UTC",
        "2025-01-01T00:00:00Z",
        &[
            "2025-01-15T00:00:00+00:00",
            "2025-01-31T00:00:00+00:00",
            "2025-02-01T00:00:00+00:00",
            "2025-02-15T00:00:00+00:00",
            "2025-02-28T00:00:00+00:00",
        ],
    );
}

#[test]
fn last_friday_of_the_month() {
    let expected = [
        "2025-01-31T00:00:00+00:00",
        "2025-02-28T00:00:00+00:00",
        "2025-03-28T00:00:00+00:00",
    ];
    for expr in ["0 0 * * 5L", "0 0 * * FRIL", "0 0 * * fril", "0 0 * * FriL"] {
        assert_fires(expr, "UTC", "2025-01-01T00:00:00Z", &expected);
    }
    // 7L and 0L: the last Sunday.
    assert_fires(
        "0 0 * * 7L",
        "UTC",
        "2025-01-01T00:00:00Z",
        &["2025-01-26T00:00:00+00:00"],
    );
    assert_fires(
        "0 0 * * 0L,1",
        "UTC",
        "2025-01-20T00:00:00Z",
        &["2025-01-26T00:00:00+00:00", "2025-01-27T00:00:00+00:00"],
    );
}

#[test]
fn fifth_friday_skips_months_without_one() {
    assert_fires(
        "0 0 * * FRI#5",
        "UTC",
        "2025-01-01T00:00:00Z",
        &[
            "2025-01-31T00:00:00+00:00",
            "2025-05-30T00:00:00+00:00",
            "2025-08-29T00:00:00+00:00",
        ],
    );
    assert_fires(
        "0 0 * * 5#2",
        "UTC",
        "2025-01-01T00:00:00Z",
        &["2025-01-10T00:00:00+00:00", "2025-02-14T00:00:00+00:00"],
    );
    assert_fires(
        "0 0 * * MON#1,FRI#3",
        "UTC",
        "2025-01-01T00:00:00Z",
        &["2025-01-06T00:00:00+00:00", "2025-01-17T00:00:00+00:00"],
    );
}

#[test]
fn fifth_monday_of_february_is_found_decades_ahead() {
    assert_fires(
        "0 0 * 2 MON#5",
        "UTC",
        "2000-01-01T00:00:00Z",
        &[
            "2016-02-29T00:00:00+00:00",
            "2044-02-29T00:00:00+00:00",
            "2072-02-29T00:00:00+00:00",
        ],
    );
}

#[test]
fn nothing_within_thirty_years_returns_none() {
    // After 2072 the next Monday 29 February is in 2112 (2100 is not a leap year).
    let s = schedule("0 0 * 2 MON#5", "UTC");
    assert_eq!(s.next_after(instant("2072-03-01T00:00:00Z")), None);
    assert_eq!(
        s.next_after(instant("2082-03-01T00:00:00Z")),
        Some(instant("2112-02-29T00:00:00Z"))
    );
}

#[test]
fn both_day_fields_restricted_fire_on_either() {
    // Every Monday of February, and 29 February.
    assert_fires(
        "0 0 29 2 MON",
        "UTC",
        "2025-01-01T00:00:00Z",
        &[
            "2025-02-03T00:00:00+00:00",
            "2025-02-10T00:00:00+00:00",
            "2025-02-17T00:00:00+00:00",
            "2025-02-24T00:00:00+00:00",
            "2026-02-02T00:00:00+00:00",
        ],
    );
    assert_fires(
        "0 0 29 2 MON",
        "UTC",
        "2028-02-27T00:00:00Z",
        &["2028-02-28T00:00:00+00:00", "2028-02-29T00:00:00+00:00"],
    );
    assert_fires(
        "0 0 13 * FRI",
        "UTC",
        "2025-06-01T00:00:00Z",
        &[
            "2025-06-06T00:00:00+00:00",
            "2025-06-13T00:00:00+00:00",
            "2025-06-20T00:00:00+00:00",
        ],
    );
}

#[test]
fn star_slash_one_is_a_restricted_day_field() {
    // `*/1` in day-of-week is restricted, so day 1 OR every weekday: daily.
    assert_fires(
        "0 0 1 * */1",
        "UTC",
        "2025-01-01T00:00:00Z",
        &["2025-01-02T00:00:00+00:00", "2025-01-03T00:00:00+00:00"],
    );
    assert_fires(
        "0 0 */1 * MON",
        "UTC",
        "2025-01-01T00:00:00Z",
        &["2025-01-02T00:00:00+00:00", "2025-01-03T00:00:00+00:00"],
    );
    let expr = CronExpr::parse("0 0 */1 * *").unwrap();
    assert!(expr.day_of_month_restricted());
    assert!(!expr.day_of_week_restricted());
}

#[test]
fn one_restricted_day_field_must_match_alone() {
    assert_fires(
        "0 0 13 * *",
        "UTC",
        "2025-06-01T00:00:00Z",
        &["2025-06-13T00:00:00+00:00", "2025-07-13T00:00:00+00:00"],
    );
    assert_fires(
        "0 0 ? * FRI",
        "UTC",
        "2025-06-01T00:00:00Z",
        &["2025-06-06T00:00:00+00:00", "2025-06-13T00:00:00+00:00"],
    );
}

#[test]
fn question_mark_is_the_same_as_star_in_day_fields() {
    let a = fires("0 0 * * *", "UTC", "2025-01-30T00:00:00Z", 40);
    assert_eq!(fires("0 0 ? * ?", "UTC", "2025-01-30T00:00:00Z", 40), a);
    assert_eq!(fires("0 0 ? * *", "UTC", "2025-01-30T00:00:00Z", 40), a);
    assert!(
        !CronExpr::parse("0 0 ? * ?")
            .unwrap()
            .day_of_month_restricted()
    );
}

#[test]
fn weekday_seven_is_sunday() {
    let sundays = fires("0 0 * * 0", "UTC", "2025-01-01T00:00:00Z", 5);
    assert_eq!(
        fires("0 0 * * 7", "UTC", "2025-01-01T00:00:00Z", 5),
        sundays
    );
    assert_eq!(
        fires("0 0 * * SUN", "UTC", "2025-01-01T00:00:00Z", 5),
        sundays
    );
    assert_eq!(sundays[0], "2025-01-05T00:00:00+00:00");
}

#[test]
fn weekday_steps_run_over_zero_to_seven() {
    // 1-7/2 = Mon, Wed, Fri, Sun.
    assert_fires(
        "0 0 * * 1-7/2",
        "UTC",
        "2025-01-06T12:00:00Z",
        &[
            "2025-01-08T00:00:00+00:00",
            "2025-01-10T00:00:00+00:00",
            "2025-01-12T00:00:00+00:00",
            "2025-01-13T00:00:00+00:00",
        ],
    );
    // */2 = Sun, Tue, Thu, Sat.
    assert_fires(
        "0 0 * * */2",
        "UTC",
        "2025-01-05T12:00:00Z",
        &[
            "2025-01-07T00:00:00+00:00",
            "2025-01-09T00:00:00+00:00",
            "2025-01-11T00:00:00+00:00",
            "2025-01-12T00:00:00+00:00",
        ],
    );
}

#[test]
fn single_value_with_step_runs_to_the_field_maximum() {
    assert_fires(
        "5/15 * * * *",
        "UTC",
        "2025-01-01T00:00:00Z",
        &[
            "2025-01-01T00:05:00+00:00",
            "2025-01-01T00:20:00+00:00",
            "2025-01-01T00:35:00+00:00",
            "2025-01-01T00:50:00+00:00",
            "2025-01-01T01:05:00+00:00",
        ],
    );
    assert_fires(
        "0 0 10-20/5 * *",
        "UTC",
        "2025-01-01T00:00:00Z",
        &[
            "2025-01-10T00:00:00+00:00",
            "2025-01-15T00:00:00+00:00",
            "2025-01-20T00:00:00+00:00",
            "2025-02-10T00:00:00+00:00",
        ],
    );
    assert_fires(
        "*/59 * * * *",
        "UTC",
        "2025-01-01T00:00:00Z",
        &["2025-01-01T00:59:00+00:00", "2025-01-01T01:00:00+00:00"],
    );
}

#[test]
fn names_are_case_insensitive_and_usable_in_ranges() {
    let upper = fires("0 9 * JAN-MAR MON-FRI", "UTC", "2025-01-01T00:00:00Z", 30);
    assert_eq!(
        fires("0 9 * jan-Mar mon-fri", "UTC", "2025-01-01T00:00:00Z", 30),
        upper
    );
    assert_eq!(
        fires("0 9 * 1-3 1-5", "UTC", "2025-01-01T00:00:00Z", 30),
        upper
    );
}

#[test]
fn sunday_ends_a_weekday_range_as_seven() {
    let daily = fires("0 0 * * *", "UTC", "2025-01-01T00:00:00Z", 14);
    assert_eq!(
        fires("0 0 * * MON-SUN", "UTC", "2025-01-01T00:00:00Z", 14),
        daily
    );
    assert_eq!(
        fires("0 0 * * SUN-SAT", "UTC", "2025-01-01T00:00:00Z", 14),
        daily
    );
}

#[test]
fn macros_expand_to_their_five_field_forms() {
    for (name, expansion) in [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
    ] {
        for spelling in [name.to_string(), name.to_uppercase(), format!("  {name}\t")] {
            assert_eq!(
                fires(&spelling, "Europe/Berlin", "2025-01-01T00:00:00Z", 5),
                fires(expansion, "Europe/Berlin", "2025-01-01T00:00:00Z", 5),
                "{spelling}"
            );
        }
    }
}

#[test]
fn fields_are_separated_by_any_run_of_spaces_and_tabs() {
    let plain = fires("30 2 * * *", "UTC", "2025-01-01T00:00:00Z", 3);
    for spelling in [
        "30\t2 * *\t*",
        "  30   2 *  * *  ",
        "\t30 2 * * *\n",
        "30 \t 2 * * *",
    ] {
        assert_eq!(
            fires(spelling, "UTC", "2025-01-01T00:00:00Z", 3),
            plain,
            "{spelling:?}"
        );
    }
    assert_eq!(
        CronExpr::parse("  30 2 * * * ").unwrap().source(),
        "  30 2 * * * "
    );
}

#[test]
fn matches_local_checks_the_wall_clock_minute() {
    let expr = CronExpr::parse("30 2 * * MON").unwrap();
    let monday = NaiveDate::from_ymd_opt(2025, 3, 10).unwrap();
    assert!(expr.matches_local(monday.and_hms_opt(2, 30, 0).unwrap()));
    assert!(expr.matches_local(monday.and_hms_opt(2, 30, 59).unwrap()));
    assert!(!expr.matches_local(monday.and_hms_opt(2, 31, 0).unwrap()));
    assert!(!expr.matches_local(monday.succ_opt().unwrap().and_hms_opt(2, 30, 0).unwrap()));
    assert!(expr.matches_date(monday));
    assert!(expr.hour_restricted());
    assert!(!CronExpr::parse("30 * * * *").unwrap().hour_restricted());
    assert!(CronExpr::parse("30 */1 * * *").unwrap().hour_restricted());
}

// ---------------------------------------------------------------------------------------
// Invalid input: message and span
// ---------------------------------------------------------------------------------------

#[test]
fn wrong_field_count_is_rejected_with_the_count() {
    assert_rejected(
        "0 0 * * * *",
        "expected 5 fields (minute hour day-of-month month day-of-week), found 6; \
         seconds and year fields are not supported",
        10..11,
    );
    assert_rejected(
        "0 0 0 * * * 2025",
        "expected 5 fields (minute hour day-of-month month day-of-week), found 7; \
         seconds and year fields are not supported",
        10..16,
    );
    assert_rejected(
        " 0 0 * *",
        "expected 5 fields (minute hour day-of-month month day-of-week), found 4",
        1..8,
    );
    assert_rejected(
        "",
        "empty cron expression: expected 5 fields (minute hour day-of-month month \
         day-of-week) or a macro such as @daily",
        0..0,
    );
    assert!(CronExpr::parse(" \t ").is_err());
}

#[test]
fn out_of_range_values_are_rejected_at_the_value() {
    assert_rejected("61 * * * *", "minute: 61 is out of range 0-59", 0..2);
    assert_rejected("0 24 * * *", "hour: 24 is out of range 0-23", 2..4);
    assert_rejected("0 0 0 * *", "day-of-month: 0 is out of range 1-31", 4..5);
    assert_rejected(
        "0 0 1,32 * *",
        "day-of-month: 32 is out of range 1-31",
        6..8,
    );
    assert_rejected("0 0 * 13 *", "month: 13 is out of range 1-12", 6..8);
    assert_rejected("0 0 * 0 *", "month: 0 is out of range 1-12", 6..7);
    assert_rejected("0 0 * * 8", "day-of-week: 8 is out of range 0-7", 8..9);
    assert_rejected("0 0 * * 1-9", "day-of-week: 9 is out of range 0-7", 10..11);
    assert_rejected(
        "99999999999999999999 * * * *",
        "minute: 99999999999999999999 is out of range 0-59",
        0..20,
    );
}

#[test]
fn unknown_names_get_a_suggestion() {
    assert_rejected(
        "0 0 * * FRU",
        "day-of-week: unknown name \"FRU\" (did you mean FRI?)",
        8..11,
    );
    assert_rejected(
        "0 0 * JANUARY *",
        "month: unknown name \"JANUARY\" (did you mean JAN?)",
        6..13,
    );
    assert_rejected(
        "0 0 * * MON-FRIDAY",
        "day-of-week: unknown name \"FRIDAY\" (did you mean FRI?)",
        12..18,
    );
    assert_rejected(
        "0 0 * XYZ *",
        "month: unknown name \"XYZ\" (expected one of JAN, FEB, MAR, APR, MAY, JUN, JUL, \
         AUG, SEP, OCT, NOV, DEC)",
        6..9,
    );
    assert_rejected(
        "0 0 * MON *",
        "month: unknown name \"MON\" (MON is a day-of-week name)",
        6..9,
    );
    assert_rejected(
        "x * * * *",
        "minute: \"x\" is not a number (expected 0-59)",
        0..1,
    );
    assert_rejected(
        "0 0 MON * *",
        "day-of-month: \"MON\" is not a number (expected 1-31)",
        4..7,
    );
}

#[test]
fn reversed_ranges_are_rejected() {
    assert_rejected("0 5-2 * * *", "hour: range 5-2 is reversed", 2..5);
    assert_rejected(
        "0 0 * * FRI-MON",
        "day-of-week: range FRI-MON is reversed",
        8..15,
    );
    assert_rejected("0 0 * DEC-JAN *", "month: range DEC-JAN is reversed", 6..13);
}

#[test]
fn bad_steps_are_rejected() {
    assert_rejected("*/0 * * * *", "minute: step must be at least 1", 2..3);
    assert_rejected(
        "0 0 1-10/0 * *",
        "day-of-month: step must be at least 1",
        9..10,
    );
    assert_rejected(
        "*/60 * * * *",
        "minute: step 60 is larger than the field's maximum 59",
        2..4,
    );
    assert_rejected(
        "0 */24 * * *",
        "hour: step 24 is larger than the field's maximum 23",
        4..6,
    );
    assert_rejected(
        "0 0 */32 * *",
        "day-of-month: step 32 is larger than the field's maximum 31",
        6..8,
    );
    assert_rejected(
        "0 0 * */13 *",
        "month: step 13 is larger than the field's maximum 12",
        8..10,
    );
    assert_rejected(
        "0 0 * * */8",
        "day-of-week: step 8 is larger than the field's maximum 7",
        10..11,
    );
    assert_rejected("5/ * * * *", "minute: missing step after `/`", 1..2);
    assert_rejected(
        "/5 * * * *",
        "minute: missing value before `/` (write `*/n` or `a-b/n`)",
        0..2,
    );
    assert_rejected("*/x * * * *", "minute: step \"x\" is not a number", 2..3);
    assert_rejected("*/+5 * * * *", "minute: unexpected character `+`", 2..3);
}

#[test]
fn question_mark_outside_day_fields_is_rejected() {
    let message =
        |field: &str| format!("{field}: `?` is only allowed in day-of-month and day-of-week");
    assert_rejected("? * * * *", &message("minute"), 0..1);
    assert_rejected("0 ? * * *", &message("hour"), 2..3);
    assert_rejected("0 0 * ? *", &message("month"), 6..7);
    assert_rejected(
        "0 0 ?,1 * *",
        "day-of-month: `?` must be the whole field, not part of a list",
        4..5,
    );
}

#[test]
fn quartz_extensions_outside_the_grammar_are_rejected() {
    assert_rejected(
        "0 0 15W * *",
        "day-of-month: `W` (nearest weekday) is not supported",
        4..7,
    );
    assert_rejected(
        "0 0 LW * *",
        "day-of-month: `W` (nearest weekday) is not supported",
        4..6,
    );
    assert_rejected(
        "0 0 L-2 * *",
        "day-of-month: \"L-2\" is not supported; `L` (the last day of the month) must stand \
         alone as a list item",
        4..7,
    );
    assert_rejected(
        "0 0 * * L",
        "day-of-week: `L` alone is not supported; write `5L` or `FRIL` for the last Friday \
         of the month (or `L` in day-of-month for its last day)",
        8..9,
    );
    assert_rejected(
        "0 0 * * #L",
        "day-of-week: `#` follows a single weekday, as in `FRI#2` or `5#2`",
        8..10,
    );
    assert_rejected(
        "0 0 * * FRI#L",
        "day-of-week: \"FRI#L\": expected a number 1-5 after `#`",
        12..13,
    );
    assert_rejected(
        "0 0 * * FRI#6",
        "day-of-week: #6 is out of range 1-5 (the k-th weekday of the month)",
        12..13,
    );
    assert_rejected(
        "0 0 * * FRI#0",
        "day-of-week: #0 is out of range 1-5 (the k-th weekday of the month)",
        12..13,
    );
    assert_rejected(
        "0 0 * * MON-FRI#2",
        "day-of-week: `#` follows a single weekday, as in `FRI#2` or `5#2`",
        8..17,
    );
    assert_rejected(
        "@reboot",
        "@reboot is not supported: schedules fire at clock times, not at start-up",
        0..7,
    );
    assert_rejected("+5 * * * *", "minute: unexpected character `+`", 0..1);
}

#[test]
fn unknown_or_decorated_macros_are_rejected() {
    assert_rejected(
        "@dayly",
        "unknown macro \"@dayly\" (did you mean @daily?)",
        0..6,
    );
    assert_rejected(
        "@every",
        "unknown macro \"@every\" (expected one of @yearly, @annually, @monthly, @weekly, \
         @daily, @midnight, @hourly)",
        0..6,
    );
    assert_rejected(
        " @daily 5",
        "a macro stands alone: unexpected \"5\" after @daily",
        8..9,
    );
}

#[test]
fn empty_list_items_are_rejected_at_the_commas() {
    assert_rejected("1,,2 * * * *", "minute: empty item in list", 1..3);
    assert_rejected("1, * * * *", "minute: empty item in list", 1..2);
    assert_rejected("0 ,1 * * *", "hour: empty item in list", 2..3);
}

#[test]
fn malformed_ranges_and_garbage_are_rejected() {
    assert_rejected(
        "-5 * * * *",
        "minute: range \"-5\" is missing its start",
        0..2,
    );
    assert_rejected(
        "5- * * * *",
        "minute: range \"5-\" is missing its end",
        0..2,
    );
    assert_rejected(
        "1-2-3 * * * *",
        "minute: \"1-2-3\" is not a range (expected a-b)",
        0..5,
    );
    assert_rejected("1a * * * *", "minute: invalid value \"1a\"", 0..2);
    assert_rejected("0 0 * * 0x1", "day-of-week: invalid value \"0x1\"", 8..11);
    assert_rejected(
        "0 0 * * 1.5",
        "day-of-week: unexpected character `.`",
        9..10,
    );
    assert_rejected(
        "\u{ff10} * * * *",
        "minute: unexpected character '\u{ff10}'",
        0..3,
    );
    assert_rejected(
        "0\u{a0}0 * * *",
        "unexpected character '\\u{a0}': fields are separated by spaces or tabs",
        1..3,
    );
    assert_rejected(
        "0\n0 * * *",
        "unexpected character '\\n': fields are separated by spaces or tabs",
        1..2,
    );
}

#[test]
fn never_firing_expressions_are_rejected_with_the_reason() {
    assert_rejected(
        "0 0 30 2 *",
        "never fires: day-of-month 30 does not exist in February",
        4..6,
    );
    assert_rejected(
        "0 0 31 4,6 *",
        "never fires: day-of-month 31 does not exist in April or June",
        4..6,
    );
    assert_rejected(
        "0 0 30,31 FEB *",
        "never fires: day-of-month 30,31 does not exist in February",
        4..9,
    );
    assert_rejected(
        "0 0 31 2,4,6,9,11 *",
        "never fires: day-of-month 31 does not exist in February, April, June, September or \
         November",
        4..6,
    );
    // Rare but possible: accepted.
    for rare in [
        "0 0 29 2 *",
        "0 0 * 2 MON#5",
        "0 0 30 2 MON",
        "0 0 31 * *",
        "0 0 L 2 *",
    ] {
        assert!(CronExpr::parse(rare).is_ok(), "{rare}");
    }
}

#[test]
fn every_error_span_lies_inside_the_expression() {
    for line in corpus_lines("parse.jsonl") {
        let expr = line["expr"].as_str().unwrap();
        if let Err(e) = CronExpr::parse(expr) {
            let span = e.span.expect("every error has a span");
            assert!(
                span.start <= span.end && span.end <= expr.len(),
                "{expr:?} {span:?}"
            );
            assert!(expr.is_char_boundary(span.start) && expr.is_char_boundary(span.end));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Regression corpora (tests/fixtures/cron)
// ---------------------------------------------------------------------------------------

fn corpus_lines(name: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("//"))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: {l}: {e}")))
        .collect()
}

/// `parse.jsonl`: one object per line, `{"expr": ..., "ok": true}` or
/// `{"expr": ..., "error": "exact message", "span": [start, end]}`.
#[test]
fn parse_corpus_replays() {
    let lines = corpus_lines("parse.jsonl");
    assert!(lines.len() >= 100, "corpus has {} lines", lines.len());
    for line in lines {
        let expr = line["expr"].as_str().unwrap();
        let result = CronExpr::parse(expr);
        if line.get("ok").and_then(|v| v.as_bool()) == Some(true) {
            assert!(result.is_ok(), "{expr:?}: {:?}", result.err());
            continue;
        }
        let error = result
            .err()
            .unwrap_or_else(|| panic!("{expr:?} was accepted"));
        if let Some(message) = line.get("error").and_then(|v| v.as_str()) {
            assert_eq!(error.message, message, "{expr:?}");
        }
        if let Some(span) = line.get("span").and_then(|v| v.as_array()) {
            let span = span[0].as_u64().unwrap() as usize..span[1].as_u64().unwrap() as usize;
            assert_eq!(error.span, Some(span), "{expr:?}");
        }
    }
}

/// `next.jsonl`: `{"expr", "tz", "after", "next": [local RFC 3339, ...]}`; an empty
/// `next` means `None`.
#[test]
fn next_corpus_replays() {
    let lines = corpus_lines("next.jsonl");
    assert!(lines.len() >= 30, "corpus has {} lines", lines.len());
    for line in lines {
        let expr = line["expr"].as_str().unwrap();
        let zone = line["tz"].as_str().unwrap();
        let after = line["after"].as_str().unwrap();
        let expected: Vec<&str> = line["next"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        if expected.is_empty() {
            assert_eq!(
                schedule(expr, zone).next_after(instant(after)),
                None,
                "{expr:?}"
            );
        } else {
            assert_fires(expr, zone, after, &expected);
        }
    }
}

/// Every `$ celeriac next --cron ... | --every ...` example in `docs/schedules.md` shows
/// what the engine computes.
#[test]
fn documented_examples_are_what_the_engine_computes() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/schedules.md");
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut checked = 0;
    for (i, line) in lines.iter().enumerate() {
        let Some(command) = line.strip_prefix("$ celeriac next ") else {
            continue;
        };
        let words = shell_words(command);
        let flag = |name: &str| {
            words
                .iter()
                .position(|w| w == name)
                .map(|p| words[p + 1].clone())
        };
        let count: usize = flag("--count").unwrap().parse().unwrap();
        let after = instant(&flag("--after").unwrap());
        let shown: Vec<&str> = lines[i + 1..i + 1 + count]
            .iter()
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        let computed: Vec<String> = if let Some(expr) = flag("--cron") {
            let s = schedule(&expr, &flag("--tz").unwrap());
            s.iter_after(after)
                .take(count)
                .map(|t| local_rfc3339(t, s.timezone()))
                .collect()
        } else {
            let every = humantime::parse_duration(&flag("--every").unwrap()).unwrap();
            let anchor = flag("--anchor").map(|a| instant(&a));
            let s = IntervalSchedule::new(every, anchor).unwrap();
            let mut out = Vec::new();
            let mut t = after;
            for _ in 0..count {
                t = s.next_after(t).unwrap();
                out.push(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            }
            out
        };
        assert_eq!(computed, shown, "docs/schedules.md line {}: {line}", i + 1);
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} examples found");
}

/// Splits a command line at spaces, honouring single quotes.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => quoted = !quoted,
            ' ' if !quoted => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            _ => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

// ---------------------------------------------------------------------------------------
// Intervals, Timing, time zones
// ---------------------------------------------------------------------------------------

#[test]
fn interval_grid_is_anchored_in_both_directions() {
    let anchor = instant("2025-06-01T12:00:00Z");
    let every = IntervalSchedule::new(Duration::from_secs(90 * 60), Some(anchor)).unwrap();
    assert_eq!(
        every.next_after(instant("2025-06-01T09:00:00Z")),
        Some(instant("2025-06-01T09:00:00Z") + chrono::Duration::minutes(90))
    );
    assert_eq!(
        every.next_after(instant("2025-06-01T11:59:59.999Z")),
        Some(anchor)
    );
    assert_eq!(
        every.next_after(anchor),
        Some(instant("2025-06-01T13:30:00Z"))
    );
    assert_eq!(every.every(), Duration::from_secs(5400));
    assert_eq!(every.anchor(), anchor);
}

#[test]
fn interval_grid_does_not_drift() {
    let every = IntervalSchedule::new(Duration::from_millis(1_234), None).unwrap();
    let mut t = instant("2025-01-01T00:00:00Z");
    for _ in 0..10_000 {
        let next = every.next_after(t).unwrap();
        assert!(next > t);
        assert_eq!(next.timestamp_millis() % 1_234, 0);
        t = next;
    }
    // Any beat, whenever it starts, computes the same instants.
    let late_start = every
        .next_after(instant("2025-01-01T00:00:07.777Z"))
        .unwrap();
    assert_eq!(late_start.timestamp_millis() % 1_234, 0);
}

#[test]
fn interval_default_anchor_is_the_unix_epoch() {
    let hourly = IntervalSchedule::new(Duration::from_secs(3600), None).unwrap();
    assert_eq!(hourly.anchor(), DateTime::UNIX_EPOCH);
    assert_eq!(
        hourly.next_after(instant("1969-12-31T22:30:00Z")),
        Some(instant("1969-12-31T23:00:00Z"))
    );
}

#[test]
fn interval_shorter_than_a_second_is_rejected() {
    let err = IntervalSchedule::new(Duration::from_millis(500), None).unwrap_err();
    assert_eq!(err.to_string(), "interval must be at least 1s, got 500ms");
    assert!(IntervalSchedule::new(Duration::ZERO, None).is_err());
}

#[test]
fn interval_overflow_returns_none() {
    let yearly = IntervalSchedule::new(Duration::from_secs(365 * 86_400), None).unwrap();
    assert_eq!(yearly.next_after(DateTime::<Utc>::MAX_UTC), None);
    let huge = IntervalSchedule::new(
        Duration::from_secs(u64::MAX),
        Some(DateTime::<Utc>::MAX_UTC),
    )
    .unwrap();
    assert_eq!(huge.next_after(DateTime::<Utc>::MAX_UTC), None);
    assert_eq!(
        huge.next_after(DateTime::<Utc>::MIN_UTC),
        Some(DateTime::<Utc>::MAX_UTC)
    );
}

#[test]
fn timing_dispatches_to_cron_and_interval() {
    let cron = Timing::Cron(schedule("0 9 * * *", "Asia/Shanghai"));
    assert_eq!(
        cron.next_after(instant("2025-01-01T00:00:00Z")),
        Some(instant("2025-01-01T01:00:00Z"))
    );
    let every = Timing::Interval(IntervalSchedule::new(Duration::from_secs(60), None).unwrap());
    let got: Vec<_> = every
        .iter_after(instant("2025-01-01T00:00:30Z"))
        .take(2)
        .collect();
    assert_eq!(
        got,
        [
            instant("2025-01-01T00:01:00Z"),
            instant("2025-01-01T00:02:00Z")
        ]
    );
}

#[test]
fn timezone_names_are_case_sensitive_with_suggestions() {
    assert_eq!(
        parse_timezone("America/New_York"),
        Ok(tz("America/New_York"))
    );
    assert_eq!(parse_timezone("UTC"), Ok(Tz::UTC));
    assert_eq!(
        parse_timezone("america/new_york").unwrap_err(),
        "unknown time zone \"america/new_york\" (did you mean America/New_York?)"
    );
    assert!(
        parse_timezone("Asia/Shangai")
            .unwrap_err()
            .contains("did you mean Asia/Shanghai?")
    );
    assert!(parse_timezone("Mars/Olympus").is_err());
}

// ---------------------------------------------------------------------------------------
// Reference implementation: an expression AST evaluated by brute force
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Minute,
    Hour,
    Dom,
    Month,
    Dow,
}

impl Kind {
    fn range(self) -> (u32, u32) {
        match self {
            Kind::Minute => (0, 59),
            Kind::Hour => (0, 23),
            Kind::Dom => (1, 31),
            Kind::Month => (1, 12),
            Kind::Dow => (0, 7),
        }
    }
}

#[derive(Debug, Clone)]
enum Item {
    Value(u32),
    Range(u32, u32),
    /// `start-end/step`; `star` renders `*/step` (start and end are then the field range),
    /// `open` renders `start/step` (end is then the field maximum).
    Step {
        start: u32,
        end: u32,
        step: u32,
        star: bool,
        open: bool,
    },
    LastDay,
    LastWeekday(u32),
    Nth(u32, u32),
}

#[derive(Debug, Clone)]
struct Field {
    kind: Kind,
    /// Exactly `*` (or `?` in a day field): unrestricted.
    any: bool,
    question: bool,
    items: Vec<Item>,
}

#[derive(Debug, Clone)]
struct Expr {
    fields: Vec<Field>,
    /// Rendering choices: names, case, separators.
    style: u64,
}

fn days_in(year: i32, month: u32) -> u32 {
    let next = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)
    };
    next.unwrap().pred_opt().unwrap().day()
}

impl Field {
    /// Plain membership of `v` (numbers as written; for day-of-week 0..=7).
    fn contains(&self, v: u32) -> bool {
        self.any
            || self.items.iter().any(|item| match *item {
                Item::Value(a) => v == a,
                Item::Range(a, b) => a <= v && v <= b,
                Item::Step {
                    start, end, step, ..
                } => start <= v && v <= end && (v - start).is_multiple_of(step),
                _ => false,
            })
    }

    fn dom_matches(&self, date: NaiveDate) -> bool {
        let last = days_in(date.year(), date.month());
        self.contains(date.day())
            || self
                .items
                .iter()
                .any(|i| matches!(i, Item::LastDay) && date.day() == last)
    }

    fn dow_matches(&self, date: NaiveDate) -> bool {
        let weekday = date.weekday().num_days_from_sunday();
        let last = days_in(date.year(), date.month());
        let is = |w: u32| w % 7 == weekday;
        self.contains(weekday)
            || (weekday == 0 && self.contains(7))
            || self.items.iter().any(|i| match *i {
                Item::LastWeekday(w) => is(w) && date.day() + 7 > last,
                Item::Nth(w, k) => is(w) && (date.day() - 1) / 7 + 1 == k,
                _ => false,
            })
    }
}

impl Expr {
    fn field(&self, kind: Kind) -> &Field {
        &self.fields[kind as usize]
    }

    fn date_matches(&self, date: NaiveDate) -> bool {
        if !self.field(Kind::Month).contains(date.month()) {
            return false;
        }
        let dom = self.field(Kind::Dom);
        let dow = self.field(Kind::Dow);
        match (dom.any, dow.any) {
            (false, false) => dom.dom_matches(date) || dow.dow_matches(date),
            (false, true) => dom.dom_matches(date),
            (true, false) => dow.dow_matches(date),
            (true, true) => true,
        }
    }

    fn matches(&self, local: NaiveDateTime) -> bool {
        self.field(Kind::Minute).contains(local.minute())
            && self.field(Kind::Hour).contains(local.hour())
            && self.date_matches(local.date())
    }

    fn render(&self) -> String {
        let mut rng = self.style;
        let mut next = move || {
            // xorshift64
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut out = String::new();
        if next() % 8 == 0 {
            out.push(' ');
        }
        for (i, field) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push_str(match next() % 6 {
                    0 => "\t",
                    1 => "  ",
                    2 => " \t ",
                    _ => " ",
                });
            }
            if field.any {
                out.push_str(if field.question { "?" } else { "*" });
                continue;
            }
            let items: Vec<String> = field
                .items
                .iter()
                .map(|item| render_item(field.kind, item, &mut next))
                .collect();
            out.push_str(&items.join(","));
        }
        if next() % 8 == 0 {
            out.push_str(" \t");
        }
        out
    }
}

const MONTHS: [&str; 13] = [
    "", "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// `v` as a number or (sometimes, where it means the same) a name in some case.
fn render_value(kind: Kind, v: u32, position: Position, next: &mut impl FnMut() -> u64) -> String {
    let choice = next();
    let name = match kind {
        Kind::Month => Some(MONTHS[v as usize]),
        // A name for Sunday reads as 0 at the start of a range and as 7 at its end.
        Kind::Dow => match (v, position) {
            (0, Position::End) => None,
            (7, Position::Start) => None,
            (7, _) => Some("SUN"),
            _ => Some(WEEKDAYS[v as usize]),
        },
        _ => None,
    };
    match name {
        Some(name) if !choice.is_multiple_of(3) => match choice % 5 {
            0 => name.to_lowercase(),
            1 => {
                let mut s = name[..1].to_string();
                s.push_str(&name[1..].to_lowercase());
                s
            }
            _ => name.to_string(),
        },
        _ => v.to_string(),
    }
}

#[derive(Clone, Copy)]
enum Position {
    Alone,
    Start,
    End,
}

fn render_item(kind: Kind, item: &Item, next: &mut impl FnMut() -> u64) -> String {
    match *item {
        Item::Value(v) => render_value(kind, v, Position::Alone, next),
        Item::Range(a, b) => format!(
            "{}-{}",
            render_value(kind, a, Position::Start, next),
            render_value(kind, b, Position::End, next)
        ),
        Item::Step {
            start,
            end,
            step,
            star,
            open,
        } => {
            if star {
                format!("*/{step}")
            } else if open {
                format!(
                    "{}/{step}",
                    render_value(kind, start, Position::Start, next)
                )
            } else {
                format!(
                    "{}-{}/{step}",
                    render_value(kind, start, Position::Start, next),
                    render_value(kind, end, Position::End, next)
                )
            }
        }
        Item::LastDay => if next().is_multiple_of(2) { "L" } else { "l" }.to_string(),
        Item::LastWeekday(w) => {
            let day = render_value(kind, w, Position::Alone, next);
            format!("{day}{}", if next().is_multiple_of(4) { "l" } else { "L" })
        }
        Item::Nth(w, k) => format!("{}#{k}", render_value(kind, w, Position::Alone, next)),
    }
}

/// Resolves a wall time that falls in a gap to the first instant after the gap, by
/// walking the wall clock forward (minutes, then seconds back to the exact edge).
fn reference_gap_end(zone: Tz, wall: NaiveDateTime) -> DateTime<Utc> {
    let valid = |w: NaiveDateTime| !matches!(zone.from_local_datetime(&w), LocalResult::None);
    let mut w = wall;
    while !valid(w) {
        w += chrono::Duration::minutes(1);
    }
    // Back to the exact edge, which is not on a whole minute for odd (LMT) offsets.
    while w > wall && valid(w - chrono::Duration::seconds(1)) {
        w -= chrono::Duration::seconds(1);
    }
    zone.from_local_datetime(&w)
        .earliest()
        .unwrap()
        .with_timezone(&Utc)
}

/// Every fire instant in `(from, to]`, by walking each matching local date's minutes and
/// applying the DST rules literally.
fn reference_fires(
    expr: &Expr,
    zone: Tz,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    let hour_any = expr.field(Kind::Hour).any;
    let mut out = BTreeSet::new();
    // Local dates are within a day of UTC dates.
    let mut date = from.date_naive() - chrono::Days::new(1);
    let last = to.date_naive() + chrono::Days::new(1);
    while date <= last {
        if expr.date_matches(date) {
            for h in 0..24 {
                if !expr.field(Kind::Hour).contains(h) {
                    continue;
                }
                for m in 0..60 {
                    if !expr.field(Kind::Minute).contains(m) {
                        continue;
                    }
                    let wall = date.and_hms_opt(h, m, 0).unwrap();
                    match zone.from_local_datetime(&wall) {
                        LocalResult::Single(t) => {
                            out.insert(t.with_timezone(&Utc));
                        }
                        LocalResult::Ambiguous(first, second) => {
                            out.insert(first.with_timezone(&Utc));
                            if hour_any {
                                out.insert(second.with_timezone(&Utc));
                            }
                        }
                        LocalResult::None => {
                            if !hour_any {
                                out.insert(reference_gap_end(zone, wall));
                            }
                        }
                    }
                }
            }
        }
        date = date.succ_opt().unwrap();
    }
    out.into_iter().filter(|t| *t > from && *t <= to).collect()
}

fn thirty_years_after(t: DateTime<Utc>) -> DateTime<Utc> {
    t.checked_add_months(Months::new(360)).unwrap()
}

/// Checks `steps` consecutive `next_after` results from `start` against the reference:
/// each one strictly later, matching, and with no reference fire skipped in between.
fn check_against_reference(
    expr: &Expr,
    zone: Tz,
    start: DateTime<Utc>,
    steps: usize,
) -> Result<(), TestCaseError> {
    let text = expr.render();
    let parsed = match CronExpr::parse(&text) {
        Ok(p) => p,
        Err(e) => {
            // The only valid-grammar rejection is "never fires": the reference must agree
            // that no day of the 28-year cycle (2001..=2030) matches.
            prop_assert!(
                e.message.starts_with("never fires"),
                "{text:?}: {}",
                e.message
            );
            let mut day = NaiveDate::from_ymd_opt(2001, 1, 1).unwrap();
            while day.year() <= 2030 {
                prop_assert!(
                    !expr.date_matches(day),
                    "{text:?} rejected but matches {day}"
                );
                day = day.succ_opt().unwrap();
            }
            return Ok(());
        }
    };
    let s = CronSchedule::new(parsed, zone);
    let mut after = start;
    for _ in 0..steps {
        let got = s.next_after(after);
        match got {
            Some(t) => {
                prop_assert!(t > after, "{text:?} in {zone}: {t} not after {after}");
                let expected = reference_fires(expr, zone, after, t);
                prop_assert_eq!(
                    expected.first().copied(),
                    Some(t),
                    "{:?} in {} after {}: engine {}, reference {:?}",
                    text,
                    zone,
                    after,
                    t,
                    expected.first()
                );
                // It matches, or it ends a gap in which a matching wall time was skipped.
                let local = t.with_timezone(&zone).naive_local();
                let ends_gap = zone.from_local_datetime(&(local - chrono::Duration::seconds(1)))
                    == LocalResult::None;
                prop_assert!(
                    expr.matches(local) || ends_gap,
                    "{text:?}: {t} does not match"
                );
                after = t;
            }
            None => {
                let horizon = thirty_years_after(after);
                let expected = reference_fires(expr, zone, after, horizon);
                prop_assert!(
                    expected.is_empty(),
                    "{:?} in {} after {}: engine None, reference {:?}",
                    text,
                    zone,
                    after,
                    expected.first()
                );
                break;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------

fn item_strategy(kind: Kind, bias: Option<&'static [u32]>) -> BoxedStrategy<Item> {
    let (min, max) = kind.range();
    let value = match bias {
        Some(values) => prop_oneof![3 => proptest::sample::select(values), 1 => min..=max].boxed(),
        None => (min..=max).boxed(),
    };
    let mut choices: Vec<(u32, BoxedStrategy<Item>)> = vec![
        (4, value.clone().prop_map(Item::Value).boxed()),
        (
            2,
            (value.clone(), 0..=max - min)
                .prop_map(move |(a, len)| Item::Range(a, (a + len % 6).min(max)))
                .boxed(),
        ),
        (
            2,
            (1..=max)
                .prop_map(move |step| Item::Step {
                    start: min,
                    end: max,
                    step,
                    star: true,
                    open: false,
                })
                .boxed(),
        ),
        (
            1,
            (value.clone(), 0..=max - min, 1..=max)
                .prop_map(move |(a, len, step)| Item::Step {
                    start: a,
                    end: (a + len).min(max),
                    step,
                    star: false,
                    open: false,
                })
                .boxed(),
        ),
        (
            1,
            (value, 1..=max)
                .prop_map(move |(a, step)| Item::Step {
                    start: a,
                    end: max,
                    step,
                    star: false,
                    open: true,
                })
                .boxed(),
        ),
    ];
    match kind {
        Kind::Dom => choices.push((2, Just(Item::LastDay).boxed())),
        Kind::Dow => {
            choices.push((2, (0..=7u32).prop_map(Item::LastWeekday).boxed()));
            choices.push((
                2,
                (0..=7u32, 1..=5u32)
                    .prop_map(|(w, k)| Item::Nth(w, k))
                    .boxed(),
            ));
        }
        _ => {}
    }
    proptest::strategy::Union::new_weighted(choices).boxed()
}

fn field_strategy(
    kind: Kind,
    any_weight: u32,
    bias: Option<&'static [u32]>,
) -> BoxedStrategy<Field> {
    let day_field = matches!(kind, Kind::Dom | Kind::Dow);
    prop_oneof![
        any_weight => any::<bool>().prop_map(move |q| Field {
            kind,
            any: true,
            question: q && day_field,
            items: vec![],
        }),
        4 => proptest::collection::vec(item_strategy(kind, bias), 1..=3)
            .prop_map(move |items| Field { kind, any: false, question: false, items }),
    ]
    .boxed()
}

fn expr_strategy() -> impl Strategy<Value = Expr> {
    (
        field_strategy(Kind::Minute, 1, Some(&[0, 15, 30, 45, 59])),
        field_strategy(Kind::Hour, 2, Some(&[0, 1, 2, 3, 23])),
        field_strategy(Kind::Dom, 4, None),
        field_strategy(Kind::Month, 4, None),
        field_strategy(Kind::Dow, 4, None),
        any::<u64>(),
    )
        .prop_map(|(a, b, c, d, e, style)| Expr {
            fields: vec![a, b, c, d, e],
            style: style | 1,
        })
}

/// Expressions whose wall times sit where zones change their clocks.
fn dst_expr_strategy() -> impl Strategy<Value = Expr> {
    (
        field_strategy(Kind::Minute, 1, Some(&[0, 15, 30, 45])),
        field_strategy(Kind::Hour, 2, Some(&[0, 1, 2, 3, 23])),
        field_strategy(Kind::Dom, 12, None),
        field_strategy(Kind::Month, 12, None),
        field_strategy(Kind::Dow, 12, None),
        any::<u64>(),
    )
        .prop_map(|(a, b, c, d, e, style)| Expr {
            fields: vec![a, b, c, d, e],
            style: style | 1,
        })
}

const ZONES: [&str; 18] = [
    "UTC",
    "Asia/Shanghai",
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",
    "America/Havana",
    "America/Santiago",
    "Asia/Beirut",
    "Pacific/Apia",
    "Asia/Kolkata",
    "America/St_Johns",
    "Europe/Moscow",
    "Antarctica/Troll",
    "Africa/Casablanca",
    "Europe/Dublin",
    "America/Sao_Paulo",
    "Pacific/Chatham",
    "Asia/Tehran",
];

/// Instants at which `ZONES[index]` changed its UTC offset, 1900..2045 (12-hour scan,
/// then bisected to the second). Computed once per zone.
fn transitions(index: usize) -> &'static [i64] {
    static CACHE: [OnceLock<Vec<i64>>; ZONES.len()] = [const { OnceLock::new() }; ZONES.len()];
    CACHE[index].get_or_init(|| {
        let zone = tz(ZONES[index]);
        let offset = |t: i64| {
            zone.offset_from_utc_datetime(&DateTime::from_timestamp(t, 0).unwrap().naive_utc())
                .fix()
        };
        let start = instant("1900-01-01T00:00:00Z").timestamp();
        let end = instant("2045-01-01T00:00:00Z").timestamp();
        let step = 12 * 3600;
        let mut found = Vec::new();
        let mut t = start;
        let mut current = offset(t);
        while t < end {
            let next = offset(t + step);
            if next != current {
                let (mut lo, mut hi) = (t, t + step);
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if offset(mid) == current {
                        lo = mid
                    } else {
                        hi = mid
                    }
                }
                found.push(hi);
                current = next;
            }
            t += step;
        }
        found
    })
}

/// A start instant: anywhere in 1900..2100, or near one of the zone's transitions.
fn start_instant(
    zone_index: usize,
    near_transition: bool,
    pick: usize,
    delta: i64,
    nanos: u32,
) -> DateTime<Utc> {
    let list = transitions(zone_index);
    let base = if near_transition && !list.is_empty() {
        // Mostly within three hours of the change (inside a gap's or fold's reach, often
        // on a whole minute), sometimes anywhere within 40 hours.
        let window = match delta.rem_euclid(3) {
            0 => 40 * 3600,
            _ => 3 * 3600,
        };
        let delta = (delta / 3) % window;
        let delta = if delta % 2 == 0 {
            delta / 60 * 60
        } else {
            delta
        };
        list[pick % list.len()] + delta
    } else {
        instant("1900-01-01T00:00:00Z").timestamp() + (pick as i64 % (200 * 365 * 86_400))
    };
    DateTime::from_timestamp(base, nanos % 4 * 250_000_000).unwrap()
}

const MIN_SECONDS: i64 = DateTime::<Utc>::MIN_UTC.timestamp();
const MAX_SECONDS: i64 = DateTime::<Utc>::MAX_UTC.timestamp();

fn config(cases: u32) -> ProptestConfig {
    // PROPTEST_CASES overrides the default count for long runs (e.g. in release mode).
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/fixtures/cron/proptest-regressions.txt",
        ))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn next_after_agrees_with_brute_force_reference(
        expr in expr_strategy(),
        zone_index in 0..ZONES.len(),
        near in any::<bool>(),
        pick in any::<usize>(),
        delta in any::<i64>(),
        nanos in any::<u32>(),
    ) {
        let start = start_instant(zone_index, near, pick, delta, nanos);
        check_against_reference(&expr, tz(ZONES[zone_index]), start, 4)?;
    }

    #[test]
    fn dst_heavy_expressions_agree_with_reference_near_transitions(
        expr in dst_expr_strategy(),
        zone_index in 1..ZONES.len(),
        pick in any::<usize>(),
        delta in any::<i64>(),
        nanos in any::<u32>(),
    ) {
        let start = start_instant(zone_index, true, pick, delta, nanos);
        check_against_reference(&expr, tz(ZONES[zone_index]), start, 6)?;
    }

    #[test]
    fn day_matching_agrees_with_reference(
        expr in expr_strategy(),
        days in proptest::collection::vec(-30_000i64..200_000, 40),
    ) {
        let text = expr.render();
        if let Ok(parsed) = CronExpr::parse(&text) {
            let epoch = NaiveDate::from_ymd_opt(1900, 1, 1).unwrap();
            for offset in days {
                let date = epoch + chrono::Duration::days(offset);
                prop_assert_eq!(
                    parsed.matches_date(date),
                    expr.date_matches(date),
                    "{:?} on {}", text, date
                );
                let local = date
                    .and_hms_opt(offset.rem_euclid(24) as u32, offset.rem_euclid(60) as u32, 0)
                    .unwrap();
                prop_assert_eq!(
                    parsed.matches_local(local),
                    expr.matches(local),
                    "{:?} at {}", text, local
                );
            }
        }
    }

    #[test]
    fn arbitrary_strings_never_panic_the_parser(text in ".{0,40}") {
        check_parse_is_total(&text);
    }

    #[test]
    fn cron_like_strings_never_panic_the_parser(
        text in "[0-9A-Za-z*/,#?@ \t-]{0,30}",
    ) {
        check_parse_is_total(&text);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_parser(
        bytes in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        check_parse_is_total(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn valid_expressions_at_extreme_instants_never_panic(
        expr in expr_strategy(),
        zone_index in 0..ZONES.len(),
        seconds in prop_oneof![
            // Years 1900..2400.
            -2_208_988_800i64..13_569_465_600,
            // Anywhere chrono can represent.
            MIN_SECONDS..=MAX_SECONDS,
            // The very ends.
            (MAX_SECONDS - 40 * 86_400)..=MAX_SECONDS,
            MIN_SECONDS..=(MIN_SECONDS + 40 * 86_400),
        ],
    ) {
        if let Ok(parsed) = CronExpr::parse(&expr.render()) {
            let s = CronSchedule::new(parsed, tz(ZONES[zone_index]));
            let after = DateTime::from_timestamp(seconds, 0).unwrap();
            if let Some(t) = s.next_after(after) {
                prop_assert!(t > after);
                prop_assert!(t <= thirty_years_after_saturating(after));
            }
        }
    }

    #[test]
    fn interval_next_after_is_the_next_grid_point(
        every_ms in 1_000u64..10_000_000_000,
        anchor_ms in -10_000_000_000_000i64..10_000_000_000_000,
        after_ms in -10_000_000_000_000i64..10_000_000_000_000,
    ) {
        let anchor = DateTime::from_timestamp_millis(anchor_ms).unwrap();
        let after = DateTime::from_timestamp_millis(after_ms).unwrap();
        let s = IntervalSchedule::new(Duration::from_millis(every_ms), Some(anchor)).unwrap();
        let t = s.next_after(after).unwrap();
        prop_assert!(t > after);
        prop_assert!(t - after <= chrono::Duration::milliseconds(every_ms as i64));
        prop_assert_eq!((t - anchor).num_milliseconds().rem_euclid(every_ms as i64), 0);
    }
}

fn thirty_years_after_saturating(t: DateTime<Utc>) -> DateTime<Utc> {
    t.checked_add_months(Months::new(360))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn check_parse_is_total(text: &str) {
    match CronExpr::parse(text) {
        Ok(parsed) => {
            // Accepted input must be usable.
            let s = CronSchedule::new(parsed, Tz::UTC);
            let _ = s.next_after(instant("2025-01-01T00:00:00Z"));
        }
        Err(e) => {
            assert!(!e.message.is_empty());
            let span = e.span.expect("every error has a span");
            assert!(
                span.start <= span.end && span.end <= text.len(),
                "{text:?} {span:?}"
            );
            assert!(text.is_char_boundary(span.start) && text.is_char_boundary(span.end));
        }
    }
}
