//! What travels through the broker: task messages (JSON on the wire) and task results.
//!
//! The JSON form is the contract between enqueuers (beat, `celeriac enqueue`, Rust callers)
//! and workers, possibly of different versions: optional fields are omitted when empty, missing
//! fields take their defaults, and unknown fields are ignored, so that fields can be added later
//! without breaking older workers.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Highest priority a message can have; 0 is the lowest. Higher runs first.
pub const MAX_PRIORITY: u8 = 9;

/// Default priority of a message that does not say otherwise (Celery's default is the middle).
pub const DEFAULT_PRIORITY: u8 = 5;

/// One task to run, as enqueued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMessage {
    /// Unique id (UUID v7, so ids sort by creation time). Also the id of the task's result.
    pub id: String,
    /// Name of the task, as declared in the configuration (`tasks:`).
    pub task: String,
    /// Queue the message is (or is to be) enqueued on.
    pub queue: String,
    /// 0..=9, higher first.
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// Positional (or any JSON) arguments.
    #[serde(default)]
    pub args: Value,
    /// Keyword arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kwargs: Option<Map<String, Value>>,
    /// Set by the beat: `schedule@nominal-instant`, the identity of one tick, so that a task
    /// can de-duplicate redeliveries of the same tick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fire_id: Option<String>,
    /// Name of the schedule that produced this message, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Do not deliver before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<DateTime<Utc>>,
    /// Do not start after this instant (the worker records the task as expired instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
    /// 0 on the first delivery, +1 on each redelivery (lease expired) or retry. On delivery the
    /// broker sets this from its own bookkeeping, whatever the body says.
    #[serde(default)]
    pub attempt: u32,
    /// When the message was created.
    pub enqueued_at: DateTime<Utc>,
    /// HMAC-SHA256 of the message (see `crate::signing`), hex, when signing is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

fn default_priority() -> u8 {
    DEFAULT_PRIORITY
}

impl TaskMessage {
    /// A fresh message id: a UUID v7, so ids made later in a process sort later.
    pub fn new_id() -> String {
        uuid::Uuid::now_v7().to_string()
    }

    /// A new message for `task` on `queue`, with a fresh UUID v7 id, default priority, no
    /// arguments and `enqueued_at = now`.
    pub fn new(task: impl Into<String>, queue: impl Into<String>) -> Self {
        TaskMessage {
            id: Self::new_id(),
            task: task.into(),
            queue: queue.into(),
            priority: DEFAULT_PRIORITY,
            args: Value::Null,
            kwargs: None,
            fire_id: None,
            schedule: None,
            eta: None,
            expires: None,
            attempt: 0,
            enqueued_at: Utc::now(),
            signature: None,
        }
    }

    /// Sets the priority (0..=9, higher first; validated on enqueue).
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the arguments.
    pub fn with_args(mut self, args: Value) -> Self {
        self.args = args;
        self
    }

    /// Sets the keyword arguments.
    pub fn with_kwargs(mut self, kwargs: Map<String, Value>) -> Self {
        self.kwargs = Some(kwargs);
        self
    }

    /// Delivers no earlier than `eta`.
    pub fn with_eta(mut self, eta: DateTime<Utc>) -> Self {
        self.eta = Some(eta);
        self
    }

    /// Delivers no earlier than `countdown` from now (Celery's `countdown=`).
    pub fn with_countdown(self, countdown: Duration) -> Self {
        let eta =
            Utc::now() + chrono::Duration::from_std(countdown).unwrap_or(chrono::Duration::MAX);
        self.with_eta(eta)
    }

    /// Expires (is not started) after `expires`.
    pub fn with_expires(mut self, expires: DateTime<Utc>) -> Self {
        self.expires = Some(expires);
        self
    }

    /// Marks the message as the tick `fire_id` of `schedule`.
    pub fn with_fire(mut self, schedule: impl Into<String>, fire_id: impl Into<String>) -> Self {
        self.schedule = Some(schedule.into());
        self.fire_id = Some(fire_id.into());
        self
    }

