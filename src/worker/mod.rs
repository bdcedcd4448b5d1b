//! The worker: reserves messages from named queues, runs their tasks, stores results,
//! retries failures with backoff and dead-letters what cannot succeed.
//!
//! Shape of the loop:
//! - a permit (of `concurrency`) is taken BEFORE reserving, so the worker never holds a
//!   message it cannot start; all free permits are used for one batched reserve;
//! - each message runs in its own tokio task; its outcome goes to the *completer*, which
//!   stores results and acknowledges in batches (one ack script call for many messages). A
//!   task keeps its permit until the completer has taken its outcome, so a completer that
//!   falls behind (Redis slow) slows reserving down instead of letting finished messages pile up;
//! - the *lease keeper* extends the leases of every message the worker holds (running, or
//!   finished and not yet acknowledged) every `lease / 3`, so a long task (or a slow ack)
//!   keeps its message while a dead worker's messages come back after `lease`;
//! - on shutdown: stop reserving, let running tasks finish for `grace`, then stop them and
//!   put their messages back on the queue unchanged, flush the completer, return.

pub mod builtin;
pub mod command;
mod execute;
pub mod handler;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use self::execute::{MAX_EXTRA_DELIVERIES, Outcome, command_env};
pub use self::handler::{Handlers, TaskContext, TaskFailure};
use crate::broker::{Broker, BrokerError, Delivery, Lease, MAX_RESERVE_BATCH, TaskResult};
use crate::config::Config;

/// How a worker is run.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Queues to consume (highest priority first across them).
    pub queues: Vec<String>,
    /// Tasks run at the same time.
    pub concurrency: usize,
    /// Exit (drained) after starting this many tasks.
    pub max_tasks: Option<u64>,
    /// On shutdown, how long running tasks may take before they are stopped and returned.
    pub grace: Duration,
    /// Lease of a reserved message; extended every `lease / 3` while it runs.
    pub lease: Duration,
    /// Identifies this worker in results and logs (default `host/pid`).
    pub worker_id: String,
    /// Longest a reserve call blocks when the queues are empty (bounds shutdown latency).
    pub reserve_wait: Duration,
    /// Bytes of command output kept in a result.
    pub output_limit: usize,
    /// When set, only messages signed with this key run; others are dead-lettered.
    pub signing: Option<crate::signing::SigningKey>,
    /// systemd notifications: the reserve loops ping the watchdog and report status.
    pub notifier: Option<Arc<crate::notify::Notifier>>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            queues: vec![crate::config::DEFAULT_QUEUE.to_string()],
            concurrency: 4,
            max_tasks: None,
            grace: Duration::from_secs(30),
            lease: Duration::from_secs(30),
            worker_id: default_worker_id(),
            reserve_wait: Duration::from_secs(1),
            output_limit: command::DEFAULT_OUTPUT_LIMIT,
            signing: None,
            notifier: None,
        }
    }
}

/// `hostname/pid`.
pub fn default_worker_id() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let host = if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "localhost".to_string()
    };
    format!("{host}/{}", std::process::id())
}

/// Why the worker returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerExit {
    /// Asked to stop (SIGTERM / SIGINT / token).
    Shutdown,
    /// Started `max_tasks` tasks and drained.
    MaxTasks,
}

/// A worker that cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("worker options: {0}")]
    Options(String),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl WorkerError {
    pub fn is_transient(&self) -> bool {
        match self {
            WorkerError::Options(_) => false,
            WorkerError::Broker(e) => e.is_transient(),
        }
    }
}

/// Counters since start (shared; read them while the worker runs).
#[derive(Debug, Default)]
pub struct WorkerCounters {
    pub started: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub expired: AtomicU64,
    pub returned: AtomicU64,
}

impl WorkerCounters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// What every task of this worker shares.
pub(crate) struct Shared {
    pub config: Arc<Config>,
    pub handlers: Arc<Handlers>,
    pub options: WorkerOptions,
}

/// One finished delivery on its way to the completer.
struct Completion {
    lease: Lease,
    outcome: Outcome,
}

pub struct Worker {
    shared: Arc<Shared>,
    sources: Vec<Source>,
    counters: Arc<WorkerCounters>,
}

/// A broker and the queues consumed from it. A worker has one per broker: its native
/// broker, and one per Celery app for `protocol: celery` queues.
struct Source {
    broker: Arc<dyn Broker>,
    queues: Vec<String>,
}

