//! The worker: reserves messages from named queues, runs their tasks, stores results,
//! retries failures with backoff and dead-letters what cannot succeed.
//!
//! Shape of the loop:
//! - a permit (of `concurrency`) is taken BEFORE reserving, so the worker never holds a
//!   message it cannot start; all free permits are used for one batched reserve;
//! - each message runs in its own tokio task; its outcome goes to the *completer*, which
//!   stores results and acknowledges in batches (one ack script call for many messages);
//! - the *lease keeper* extends the leases of running messages every `lease / 3`, so a
//!   long task keeps its message while a dead worker's messages come back after `lease`;
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
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use self::execute::{MAX_EXTRA_DELIVERIES, Outcome, command_env};
pub use self::handler::{Handlers, TaskContext, TaskFailure};
use crate::broker::{Broker, BrokerError, Lease, MAX_RESERVE_BATCH, TaskResult};
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
    broker: Arc<dyn Broker>,
    counters: Arc<WorkerCounters>,
}

impl Worker {
    pub fn new(
        config: Arc<Config>,
        broker: Arc<dyn Broker>,
        handlers: Handlers,
        options: WorkerOptions,
    ) -> Self {
        Worker {
            shared: Arc::new(Shared {
                config,
                handlers: Arc::new(handlers),
                options,
            }),
            broker,
            counters: Arc::new(WorkerCounters::default()),
        }
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
        if opts.queues.is_empty() {
            return Err(WorkerError::Options("no queues to consume".into()));
        }
        for q in &opts.queues {
            crate::broker::validate_queue(q)?;
        }
        if opts.lease < Duration::from_secs(1) {
            return Err(WorkerError::Options("lease must be at least 1s".into()));
        }
        tracing::info!(
            worker = %opts.worker_id,
            queues = %opts.queues.join(","),
            concurrency = opts.concurrency,
            "worker started"
        );

        let semaphore = Arc::new(Semaphore::new(opts.concurrency));
        let running: Arc<Mutex<HashMap<String, Lease>>> = Arc::default();
        let stop_tasks = CancellationToken::new();
        let (done_tx, done_rx) = mpsc::channel::<Completion>(4 * MAX_RESERVE_BATCH);
        let completer = tokio::spawn(complete_loop(
            self.broker.clone(),
            self.shared.clone(),
            self.counters.clone(),
            done_rx,
            force.clone(),
        ));
        let keeper_stop = CancellationToken::new();
        let keeper = tokio::spawn(keep_leases(
            self.broker.clone(),
            running.clone(),
            opts.lease,
            keeper_stop.clone(),
        ));

        let mut tasks = JoinSet::new();
        let mut started: u64 = 0;
        let mut backoff = Backoff::new();
        let exit = loop {
            while let Some(joined) = tasks.try_join_next() {
                log_join(joined);
            }
            if shutdown.is_cancelled() {
                break WorkerExit::Shutdown;
            }
            let budget = match opts.max_tasks {
                Some(max) if started >= max => break WorkerExit::MaxTasks,
                Some(max) => (max - started).min(MAX_RESERVE_BATCH as u64) as usize,
                None => MAX_RESERVE_BATCH,
            };
            let mut permits = tokio::select! {
                p = semaphore.clone().acquire_owned() => p.expect("semaphore never closed"),
                _ = shutdown.cancelled() => break WorkerExit::Shutdown,
            };
            let extra = semaphore.available_permits().min(budget - 1);
            if extra > 0
                && let Ok(more) = semaphore.clone().try_acquire_many_owned(extra as u32)
            {
                permits.merge(more);
            }
            let want = permits.num_permits();
            // Not raced against shutdown: an in-flight reserve is short (reserve_wait) and
            // cancelling it could strand messages until their lease runs out.
            let reserved = self
                .broker
                .reserve(&opts.queues, want, opts.lease, opts.reserve_wait)
                .await;
            let deliveries = match reserved {
                Ok(d) => {
                    backoff.succeeded("reserve");
                    d
                }
                Err(e) if e.is_transient() => {
                    drop(permits);
                    let wait = backoff.failed("reserve", &e);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => {}
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "reserve failed; worker stops");
                    keeper_stop.cancel();
                    stop_tasks.cancel();
                    drop(done_tx);
                    while tasks.join_next().await.is_some() {}
                    let _ = completer.await;
                    return Err(e.into());
                }
            };
            for delivery in deliveries {
                let permit = permits.split(1).expect("one permit per reserved message");
                started += 1;
                self.counters.started.fetch_add(1, Ordering::Relaxed);
                running
                    .lock()
                    .expect("running map poisoned")
                    .insert(delivery.lease.id.clone(), delivery.lease.clone());
                let shared = self.shared.clone();
                let done = done_tx.clone();
                let cancel = stop_tasks.child_token();
                let running = running.clone();
                tasks.spawn(async move {
                    let outcome = execute::execute(&shared, &delivery, &cancel).await;
                    drop(permit);
                    running
                        .lock()
                        .expect("running map poisoned")
                        .remove(&delivery.lease.id);
                    // The completer only goes away after every task has finished.
                    let _ = done
                        .send(Completion {
                            lease: delivery.lease,
                            outcome,
                        })
                        .await;
                });
            }
            // Unused permits (fewer messages than asked for) go back here.
            drop(permits);
        };

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
            _ = force.cancelled() => false,
        };
        if !finished_in_grace {
            tracing::warn!(
                running = running.lock().expect("running map poisoned").len(),
                "grace period over: stopping running tasks and returning their messages"
            );
            stop_tasks.cancel();
            drained.await;
        }
        keeper_stop.cancel();
        let _ = keeper.await;
        drop(done_tx);
        let _ = completer.await;
        tracing::info!(
            started = WorkerCounters::get(&self.counters.started),
            succeeded = WorkerCounters::get(&self.counters.succeeded),
            failed = WorkerCounters::get(&self.counters.failed),
            reason = ?exit,
            "worker stopped"
        );
        Ok(exit)
    }
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
}

