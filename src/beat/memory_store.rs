//! The beat store of `celeriac run`: one process, so this beat is always the leader, and
//! the "atomic fire" is a critical section around the in-memory broker's enqueue.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::store::{BeatStore, Claim, Fire, FireOutcome, JournalEntry, LeaderToken, fire_id};
use crate::broker::{Broker, BrokerError, MemoryBroker};

/// Journal entries kept in memory.
pub const JOURNAL_LIMIT: usize = 10_000;

pub struct MemoryBeatStore {
    broker: MemoryBroker,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    leader: Option<(String, u64)>,
    epoch: u64,
    last: HashMap<String, DateTime<Utc>>,
    armed: HashMap<String, DateTime<Utc>>,
    inflight: HashMap<String, (String, String)>,
    paused: HashSet<String>,
    journal: VecDeque<JournalEntry>,
}

impl MemoryBeatStore {
    pub fn new(broker: MemoryBroker) -> Self {
        MemoryBeatStore {
            broker,
            state: Mutex::new(State::default()),
        }
    }

    /// Pauses or resumes a schedule (the Redis store keeps this in Redis instead).
    pub fn set_paused(&self, schedule: &str, paused: bool) {
        let mut s = self.state.lock().expect("beat store poisoned");
        if paused {
            s.paused.insert(schedule.to_string());
        } else {
            s.paused.remove(schedule);
        }
    }

    fn push_journal(state: &mut State, entry: JournalEntry) {
        if state.journal.len() >= JOURNAL_LIMIT {
            state.journal.pop_front();
        }
        state.journal.push_back(entry);
    }
}

#[async_trait]
impl BeatStore for MemoryBeatStore {
    async fn claim(&self, token: &str, _ttl: Duration) -> Result<Claim, BrokerError> {
        let mut s = self.state.lock().expect("beat store poisoned");
        match &s.leader {
            Some((t, epoch)) if t == token => Ok(Claim::Renewed { epoch: *epoch }),
            Some(_) => Ok(Claim::HeldByOther {
                ttl_left: Duration::from_secs(1),
            }),
            None => {
                s.epoch += 1;
                let epoch = s.epoch;
                s.leader = Some((token.to_string(), epoch));
                Ok(Claim::Acquired { epoch })
            }
        }
    }

    async fn resign(&self, token: &str) -> Result<(), BrokerError> {
        let mut s = self.state.lock().expect("beat store poisoned");
        if s.leader.as_ref().is_some_and(|(t, _)| t == token) {
            s.leader = None;
        }
        Ok(())
    }

    async fn fire(
        &self,
        leader: &LeaderToken,
        fires: &[Fire],
    ) -> Result<Vec<FireOutcome>, BrokerError> {
        let mut outcomes = Vec::with_capacity(fires.len());
        let mut to_enqueue = Vec::new();
        // Ids of the messages this batch enqueues (after the loop).
        let mut batch_ids: HashSet<String> = HashSet::new();
        {
            let mut s = self.state.lock().expect("beat store poisoned");
            let is_leader = s
                .leader
                .as_ref()
                .is_some_and(|(t, e)| *t == leader.token && *e == leader.epoch);
            for f in fires {
                if !is_leader {
                    outcomes.push(FireOutcome::NotLeader);
                    continue;
                }
                if s.last
                    .get(&f.schedule)
                    .is_some_and(|last| *last >= f.nominal)
                {
                    outcomes.push(FireOutcome::AlreadyFired);
                    continue;
                }
                if s.paused.contains(&f.schedule) {
                    s.last.insert(f.schedule.clone(), f.nominal);
                    Self::push_journal(&mut s, decision(f, "paused", "schedule is paused"));
                    outcomes.push(FireOutcome::Paused);
                    continue;
                }
                if f.overlap_skip
                    && let Some((queue, id)) = s.inflight.get(&f.schedule)
                    && (self.broker.contains(queue, id)
                        // Enqueued by this batch (after the loop): queued all the same.
                        || batch_ids.contains(id.as_str()))
                {
                    let running = id.clone();
                    s.last.insert(f.schedule.clone(), f.nominal);
                    let detail = format!("previous run {running} still queued or running");
                    Self::push_journal(&mut s, decision(f, "skipped_overlap", detail));
                    outcomes.push(FireOutcome::SkippedOverlap { running });
                    continue;
                }
                s.last.insert(f.schedule.clone(), f.nominal);
                s.inflight.insert(
                    f.schedule.clone(),
                    (f.message.queue.clone(), f.message.id.clone()),
                );
                let entry = decision(
                    f,
                    if f.catch_up { "caught_up" } else { "fired" },
                    format!("message {} on {}", f.message.id, f.message.queue),
                );
                Self::push_journal(&mut s, entry);
                batch_ids.insert(f.message.id.clone());
                to_enqueue.push(f.message.clone());
                outcomes.push(FireOutcome::Fired);
            }
        }
        // One process: nothing can interleave between the record above and this enqueue
        // that would observe the difference (workers only see the message once enqueued).
        self.broker.enqueue_many(&to_enqueue).await?;
        Ok(outcomes)
    }

    async fn last_fired(
        &self,
        schedules: &[String],
    ) -> Result<Vec<Option<DateTime<Utc>>>, BrokerError> {
        let s = self.state.lock().expect("beat store poisoned");
        Ok(schedules.iter().map(|n| s.last.get(n).copied()).collect())
    }

    async fn arm(&self, schedules: &[String], at: DateTime<Utc>) -> Result<(), BrokerError> {
        let mut s = self.state.lock().expect("beat store poisoned");
        for name in schedules {
            s.armed.entry(name.clone()).or_insert(at);
        }
        Ok(())
    }

    async fn armed(&self, schedules: &[String]) -> Result<Vec<Option<DateTime<Utc>>>, BrokerError> {
        let s = self.state.lock().expect("beat store poisoned");
        Ok(schedules.iter().map(|n| s.armed.get(n).copied()).collect())
    }

    async fn disarm(&self, schedules: &[String]) -> Result<(), BrokerError> {
        let mut s = self.state.lock().expect("beat store poisoned");
        for name in schedules {
            s.armed.remove(name);
        }
        Ok(())
    }

    async fn journal(&self, entries: &[JournalEntry]) -> Result<(), BrokerError> {
        let mut s = self.state.lock().expect("beat store poisoned");
        for e in entries {
            Self::push_journal(&mut s, e.clone());
        }
        Ok(())
    }

    async fn read_journal(
        &self,
        schedule: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, BrokerError> {
        let s = self.state.lock().expect("beat store poisoned");
        Ok(s.journal
            .iter()
            .rev()
            .filter(|e| schedule.is_none() || e.schedule.as_deref() == schedule)
            .take(limit)
            .cloned()
            .collect())
    }
}

/// The journal entry of what happened to one fire (as the Redis fire script writes it).
fn decision(f: &Fire, event: &str, detail: impl Into<String>) -> JournalEntry {
    let mut entry = JournalEntry::new(event, Some(&f.schedule), detail);
    entry.nominal = Some(f.nominal);
    entry.fire_id = Some(fire_id(&f.schedule, f.nominal));
    entry
}
