//! The beat store on Redis: leader lease with fencing epoch, the atomic fire script, the
//! last-fired record and the journal streams.
//!
//! Keys (prefix `celeriac:` by default):
//! - `beat:leader`  STRING `token:epoch`, PX = lease ttl (Redis's clock decides expiry)
//! - `beat:epoch`   counter, incremented by each new acquisition (fencing)
//! - `beat:last`    HASH schedule -> `NOMINAL_MS\tQUEUE\tID\tMESSAGE_NOMINAL_MS`: its last
//!   decided tick (fired, paused or skipped; Unix ms), then the last message it enqueued and
//!   that message's tick. `NOMINAL_MS` alone before any message. One record, so that a fire
//!   reads and writes one hash field for both; it only moves forward and is never removed
//!   (the exactly-once guard: `lua/fire.lua`).
//! - `beat:armed`  HASH schedule -> when a beat first ran it (Unix ms; set if absent; removed
//!   when the schedule is removed or retimed, so that it is armed afresh): a schedule is owed
//!   its ticks after the later of this instant and its last decided tick
//! - `beat:paused`  SET of paused schedules
//! - `beat:journal` STREAM of every decision, capped (approximately) at `journal_limit`
//! - `beat:journal:NAME` STREAM of one schedule's non-routine decisions, capped exactly
//!
//! The fire script (`lua/fire.lua`, built on the broker's `enqueue_lua_lib`) touches the
//! beat keys and each queue's keys, so it needs a single Redis node (not Cluster).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use redis::{Script, Value};

use super::store::{BeatStore, Claim, Fire, FireOutcome, JournalEntry, LeaderToken, fire_id};
use crate::broker::{BrokerError, RedisBroker, enqueue_lua_lib};

static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/claim.lua")));
static JOURNAL: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/journal.lua")));
static ARM: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/arm.lua")));
static RESIGN: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/resign.lua")));
/// The fire script's source, sent with EVAL (see `fire_chunk`): without its comment lines and
/// indentation (kept as empty lines, so that line numbers in Lua errors still match
/// `enqueue_lib.lua` then `fire.lua`), because Redis hashes the whole source (SHA1) on every
/// call: 15 KiB cost 1,400 instructions per fire, 7 KiB about half that.
static FIRE_SOURCE: LazyLock<String> = LazyLock::new(|| {
    format!("{}\n{}", enqueue_lua_lib(), include_str!("lua/fire.lua"))
        .lines()
        .map(|line| {
            let code = line.trim();
            if code.starts_with("--") { "" } else { code }
        })
        .collect::<Vec<_>>()
        .join("\n")
});

/// Most fires sent in one script call (bounds how long Redis is busy with one call).
pub const FIRE_CHUNK: usize = 500;
/// Fire script calls in flight at once on the connection.
pub const FIRE_PIPELINE: usize = 4;

/// Journal entries written per script call.
pub const JOURNAL_CHUNK: usize = 1000;

/// Entries kept in the global journal stream (approximately).
pub const DEFAULT_JOURNAL_LIMIT: usize = 10_000;
/// Non-routine entries kept per schedule.
pub const DEFAULT_SCHEDULE_JOURNAL_LIMIT: usize = 20;

/// The message a schedule last enqueued (its last actual fire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastMessage {
    pub queue: String,
    pub id: String,
    /// The nominal instant of the tick it was fired for.
    pub nominal: Option<DateTime<Utc>>,
}

pub struct RedisBeatStore {
    broker: Arc<RedisBroker>,
    beat_id: String,
    journal_limit: usize,
    schedule_journal_limit: usize,
}