impl Backoff {
    fn new() -> Self {
        Backoff { failures: 0 }
    }

    fn succeeded(&mut self, what: &str) {
        if self.failures > 0 {
            tracing::info!(
                after_failures = self.failures,
                "broker available again ({what})"
            );
        }
        self.failures = 0;
    }

    fn failed(&mut self, what: &str, e: &BrokerError) -> Duration {
        if self.failures == 0 {
            tracing::warn!(error = %e, "broker unavailable ({what}); retrying with backoff");
        }
        self.failures = self.failures.saturating_add(1);
        let base = Duration::from_millis(100)
            .saturating_mul(2u32.saturating_pow(self.failures.min(6) - 1))
            .min(Duration::from_secs(5));
        base.mul_f64(rand::random_range(0.5..=1.0))
    }
}

/// Extends the leases of running messages every `lease / 3`.
async fn keep_leases(
    broker: Arc<dyn Broker>,
    running: Arc<Mutex<HashMap<String, Lease>>>,
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
        let leases: Vec<Lease> = running
            .lock()
            .expect("running map poisoned")
            .values()
            .cloned()
            .collect();
        if leases.is_empty() {
            continue;
        }
        match broker.extend_lease(&leases, lease).await {
            Ok(held) => {
                for (l, ok) in leases.iter().zip(held) {
                    if !ok && lost_reported.insert(l.id.clone()) {
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

/// Turns outcomes into broker calls, batching successes into one ack call.
async fn complete_loop(
    broker: Arc<dyn Broker>,
    shared: Arc<Shared>,
    counters: Arc<WorkerCounters>,
    mut rx: mpsc::Receiver<Completion>,
    force: CancellationToken,
) {
    let ttl = shared.config.result_expires;
    let mut batch: Vec<Completion> = Vec::with_capacity(MAX_RESERVE_BATCH);
    while rx.recv_many(&mut batch, MAX_RESERVE_BATCH).await > 0 {
        let mut results: Vec<TaskResult> = Vec::new();
        let mut acks: Vec<Lease> = Vec::new();
        let mut releases: Vec<Lease> = Vec::new();
        let mut singles: Vec<(Lease, Outcome)> = Vec::new();
        for Completion { lease, outcome } in batch.drain(..) {
            log_outcome(&lease, &outcome);
            match outcome {
                Outcome::Succeeded(r) => {
                    counters.succeeded.fetch_add(1, Ordering::Relaxed);
                    if keeps_result(&shared, &r) {
                        results.push(r);
                    }
                    acks.push(lease);
                }
                Outcome::Expired(r) => {
                    counters.expired.fetch_add(1, Ordering::Relaxed);
                    if keeps_result(&shared, &r) {
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
        let stores = results.iter().map(|r| broker.store_result(r, ttl));
        for (r, res) in results.iter().zip(futures::future::join_all(stores).await) {
            if let Err(e) = res {
                tracing::warn!(id = %r.id, error = %e, "could not store result");
            }
        }
        if !acks.is_empty() {
            retrying("ack", &force, || broker.ack_many(&acks)).await;
        }
        if !releases.is_empty() {
            retrying("release", &force, || broker.release(&releases)).await;
        }
        for (lease, outcome) in singles {
            match outcome {
                Outcome::Failed {
                    result,
                    reason,
                    retry_in: Some(wait),
                } => {
                    counters.retried.fetch_add(1, Ordering::Relaxed);
                    if keeps_result(&shared, &result) {
                        let _ = broker.store_result(&result, ttl).await;
                    }
                    let eta = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
                    retrying("retry", &force, || broker.retry_later(&lease, eta, &reason)).await;
                }
                Outcome::Failed { result, reason, .. } => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    let _ = broker.store_result(&result, ttl).await;
                    let why = format!("failed after {} attempt(s): {reason}", result.attempts);
                    retrying("dead-letter", &force, || broker.dead_letter(&lease, &why)).await;
                }
                Outcome::Rejected { reason, result } => {
                    counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    if let Some(r) = result {
                        let _ = broker.store_result(&r, ttl).await;
                    }
                    retrying("dead-letter", &force, || {
                        broker.dead_letter(&lease, &reason)
                    })
                    .await;
                }
                _ => unreachable!("batched above"),
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
                tracing::error!(error = %e, "{what} failed; the message comes back when its lease expires");
                return;
            }
        }
    }
}

fn log_outcome(lease: &Lease, outcome: &Outcome) {
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
