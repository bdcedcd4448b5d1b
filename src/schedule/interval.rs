//! Fixed intervals on a grid: fire at `anchor + k * every` (INTERFACE SKETCH; keep the API).

use std::time::Duration;

use chrono::{DateTime, Utc};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IntervalError(pub String);

/// `anchor + k * every` for every integer k; the anchor defaults to the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntervalSchedule {
    every: Duration,
    anchor: DateTime<Utc>,
}

impl IntervalSchedule {
    pub fn new(every: Duration, anchor: Option<DateTime<Utc>>) -> Result<Self, IntervalError> {
        if every < Duration::from_secs(1) {
            return Err(IntervalError("interval must be at least 1s".into()));
        }
        Ok(IntervalSchedule {
            every,
            anchor: anchor.unwrap_or(DateTime::UNIX_EPOCH),
        })
    }

    pub fn every(&self) -> Duration {
        self.every
    }

    pub fn anchor(&self) -> DateTime<Utc> {
        self.anchor
    }

    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let every = chrono::Duration::from_std(self.every).ok()?;
        let step = every.num_milliseconds();
        let since = (after - self.anchor).num_milliseconds();
        let k = since.div_euclid(step) + 1;
        Some(self.anchor + chrono::Duration::milliseconds(k * step))
    }
}