impl RedisBeatStore {
    pub fn new(broker: Arc<RedisBroker>, beat_id: impl Into<String>) -> Self {
        RedisBeatStore {
            broker,
            beat_id: beat_id.into(),
            journal_limit: DEFAULT_JOURNAL_LIMIT,
            schedule_journal_limit: DEFAULT_SCHEDULE_JOURNAL_LIMIT,
        }
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.broker.prefix())
    }

    /// Pauses or resumes a schedule for every beat (survives restarts).
    pub async fn set_paused(&self, schedule: &str, paused: bool) -> Result<(), BrokerError> {
        let cmd = if paused { "SADD" } else { "SREM" };
        self.broker
            .command(redis::cmd(cmd).arg(self.key("beat:paused")).arg(schedule))
            .await?;
        Ok(())
    }

    /// The paused schedules.
    pub async fn paused(&self) -> Result<Vec<String>, BrokerError> {
        let v = self
            .broker
            .command(redis::cmd("SMEMBERS").arg(self.key("beat:paused")))
            .await?;
        Ok(strings(&v))
    }

    /// The current leader value (`token:epoch`) and its remaining lease, if any.
    pub async fn leader(&self) -> Result<Option<(String, Duration)>, BrokerError> {
        let key = self.key("beat:leader");
        let v = self.broker.command(redis::cmd("GET").arg(&key)).await?;
        let Some(value) = string(&v) else {
            return Ok(None);
        };
        let ttl = self.broker.command(redis::cmd("PTTL").arg(&key)).await?;
        let ms = int(&ttl).max(0) as u64;
        Ok(Some((value, Duration::from_millis(ms))))
    }

    /// Queue name and message id of each schedule's last fired message.
    pub async fn last_messages(
        &self,
        schedules: &[String],
    ) -> Result<Vec<Option<LastMessage>>, BrokerError> {
        if schedules.is_empty() {
            return Ok(Vec::new());
        }
        let v = self
            .broker
            .command(
                redis::cmd("HMGET")
                    .arg(self.key("beat:last"))
                    .arg(schedules),
            )
            .await?;
        Ok(items(&v)
            .iter()
            .map(|x| {
                string(x).and_then(|s| {
                    let mut parts = s.split('\t').skip(1);
                    Some(LastMessage {
                        queue: parts.next()?.to_string(),
                        id: parts.next()?.to_string(),
                        nominal: parts
                            .next()
                            .and_then(|ms| ms.parse::<i64>().ok())
                            .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
                    })
                })
            })
            .collect())
    }

    /// HMGET of Unix-ms instants from a hash of schedules (each value's leading digits:
    /// `beat:last` has more after them).
    async fn instants(
        &self,
        key: &str,
        schedules: &[String],
    ) -> Result<Vec<Option<DateTime<Utc>>>, BrokerError> {
        let mut out = Vec::with_capacity(schedules.len());
        for chunk in schedules.chunks(10_000) {
            let v = self
                .broker
                .command(redis::cmd("HMGET").arg(self.key(key)).arg(chunk))
                .await?;
            out.extend(items(&v).iter().map(|x| {
                string(x)
                    .and_then(|s| {
                        let digits = s.split('\t').next().unwrap_or_default();
                        digits.parse::<i64>().ok()
                    })
                    .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
            }));
        }
        Ok(out)
    }

    async fn fire_chunk(
        &self,
        leader: &LeaderToken,
        fires: &[Fire],
    ) -> Result<Vec<FireOutcome>, BrokerError> {
        let mut queues: Vec<&str> = Vec::new();
        let mut queue_index: HashMap<&str, usize> = HashMap::new();
        for f in fires {
            let q = f.message.queue.as_str();
            if !queue_index.contains_key(q) {
                queue_index.insert(q, queues.len());
                queues.push(q);
            }
        }
        // One transaction: the messages' bodies (one HSET per queue, plain Redis arguments,
        // cheaper than passing them through Lua), then the fire script, which decides each
        // tick and deletes the bodies of the ticks that do not fire. MULTI makes it
        // all-or-nothing for anyone watching (and a connection lost before EXEC runs
        // nothing); EVAL with the source, not EVALSHA, because a NOSCRIPT inside a
        // transaction would come after the bodies were written.
        let mut pipe = redis::pipe();
        pipe.atomic();
        for q in &queues {
            let hset = pipe.cmd("HSET").arg(self.broker.queue_keys(q).msg);
            for f in fires.iter().filter(|f| f.message.queue == *q) {
                hset.arg(&f.message.id).arg(f.message.to_json());
            }
            hset.ignore();
        }
        let eval = pipe
            .cmd("EVAL")
            .arg(FIRE_SOURCE.as_str())
            .arg(4 + 8 * queues.len())
            .arg(self.key("beat:leader"))
            .arg(self.key("beat:last"))
            .arg(self.key("beat:paused"))
            .arg(self.key("beat:journal"));
        for q in &queues {
            eval.arg(&self.broker.queue_keys(q).all()[..]);
        }
        // Runs of consecutive fires with the same parameters (a wave of minute crons is one):
        // the script parses each run's parameters once.
        let mut runs: Vec<(usize, String)> = Vec::new();
        for f in fires {
            use std::fmt::Write;
            let mut params = String::new();
            let _ = write!(
                params,
                "{} {} {} {} ",
                f.nominal.timestamp_millis(),
                queue_index[f.message.queue.as_str()],
                f.message.priority,
                f.message.eta.map_or(0, |t| t.timestamp_millis().max(0)),
            );
            if f.overlap_skip {
                params.push('o');
            }
            if f.catch_up {
                params.push('c');
            }
            match runs.last_mut() {
                Some((len, last)) if *last == params => *len += 1,
                _ => runs.push((1, params)),
            }
        }
        eval.arg(format!("{}:{}", leader.token, leader.epoch))
            .arg(self.broker.prefix())
            .arg(self.journal_limit)
            .arg(self.schedule_journal_limit)
            .arg(&self.beat_id)
            .arg(fires.len())
            .arg(queues.len())
            .arg(runs.len())
            .arg(if repeats_a_schedule(fires) { "1" } else { "0" })
            .arg(routine_journal_lines(fires));
        for q in &queues {
            eval.arg(*q);
        }
        for (len, params) in &runs {
            eval.arg(*len).arg(params.as_str());
        }
        for f in fires {
            eval.arg(&f.schedule).arg(&f.message.id);
        }
        let mut replies: Vec<Value> = self.broker.pipeline(&pipe).await?;
        let reply = replies.pop().unwrap_or(Value::Nil);
        let rows = items(&reply);
        if rows.len() != fires.len() {
            return Err(BrokerError::Backend(format!(
                "fire script returned {} outcomes for {} fires",
                rows.len(),
                fires.len()
            )));
        }
        Ok(rows
            .iter()
            .map(|row| match row {
                Value::Int(1) => FireOutcome::Fired,
                Value::Int(2) => FireOutcome::AlreadyFired,
                Value::Int(4) => FireOutcome::Paused,
                Value::Int(_) => FireOutcome::NotLeader,
                other => FireOutcome::SkippedOverlap {
                    running: string(other).unwrap_or_default(),
                },
            })
            .collect())
    }
}