    /// True when the message has an `expires` instant that is not after `now`.
    pub fn is_expired_at(&self, now: DateTime<Utc>) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }

    /// The wire form.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a TaskMessage always serializes")
    }

    /// Parses the wire form.
    pub fn from_json(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskStatus {
    /// Ran and succeeded.
    Success,
    /// Ran and failed (after its retries, or with no retries left).
    Failure,
    /// Ran past its timeout and was killed.
    Timeout,
    /// Not started because its `expires` instant had passed.
    Expired,
    /// Given up on: bad message, unknown task, or out of retries.
    DeadLettered,
    /// Failed and scheduled to run again (an intermediate result).
    Retrying,
    /// Written by a newer version with a status this version does not know.
    #[serde(other)]
    Unknown,
}

impl TaskStatus {
    /// True for statuses after which the task will not run again by itself.
    pub fn is_final(self) -> bool {
        !matches!(self, TaskStatus::Retrying)
    }
}

/// The outcome of one task, as stored in the result backend for `result_expires`.
///
/// The worker fills it; fields it does not know are kept in `extra`, so that results written
/// by a newer worker survive a read-modify-write by an older one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The message id.
    pub id: String,
    /// The task name.
    pub task: String,
    pub status: TaskStatus,
    /// Return value of an in-process handler (or parsed output), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// Exit code of a command task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Captured output (bounded, see [`TaskResult::set_output`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// What went wrong, for failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How many times the task was started (1 on the first run).
    #[serde(default)]
    pub attempts: u32,
    /// Which worker ran it (host/pid or a configured name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fire_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: DateTime<Utc>,
    /// Fields this version does not know about.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl TaskResult {
    /// A result with the given status for `message`, finished now, everything else empty.
    pub fn for_message(message: &TaskMessage, status: TaskStatus) -> Self {
        TaskResult {
            id: message.id.clone(),
            task: message.task.clone(),
            status,
            value: None,
            exit_code: None,
            output: None,
            error: None,
            attempts: message.attempt + 1,
            worker: None,
            queue: Some(message.queue.clone()),
            fire_id: message.fire_id.clone(),
            started_at: None,
            finished_at: Utc::now(),
            extra: Map::new(),
        }
    }

    /// Stores `bytes` as the output, lossily decoded as UTF-8 and cut to at most `limit` bytes
    /// (at a character boundary) with a note saying how much was dropped.
    pub fn set_output(&mut self, bytes: &[u8], limit: usize) {
        self.output = Some(bounded_text(bytes, limit));
    }
}

/// `bytes` as text, at most `limit` bytes of it (cut at a character boundary), followed by a
/// note when something was cut.
pub fn bounded_text(bytes: &[u8], limit: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.len() <= limit {
        return text.into_owned();
    }
    let mut cut = limit;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}\n[... {} bytes truncated]",
        &text[..cut],
        text.len() - cut
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn message_round_trips_and_omits_empty_optionals() {
        let m = TaskMessage::new("cleanup", "default")
            .with_priority(7)
            .with_args(json!({"days": 7}));
        let body = m.to_json();
        let text = std::str::from_utf8(&body).unwrap();
        assert!(!text.contains("fire_id"), "{text}");
        assert!(!text.contains("eta"), "{text}");
        assert_eq!(TaskMessage::from_json(&body).unwrap(), m);
    }

    #[test]
    fn message_ignores_unknown_fields_and_defaults_missing_ones() {
        let m = TaskMessage::from_json(
            br#"{"id":"x","task":"t","queue":"q","enqueued_at":"2025-01-01T00:00:00Z","new_field":1}"#,
        )
        .unwrap();
        assert_eq!(m.priority, DEFAULT_PRIORITY);
        assert_eq!(m.attempt, 0);
        assert_eq!(m.args, Value::Null);
    }

    #[test]
    fn result_keeps_unknown_fields_and_unknown_status() {
        let r: TaskResult = serde_json::from_value(json!({
            "id": "x", "task": "t", "status": "quarantined",
            "finished_at": "2025-01-01T00:00:00Z", "cpu_ms": 12
        }))
        .unwrap();
        assert_eq!(r.status, TaskStatus::Unknown);
        assert_eq!(r.extra.get("cpu_ms"), Some(&json!(12)));
        let back = serde_json::to_value(&r).unwrap();
        assert_eq!(back["cpu_ms"], json!(12));
    }

    #[test]
    fn bounded_text_cuts_at_char_boundary_and_says_so() {
        assert_eq!(bounded_text(b"short", 10), "short");
        let cut = bounded_text("ééééé".as_bytes(), 3);
        assert!(cut.starts_with("é\n[... 8 bytes truncated]"), "{cut}");
    }
}