impl Worker {
    /// A worker consuming `options.queues` from `broker`.
    pub fn new(
        config: Arc<Config>,
        broker: Arc<dyn Broker>,
        handlers: Handlers,
        options: WorkerOptions,
    ) -> Self {
        let queues = options.queues.clone();
        Worker {
            shared: Arc::new(Shared {
                config,
                handlers: Arc::new(handlers),
                options,
            }),
            sources: vec![Source { broker, queues }],
            counters: Arc::new(WorkerCounters::default()),
        }
    }

    /// Also consumes `queues` from another broker (e.g. `protocol: celery` queues through a
    /// [`crate::celery::CeleryBroker`]). Each broker gets its own reserve loop; all of them
    /// share `concurrency` and `max_tasks`.
    pub fn add_source(mut self, broker: Arc<dyn Broker>, queues: Vec<String>) -> Self {
        self.sources.push(Source { broker, queues });
        self
    }

    pub fn counters(&self) -> Arc<WorkerCounters> {
        self.counters.clone()
    }

    /// Runs until `shutdown` is cancelled (or `max_tasks` is reached), then drains.
    /// `force` cuts the drain short: running tasks are stopped and returned at once.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        force: CancellationToken,
    ) -> Result<WorkerExit, WorkerError> {
        let opts = &self.shared.options;
        if opts.concurrency == 0 {
            return Err(WorkerError::Options(
                "concurrency must be at least 1".into(),
            ));
        }
        let sources: Vec<Source> = self
            .sources
            .into_iter()
            .filter(|s| !s.queues.is_empty())
            .collect();
        if sources.is_empty() {
            return Err(WorkerError::Options("no queues to consume".into()));
        }
        for q in sources.iter().flat_map(|s| &s.queues) {
            crate::broker::validate_queue(q)?;
        }
        if opts.lease < Duration::from_secs(1) {
            return Err(WorkerError::Options("lease must be at least 1s".into()));
        }
        tracing::info!(
            worker = %opts.worker_id,
            queues = %sources.iter().map(|s| s.queues.join(",")).collect::<Vec<_>>().join(","),
            concurrency = opts.concurrency,
            "worker started"
        );
        let pool = Arc::new(Pool {
            semaphore: Arc::new(Semaphore::new(opts.concurrency)),
            budget: Budget::new(opts.max_tasks),
            stop_tasks: CancellationToken::new(),
            stop_reserving: shutdown.child_token(),
            force,
            multi: sources.len() > 1,
        });
        let loops = sources.into_iter().map(|source| {
            consume(
                source,
                self.shared.clone(),
                self.counters.clone(),
                pool.clone(),
            )
        });
        let mut exit = Ok(WorkerExit::MaxTasks);
        for result in futures::future::join_all(loops).await {
            match (result, &exit) {
                (Err(e), Ok(_)) => exit = Err(e),
                (Ok(WorkerExit::Shutdown), Ok(_)) => exit = Ok(WorkerExit::Shutdown),
                _ => {}
            }
        }
        tracing::info!(
            started = WorkerCounters::get(&self.counters.started),
            succeeded = WorkerCounters::get(&self.counters.succeeded),
            failed = WorkerCounters::get(&self.counters.failed),
            reason = ?exit.as_ref().ok(),
            "worker stopped"
        );
        exit
    }
}

/// What the reserve loops of one worker share.
struct Pool {
    semaphore: Arc<Semaphore>,
    budget: Budget,
    /// Cancels running tasks (grace over, or a fatal error).
    stop_tasks: CancellationToken,
    /// Stops every reserve loop: shutdown, or one loop failed for good.
    stop_reserving: CancellationToken,
    force: CancellationToken,
    /// More than one source: an idle loop waits for messages without holding a permit.
    multi: bool,
}

/// `max_tasks` shared by the reserve loops: each claims what it may start before reserving
/// and gives back what it did not get.
struct Budget {
    max: Option<u64>,
    claimed: AtomicU64,
}

impl Budget {
    fn new(max: Option<u64>) -> Self {
        Budget {
            max,
            claimed: AtomicU64::new(0),
        }
    }

    /// Claims up to `want` task starts; 0 when the budget is spent.
    fn claim(&self, want: usize) -> usize {
        let Some(max) = self.max else { return want };
        let mut granted = 0;
        let _ = self
            .claimed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                granted = max.saturating_sub(c).min(want as u64);
                Some(c + granted)
            });
        granted as usize
    }

    fn refund(&self, n: usize) {
        if self.max.is_some() && n > 0 {
            self.claimed.fetch_sub(n as u64, Ordering::SeqCst);
        }
    }
}

