//! The beat's agenda: every schedule's next nominal fire instant, ordered in a binary heap.
//!
//! `pop_due(now)` hands out the schedules whose next instant has come, O(k log n) for k due
//! out of n schedules, and re-arms each from its NOMINAL instant (never from "now"), so
//! intervals do not drift and a late wave does not shift later ticks. Changing or removing
//! a schedule bumps its generation; stale heap entries are dropped when they surface.
//!
//! The agenda holds each schedule by whatever the caller already has that knows its timing
//! ([`Timed`]): the beat gives it the configuration's `Arc<ScheduleConfig>`, so 100,000
//! schedules cost one pointer each here, not a copy of their timing.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::misfire::{self, LateRun};
use crate::config::ScheduleConfig;
use crate::schedule::Timing;

/// Something with a [`Timing`]: what the agenda holds per schedule.
pub trait Timed {
    fn timing(&self) -> &Timing;
}

impl Timed for Timing {
    fn timing(&self) -> &Timing {
        self
    }
}

impl Timed for Arc<ScheduleConfig> {
    fn timing(&self) -> &Timing {
        &self.timing
    }
}

/// One due tick: schedule name and the nominal instant it was due at (its identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub name: Arc<str>,
    pub nominal: DateTime<Utc>,
    /// Set by [`Agenda::pop_due_within`]: this tick starts a run of ticks late beyond the
    /// schedule's grace, dropped as one (the schedule is re-armed past them).
    pub late: Option<LateRun>,
}

struct Entry<T> {
    item: T,
    next: Option<DateTime<Utc>>,
    generation: u64,
}

/// A heap slot: (nominal instant, generation, schedule name), earliest first.
type Slot = Reverse<(DateTime<Utc>, u64, Arc<str>)>;

/// Heap of (next nominal instant, schedule).
pub struct Agenda<T = Timing> {
    heap: BinaryHeap<Slot>,
    entries: HashMap<Arc<str>, Entry<T>>,
    generation: u64,
}

impl<T> Default for Agenda<T> {
    fn default() -> Self {
        Agenda {
            heap: BinaryHeap::new(),
            entries: HashMap::new(),
            generation: 0,
        }
    }
}

