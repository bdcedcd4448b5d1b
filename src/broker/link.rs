//! The connection to Redis, and what happens when it breaks.
//!
//! One multiplexed connection carries every non-blocking command (redis-rs pipelines the
//! concurrent requests of all tasks onto it). Blocking commands (BLPOP, BLMOVE) each take a
//! connection of their own from a small pool, so they never stall the shared one.
//!
//! When a request fails because the connection broke, the connection is dropped and the next
//! request reconnects. Failed reconnects are spaced by exponential backoff with jitter; while
//! waiting, requests fail fast with a transient [`BrokerError::Unavailable`] instead of hammering
//! Redis. The state change is logged once each way ("lost", then "restored"), never per attempt.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, ServerErrorKind};
use tokio::time::Instant;

use super::scripts::SCRIPTS;
use super::{BrokerError, Result};

/// Most idle blocking connections kept for reuse.
const MAX_IDLE_BLOCKING: usize = 32;

/// How the link connects and reconnects.
#[derive(Debug, Clone)]
pub(crate) struct LinkOptions {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// PEM bundle of CAs to trust for `rediss://` (instead of the built-in web roots).
    pub tls_ca_pem: Option<Vec<u8>>,
}

/// A connection and the generation of the link it belongs to.
pub(crate) struct Conn {
    pub conn: MultiplexedConnection,
    pub generation: u64,
}

/// How many times the link went down and came back up since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkTransitions {
    pub lost: u64,
    pub restored: u64,
}

pub(crate) struct Link {
    client: redis::Client,
    /// The URL with its password hidden, for messages.
    url: String,
    options: LinkOptions,
    state: Mutex<State>,
    /// Serializes reconnect attempts (held across the connect `.await`; it guards no data).
    connecting: tokio::sync::Mutex<()>,
    idle_blocking: Mutex<Vec<Conn>>,
    lost: AtomicU64,
    restored: AtomicU64,
}

struct State {
    conn: Option<MultiplexedConnection>,
    /// Incremented on every successful connect; a failure only resets the connection of its
    /// own generation, and pooled blocking connections of older generations are discarded.
    generation: u64,
    /// What was last logged: up or down. Starts down; the first connect is not a "restore".
    up: bool,
    connected_once: bool,
    down_since: Option<Instant>,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
}