/// One source's reserve loop, then the drain of its tasks.
async fn consume(
    source: Source,
    shared: Arc<Shared>,
    counters: Arc<WorkerCounters>,
    pool: Arc<Pool>,
) -> Result<WorkerExit, WorkerError> {
    let opts = &shared.options;
    let Source { broker, queues } = source;
    let shutdown = &pool.stop_reserving;
    let semaphore = &pool.semaphore;
    // Every message this loop holds: running, or finished and not yet acknowledged.
    let held: Held = Arc::default();
    let (done_tx, done_rx) = mpsc::channel::<Completion>(4 * MAX_RESERVE_BATCH);
    let completer = tokio::spawn(complete_loop(
        broker.clone(),
        shared.clone(),
        counters.clone(),
        done_rx,
        held.clone(),
        pool.force.clone(),
    ));
    let keeper_stop = CancellationToken::new();
    let keeper = tokio::spawn(keep_leases(
        broker.clone(),
        held.clone(),
        opts.lease,
        keeper_stop.clone(),
    ));

    let mut tasks = JoinSet::new();
    let spawn = |tasks: &mut JoinSet<()>, delivery: Delivery, permit: OwnedSemaphorePermit| {
        counters.started.fetch_add(1, Ordering::Relaxed);
        held.lock()
            .expect("held map poisoned")
            .insert(delivery.lease.id.clone(), delivery.lease.clone());
        let shared = shared.clone();
        let done = done_tx.clone();
        let cancel = pool.stop_tasks.child_token();
        tasks.spawn(async move {
            let outcome = execute::execute(&shared, &delivery, &cancel).await;
            // The completer only goes away after every task has finished. The permit is
            // given back once it has the outcome (backpressure), the lease once it has
            // acknowledged (or retried, released, dead-lettered) the message.
            let _ = done
                .send(Completion {
                    lease: delivery.lease,
                    outcome,
                })
                .await;
            drop(permit);
        });
    };
    // An idle loop must come around often enough to feed the systemd watchdog.
    let reserve_wait = match opts.notifier.as_ref().and_then(|n| n.watchdog_every()) {
        Some(every) => opts.reserve_wait.min(every),
        None => opts.reserve_wait,
    };
    let mut backoff = Backoff::new();
    let mut idle = false;
    let mut last_status = tokio::time::Instant::now();
    let exit = loop {
        pulse(&shared, &counters, &pool, &mut last_status);
        while let Some(joined) = tasks.try_join_next() {
            log_join(joined);
        }
        if shutdown.is_cancelled() {
            break Ok(WorkerExit::Shutdown);
        }
        if pool.multi && idle {
            // Wait for a message without holding a permit, so that an idle source does not
            // sit on concurrency a busy one could use; then wait for a permit, with the
            // message's lease kept alive meanwhile.
            if pool.budget.claim(1) == 0 {
                break Ok(WorkerExit::MaxTasks);
            }
            let reserved = broker.reserve(&queues, 1, opts.lease, reserve_wait).await;
            let delivery = match reserved {
                Ok(mut d) if !d.is_empty() => {
                    backoff.succeeded("reserve");
                    d.remove(0)
                }
                Ok(_) => {
                    backoff.succeeded("reserve");
                    pool.budget.refund(1);
                    continue;
                }
                Err(e) => {
                    pool.budget.refund(1);
                    match reserve_failed(e, &mut backoff, shutdown).await {
                        Some(e) => break Err(e),
                        None => continue,
                    }
                }
            };
            idle = false;
            held.lock()
                .expect("held map poisoned")
                .insert(delivery.lease.id.clone(), delivery.lease.clone());
            let permit = loop {
                tokio::select! {
                    p = semaphore.clone().acquire_owned() => break Some(p.expect("semaphore never closed")),
                    _ = shutdown.cancelled() => break None,
                    // All slots busy for long: keep the watchdog fed while waiting.
                    _ = pulse_wait(&shared) => pulse(&shared, &counters, &pool, &mut last_status),
                }
            };
            match permit {
                Some(permit) => spawn(&mut tasks, delivery, permit),
                None => {
                    let _ = broker.release(std::slice::from_ref(&delivery.lease)).await;
                    let_go(&held, &delivery.lease);
                    break Ok(WorkerExit::Shutdown);
                }
            }
            continue;
        }
        let budget = pool.budget.claim(MAX_RESERVE_BATCH);
        if budget == 0 {
            break Ok(WorkerExit::MaxTasks);
        }
        let mut permits = tokio::select! {
            p = semaphore.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.cancelled() => {
                pool.budget.refund(budget);
                break Ok(WorkerExit::Shutdown);
            }
            // All slots busy for long: loop around to feed the watchdog.
            _ = pulse_wait(&shared) => {
                pool.budget.refund(budget);
                continue;
            }
        };
        if semaphore.available_permits() + 1 < opts.concurrency.min(budget) {
            // Tasks that have just finished may not have returned their permits yet: let
            // them, so that one reserve takes them all (short tasks otherwise make the loop
            // reserve one or two messages per round trip).
            tokio::task::yield_now().await;
        }
        let extra = semaphore.available_permits().min(budget - 1);
        if extra > 0
            && let Ok(more) = semaphore.clone().try_acquire_many_owned(extra as u32)
        {
            permits.merge(more);
        }
        let want = permits.num_permits();
        pool.budget.refund(budget - want);
        // Not raced against shutdown: an in-flight reserve is short (reserve_wait) and
        // cancelling it could strand messages until their lease runs out.
        let reserved = broker
            .reserve(&queues, want, opts.lease, reserve_wait)
            .await;
        let deliveries = match reserved {
            Ok(d) => {
                backoff.succeeded("reserve");
                d
            }
            Err(e) => {
                drop(permits);
                pool.budget.refund(want);
                match reserve_failed(e, &mut backoff, shutdown).await {
                    Some(e) => break Err(e),
                    None => continue,
                }
            }
        };
        pool.budget.refund(want - deliveries.len());
        idle = deliveries.is_empty();
        for delivery in deliveries {
            let permit = permits.split(1).expect("one permit per reserved message");
            spawn(&mut tasks, delivery, permit);
        }
        // Unused permits (fewer messages than asked for) go back here.
        drop(permits);
    };
    if exit.is_err() {
        // A broker error that needs a human: the whole worker stops, its tasks too.
        pool.stop_reserving.cancel();
        pool.stop_tasks.cancel();
    }

    // Drain: let running tasks finish for `grace`, then stop them.
    let in_flight = tasks.len();
    if in_flight > 0 {
        tracing::info!(running = in_flight, grace = ?opts.grace, "draining");
    }
    let drained = async {
        while let Some(joined) = tasks.join_next().await {
            log_join(joined);
        }
    };
    let mut drained = std::pin::pin!(drained);
    let finished_in_grace = tokio::select! {
        _ = &mut drained => true,
        _ = tokio::time::sleep(opts.grace) => false,
        _ = pool.force.cancelled() => false,
    };
    if !finished_in_grace {
        tracing::warn!(
            running = opts.concurrency - semaphore.available_permits(),
            "grace period over: stopping running tasks and returning their messages"
        );
        pool.stop_tasks.cancel();
        drained.await;
    }
    // Leases are kept alive until the last outcome has been handed to the broker.
    drop(done_tx);
    let _ = completer.await;
    keeper_stop.cancel();
    let _ = keeper.await;
    exit
}