#[async_trait]
impl BeatStore for RedisBeatStore {
    async fn claim(&self, token: &str, ttl: Duration) -> Result<Claim, BrokerError> {
        let mut inv = CLAIM.prepare_invoke();
        inv.key(self.key("beat:leader"))
            .key(self.key("beat:epoch"))
            .arg(token)
            .arg(ttl.as_millis().max(1) as u64);
        let reply = self.broker.invoke_script(&inv).await?;
        let parts = items(&reply);
        let num = |i: usize| parts.get(i).map(int).unwrap_or(0);
        Ok(match num(0) {
            2 => Claim::Acquired {
                epoch: num(1) as u64,
            },
            1 => Claim::Renewed {
                epoch: num(1) as u64,
            },
            _ => Claim::HeldByOther {
                ttl_left: Duration::from_millis(num(2).max(0) as u64),
            },
        })
    }

    async fn resign(&self, token: &str) -> Result<(), BrokerError> {
        let mut inv = RESIGN.prepare_invoke();
        inv.key(self.key("beat:leader")).arg(token);
        self.broker.invoke_script(&inv).await?;
        Ok(())
    }

    async fn fire(
        &self,
        leader: &LeaderToken,
        fires: &[Fire],
    ) -> Result<Vec<FireOutcome>, BrokerError> {
        use futures::StreamExt;
        use futures::stream::FuturesOrdered;
        // Chunks are pipelined on the connection (Redis runs them in order, each atomically)
        // so that encoding the next chunk overlaps with Redis running the previous one. Once
        // the lease is lost, every later chunk answers "not the leader" by itself.
        let mut out = Vec::with_capacity(fires.len());
        let mut chunks = fires.chunks(FIRE_CHUNK);
        let mut in_flight = FuturesOrdered::new();
        loop {
            while in_flight.len() < FIRE_PIPELINE {
                match chunks.next() {
                    Some(chunk) => in_flight.push_back(Box::pin(self.fire_chunk(leader, chunk))),
                    None => break,
                }
            }
            match in_flight.next().await {
                Some(outcomes) => out.extend(outcomes?),
                None => break,
            }
        }
        Ok(out)
    }

