//! The in-process broker: the same semantics as the Redis broker, held in one process.
//!
//! Used by `celeriac run` (beat and worker in one process, no Redis) and by tests. State
//! lives behind one `std::sync::Mutex` that is never held across an `.await`; blocked
//! reservers and result waiters sleep on `tokio::sync::Notify`. Leases, etas and result TTLs
//! run on tokio's monotonic clock (so tests can pause and advance time); an eta given as a
//! wall-clock instant is turned into a monotonic one when the message is enqueued.
//! Bodies are kept serialized, exactly as on Redis, so that undecodable bodies behave the same
//! ([`MemoryBroker::enqueue_raw`] is the test hook that stores one).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{
    Broker, BrokerError, DeadLetter, DeadSelector, Delivery, Lease, MAX_PRIORITY,
    MAX_RESERVE_BATCH, QueueStats, Result, TaskMessage, TaskResult, bounded_reason, decode_payload,
    validate_message, validate_queue,
};

/// Default number of dead letters kept per queue.
const DEFAULT_DEAD_LETTER_LIMIT: usize = 100_000;

/// An in-process [`Broker`]. Cloning gives another handle on the same broker.
#[derive(Clone)]
pub struct MemoryBroker {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Something became ready (or a delayed message / lease deadline changed).
    queues_changed: Notify,
    /// A result was stored.
    results_changed: Notify,
    dead_letter_limit: usize,
}

#[derive(Default)]
struct State {
    queues: HashMap<String, MemQueue>,
    results: HashMap<String, StoredResult>,
    next_token: u64,
    rotation: usize,
    stores_since_sweep: usize,
}

struct StoredResult {
    result: TaskResult,
    expires_at: Instant,
}

/// One queue, ordered like the Redis sorted sets.
#[derive(Default)]
struct MemQueue {
    seq: u64,
    /// (9 - priority, seq, id): priority first, then FIFO; seq 0 (front) ties sort by id.
    ready: BTreeSet<(u8, u64, String)>,
    delayed: BTreeSet<(Instant, String)>,
    active: BTreeSet<(Instant, String)>,
    entries: HashMap<String, Entry>,
    /// Newest first.
    dead: VecDeque<DeadLetter>,
}

struct Entry {
    body: Vec<u8>,
    priority: u8,
    attempt: u32,
    /// 0 unless reserved.
    token: u64,
    last_error: Option<String>,
    place: Place,
}

#[derive(Clone, Copy)]
enum Place {
    Ready(u64),
    Delayed(Instant),
    Active(Instant),
}

impl MemQueue {
    fn unplace(&mut self, id: &str) {
        let Some(e) = self.entries.get(id) else {
            return;
        };
        match e.place {
            Place::Ready(seq) => self.ready.remove(&(9 - e.priority, seq, id.to_string())),
            Place::Delayed(at) => self.delayed.remove(&(at, id.to_string())),
            Place::Active(at) => self.active.remove(&(at, id.to_string())),
        };
    }

    /// Moves an entry to `place` (it must exist).
    fn place(&mut self, id: &str, place: Place) {
        self.unplace(id);
        let e = self.entries.get_mut(id).expect("entry exists");
        e.place = place;
        match place {
            Place::Ready(seq) => self.ready.insert((9 - e.priority, seq, id.to_string())),
            Place::Delayed(at) => self.delayed.insert((at, id.to_string())),
            Place::Active(at) => self.active.insert((at, id.to_string())),
        };
    }

    fn move_to_ready_back(&mut self, id: &str) {
        self.seq += 1;
        let seq = self.seq;
        self.place(id, Place::Ready(seq));
    }

    /// Adds a message; false when its id is already in the queue.
    fn enqueue(
        &mut self,
        id: &str,
        priority: u8,
        attempt: u32,
        eta: Option<Instant>,
        body: Vec<u8>,
        now: Instant,
    ) -> bool {
        if self.entries.contains_key(id) {
            return false;
        }
        let entry = Entry {
            body,
            priority,
            attempt,
            token: 0,
            last_error: None,
            place: Place::Ready(0),
        };
        self.entries.insert(id.to_string(), entry);
        match eta {
            Some(at) if at > now => self.place(id, Place::Delayed(at)),
            _ => self.move_to_ready_back(id),
        }
        true
    }

