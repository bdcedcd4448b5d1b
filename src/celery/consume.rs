//! Consuming Celery messages: [`CeleryBroker`], a [`Broker`] over kombu's Redis lists, so
//! that `celeriac worker` runs what Python clients `.delay()`.
//!
//! - **Reserve** (`lua/reserve.lua`, one script per queue): pops from kombu's priority lists,
//!   most urgent first (as kombu's BRPOP does), and records each message in celeriac's
//!   `unacked` hash under a fresh tag with a lease deadline in `unacked_index`, atomically.
//!   When nothing is ready the reserver waits without taking anything: `BLMOVE list list
//!   RIGHT RIGHT` on each list (its own connections) blocks until the list has a message and
//!   leaves it in place; then the script takes it. So no message is ever only in a worker's
//!   memory. (Before Redis 6.2, without BLMOVE, it waits in BRPOP and hands what it pops to
//!   the script: a crash in between loses that message, the window kombu's own consumer
//!   has between BRPOP and recording its `unacked` entry.)
//! - **Leases**: a running task's lease is extended by the worker; a lease that runs out (the
//!   worker died) is restored to the front of its list with `celeriac_attempt + 1` and
//!   kombu's `redelivered` flag, by the next reserve of any celeriac worker on the queue.
//! - **Ack** removes the reservation; nothing else is needed in kombu's format.
//! - **Retries** and messages with a future `eta` wait in celeriac's `delayed` set and go
//!   back to the back of their list when due.
//! - **Dead letters**: undecodable and foreign entries, unknown task names (also recorded as
//!   a FAILURE result with `NotRegistered`, like Celery does) and failures out of retries
//!   go to celeriac's `dead` list with the reason and the message as it was; `celeriac`
//!   can list and requeue them like any dead letters.
//! - **Results** go to the Celery app's result backend in Celery's format ([`super::result`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::{Script, Value as RedisValue};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::protocol::{self, CeleryMessage};
use super::publish::{celery_publish_plan, publish_plans};
use super::result::{celery_meta, from_celery_meta, result_key};
use super::{DEFAULT_DEDUPE_TTL, KombuKeys, celeriac_arguments};
use crate::broker::link::Link;
use crate::broker::{
    Broker, BrokerError, DeadLetter, DeadSelector, Delivery, Lease, MAX_REASON_BYTES,
    MAX_RESERVE_BATCH, QueueStats, Result, TaskMessage, TaskResult, Undecodable, redact,
};
use crate::config::{CeleryQueue, Config};

/// Extra time given to a BRPOP beyond its own timeout before giving up on it.
const BLOCKING_GRACE: Duration = Duration::from_secs(2);
/// Leases per ack / extend / release script call.
const LEASE_CHUNK: usize = 500;

struct Scripts {
    reserve: Script,
    ack: Script,
    extend: Script,
    release: Script,
    settle: Script,
    requeue_dead: Script,
    purge: Script,
    store_result: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    reserve: Script::new(include_str!("lua/reserve.lua")),
    ack: Script::new(include_str!("lua/ack.lua")),
    extend: Script::new(include_str!("lua/extend.lua")),
    release: Script::new(include_str!("lua/release.lua")),
    settle: Script::new(include_str!("lua/settle.lua")),
    requeue_dead: Script::new(include_str!("lua/requeue_dead.lua")),
    purge: Script::new(include_str!("lua/purge.lua")),
    store_result: Script::new(include_str!("lua/store_result.lua")),
});

/// Settings of a [`CeleryBroker`].
#[derive(Debug, Clone)]
pub struct CeleryBrokerOptions {
    /// Most dead letters kept per queue; the oldest are dropped beyond it.
    pub dead_letter_limit: usize,
    /// Most delayed messages promoted, and most expired leases restored, per reserve call
    /// and queue.
    pub work_limit: usize,
}

impl Default for CeleryBrokerOptions {
    fn default() -> Self {
        CeleryBrokerOptions {
            dead_letter_limit: 100_000,
            work_limit: 1000,
        }
    }
}

/// One celeriac queue that is a kombu queue.
struct KombuQueue {
    /// The celeriac queue name (what leases and messages carry).
    name: String,
    keys: KombuKeys,
    config: CeleryQueue,
}