/// Handles a failed reserve: a transient error waits (with backoff) and returns `None` to
/// go on; a permanent one is returned for the loop to stop with.
async fn reserve_failed(
    e: BrokerError,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
) -> Option<WorkerError> {
    if e.is_transient() {
        let wait = backoff.failed("reserve", &e);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => {}
        }
        return None;
    }
    tracing::error!(error = %e, "reserve failed; worker stops");
    Some(e.into())
}

fn log_join(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined
        && e.is_panic()
    {
        // The message was not acked: its lease expires and it is delivered again.
        tracing::error!(error = %e, "task panicked; its message will be redelivered");
    }
}

/// Reconnect-style backoff for the main loop, logging once per state change.
struct Backoff {
    failures: u32,
    /// Whether the first failure was logged at WARN (then the recovery is logged too).
    warned: bool,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            failures: 0,
            warned: false,
        }
    }

    fn succeeded(&mut self, what: &str) {
        if self.failures > 0 {
            if self.warned {
                tracing::info!(
                    after_failures = self.failures,
                    "broker available again ({what})"
                );
            } else {
                tracing::debug!(after_failures = self.failures, "{what} succeeded again");
            }
        }
        self.failures = 0;
        self.warned = false;
    }

    fn failed(&mut self, what: &str, e: &BrokerError) -> Duration {
        if self.failures == 0 {
            // A lost connection is logged once by the broker itself (lost, then restored);
            // saying it again for every kind of call that noticed would only add noise.
            if matches!(
                e,
                BrokerError::Unavailable { .. } | BrokerError::ConnectionLost(_)
            ) {
                tracing::debug!(error = %e, "{what} failed: broker unavailable; retrying with backoff");
            } else {
                self.warned = true;
                tracing::warn!(error = %e, "broker unavailable ({what}); retrying with backoff");
            }
        }
        self.failures = self.failures.saturating_add(1);
        let base = Duration::from_millis(100)
            .saturating_mul(2u32.saturating_pow(self.failures.min(6) - 1))
            .min(Duration::from_secs(5));
        base.mul_f64(rand::random_range(0.5..=1.0))
    }
}

