//! Running one reserved message: decide whether it may run at all (decodes, known task,
//! not expired, not redelivered too often), run it, and describe the outcome. No broker
//! calls here: the worker loop turns the outcome into ack / retry / dead-letter / release.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::command::{self, Captured, CommandSpec, Termination};
use super::handler::{TaskContext, TaskFailure};
use super::{Shared, builtin};
use crate::broker::{Delivery, TaskMessage, TaskResult, TaskStatus};
use crate::config::TaskKind;

/// A message redelivered this many times beyond its retries (its lease kept expiring: the
/// worker running it died each time) is dead-lettered instead of being started again.
pub const MAX_EXTRA_DELIVERIES: u32 = 5;

/// What happened to one delivery.
#[derive(Debug)]
pub enum Outcome {
    /// Ran and succeeded.
    Succeeded(TaskResult),
    /// Ran and failed. `retry_in` is set when the retry policy allows another attempt.
    Failed {
        result: TaskResult,
        reason: String,
        retry_in: Option<Duration>,
    },
    /// Not started: its `expires` instant had passed.
    Expired(TaskResult),
    /// Cannot ever run (undecodable, unknown task, missing argument, redelivered too often).
    Rejected {
        reason: String,
        result: Option<TaskResult>,
    },
    /// Stopped because the worker is shutting down: goes back to the queue unchanged.
    Cancelled,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Succeeded(_) => "succeeded",
            Outcome::Failed {
                retry_in: Some(_), ..
            } => "retrying",
            Outcome::Failed { .. } => "failed",
            Outcome::Expired(_) => "expired",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Cancelled => "cancelled",
        }
    }
}

fn rejected(message: Option<&TaskMessage>, reason: String, worker: &str) -> Outcome {
    let result = message.map(|m| {
        let mut r = TaskResult::for_message(m, TaskStatus::DeadLettered);
        r.error = Some(reason.clone());
        r.worker = Some(worker.to_string());
        r
    });
    Outcome::Rejected { reason, result }
}

/// Runs one delivery to its outcome. `cancel` is cancelled when the worker stops waiting
/// (shutdown grace exhausted).
pub async fn execute(shared: &Shared, delivery: &Delivery, cancel: &CancellationToken) -> Outcome {
    let worker = shared.options.worker_id.as_str();
    let message = match &delivery.payload {
        Ok(m) => m,
        Err(bad) => {
            return rejected(None, format!("undecodable message: {}", bad.error), worker);
        }
    };
    // Messages of `protocol: celery` queues come from Celery clients, which cannot sign.
    if let Some(key) = &shared.options.signing
        && !shared
            .config
            .queues
            .get(&message.queue)
            .is_some_and(|q| q.is_celery())
        && let Err(e) = key.verify(message)
    {
        return rejected(Some(message), e.to_string(), worker);
    }
    let Some(task) = shared.config.tasks.get(&message.task) else {
        return rejected(
            Some(message),
            format!("unknown task `{}`", message.task),
            worker,
        );
    };
    if delivery.attempt > task.retry.max + MAX_EXTRA_DELIVERIES {
        return rejected(
            Some(message),
            format!(
                "delivered {} times without completing (each time its lease expired: the \
                 worker running it died or hung)",
                delivery.attempt + 1
            ),
            worker,
        );
    }
    let started_at = Utc::now();
    if message.is_expired_at(started_at) {
        let mut r = TaskResult::for_message(message, TaskStatus::Expired);
        r.worker = Some(worker.to_string());
        r.error = message
            .expires
            .map(|e| format!("expired at {} before it could start", e.to_rfc3339()));
        return Outcome::Expired(r);
    }

    let mut result = TaskResult::for_message(message, TaskStatus::Success);
    result.worker = Some(worker.to_string());
    result.started_at = Some(started_at);
    let ctx = TaskContext {
        id: message.id.clone(),
        task: message.task.clone(),
        args: message.args.clone(),
        kwargs: message.kwargs.clone(),
        attempt: delivery.attempt,
        fire_id: message.fire_id.clone(),
        schedule: message.schedule.clone(),
        cancel: cancel.clone(),
    };

    // Ok(value) / Err(failure); a command also fills exit code and output.
    let ran: Result<Value, TaskFailure> = match &task.kind {
        TaskKind::Builtin(b) => {
            with_timeout(task.timeout, cancel, builtin::run(*b, &ctx, cancel)).await
        }
        TaskKind::Handler(name) => match shared.handlers.get(name) {
            None => {
                return rejected(
                    Some(message),
                    format!("no handler registered for `{name}` in this worker"),
                    worker,
                );
            }
            Some(f) => with_timeout(task.timeout, cancel, f(ctx.clone())).await,
        },
        TaskKind::Command { argv } => {
            let argv = match command::render_argv(argv, &message.args) {
                Ok(a) => a,
                Err(e) => return rejected(Some(message), e.to_string(), worker),
            };
            let spec = CommandSpec {
                argv,
                stdin_json: json!({"args": message.args, "kwargs": message.kwargs}),
                env: command_env(message, delivery.attempt),
                timeout: task.timeout,
                output_limit: shared.options.output_limit,
            };
            match command::run(&spec, cancel).await {
                Err(e) => Err(TaskFailure::new(e.to_string())),
                Ok(out) => {
                    result.output = Some(command_output(
                        &out.stdout,
                        &out.stderr,
                        shared.options.output_limit,
                    ));
                    match out.termination {
                        Termination::Exited(0) => {
                            result.exit_code = Some(0);
                            Ok(Value::Null)
                        }
                        Termination::Exited(code) => {
                            result.exit_code = Some(code);
                            Err(TaskFailure::new(format!("exited with status {code}")))
                        }
                        Termination::Signaled(sig) => {
                            Err(TaskFailure::new(format!("killed by signal {sig}")))
                        }
                        Termination::TimedOut => {
                            result.status = TaskStatus::Timeout;
                            Err(TaskFailure::new(format!(
                                "timed out after {}",
                                humantime::format_duration(task.timeout.unwrap_or_default())
                            )))
                        }
                        Termination::Cancelled => return Outcome::Cancelled,
                    }
                }
            }
        }
    };
    if cancel.is_cancelled() && ran.is_err() {
        return Outcome::Cancelled;
    }
    result.finished_at = Utc::now();
    match ran {
        Ok(value) => {
            if !value.is_null() {
                result.value = Some(value);
            }
            result.status = TaskStatus::Success;
            Outcome::Succeeded(result)
        }
        Err(failure) => {
            if result.status == TaskStatus::Success {
                result.status = TaskStatus::Failure;
            }
            result.error = Some(failure.message.clone());
            let retry_number = delivery.attempt + 1;
            let retry_in = (failure.retryable && delivery.attempt < task.retry.max)
                .then(|| jitter(task.retry.delay(retry_number)));
            if retry_in.is_some() {
                result.status = TaskStatus::Retrying;
            }
            Outcome::Failed {
                result,
                reason: failure.message,
                retry_in,
            }
        }
    }
}

