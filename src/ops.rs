//! Operations on a running system, all through Redis: what `celeriac status`, `trigger`,
//! `pause`, `resume`, `why`, `workers` and `dead-letters` show and do. Also the worker
//! heartbeat that `status`/`workers` read.
//!
//! Each function returns plain data (serializable for `--json`); the binary formats it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::beat::redis_store::RedisBeatStore;
use crate::beat::store::{BeatStore, JournalEntry, fire_id};
use crate::broker::{Broker, BrokerError, DeadLetter, RedisBroker, TaskMessage, TaskStatus};
use crate::config::{Config, Expires, ScheduleConfig};
use crate::schedule::Timing;
use crate::worker::WorkerCounters;

/// How often a worker refreshes its heartbeat, and how long one lasts.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(15);

/// The leader as Redis has it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LeaderInfo {
    /// `host/pid/random` of the leading beat.
    pub beat: String,
    pub epoch: u64,
    /// How long its lease lasts unless renewed (renewed every third of the ttl).
    pub lease_left_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScheduleInfo {
    pub name: String,
    pub timing: String,
    pub timezone: String,
    pub task: String,
    pub queue: String,
    pub enabled: bool,
    pub paused: bool,
    /// The nominal instant of the last tick that enqueued a message.
    pub last_fired: Option<DateTime<Utc>>,
    /// The last tick decided, whether fired or skipped (overlap, paused).
    #[serde(default)]
    pub last_tick: Option<DateTime<Utc>>,
    pub last_message: Option<String>,
    pub next: Option<DateTime<Utc>>,
}