/// The messages a worker holds (running, or finished and not yet acknowledged), by id.
type Held = Arc<Mutex<HashMap<String, Lease>>>;

/// Forgets a message once the completer has handed its outcome to the broker (only this
/// reservation of it: the same id may have been reserved again since, under a new token).
fn let_go(held: &Held, lease: &Lease) {
    let mut held = held.lock().expect("held map poisoned");
    if held.get(&lease.id).is_some_and(|l| l.token == lease.token) {
        held.remove(&lease.id);
    }
}

/// Extends the leases of the messages the worker holds every `lease / 3`.
async fn keep_leases(
    broker: Arc<dyn Broker>,
    held: Held,
    lease: Duration,
    stop: CancellationToken,
) {
    let every = lease / 3;
    let mut lost_reported: std::collections::HashSet<String> = Default::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let leases: Vec<Lease> = held
            .lock()
            .expect("held map poisoned")
            .values()
            .cloned()
            .collect();
        if leases.is_empty() {
            continue;
        }
        match broker.extend_lease(&leases, lease).await {
            Ok(extended) => {
                for (l, ok) in leases.iter().zip(extended) {
                    // Acknowledged meanwhile (no longer held) is not a lost lease.
                    let still_held = || {
                        held.lock()
                            .expect("held map poisoned")
                            .get(&l.id)
                            .is_some_and(|h| h.token == l.token)
                    };
                    if !ok && still_held() && lost_reported.insert(l.id.clone()) {
                        tracing::warn!(
                            id = %l.id,
                            queue = %l.queue,
                            "lease lost while running (it expired); the message may run twice"
                        );
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "extending leases failed; will try again"),
        }
        lost_reported.retain(|id| leases.iter().any(|l| &l.id == id));
    }
}

/// Most batches of outcomes being turned into broker calls at the same time: while one
/// batch waits for Redis, the next is already on its way (short tasks finish faster than one
/// round trip).
const COMPLETIONS_IN_FLIGHT: usize = 4;

/// Turns outcomes into broker calls, batching successes into one ack call, with up to
/// [`COMPLETIONS_IN_FLIGHT`] batches in flight.
async fn complete_loop(
    broker: Arc<dyn Broker>,
    shared: Arc<Shared>,
    counters: Arc<WorkerCounters>,
    mut rx: mpsc::Receiver<Completion>,
    held: Held,
    force: CancellationToken,
) {
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            batch = receive_batch(&mut rx), if open && in_flight.len() < COMPLETIONS_IN_FLIGHT => {
                match batch {
                    Some(batch) => in_flight.push(complete_batch(
                        &*broker, &shared, &counters, batch, &held, &force,
                    )),
                    None => open = false,
                }
            }
            Some(()) = futures::StreamExt::next(&mut in_flight), if !in_flight.is_empty() => {}
        }
    }
}

/// The next outcomes waiting (at least one; at most a reserve batch), or `None` once every
/// sender is gone.
async fn receive_batch(rx: &mut mpsc::Receiver<Completion>) -> Option<Vec<Completion>> {
    let mut batch = Vec::new();
    (rx.recv_many(&mut batch, MAX_RESERVE_BATCH).await > 0).then_some(batch)
}