/// A [`Broker`] over the kombu queues of one Celery app (one broker URL and result
/// backend). Built by [`open_brokers`] from the configuration.
pub struct CeleryBroker {
    link: Link,
    backend: Option<Link>,
    queues: BTreeMap<String, KombuQueue>,
    /// BRPOP keys: list key -> (celeriac queue, 1-based list index).
    list_owner: HashMap<String, (String, usize)>,
    /// Celery task name -> celeriac task (from `celery_name:`).
    celery_names: HashMap<String, String>,
    /// celeriac task names, to tell unknown tasks apart in results.
    known_tasks: HashSet<String>,
    options: CeleryBrokerOptions,
    rotation: AtomicUsize,
    /// The Redis has no BLMOVE: wait with BRPOP instead.
    no_blmove: AtomicBool,
    /// Ids of running messages sent with `ignore_result=True`: their success is not stored.
    ignore_result: Mutex<HashSet<String>>,
}

/// Most ids remembered for `ignore_result` (ids of results never stored are dropped beyond).
const MAX_IGNORED_IDS: usize = 100_000;

/// The brokers for the `protocol: celery` queues among `queues` (celeriac names), one per
/// Celery app (broker and backend URL), each with the queues it serves. Queues that are not
/// `protocol: celery` are left out.
pub async fn open_brokers(
    config: &Config,
    queues: &[String],
    options: CeleryBrokerOptions,
) -> Result<Vec<(Arc<dyn Broker>, Vec<String>)>> {
    type App = (String, Option<String>);
    let mut groups: BTreeMap<App, Vec<(String, CeleryQueue)>> = BTreeMap::new();
    for name in queues {
        if let Some(c) = config.queues.get(name).and_then(|q| q.celery.as_ref()) {
            groups
                .entry((c.broker.clone(), c.backend.clone()))
                .or_default()
                .push((name.clone(), c.clone()));
        }
    }
    let mut out = Vec::new();
    for (_, members) in groups {
        let names = members.iter().map(|(n, _)| n.clone()).collect();
        let broker = CeleryBroker::connect(config, members, options.clone()).await?;
        out.push((Arc::new(broker) as Arc<dyn Broker>, names));
    }
    Ok(out)
}

impl CeleryBroker {
    /// Connects to the Celery app's broker (and backend) of `queues` (celeriac name and
    /// settings; all with the same `broker` and `backend`). Task names are mapped with the
    /// configuration's `celery_name`s.
    pub async fn connect(
        config: &Config,
        queues: Vec<(String, CeleryQueue)>,
        options: CeleryBrokerOptions,
    ) -> Result<Self> {
        let Some((_, first)) = queues.first() else {
            return Err(BrokerError::InvalidQueue(String::new()));
        };
        let (broker_url, backend_url) = (first.broker.clone(), first.backend.clone());
        if let Some((name, _)) = queues
            .iter()
            .find(|(_, q)| q.broker != broker_url || q.backend != backend_url)
        {
            return Err(BrokerError::InvalidQueue(format!(
                "{name} (a CeleryBroker serves queues of one broker and backend)"
            )));
        }
        let link = super::link(&broker_url)?;
        link.get().await?;
        let backend = match &backend_url {
            Some(url) => {
                let l = super::link(url)?;
                l.get().await?;
                Some(l)
            }
            None => None,
        };
        let mut list_owner = HashMap::new();
        let mut map = BTreeMap::new();
        for (name, q) in queues {
            let keys = KombuKeys::new(&q);
            for (i, list) in keys.lists().iter().enumerate() {
                list_owner.insert(list.clone(), (name.clone(), i + 1));
            }
            map.insert(
                name.clone(),
                KombuQueue {
                    name,
                    keys,
                    config: q,
                },
            );
        }
        let celery_names = config
            .tasks
            .values()
            .flat_map(|t| t.celery_names.iter().map(|c| (c.clone(), t.name.clone())))
            .collect();
        tracing::debug!(
            broker = %redact(&broker_url),
            backend = %backend_url.as_deref().map(redact).unwrap_or_else(|| "none".into()),
            queues = %map.values().map(|q| format!("{}={}", q.name, q.keys.name)).collect::<Vec<_>>().join(","),
            "connected to a Celery app's Redis"
        );
        Ok(CeleryBroker {
            link,
            backend,
            queues: map,
            list_owner,
            celery_names,
            known_tasks: config.tasks.keys().cloned().collect(),
            options,
            rotation: AtomicUsize::new(0),
            no_blmove: AtomicBool::new(false),
            ignore_result: Mutex::new(HashSet::new()),
        })
    }

