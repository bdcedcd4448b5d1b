//! What to do with ticks that were not fired on time.
//!
//! Two situations, one policy per schedule (`misfire: {grace, catch_up, max}`):
//!
//! - **Steady state** (this beat has been leading): a due tick fires if it is at most `grace`
//!   late; an older one is dropped and journaled (the loop was stalled that long).
//! - **Start or takeover**: ticks after the schedule's recorded last fire that passed while no
//!   beat was firing. Those older than `grace` are dropped; of those within `grace`,
//!   `catch_up: none` fires none, `latest` fires only the newest, `all` fires each of them
//!   (the newest `max` when there are more).
//!
//! `grace` defaults to the schedule's period, capped at [`DEFAULT_GRACE_CAP`]. Pure code.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::schedule::Timing;

/// The default grace is the schedule's period, but never more than this.
pub const DEFAULT_GRACE_CAP: Duration = Duration::from_secs(3600);

/// How many missed ticks are enumerated to count the dropped ones; beyond it the count is
/// a lower bound (a 1 s interval down for a week has 600,000 missed ticks).
pub const COUNT_LIMIT: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    None,
    Latest,
    All { max: u32 },
}

/// The effective policy of one schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub grace: Duration,
    pub catch_up: CatchUp,
}

/// The default grace of a timing: its period around `now`, capped.
pub fn default_grace(timing: &Timing, now: DateTime<Utc>) -> Duration {
    let period = match timing {
        Timing::Interval(i) => i.every(),
        Timing::Cron(_) => match timing.next_after(now) {
            Some(a) => match timing.next_after(a) {
                Some(b) => (b - a).to_std().unwrap_or(DEFAULT_GRACE_CAP),
                None => DEFAULT_GRACE_CAP,
            },
            None => DEFAULT_GRACE_CAP,
        },
    };
    period.min(DEFAULT_GRACE_CAP)
}

/// Whether a due tick found in steady state still fires.
pub fn fires_in_steady_state(nominal: DateTime<Utc>, now: DateTime<Utc>, grace: Duration) -> bool {
    lateness(nominal, now) <= grace
}

pub fn lateness(nominal: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (now - nominal).to_std().unwrap_or(Duration::ZERO)
}

/// A run of consecutive ticks found late beyond grace in steady state (the wall clock
/// jumped forward, the loop stalled), dropped as one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateRun {
    /// How many ticks (a lower bound when `count_is_lower_bound`).
    pub count: usize,
    pub count_is_lower_bound: bool,
    /// The first and (when counted to the end) the last of them.
    pub first: DateTime<Utc>,
    pub last: Option<DateTime<Utc>>,
    /// Re-arm the schedule at its first tick strictly after this instant: the first one
    /// within grace (or still to come).
    pub resume_after: DateTime<Utc>,
}

/// The run of late ticks that starts with `first` (due, and older than `window_start`, the
/// oldest instant still within grace): the ticks before `window_start`, counted up to
/// [`COUNT_LIMIT`], without enumerating the rest.
pub fn late_run(timing: &Timing, first: DateTime<Utc>, window_start: DateTime<Utc>) -> LateRun {
    let mut run = LateRun {
        count: 1,
        count_is_lower_bound: false,
        first,
        last: Some(first),
        resume_after: first,
    };
    let mut t = first;
    while let Some(next) = timing.next_after(t) {
        if next >= window_start {
            break;
        }
        if run.count >= COUNT_LIMIT {
            run.count_is_lower_bound = true;
            run.last = None;
            // Just before the window: the next tick is the first one within grace.
            run.resume_after = window_start - chrono::Duration::nanoseconds(1);
            return run;
        }
        run.count += 1;
        t = next;
    }
    run.last = Some(t);
    run.resume_after = t;
    run
}

/// The outcome of catching up one schedule on start or takeover.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CatchUpPlan {
    /// Missed ticks to fire now, oldest first.
    pub fire: Vec<DateTime<Utc>>,
    /// Missed ticks not fired: how many (a lower bound when `count_is_lower_bound`), and the
    /// oldest and newest of them.
    pub dropped: usize,
    pub count_is_lower_bound: bool,
    pub dropped_first: Option<DateTime<Utc>>,
    pub dropped_last: Option<DateTime<Utc>>,
}