    async fn last_fired(
        &self,
        schedules: &[String],
    ) -> Result<Vec<Option<DateTime<Utc>>>, BrokerError> {
        self.instants("beat:last", schedules).await
    }

    async fn arm(&self, schedules: &[String], at: DateTime<Utc>) -> Result<(), BrokerError> {
        for chunk in schedules.chunks(10_000) {
            let mut inv = ARM.prepare_invoke();
            inv.key(self.key("beat:armed")).arg(at.timestamp_millis());
            for name in chunk {
                inv.arg(name);
            }
            self.broker.invoke_script(&inv).await?;
        }
        Ok(())
    }

    async fn armed(&self, schedules: &[String]) -> Result<Vec<Option<DateTime<Utc>>>, BrokerError> {
        self.instants("beat:armed", schedules).await
    }

    async fn disarm(&self, schedules: &[String]) -> Result<(), BrokerError> {
        for chunk in schedules.chunks(10_000) {
            self.broker
                .command(redis::cmd("HDEL").arg(self.key("beat:armed")).arg(chunk))
                .await?;
        }
        Ok(())
    }

    /// One script call per [`JOURNAL_CHUNK`] entries (`lua/journal.lua`): a takeover that
    /// journals a misfire for each of 100,000 schedules must not take one round trip each
    /// (the loop would miss its lease renewals meanwhile).
    async fn journal(&self, entries: &[JournalEntry]) -> Result<(), BrokerError> {
        for chunk in entries.chunks(JOURNAL_CHUNK) {
            let mut inv = JOURNAL.prepare_invoke();
            inv.key(self.key("beat:journal"))
                .arg(self.journal_limit)
                .arg(self.schedule_journal_limit)
                .arg(self.broker.prefix());
            for e in chunk {
                for (_, v) in journal_fields(e, &self.beat_id) {
                    inv.arg(v);
                }
            }
            self.broker.invoke_script(&inv).await?;
        }
        Ok(())
    }

    async fn read_journal(
        &self,
        schedule: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, BrokerError> {
        let mut entries = Vec::new();
        match schedule {
            None => {
                let v = self
                    .broker
                    .command(
                        redis::cmd("XREVRANGE")
                            .arg(self.key("beat:journal"))
                            .arg("+")
                            .arg("-")
                            .arg("COUNT")
                            .arg(limit),
                    )
                    .await?;
                entries.extend(parse_stream(&v));
                entries.truncate(limit);
            }
            Some(name) => {
                // Non-routine decisions from the schedule's own stream, routine fires from the
                // recent global stream.
                let own = self
                    .broker
                    .command(
                        redis::cmd("XREVRANGE")
                            .arg(self.key(&format!("beat:journal:{name}")))
                            .arg("+")
                            .arg("-")
                            .arg("COUNT")
                            .arg(limit),
                    )
                    .await?;
                entries.extend(parse_stream(&own));
                let global = self
                    .broker
                    .command(
                        redis::cmd("XREVRANGE")
                            .arg(self.key("beat:journal"))
                            .arg("+")
                            .arg("-")
                            .arg("COUNT")
                            .arg(self.journal_limit),
                    )
                    .await?;
                for e in parse_stream(&global) {
                    if e.schedule.as_deref() == Some(name) && !entries.contains(&e) {
                        entries.push(e);
                    }
                }
                entries.sort_by_key(|e| std::cmp::Reverse(e.at));
                entries.truncate(limit);
            }
        }
        Ok(entries)
    }
}

/// The fields of a journal entry, in the order `lua/journal.lua` takes them.
/// The fire script's journal entry for a batch whose every fire is a routine one (not a
/// catch-up, none skipped): a line "schedule\tqueue\tid\tnominal_ms" per fire. Built here,
/// where it is cheap, rather than by the script per fire; the script builds the lines itself
/// when the batch turns out otherwise. Empty when the batch holds a catch-up.
fn routine_journal_lines(fires: &[Fire]) -> String {
    use std::fmt::Write;
    if fires.iter().any(|f| f.catch_up) {
        return String::new();
    }
    let mut out = String::with_capacity(fires.len() * 64);
    for (i, f) in fires.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = write!(
            out,
            "{}\t{}\t{}\t{}",
            f.schedule,
            f.message.queue,
            f.message.id,
            f.nominal.timestamp_millis()
        );
    }
    out
}