    /// Promotes due delayed messages and requeues expired leases (attempt + 1, front).
    fn maintain(&mut self, now: Instant) {
        while let Some((at, id)) = self.delayed.first().cloned() {
            if at > now {
                break;
            }
            self.move_to_ready_back(&id);
        }
        while let Some((at, id)) = self.active.first().cloned() {
            if at > now {
                break;
            }
            let e = self.entries.get_mut(&id).expect("active entry exists");
            e.attempt += 1;
            e.token = 0;
            e.last_error = Some("lease expired".into());
            self.place(&id, Place::Ready(0));
        }
    }

    fn head_priority(&self) -> Option<u8> {
        self.ready.first().map(|(band, _, _)| 9 - band)
    }

    /// When the next delayed message is due or the next lease expires.
    fn next_wake(&self) -> Option<Instant> {
        let due = self.delayed.first().map(|(at, _)| *at);
        let expiry = self.active.first().map(|(at, _)| *at);
        due.into_iter().chain(expiry).min()
    }

    /// True when `lease` is still held.
    fn holds(&self, lease: &Lease) -> bool {
        self.entries
            .get(&lease.id)
            .is_some_and(|e| e.token != 0 && e.token == lease.token)
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBroker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::with_dead_letter_limit(DEFAULT_DEAD_LETTER_LIMIT)
    }

