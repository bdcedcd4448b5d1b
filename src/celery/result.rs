//! Results in Celery's Redis result-backend format, so that `AsyncResult(id).get()` in
//! Python returns what a celeriac worker computed.
//!
//! Key `celery-task-meta-<id>`, value JSON:
//! `{"status": "SUCCESS", "result": 5, "traceback": null, "children": [],
//!   "date_done": "2025-01-01T00:00:00.000000+00:00", "task_id": "<id>"}`,
//! stored with a TTL (celeriac's `result_expires`) and PUBLISHed on the key's channel, as
//! Celery's Redis backend does (its `get()` waits on that channel).
//!
//! | celeriac status | Celery state | `result` (what `get()` returns or raises) |
//! |---|---|---|
//! | success | SUCCESS | the task's value; for a command, its output parsed as JSON, else the text |
//! | failure | FAILURE | `RuntimeError(error)` |
//! | timeout | FAILURE | `celery.exceptions.TimeLimitExceeded(error)` |
//! | dead-lettered, unknown task | FAILURE | `celery.exceptions.NotRegistered(task name)` |
//! | dead-lettered, other reasons | FAILURE | `RuntimeError(reason)` |
//! | expired | REVOKED | `celery.exceptions.TaskRevokedError(reason)` |
//! | retrying | RETRY | `RuntimeError(error)` (not ready: `get()` keeps waiting) |

use chrono::Utc;
use serde_json::{Map, Value, json};

use super::protocol::{format_iso8601, parse_iso8601};
use crate::broker::{TaskResult, TaskStatus};

/// Celery's result key prefix.
pub const TASK_KEY_PREFIX: &str = "celery-task-meta-";

/// The result key of a task id.
pub fn result_key(key_prefix: &str, task_id: &str) -> String {
    format!("{key_prefix}{TASK_KEY_PREFIX}{task_id}")
}

/// Celery's meta for a result. `registered`: whether the task name is one this worker
/// knows (a dead letter of an unknown task becomes `NotRegistered`).
pub fn celery_meta(result: &TaskResult, registered: bool) -> Value {
    let error = result.error.clone().unwrap_or_default();
    let exception = |module: &str, kind: &str, message: &str| json!({"exc_type": kind, "exc_message": [message], "exc_module": module});
    let (state, value, traceback) = match result.status {
        TaskStatus::Success => ("SUCCESS", success_value(result), Value::Null),
        TaskStatus::Timeout => (
            "FAILURE",
            exception("celery.exceptions", "TimeLimitExceeded", &error),
            traceback(result),
        ),
        TaskStatus::DeadLettered if !registered => (
            "FAILURE",
            exception("celery.exceptions", "NotRegistered", &result.task),
            traceback(result),
        ),
        TaskStatus::Expired => (
            "REVOKED",
            exception("celery.exceptions", "TaskRevokedError", &error),
            Value::Null,
        ),
        TaskStatus::Retrying => (
            "RETRY",
            exception("builtins", "RuntimeError", &error),
            traceback(result),
        ),
        _ => (
            "FAILURE",
            exception("builtins", "RuntimeError", &error),
            traceback(result),
        ),
    };
    let date_done = if result.status == TaskStatus::Retrying {
        Value::Null
    } else {
        Value::String(format_iso8601(result.finished_at))
    };
    json!({
        "status": state,
        "result": value,
        "traceback": traceback,
        "children": [],
        "date_done": date_done,
        "task_id": result.id,
    })
}

/// What `get()` returns for a success.
fn success_value(result: &TaskResult) -> Value {
    if let Some(v) = &result.value {
        return v.clone();
    }
    match &result.output {
        Some(text) => {
            serde_json::from_str(text.trim()).unwrap_or_else(|_| Value::String(text.clone()))
        }
        None => Value::Null,
    }
}

/// The "traceback" of a failure: what went wrong and the command's output, if any.
fn traceback(result: &TaskResult) -> Value {
    let mut text = format!(
        "celeriac task `{}` failed on attempt {}: {}",
        result.task,
        result.attempts,
        result.error.as_deref().unwrap_or("unknown error")
    );
    if let Some(code) = result.exit_code {
        text.push_str(&format!("\nexit status {code}"));
    }
    if let Some(out) = result.output.as_deref().filter(|o| !o.is_empty()) {
        text.push_str("\noutput:\n");
        text.push_str(out);
    }
    Value::String(text)
}