/// One batch of outcomes: results stored first (pipelined), then one ack call for all the
/// successes, one release call for the cancelled, then retries and dead letters one by one.
async fn complete_batch(
    broker: &dyn Broker,
    shared: &Shared,
    counters: &WorkerCounters,
    batch: Vec<Completion>,
    held: &Held,
    force: &CancellationToken,
) {
    let ttl = shared.config.result_expires;
    let mut results: Vec<TaskResult> = Vec::new();
    let mut acks: Vec<Lease> = Vec::new();
    let mut releases: Vec<Lease> = Vec::new();
    let mut singles: Vec<(Lease, Outcome)> = Vec::new();
    for Completion { lease, outcome } in batch {
        log_outcome(&lease, &outcome);
        match outcome {
            Outcome::Succeeded(r) => {
                counters.succeeded.fetch_add(1, Ordering::Relaxed);
                if keeps_result(shared, &r) {
                    results.push(r);
                }
                acks.push(lease);
            }
            Outcome::Expired(r) => {
                counters.expired.fetch_add(1, Ordering::Relaxed);
                if keeps_result(shared, &r) {
                    results.push(r);
                }
                acks.push(lease);
            }
            Outcome::Cancelled => {
                counters.returned.fetch_add(1, Ordering::Relaxed);
                releases.push(lease);
            }
            other => singles.push((lease, other)),
        }
    }
    // Results first, then acks: a crash in between re-runs the task (at-least-once)
    // rather than losing its result.
    store_results(broker, &results, ttl, force).await;
    if !acks.is_empty() {
        retrying("ack", force, || broker.ack_many(&acks)).await;
    }
    if !releases.is_empty() {
        retrying("release", force, || broker.release(&releases)).await;
    }
    for lease in acks.iter().chain(&releases) {
        let_go(held, lease);
    }
    for (lease, outcome) in singles {
        match outcome {
            Outcome::Failed {
                result,
                reason,
                retry_in: Some(wait),
            } => {
                counters.retried.fetch_add(1, Ordering::Relaxed);
                if keeps_result(shared, &result) {
                    store_results(broker, std::slice::from_ref(&result), ttl, force).await;
                }
                let eta = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
                retrying("retry", force, || broker.retry_later(&lease, eta, &reason)).await;
            }
            Outcome::Failed { result, reason, .. } => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                store_results(broker, std::slice::from_ref(&result), ttl, force).await;
                let why = format!("failed after {} attempt(s): {reason}", result.attempts);
                retrying("dead-letter", force, || broker.dead_letter(&lease, &why)).await;
            }
            Outcome::Rejected { reason, result } => {
                counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                if let Some(r) = result {
                    store_results(broker, std::slice::from_ref(&r), ttl, force).await;
                }
                retrying("dead-letter", force, || broker.dead_letter(&lease, &reason)).await;
            }
            _ => unreachable!("batched above"),
        }
        let_go(held, &lease);
    }
}

/// Stores results (one pipelined call). When that fails on a transient error (Redis
/// restarting) it is repeated with backoff until it succeeds or `force` is cancelled, before
/// the caller acknowledges the messages: a result must not be lost while its message is acked.
async fn store_results(
    broker: &dyn Broker,
    results: &[TaskResult],
    ttl: Duration,
    force: &CancellationToken,
) {
    if results.is_empty() {
        return;
    }
    match broker.store_results(results, ttl).await {
        Ok(()) => {}
        Err(e) if e.is_transient() => {
            retrying("store results", force, || {
                broker.store_results(results, ttl)
            })
            .await;
        }
        Err(_) => {
            // Not transient: find the result(s) at fault, and store the others.
            for r in results {
                if let Err(e) = broker.store_result(r, ttl).await {
                    tracing::warn!(id = %r.id, error = %e, "could not store result");
                }
            }
        }
    }
}

/// Failures and dead letters are always recorded; successes unless `ignore_result`.
fn keeps_result(shared: &Shared, r: &TaskResult) -> bool {
    !shared
        .config
        .tasks
        .get(&r.task)
        .is_some_and(|t| t.ignore_result && r.status == crate::broker::TaskStatus::Success)
}

/// Retries a broker call on transient errors until it succeeds, a permanent error occurs,
/// or `force` is cancelled. Giving up is safe: an unacknowledged message comes back when its
/// lease expires (at-least-once).
async fn retrying<T, F, Fut>(what: &str, force: &CancellationToken, mut call: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BrokerError>>,
{
    let mut backoff = Backoff::new();
    loop {
        match call().await {
            Ok(_) => {
                backoff.succeeded(what);
                return;
            }
            Err(e) if e.is_transient() && !force.is_cancelled() => {
                let wait = backoff.failed(what, &e);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = force.cancelled() => {}
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "{what} failed; giving up (a message not acknowledged comes back when its lease expires)");
                return;
            }
        }
    }
}

