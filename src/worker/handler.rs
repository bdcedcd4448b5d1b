//! In-process task handlers: the Rust equivalent of Celery's `@app.task`.
//!
//! A program that embeds celeriac registers async functions by name; a task declared with
//! `handler: NAME` in the configuration runs the function registered under `NAME`.
//!
//! ```
//! use celeriac::worker::{Handlers, TaskContext, TaskFailure};
//! let mut handlers = Handlers::new();
//! handlers.register("add", |ctx: TaskContext| async move {
//!     let a = ctx.args["a"].as_i64().ok_or_else(|| TaskFailure::new("a is not a number"))?;
//!     let b = ctx.args["b"].as_i64().ok_or_else(|| TaskFailure::new("b is not a number"))?;
//!     Ok(serde_json::json!(a + b))
//! });
//! assert!(handlers.contains("add"));
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

/// What a handler gets: the message's arguments and identity, and a token that is cancelled
/// when the worker gives up waiting for it (shutdown grace ran out, or timeout).
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub id: String,
    pub task: String,
    pub args: Value,
    pub kwargs: Option<Map<String, Value>>,
    /// 0 on the first delivery.
    pub attempt: u32,
    /// `schedule@nominal-instant` when the beat sent it: use it to de-duplicate redeliveries.
    pub fire_id: Option<String>,
    pub schedule: Option<String>,
    pub cancel: CancellationToken,
}

/// A failed run. `retryable: false` skips the remaining retries (dead-letters at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure {
    pub message: String,
    pub retryable: bool,
}

impl TaskFailure {
    /// A failure that the task's retry policy may retry.
    pub fn new(message: impl Into<String>) -> Self {
        TaskFailure {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        TaskFailure {
            message: message.into(),
            retryable: false,
        }
    }
}

impl std::fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Value, TaskFailure>> + Send + 'static>>;
type HandlerFn = Arc<dyn Fn(TaskContext) -> BoxFuture + Send + Sync + 'static>;

/// Registered handlers by name.
#[derive(Clone, Default)]
pub struct Handlers {
    map: HashMap<String, HandlerFn>,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.map.keys().collect();
        names.sort();
        f.debug_struct("Handlers").field("names", &names).finish()
    }
}

impl Handlers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `f` under `name`, replacing an earlier registration.
    pub fn register<F, Fut>(&mut self, name: impl Into<String>, f: F) -> &mut Self
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, TaskFailure>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.map.insert(
            name.into(),
            Arc::new(move |ctx| {
                let f = f.clone();
                Box::pin(async move { f(ctx).await }) as BoxFuture
            }),
        );
        self
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    pub(crate) fn get(&self, name: &str) -> Option<HandlerFn> {
        self.map.get(name).cloned()
    }
}
