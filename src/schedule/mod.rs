//! When schedules fire: cron expressions in an IANA time zone, and anchored intervals.
//!
//! Pure code: no clock, no I/O. Everything here answers one question,
//! `next_after(instant) -> Option<instant>`, strictly after the given instant.
//! (INTERFACE SKETCH: the engine issue replaces the internals; keep the public API.)

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
    /// the search horizon (30 years for cron).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Timing::Cron(c) => c.next_after(after),
            Timing::Interval(i) => i.next_after(after),
        }
    }
}

/// Parses an IANA zone name such as `Asia/Shanghai`.
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("unknown time zone `{name}`"))
}