impl Link {
    /// Parses the URL and prepares the client; does not connect.
    pub fn new(url: &str, options: LinkOptions) -> Result<Self> {
        let redacted = redact(url);
        let invalid = |reason: String| BrokerError::InvalidUrl {
            url: redacted.clone(),
            reason,
        };
        let scheme = url.split("://").next().unwrap_or_default();
        if !matches!(scheme, "redis" | "rediss" | "unix" | "redis+unix") || !url.contains("://") {
            return Err(invalid(
                "expected redis://, rediss://, unix:// or redis+unix://".into(),
            ));
        }
        let client = match (&options.tls_ca_pem, scheme) {
            (Some(ca), "rediss") => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            )
            .map_err(|e| BrokerError::Tls(e.to_string()))?,
            _ => redis::Client::open(url).map_err(|e| invalid(e.to_string()))?,
        };
        Ok(Link {
            client,
            url: redacted,
            options,
            state: Mutex::new(State {
                conn: None,
                generation: 0,
                up: false,
                connected_once: false,
                down_since: None,
                failures: 0,
                retry_at: None,
                last_error: String::new(),
            }),
            connecting: tokio::sync::Mutex::new(()),
            idle_blocking: Mutex::new(Vec::new()),
            lost: AtomicU64::new(0),
            restored: AtomicU64::new(0),
        })
    }

    /// The URL with its password hidden.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn transitions(&self) -> LinkTransitions {
        LinkTransitions {
            lost: self.lost.load(Ordering::Relaxed),
            restored: self.restored.load(Ordering::Relaxed),
        }
    }

    /// When the next reconnect attempt is allowed, if the link is waiting for one.
    pub fn next_retry(&self) -> Option<Instant> {
        let s = self.state.lock().expect("link state poisoned");
        if s.conn.is_some() { None } else { s.retry_at }
    }

    /// The shared connection, connecting first if needed (and allowed by the backoff).
    pub async fn get(&self) -> Result<Conn> {
        if let Some(c) = self.current()? {
            return Ok(c);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(c) = self.current()? {
            return Ok(c);
        }
        self.connect().await
    }

    fn current(&self) -> Result<Option<Conn>> {
        let s = self.state.lock().expect("link state poisoned");
        if let Some(conn) = &s.conn {
            return Ok(Some(Conn {
                conn: conn.clone(),
                generation: s.generation,
            }));
        }
        if let Some(at) = s.retry_at {
            let now = Instant::now();
            if now < at {
                return Err(BrokerError::Unavailable {
                    url: self.url.clone(),
                    reason: format!(
                        "{}; next reconnect attempt in {} ms",
                        s.last_error,
                        (at - now).as_millis()
                    ),
                });
            }
        }
        Ok(None)
    }

    async fn connect(&self) -> Result<Conn> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.options.connect_timeout))
            .set_response_timeout(Some(self.options.response_timeout));
        let attempt = async {
            let conn = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            // Load every script now (pipelined), so that EVALSHA does not miss after a restart.
            let loads = SCRIPTS.all().map(|script| {
                let mut c = conn.clone();
                async move { script.load_async(&mut c).await }
            });
            futures::future::try_join_all(loads).await?;
            Ok::<_, RedisError>(conn)
        };
        let limit = self.options.connect_timeout + self.options.response_timeout;
        let outcome = match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(connect_error(&self.url, &e, self.options.connect_timeout)),
            Err(_) => Err(BrokerError::Unavailable {
                url: self.url.clone(),
                reason: format!("no connection within {limit:?}"),
            }),
        };
        let mut s = self.state.lock().expect("link state poisoned");
        match outcome {
            Ok(conn) => {
                s.generation += 1;
                s.conn = Some(conn.clone());
                s.failures = 0;
                s.retry_at = None;
                let was_down = !s.up && s.connected_once;
                s.up = true;
                s.connected_once = true;
                if was_down {
                    self.restored.fetch_add(1, Ordering::Relaxed);
                    let down_for = s.down_since.take().map(|t| t.elapsed()).unwrap_or_default();
                    tracing::info!(
                        broker = %self.url,
                        down_for_ms = down_for.as_millis() as u64,
                        "connection to Redis restored"
                    );
                }
                Ok(Conn {
                    conn,
                    generation: s.generation,
                })
            }
            Err(e) => {
                s.failures = s.failures.saturating_add(1);
                let delay = backoff(
                    s.failures,
                    self.options.reconnect_min,
                    self.options.reconnect_max,
                );
                s.retry_at = Some(Instant::now() + delay);
                s.last_error = e.to_string();
                self.mark_down(&mut s, &e.to_string());
                Err(e)
            }
        }
    }

    fn mark_down(&self, s: &mut State, why: &str) {
        if s.up {
            s.up = false;
            s.down_since = Some(Instant::now());
            self.lost.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                broker = %self.url,
                error = %why,
                "lost connection to Redis; reconnecting with backoff"
            );
        }
    }

    /// Turns a failed request on a connection of `generation` into a [`BrokerError`]; when
    /// the failure means the connection is broken, drops it so the next request reconnects.
    pub fn fail(&self, generation: u64, e: RedisError) -> BrokerError {
        let (error, broken) = classify(&e, self.options.response_timeout);
        if broken {
            let mut s = self.state.lock().expect("link state poisoned");
            if s.generation == generation && s.conn.is_some() {
                s.conn = None;
                // The first reconnect is immediate (Redis may be back already); later ones back off.
                s.retry_at = None;
                s.failures = 0;
                s.last_error = e.to_string();
                self.mark_down(&mut s, &e.to_string());
            }
        }
        error
    }

    /// A connection for one blocking command: from the idle pool or new. Give it back with
    /// [`Link::put_blocking`] once the command has completed (not when it was cut short).
    pub async fn blocking(&self) -> Result<Conn> {
        let generation = self.get().await?.generation;
        {
            let mut idle = self.idle_blocking.lock().expect("pool poisoned");
            idle.retain(|c| c.generation == generation);
            if let Some(c) = idle.pop() {
                return Ok(c);
            }
        }
        // No response timeout: the caller bounds each blocking command itself.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.options.connect_timeout))
            .set_response_timeout(None);
        match self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(conn) => Ok(Conn { conn, generation }),
            Err(e) => Err(self.fail(generation, e)),
        }
    }

    pub fn put_blocking(&self, conn: Conn) {
        let mut idle = self.idle_blocking.lock().expect("pool poisoned");
        if idle.len() < MAX_IDLE_BLOCKING {
            idle.push(conn);
        }
    }
}

