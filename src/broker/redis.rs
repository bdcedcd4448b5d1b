//! The Redis broker.
//!
//! Layout (see [`keys`](super::keys) and `docs/broker.md`): per queue a ready ZSET scored
//! `(9 - priority) * 2^44 + seq`, a delayed ZSET by eta, an active ZSET by lease deadline, a
//! body HASH, a meta HASH (priority, attempt, lease token, last error), a sequence counter, a
//! signal LIST and a dead-letter LIST, all under the hash tag `{q:NAME}`. Every state
//! transition of a message is one Lua script (`lua/*.lua`), touching one queue's keys only.
//!
//! Reserving from several queues: each queue's script first promotes due delayed messages,
//! requeues expired leases and reports the priority at the head of its ready set (one pipelined
//! round trip for all queues); the client then pops from the queue with the best head, only
//! messages of at least the best priority among the other queues, and repeats until it has
//! `max` or nothing is left. Equal heads are served round-robin. When nothing is ready the
//! reserver blocks in BLPOP on the queues' signal lists (its own connection) until an enqueue
//! pushes a marker, the next delayed message is due, the next lease expires, or `wait` ends.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use futures::future::try_join_all;
use redis::Value;
use tokio::time::Instant;

use super::keys::{DEFAULT_PREFIX, QueueKeys, result_key};
pub use super::link::LinkTransitions;
use super::link::{Link, LinkOptions};
use super::scripts::SCRIPTS;
use super::{
    Broker, BrokerError, DeadLetter, DeadSelector, Delivery, Lease, MAX_RESERVE_BATCH, QueueStats,
    Result, TaskMessage, TaskResult, Undecodable, bounded_reason, decode_payload, validate_message,
    validate_queue,
};

/// Messages per enqueue script call.
const ENQUEUE_CHUNK: usize = 1000;
/// Leases per ack / extend / release script call.
const LEASE_CHUNK: usize = 500;
/// Messages removed per purge script call.
const PURGE_CHUNK: usize = 5000;
/// Results stored per pipeline.
const RESULT_CHUNK: usize = 500;
/// Dead letters looked at per requeue script call.
const DEAD_CHUNK: usize = 500;
/// Upper bound of `reserve_work_limit` (Lua's `unpack` takes at most ~8000 values).
const MAX_WORK_LIMIT: usize = 4000;
/// Extra time given to a blocking command beyond its own timeout before giving up on it.
const BLOCKING_GRACE: Duration = Duration::from_secs(2);

/// Settings of a [`RedisBroker`].
#[derive(Debug, Clone)]
pub struct RedisBrokerOptions {
    /// Prefix of every key (default `celeriac:`).
    pub prefix: String,
    /// Longest wait for a new connection.
    pub connect_timeout: Duration,
    /// Longest wait for the answer to a non-blocking command.
    pub response_timeout: Duration,
    /// First reconnect backoff (doubles per failed attempt, with jitter).
    pub reconnect_min: Duration,
    /// Longest reconnect backoff.
    pub reconnect_max: Duration,
    /// PEM file of CA certificates to trust for `rediss://` (default: the web PKI roots).
    pub tls_ca_file: Option<PathBuf>,
    /// Most dead letters kept per queue; the oldest are dropped beyond it.
    pub dead_letter_limit: usize,
    /// Most delayed messages promoted, and most expired leases requeued, per reserve call and
    /// queue (bounds the time one script call runs; at most 4000).
    pub reserve_work_limit: usize,
}