/// Runs a future under the task's timeout, reporting the timeout as a failure.
async fn with_timeout<F>(
    timeout: Option<Duration>,
    cancel: &CancellationToken,
    fut: F,
) -> Result<Value, TaskFailure>
where
    F: std::future::Future<Output = Result<Value, TaskFailure>>,
{
    let limit = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = fut => r,
        _ = limit => Err(TaskFailure::new(format!(
            "timed out after {}",
            humantime::format_duration(timeout.unwrap_or_default())
        ))),
        _ = cancel.cancelled() => Err(TaskFailure::new("cancelled")),
    }
}

/// What a command's result keeps of its output: stdout then stderr, at most `limit` bytes.
/// When there was more, the head goes (the end of a run is where its errors are) and a first
/// line says how much was dropped.
fn command_output(stdout: &Captured, stderr: &Captured, limit: usize) -> String {
    let mut text = stdout.text.clone();
    if !stderr.text.is_empty() {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&stderr.text);
    }
    let mut start = text.len().saturating_sub(limit);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    if start == 0 && !stdout.truncated() && !stderr.truncated() {
        return text;
    }
    let kept = &text[start..];
    let dropped = (stdout.total_bytes + stderr.total_bytes).saturating_sub(kept.len() as u64);
    format!("[... {dropped} bytes of output dropped]\n{kept}")
}

/// Retry waits get ±20 % jitter so that a burst of failures does not retry in lockstep.
fn jitter(d: Duration) -> Duration {
    let factor = rand::random_range(0.8..=1.2);
    d.mul_f64(factor)
}

/// The `CELERIAC_*` variables a command task sees.
pub fn command_env(message: &TaskMessage, attempt: u32) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("CELERIAC_TASK_ID".into(), message.id.clone());
    env.insert("CELERIAC_TASK".into(), message.task.clone());
    env.insert("CELERIAC_QUEUE".into(), message.queue.clone());
    env.insert("CELERIAC_ATTEMPT".into(), attempt.to_string());
    env.insert("CELERIAC_ARGS".into(), message.args.to_string());
    if let Some(k) = &message.kwargs {
        env.insert(
            "CELERIAC_KWARGS".into(),
            Value::Object(k.clone()).to_string(),
        );
    }
    if let Some(f) = &message.fire_id {
        env.insert("CELERIAC_FIRE_ID".into(), f.clone());
    }
    if let Some(s) = &message.schedule {
        env.insert("CELERIAC_SCHEDULE".into(), s.clone());
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(text: &str, total: u64) -> Captured {
        Captured {
            text: text.to_string(),
            total_bytes: total,
        }
    }

    #[test]
    fn command_output_is_stdout_then_stderr() {
        assert_eq!(
            command_output(&captured("out", 3), &captured("err\n", 4), 100),
            "out\nerr\n"
        );
        assert_eq!(command_output(&captured("", 0), &captured("", 0), 100), "");
    }

    #[test]
    fn command_output_keeps_the_end_where_the_error_is() {
        let stdout = "x".repeat(90) + "\n";
        let out = command_output(&captured(&stdout, 91), &captured("boom\n", 5), 20);
        assert_eq!(
            out,
            format!(
                "[... 76 bytes of output dropped]\n{}\nboom\n",
                "x".repeat(14)
            )
        );
        // The capture already dropped the head of a long stream: said too.
        let out = command_output(&captured("tail\n", 1000), &captured("", 0), 100);
        assert_eq!(out, "[... 995 bytes of output dropped]\ntail\n");
        // Never cut inside a character.
        let out = command_output(&captured("ééé", 6), &captured("", 0), 3);
        assert_eq!(out, "[... 4 bytes of output dropped]\né");
    }
}