/// Feeds the systemd watchdog from the reserve loop, and refreshes the status line at most
/// once a second.
fn pulse(
    shared: &Shared,
    counters: &WorkerCounters,
    pool: &Pool,
    last_status: &mut tokio::time::Instant,
) {
    let running = shared.options.concurrency - pool.semaphore.available_permits();
    metrics::gauge!(crate::metrics::RUNNING).set(running as f64);
    let Some(n) = &shared.options.notifier else {
        return;
    };
    n.watchdog_tick();
    if last_status.elapsed() >= Duration::from_secs(1) {
        *last_status = tokio::time::Instant::now();
        n.status(&format!(
            "{running}/{} running, {} done, {} failed",
            shared.options.concurrency,
            WorkerCounters::get(&counters.succeeded),
            WorkerCounters::get(&counters.failed)
        ));
    }
}

/// Resolves after the watchdog interval (never without a watchdog).
async fn pulse_wait(shared: &Shared) {
    match shared
        .options
        .notifier
        .as_ref()
        .and_then(|n| n.watchdog_every())
    {
        Some(every) => tokio::time::sleep(every).await,
        None => std::future::pending().await,
    }
}

/// Counts an outcome in the metrics.
fn record_outcome(lease: &Lease, outcome: &Outcome) {
    use crate::metrics as m;
    let task = match outcome {
        Outcome::Succeeded(r) | Outcome::Expired(r) => r.task.clone(),
        Outcome::Failed { result, .. } => result.task.clone(),
        Outcome::Rejected { result, .. } => result
            .as_ref()
            .map_or_else(|| "(undecodable)".to_string(), |r| r.task.clone()),
        Outcome::Cancelled => "(cancelled)".to_string(),
    };
    metrics::counter!(m::TASKS, "task" => task.clone(), "outcome" => outcome.label()).increment(1);
    match outcome {
        Outcome::Succeeded(r) | Outcome::Failed { result: r, .. } => {
            if let Some(start) = r.started_at {
                let secs = (r.finished_at - start).num_microseconds().unwrap_or(0) as f64 / 1e6;
                metrics::histogram!(m::TASK_DURATION, "task" => task.clone()).record(secs.max(0.0));
            }
            if let Outcome::Failed { retry_in, .. } = outcome {
                if retry_in.is_some() {
                    metrics::counter!(m::RETRIES, "task" => task).increment(1);
                } else {
                    metrics::counter!(m::DEAD_LETTERS, "queue" => lease.queue.clone()).increment(1);
                }
            }
        }
        Outcome::Rejected { .. } => {
            metrics::counter!(m::DEAD_LETTERS, "queue" => lease.queue.clone()).increment(1)
        }
        _ => {}
    }
}

fn log_outcome(lease: &Lease, outcome: &Outcome) {
    record_outcome(lease, outcome);
    match outcome {
        Outcome::Succeeded(r) => tracing::info!(
            task = %r.task,
            id = %r.id,
            queue = %lease.queue,
            attempt = r.attempts,
            ms = duration_ms(r),
            "task succeeded"
        ),
        Outcome::Failed {
            result,
            reason,
            retry_in,
        } => match retry_in {
            Some(wait) => tracing::warn!(
                task = %result.task, id = %result.id, attempt = result.attempts,
                error = %reason, retry_in = ?wait, "task failed; will retry"
            ),
            None => tracing::error!(
                task = %result.task, id = %result.id, attempt = result.attempts,
                error = %reason, "task failed; no retries left, dead-lettered"
            ),
        },
        Outcome::Expired(r) => {
            tracing::info!(task = %r.task, id = %r.id, "task expired before it started")
        }
        Outcome::Rejected { reason, .. } => {
            tracing::warn!(id = %lease.id, queue = %lease.queue, reason = %reason, "message dead-lettered")
        }
        Outcome::Cancelled => {
            tracing::info!(id = %lease.id, "task stopped by shutdown; message returned to its queue")
        }
    }
}

fn duration_ms(r: &TaskResult) -> i64 {
    r.started_at
        .map(|s| (r.finished_at - s).num_milliseconds())
        .unwrap_or(0)
}