impl Default for RedisBrokerOptions {
    fn default() -> Self {
        RedisBrokerOptions {
            prefix: DEFAULT_PREFIX.to_string(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            tls_ca_file: None,
            dead_letter_limit: 100_000,
            reserve_work_limit: 1000,
        }
    }
}

/// A [`Broker`] on Redis.
pub struct RedisBroker {
    link: Link,
    options: RedisBrokerOptions,
    /// Where round-robin between equal-priority queues starts next.
    rotation: AtomicUsize,
}

/// What one reserve script call reported.
struct ReserveReply {
    /// Priority at the head of the ready set after the call, if anything is ready.
    head: Option<u8>,
    /// When the call should be repeated even without a signal (next eta or lease expiry).
    wake_in: Option<Duration>,
    items: Vec<ReservedItem>,
}

struct ReservedItem {
    id: String,
    body: Option<Vec<u8>>,
    priority: u8,
    attempt: u32,
    token: u64,
    last_error: Option<String>,
}

impl RedisBroker {
    /// Connects to Redis at `url` (`redis://[user:password@]host[:port][/db]`, `rediss://...`,
    /// `unix:///path.sock[?db=N&user=U&pass=P]`, `redis+unix://...`). Fails when Redis cannot be
    /// reached now (a transient error: the caller decides whether to wait or give up).
    pub async fn connect(url: &str, options: RedisBrokerOptions) -> Result<Self> {
        let tls_ca_pem = match &options.tls_ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                BrokerError::Tls(format!("cannot read CA file {}: {e}", path.display()))
            })?),
            None => None,
        };
        let link = Link::new(
            url,
            LinkOptions {
                connect_timeout: options.connect_timeout,
                response_timeout: options.response_timeout,
                reconnect_min: options.reconnect_min,
                reconnect_max: options.reconnect_max,
                tls_ca_pem,
            },
        )?;
        link.get().await?;
        Ok(RedisBroker {
            link,
            options,
            rotation: AtomicUsize::new(0),
        })
    }

    /// The broker URL with the password hidden.
    pub fn url(&self) -> &str {
        self.link.url()
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.options.prefix
    }

    /// The keys of a queue.
    pub fn queue_keys(&self, queue: &str) -> QueueKeys {
        QueueKeys::new(&self.options.prefix, queue)
    }

    /// How often the connection was lost and restored (each logged once).
    pub fn link_transitions(&self) -> LinkTransitions {
        self.link.transitions()
    }

    /// Runs a script on the broker's shared connection (EVALSHA, loading it on NOSCRIPT),
    /// with the broker's reconnect handling and error classification. For scripts built on
    /// [`enqueue_lua_lib`](super::enqueue_lua_lib), such as the beat's fire script.
    pub async fn invoke_script(&self, invocation: &redis::ScriptInvocation<'_>) -> Result<Value> {
        let c = self.link.get().await?;
        let mut conn = c.conn;
        invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.link.fail(c.generation, e))
    }

    /// Runs a pipeline (or, `atomic`, a MULTI/EXEC transaction) on the broker's shared
    /// connection; the replies of the commands not ignored.
    pub async fn pipeline<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T> {
        let c = self.link.get().await?;
        let mut conn = c.conn;
        pipe.query_async(&mut conn)
            .await
            .map_err(|e| self.link.fail(c.generation, e))
    }

    /// Runs one (non-blocking) command on the broker's shared connection.
    pub async fn command(&self, cmd: &redis::Cmd) -> Result<Value> {
        self.query(cmd).await
    }

    /// Runs a command on the shared connection and converts the reply.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        let c = self.link.get().await?;
        let mut conn = c.conn;
        cmd.query_async(&mut conn)
            .await
            .map_err(|e| self.link.fail(c.generation, e))
    }

    /// Enqueues messages of one queue, in order.
    async fn enqueue_queue(&self, queue: &str, messages: &[&TaskMessage]) -> Result<usize> {
        let keys = self.queue_keys(queue);
        let mut added = 0;
        for chunk in messages.chunks(ENQUEUE_CHUNK) {
            let mut inv = SCRIPTS.enqueue.prepare_invoke();
            inv.key(&keys.all()[..]).arg(chunk.len());
            for m in chunk {
                inv.arg(&m.id)
                    .arg(m.priority)
                    .arg(m.attempt)
                    .arg(m.eta.map_or(0, |t| t.timestamp_millis()))
                    .arg(m.to_json());
            }
            added += int(&self.invoke_script(&inv).await?)? as usize;
        }
        Ok(added)
    }

    /// One reserve script call on one queue.
    async fn reserve_call(
        &self,
        queue: &str,
        max: usize,
        lease: Duration,
        min_priority: u8,
    ) -> Result<ReserveReply> {
        let keys = self.queue_keys(queue);
        let mut inv = SCRIPTS.reserve.prepare_invoke();
        inv.key(&keys.all()[..])
            .arg(max)
            .arg(lease.as_millis().max(1) as u64)
            .arg(min_priority)
            .arg(self.options.reserve_work_limit.clamp(1, MAX_WORK_LIMIT));
        parse_reserve(self.invoke_script(&inv).await?)
    }

    /// Reserves without waiting. Returns the deliveries and, when there are none, when to
    /// look again even without a signal.
    async fn try_reserve(
        &self,
        queues: &[String],
        max: usize,
        lease: Duration,
    ) -> Result<(Vec<Delivery>, Option<Duration>)> {
        let lease_deadline = Instant::now() + lease;
        let mut out = Vec::new();
        let deliver = |queue: &str, items: Vec<ReservedItem>, out: &mut Vec<Delivery>| {
            out.extend(
                items
                    .into_iter()
                    .map(|it| delivery(queue, it, lease_deadline)),
            );
        };
        if let [queue] = queues {
            let r = self.reserve_call(queue, max, lease, 0).await?;
            deliver(queue, r.items, &mut out);
            return Ok((out, r.wake_in));
        }
        let peeks = try_join_all(queues.iter().map(|q| self.reserve_call(q, 0, lease, 0))).await?;
        let mut wake_in = peeks.iter().filter_map(|p| p.wake_in).min();
        let mut heads: Vec<Option<u8>> = peeks.iter().map(|p| p.head).collect();
        let n = queues.len();
        let start = self.rotation.fetch_add(1, Ordering::Relaxed) % n;
        for _ in 0..2 * n + 2 {
            let remaining = max - out.len();
            let Some(best_priority) = heads.iter().flatten().max().copied() else {
                break;
            };
            if remaining == 0 {
                break;
            }
            let best = (0..n)
                .map(|i| (start + i) % n)
                .find(|&i| heads[i] == Some(best_priority))
                .expect("a queue has the best head");
            let floor = (0..n)
                .filter(|&i| i != best)
                .filter_map(|i| heads[i])
                .max()
                .unwrap_or(0);
            let r = self
                .reserve_call(&queues[best], remaining, lease, floor)
                .await?;
            heads[best] = r.head;
            wake_in = [wake_in, r.wake_in].into_iter().flatten().min();
            deliver(&queues[best], r.items, &mut out);
        }
        if heads.iter().any(Option::is_some) {
            wake_in = Some(Duration::ZERO);
        }
        Ok((out, wake_in))
    }

    /// Blocks until a signal on one of the queues, or `until`.
    async fn wait_signal(&self, queues: &[String], until: Instant) -> Result<()> {
        let timeout = until.saturating_duration_since(Instant::now());
        if timeout.is_zero() {
            return Ok(());
        }
        let c = self.link.blocking().await?;
        let mut cmd = redis::cmd("BLPOP");
        for q in queues {
            cmd.arg(self.queue_keys(q).signal);
        }
        cmd.arg(blocking_timeout_arg(timeout));
        self.run_blocking(c, &cmd, timeout).await.map(|_| ())
    }

    /// Runs a blocking command on its own connection, bounded by `timeout` plus a grace.
    async fn run_blocking(
        &self,
        c: super::link::Conn,
        cmd: &redis::Cmd,
        timeout: Duration,
    ) -> Result<Value> {
        let mut conn = c.conn.clone();
        match tokio::time::timeout(timeout + BLOCKING_GRACE, cmd.query_async(&mut conn)).await {
            Ok(Ok(v)) => {
                self.link.put_blocking(c);
                Ok(v)
            }
            Ok(Err(e)) => Err(self.link.fail(c.generation, e)),
            // The connection may still have the command pending: drop it, do not reuse it.
            Err(_) => Err(BrokerError::Timeout(timeout + BLOCKING_GRACE)),
        }
    }

    /// Runs a lease script (ack, extend, retry) over leases grouped by queue, in chunks, and
    /// puts the per-lease answers back in the callers' order.
    async fn per_lease<'a>(
        &self,
        leases: &'a [Lease],
        script: &redis::Script,
        head_args: &[Vec<u8>],
    ) -> Result<Vec<bool>> {
        let mut by_queue: Vec<(&'a str, Vec<usize>)> = Vec::new();
        let mut index: HashMap<&'a str, usize> = HashMap::new();
        for (i, l) in leases.iter().enumerate() {
            validate_queue(&l.queue)?;
            let slot = *index.entry(&l.queue).or_insert_with(|| {
                by_queue.push((&l.queue, Vec::new()));
                by_queue.len() - 1
            });
            by_queue[slot].1.push(i);
        }
        let calls = by_queue.iter().flat_map(|(queue, idx)| {
            idx.chunks(LEASE_CHUNK).map(move |chunk| async move {
                let keys = self.queue_keys(queue);
                let mut inv = script.prepare_invoke();
                inv.key(&keys.all()[..]);
                for a in head_args {
                    inv.arg(&a[..]);
                }
                for &i in chunk {
                    inv.arg(&leases[i].id).arg(leases[i].token);
                }
                let answers = bools(self.invoke_script(&inv).await?, chunk.len())?;
                Ok::<_, BrokerError>(chunk.iter().copied().zip(answers).collect::<Vec<_>>())
            })
        });
        let mut out = vec![false; leases.len()];
        for (i, ok) in try_join_all(calls).await?.into_iter().flatten() {
            out[i] = ok;
        }
        Ok(out)
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn enqueue_many(&self, messages: &[TaskMessage]) -> Result<usize> {
        let mut by_queue: Vec<(&str, Vec<&TaskMessage>)> = Vec::new();
        for m in messages {
            validate_message(m)?;
            match by_queue.iter_mut().find(|(q, _)| *q == m.queue) {
                Some((_, list)) => list.push(m),
                None => by_queue.push((&m.queue, vec![m])),
            }
        }
        let added = try_join_all(
            by_queue
                .iter()
                .map(|(queue, list)| self.enqueue_queue(queue, list)),
        )
        .await?;
        Ok(added.into_iter().sum())
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
        for q in queues {
            validate_queue(q)?;
        }
        let max = max.min(MAX_RESERVE_BATCH);
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(50);
        loop {
            let step = match self.try_reserve(queues, max, lease).await {
                Ok((deliveries, _)) if !deliveries.is_empty() => return Ok(deliveries),
                Ok((_, wake_in)) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(Vec::new());
                    }
                    let until = wake_in.map_or(deadline, |w| deadline.min(now + w));
                    self.wait_signal(queues, until).await
                }
                Err(e) => Err(e),
            };
            match step {
                Ok(()) => {}
                Err(e) if e.is_transient() => {
                    // Redis is unreachable or busy: wait for the next reconnect slot (or a
                    // growing pause), within the caller's budget; never spin.
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(e);
                    }
                    let until = self.link.next_retry().unwrap_or(now + pause).min(deadline);
                    pause = (pause * 2).min(Duration::from_secs(1));
                    tokio::time::sleep_until(until).await;
                    if until >= deadline {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn ack_many(&self, leases: &[Lease]) -> Result<Vec<bool>> {
        self.per_lease(leases, &SCRIPTS.ack, &[]).await
    }

    async fn release(&self, leases: &[Lease]) -> Result<Vec<bool>> {
        let head = [b"0".to_vec(), b"0".to_vec(), b"1".to_vec(), Vec::new()];
        self.per_lease(leases, &SCRIPTS.retry, &head).await
    }

    async fn retry_later(&self, lease: &Lease, eta: DateTime<Utc>, reason: &str) -> Result<bool> {
        let reason = if reason.is_empty() { "retry" } else { reason };
        let head = [
            eta.timestamp_millis().max(0).to_string().into_bytes(),
            b"1".to_vec(),
            b"0".to_vec(),
            bounded_reason(reason).as_bytes().to_vec(),
        ];
        Ok(self
            .per_lease(std::slice::from_ref(lease), &SCRIPTS.retry, &head)
            .await?[0])
    }

    async fn dead_letter(&self, lease: &Lease, reason: &str) -> Result<bool> {
        validate_queue(&lease.queue)?;
        let keys = self.queue_keys(&lease.queue);
        let mut inv = SCRIPTS.dead_letter.prepare_invoke();
        inv.key(&keys.all()[..])
            .arg(&lease.id)
            .arg(lease.token)
            .arg(bounded_reason(reason))
            .arg(self.options.dead_letter_limit.max(1));
        Ok(int(&self.invoke_script(&inv).await?)? == 1)
    }

    async fn extend_lease(&self, leases: &[Lease], lease: Duration) -> Result<Vec<bool>> {
        let head = [lease.as_millis().max(1).to_string().into_bytes()];
        self.per_lease(leases, &SCRIPTS.extend, &head).await
    }

    async fn store_result(&self, result: &TaskResult, ttl: Duration) -> Result<()> {
        let json = encode_result(result)?;
        let mut inv = SCRIPTS.store_result.prepare_invoke();
        inv.key(result_key(&self.options.prefix, &result.id))
            .arg(json)
            .arg(ttl.as_millis().max(1) as u64);
        self.invoke_script(&inv).await.map(|_| ())
    }

    async fn store_results(&self, results: &[TaskResult], ttl: Duration) -> Result<()> {
        // One pipeline of EVALSHA store_result per chunk: one round trip and one request for
        // the connection, instead of one each per result.
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let sha = SCRIPTS.store_result.get_hash();
        for chunk in results.chunks(RESULT_CHUNK) {
            let mut pipe = redis::pipe();
            for r in chunk {
                pipe.cmd("EVALSHA")
                    .arg(sha)
                    .arg(1)
                    .arg(result_key(&self.options.prefix, &r.id))
                    .arg(encode_result(r)?)
                    .arg(ttl_ms)
                    .ignore();
            }
            let c = self.link.get().await?;
            let mut conn = c.conn;
            match pipe.query_async::<()>(&mut conn).await {
                Ok(()) => {}
                // Scripts are loaded on every connect; NOSCRIPT means someone flushed them.
                // The one-by-one path loads the script again.
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    for r in chunk {
                        self.store_result(r, ttl).await?;
                    }
                }
                Err(e) => return Err(self.link.fail(c.generation, e)),
            }
        }
        Ok(())
    }

    async fn get_result(&self, id: &str) -> Result<Option<TaskResult>> {
        let mut cmd = redis::cmd("LINDEX");
        cmd.arg(result_key(&self.options.prefix, id)).arg(0);
        let raw: Option<Vec<u8>> = self.query(&cmd).await?;
        raw.map(|b| decode_result(&b)).transpose()
    }

    async fn wait_result(&self, id: &str, timeout: Duration) -> Result<Option<TaskResult>> {
        if let Some(r) = self.get_result(id).await? {
            return Ok(Some(r));
        }
        if timeout.is_zero() {
            return Ok(None);
        }
        // BLMOVE key key: returns the element once the result exists and leaves it in place
        // (rotating a one-element list onto itself), so any number of waiters see it.
        let key = result_key(&self.options.prefix, id);
        let mut cmd = redis::cmd("BLMOVE");
        cmd.arg(&key)
            .arg(&key)
            .arg("RIGHT")
            .arg("RIGHT")
            .arg(blocking_timeout_arg(timeout));
        let c = self.link.blocking().await?;
        match self.run_blocking(c, &cmd, timeout).await? {
            Value::Nil => Ok(None),
            v => {
                let raw: Vec<u8> =
                    redis::from_redis_value(v).map_err(|e| BrokerError::Backend(e.to_string()))?;
                decode_result(&raw).map(Some)
            }
        }
    }

    async fn queue_stats(&self, queue: &str) -> Result<QueueStats> {
        validate_queue(queue)?;
        let k = self.queue_keys(queue);
        let band = 1u64 << 44;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for p in 0..=9u64 {
            pipe.cmd("ZCOUNT")
                .arg(&k.ready)
                .arg((9 - p) * band)
                .arg((10 - p) * band - 1);
        }
        pipe.cmd("ZCARD").arg(&k.delayed);
        pipe.cmd("ZCARD").arg(&k.active);
        pipe.cmd("LLEN").arg(&k.dead);
        let c = self.link.get().await?;
        let mut conn = c.conn;
        let counts: Vec<u64> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| self.link.fail(c.generation, e))?;
        let mut stats = QueueStats::default();
        stats.ready.copy_from_slice(&counts[..10]);
        stats.delayed = counts[10];
        stats.active = counts[11];
        stats.dead = counts[12];
        Ok(stats)
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        validate_queue(queue)?;
        let keys = self.queue_keys(queue);
        let mut total = 0;
        loop {
            let mut inv = SCRIPTS.purge.prepare_invoke();
            inv.key(&keys.all()[..]).arg(PURGE_CHUNK);
            let removed = int(&self.invoke_script(&inv).await?)? as u64;
            total += removed;
            if removed == 0 {
                return Ok(total);
            }
        }
    }

    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        validate_queue(queue)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("LRANGE");
        cmd.arg(self.queue_keys(queue).dead).arg(0).arg(limit - 1);
        let raw: Vec<Vec<u8>> = self.query(&cmd).await?;
        raw.iter().map(|e| decode_dead_letter(e)).collect()
    }

    async fn requeue_dead(&self, queue: &str, which: DeadSelector) -> Result<u64> {
        validate_queue(queue)?;
        let keys = self.queue_keys(queue);
        match which {
            DeadSelector::All => {
                let mut cmd = redis::cmd("LLEN");
                cmd.arg(&keys.dead);
                // Look at each entry present now at most once (undecodable ones stay).
                let mut left: u64 = self.query(&cmd).await?;
                let mut requeued = 0;
                while left > 0 {
                    let take = left.min(DEAD_CHUNK as u64);
                    let mut inv = SCRIPTS.requeue_dead.prepare_invoke();
                    inv.key(&keys.all()[..]).arg("all").arg(take);
                    let reply = ints(self.invoke_script(&inv).await?)?;
                    requeued += reply[0] as u64;
                    if reply[1] == 0 {
                        break;
                    }
                    left = left.saturating_sub(reply[1] as u64);
                }
                Ok(requeued)
            }
            DeadSelector::Id(id) => {
                let mut start = 0i64;
                loop {
                    let mut inv = SCRIPTS.requeue_dead.prepare_invoke();
                    inv.key(&keys.all()[..])
                        .arg("id")
                        .arg(&id)
                        .arg(start)
                        .arg(DEAD_CHUNK);
                    let reply = ints(self.invoke_script(&inv).await?)?;
                    if reply[0] > 0 || reply[1] < 0 {
                        return Ok(reply[0] as u64);
                    }
                    start = reply[1];
                }
            }
        }
    }

    async fn ping(&self) -> Result<()> {
        let _: String = self.query(&redis::cmd("PING")).await?;
        Ok(())
    }
}

