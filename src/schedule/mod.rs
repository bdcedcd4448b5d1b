//! When schedules fire: cron expressions in an IANA time zone, and anchored intervals.
//!
//! Pure code: no clock, no I/O. Everything here answers one question,
//! `next_after(instant) -> Option<instant>`, strictly after the given instant.
//! The semantics (DST rules, the day rule, what is rejected) are in `docs/schedules.md`.

pub mod cron;
pub mod interval;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

pub use cron::{CronError, CronExpr, CronSchedule};
pub use interval::{IntervalError, IntervalSchedule};

/// The timing of one schedule: a cron expression in a zone, or a fixed interval on a grid.
#[derive(Debug, Clone, PartialEq)]
pub enum Timing {
    Cron(CronSchedule),
    Interval(IntervalSchedule),
}

impl Timing {
    /// The first fire instant strictly after `after`, or `None` when there is none within
    /// the search horizon (30 years for cron) or the calendar's range.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Timing::Cron(c) => c.next_after(after),
            Timing::Interval(i) => i.next_after(after),
        }
    }

    /// The fire instants strictly after `after`, in order.
    pub fn iter_after(&self, after: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        std::iter::successors(self.next_after(after), move |t| self.next_after(*t))
    }
}

/// Parses an IANA zone name such as `Asia/Shanghai`.
///
/// Names are case-sensitive, as in the tz database; a wrong case or a near miss gets a
/// "did you mean" hint: `unknown time zone "asia/shanghai" (did you mean Asia/Shanghai?)`.
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    if let Ok(tz) = name.parse::<Tz>() {
        return Ok(tz);
    }
    let names = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name());
    let same_but_case = names
        .clone()
        .find(|candidate| candidate.eq_ignore_ascii_case(name));
    let suggestion = same_but_case.or_else(|| {
        let lower = name.to_ascii_lowercase();
        names
            .map(|candidate| {
                let score = strsim::jaro_winkler(&lower, &candidate.to_ascii_lowercase());
                (score, candidate)
            })
            .filter(|(score, _)| *score >= 0.85)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, candidate)| candidate)
    });
    Err(match suggestion {
        Some(s) => format!("unknown time zone {name:?} (did you mean {s}?)"),
        None => format!("unknown time zone {name:?} (expected an IANA name such as Europe/Berlin)"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timezone_names_are_case_sensitive_with_a_hint() {
        assert_eq!(
            parse_timezone("Asia/Shanghai"),
            Ok(chrono_tz::Asia::Shanghai)
        );
        assert_eq!(
            parse_timezone("asia/shanghai").unwrap_err(),
            "unknown time zone \"asia/shanghai\" (did you mean Asia/Shanghai?)"
        );
    }

    #[test]
    fn misspelled_timezone_gets_a_suggestion() {
        let err = parse_timezone("Europe/Berlim").unwrap_err();
        assert!(err.contains("did you mean Europe/Berlin?"), "{err}");
        let err = parse_timezone("America/New York").unwrap_err();
        assert!(err.contains("did you mean America/New_York?"), "{err}");
    }

    #[test]
    fn unrelated_timezone_name_has_no_suggestion() {
        let err = parse_timezone("xyzzy").unwrap_err();
        assert!(err.contains("expected an IANA name"), "{err}");
        assert!(parse_timezone("").is_err());
    }
}