    fn queue(&self, name: &str) -> Result<&KombuQueue> {
        self.queues.get(name).ok_or_else(|| {
            BrokerError::InvalidQueue(format!("{name} (not a celery queue of this broker)"))
        })
    }

    /// One reserve script call on one queue.
    async fn reserve_script(
        &self,
        q: &KombuQueue,
        max: usize,
        lease: Duration,
        adopt: Option<(usize, &[u8])>,
    ) -> Result<ReserveReply> {
        let mut inv = SCRIPTS.reserve.prepare_invoke();
        inv.key(&q.keys.all[..])
            .arg(max)
            .arg(lease.as_millis().max(1) as u64)
            .arg(self.options.work_limit.max(1));
        match adopt {
            Some((index, raw)) => inv.arg("1").arg(index).arg(raw),
            None => inv.arg("0"),
        };
        parse_reserve(&super::invoke(&self.link, &inv).await?)
    }

    /// Restores expired reservations to the front of their lists, rewritten for their next
    /// delivery. Returns how many were restored.
    async fn restore_expired(
        &self,
        q: &KombuQueue,
        expired: Vec<(String, Vec<u8>)>,
    ) -> Result<usize> {
        let mut restored = 0;
        for (tag, stored) in expired {
            let (index, raw) = split_stored(&stored);
            let attempt = protocol::stored_attempt(raw) + 1;
            let why = "lease expired: the worker running it died or stopped extending its lease";
            let payload = protocol::rewrite_for_redelivery(raw, attempt, Some(why), true, None);
            if self.settle(q, "restore", &tag, &payload, index, 0).await? {
                restored += 1;
                tracing::warn!(queue = %q.name, tag = %tag, attempt, "lease expired; Celery message restored to its queue");
            }
        }
        Ok(restored)
    }

    async fn settle(
        &self,
        q: &KombuQueue,
        mode: &str,
        tag: &str,
        payload: &[u8],
        index: usize,
        score: i64,
    ) -> Result<bool> {
        let mut inv = SCRIPTS.settle.prepare_invoke();
        inv.key(&q.keys.all[..])
            .arg(mode)
            .arg(tag)
            .arg(payload)
            .arg(index)
            .arg(score)
            .arg(self.options.dead_letter_limit.max(1));
        Ok(int(&super::invoke(&self.link, &inv).await?)? == 1)
    }

    /// Turns reserved entries into deliveries; entries whose eta is in the future are moved
    /// to the delayed set instead.
    async fn accept(
        &self,
        q: &KombuQueue,
        taken: Vec<Taken>,
        lease_deadline: Instant,
        out: &mut Vec<Delivery>,
    ) -> Result<()> {
        let now = Utc::now();
        for t in taken {
            let token = t.tag.parse().unwrap_or(0);
            let lease = Lease {
                queue: q.name.clone(),
                id: t.tag.clone(),
                token,
            };
            let delivery = match protocol::decode(&t.raw) {
                Ok(m) => {
                    if let Some(eta) = m.task.eta.filter(|eta| *eta > now) {
                        let due = eta.timestamp_millis();
                        self.settle(q, "delay", &t.tag, &t.raw, t.index, due)
                            .await?;
                        continue;
                    }
                    if m.task.ignore_result {
                        let mut ids = self.ignore_result.lock().expect("ignore_result poisoned");
                        if ids.len() >= MAX_IGNORED_IDS {
                            ids.clear();
                        }
                        ids.insert(m.task.id.clone());
                    }
                    let attempt = m.properties.attempt;
                    let priority = protocol::celeriac_priority(m.properties.priority);
                    let last_error = m.properties.last_error.clone();
                    Delivery {
                        lease,
                        attempt,
                        priority,
                        last_error,
                        lease_deadline,
                        payload: Ok(self.task_message(q, m)),
                    }
                }
                Err(e) => Delivery {
                    lease,
                    attempt: protocol::stored_attempt(&t.raw),
                    priority: crate::broker::DEFAULT_PRIORITY,
                    last_error: None,
                    lease_deadline,
                    payload: Err(Undecodable {
                        body: t.raw,
                        error: format!("not a Celery task message celeriac can run: {e}"),
                    }),
                },
            };
            out.push(delivery);
        }
        Ok(())
    }