/// The timeout argument of a blocking command, in seconds with millisecond precision and at
/// least 1 ms (0 would block forever).
fn blocking_timeout_arg(timeout: Duration) -> String {
    let ms = timeout.as_millis().max(1);
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

fn delivery(queue: &str, it: ReservedItem, lease_deadline: Instant) -> Delivery {
    let payload = match it.body {
        Some(body) => decode_payload(body, it.attempt),
        None => Err(Undecodable {
            body: Vec::new(),
            error: "message body missing".into(),
        }),
    };
    Delivery {
        lease: Lease {
            queue: queue.to_string(),
            id: it.id,
            token: it.token,
        },
        attempt: it.attempt,
        priority: it.priority,
        last_error: it.last_error,
        lease_deadline,
        payload,
    }
}

fn unexpected(what: &str, v: &Value) -> BrokerError {
    BrokerError::Backend(format!("unexpected reply to {what}: {v:?}"))
}

fn int(v: &Value) -> Result<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| unexpected("script", v)),
        Value::SimpleString(s) => s.parse().map_err(|_| unexpected("script", v)),
        _ => Err(unexpected("script", v)),
    }
}

fn ints(v: Value) -> Result<Vec<i64>> {
    match v {
        Value::Array(items) => items.iter().map(int).collect(),
        other => Err(unexpected("script", &other)),
    }
}

