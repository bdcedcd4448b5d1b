//! The `celeriac` binary: parse the command line, set up logging, call the library, and map
//! errors to exit codes (0 ok, 2 usage, 78 configuration error, 69 broker unavailable, 1 other).
//! anyhow lives only here.

mod cli;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::anyhow;
use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;
use clap::Parser;

use std::sync::Arc;
use std::time::Duration;

use celeriac::beat::memory_store::MemoryBeatStore;
use celeriac::beat::redis_store::RedisBeatStore;
use celeriac::beat::{Beat, BeatOptions, reload};
use std::collections::BTreeMap;

use celeriac::broker::{
    Broker, DeadSelector, MemoryBroker, RedisBroker, RedisBrokerOptions, TaskMessage, TaskStatus,
};
use celeriac::clock::SystemClock;
use celeriac::config::{self, ConfigErrors};
use celeriac::notify::Notifier;
use celeriac::schedule::{self, CronExpr, CronSchedule, IntervalSchedule, Timing};
use celeriac::signing::SigningKey;
use celeriac::worker::{Handlers, Worker, WorkerOptions};
use cli::{Cli, Command, LogFormat, NextArgs};
use tokio_util::sync::CancellationToken;

/// Exit codes (sysexits.h where one fits).
const EXIT_USAGE: u8 = 2;
const EXIT_UNAVAILABLE: u8 = 69;
const EXIT_CONFIG: u8 = 78;

/// An error that carries its own exit code and has already been worded for the user.
#[derive(Debug)]
struct Exit {
    code: u8,
    message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Exit {
        code: EXIT_USAGE,
        message: message.into(),
    })
}

fn unavailable(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Exit {
        code: EXIT_UNAVAILABLE,
        message: message.into(),
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// The worker's runtime: one thread. The CLI worker runs builtins and commands (separate
/// processes), so its own work is I/O: one thread does it with no cross-thread wake-ups,
/// which halves its CPU per task (see bench/RESULTS.md).
fn worker_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `beat` and `worker` refuse to run as root unless allowed (Celery's C_FORCE_ROOT);
/// `run` only warns.
fn check_root(command: &str, allow_root: bool, refuse: bool) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    if refuse && !allow_root {
        return Err(anyhow!(
            "refusing to run `celeriac {command}` as root: tasks would run with full privileges. \
             Run it as an unprivileged user, or pass --allow-root (or CELERIAC_ALLOW_ROOT=1) if you \
             really mean it"
        ));
    }
    tracing::warn!(
        "running as root: every task runs with full privileges; prefer an unprivileged user"
    );
    Ok(())
}

/// The broker URL: `--broker` / CELERIAC_BROKER, else the configuration's `broker`.
fn broker_url(arg: &cli::BrokerArg, cfg: &config::Config) -> anyhow::Result<String> {
    if let Some(path) = &arg.broker_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| usage(format!("cannot read --broker-file {}: {e}", path.display())))?;
        let url = text.trim().to_string();
        if url.is_empty() {
            return Err(usage(format!("--broker-file {} is empty", path.display())));
        }
        return Ok(url);
    }
    arg.broker
        .clone()
        .or_else(|| cfg.broker.clone())
        .ok_or_else(|| {
            usage("no broker: set `broker:` in the configuration, --broker or CELERIAC_BROKER")
        })
}

/// Opens the broker and checks that it answers; a broker that cannot be reached at start
/// exits 69 (EX_UNAVAILABLE) so that a supervisor retries later.
async fn open_broker(
    arg: &cli::BrokerArg,
    cfg: &config::Config,
    shared_only: bool,
) -> anyhow::Result<(Arc<dyn Broker>, String)> {
    let url = broker_url(arg, cfg)?;
    if shared_only && (url == "memory" || url == "memory://") {
        return Err(usage(
            "the `memory` broker lives inside one process: use `celeriac run` for beat + worker \
             in one process, or give a Redis URL with --broker",
        ));
    }
    let options = RedisBrokerOptions {
        prefix: arg.key_prefix.clone(),
        tls_ca_file: arg.tls_ca_file.clone(),
        ..RedisBrokerOptions::default()
    };
    let shown = celeriac::broker::redact(&url);
    let broker = match celeriac::broker::open(&url, options).await {
        Ok(b) => b,
        Err(e) if e.is_transient() => return Err(unavailable(format!("{e}"))),
        Err(e) => return Err(usage(format!("{e}"))),
    };
    if let Err(e) = broker.ping().await {
        return Err(if e.is_transient() {
            unavailable(format!("broker {shown} unavailable: {e}"))
        } else {
            anyhow!("broker {shown}: {e}")
        });
    }
    Ok((broker, shown))
}

fn split_queues(raw: &[String], cfg: &config::Config) -> Vec<String> {
    let mut queues: Vec<String> = raw
        .iter()
        .flat_map(|q| q.split([',', ':']))
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .map(str::to_string)
        .collect();
    if queues.is_empty() {
        queues = cfg.queues.keys().cloned().collect();
    }
    queues.dedup();
    queues
}

