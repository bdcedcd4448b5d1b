//! The broker: named priority queues with leases, delayed messages, dead letters and results.
//!
//! [`Broker`] is the one interface the beat, the worker and the CLI use. Two implementations
//! pass the same contract test suite (`tests/it/broker_contract.rs`):
//!
//! - [`redis::RedisBroker`]: Redis (`redis://`, `rediss://`, `unix://`), every state transition
//!   of a message one Lua script (`src/broker/lua/*.lua`); see `docs/broker.md`.
//! - [`memory::MemoryBroker`]: in-process, for `celeriac run` and tests.
//!
//! Delivery is at-least-once. [`Broker::reserve`] hands out messages under a lease; the holder
//! acknowledges ([`Broker::ack_many`]), retries later, dead-letters or releases them. A lease
//! that expires (the worker died, or stopped extending it) puts the message back at the front
//! of its priority with `attempt + 1`. Every operation on a reservation carries its [`Lease`]
//! token, so a holder whose lease expired can no longer ack, retry or extend the message
//! someone else now holds: those calls report `false` for it.

pub mod keys;
pub(crate) mod link;
pub mod memory;
pub mod message;
pub mod redis;
mod scripts;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use self::link::redact;
pub use self::memory::MemoryBroker;
pub use self::message::{
    DEFAULT_PRIORITY, MAX_PRIORITY, TaskMessage, TaskResult, TaskStatus, bounded_text,
};
pub use self::redis::{RedisBroker, RedisBrokerOptions};
pub use self::scripts::enqueue_lua_lib;

/// Most messages one [`Broker::reserve`] call hands out (larger requests are capped).
pub const MAX_RESERVE_BATCH: usize = 1000;

/// Longest reason kept with a retry or a dead letter (longer ones are cut).
pub const MAX_REASON_BYTES: usize = 2048;

/// A reservation: which message, on which queue, under which lease token.
///
/// The token changes every time the message is reserved, so a stale holder (whose lease
/// expired and whose message was redelivered) cannot ack or extend the new holder's lease.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    pub queue: String,
    pub id: String,
    pub token: u64,
}

/// A message body that could not be decoded as a [`TaskMessage`]. The worker dead-letters it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecodable {
    /// The raw body as stored.
    pub body: Vec<u8>,
    /// Why it did not decode.
    pub error: String,
}

/// One reserved message.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub lease: Lease,
    /// 0 on the first delivery, +1 on each redelivery or retry (the broker's count; it is also
    /// copied into the decoded message).
    pub attempt: u32,
    /// The priority the broker queued the message at.
    pub priority: u8,
    /// Why the previous attempt did not complete (retry reason, "lease expired", ...).
    pub last_error: Option<String>,
    /// When the lease runs out unless extended, on this process's monotonic clock. Computed
    /// from the moment the reserve request was sent, so it is never later than the broker's.
    pub lease_deadline: tokio::time::Instant,
    /// The decoded message, or the raw body and the decode error.
    pub payload: Result<TaskMessage, Undecodable>,
}

impl Delivery {
    /// The decoded message, if the body decoded.
    pub fn message(&self) -> Option<&TaskMessage> {
        self.payload.as_ref().ok()
    }

    /// The message id (known even when the body did not decode).
    pub fn id(&self) -> &str {
        &self.lease.id
    }
}

/// Counts of one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Ready messages per priority (index = priority 0..=9).
    pub ready: [u64; 10],
    /// Messages waiting for their eta (countdowns, retries).
    pub delayed: u64,
    /// Reserved messages (leased to a worker), including ones whose lease has run out but
    /// that no reserve call has requeued yet.
    pub active: u64,
    /// Dead letters kept.
    pub dead: u64,
}

impl QueueStats {
    /// All ready messages.
    pub fn ready_total(&self) -> u64 {
        self.ready.iter().sum()
    }
}

/// A message given up on, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: String,
    pub reason: String,
    /// When it was dead-lettered (broker clock).
    pub at: DateTime<Utc>,
    /// The attempt it was on.
    pub attempt: u32,
    pub priority: u8,
    /// The body as it was stored (lossily decoded as UTF-8).
    pub body: String,
}

impl DeadLetter {
    /// The body decoded as a message, if it decodes.
    pub fn message(&self) -> Option<TaskMessage> {
        TaskMessage::from_json(self.body.as_bytes()).ok()
    }
}

/// Which dead letters [`Broker::requeue_dead`] puts back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadSelector {
    /// The one with this message id.
    Id(String),
    /// All of them.
    All,
}