    /// The celeriac message for a Celery one: the Celery task name mapped to a celeriac task
    /// (`celery_name:`, else the same name), arguments as [`super::celeriac_arguments`].
    fn task_message(&self, q: &KombuQueue, m: CeleryMessage) -> TaskMessage {
        let CeleryMessage {
            task, properties, ..
        } = m;
        let (args, kwargs) = celeriac_arguments(&task.args, &task.kwargs);
        TaskMessage {
            task: self
                .celery_names
                .get(&task.task)
                .cloned()
                .unwrap_or_else(|| task.task.clone()),
            queue: q.name.clone(),
            priority: protocol::celeriac_priority(properties.priority),
            args,
            kwargs,
            fire_id: task
                .header_str(protocol::FIRE_ID_HEADER)
                .map(str::to_string),
            schedule: task
                .header_str(protocol::SCHEDULE_HEADER)
                .map(str::to_string),
            eta: task.eta,
            expires: task.expires,
            attempt: properties.attempt,
            enqueued_at: Utc::now(),
            signature: None,
            id: task.id,
        }
    }

    /// One non-blocking pass over the queues.
    async fn reserve_ready(
        &self,
        queues: &[&KombuQueue],
        max: usize,
        lease: Duration,
        wake: &mut Option<Duration>,
    ) -> Result<Vec<Delivery>> {
        let mut out = Vec::new();
        let first = self.rotation.fetch_add(1, Ordering::Relaxed) % queues.len();
        for k in 0..queues.len() {
            let q = queues[(first + k) % queues.len()];
            loop {
                let sent = Instant::now();
                let reply = self.reserve_script(q, max - out.len(), lease, None).await?;
                if let Some(w) = reply.wake_in {
                    *wake = Some(wake.map_or(w, |old| old.min(w)));
                }
                let restored = self.restore_expired(q, reply.expired).await?;
                self.accept(q, reply.taken, sent + lease, &mut out).await?;
                if restored == 0 || out.len() >= max {
                    break;
                }
            }
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// Waits up to `timeout` until one of the lists of `queues` has a message, without taking
    /// it: `BLMOVE list list RIGHT RIGHT` leaves a list as it was (the tail goes back to the
    /// tail) but blocks while it is empty. One connection per list, all at once; the first
    /// that returns wins and the others, still blocked in Redis, are closed. Nothing is taken
    /// here, so a worker that crashes while waiting loses nothing; the reserve script takes
    /// the message. Returns whether something arrived.
    async fn wait_for_message(&self, queues: &[&KombuQueue], timeout: Duration) -> Result<bool> {
        use futures::StreamExt;
        let lists: Vec<&String> = queues.iter().flat_map(|q| q.keys.lists()).collect();
        let mut conns = Vec::with_capacity(lists.len());
        for _ in &lists {
            conns.push(self.link.blocking().await?);
        }
        let secs = timeout.as_secs_f64().max(0.01);
        let mut waits: futures::stream::FuturesUnordered<_> = lists
            .iter()
            .zip(&conns)
            .enumerate()
            .map(|(i, (list, c))| {
                let mut conn = c.conn.clone();
                let mut cmd = redis::cmd("BLMOVE");
                cmd.arg(*list)
                    .arg(*list)
                    .arg("RIGHT")
                    .arg("RIGHT")
                    .arg(secs);
                async move { (i, cmd.query_async::<Option<Vec<u8>>>(&mut conn).await) }
            })
            .collect();
        let limit = Instant::now() + timeout + BLOCKING_GRACE;
        let mut done = vec![false; conns.len()];
        let mut arrived = false;
        let mut failure = None;
        loop {
            match tokio::time::timeout_at(limit, waits.next()).await {
                Err(_) => {
                    failure = Some(BrokerError::Timeout(timeout + BLOCKING_GRACE));
                    break;
                }
                Ok(None) => break,
                Ok(Some((i, Ok(moved)))) => {
                    done[i] = true;
                    if moved.is_some() {
                        arrived = true;
                        break;
                    }
                }
                Ok(Some((i, Err(e)))) => {
                    failure = Some(self.link.fail(conns[i].generation, e));
                    break;
                }
            }
        }
        drop(waits);
        // Connections whose command completed are reused; the others are still blocked.
        for (c, finished) in conns.into_iter().zip(done) {
            if finished {
                self.link.put_blocking(c);
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(arrived),
        }
    }

    /// Before Redis 6.2 (no BLMOVE): blocks in BRPOP on every list of `queues` (most urgent
    /// step first, then queue order, as kombu does) for up to `timeout`; what it pops is
    /// reserved at once. A crash between the two loses that message, as with kombu.
    async fn reserve_blocking(
        &self,
        queues: &[&KombuQueue],
        max: usize,
        lease: Duration,
        timeout: Duration,
    ) -> Result<Vec<Delivery>> {
        let steps = queues
            .iter()
            .map(|q| q.keys.lists().len())
            .max()
            .unwrap_or(0);
        let mut cmd = redis::cmd("BRPOP");
        for i in 0..steps {
            for q in queues {
                if let Some(list) = q.keys.lists().get(i) {
                    cmd.arg(list);
                }
            }
        }
        cmd.arg(timeout.as_secs_f64().max(0.01));
        let c = self.link.blocking().await?;
        let generation = c.generation;
        let mut conn = c.conn.clone();
        let popped: Option<(String, Vec<u8>)> = match tokio::time::timeout(
            timeout + BLOCKING_GRACE,
            cmd.query_async(&mut conn),
        )
        .await
        {
            Ok(Ok(v)) => {
                self.link.put_blocking(c);
                v
            }
            Ok(Err(e)) => return Err(self.link.fail(generation, e)),
            Err(_) => return Err(BrokerError::Timeout(timeout + BLOCKING_GRACE)),
        };
        let Some((key, raw)) = popped else {
            return Ok(Vec::new());
        };
        let Some((name, index)) = self.list_owner.get(&key) else {
            return Err(BrokerError::Backend(format!(
                "BRPOP returned an unknown key {key:?}"
            )));
        };
        let q = self.queue(name)?;
        let sent = Instant::now();
        let reply = self
            .reserve_script(q, max, lease, Some((*index, &raw)))
            .await?;
        self.restore_expired(q, reply.expired).await?;
        let mut out = Vec::new();
        self.accept(q, reply.taken, sent + lease, &mut out).await?;
        Ok(out)
    }

    /// Runs one script per queue over leases grouped by queue; results in lease order.
    async fn per_lease(
        &self,
        leases: &[Lease],
        script: &Script,
        all_keys: bool,
        head: Option<String>,
    ) -> Result<Vec<bool>> {
        let mut out = vec![false; leases.len()];
        let mut by_queue: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, l) in leases.iter().enumerate() {
            by_queue.entry(l.queue.as_str()).or_default().push(i);
        }
        for (queue, idxs) in by_queue {
            let q = self.queue(queue)?;
            for chunk in idxs.chunks(LEASE_CHUNK) {
                let mut inv = script.prepare_invoke();
                if all_keys {
                    inv.key(&q.keys.all[..]);
                } else {
                    inv.key(q.keys.unacked()).key(q.keys.index());
                }
                if let Some(h) = &head {
                    inv.arg(h);
                }
                for &i in chunk {
                    inv.arg(&leases[i].id);
                }
                let reply = super::invoke(&self.link, &inv).await?;
                let flags = ints(&reply)?;
                for (&i, flag) in chunk.iter().zip(flags) {
                    out[i] = flag == 1;
                }
            }
        }
        Ok(out)
    }

    /// The stored entry of a reservation: list index and message.
    async fn stored(&self, q: &KombuQueue, tag: &str) -> Result<Option<(usize, Vec<u8>)>> {
        let v: Option<Vec<u8>> = super::query(
            &self.link,
            redis::cmd("HGET").arg(q.keys.unacked()).arg(tag),
        )
        .await?;
        Ok(v.map(|stored| {
            let (i, raw) = split_stored(&stored);
            (i, raw.to_vec())
        }))
    }
}

/// A reserved entry.
struct Taken {
    tag: String,
    index: usize,
    raw: Vec<u8>,
}

struct ReserveReply {
    taken: Vec<Taken>,
    expired: Vec<(String, Vec<u8>)>,
    wake_in: Option<Duration>,
}

fn unexpected(v: &RedisValue) -> BrokerError {
    BrokerError::Backend(format!("unexpected reply from a celery script: {v:?}"))
}

fn int(v: &RedisValue) -> Result<i64> {
    match v {
        RedisValue::Int(i) => Ok(*i),
        RedisValue::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| unexpected(v)),
        RedisValue::Nil => Ok(0),
        _ => Err(unexpected(v)),
    }
}

fn ints(v: &RedisValue) -> Result<Vec<i64>> {
    match v {
        RedisValue::Array(items) => items.iter().map(int).collect(),
        _ => Err(unexpected(v)),
    }
}

fn bytes(v: &RedisValue) -> Result<Vec<u8>> {
    match v {
        RedisValue::BulkString(b) => Ok(b.clone()),
        RedisValue::SimpleString(s) => Ok(s.clone().into_bytes()),
        RedisValue::Int(i) => Ok(i.to_string().into_bytes()),
        _ => Err(unexpected(v)),
    }
}

fn parse_reserve(v: &RedisValue) -> Result<ReserveReply> {
    let RedisValue::Array(parts) = v else {
        return Err(unexpected(v));
    };
    let [taken, expired, wake] = parts.as_slice() else {
        return Err(unexpected(v));
    };
    let items = |x: &RedisValue| match x {
        RedisValue::Array(a) => Ok(a.clone()),
        RedisValue::Nil => Ok(Vec::new()),
        other => Err(unexpected(other)),
    };
    let taken = items(taken)?
        .chunks(3)
        .map(|c| match c {
            [tag, index, raw] => Ok(Taken {
                tag: String::from_utf8_lossy(&bytes(tag)?).into_owned(),
                index: int(index)?.max(1) as usize,
                raw: bytes(raw)?,
            }),
            _ => Err(unexpected(v)),
        })
        .collect::<Result<Vec<_>>>()?;
    let expired = items(expired)?
        .chunks(2)
        .map(|c| match c {
            [tag, stored] => Ok((
                String::from_utf8_lossy(&bytes(tag)?).into_owned(),
                bytes(stored)?,
            )),
            _ => Err(unexpected(v)),
        })
        .collect::<Result<Vec<_>>>()?;
    let wake = int(wake)?;
    Ok(ReserveReply {
        taken,
        expired,
        wake_in: (wake >= 0).then(|| Duration::from_millis(wake as u64)),
    })
}

/// `list_index \n message` as stored in the unacked hash.
fn split_stored(stored: &[u8]) -> (usize, &[u8]) {
    match stored.iter().position(|&b| b == b'\n') {
        Some(p) => (
            std::str::from_utf8(&stored[..p])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(1),
            &stored[p + 1..],
        ),
        None => (1, stored),
    }
}

/// A reason cut to [`MAX_REASON_BYTES`].
fn bounded(reason: &str) -> &str {
    if reason.len() <= MAX_REASON_BYTES {
        return reason;
    }
    let mut cut = MAX_REASON_BYTES;
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    &reason[..cut]
}

#[async_trait]
impl Broker for CeleryBroker {
    /// Publishes to kombu's lists (Celery protocol v2). kombu's lists cannot tell whether a
    /// message is already queued, so re-sending publishes again; beat ticks (with a
    /// `fire_id`) are pushed at most once.
    async fn enqueue_many(&self, messages: &[TaskMessage]) -> Result<usize> {
        let mut plans = Vec::with_capacity(messages.len());
        for m in messages {
            crate::broker::validate_message(m)?;
            let q = self.queue(&m.queue)?;
            plans.push(celery_publish_plan(m, &q.config));
        }
        let pushed = publish_plans(&self.link, &plans, DEFAULT_DEDUPE_TTL).await?;
        Ok(pushed.into_iter().filter(|p| *p).count())
    }