/// Exponential backoff with jitter: `min * 2^(failures-1)`, capped at `max`, then a uniformly
/// random point in its upper half (so that many clients do not reconnect in lockstep).
fn backoff(failures: u32, min: Duration, max: Duration) -> Duration {
    let exp = min.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let capped = exp.min(max).max(Duration::from_millis(1));
    let ms = capped.as_millis() as u64;
    Duration::from_millis(rand::random_range(ms / 2..=ms))
}

fn connect_error(url: &str, e: &RedisError, timeout: Duration) -> BrokerError {
    match classify(e, timeout).0 {
        BrokerError::ConnectionLost(_) | BrokerError::Timeout(_) | BrokerError::Busy(_) => {
            BrokerError::Unavailable {
                url: url.to_string(),
                reason: e.to_string(),
            }
        }
        other => other,
    }
}

/// The error (`timeout`: the one that applied to the request), and whether the connection it
/// happened on must be replaced.
fn classify(e: &RedisError, timeout: Duration) -> (BrokerError, bool) {
    let text = e.to_string();
    if e.is_timeout() {
        return (BrokerError::Timeout(timeout), true);
    }
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        return (BrokerError::ConnectionLost(text), true);
    }
    let code = e.code().unwrap_or_default();
    match e.kind() {
        ErrorKind::AuthenticationFailed => (BrokerError::Auth(text), false),
        ErrorKind::Server(ServerErrorKind::NoPerm) => (BrokerError::Auth(text), false),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown,
        ) => (BrokerError::Busy(text), false),
        // A failover left us on a replica: reconnect to whatever the address points to now.
        ErrorKind::Server(ServerErrorKind::ReadOnly) => (BrokerError::Busy(text), true),
        ErrorKind::InvalidClientConfig => (
            BrokerError::InvalidUrl {
                url: String::new(),
                reason: text,
            },
            false,
        ),
        _ if code == "BUSY" => (BrokerError::Busy(text), false),
        _ if matches!(code, "WRONGPASS" | "NOAUTH" | "NOPERM") => (BrokerError::Auth(text), false),
        _ if e.is_unrecoverable_error() => (BrokerError::ConnectionLost(text), true),
        _ => (BrokerError::Backend(text), false),
    }
}

/// The URL with the password replaced by `***`, for logs and messages: the user-info password
/// (`redis://user:secret@host`) and a `pass=` / `password=` query parameter
/// (`unix:///run/redis.sock?pass=secret`).
pub fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some(parts) => parts,
        None => return url.to_string(),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, format!("#{f}")),
                None => (query, String::new()),
            };
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k == "pass" || k == "password" => format!("{k}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}{fragment}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(
            redact("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(
            redact("redis://app:s3cr%40t@redis.example:6380/2"),
            "redis://app:***@redis.example:6380/2"
        );
        assert_eq!(redact("rediss://:hunter2@h"), "rediss://:***@h");
        assert_eq!(redact("redis://user@h/0"), "redis://user@h/0");
        assert_eq!(
            redact("unix:///run/redis.sock?db=1&user=app&pass=secret"),
            "unix:///run/redis.sock?db=1&user=app&pass=***"
        );
        assert_eq!(redact("memory"), "memory");
    }

    #[test]
    fn backoff_grows_and_is_capped_with_jitter() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        for _ in 0..100 {
            let first = backoff(1, min, max);
            assert!(
                first >= Duration::from_millis(50) && first <= min,
                "{first:?}"
            );
            let late = backoff(30, min, max);
            assert!(late >= max / 2 && late <= max, "{late:?}");
        }
        assert!(backoff(4, min, max) >= Duration::from_millis(400));
    }
}