/// Everything that can go wrong talking to a broker.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// Cannot reach the broker (connection refused, reconnect backoff in progress).
    #[error("broker {url} unavailable: {reason}")]
    Unavailable { url: String, reason: String },
    /// The connection broke during the request; the request may or may not have been applied.
    #[error("connection to broker lost: {0}")]
    ConnectionLost(String),
    /// No answer in time.
    #[error("broker did not answer within {0:?}")]
    Timeout(Duration),
    /// The broker is up but cannot serve right now (loading its data, busy script, failover).
    #[error("broker busy: {0}")]
    Busy(String),
    /// Wrong user or password, or the user may not run a needed command.
    #[error("broker refused access: {0}")]
    Auth(String),
    /// The broker URL is malformed or unsupported.
    #[error("invalid broker url {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// TLS setup failed (unreadable CA file, bad certificate).
    #[error("broker TLS setup: {0}")]
    Tls(String),
    /// A queue name that cannot be used.
    #[error(
        "invalid queue name {0:?}: must be 1-200 bytes without braces, spaces or control characters"
    )]
    InvalidQueue(String),
    /// A message that cannot be enqueued (priority out of range, empty id).
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// Something stored in the broker did not decode (a result, a dead letter).
    #[error("cannot decode {what}: {reason}")]
    Decode { what: String, reason: String },
    /// Any other error reported by the broker (script error, wrong key type, ...).
    #[error("broker error: {0}")]
    Backend(String),
}

impl BrokerError {
    /// True when retrying the same call later may succeed (connection problems, timeouts,
    /// a broker that is loading or failing over). False for errors that need a human.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BrokerError::Unavailable { .. }
                | BrokerError::ConnectionLost(_)
                | BrokerError::Timeout(_)
                | BrokerError::Busy(_)
        )
    }
}

/// Result alias for broker operations.
pub type Result<T, E = BrokerError> = std::result::Result<T, E>;

/// The broker interface. Object-safe: use it as `Arc<dyn Broker>`.
///
/// Queue names are validated by [`validate_queue`]. Operations that take leases return, per
/// lease, whether it was still held (`false`: the lease had expired and the message was or will
/// be redelivered, or it was already acked).
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Enqueues messages, in order (FIFO within a queue and priority). A message whose `eta`
    /// is in the future goes to the delayed set. A message whose id is already in its queue
    /// (ready, delayed or active) is skipped, which makes re-sending after an ambiguous error
    /// safe. Returns how many were newly enqueued.
    async fn enqueue_many(&self, messages: &[TaskMessage]) -> Result<usize>;

    /// Enqueues one message; `false` when its id was already queued.
    async fn enqueue(&self, message: &TaskMessage) -> Result<bool> {
        Ok(self.enqueue_many(std::slice::from_ref(message)).await? == 1)
    }

    /// Reserves up to `max` messages (capped at [`MAX_RESERVE_BATCH`]) from `queues` under a
    /// lease of `lease`: highest priority first across all the queues, FIFO within a priority
    /// and queue, round-robin between queues whose heads have the same priority. Delayed
    /// messages whose eta has passed are promoted and expired leases requeued on the way.
    /// When nothing is ready, waits up to `wait` for something to become ready; returns an
    /// empty vector if nothing did.
    async fn reserve(
        &self,
        queues: &[String],
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>>;

    /// Acknowledges (removes) reserved messages.
    async fn ack_many(&self, leases: &[Lease]) -> Result<Vec<bool>>;

    /// Acknowledges one reserved message.
    async fn ack(&self, lease: &Lease) -> Result<bool> {
        Ok(self.ack_many(std::slice::from_ref(lease)).await?[0])
    }

    /// Puts reserved messages back at the front of their priority, attempt unchanged (the
    /// worker did not start them, e.g. on shutdown).
    async fn release(&self, leases: &[Lease]) -> Result<Vec<bool>>;

    /// Schedules a reserved message to run again at `eta` with `attempt + 1`, remembering
    /// `reason` (delivered as [`Delivery::last_error`]).
    async fn retry_later(&self, lease: &Lease, eta: DateTime<Utc>, reason: &str) -> Result<bool>;

    /// Moves a reserved message to the queue's dead-letter list with `reason`.
    async fn dead_letter(&self, lease: &Lease, reason: &str) -> Result<bool>;

    /// Extends leases to `lease` from now.
    async fn extend_lease(&self, leases: &[Lease], lease: Duration) -> Result<Vec<bool>>;

    /// Stores a result, replacing any earlier one for the same id, for `ttl`.
    async fn store_result(&self, result: &TaskResult, ttl: Duration) -> Result<()>;

    /// Stores several results (each replacing any earlier one for its id) for `ttl`. The
    /// Redis broker sends them in one pipeline. On an error, some may have been stored.
    async fn store_results(&self, results: &[TaskResult], ttl: Duration) -> Result<()> {
        futures::future::try_join_all(results.iter().map(|r| self.store_result(r, ttl))).await?;
        Ok(())
    }

    /// The stored result for a message id, if any (and not expired).
    async fn get_result(&self, id: &str) -> Result<Option<TaskResult>>;

    /// Waits up to `timeout` for the result of a message id.
    async fn wait_result(&self, id: &str, timeout: Duration) -> Result<Option<TaskResult>>;

    /// Counts of a queue.
    async fn queue_stats(&self, queue: &str) -> Result<QueueStats>;

    /// Removes every ready and delayed message of a queue (not reserved ones, not dead
    /// letters). Returns how many were removed.
    async fn purge(&self, queue: &str) -> Result<u64>;

    /// The newest `limit` dead letters of a queue, newest first.
    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>>;

    /// Puts dead letters back on their queue (ready, at their priority, attempt reset to 0).
    /// Returns how many were requeued.
    async fn requeue_dead(&self, queue: &str, which: DeadSelector) -> Result<u64>;

    /// Checks that the broker answers.
    async fn ping(&self) -> Result<()>;
}

