//! Command-line types (clap derive). Parsing only: `main.rs` turns these into library calls.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// celeriac: cron and interval schedules from YAML, fired exactly once per tick,
/// dispatched to named priority queues and run by small, fast workers.
#[derive(Debug, Parser)]
#[command(name = "celeriac", version, about, long_about = None)]
pub struct Cli {
    /// Log filter, e.g. `info`, `celeriac=debug` (tracing EnvFilter syntax).
    #[arg(long, global = true, env = "CELERIAC_LOG", default_value = "info")]
    pub log: String,

    /// Log format: human-readable text or JSON lines.
    #[arg(long, global = true, env = "CELERIAC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Beat + worker in one process on the embedded in-memory broker (no Redis needed).
    Run(RunArgs),
    /// The beat daemon: leader election, exactly-once fire, hot reload.
    Beat(BeatArgs),
    /// A worker: consumes named queues and runs tasks.
    Worker(WorkerArgs),
    /// Validate the configuration; print every error as file:line:col: message.
    Check(ConfigArg),
    /// Print the next fire instants of a cron expression, an interval, or configured schedules.
    Next(NextArgs),
    /// Enqueue a task now (Celery's `.delay()`).
    Enqueue(EnqueueArgs),
    /// Print a stored task result.
    Result(ResultArgs),
    /// Remove every ready message from a queue.
    Purge(PurgeArgs),
    /// Beat leader, schedules, queues and workers at a glance.
    Status(OpsArgs),
    /// Fire a schedule now, outside its timing.
    Trigger(NameArgs),
    /// Pause a schedule (shared by all beats, survives restarts).
    Pause(NameArgs),
    /// Resume a paused schedule.
    Resume(NameArgs),
    /// Why a schedule fired, was skipped or misfired (the beat journal).
    Why(NameArgs),
    /// Workers alive, with their queues and counters (from their heartbeats).
    Workers(OpsArgs),
    /// List dead letters, or put them back on their queue.
    DeadLetters(DeadLettersArgs),
    /// Convert a JSON dump of a Celery `beat_schedule` into celeriac YAML
    /// (see docs/migrating-from-celery.md for the Python snippet that writes the dump).
    ImportCelery(ImportCeleryArgs),
}

#[derive(Debug, Args)]
pub struct ImportCeleryArgs {
    /// The JSON dump of the beat_schedule.
    pub dump: PathBuf,
    /// Write the YAML here instead of standard output.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// The `protocol: celery` queue the schedules send to when they name none.
    #[arg(long, default_value = "celery")]
    pub queue: String,
    /// The Celery app's broker URL (default: the dump's `broker_url`, else redis://127.0.0.1:6379/0).
    #[arg(long)]
    pub celery_broker: Option<String>,
    /// The Celery app's result backend URL (default: the dump's `result_backend`).
    #[arg(long)]
    pub celery_backend: Option<String>,
}

#[derive(Debug, Args)]
pub struct DeadLettersArgs {
    /// Queue (default: every configured queue).
    pub queue: Option<String>,
    #[command(flatten)]
    pub ops: OpsArgs,
    /// Put this dead letter (message id) back on its queue.
    #[arg(long, conflicts_with = "all", requires = "queue")]
    pub requeue: Option<String>,
    /// Put every dead letter of the queue back.
    #[arg(long, requires = "queue")]
    pub all: bool,
    /// How many to list per queue.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Configuration file, or directory of *.yaml files.
    #[arg(
        short = 'c',
        long = "config",
        env = "CELERIAC_CONFIG",
        default_value = "schedules"
    )]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct BrokerArg {
    /// Broker URL: redis://, rediss://, unix:// or "memory". Overrides the config's `broker`.
    /// ACL credentials go in the URL (redis://user:password@host:6379/0).
    #[arg(long, env = "CELERIAC_BROKER", hide_env_values = true)]
    pub broker: Option<String>,
    /// Read the broker URL from this file (e.g. a systemd credential: `%d/broker`), so the
    /// password is neither on the command line nor in the environment.
    #[arg(long, env = "CELERIAC_BROKER_FILE", conflicts_with = "broker")]
    pub broker_file: Option<PathBuf>,
    /// PEM file of CA certificates to trust for rediss:// (default: the web PKI roots).
    #[arg(long, env = "CELERIAC_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// Prefix of every Redis key, to share one Redis between several celeriac setups.
    #[arg(long, env = "CELERIAC_KEY_PREFIX", default_value = "celeriac:")]
    pub key_prefix: String,
}

