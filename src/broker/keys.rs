//! Redis key names.
//!
//! All keys of one queue share the hash tag `{q:NAME}`, so every per-queue Lua script touches
//! a single Redis Cluster slot. Scripts receive a queue's keys as eight consecutive `KEYS`
//! entries in the order of [`QueueKeys::all`]; the Lua library (`lua/enqueue_lib.lua`,
//! `celeriac_keys(first)`) reads them in that order. The beat's fire script passes its own keys
//! first and a queue's eight keys after them.

/// Default prefix of every key celeriac writes.
pub const DEFAULT_PREFIX: &str = "celeriac:";

/// Number of keys a queue script receives (see [`QueueKeys::all`]).
pub const QUEUE_KEY_COUNT: usize = 8;

/// The keys of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueKeys {
    /// ZSET id -> (9 - priority) * 2^44 + seq: priority first, then FIFO.
    pub ready: String,
    /// ZSET id -> eta (Unix ms).
    pub delayed: String,
    /// ZSET id -> lease deadline (Unix ms, Redis clock).
    pub active: String,
    /// HASH id -> body (JSON, stored as enqueued, never rewritten).
    pub msg: String,
    /// HASH id -> "priority attempt token[ last_error]".
    pub meta: String,
    /// STRING counter: FIFO sequence numbers and lease tokens.
    pub seq: String,
    /// LIST of at most one marker; blocked reservers BLPOP it.
    pub signal: String,
    /// LIST of dead letters, newest first: JSON {id, reason, at, attempt, priority, body}.
    pub dead: String,
}

impl QueueKeys {
    /// The keys of `queue` under `prefix` (e.g. `celeriac:{q:default}:ready`).
    pub fn new(prefix: &str, queue: &str) -> Self {
        let k = |suffix: &str| format!("{prefix}{{q:{queue}}}:{suffix}");
        QueueKeys {
            ready: k("ready"),
            delayed: k("delayed"),
            active: k("active"),
            msg: k("msg"),
            meta: k("meta"),
            seq: k("seq"),
            signal: k("signal"),
            dead: k("dead"),
        }
    }

    /// The keys in the order the Lua scripts expect them.
    pub fn all(&self) -> [&str; QUEUE_KEY_COUNT] {
        [
            &self.ready,
            &self.delayed,
            &self.active,
            &self.msg,
            &self.meta,
            &self.seq,
            &self.signal,
            &self.dead,
        ]
    }
}

/// The key of a stored result: `PREFIX result:ID`, a one-element LIST holding the result JSON,
/// with a TTL. A list rather than a string so that waiting for a result is one blocking
/// `BLMOVE key key` (which returns the element once it exists, and leaves it in place).
pub fn result_key(prefix: &str, id: &str) -> String {
    format!("{prefix}result:{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_keys_share_one_hash_tag() {
        let k = QueueKeys::new(DEFAULT_PREFIX, "reports");
        assert_eq!(k.ready, "celeriac:{q:reports}:ready");
        for key in k.all() {
            assert!(key.contains("{q:reports}"), "{key}");
        }
        assert_eq!(result_key("celeriac:", "abc"), "celeriac:result:abc");
    }
}