/// Opens the broker a URL names: `memory` for an in-process broker, otherwise a Redis URL
/// (`redis://`, `rediss://`, `unix://`, `redis+unix://`). Fails with a transient error when
/// Redis cannot be reached now.
pub async fn open(url: &str, options: RedisBrokerOptions) -> Result<Arc<dyn Broker>> {
    if url == "memory" || url == "memory://" {
        return Ok(Arc::new(MemoryBroker::new()));
    }
    Ok(Arc::new(RedisBroker::connect(url, options).await?))
}

/// Checks that a queue name can be used: 1-200 bytes, no braces (they would break the Redis
/// Cluster hash tag), no whitespace or control characters.
pub fn validate_queue(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name
            .chars()
            .any(|c| c == '{' || c == '}' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(BrokerError::InvalidQueue(name.to_string()))
    }
}

/// Checks a message before it is enqueued.
pub(crate) fn validate_message(m: &TaskMessage) -> Result<()> {
    validate_queue(&m.queue)?;
    if m.id.is_empty() {
        return Err(BrokerError::InvalidMessage("empty id".into()));
    }
    if m.priority > MAX_PRIORITY {
        return Err(BrokerError::InvalidMessage(format!(
            "priority {} of message {} is out of range 0..={MAX_PRIORITY}",
            m.priority, m.id
        )));
    }
    Ok(())
}

/// `reason` cut to [`MAX_REASON_BYTES`] at a character boundary.
pub(crate) fn bounded_reason(reason: &str) -> &str {
    if reason.len() <= MAX_REASON_BYTES {
        return reason;
    }
    let mut cut = MAX_REASON_BYTES;
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    &reason[..cut]
}

/// Decodes a stored body into a delivery payload, with the broker's attempt count.
pub(crate) fn decode_payload(body: Vec<u8>, attempt: u32) -> Result<TaskMessage, Undecodable> {
    match TaskMessage::from_json(&body) {
        Ok(mut m) => {
            m.attempt = attempt;
            Ok(m)
        }
        Err(e) => Err(Undecodable {
            body,
            error: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_are_validated() {
        for ok in ["default", "reports.daily", "q-1", "日本"] {
            validate_queue(ok).unwrap();
        }
        for bad in ["", "a b", "a{b", "b}", "tab\t", &"x".repeat(201)] {
            assert!(validate_queue(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn transient_errors_are_the_retryable_ones() {
        assert!(BrokerError::Timeout(Duration::from_secs(1)).is_transient());
        assert!(BrokerError::ConnectionLost("x".into()).is_transient());
        assert!(!BrokerError::Auth("x".into()).is_transient());
        assert!(!BrokerError::InvalidQueue("x".into()).is_transient());
    }

    #[test]
    fn reasons_are_bounded_at_char_boundaries() {
        let long = "é".repeat(MAX_REASON_BYTES);
        let cut = bounded_reason(&long);
        assert!(cut.len() <= MAX_REASON_BYTES && cut.len() >= MAX_REASON_BYTES - 1);
    }
}
