//! The validated configuration: plain Rust values that beat, worker and broker use.
//!
//! Everything here has already been checked (names resolve, cron expressions parse, zones
//! exist), so users of these types do not validate again. Each named item keeps the
//! [`Location`] of its definition for messages such as "schedule `x` (at a.yaml:12:3)".

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use chrono_tz::Tz;

use super::error::Location;
use crate::schedule::Timing;

/// The name of the queue that always exists.
pub const DEFAULT_QUEUE: &str = "default";

/// A whole configuration (one file, or a directory of files merged).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Default zone for schedules that do not name one (default UTC).
    pub timezone: Tz,
    /// Broker URL (`redis://...`, `rediss://...`, `unix://...`) or `memory`; `None` when
    /// the configuration does not say (the command line or environment decides).
    pub broker: Option<String>,
    /// How long task results are kept (default 1 day).
    pub result_expires: Duration,
    /// HMAC key file: when set, enqueuers sign messages and workers refuse unsigned or badly
    /// signed ones (relative paths are relative to the file that sets it).
    pub signing_key_file: Option<PathBuf>,
    /// Declared queues, always including [`DEFAULT_QUEUE`].
    pub queues: BTreeMap<String, QueueConfig>,
    pub tasks: BTreeMap<String, TaskConfig>,
    /// Shared (`Arc`) so that the beat keeps no second copy of 100,000s of schedules.
    pub schedules: BTreeMap<String, std::sync::Arc<ScheduleConfig>>,
    /// The files that were loaded, in load order.
    pub sources: Vec<PathBuf>,
}

impl Config {
    /// Default for `result_expires`.
    pub const DEFAULT_RESULT_EXPIRES: Duration = Duration::from_secs(24 * 60 * 60);

    /// A one-line summary for `celeriac check` and systemd's STATUS=, e.g.
    /// `3 schedules, 2 tasks, 2 queues`.
    pub fn summary(&self) -> String {
        fn count(n: usize, what: &str) -> String {
            if n == 1 {
                format!("1 {what}")
            } else {
                format!("{n} {what}s")
            }
        }
        format!(
            "{}, {}, {}",
            count(self.schedules.len(), "schedule"),
            count(self.tasks.len(), "task"),
            count(self.queues.len(), "queue")
        )
    }

    /// The task a schedule runs (always present: validation checked the reference).
    pub fn task_of(&self, schedule: &ScheduleConfig) -> Option<&TaskConfig> {
        self.tasks.get(&schedule.task)
    }

    /// The `protocol: celery` settings of the queue a schedule sends to, if it is one (then
    /// the schedule's `task` is a Celery task name, not necessarily one of [`Config::tasks`]).
    pub fn celery_queue_of(&self, schedule: &ScheduleConfig) -> Option<&CeleryQueue> {
        self.queues.get(&schedule.queue)?.celery.as_ref()
    }

    /// The task that runs a Celery task name arriving on a `protocol: celery` queue: the task
    /// that lists it in `celery_name`, else the task of that name.
    pub fn task_for_celery_name(&self, celery_name: &str) -> Option<&TaskConfig> {
        self.tasks
            .values()
            .find(|t| t.celery_names.iter().any(|n| n == celery_name))
            .or_else(|| self.tasks.get(celery_name))
    }
}

impl Default for Config {
    /// An empty configuration: UTC, no broker, results kept 1 day, only the default queue.
    fn default() -> Self {
        let mut queues = BTreeMap::new();
        queues.insert(
            DEFAULT_QUEUE.to_string(),
            QueueConfig {
                name: DEFAULT_QUEUE.to_string(),
                loc: None,
                celery: None,
            },
        );
        Config {
            timezone: Tz::UTC,
            broker: None,
            result_expires: Config::DEFAULT_RESULT_EXPIRES,
            signing_key_file: None,
            queues,
            tasks: BTreeMap::new(),
            schedules: BTreeMap::new(),
            sources: Vec::new(),
        }
    }
}