impl<T: Timed + Clone> Agenda<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// An agenda sized for `n` schedules (no regrowth while they are added).
    pub fn with_capacity(n: usize) -> Self {
        Agenda {
            heap: BinaryHeap::with_capacity(n),
            entries: HashMap::with_capacity(n),
            generation: 0,
        }
    }

    /// Number of schedules on the agenda.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds or replaces a schedule; its next tick is the first one strictly after `after`.
    pub fn upsert(&mut self, name: Arc<str>, item: T, after: DateTime<Utc>) {
        let next = item.timing().next_after(after);
        self.upsert_at(name, item, next);
    }

    /// Adds or replaces a schedule with an explicit next tick (`None`: never fires).
    pub fn upsert_at(&mut self, name: Arc<str>, item: T, next: Option<DateTime<Utc>>) {
        self.generation += 1;
        let generation = self.generation;
        if let Some(at) = next {
            self.heap.push(Reverse((at, generation, name.clone())));
        }
        self.entries.insert(
            name,
            Entry {
                item,
                next,
                generation,
            },
        );
        self.compact_if_bloated();
    }

    /// Replaces what the agenda holds for a schedule whose timing did not change, keeping
    /// its next tick.
    pub fn replace(&mut self, name: &str, item: T) {
        if let Some(e) = self.entries.get_mut(name) {
            e.item = item;
        }
    }

    /// Removes a schedule. Returns whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        let removed = self.entries.remove(name).is_some();
        self.compact_if_bloated();
        removed
    }

    /// The schedule's next nominal tick.
    pub fn next_of(&self, name: &str) -> Option<DateTime<Utc>> {
        self.entries.get(name).and_then(|e| e.next)
    }

    pub fn timing_of(&self, name: &str) -> Option<&Timing> {
        self.entries.get(name).map(|e| e.item.timing())
    }

    pub fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.entries.keys()
    }

    /// The earliest pending tick of any schedule.
    pub fn peek(&mut self) -> Option<DateTime<Utc>> {
        self.drop_stale_top();
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Takes every tick with nominal instant `<= now`, at most `limit` of them, earliest first,
    /// and re-arms each schedule from the tick's nominal instant. A schedule that fell
    /// several ticks behind yields each of them (in order), so the caller can apply its
    /// misfire policy.
    pub fn pop_due(&mut self, now: DateTime<Utc>, limit: usize) -> Vec<Due> {
        self.pop_due_within(now, limit, |_| None)
    }

    /// Like [`Agenda::pop_due`], but a schedule whose due tick is late by more than its
    /// `grace` (`None`: unlimited) yields that tick once, with [`Due::late`] describing the
    /// whole run of ticks late beyond grace, and is re-armed at its first tick within grace:
    /// after a wall-clock jump of a day, a 1 s interval costs one entry, not 86,400.
    pub fn pop_due_within(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
        grace: impl Fn(&str) -> Option<std::time::Duration>,
    ) -> Vec<Due> {
        let mut due = Vec::new();
        while due.len() < limit {
            self.drop_stale_top();
            let Some(Reverse((at, _, _))) = self.heap.peek() else {
                break;
            };
            if *at > now {
                break;
            }
            let Reverse((at, _, name)) = self.heap.pop().expect("peeked");
            let window_start = grace(&name).and_then(|g| {
                chrono::Duration::from_std(g)
                    .ok()
                    .and_then(|g| now.checked_sub_signed(g))
            });
            let entry = self
                .entries
                .get_mut(&name)
                .expect("live heap entry has an entry");
            let late = window_start
                .filter(|w| at < *w)
                .map(|w| misfire::late_run(entry.item.timing(), at, w));
            let after = late.as_ref().map_or(at, |l| l.resume_after);
            let next = entry.item.timing().next_after(after);
            entry.next = next;
            if let Some(n) = next {
                self.heap.push(Reverse((n, entry.generation, name.clone())));
            }
            due.push(Due {
                name,
                nominal: at,
                late,
            });
        }
        due
    }

    /// Moves a schedule's next tick to the first one strictly after `after` (used when missed
    /// ticks are dropped in bulk, so they are not popped one by one).
    pub fn skip_to_after(&mut self, name: &str, after: DateTime<Utc>) {
        if let Some((key, e)) = self.entries.get_key_value(name) {
            let (key, item) = (key.clone(), e.item.clone());
            self.upsert(key, item, after);
        }
    }

    fn drop_stale_top(&mut self) {
        while let Some(Reverse((_, generation, name))) = self.heap.peek() {
            match self.entries.get(name) {
                Some(e) if e.generation == *generation => return,
                _ => {
                    self.heap.pop();
                }
            }
        }
    }

    /// Rebuilds the heap when stale entries outnumber live ones (after large reloads), so
    /// memory stays proportional to the number of schedules.
    fn compact_if_bloated(&mut self) {
        if self.heap.len() > 1024 && self.heap.len() > 2 * self.entries.len() {
            let live: Vec<_> = self
                .entries
                .iter()
                .filter_map(|(name, e)| e.next.map(|at| Reverse((at, e.generation, name.clone()))))
                .collect();
            self.heap = BinaryHeap::from(live);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{CronExpr, CronSchedule, IntervalSchedule};
    use chrono::TimeZone;
    use std::time::Duration;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 1, 1, h, m, s).unwrap()
    }

    fn every(secs: u64) -> Timing {
        Timing::Interval(IntervalSchedule::new(Duration::from_secs(secs), None).unwrap())
    }

    fn cron(expr: &str) -> Timing {
        Timing::Cron(CronSchedule::new(
            CronExpr::parse(expr).unwrap(),
            chrono_tz::UTC,
        ))
    }

    #[test]
    fn pops_due_ticks_in_order_and_rearms_from_nominal() {
        let mut a: Agenda = Agenda::new();
        a.upsert("ten".into(), every(10), at(0, 0, 0));
        a.upsert("min".into(), cron("* * * * *"), at(0, 0, 0));
        assert_eq!(a.peek(), Some(at(0, 0, 10)));
        // Late wake-up at 00:01:03: the interval has ticks 10..60, the cron one at 01:00.
        let due = a.pop_due(at(0, 1, 3), usize::MAX);
        let got: Vec<(String, DateTime<Utc>)> = due
            .iter()
            .map(|d| (d.name.to_string(), d.nominal))
            .collect();
        assert_eq!(got.len(), 7);
        assert_eq!(got[0], ("ten".into(), at(0, 0, 10)));
        assert_eq!(got[5].1, at(0, 1, 0));
        assert_eq!(got[6].1, at(0, 1, 0));
        // Re-armed from the nominal instants: no drift from the late wake-up.
        assert_eq!(a.next_of("ten"), Some(at(0, 1, 10)));
        assert_eq!(a.next_of("min"), Some(at(0, 2, 0)));
    }

    #[test]
    fn limit_bounds_a_wave() {
        let mut a: Agenda = Agenda::new();
        for i in 0..100 {
            a.upsert(format!("s{i}").into(), every(60), at(0, 0, 0));
        }
        assert_eq!(a.pop_due(at(0, 1, 0), 30).len(), 30);
        assert_eq!(a.pop_due(at(0, 1, 0), usize::MAX).len(), 70);
        assert!(a.pop_due(at(0, 1, 0), usize::MAX).is_empty());
    }

    #[test]
    fn changed_and_removed_schedules_leave_no_stale_ticks() {
        let mut a: Agenda = Agenda::new();
        a.upsert("x".into(), every(10), at(0, 0, 0));
        a.upsert("x".into(), every(60), at(0, 0, 0));
        a.upsert("y".into(), every(10), at(0, 0, 0));
        assert!(a.remove("y"));
        let due = a.pop_due(at(0, 0, 59), usize::MAX);
        assert!(due.is_empty(), "{due:?}");
        let due = a.pop_due(at(0, 1, 0), usize::MAX);
        assert_eq!(due.len(), 1);
        assert_eq!(&*due[0].name, "x");
    }

    #[test]
    fn replace_keeps_the_next_tick() {
        let mut a: Agenda = Agenda::new();
        a.upsert("x".into(), every(10), at(0, 0, 0));
        assert_eq!(a.pop_due(at(0, 0, 10), usize::MAX).len(), 1);
        // Same timing, new settings: the next tick (00:00:20) stays, no tick is added.
        a.replace("x", every(10));
        assert_eq!(a.next_of("x"), Some(at(0, 0, 20)));
        assert!(a.pop_due(at(0, 0, 19), usize::MAX).is_empty());
        assert_eq!(a.pop_due(at(0, 0, 20), usize::MAX).len(), 1);
        a.replace("absent", every(10));
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn skip_to_after_drops_missed_ticks_in_bulk() {
        let mut a: Agenda = Agenda::new();
        a.upsert("x".into(), every(1), at(0, 0, 0));
        a.skip_to_after("x", at(1, 0, 0));
        assert_eq!(a.next_of("x"), Some(at(1, 0, 1)));
    }

    #[test]
    fn heap_is_compacted_after_many_reloads() {
        let mut a: Agenda = Agenda::new();
        for round in 0..10 {
            for i in 0..500 {
                a.upsert(format!("s{i}").into(), every(60 + round), at(0, 0, 0));
            }
        }
        assert_eq!(a.len(), 500);
        assert!(
            a.heap.len() <= 2 * 500 + 1024,
            "heap kept {} entries",
            a.heap.len()
        );
    }
}