async fn cmd_worker(args: cli::WorkerArgs) -> anyhow::Result<()> {
    check_root("worker", args.root.allow_root, true)?;
    let cfg = Arc::new(load_config(&args.config.config)?);
    let queues = split_queues(&args.queues, &cfg);
    for q in &queues {
        if !cfg.queues.contains_key(q) {
            return Err(usage(format!(
                "queue `{q}` is not declared in {} (declared: {})",
                args.config.config.display(),
                cfg.queues.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let signals = celeriac::shutdown::listen()?;
    // `protocol: celery` queues are consumed through their Celery app's Redis, the others
    // through the celeriac broker (only needed when there are any).
    let (celery_queues, native): (Vec<String>, Vec<String>) = queues
        .into_iter()
        .partition(|q| cfg.queues.get(q).is_some_and(|c| c.is_celery()));
    let mut native = native;
    if args.queues.is_empty()
        && !celery_queues.is_empty()
        && broker_url(&args.broker, &cfg).is_err()
    {
        // Nothing named on the command line and no celeriac broker: a Celery-only setup.
        tracing::info!(
            "no celeriac broker configured: consuming only the `protocol: celery` queues"
        );
        native.clear();
    }
    let native_broker = if native.is_empty() {
        None
    } else {
        let broker = open_redis(&args.broker, &cfg).await?;
        tracing::info!(broker = %broker.url(), "connected");
        Some(broker)
    };
    let mut sources: Vec<(Arc<dyn Broker>, Vec<String>)> = Vec::new();
    if let Some(b) = &native_broker {
        sources.push((b.clone(), native));
    }
    sources.extend(open_celery(&cfg, &celery_queues).await?);
    if !celery_queues.is_empty() && signing_key(&cfg)?.is_some() {
        tracing::warn!(
            queues = %celery_queues.join(","),
            "message signing does not cover `protocol: celery` queues: Celery clients cannot sign"
        );
    }
    let all_queues: Vec<String> = sources.iter().flat_map(|(_, q)| q.clone()).collect();
    let queue_names = all_queues.clone();
    let mut sources = sources.into_iter();
    let (broker, queues) = sources.next().expect("at least one queue is consumed");
    let options = WorkerOptions {
        queues: queues.clone(),
        concurrency: args.concurrency,
        max_tasks: args.max_tasks,
        grace: args.grace,
        lease: args.lease,
        signing: signing_key(&cfg)?,
        notifier: Some(notifier()),
        ..WorkerOptions::default()
    };
    start_metrics(&args.metrics)?;
    let info = celeriac::ops::WorkerInfo {
        id: options.worker_id.clone(),
        queues: all_queues,
        concurrency: options.concurrency,
        started_at: Utc::now(),
        seen_at: Utc::now(),
        started: 0,
        succeeded: 0,
        failed: 0,
        retried: 0,
        dead_lettered: 0,
    };
    let mut worker = Worker::new(cfg, broker, Handlers::new(), options);
    for (broker, queues) in sources {
        worker = worker.add_source(broker, queues);
    }
    // Heartbeats go to the celeriac broker (a Celery-only worker has none to report to).
    let beat_stop = CancellationToken::new();
    let heartbeat = native_broker.clone().map(|broker| {
        tokio::spawn(celeriac::ops::heartbeat(
            broker,
            info,
            worker.counters(),
            beat_stop.clone(),
        ))
    });
    if let Some(b) = &native_broker {
        tokio::spawn(report_queue_depths(
            b.clone(),
            queue_names.clone(),
            beat_stop.clone(),
        ));
    }
    notifier().ready(&format!("consuming {}", queue_names.join(",")));
    notify_stopping(&signals.shutdown);
    let result = worker.run(signals.shutdown, signals.force).await;
    beat_stop.cancel();
    if let Some(h) = heartbeat {
        let _ = h.await;
    }
    result.map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Keeps the queue-depth gauges current (every 10 s) while the worker runs.
async fn report_queue_depths(
    broker: Arc<RedisBroker>,
    queues: Vec<String>,
    stop: CancellationToken,
) {
    loop {
        for q in &queues {
            if let Ok(st) = broker.queue_stats(q).await {
                let set = |state: &'static str, n: u64| {
                    metrics::gauge!(celeriac::metrics::QUEUE_DEPTH, "queue" => q.clone(), "state" => state)
                        .set(n as f64)
                };
                set("ready", st.ready_total());
                set("delayed", st.delayed);
                set("active", st.active);
                set("dead", st.dead);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn cmd_run(args: cli::RunArgs) -> anyhow::Result<()> {
    check_root("run", false, false)?;
    let path = args.config.config.clone();
    let cfg = Arc::new(load_config(&path)?);
    if let Some(url) = &cfg.broker
        && url != "memory"
        && url != "memory://"
    {
        tracing::info!(
            configured = %celeriac::broker::redact(url),
            "`celeriac run` uses its embedded in-memory broker; the configured broker is for `beat` and `worker`"
        );
    }
    let signals = celeriac::shutdown::listen()?;
    let broker = MemoryBroker::new();
    let store = Arc::new(MemoryBeatStore::new(broker.clone()));
    let reloads = reload::spawn(path.clone(), signals.reload, signals.shutdown.clone());
    let (reloads, config_watch) = reload::observe(reloads, cfg.clone());
    // Ticks of `protocol: celery` queues go to their Celery app; the worker runs the rest.
    tokio::spawn(celeriac::celery::forward::forward_while_running(
        Arc::new(broker.clone()),
        config_watch,
        signals.shutdown.clone(),
    ));
    start_metrics(&args.metrics)?;
    // One process, two loops: both ping the watchdog, the beat's status is the one shown.
    let beat = Beat::new(
        cfg.clone(),
        store,
        Arc::new(SystemClock),
        BeatOptions {
            notifier: Some(notifier()),
            signing: signing_key(&cfg)?.map(Arc::new),
            ..BeatOptions::default()
        },
    );
    let worker = Worker::new(
        cfg.clone(),
        Arc::new(broker),
        Handlers::new(),
        WorkerOptions {
            queues: cfg
                .queues
                .iter()
                .filter(|(_, q)| !q.is_celery())
                .map(|(name, _)| name.clone())
                .collect(),
            concurrency: args.concurrency,
            signing: signing_key(&cfg)?,
            ..WorkerOptions::default()
        },
    );
    notify_stopping(&signals.shutdown);
    tracing::info!(
        config = %path.display(),
        summary = %cfg.summary(),
        "celeriac run: beat + worker on the in-memory broker (Ctrl-C to stop)"
    );
    let beat_task = tokio::spawn(beat.run(signals.shutdown.clone(), reloads));
    let worker_result = worker
        .run(signals.shutdown.clone(), signals.force.clone())
        .await;
    signals.shutdown.cancel();
    beat_task.await??;
    worker_result.map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

async fn cmd_beat(args: cli::BeatArgs) -> anyhow::Result<()> {
    check_root("beat", args.root.allow_root, true)?;
    let path = args.config.config.clone();
    let cfg = Arc::new(load_config(&path)?);
    let url = broker_url(&args.broker, &cfg)?;
    if url == "memory" || url == "memory://" {
        return Err(usage(
            "the beat needs a shared broker to elect a leader: give a Redis URL with --broker \
             (or use `celeriac run` for beat + worker in one process)",
        ));
    }
    let signals = celeriac::shutdown::listen()?;
    let options = RedisBrokerOptions {
        prefix: args.broker.key_prefix.clone(),
        tls_ca_file: args.broker.tls_ca_file.clone(),
        ..RedisBrokerOptions::default()
    };
    let shown = celeriac::broker::redact(&url);
    let broker = match RedisBroker::connect(&url, options).await {
        Ok(b) => Arc::new(b),
        Err(e) if e.is_transient() => return Err(unavailable(format!("{e}"))),
        Err(e) => return Err(usage(format!("{e}"))),
    };
    tracing::info!(broker = %shown, summary = %cfg.summary(), "connected");
    start_metrics(&args.metrics)?;
    let beat_options = BeatOptions {
        lease_ttl: args.lease_ttl,
        notifier: Some(notifier()),
        signing: signing_key(&cfg)?.map(Arc::new),
        ..BeatOptions::default()
    };
    let store = Arc::new(RedisBeatStore::new(
        broker.clone(),
        beat_options.beat_id.clone(),
    ));
    let reloads = reload::spawn(path, signals.reload, signals.shutdown.clone());
    // Every beat (leader or standby) forwards fired ticks of `protocol: celery` queues from
    // the outbox to their Celery app (see celeriac::celery::forward).
    let (reloads, config_watch) = reload::observe(reloads, cfg.clone());
    let forwarder = tokio::spawn(celeriac::celery::forward::forward_while_running(
        broker,
        config_watch,
        signals.shutdown.clone(),
    ));
    let beat = Beat::new(cfg, store, Arc::new(SystemClock), beat_options);
    notify_stopping(&signals.shutdown);
    let result = beat.run(signals.shutdown.clone(), reloads).await;
    signals.shutdown.cancel();
    let _ = forwarder.await;
    result?;
    Ok(())
}

/// Brokers for `protocol: celery` queues (one per Celery app); unreachable at start exits 69.
async fn open_celery(
    cfg: &config::Config,
    queues: &[String],
) -> anyhow::Result<Vec<(Arc<dyn Broker>, Vec<String>)>> {
    match celeriac::celery::open_brokers(cfg, queues, Default::default()).await {
        Ok(b) => Ok(b),
        Err(e) if e.is_transient() => Err(unavailable(format!("Celery broker: {e}"))),
        Err(e) => Err(usage(format!("Celery broker: {e}"))),
    }
}

async fn cmd_enqueue(args: cli::EnqueueArgs) -> anyhow::Result<()> {
    let cfg = load_config(&args.config.config)?;
    // On a `protocol: celery` queue the task is a Celery task name, run by Celery workers.
    let to_celery = cfg.queues.get(&args.queue).is_some_and(|q| q.is_celery());
    if !to_celery && !cfg.tasks.contains_key(&args.task) {
        return Err(usage(format!(
            "unknown task `{}` (declared: {})",
            args.task,
            cfg.tasks.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    if !cfg.queues.contains_key(&args.queue) {
        return Err(usage(format!("unknown queue `{}`", args.queue)));
    }
    if args.priority > celeriac::broker::MAX_PRIORITY {
        return Err(usage(format!(
            "--priority must be 0..9, got {}",
            args.priority
        )));
    }
    let task_args: serde_json::Value = serde_json::from_str(&args.args)
        .map_err(|e| usage(format!("--args is not valid JSON: {e}")))?;
    let mut message = TaskMessage::new(&args.task, &args.queue)
        .with_priority(args.priority)
        .with_args(task_args);
    if let Some(c) = args.countdown {
        message = message.with_countdown(c);
    }
    if let Some(key) = signing_key(&cfg)?
        && !to_celery
    {
        key.sign(&mut message);
    }
    let broker = if to_celery {
        let mut brokers = open_celery(&cfg, std::slice::from_ref(&args.queue)).await?;
        brokers.remove(0).0
    } else {
        open_broker(&args.broker, &cfg, true).await?.0
    };
    broker.enqueue(&message).await?;
    println!("{}", message.id);
    if !args.wait {
        return Ok(());
    }
    let wait_until = tokio::time::Instant::now() + args.timeout;
    loop {
        let left = wait_until.saturating_duration_since(tokio::time::Instant::now());
        match broker.wait_result(&message.id, left).await? {
            Some(r) if r.status.is_final() => {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return match r.status {
                    TaskStatus::Success => Ok(()),
                    other => Err(anyhow!("task {} ended with status {:?}", r.id, other)),
                };
            }
            Some(_) if !left.is_zero() => {
                // An intermediate result (retrying): wait for the next one.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => {
                return Err(anyhow!(
                    "no result for {} within {}",
                    message.id,
                    humantime::format_duration(args.timeout)
                ));
            }
        }
    }
}

async fn cmd_result(args: cli::ResultArgs) -> anyhow::Result<()> {
    let cfg = load_config(&args.config.config)?;
    // Results are in the celeriac broker, or (tasks of `protocol: celery` queues) in the
    // Celery apps' result backends, in Celery's format.
    let celery_queues: Vec<String> = cfg
        .queues
        .iter()
        .filter(|(_, q)| q.celery.as_ref().is_some_and(|c| c.backend.is_some()))
        .map(|(name, _)| name.clone())
        .collect();
    let mut sources: Vec<Arc<dyn Broker>> = Vec::new();
    if celery_queues.is_empty() || broker_url(&args.broker, &cfg).is_ok() {
        sources.push(open_broker(&args.broker, &cfg, true).await?.0);
    }
    if !celery_queues.is_empty() {
        sources.extend(
            open_celery(&cfg, &celery_queues)
                .await?
                .into_iter()
                .map(|(b, _)| b),
        );
    }
    let mut found = None;
    for broker in &sources {
        if let Some(r) = broker.get_result(&args.id).await? {
            found = Some(r);
            break;
        }
    }
    match found {
        Some(r) => {
            if args.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("{}", serde_json::to_string_pretty(&r)?);
            }
            Ok(())
        }
        None => Err(anyhow!(
            "no result for {}: unknown id, not finished yet, or expired (results are kept for {})",
            args.id,
            humantime::format_duration(cfg.result_expires)
        )),
    }
}

async fn cmd_purge(args: cli::PurgeArgs) -> anyhow::Result<()> {
    let cfg = load_config(&args.config.config)?;
    let broker = if cfg.queues.get(&args.queue).is_some_and(|q| q.is_celery()) {
        open_celery(&cfg, std::slice::from_ref(&args.queue))
            .await?
            .remove(0)
            .0
    } else {
        open_broker(&args.broker, &cfg, true).await?.0
    };
    let n = broker.purge(&args.queue).await?;
    println!(
        "purged {n} message{} from `{}`",
        if n == 1 { "" } else { "s" },
        args.queue
    );
    Ok(())
}

/// The configured signing key, read from `signing_key_file`.
fn signing_key(cfg: &config::Config) -> anyhow::Result<Option<SigningKey>> {
    match &cfg.signing_key_file {
        None => Ok(None),
        Some(path) => Ok(Some(
            SigningKey::from_file(path).map_err(|e| usage(e.to_string()))?,
        )),
    }
}

/// Connects to the configured Redis for an operations command.
async fn ops_connect(
    args: &cli::OpsArgs,
) -> anyhow::Result<(config::Config, Arc<RedisBroker>, RedisBeatStore)> {
    let cfg = load_config(&args.config.config)?;
    let broker = open_redis(&args.broker, &cfg).await?;
    let store = RedisBeatStore::new(broker.clone(), who());
    Ok((cfg, broker, store))
}

/// Opens the Redis broker (not `memory`), exiting 69 when it cannot be reached.
async fn open_redis(
    arg: &cli::BrokerArg,
    cfg: &config::Config,
) -> anyhow::Result<Arc<RedisBroker>> {
    let url = broker_url(arg, cfg)?;
    if url == "memory" || url == "memory://" {
        return Err(usage(
            "this command talks to a shared broker: give a Redis URL with --broker \
             (the `memory` broker lives inside one `celeriac run` process)",
        ));
    }
    let options = RedisBrokerOptions {
        prefix: arg.key_prefix.clone(),
        tls_ca_file: arg.tls_ca_file.clone(),
        ..RedisBrokerOptions::default()
    };
    match RedisBroker::connect(&url, options).await {
        Ok(b) => Ok(Arc::new(b)),
        Err(e) if e.is_transient() => Err(unavailable(format!("{e}"))),
        Err(e) => Err(usage(format!("{e}"))),
    }
}

/// Who runs an operations command, for the journal: `user@host`.
fn who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        // SAFETY: getuid has no preconditions and cannot fail.
        .unwrap_or_else(|_| format!("uid{}", unsafe { libc::getuid() }));
    format!("{user}@{}", celeriac::worker::default_worker_id())
}

fn fmt_time(t: Option<DateTime<Utc>>, tz: Tz) -> String {
    t.map(|t| format_instant(t, tz))
        .unwrap_or_else(|| "-".into())
}

fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i + 1 == r.len() {
                    s.clone()
                } else {
                    format!("{s:w$}", w = widths[i])
                }
            })
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

async fn cmd_status(args: cli::OpsArgs) -> anyhow::Result<()> {
    let (cfg, broker, store) = ops_connect(&args).await?;
    let report = celeriac::ops::status(&broker, &store, &cfg, Utc::now()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    match &report.leader {
        Some(l) => println!(
            "beat: leader {} (epoch {}, lease {} ms left)",
            l.beat, l.epoch, l.lease_left_ms
        ),
        None => println!("beat: NO LEADER (no beat running, or failover in progress)"),
    }
    println!();
    let mut rows = vec![vec![
        "SCHEDULE".to_string(),
        "TIMING".into(),
        "ZONE".into(),
        "STATE".into(),
        "LAST FIRED".into(),
        "NEXT".into(),
    ]];
    for s in &report.schedules {
        let tz: Tz = s.timezone.parse().unwrap_or(Tz::UTC);
        let state = if !s.enabled {
            "disabled"
        } else if s.paused {
            "paused"
        } else {
            "active"
        };
        rows.push(vec![
            s.name.clone(),
            s.timing.clone(),
            s.timezone.clone(),
            state.into(),
            fmt_time(s.last_fired, tz),
            fmt_time(s.next, tz),
        ]);
    }
    print_table(&rows);
    println!();
    let mut rows = vec![vec![
        "QUEUE".to_string(),
        "READY".into(),
        "BY PRIORITY (9..0)".into(),
        "DELAYED".into(),
        "ACTIVE".into(),
        "DEAD".into(),
    ]];
    for q in &report.queues {
        let by: Vec<String> = q.ready.iter().rev().map(|n| n.to_string()).collect();
        rows.push(vec![
            q.name.clone(),
            q.ready.iter().sum::<u64>().to_string(),
            by.join(" "),
            q.delayed.to_string(),
            q.active.to_string(),
            q.dead.to_string(),
        ]);
    }
    print_table(&rows);
    println!();
    print_workers(&report.workers);
    Ok(())
}

fn print_workers(workers: &[celeriac::ops::WorkerInfo]) {
    if workers.is_empty() {
        println!("workers: none alive");
        return;
    }
    let mut rows = vec![vec![
        "WORKER".to_string(),
        "QUEUES".into(),
        "CONCURRENCY".into(),
        "STARTED".into(),
        "SUCCEEDED".into(),
        "FAILED".into(),
        "LAST SEEN".into(),
    ]];
    for w in workers {
        rows.push(vec![
            w.id.clone(),
            w.queues.join(","),
            w.concurrency.to_string(),
            w.started.to_string(),
            w.succeeded.to_string(),
            w.failed.to_string(),
            format!("{}s ago", (Utc::now() - w.seen_at).num_seconds().max(0)),
        ]);
    }
    print_table(&rows);
}

async fn cmd_workers(args: cli::OpsArgs) -> anyhow::Result<()> {
    let (_, broker, _) = ops_connect(&args).await?;
    let workers = celeriac::ops::workers(&broker).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&workers)?);
    } else {
        print_workers(&workers);
    }
    Ok(())
}

fn schedule_named<'a>(
    cfg: &'a config::Config,
    name: &str,
) -> anyhow::Result<&'a config::ScheduleConfig> {
    cfg.schedules.get(name).map(|s| &**s).ok_or_else(|| {
        usage(format!(
            "no schedule named `{name}` (known: {})",
            cfg.schedules.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })
}

async fn cmd_trigger(args: cli::NameArgs) -> anyhow::Result<()> {
    let (cfg, broker, store) = ops_connect(&args.ops).await?;
    let s = schedule_named(&cfg, &args.name)?;
    let now = Utc::now();
    let now =
        now - chrono::Duration::nanoseconds(i64::from(now.timestamp_subsec_nanos() % 1_000_000));
    let key = signing_key(&cfg)?;
    let m = celeriac::ops::trigger(&broker, &store, s, now, &who(), key.as_ref()).await?;
    if args.ops.json {
        println!(
            "{}",
            serde_json::json!({"id": m.id, "fire_id": m.fire_id, "queue": m.queue})
        );
    } else {
        println!("triggered {}: message {} on {}", args.name, m.id, m.queue);
    }
    Ok(())
}

async fn cmd_pause(args: cli::NameArgs, paused: bool) -> anyhow::Result<()> {
    let (cfg, _, store) = ops_connect(&args.ops).await?;
    schedule_named(&cfg, &args.name)?;
    celeriac::ops::set_paused(&store, &args.name, paused, &who()).await?;
    let what = if paused { "paused" } else { "resumed" };
    if args.ops.json {
        println!(
            "{}",
            serde_json::json!({"schedule": args.name, "state": what})
        );
    } else {
        println!("{what} {}", args.name);
    }
    Ok(())
}

async fn cmd_why(args: cli::NameArgs) -> anyhow::Result<()> {
    let (cfg, broker, store) = ops_connect(&args.ops).await?;
    schedule_named(&cfg, &args.name)?;
    let report = celeriac::ops::why(&broker, &store, &cfg, &args.name, Utc::now(), 20)
        .await?
        .expect("schedule exists");
    if args.ops.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let s = &report.schedule;
    let tz: Tz = s.timezone.parse().unwrap_or(Tz::UTC);
    println!(
        "{}: {} in {}, task {} on queue {}",
        s.name, s.timing, s.timezone, s.task, s.queue
    );
    let state = if !s.enabled {
        "disabled in the configuration"
    } else if s.paused {
        "PAUSED (celeriac resume to undo)"
    } else {
        "active"
    };
    println!("state:      {state}");
    println!("last fired: {}", fmt_time(s.last_fired, tz));
    if s.last_tick.is_some() && s.last_tick != s.last_fired {
        println!(
            "last tick:  {} (not fired: see the journal below)",
            fmt_time(s.last_tick, tz)
        );
    }
    if let Some(id) = &s.last_message {
        let result = report
            .last_result
            .map(|r| format!("{r:?}").to_lowercase())
            .unwrap_or_else(|| "no result stored (still queued or running, or expired)".into());
        println!("last run:   message {id}: {result}");
    }
    println!("next:       {}", fmt_time(s.next, tz));
    println!();
    if report.journal.is_empty() {
        println!("journal: nothing recorded for this schedule");
    } else {
        println!("journal (newest first):");
        for e in &report.journal {
            let nominal = e.nominal.map(|n| format_instant(n, tz)).unwrap_or_default();
            println!(
                "  {}  {:<16} {nominal}  {}",
                format_instant(e.at, tz),
                e.event,
                e.detail
            );
        }
    }
    Ok(())
}

async fn cmd_dead_letters(args: cli::DeadLettersArgs) -> anyhow::Result<()> {
    let (cfg, broker, _) = ops_connect(&args.ops).await?;
    if let Some(q) = &args.queue
        && (args.all || args.requeue.is_some())
    {
        let which = match &args.requeue {
            Some(id) => DeadSelector::Id(id.clone()),
            None => DeadSelector::All,
        };
        let n = broker.requeue_dead(q, which).await?;
        println!(
            "requeued {n} dead letter{} on `{q}`",
            if n == 1 { "" } else { "s" }
        );
        return Ok(());
    }
    let queues: Vec<String> = match &args.queue {
        Some(q) => vec![q.clone()],
        None => cfg.queues.keys().cloned().collect(),
    };
    let all = celeriac::ops::dead_letters(&broker, &queues, args.limit).await?;
    if args.ops.json {
        let v: BTreeMap<&String, Vec<serde_json::Value>> =
            all.iter()
                .map(|(q, list)| {
                    (q, list.iter().map(|d| serde_json::json!({
                    "id": d.id, "reason": d.reason, "at": d.at, "attempt": d.attempt,
                    "priority": d.priority, "body": d.body,
                })).collect())
                })
                .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for (q, list) in &all {
        println!(
            "{q}: {} dead letter{}",
            list.len(),
            if list.len() == 1 { "" } else { "s" }
        );
        for d in list {
            let task = d
                .message()
                .map(|m| m.task)
                .unwrap_or_else(|| "(undecodable)".into());
            println!(
                "  {}  {}  {task}  attempt {}  {}",
                d.at.to_rfc3339(),
                d.id,
                d.attempt,
                d.reason
            );
        }
    }
    Ok(())
}

/// systemd notifications, set up once in `main` from NOTIFY_SOCKET / WATCHDOG_USEC.
static NOTIFIER: std::sync::OnceLock<Arc<Notifier>> = std::sync::OnceLock::new();

fn notifier() -> Arc<Notifier> {
    NOTIFIER
        .get_or_init(|| Arc::new(Notifier::disabled()))
        .clone()
}

/// Reads and unsets the systemd notification variables, so task commands do not inherit
/// them. Must run before any thread is started.
fn take_systemd_env() -> Notifier {
    let socket = std::env::var_os("NOTIFY_SOCKET");
    let pid_ok = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_none_or(|p| p == std::process::id());
    let watchdog = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|u| u.parse::<u64>().ok())
        .filter(|_| pid_ok)
        .map(Duration::from_micros);
    // SAFETY: called at the start of main, before any other thread exists.
    unsafe {
        std::env::remove_var("NOTIFY_SOCKET");
        std::env::remove_var("WATCHDOG_USEC");
        std::env::remove_var("WATCHDOG_PID");
    }
    Notifier::new(socket, watchdog)
}

/// Starts the Prometheus exporter when asked for.
fn start_metrics(arg: &cli::MetricsArg) -> anyhow::Result<()> {
    if let Some(addr) = arg.metrics_addr {
        celeriac::metrics::install(addr).map_err(|e| anyhow!(e))?;
        tracing::info!(%addr, "serving Prometheus metrics");
    }
    Ok(())
}

/// Tells systemd STOPPING=1 as soon as shutdown begins.
fn notify_stopping(shutdown: &CancellationToken) {
    let token = shutdown.clone();
    tokio::spawn(async move {
        token.cancelled().await;
        notifier().stopping();
    });
}

fn main() -> ExitCode {
    celeriac::memory::tune();
    let _ = NOTIFIER.set(Arc::new(take_systemd_env()));
    let cli = Cli::parse();
    init_tracing(&cli.log, cli.log_format);
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(err),
    }
}

fn report(err: anyhow::Error) -> ExitCode {
    if let Some(errors) = err.downcast_ref::<ConfigErrors>() {
        let mut stderr = std::io::stderr().lock();
        for e in errors.iter() {
            let _ = writeln!(stderr, "{e}");
        }
        let n = errors.len();
        let _ = writeln!(
            stderr,
            "celeriac: configuration is invalid ({n} error{})",
            if n == 1 { "" } else { "s" }
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    if let Some(exit) = err.downcast_ref::<Exit>() {
        eprintln!("celeriac: {}", exit.message);
        return ExitCode::from(exit.code);
    }
    eprintln!("celeriac: {err:#}");
    ExitCode::FAILURE
}

fn init_tracing(filter: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("celeriac: invalid log filter `{filter}` ({e}); using `info`");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    if matches!(
        command,
        Command::Check(_) | Command::Next(_) | Command::Run(_) | Command::Beat(_)
    ) {
        // They load whole configurations (a beat's may hold 100,000s of schedules); no
        // thread has started yet.
        celeriac::memory::share_one_arena();
    }
    match command {
        Command::Check(args) => cmd_check(&args.config),
        Command::Next(args) => cmd_next(args),
        Command::Run(args) => runtime()?.block_on(cmd_run(args)),
        Command::Beat(args) => runtime()?.block_on(cmd_beat(args)),
        Command::Worker(args) => worker_runtime()?.block_on(cmd_worker(args)),
        Command::Enqueue(args) => runtime()?.block_on(cmd_enqueue(args)),
        Command::Result(args) => runtime()?.block_on(cmd_result(args)),
        Command::Purge(args) => runtime()?.block_on(cmd_purge(args)),
        Command::Status(args) => runtime()?.block_on(cmd_status(args)),
        Command::Trigger(args) => runtime()?.block_on(cmd_trigger(args)),
        Command::Pause(args) => runtime()?.block_on(cmd_pause(args, true)),
        Command::Resume(args) => runtime()?.block_on(cmd_pause(args, false)),
        Command::Why(args) => runtime()?.block_on(cmd_why(args)),
        Command::Workers(args) => runtime()?.block_on(cmd_workers(args)),
        Command::DeadLetters(args) => runtime()?.block_on(cmd_dead_letters(args)),
        Command::ImportCelery(args) => cmd_import_celery(args),
    }
}

/// `import-celery`: a JSON dump of a Celery `beat_schedule` to celeriac YAML.
fn cmd_import_celery(args: cli::ImportCeleryArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.dump)
        .map_err(|e| usage(format!("cannot read {}: {e}", args.dump.display())))?;
    let options = celeriac::celery::import::ImportOptions {
        queue: args.queue.clone(),
        broker: args.celery_broker.clone(),
        backend: args.celery_backend.clone(),
    };
    let yaml = celeriac::celery::import::beat_schedule_to_yaml(&text, &options)
        .map_err(|e| usage(format!("{}: {e}", args.dump.display())))?;
    match &args.output {
        Some(path) => {
            std::fs::write(path, &yaml)
                .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{yaml}"),
    }
    Ok(())
}

fn load_config(path: &std::path::Path) -> anyhow::Result<config::Config> {
    let cfg = config::load(path)?;
    celeriac::memory::release_freed();
    Ok(cfg)
}

fn cmd_check(path: &std::path::Path) -> anyhow::Result<()> {
    let cfg = load_config(path)?;
    println!("{}: ok ({})", path.display(), cfg.summary());
    Ok(())
}

/// Parses `--after`: RFC 3339, or a local wall-clock time (`2025-03-09T01:30[:00]`) in `tz`.
fn parse_instant(s: &str, tz: Tz) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s.trim()) {
        return Ok(t.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(s.trim(), fmt) {
            // A wall time that happens twice means its first occurrence; one that is
            // skipped by a DST gap is rejected rather than guessed.
            return tz
                .from_local_datetime(&naive)
                .earliest()
                .map(|t| t.with_timezone(&Utc))
                .ok_or_else(|| {
                    usage(format!(
                        "`{s}` does not exist in {tz} (skipped by a DST change)"
                    ))
                });
        }
    }
    Err(usage(format!(
        "invalid instant `{s}`: expected RFC 3339 such as 2025-03-09T01:30:00-05:00, or a local time such as 2025-03-09T01:30"
    )))
}

fn format_instant(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz)
        .to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

fn fires(timing: &Timing, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
    let mut out = Vec::with_capacity(count);
    let mut t = after;
    while out.len() < count {
        match timing.next_after(t) {
            Some(next) => {
                out.push(next);
                t = next;
            }
            None => break,
        }
    }
    out
}

fn cmd_next(args: NextArgs) -> anyhow::Result<()> {
    if args.cron.is_some() || args.every.is_some() {
        return next_expression(&args);
    }
    let path = args
        .config
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("schedules"));
    next_configured(&path, &args)
}

fn next_expression(args: &NextArgs) -> anyhow::Result<()> {
    let tz = match &args.tz {
        Some(name) => schedule::parse_timezone(name).map_err(usage)?,
        None => Tz::UTC,
    };
    let after = match &args.after {
        Some(s) => parse_instant(s, tz)?,
        None => Utc::now(),
    };
    let timing = if let Some(expr) = &args.cron {
        let expr = CronExpr::parse(expr).map_err(|e| {
            usage(match &e.span {
                Some(span) => format!(
                    "invalid cron expression `{expr}`: {}\n  {expr}\n  {}{}",
                    e.message,
                    " ".repeat(expr[..span.start].chars().count()),
                    "^".repeat(expr[span.clone()].chars().count().max(1))
                ),
                None => format!("invalid cron expression `{expr}`: {}", e.message),
            })
        })?;
        Timing::Cron(CronSchedule::new(expr, tz))
    } else {
        let every = args.every.expect("checked by caller");
        let anchor = match &args.anchor {
            Some(s) => Some(parse_instant(s, tz)?),
            None => None,
        };
        Timing::Interval(IntervalSchedule::new(every, anchor).map_err(|e| usage(e.to_string()))?)
    };
    let list = fires(&timing, after, args.count);
    let lines: Vec<String> = list.iter().map(|t| format_instant(*t, tz)).collect();
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&lines)?)?;
    } else {
        for line in &lines {
            writeln!(out, "{line}")?;
        }
    }
    if list.len() < args.count && !args.json {
        eprintln!("celeriac: no further fire within the 30-year search horizon");
    }
    Ok(())
}

fn describe_timing(timing: &Timing) -> String {
    match timing {
        Timing::Cron(c) => format!("cron {}", c.expr().source()),
        Timing::Interval(i) => {
            let every = humantime::format_duration(i.every());
            if i.anchor() == DateTime::UNIX_EPOCH {
                format!("every {every}")
            } else {
                format!(
                    "every {every} from {}",
                    i.anchor().to_rfc3339_opts(SecondsFormat::AutoSi, true)
                )
            }
        }
    }
}

fn next_configured(path: &std::path::Path, args: &NextArgs) -> anyhow::Result<()> {
    let cfg = load_config(path)?;
    let count = args.count;
    let after = match &args.after {
        Some(s) => parse_instant(
            s,
            args.tz
                .as_deref()
                .map(schedule::parse_timezone)
                .transpose()
                .map_err(usage)?
                .unwrap_or(cfg.timezone),
        )?,
        None => Utc::now(),
    };
    let selected: Vec<_> = match &args.name {
        Some(name) => {
            let s = cfg.schedules.get(name).ok_or_else(|| {
                usage(format!("no schedule named `{name}` in {}", path.display()))
            })?;
            vec![s]
        }
        None => cfg.schedules.values().collect(),
    };
    let count = if args.name.is_none() && args.count == 5 && !args.json {
        1
    } else {
        count
    };
    let rows: Vec<(String, String, String, Vec<String>)> = selected
        .iter()
        .map(|s| {
            let list = if s.enabled {
                fires(&s.timing, after, count)
                    .into_iter()
                    .map(|t| format_instant(t, s.timezone))
                    .collect()
            } else {
                Vec::new()
            };
            (
                s.name.clone(),
                describe_timing(&s.timing),
                s.timezone.name().to_string(),
                list,
            )
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if args.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .zip(&selected)
            .map(|((name, timing, zone, list), s)| {
                serde_json::json!({"name": name, "timing": timing, "timezone": zone, "enabled": s.enabled, "next": list})
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    if !std::io::stdout().is_terminal() {
        for (name, _, _, list) in &rows {
            if list.is_empty() {
                writeln!(out, "{name}\t-")?;
            }
            for t in list {
                writeln!(out, "{name}\t{t}")?;
            }
        }
        return Ok(());
    }
    let w_name = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(8);
    let w_timing = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(6);
    let w_zone = rows.iter().map(|r| r.2.len()).max().unwrap_or(0).max(4);
    writeln!(
        out,
        "{:w_name$}  {:w_timing$}  {:w_zone$}  NEXT",
        "SCHEDULE", "TIMING", "ZONE"
    )?;
    for ((name, timing, zone, list), s) in rows.iter().zip(&selected) {
        let first = if !s.enabled {
            "(disabled)".to_string()
        } else {
            list.first()
                .cloned()
                .unwrap_or_else(|| "(never within 30 years)".into())
        };
        writeln!(
            out,
            "{name:w_name$}  {timing:w_timing$}  {zone:w_zone$}  {first}"
        )?;
        for t in list.iter().skip(1) {
            writeln!(out, "{:w_name$}  {:w_timing$}  {:w_zone$}  {t}", "", "", "")?;
        }
    }
    Ok(())
}