fn bools(v: Value, expected: usize) -> Result<Vec<bool>> {
    let values = ints(v)?;
    if values.len() != expected {
        return Err(BrokerError::Backend(format!(
            "script answered {} values for {expected} leases",
            values.len()
        )));
    }
    Ok(values.into_iter().map(|i| i == 1).collect())
}

fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

fn parse_reserve(v: Value) -> Result<ReserveReply> {
    let Value::Array(items) = v else {
        return Err(unexpected("reserve", &v));
    };
    if items.len() < 5 {
        return Err(BrokerError::Backend(format!(
            "reserve answered {} values",
            items.len()
        )));
    }
    let head = int(&items[1])?;
    let due = int(&items[2])?;
    let expiry = int(&items[3])?;
    let n = int(&items[4])? as usize;
    if items.len() != 5 + 6 * n {
        return Err(BrokerError::Backend(format!(
            "reserve answered {} values for {n} messages",
            items.len()
        )));
    }
    let mut rest = items.into_iter().skip(5);
    let mut reserved = Vec::with_capacity(n);
    for _ in 0..n {
        let mut next = || rest.next().expect("length checked");
        let id = bytes(next()).ok_or_else(|| BrokerError::Backend("reserve: id".into()))?;
        let body = bytes(next());
        let priority = int(&next())?;
        let attempt = int(&next())?;
        let token = int(&next())?;
        let last_error = bytes(next()).map(|b| String::from_utf8_lossy(&b).into_owned());
        reserved.push(ReservedItem {
            id: String::from_utf8_lossy(&id).into_owned(),
            body,
            priority: priority.clamp(0, 9) as u8,
            attempt: attempt.clamp(0, u32::MAX as i64) as u32,
            token: token.max(0) as u64,
            last_error,
        });
    }
    let wake_in = [due, expiry]
        .into_iter()
        .filter(|&ms| ms >= 0)
        .min()
        .map(|ms| Duration::from_millis(ms as u64));
    Ok(ReserveReply {
        head: (head >= 0).then_some(head as u8),
        wake_in,
        items: reserved,
    })
}