/// A named queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    pub name: String,
    /// Where it is declared; `None` for the implicit `default` queue.
    pub loc: Option<Location>,
    /// `protocol: celery`: the queue is a kombu queue of a Celery app (see
    /// `docs/migrating-from-celery.md`); `None` for a celeriac queue.
    pub celery: Option<CeleryQueue>,
}

impl QueueConfig {
    /// True for a `protocol: celery` queue.
    pub fn is_celery(&self) -> bool {
        self.celery.is_some()
    }
}

/// Where a `protocol: celery` queue lives: the Celery app's broker and result backend, and
/// the kombu settings that decide the Redis key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CeleryQueue {
    /// The Celery app's broker URL (`redis://host:port/db`, ...): where kombu's lists are.
    pub broker: String,
    /// The Celery app's result backend URL; `None`: results are not stored (like a Celery
    /// app without a backend).
    pub backend: Option<String>,
    /// The kombu queue name (default: the queue's own name).
    pub name: String,
    /// kombu's `priority_steps` transport option: ascending, starting with 0
    /// (default `[0, 3, 6, 9]`).
    pub priority_steps: Vec<u8>,
    /// kombu's `global_keyprefix` transport option (default empty).
    pub key_prefix: String,
}

impl CeleryQueue {
    /// kombu's default `priority_steps`.
    pub const DEFAULT_PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];
}

/// Something a worker can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskConfig {
    pub name: String,
    pub kind: TaskKind,
    /// Kill the run after this long (`None`: no limit).
    pub timeout: Option<Duration>,
    pub retry: RetryPolicy,
    /// Do not store the result (Celery's `ignore_result`): saves a write per task.
    pub ignore_result: bool,
    /// Celery task names (`local.tasks.cal`) that run this task when they arrive on a
    /// `protocol: celery` queue (`celery_name:`); a Celery name equal to the task's own name
    /// needs no entry.
    pub celery_names: Vec<String>,
    pub loc: Location,
}

/// How a task runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskKind {
    /// A program run directly (never through a shell). Arguments may contain `{{name}}`
    /// placeholders, filled from the schedule's `args` by the worker; validation checks
    /// that every schedule of the task provides them.
    Command { argv: Vec<String> },
    /// A task built into celeriac.
    Builtin(Builtin),
    /// An in-process Rust function registered under this name through the library
    /// (`worker::Handlers::register`), the Rust equivalent of Celery's `@app.task`.
    Handler(String),
}

/// Tasks built into celeriac, for trying things out and for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Builtin {
    /// Does nothing and succeeds.
    Noop,
    /// Sleeps, then succeeds.
    Sleep,
    /// Returns its arguments as the result.
    Echo,
    /// Always fails (to exercise retries and dead-lettering).
    Fail,
}

impl Builtin {
    pub const ALL: [Builtin; 4] = [Builtin::Noop, Builtin::Sleep, Builtin::Echo, Builtin::Fail];

    pub fn name(self) -> &'static str {
        match self {
            Builtin::Noop => "noop",
            Builtin::Sleep => "sleep",
            Builtin::Echo => "echo",
            Builtin::Fail => "fail",
        }
    }

    pub fn from_name(name: &str) -> Option<Builtin> {
        Builtin::ALL.into_iter().find(|b| b.name() == name)
    }
}

impl fmt::Display for Builtin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a failed run is retried: up to `max` more attempts, waiting `backoff`, doubled after
/// each failure, at most `max_backoff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (default 0: no retry).
    pub max: u32,
    /// Wait before the first retry (default 1s).
    pub backoff: Duration,
    /// Upper bound of the wait (default 5m).
    pub max_backoff: Duration,
}

impl RetryPolicy {
    pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
    pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);

    /// The wait before retry number `retry` (1-based): `backoff * 2^(retry-1)`, capped at
    /// `max_backoff`. (Jitter is the worker's business.)
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1));
        self.backoff
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.max_backoff)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max: 0,
            backoff: RetryPolicy::DEFAULT_BACKOFF,
            max_backoff: RetryPolicy::DEFAULT_MAX_BACKOFF,
        }
    }
}

