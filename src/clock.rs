//! Time as a dependency.
//!
//! Everything that needs "now" or needs to sleep until an instant takes a [`Clock`], so that
//! timing-sensitive behaviour (the beat loop, leases, misfire handling) can be driven by a
//! [`ManualClock`] in tests instead of waiting for real time to pass.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// A source of wall-clock time that can also sleep until a wall-clock instant.
pub trait Clock: Send + Sync + 'static {
    /// The current wall-clock instant.
    fn now(&self) -> DateTime<Utc>;

    /// Sleeps until `now() >= deadline`. Returns immediately when the deadline has passed.
    fn sleep_until(
        &self,
        deadline: DateTime<Utc>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}

/// The real clock: `Utc::now()` and tokio timers.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(
        &self,
        deadline: DateTime<Utc>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            // Sleep in bounded steps and re-read the wall clock each time: wall time can jump
            // (NTP step, suspend/resume) while tokio's timer follows the monotonic clock.
            loop {
                let now = Utc::now();
                if now >= deadline {
                    return;
                }
                let left = (deadline - now).to_std().unwrap_or(Duration::ZERO);
                tokio::time::sleep(left.min(Duration::from_secs(1))).await;
            }
        })
    }
}

/// A clock that only moves when told to. Sleepers wake when [`ManualClock::advance`] or
/// [`ManualClock::set`] moves the time past their deadline.
#[derive(Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

struct ManualInner {
    now: Mutex<DateTime<Utc>>,
    tick: watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    /// A manual clock that starts at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        let (tick, _) = watch::channel(start);
        ManualClock {
            inner: Arc::new(ManualInner {
                now: Mutex::new(start),
                tick,
            }),
        }
    }

    /// Moves the clock to `to` (which may be in the past: wall clocks can step back).
    pub fn set(&self, to: DateTime<Utc>) {
        *self.inner.now.lock().expect("manual clock poisoned") = to;
        self.inner.tick.send_replace(to);
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let to = {
            let mut now = self.inner.now.lock().expect("manual clock poisoned");
            *now += chrono::Duration::from_std(by).expect("advance out of range");
            *now
        };
        self.inner.tick.send_replace(to);
    }
}

impl std::fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .finish()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.inner.now.lock().expect("manual clock poisoned")
    }

    fn sleep_until(
        &self,
        deadline: DateTime<Utc>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        let mut rx = self.inner.tick.subscribe();
        Box::pin(async move {
            loop {
                if self.now() >= deadline {
                    return;
                }
                if rx.changed().await.is_err() {
                    // The clock was dropped: nothing will ever move it again.
                    std::future::pending::<()>().await;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[tokio::test]
    async fn manual_clock_wakes_sleeper_only_when_deadline_reached() {
        let start = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
        let clock = ManualClock::new(start);
        let deadline = start + chrono::Duration::seconds(10);
        let c2 = clock.clone();
        let sleeper = tokio::spawn(async move { c2.sleep_until(deadline).await });
        tokio::task::yield_now().await;
        clock.advance(Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!sleeper.is_finished(), "woke before the deadline");
        clock.advance(Duration::from_secs(5));
        tokio::time::timeout(Duration::from_secs(2), sleeper)
            .await
            .expect("sleeper did not wake at the deadline")
            .unwrap();
        assert_eq!(clock.now(), deadline);
    }

    #[tokio::test]
    async fn system_clock_past_deadline_returns_immediately() {
        let past = Utc::now() - chrono::Duration::seconds(5);
        tokio::time::timeout(Duration::from_millis(200), SystemClock.sleep_until(past))
            .await
            .expect("sleep_until a past deadline must not block");
    }
}