/// A result read back from Celery's format (for `celeriac result` and `enqueue --wait` on
/// a `protocol: celery` queue; also reads results that Python workers wrote).
pub fn from_celery_meta(id: &str, meta: &Value) -> Option<TaskResult> {
    let state = meta.get("status")?.as_str()?;
    let result = meta.get("result").cloned().unwrap_or(Value::Null);
    let status = match state {
        "SUCCESS" => TaskStatus::Success,
        "FAILURE" => match result.get("exc_type").and_then(Value::as_str) {
            Some("TimeLimitExceeded") => TaskStatus::Timeout,
            Some("NotRegistered") => TaskStatus::DeadLettered,
            _ => TaskStatus::Failure,
        },
        "REVOKED" => TaskStatus::Expired,
        "RETRY" => TaskStatus::Retrying,
        // PENDING, STARTED, RECEIVED and custom states: not finished.
        _ => TaskStatus::Retrying,
    };
    let error = (status != TaskStatus::Success).then(|| {
        let kind = result
            .get("exc_type")
            .and_then(Value::as_str)
            .unwrap_or(state);
        let message = match result.get("exc_message") {
            Some(Value::Array(a)) if a.len() == 1 => a[0]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| a[0].to_string()),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        };
        format!("{kind}: {message}")
    });
    let mut extra = Map::new();
    extra.insert("celery_state".into(), Value::String(state.to_string()));
    if let Some(tb) = meta.get("traceback").filter(|t| !t.is_null()) {
        extra.insert("traceback".into(), tb.clone());
    }
    Some(TaskResult {
        id: id.to_string(),
        task: meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        status,
        value: (status == TaskStatus::Success && !result.is_null()).then_some(result),
        exit_code: None,
        output: None,
        error,
        attempts: 0,
        worker: meta
            .get("worker")
            .and_then(Value::as_str)
            .map(str::to_string),
        queue: meta
            .get("queue")
            .and_then(Value::as_str)
            .map(str::to_string),
        fire_id: None,
        started_at: None,
        finished_at: meta
            .get("date_done")
            .and_then(Value::as_str)
            .and_then(parse_iso8601)
            .unwrap_or_else(Utc::now),
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::TaskMessage;

    fn result(status: TaskStatus) -> TaskResult {
        let m = TaskMessage::new("cal", "celery");
        TaskResult::for_message(&m, status)
    }

    #[test]
    fn success_meta_has_celerys_fields() {
        let mut r = result(TaskStatus::Success);
        r.value = Some(json!(5));
        let meta = celery_meta(&r, true);
        assert_eq!(meta["status"], "SUCCESS");
        assert_eq!(meta["result"], 5);
        assert_eq!(meta["children"], json!([]));
        assert_eq!(meta["task_id"], json!(r.id));
        assert!(meta["date_done"].as_str().unwrap().ends_with("+00:00"));
        let back = from_celery_meta(&r.id, &meta).unwrap();
        assert_eq!(back.status, TaskStatus::Success);
        assert_eq!(back.value, Some(json!(5)));
    }

    #[test]
    fn command_output_is_parsed_when_it_is_json() {
        let mut r = result(TaskStatus::Success);
        r.output = Some("5\n".into());
        assert_eq!(celery_meta(&r, true)["result"], 5);
        r.output = Some("five\n".into());
        assert_eq!(celery_meta(&r, true)["result"], "five\n");
    }

    #[test]
    fn failures_become_exceptions_python_can_rebuild() {
        let mut r = result(TaskStatus::Failure);
        r.error = Some("exited with status 3".into());
        let meta = celery_meta(&r, true);
        assert_eq!(meta["status"], "FAILURE");
        assert_eq!(
            meta["result"],
            json!({"exc_type": "RuntimeError", "exc_message": ["exited with status 3"], "exc_module": "builtins"})
        );
        let mut unknown = result(TaskStatus::DeadLettered);
        unknown.task = "data_handle.nope".into();
        let meta = celery_meta(&unknown, false);
        assert_eq!(meta["result"]["exc_type"], "NotRegistered");
        assert_eq!(meta["result"]["exc_message"], json!(["data_handle.nope"]));
        assert_eq!(
            celery_meta(&result(TaskStatus::Expired), true)["status"],
            "REVOKED"
        );
        let retry = celery_meta(&result(TaskStatus::Retrying), true);
        assert_eq!(
            (retry["status"].as_str(), retry["date_done"].is_null()),
            (Some("RETRY"), true)
        );
        let back = from_celery_meta("x", &meta).unwrap();
        assert_eq!(back.status, TaskStatus::DeadLettered);
        assert_eq!(
            back.error.as_deref(),
            Some("NotRegistered: data_handle.nope")
        );
    }
}