    /// An empty broker that keeps at most `limit` dead letters per queue.
    pub fn with_dead_letter_limit(limit: usize) -> Self {
        MemoryBroker {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                queues_changed: Notify::new(),
                results_changed: Notify::new(),
                dead_letter_limit: limit.max(1),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .expect("memory broker state poisoned")
    }

    /// Whether a message with this id is still in `queue` (ready, delayed or reserved): the
    /// beat's overlap check ("is the previous run of this schedule still queued or running?").
    pub fn contains(&self, queue: &str, id: &str) -> bool {
        self.lock()
            .queues
            .get(queue)
            .is_some_and(|q| q.entries.contains_key(id))
    }

    /// Test hook: enqueues a raw body (which need not be a valid message) as ready.
    pub fn enqueue_raw(&self, queue: &str, id: &str, priority: u8, body: Vec<u8>) -> Result<bool> {
        validate_queue(queue)?;
        let added = self
            .lock()
            .queues
            .entry(queue.to_string())
            .or_default()
            .enqueue(
                id,
                priority.min(MAX_PRIORITY),
                0,
                None,
                body,
                Instant::now(),
            );
        self.shared.queues_changed.notify_waiters();
        Ok(added)
    }

    /// Reserves without waiting; returns the deliveries and when to look again.
    fn try_reserve(
        &self,
        queues: &[String],
        max: usize,
        lease: Duration,
    ) -> (Vec<Delivery>, Option<Instant>) {
        let now = Instant::now();
        let deadline = now + lease;
        let mut state = self.lock();
        let state = &mut *state;
        for q in queues {
            if let Some(queue) = state.queues.get_mut(q) {
                queue.maintain(now);
            }
        }
        let start = state.rotation;
        state.rotation = state.rotation.wrapping_add(1);
        let n = queues.len();
        let mut out = Vec::new();
        while out.len() < max {
            // The queue with the highest head priority; ties round-robin from `start`.
            let best = (0..n)
                .map(|i| (start + i) % n)
                .filter_map(|i| {
                    let p = state.queues.get(&queues[i])?.head_priority()?;
                    Some((p, i))
                })
                .fold(None::<(u8, usize)>, |best, (p, i)| match best {
                    Some((bp, _)) if bp >= p => best,
                    _ => Some((p, i)),
                });
            let Some((_, i)) = best else { break };
            let queue = state.queues.get_mut(&queues[i]).expect("queue exists");
            let (_, _, id) = queue.ready.first().cloned().expect("head exists");
            state.next_token += 1;
            let token = state.next_token;
            queue.place(&id, Place::Active(deadline));
            let e = queue.entries.get_mut(&id).expect("entry exists");
            e.token = token;
            out.push(Delivery {
                lease: Lease {
                    queue: queues[i].clone(),
                    id: id.clone(),
                    token,
                },
                attempt: e.attempt,
                priority: e.priority,
                last_error: e.last_error.clone(),
                lease_deadline: deadline,
                payload: decode_payload(e.body.clone(), e.attempt),
            });
        }
        let wake = queues
            .iter()
            .filter_map(|q| state.queues.get(q)?.next_wake())
            .min();
        (out, wake)
    }

    /// Applies `f` to each lease's queue entry if the lease is still held.
    fn per_lease(
        &self,
        leases: &[Lease],
        mut f: impl FnMut(&mut MemQueue, &Lease, Instant),
    ) -> Result<Vec<bool>> {
        for l in leases {
            validate_queue(&l.queue)?;
        }
        let now = Instant::now();
        let mut state = self.lock();
        let out = leases
            .iter()
            .map(|l| match state.queues.get_mut(&l.queue) {
                Some(q) if q.holds(l) => {
                    f(q, l, now);
                    true
                }
                _ => false,
            })
            .collect();
        drop(state);
        Ok(out)
    }
}

/// The monotonic instant of a wall-clock instant, or `None` if it is not in the future.
fn monotonic(at: DateTime<Utc>) -> Option<Instant> {
    let ahead = (at - Utc::now()).to_std().ok()?;
    (!ahead.is_zero()).then(|| Instant::now() + ahead)
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn enqueue_many(&self, messages: &[TaskMessage]) -> Result<usize> {
        for m in messages {
            validate_message(m)?;
        }
        let now = Instant::now();
        let mut added = 0;
        {
            let mut state = self.lock();
            for m in messages {
                let q = state.queues.entry(m.queue.clone()).or_default();
                if q.enqueue(
                    &m.id,
                    m.priority,
                    m.attempt,
                    m.eta.and_then(monotonic),
                    m.to_json(),
                    now,
                ) {
                    added += 1;
                }
            }
        }
        if added > 0 {
            self.shared.queues_changed.notify_waiters();
        }
        Ok(added)
    }

    async fn reserve(
        &self,
        queues: &[String],
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>> {
        if queues.is_empty() {
            return Err(BrokerError::InvalidQueue(String::new()));
        }
        for q in queues {
            validate_queue(q)?;
        }
        let max = max.min(MAX_RESERVE_BATCH);
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + wait;
        loop {
            // Register for wake-ups before looking, so an enqueue in between is not missed.
            let changed = self.shared.queues_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (deliveries, wake) = self.try_reserve(queues, max, lease);
            if !deliveries.is_empty() {
                return Ok(deliveries);
            }
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            let until = wake.map_or(deadline, |w| w.min(deadline));
            tokio::select! {
                _ = &mut changed => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn ack_many(&self, leases: &[Lease]) -> Result<Vec<bool>> {
        self.per_lease(leases, |q, l, _| {
            q.unplace(&l.id);
            q.entries.remove(&l.id);
        })
    }

    async fn release(&self, leases: &[Lease]) -> Result<Vec<bool>> {
        let out = self.per_lease(leases, |q, l, _| {
            q.entries.get_mut(&l.id).expect("held").token = 0;
            q.place(&l.id, Place::Ready(0));
        })?;
        self.shared.queues_changed.notify_waiters();
        Ok(out)
    }

    async fn retry_later(&self, lease: &Lease, eta: DateTime<Utc>, reason: &str) -> Result<bool> {
        let at = monotonic(eta);
        let reason = if reason.is_empty() { "retry" } else { reason };
        let out = self.per_lease(std::slice::from_ref(lease), |q, l, now| {
            let e = q.entries.get_mut(&l.id).expect("held");
            e.token = 0;
            e.attempt += 1;
            e.last_error = Some(bounded_reason(reason).to_string());
            match at {
                Some(at) if at > now => q.place(&l.id, Place::Delayed(at)),
                _ => q.move_to_ready_back(&l.id),
            }
        })?;
        self.shared.queues_changed.notify_waiters();
        Ok(out[0])
    }

    async fn dead_letter(&self, lease: &Lease, reason: &str) -> Result<bool> {
        let limit = self.shared.dead_letter_limit;
        let out = self.per_lease(std::slice::from_ref(lease), |q, l, _| {
            q.unplace(&l.id);
            let e = q.entries.remove(&l.id).expect("held");
            q.dead.push_front(DeadLetter {
                id: l.id.clone(),
                reason: bounded_reason(reason).to_string(),
                at: Utc::now(),
                attempt: e.attempt,
                priority: e.priority,
                body: String::from_utf8_lossy(&e.body).into_owned(),
            });
            q.dead.truncate(limit);
        })?;
        Ok(out[0])
    }

    async fn extend_lease(&self, leases: &[Lease], lease: Duration) -> Result<Vec<bool>> {
        // No wake-up needed: a reserver sleeping until the old deadline wakes early, finds
        // nothing expired, and sleeps again.
        self.per_lease(leases, |q, l, now| {
            q.place(&l.id, Place::Active(now + lease));
        })
    }

    async fn store_result(&self, result: &TaskResult, ttl: Duration) -> Result<()> {
        let now = Instant::now();
        {
            let mut state = self.lock();
            state.stores_since_sweep += 1;
            if state.stores_since_sweep >= 1024 {
                state.stores_since_sweep = 0;
                state.results.retain(|_, r| r.expires_at > now);
            }
            state.results.insert(
                result.id.clone(),
                StoredResult {
                    result: result.clone(),
                    expires_at: now + ttl,
                },
            );
        }
        self.shared.results_changed.notify_waiters();
        Ok(())
    }

    async fn get_result(&self, id: &str) -> Result<Option<TaskResult>> {
        let now = Instant::now();
        let mut state = self.lock();
        match state.results.get(id) {
            Some(r) if r.expires_at > now => Ok(Some(r.result.clone())),
            Some(_) => {
                state.results.remove(id);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn wait_result(&self, id: &str, timeout: Duration) -> Result<Option<TaskResult>> {
        let deadline = Instant::now() + timeout;
        loop {
            let stored = self.shared.results_changed.notified();
            tokio::pin!(stored);
            stored.as_mut().enable();
            if let Some(r) = self.get_result(id).await? {
                return Ok(Some(r));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::select! {
                _ = &mut stored => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    async fn queue_stats(&self, queue: &str) -> Result<QueueStats> {
        validate_queue(queue)?;
        let state = self.lock();
        let mut stats = QueueStats::default();
        if let Some(q) = state.queues.get(queue) {
            for (band, _, _) in &q.ready {
                stats.ready[usize::from(9 - band)] += 1;
            }
            stats.delayed = q.delayed.len() as u64;
            stats.active = q.active.len() as u64;
            stats.dead = q.dead.len() as u64;
        }
        Ok(stats)
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        validate_queue(queue)?;
        let mut state = self.lock();
        let Some(q) = state.queues.get_mut(queue) else {
            return Ok(0);
        };
        let ids: Vec<String> = q
            .ready
            .iter()
            .map(|(_, _, id)| id.clone())
            .chain(q.delayed.iter().map(|(_, id)| id.clone()))
            .collect();
        q.ready.clear();
        q.delayed.clear();
        for id in &ids {
            q.entries.remove(id);
        }
        Ok(ids.len() as u64)
    }

    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        validate_queue(queue)?;
        let state = self.lock();
        Ok(state
            .queues
            .get(queue)
            .map(|q| q.dead.iter().take(limit).cloned().collect())
            .unwrap_or_default())
    }

    async fn requeue_dead(&self, queue: &str, which: DeadSelector) -> Result<u64> {
        validate_queue(queue)?;
        let now = Instant::now();
        let requeued = {
            let mut state = self.lock();
            let Some(q) = state.queues.get_mut(queue) else {
                return Ok(0);
            };
            let taken: Vec<DeadLetter> = match &which {
                // Oldest first, so that they are requeued in the order they died.
                DeadSelector::All => q.dead.drain(..).rev().collect(),
                DeadSelector::Id(id) => match q.dead.iter().position(|d| &d.id == id) {
                    Some(i) => q.dead.remove(i).into_iter().collect(),
                    None => Vec::new(),
                },
            };
            // A dead letter whose id is queued again already is stale: dropped.
            taken
                .into_iter()
                .filter(|d| q.enqueue(&d.id, d.priority, 0, None, d.body.clone().into_bytes(), now))
                .count() as u64
        };
        if requeued > 0 {
            self.shared.queues_changed.notify_waiters();
        }
        Ok(requeued)
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}