/// Plans the catch-up of ticks in `(last_fired, now]`. With no record of a last fire (a new
/// schedule) there is nothing to catch up.
pub fn plan_catch_up(
    timing: &Timing,
    last_fired: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    policy: Policy,
) -> CatchUpPlan {
    let mut plan = CatchUpPlan::default();
    let Some(last) = last_fired else {
        return plan;
    };
    let grace = chrono::Duration::from_std(policy.grace).unwrap_or(chrono::Duration::MAX);
    let window_start = now
        .checked_sub_signed(grace)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let mut eligible: Vec<DateTime<Utc>> = Vec::new();
    let mut eligible_total = 0usize;
    // Ticks older than the grace window: counted (bounded), never fired.
    let mut t = last;
    let mut steps = 0usize;
    while let Some(next) = timing.next_after(t) {
        if next > now {
            break;
        }
        if next < window_start {
            steps += 1;
            plan.dropped += 1;
            plan.dropped_first.get_or_insert(next);
            plan.dropped_last = Some(next);
            if steps >= COUNT_LIMIT {
                // Jump to the grace window without enumerating the rest.
                plan.count_is_lower_bound = true;
                t = window_start - chrono::Duration::milliseconds(1);
                if t <= next {
                    t = next;
                }
                steps = 0;
                continue;
            }
            t = next;
            continue;
        }
        eligible_total += 1;
        eligible.push(next);
        if eligible.len() > COUNT_LIMIT {
            eligible.remove(0);
        }
        t = next;
    }
    let keep = match policy.catch_up {
        CatchUp::None => 0,
        CatchUp::Latest => 1,
        CatchUp::All { max } => max as usize,
    };
    let fire_from = eligible.len().saturating_sub(keep);
    let not_fired = &eligible[..fire_from];
    if !not_fired.is_empty() {
        plan.dropped += eligible_total - (eligible.len() - fire_from);
        if plan.dropped_first.is_none() {
            plan.dropped_first = not_fired.first().copied();
        }
        plan.dropped_last = not_fired.last().copied();
    }
    plan.fire = eligible[fire_from..].to_vec();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{CronExpr, CronSchedule, IntervalSchedule};
    use chrono::TimeZone;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 1, 1, h, m, s).unwrap()
    }
    fn every(secs: u64) -> Timing {
        Timing::Interval(IntervalSchedule::new(Duration::from_secs(secs), None).unwrap())
    }
    fn policy(grace_s: u64, catch_up: CatchUp) -> Policy {
        Policy {
            grace: Duration::from_secs(grace_s),
            catch_up,
        }
    }

    #[test]
    fn default_grace_is_the_period_capped_at_an_hour() {
        assert_eq!(
            default_grace(&every(90), at(0, 0, 0)),
            Duration::from_secs(90)
        );
        let daily = Timing::Cron(CronSchedule::new(
            CronExpr::parse("30 2 * * *").unwrap(),
            chrono_tz::UTC,
        ));
        assert_eq!(default_grace(&daily, at(0, 0, 0)), DEFAULT_GRACE_CAP);
        let five = Timing::Cron(CronSchedule::new(
            CronExpr::parse("*/5 * * * *").unwrap(),
            chrono_tz::UTC,
        ));
        assert_eq!(default_grace(&five, at(0, 0, 0)), Duration::from_secs(300));
    }

    #[test]
    fn steady_state_fires_within_grace_only() {
        assert!(fires_in_steady_state(
            at(0, 0, 0),
            at(0, 0, 30),
            Duration::from_secs(30)
        ));
        assert!(!fires_in_steady_state(
            at(0, 0, 0),
            at(0, 0, 31),
            Duration::from_secs(30)
        ));
        assert!(fires_in_steady_state(
            at(0, 0, 10),
            at(0, 0, 0),
            Duration::ZERO
        ));
    }

    #[test]
    fn new_schedule_has_nothing_to_catch_up() {
        let plan = plan_catch_up(
            &every(10),
            None,
            at(1, 0, 0),
            policy(60, CatchUp::All { max: 10 }),
        );
        assert_eq!(plan, CatchUpPlan::default());
    }

    #[test]
    fn latest_fires_only_the_newest_tick_within_grace() {
        // Last fired 00:00:00, down until 00:01:05, ticks every 10 s, grace 30 s.
        let plan = plan_catch_up(
            &every(10),
            Some(at(0, 0, 0)),
            at(0, 1, 5),
            policy(30, CatchUp::Latest),
        );
        assert_eq!(plan.fire, vec![at(0, 1, 0)]);
        // 00:00:10 .. 00:00:30 are older than the window (00:00:35); 00:00:40, 00:00:50 superseded.
        assert_eq!(plan.dropped, 5);
        assert_eq!(plan.dropped_first, Some(at(0, 0, 10)));
        assert_eq!(plan.dropped_last, Some(at(0, 0, 50)));
    }

    #[test]
    fn all_fires_every_tick_within_grace_bounded_by_max() {
        let plan = plan_catch_up(
            &every(10),
            Some(at(0, 0, 0)),
            at(0, 1, 5),
            policy(30, CatchUp::All { max: 10 }),
        );
        assert_eq!(plan.fire, vec![at(0, 0, 40), at(0, 0, 50), at(0, 1, 0)]);
        assert_eq!(plan.dropped, 3);
        let plan = plan_catch_up(
            &every(10),
            Some(at(0, 0, 0)),
            at(0, 1, 5),
            policy(30, CatchUp::All { max: 2 }),
        );
        assert_eq!(plan.fire, vec![at(0, 0, 50), at(0, 1, 0)]);
        assert_eq!(plan.dropped, 4);
    }

    #[test]
    fn none_fires_nothing_missed() {
        let plan = plan_catch_up(
            &every(10),
            Some(at(0, 0, 0)),
            at(0, 1, 5),
            policy(30, CatchUp::None),
        );
        assert!(plan.fire.is_empty());
        assert_eq!(plan.dropped, 6);
    }

    #[test]
    fn ticks_beyond_grace_are_dropped_even_with_catch_up_all() {
        let plan = plan_catch_up(
            &every(60),
            Some(at(0, 0, 0)),
            at(2, 0, 0),
            policy(0, CatchUp::All { max: 100 }),
        );
        // Only the tick exactly at `now` is within a zero grace.
        assert_eq!(plan.fire, vec![at(2, 0, 0)]);
        assert_eq!(plan.dropped, 119);
    }

    #[test]
    fn huge_downtime_counts_are_bounded_and_marked() {
        let plan = plan_catch_up(
            &every(1),
            Some(Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap()),
            at(0, 0, 0),
            policy(5, CatchUp::Latest),
        );
        assert_eq!(plan.fire, vec![at(0, 0, 0)]);
        assert!(plan.count_is_lower_bound);
        assert!(plan.dropped >= COUNT_LIMIT);
    }

    #[test]
    fn late_run_counts_the_ticks_before_the_grace_window_and_resumes_within_it() {
        let run = late_run(&every(10), at(0, 0, 10), at(0, 1, 5));
        assert_eq!(run.count, 6);
        assert!(!run.count_is_lower_bound);
        assert_eq!(run.last, Some(at(0, 1, 0)));
        assert_eq!(every(10).next_after(run.resume_after), Some(at(0, 1, 10)));
        // A tick exactly at the window start is within grace.
        let run = late_run(&every(10), at(0, 0, 10), at(0, 0, 30));
        assert_eq!((run.count, run.last), (2, Some(at(0, 0, 20))));
        // A day of 1 s ticks: bounded, and resumes at the window.
        let run = late_run(&every(1), at(0, 0, 1), at(23, 0, 0));
        assert!(run.count_is_lower_bound);
        assert_eq!(run.count, COUNT_LIMIT);
        assert_eq!(every(1).next_after(run.resume_after), Some(at(23, 0, 0)));
    }

    #[test]
    fn nothing_missed_when_last_fire_is_the_latest_tick() {
        let plan = plan_catch_up(
            &every(10),
            Some(at(0, 1, 0)),
            at(0, 1, 5),
            policy(30, CatchUp::Latest),
        );
        assert_eq!(plan, CatchUpPlan::default());
    }
}