/// Whether a batch holds a schedule more than once (several ticks of one schedule: a
/// catch-up, a backlog): the fire script then tracks each schedule's record within the batch.
fn repeats_a_schedule(fires: &[Fire]) -> bool {
    let mut seen = std::collections::HashSet::with_capacity(fires.len());
    !fires.iter().all(|f| seen.insert(f.schedule.as_str()))
}

fn journal_fields(e: &JournalEntry, beat: &str) -> Vec<(&'static str, String)> {
    vec![
        ("at", e.at.timestamp_millis().to_string()),
        ("schedule", e.schedule.clone().unwrap_or_default()),
        ("event", e.event.clone()),
        (
            "nominal",
            e.nominal
                .map(|n| n.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
                .unwrap_or_default(),
        ),
        ("fire_id", e.fire_id.clone().unwrap_or_default()),
        ("detail", e.detail.clone()),
        (
            "beat",
            if e.beat.is_empty() {
                beat.to_string()
            } else {
                e.beat.clone()
            },
        ),
    ]
}

fn parse_stream(v: &Value) -> Vec<JournalEntry> {
    let mut out = Vec::new();
    for entry in items(v) {
        let parts = items(entry);
        let Some(fields) = parts.get(1).map(items) else {
            continue;
        };
        let mut map: HashMap<String, String> = HashMap::new();
        for pair in fields.chunks(2) {
            if let [k, v] = pair
                && let Some(k) = string(k)
            {
                map.insert(k, string(v).unwrap_or_default());
            }
        }
        let get = |k: &str| map.get(k).cloned().unwrap_or_default();
        let Some(at) = get("at")
            .parse::<i64>()
            .ok()
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        else {
            continue;
        };
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        // RFC 3339, or Unix ms (what the fire script writes).
        let parse_nominal = |s: &str| match s.parse::<i64>() {
            Ok(ms) => Utc.timestamp_millis_opt(ms).single(),
            Err(_) => DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
        };
        match map.get("ticks") {
            // A batch of routine fires: one line per fire, newest last.
            Some(ticks) => {
                for line in ticks.lines().rev() {
                    let mut f = line.split('\t');
                    let (Some(schedule), Some(queue), Some(id), Some(nominal)) =
                        (f.next(), f.next(), f.next(), f.next())
                    else {
                        continue;
                    };
                    let nominal = parse_nominal(nominal);
                    out.push(JournalEntry {
                        at,
                        schedule: Some(schedule.to_string()),
                        event: get("event"),
                        nominal,
                        fire_id: nominal.map(|t| fire_id(schedule, t)),
                        detail: format!("message {id} on {queue}"),
                        beat: get("beat"),
                    });
                }
            }
            None => {
                let schedule = non_empty(get("schedule"));
                let nominal = parse_nominal(&get("nominal"));
                let fire_id = non_empty(get("fire_id")).or_else(|| match (&schedule, nominal) {
                    (Some(s), Some(t)) => Some(fire_id(s, t)),
                    _ => None,
                });
                out.push(JournalEntry {
                    at,
                    schedule,
                    event: get("event"),
                    nominal,
                    fire_id,
                    detail: get("detail"),
                    beat: get("beat"),
                })
            }
        }
    }
    out
}

fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) => a,
        _ => &[],
    }
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

fn string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn strings(v: &Value) -> Vec<String> {
    items(v).iter().filter_map(string).collect()
}