fn encode_result(result: &TaskResult) -> Result<Vec<u8>> {
    serde_json::to_vec(result).map_err(|e| BrokerError::Decode {
        what: "result".into(),
        reason: e.to_string(),
    })
}

fn decode_result(raw: &[u8]) -> Result<TaskResult> {
    serde_json::from_slice(raw).map_err(|e| BrokerError::Decode {
        what: "result".into(),
        reason: e.to_string(),
    })
}

/// The dead-letter entry JSON written by `lua/dead_letter.lua`.
#[derive(serde::Deserialize)]
struct DeadEntry {
    id: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    at: i64,
    #[serde(default)]
    attempt: u32,
    #[serde(default)]
    priority: u8,
    #[serde(default)]
    body: String,
}

fn decode_dead_letter(raw: &[u8]) -> Result<DeadLetter> {
    // Bodies are stored as they came, and cjson does not check UTF-8: decode lossily.
    let text = String::from_utf8_lossy(raw);
    let e: DeadEntry = serde_json::from_str(&text).map_err(|e| BrokerError::Decode {
        what: "dead letter".into(),
        reason: e.to_string(),
    })?;
    Ok(DeadLetter {
        id: e.id,
        reason: e.reason,
        at: Utc
            .timestamp_millis_opt(e.at)
            .single()
            .unwrap_or(DateTime::UNIX_EPOCH),
        attempt: e.attempt,
        priority: e.priority,
        body: e.body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_timeouts_never_round_to_zero() {
        assert_eq!(blocking_timeout_arg(Duration::ZERO), "0.001");
        assert_eq!(blocking_timeout_arg(Duration::from_micros(300)), "0.001");
        assert_eq!(blocking_timeout_arg(Duration::from_millis(1500)), "1.500");
        assert_eq!(blocking_timeout_arg(Duration::from_secs(30)), "30.000");
    }

    #[test]
    fn reserve_reply_parses_items_and_hints() {
        let v = Value::Array(vec![
            Value::Int(1_700_000_000_000),
            Value::Int(7),
            Value::Int(-1),
            Value::Int(250),
            Value::Int(1),
            Value::BulkString(b"id1".to_vec()),
            Value::BulkString(b"{}".to_vec()),
            Value::Int(7),
            Value::Int(2),
            Value::Int(42),
            Value::Nil,
        ]);
        let r = parse_reserve(v).unwrap();
        assert_eq!(r.head, Some(7));
        assert_eq!(r.wake_in, Some(Duration::from_millis(250)));
        assert_eq!(r.items.len(), 1);
        assert_eq!(r.items[0].token, 42);
        assert_eq!(r.items[0].attempt, 2);
        assert!(r.items[0].last_error.is_none());
    }
}