impl ScheduleInfo {
    fn new(
        s: &crate::config::ScheduleConfig,
        paused: bool,
        last_tick: Option<DateTime<Utc>>,
        last_message: Option<crate::beat::redis_store::LastMessage>,
        now: DateTime<Utc>,
    ) -> Self {
        ScheduleInfo {
            name: s.name.clone(),
            timing: describe(&s.timing),
            timezone: s.timezone.name().to_string(),
            task: s.task.clone(),
            queue: s.queue.clone(),
            enabled: s.enabled,
            paused,
            last_fired: last_message.as_ref().and_then(|m| m.nominal),
            last_tick,
            last_message: last_message.map(|m| m.id),
            next: if s.enabled {
                s.timing.next_after(now)
            } else {
                None
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueueInfo {
    pub name: String,
    /// Ready messages by priority 0..=9.
    pub ready: [u64; 10],
    pub delayed: u64,
    pub active: u64,
    pub dead: u64,
}

/// A worker's heartbeat, refreshed every [`HEARTBEAT_EVERY`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerInfo {
    pub id: String,
    pub queues: Vec<String>,
    pub concurrency: usize,
    pub started_at: DateTime<Utc>,
    pub seen_at: DateTime<Utc>,
    pub started: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub retried: u64,
    pub dead_lettered: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    pub leader: Option<LeaderInfo>,
    pub schedules: Vec<ScheduleInfo>,
    pub queues: Vec<QueueInfo>,
    pub workers: Vec<WorkerInfo>,
}

fn describe(timing: &Timing) -> String {
    match timing {
        Timing::Cron(c) => format!("cron {}", c.expr().source()),
        Timing::Interval(i) => format!("every {}", humantime::format_duration(i.every())),
    }
}

/// Everything `celeriac status` shows.
pub async fn status(
    broker: &RedisBroker,
    store: &RedisBeatStore,
    config: &Config,
    now: DateTime<Utc>,
) -> Result<StatusReport, BrokerError> {
    let leader = store.leader().await?.map(|(value, left)| {
        let (beat, epoch) = value.rsplit_once(':').unwrap_or((value.as_str(), "0"));
        LeaderInfo {
            beat: beat.to_string(),
            epoch: epoch.parse().unwrap_or(0),
            lease_left_ms: left.as_millis() as u64,
        }
    });
    let names: Vec<String> = config.schedules.keys().cloned().collect();
    let last = store.last_fired(&names).await?;
    let last_msg = store.last_messages(&names).await?;
    let paused = store.paused().await?;
    let schedules = config
        .schedules
        .values()
        .zip(last)
        .zip(last_msg)
        .map(|((s, last), msg)| ScheduleInfo::new(s, paused.contains(&s.name), last, msg, now))
        .collect();
    let mut queues = Vec::new();
    for name in config.queues.keys() {
        let st = broker.queue_stats(name).await?;
        queues.push(QueueInfo {
            name: name.clone(),
            ready: st.ready,
            delayed: st.delayed,
            active: st.active,
            dead: st.dead,
        });
    }
    let workers = workers(broker).await?;
    Ok(StatusReport {
        leader,
        schedules,
        queues,
        workers,
    })
}

fn workers_key(broker: &RedisBroker) -> String {
    format!("{}workers", broker.prefix())
}

fn worker_key(broker: &RedisBroker, id: &str) -> String {
    format!("{}worker:{id}", broker.prefix())
}

/// The workers whose heartbeat is live (expired ones are pruned from the index).
pub async fn workers(broker: &RedisBroker) -> Result<Vec<WorkerInfo>, BrokerError> {
    let ids = broker
        .command(redis::cmd("SMEMBERS").arg(workers_key(broker)))
        .await?;
    let ids: Vec<String> = match ids {
        redis::Value::Array(a) => a
            .into_iter()
            .filter_map(|v| match v {
                redis::Value::BulkString(b) => String::from_utf8(b).ok(),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for id in ids {
        let v = broker
            .command(redis::cmd("GET").arg(worker_key(broker, &id)))
            .await?;
        match v {
            redis::Value::BulkString(b) => {
                if let Ok(w) = serde_json::from_slice::<WorkerInfo>(&b) {
                    out.push(w);
                }
            }
            _ => {
                broker
                    .command(redis::cmd("SREM").arg(workers_key(broker)).arg(&id))
                    .await?;
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Keeps a worker's heartbeat fresh until `stop`; removes it on the way out.
pub async fn heartbeat(
    broker: Arc<RedisBroker>,
    mut info: WorkerInfo,
    counters: Arc<WorkerCounters>,
    stop: CancellationToken,
) {
    let key = worker_key(&broker, &info.id);
    loop {
        info.seen_at = Utc::now();
        info.started = counters.started.load(Ordering::Relaxed);
        info.succeeded = counters.succeeded.load(Ordering::Relaxed);
        info.failed = counters.failed.load(Ordering::Relaxed);
        info.retried = counters.retried.load(Ordering::Relaxed);
        info.dead_lettered = counters.dead_lettered.load(Ordering::Relaxed);
        let body = serde_json::to_string(&info).expect("worker info serializes");
        let _ = broker
            .command(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(body)
                    .arg("PX")
                    .arg(HEARTBEAT_TTL.as_millis() as u64),
            )
            .await;
        let _ = broker
            .command(redis::cmd("SADD").arg(workers_key(&broker)).arg(&info.id))
            .await;
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
            _ = stop.cancelled() => break,
        }
    }
    let _ = broker.command(redis::cmd("DEL").arg(&key)).await;
    let _ = broker
        .command(redis::cmd("SREM").arg(workers_key(&broker)).arg(&info.id))
        .await;
}

/// The message a tick of `cfg` sends.
pub fn schedule_message(
    cfg: &ScheduleConfig,
    nominal: DateTime<Utc>,
    now: DateTime<Utc>,
) -> TaskMessage {
    let mut m = TaskMessage::new(&cfg.task, &cfg.queue)
        .with_priority(cfg.priority)
        .with_args(cfg.args.clone())
        .with_fire(&cfg.name, fire_id(&cfg.name, nominal));
    if let Some(k) = &cfg.kwargs {
        m = m.with_kwargs(k.clone());
    }
    m.enqueued_at = now;
    m.expires = match cfg.expires {
        // Superseded by the schedule's next tick after both the nominal instant and now (a
        // late catch-up fire must not be born expired).
        Expires::Auto => cfg.timing.next_after(nominal.max(now)),
        Expires::Never => None,
        Expires::After(d) => chrono::Duration::from_std(d).ok().map(|d| nominal + d),
    };
    m
}

/// Fires a schedule now, outside its timing: the message carries `fire_id = NAME@now` and
/// the journal records who asked. The schedule's own ticks are unaffected.
pub async fn trigger(
    broker: &RedisBroker,
    store: &RedisBeatStore,
    cfg: &ScheduleConfig,
    now: DateTime<Utc>,
    by: &str,
    signing: Option<&crate::signing::SigningKey>,
) -> Result<TaskMessage, BrokerError> {
    let mut message = schedule_message(cfg, now, now);
    if let Some(key) = signing {
        key.sign(&mut message);
    }
    broker.enqueue(&message).await?;
    let mut entry = JournalEntry::new(
        "triggered",
        Some(&cfg.name),
        format!("by {by}: message {} on {}", message.id, message.queue),
    );
    entry.nominal = Some(now);
    entry.fire_id = message.fire_id.clone();
    entry.beat = by.to_string();
    store.journal(&[entry]).await?;
    Ok(message)
}

/// Pauses or resumes a schedule for every beat (survives restarts), journaled.
pub async fn set_paused(
    store: &RedisBeatStore,
    name: &str,
    paused: bool,
    by: &str,
) -> Result<(), BrokerError> {
    store.set_paused(name, paused).await?;
    let mut entry = JournalEntry::new(
        if paused { "paused" } else { "resumed" },
        Some(name),
        format!("by {by}"),
    );
    entry.beat = by.to_string();
    store.journal(&[entry]).await
}

/// What `celeriac why NAME` shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WhyReport {
    pub schedule: ScheduleInfo,
    /// Status of the last fired message's result, if still stored.
    pub last_result: Option<TaskStatus>,
    /// Newest first.
    pub journal: Vec<JournalEntry>,
}

pub async fn why(
    broker: &RedisBroker,
    store: &RedisBeatStore,
    config: &Config,
    name: &str,
    now: DateTime<Utc>,
    limit: usize,
) -> Result<Option<WhyReport>, BrokerError> {
    let Some(cfg) = config.schedules.get(name) else {
        return Ok(None);
    };
    let names = vec![name.to_string()];
    let last = store.last_fired(&names).await?.pop().flatten();
    let last_msg = store.last_messages(&names).await?.pop().flatten();
    let paused = store.paused().await?.contains(&cfg.name);
    let last_result = match &last_msg {
        Some(m) => broker.get_result(&m.id).await?.map(|r| r.status),
        None => None,
    };
    Ok(Some(WhyReport {
        schedule: ScheduleInfo::new(cfg, paused, last, last_msg, now),
        last_result,
        journal: store.read_journal(Some(name), limit).await?,
    }))
}

/// Dead letters of the given queues, newest first per queue.
pub async fn dead_letters(
    broker: &RedisBroker,
    queues: &[String],
    limit: usize,
) -> Result<BTreeMap<String, Vec<DeadLetter>>, BrokerError> {
    let mut out = BTreeMap::new();
    for q in queues {
        out.insert(q.clone(), broker.dead_letters(q, limit).await?);
    }
    Ok(out)
}