    async fn reserve(
        &self,
        queues: &[String],
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>> {
        if queues.is_empty() {
            return Err(BrokerError::InvalidQueue(String::new()));
        }
        let queues: Vec<&KombuQueue> = queues
            .iter()
            .map(|q| self.queue(q))
            .collect::<Result<_>>()?;
        let max = max.min(MAX_RESERVE_BATCH);
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + wait;
        loop {
            let mut wake = None;
            let ready = self.reserve_ready(&queues, max, lease, &mut wake).await?;
            if !ready.is_empty() {
                return Ok(ready);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let mut block = deadline - now;
            if let Some(w) = wake {
                // Something becomes due (a retry, an expired lease) before the wait ends.
                block = block.min(w.max(Duration::from_millis(10)));
            }
            if self.no_blmove.load(Ordering::Relaxed) {
                let popped = self.reserve_blocking(&queues, max, lease, block).await?;
                if !popped.is_empty() {
                    return Ok(popped);
                }
            } else {
                match self.wait_for_message(&queues, block).await {
                    // Something arrived (or the wait ended): look again.
                    Ok(_) => {}
                    Err(e) if e.to_string().contains("unknown command") => {
                        tracing::warn!(
                            "this Redis has no BLMOVE (before 6.2): waiting with BRPOP, which \
                             can lose the message in flight if the worker crashes right then"
                        );
                        self.no_blmove.store(true, Ordering::Relaxed);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }

    async fn ack_many(&self, leases: &[Lease]) -> Result<Vec<bool>> {
        self.per_lease(leases, &SCRIPTS.ack, false, None).await
    }

    async fn release(&self, leases: &[Lease]) -> Result<Vec<bool>> {
        self.per_lease(leases, &SCRIPTS.release, true, None).await
    }

    /// Puts the message in the delayed set until `eta`, with `celeriac_attempt + 1`, the
    /// reason, and Celery's `retries + 1` and `eta` headers (as `Task.retry()` would).
    async fn retry_later(&self, lease: &Lease, eta: DateTime<Utc>, reason: &str) -> Result<bool> {
        let q = self.queue(&lease.queue)?;
        let Some((index, raw)) = self.stored(q, &lease.id).await? else {
            return Ok(false);
        };
        let attempt = protocol::stored_attempt(&raw) + 1;
        let payload = protocol::rewrite_for_redelivery(
            &raw,
            attempt,
            Some(bounded(reason)),
            false,
            Some(eta),
        );
        self.settle(
            q,
            "delay",
            &lease.id,
            &payload,
            index,
            eta.timestamp_millis().max(0),
        )
        .await
    }

    async fn dead_letter(&self, lease: &Lease, reason: &str) -> Result<bool> {
        let q = self.queue(&lease.queue)?;
        let Some((index, raw)) = self.stored(q, &lease.id).await? else {
            return Ok(false);
        };
        let decoded = protocol::decode(&raw).ok();
        let record = json!({
            "id": decoded.as_ref().map_or_else(|| format!("tag:{}", lease.id), |m| m.task.id.clone()),
            "task": decoded.as_ref().map(|m| m.task.task.clone()),
            "reason": bounded(reason),
            "at": Utc::now().to_rfc3339(),
            "attempt": protocol::stored_attempt(&raw),
            "priority": decoded.as_ref().map_or(crate::broker::DEFAULT_PRIORITY, |m| protocol::celeriac_priority(m.properties.priority)),
            "list": index,
            "body": String::from_utf8_lossy(&raw),
        });
        self.settle(
            q,
            "dead",
            &lease.id,
            record.to_string().as_bytes(),
            index,
            0,
        )
        .await
    }

    async fn extend_lease(&self, leases: &[Lease], lease: Duration) -> Result<Vec<bool>> {
        let ms = lease.as_millis().max(1).to_string();
        self.per_lease(leases, &SCRIPTS.extend, false, Some(ms))
            .await
    }

    /// Writes the result to the Celery app's result backend in Celery's format (nothing
    /// when the queue has no `backend`).
    async fn store_result(&self, result: &TaskResult, ttl: Duration) -> Result<()> {
        let Some(backend) = &self.backend else {
            return Ok(());
        };
        // `apply_async(ignore_result=True)`: like Celery, store failures but not successes.
        let ignored = result.status.is_final()
            && self
                .ignore_result
                .lock()
                .expect("ignore_result poisoned")
                .remove(&result.id);
        if ignored && result.status == crate::broker::TaskStatus::Success {
            return Ok(());
        }
        let meta = celery_meta(result, self.known_tasks.contains(&result.task));
        let mut inv = SCRIPTS.store_result.prepare_invoke();
        inv.key(result_key("", &result.id))
            .arg(meta.to_string())
            .arg(ttl.as_secs().max(1));
        super::invoke(backend, &inv).await?;
        Ok(())
    }

    async fn get_result(&self, id: &str) -> Result<Option<TaskResult>> {
        let Some(backend) = &self.backend else {
            return Ok(None);
        };
        let raw: Option<Vec<u8>> =
            super::query(backend, redis::cmd("GET").arg(result_key("", id))).await?;
        let Some(raw) = raw else { return Ok(None) };
        let meta: Value = serde_json::from_slice(&raw).map_err(|e| BrokerError::Decode {
            what: format!("Celery result {id}"),
            reason: e.to_string(),
        })?;
        Ok(from_celery_meta(id, &meta))
    }

    async fn wait_result(&self, id: &str, timeout: Duration) -> Result<Option<TaskResult>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.get_result(id).await? {
                return Ok(Some(r));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            tokio::time::sleep((deadline - now).min(Duration::from_millis(50))).await;
        }
    }

    async fn queue_stats(&self, queue: &str) -> Result<QueueStats> {
        let q = self.queue(queue)?;
        let mut pipe = redis::pipe();
        for list in q.keys.lists() {
            pipe.cmd("LLEN").arg(list);
        }
        pipe.cmd("ZCARD").arg(q.keys.delayed());
        pipe.cmd("HLEN").arg(q.keys.unacked());
        pipe.cmd("LLEN").arg(q.keys.dead());
        let c = self.link.get().await?;
        let mut conn = c.conn;
        let counts: Vec<u64> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| self.link.fail(c.generation, e))?;
        let mut stats = QueueStats::default();
        let n = q.keys.lists().len();
        for (step, count) in q.keys.steps.iter().zip(&counts[..n]) {
            stats.ready[protocol::celeriac_priority(*step) as usize] += count;
        }
        stats.delayed = counts[n];
        stats.active = counts[n + 1];
        stats.dead = counts[n + 2];
        Ok(stats)
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        let q = self.queue(queue)?;
        let mut inv = SCRIPTS.purge.prepare_invoke();
        inv.key(&q.keys.all[..]);
        Ok(int(&super::invoke(&self.link, &inv).await?)?.max(0) as u64)
    }

    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        let q = self.queue(queue)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let records: Vec<Vec<u8>> = super::query(
            &self.link,
            redis::cmd("LRANGE")
                .arg(q.keys.dead())
                .arg(0)
                .arg(limit - 1),
        )
        .await?;
        Ok(records.iter().filter_map(|r| dead_letter_of(r)).collect())
    }

    async fn requeue_dead(&self, queue: &str, which: DeadSelector) -> Result<u64> {
        let q = self.queue(queue)?;
        let records: Vec<Vec<u8>> = super::query(
            &self.link,
            redis::cmd("LRANGE").arg(q.keys.dead()).arg(0).arg(-1),
        )
        .await?;
        let mut n = 0;
        for record in records {
            let Ok(v) = serde_json::from_slice::<Value>(&record) else {
                continue;
            };
            let id = v.get("id").and_then(Value::as_str).unwrap_or_default();
            if let DeadSelector::Id(want) = &which
                && want != id
            {
                continue;
            }
            let body = v.get("body").and_then(Value::as_str).unwrap_or_default();
            let index = v.get("list").and_then(Value::as_u64).unwrap_or(1);
            let payload = protocol::rewrite_for_redelivery(body.as_bytes(), 0, None, false, None);
            let mut inv = SCRIPTS.requeue_dead.prepare_invoke();
            inv.key(&q.keys.all[..])
                .arg(&record)
                .arg(index)
                .arg(payload);
            if int(&super::invoke(&self.link, &inv).await?)? == 1 {
                n += 1;
            }
        }
        Ok(n)
    }

    async fn ping(&self) -> Result<()> {
        let _: String = super::query(&self.link, &redis::cmd("PING")).await?;
        if let Some(b) = &self.backend {
            let _: String = super::query(b, &redis::cmd("PING")).await?;
        }
        Ok(())
    }
}

fn dead_letter_of(record: &[u8]) -> Option<DeadLetter> {
    let v: Value = serde_json::from_slice(record).ok()?;
    Some(DeadLetter {
        id: v.get("id")?.as_str()?.to_string(),
        reason: v
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        at: v
            .get("at")
            .and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map_or_else(Utc::now, |t| t.with_timezone(&Utc)),
        attempt: v.get("attempt").and_then(Value::as_u64).unwrap_or(0) as u32,
        priority: v
            .get("priority")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min(9) as u8,
        body: v
            .get("body")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_entries_split_at_the_first_newline() {
        assert_eq!(
            split_stored(b"2\n{\"a\":\"x\ny\"}"),
            (2, &b"{\"a\":\"x\ny\"}"[..])
        );
        assert_eq!(split_stored(b"garbage"), (1, &b"garbage"[..]));
    }

    #[test]
    fn reserve_reply_parses() {
        let v = RedisValue::Array(vec![
            RedisValue::Array(vec![
                RedisValue::BulkString(b"7".to_vec()),
                RedisValue::Int(2),
                RedisValue::BulkString(b"{}".to_vec()),
            ]),
            RedisValue::Array(vec![]),
            RedisValue::Int(-1),
        ]);
        let r = parse_reserve(&v).unwrap();
        assert_eq!((r.taken[0].tag.as_str(), r.taken[0].index), ("7", 2));
        assert!(r.wake_in.is_none() && r.expired.is_empty());
    }
}
