//! Fixed intervals on a grid: fire at `anchor + k * every` for every integer `k`.
//!
//! The grid extends in both directions from the anchor (the Unix epoch unless given), so
//! the fire instants never drift and every beat, started whenever, computes the same ones.
//! Arithmetic is exact, in integer nanoseconds; nothing overflows into a panic.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// An interval that cannot be scheduled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IntervalError(pub String);

impl IntervalError {
    /// Never: a bad interval stays bad until the configuration changes.
    pub fn is_transient(&self) -> bool {
        false
    }
}

const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// `anchor + k * every` for every integer k; the anchor defaults to the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntervalSchedule {
    every: Duration,
    anchor: DateTime<Utc>,
}

impl IntervalSchedule {
    /// An interval of `every` (at least 1s, whole milliseconds) on the grid through
    /// `anchor` (default: the Unix epoch).
    pub fn new(every: Duration, anchor: Option<DateTime<Utc>>) -> Result<Self, IntervalError> {
        if every < Duration::from_secs(1) {
            return Err(IntervalError(format!(
                "interval must be at least 1s, got {}",
                humantime::format_duration(every)
            )));
        }
        if !every.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(IntervalError(format!(
                "interval must be a whole number of milliseconds, got {}",
                humantime::format_duration(every)
            )));
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

    /// The first grid instant strictly after `after`, or `None` if it is beyond the range
    /// of `DateTime<Utc>`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let step = self.every.as_nanos() as i128;
        let anchor = nanos(self.anchor);
        let k = (nanos(after) - anchor).div_euclid(step) + 1;
        from_nanos(anchor + k * step)
    }
}

fn nanos(t: DateTime<Utc>) -> i128 {
    i128::from(t.timestamp()) * NANOS_PER_SECOND + i128::from(t.timestamp_subsec_nanos())
}

fn from_nanos(n: i128) -> Option<DateTime<Utc>> {
    let seconds = i64::try_from(n.div_euclid(NANOS_PER_SECOND)).ok()?;
    let subsec = n.rem_euclid(NANOS_PER_SECOND) as u32;
    DateTime::from_timestamp(seconds, subsec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn grid_is_anchored_at_the_epoch_by_default() {
        let every = IntervalSchedule::new(Duration::from_secs(90), None).unwrap();
        assert_eq!(
            every.next_after(at("1970-01-01T00:00:00Z")),
            Some(at("1970-01-01T00:01:30Z"))
        );
        assert_eq!(
            every.next_after(at("2025-01-01T00:00:00Z")),
            Some(at("2025-01-01T00:00:00Z") + chrono::Duration::seconds(90))
        );
    }

    #[test]
    fn grid_extends_before_the_anchor() {
        let anchor = at("2025-06-01T12:00:00Z");
        let every = IntervalSchedule::new(Duration::from_secs(3600), Some(anchor)).unwrap();
        assert_eq!(
            every.next_after(at("2025-06-01T09:30:00Z")),
            Some(at("2025-06-01T10:00:00Z"))
        );
        assert_eq!(
            every.next_after(at("2025-06-01T10:00:00Z")),
            Some(at("2025-06-01T11:00:00Z"))
        );
    }

    #[test]
    fn next_after_is_strictly_after_a_grid_point() {
        let every = IntervalSchedule::new(Duration::from_millis(1500), None).unwrap();
        let t = Utc.timestamp_opt(3, 0).unwrap();
        assert_eq!(
            every.next_after(t),
            Some(Utc.timestamp_opt(4, 500_000_000).unwrap())
        );
    }

    #[test]
    fn too_short_or_sub_millisecond_intervals_are_rejected() {
        assert!(IntervalSchedule::new(Duration::from_millis(999), None).is_err());
        assert!(IntervalSchedule::new(Duration::from_nanos(1_000_000_001), None).is_err());
        assert!(IntervalSchedule::new(Duration::from_millis(1001), None).is_ok());
    }

    #[test]
    fn overflow_returns_none_instead_of_panicking() {
        let every = IntervalSchedule::new(Duration::from_secs(u64::MAX), None).unwrap();
        assert_eq!(every.next_after(DateTime::<Utc>::MAX_UTC), None);
        assert_eq!(
            every.next_after(DateTime::<Utc>::MIN_UTC),
            Some(DateTime::UNIX_EPOCH)
        );
        let day = IntervalSchedule::new(Duration::from_secs(86_400), None).unwrap();
        assert_eq!(day.next_after(DateTime::<Utc>::MAX_UTC), None);
        assert!(day.next_after(DateTime::<Utc>::MIN_UTC).is_some());
    }
}
