//! Tasks built into celeriac (`builtin: noop|sleep|echo|fail`): for trying celeriac out, for
//! tests, and for benchmarks that measure the dispatcher rather than the task.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::handler::{TaskContext, TaskFailure};
use crate::config::Builtin;

/// Longest sleep the `sleep` builtin accepts (a typo should not park a worker slot for days).
pub const MAX_SLEEP: Duration = Duration::from_secs(24 * 3600);

/// Runs a builtin. `Err` carries the failure; cancellation of a `sleep` is reported by the
/// caller, which sees the token cancelled.
pub async fn run(
    builtin: Builtin,
    ctx: &TaskContext,
    cancel: &CancellationToken,
) -> Result<Value, TaskFailure> {
    match builtin {
        Builtin::Noop => Ok(Value::Null),
        Builtin::Echo => {
            tracing::info!(task = %ctx.task, id = %ctx.id, args = %ctx.args, "echo");
            Ok(match &ctx.kwargs {
                Some(kwargs) => json!({"args": ctx.args, "kwargs": kwargs}),
                None => ctx.args.clone(),
            })
        }
        Builtin::Fail => {
            let message = ctx
                .args
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the `fail` builtin always fails");
            Err(TaskFailure::new(message))
        }
        Builtin::Sleep => {
            let secs = sleep_seconds(&ctx.args)?;
            let d = Duration::try_from_secs_f64(secs)
                .map_err(|_| TaskFailure::permanent(format!("invalid sleep duration {secs}")))?;
            if d > MAX_SLEEP {
                return Err(TaskFailure::permanent(format!(
                    "sleep of {secs}s is longer than the {}s maximum",
                    MAX_SLEEP.as_secs()
                )));
            }
            tokio::select! {
                _ = tokio::time::sleep(d) => Ok(json!({"slept": secs})),
                _ = cancel.cancelled() => Err(TaskFailure::new("cancelled")),
            }
        }
    }
}

/// `{seconds: 1.5}`, `[1.5]` or `1.5`; default 1 s.
fn sleep_seconds(args: &Value) -> Result<f64, TaskFailure> {
    let v = match args {
        Value::Object(m) => m.get("seconds"),
        Value::Array(a) => a.first(),
        Value::Null => None,
        other => Some(other),
    };
    match v {
        None | Some(Value::Null) => Ok(1.0),
        Some(v) => v.as_f64().filter(|s| *s >= 0.0).ok_or_else(|| {
            TaskFailure::permanent(format!("`seconds` must be a number >= 0, got {v}"))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(args: Value) -> TaskContext {
        TaskContext {
            id: "id".into(),
            task: "t".into(),
            args,
            kwargs: None,
            attempt: 0,
            fire_id: None,
            schedule: None,
            cancel: CancellationToken::new(),
        }
    }

    #[tokio::test]
    async fn echo_returns_its_arguments() {
        let c = ctx(json!({"a": 1}));
        assert_eq!(
            run(Builtin::Echo, &c, &c.cancel).await.unwrap(),
            json!({"a": 1})
        );
    }

    #[tokio::test]
    async fn fail_fails_with_the_given_message() {
        let c = ctx(json!({"message": "boom"}));
        assert_eq!(
            run(Builtin::Fail, &c, &c.cancel).await.unwrap_err(),
            TaskFailure::new("boom")
        );
    }

    #[tokio::test]
    async fn sleep_takes_seconds_in_several_forms_and_rejects_nonsense() {
        for args in [json!({"seconds": 0.01}), json!([0.01]), json!(0.01)] {
            let c = ctx(args);
            assert!(run(Builtin::Sleep, &c, &c.cancel).await.is_ok());
        }
        for args in [
            json!({"seconds": -1}),
            json!({"seconds": "x"}),
            json!({"seconds": 1e12}),
        ] {
            let c = ctx(args);
            let err = run(Builtin::Sleep, &c, &c.cancel).await.unwrap_err();
            assert!(!err.retryable, "{err:?}");
        }
    }

    #[tokio::test]
    async fn sleep_stops_when_cancelled() {
        let c = ctx(json!({"seconds": 60}));
        let cancel = c.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            cancel.cancel();
        });
        let started = std::time::Instant::now();
        assert!(run(Builtin::Sleep, &c, &c.cancel).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
