//! The Lua scripts of the Redis broker, one per state transition.
//!
//! Each script is `lua/enqueue_lib.lua` (shared helpers: key layout, meta format, scores,
//! enqueue) followed by the script's own file. They are built once per process and sent as
//! EVALSHA, with a SCRIPT LOAD and a second try on NOSCRIPT; the broker also loads all of them
//! whenever it (re)connects, so NOSCRIPT only happens after a SCRIPT FLUSH.

use std::sync::LazyLock;

use redis::Script;

const LIB: &str = include_str!("lua/enqueue_lib.lua");

/// The Lua library every queue script is built from: local functions for the key layout
/// (`celeriac_keys(first)`), the Redis clock (`celeriac_now_ms()`), the meta format, the ready
/// score, `celeriac_enqueue(k, now_ms, id, priority, attempt, eta_ms, body)` and
/// `celeriac_signal(k)`.
///
/// The beat's atomic fire script concatenates this in front of its own code, passes a queue's
/// eight keys ([`crate::broker::keys::QueueKeys::all`]) among its KEYS, and calls
/// `celeriac_enqueue` then `celeriac_signal` on them, so that a fire and its enqueue are one
/// atomic step and exactly like a broker enqueue.
pub fn enqueue_lua_lib() -> &'static str {
    LIB
}

/// All broker scripts.
pub(crate) struct Scripts {
    pub enqueue: Script,
    pub reserve: Script,
    pub ack: Script,
    pub retry: Script,
    pub dead_letter: Script,
    pub extend: Script,
    pub purge: Script,
    pub requeue_dead: Script,
    pub store_result: Script,
}

impl Scripts {
    /// Every script, for loading them all at connect time.
    pub fn all(&self) -> [&Script; 9] {
        [
            &self.enqueue,
            &self.reserve,
            &self.ack,
            &self.retry,
            &self.dead_letter,
            &self.extend,
            &self.purge,
            &self.requeue_dead,
            &self.store_result,
        ]
    }
}

fn with_lib(body: &str) -> Script {
    Script::new(&format!("{LIB}\n{body}"))
}

/// The scripts, built on first use.
pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    enqueue: with_lib(include_str!("lua/enqueue.lua")),
    reserve: with_lib(include_str!("lua/reserve.lua")),
    ack: with_lib(include_str!("lua/ack.lua")),
    retry: with_lib(include_str!("lua/retry.lua")),
    dead_letter: with_lib(include_str!("lua/dead_letter.lua")),
    extend: with_lib(include_str!("lua/extend.lua")),
    purge: with_lib(include_str!("lua/purge.lua")),
    requeue_dead: with_lib(include_str!("lua/requeue_dead.lua")),
    store_result: Script::new(include_str!("lua/store_result.lua")),
});