#[derive(Debug, Args)]
pub struct MetricsArg {
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464).
    #[arg(long, env = "CELERIAC_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
pub struct RootArg {
    /// Allow running as root (also CELERIAC_ALLOW_ROOT=1). Not recommended.
    #[arg(long, env = "CELERIAC_ALLOW_ROOT", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false)]
    pub allow_root: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub metrics: MetricsArg,
    /// Number of tasks run concurrently.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
}

#[derive(Debug, Args)]
pub struct BeatArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub metrics: MetricsArg,
    #[command(flatten)]
    pub broker: BrokerArg,
    #[command(flatten)]
    pub root: RootArg,
    /// Leader lease: a standby takes over at most this long after the leader died.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub lease_ttl: Duration,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub metrics: MetricsArg,
    #[command(flatten)]
    pub broker: BrokerArg,
    #[command(flatten)]
    pub root: RootArg,
    /// Queues to consume, separated by commas or colons (default: all configured queues).
    #[arg(short = 'Q', long = "queues", value_delimiter = ',')]
    pub queues: Vec<String>,
    /// Lease of a reserved message: how soon a message comes back when its worker dies.
    /// Extended every third of it while the task runs.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub lease: Duration,
    /// Number of tasks run concurrently.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Exit 0 after this many tasks (Celery's max-tasks-per-child), so the supervisor restarts us.
    #[arg(long)]
    pub max_tasks: Option<u64>,
    /// On SIGTERM, how long running tasks may take to finish before they are returned to the queue.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub grace: Duration,
}

#[derive(Debug, Args)]
pub struct NextArgs {
    /// Configuration to read schedules from (when neither --cron nor --every is given).
    #[arg(short = 'c', long = "config", env = "CELERIAC_CONFIG", conflicts_with_all = ["cron", "every"])]
    pub config: Option<PathBuf>,
    /// Only this schedule (with -c).
    #[arg(conflicts_with_all = ["cron", "every"])]
    pub name: Option<String>,
    /// A cron expression, e.g. '30 2 * * *'.
    #[arg(long, conflicts_with = "every")]
    pub cron: Option<String>,
    /// Time zone for --cron (IANA name), and the zone instants are printed in. Default UTC.
    #[arg(long)]
    pub tz: Option<String>,
    /// An interval, e.g. 90s, 1h30m.
    #[arg(long, value_parser = parse_duration)]
    pub every: Option<Duration>,
    /// Grid anchor for --every (RFC 3339). Default: the Unix epoch.
    #[arg(long, requires = "every")]
    pub anchor: Option<String>,
    /// Print fires strictly after this instant (RFC 3339). Default: now.
    #[arg(long)]
    pub after: Option<String>,
    /// How many fire instants to print (per schedule with -c).
    #[arg(short = 'n', long, default_value_t = 5)]
    pub count: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Task name, as declared under `tasks:` (on a `protocol: celery` queue: a Celery task
    /// name such as data_handle.cal, run by Celery workers).
    pub task: String,
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub broker: BrokerArg,
    /// Task arguments as JSON (an object for templated commands; on a `protocol: celery`
    /// queue a list is Celery's positional args, an object its kwargs).
    #[arg(long, default_value = "{}")]
    pub args: String,
    /// Queue to enqueue on.
    #[arg(short = 'Q', long = "queue", default_value = "default")]
    pub queue: String,
    /// Priority 0..9, higher runs first.
    #[arg(long, default_value_t = 5)]
    pub priority: u8,
    /// Run no earlier than this long from now.
    #[arg(long, value_parser = parse_duration)]
    pub countdown: Option<Duration>,
    /// Wait for the result and print it.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct ResultArgs {
    /// Task id printed by `enqueue`.
    pub id: String,
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub broker: BrokerArg,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Queue to purge.
    pub queue: String,
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub broker: BrokerArg,
}

#[derive(Debug, Args)]
pub struct OpsArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub broker: BrokerArg,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    /// Schedule name.
    pub name: String,
    #[command(flatten)]
    pub ops: OpsArgs,
}

/// Parses a humantime duration (`90s`, `1h30m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration `{s}` ({e}); use a form like 90s, 5m or 1h30m"))
}