/// When and how a task is run periodically.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleConfig {
    pub name: String,
    /// Name of the task to run (a key of [`Config::tasks`]).
    pub task: String,
    pub timing: Timing,
    /// The schedule's own zone, or the configuration's default.
    pub timezone: Tz,
    /// Arguments for the task: a JSON object (from a mapping; the default is `{}`) or a
    /// JSON array (from a list).
    pub args: serde_json::Value,
    /// Keyword arguments, for Celery-style tasks that take both.
    pub kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    /// Queue the runs are sent to (default `default`).
    pub queue: String,
    /// 0..=9, higher runs first (default 5).
    pub priority: u8,
    pub misfire: MisfirePolicy,
    pub overlap: Overlap,
    pub expires: Expires,
    /// A disabled schedule is loaded and validated but never fires.
    pub enabled: bool,
    pub loc: Location,
}

impl ScheduleConfig {
    pub const DEFAULT_PRIORITY: u8 = 5;
    pub const MAX_PRIORITY: u8 = 9;

    /// Compares everything but locations: what a reload uses to tell whether a schedule
    /// changed (moving it within a file does not change it).
    pub fn same_settings(&self, other: &ScheduleConfig) -> bool {
        ScheduleConfig {
            loc: other.loc.clone(),
            ..self.clone()
        } == *other
    }
}

/// What to do about ticks that could not fire on time (beat down, leader change, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MisfirePolicy {
    /// How late a tick may still fire; `None` means one period of the schedule.
    pub grace: Option<Duration>,
    /// What to do with ticks missed by more than `grace` (default `latest`).
    pub catch_up: CatchUp,
    /// For `catch_up: all`: fire at most this many missed ticks (the most recent ones;
    /// default 100).
    pub max: u32,
}

impl MisfirePolicy {
    pub const DEFAULT_MAX: u32 = 100;
}

impl Default for MisfirePolicy {
    fn default() -> Self {
        MisfirePolicy {
            grace: None,
            catch_up: CatchUp::Latest,
            max: MisfirePolicy::DEFAULT_MAX,
        }
    }
}

/// Which missed ticks are fired late.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CatchUp {
    /// None: missed ticks are skipped (cron's behaviour).
    None,
    /// Only the most recent missed tick (Celery beat's and systemd `Persistent=`'s).
    Latest,
    /// All of them, oldest first, at most [`MisfirePolicy::max`].
    All,
}

impl CatchUp {
    pub const ALL: [CatchUp; 3] = [CatchUp::None, CatchUp::Latest, CatchUp::All];

    pub fn name(self) -> &'static str {
        match self {
            CatchUp::None => "none",
            CatchUp::Latest => "latest",
            CatchUp::All => "all",
        }
    }
}

/// Whether a tick fires while the previous run of the same schedule is still active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Overlap {
    #[default]
    Allow,
    /// Skip the tick (the skip is journaled).
    Skip,
}

impl Overlap {
    pub const ALL: [Overlap; 2] = [Overlap::Allow, Overlap::Skip];

    pub fn name(self) -> &'static str {
        match self {
            Overlap::Allow => "allow",
            Overlap::Skip => "skip",
        }
    }
}

/// When a queued run that has not started yet is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Expires {
    /// At the schedule's next tick (a newer run supersedes it).
    #[default]
    Auto,
    /// Never.
    Never,
    /// This long after its nominal fire time.
    After(Duration),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_with_plurals() {
        let config = Config::default();
        assert_eq!(config.summary(), "0 schedules, 0 tasks, 1 queue");
    }

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        let policy = RetryPolicy {
            max: 10,
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(60),
        };
        let delays: Vec<u64> = (1..=5).map(|n| policy.delay(n).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 60, 60]);
        assert_eq!(policy.delay(200), Duration::from_secs(60));
    }
}
