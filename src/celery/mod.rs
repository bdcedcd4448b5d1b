//! Celery interoperability: celeriac and Python Celery on the same Redis queues.
//!
//! A queue declared `protocol: celery` in the configuration is a kombu queue of a Celery app
//! (its broker URL and, for results, its backend URL). Then:
//!
//! - **celeriac -> Celery workers** ([`publish`]): the beat and `celeriac enqueue` publish
//!   Celery task protocol v2 messages into kombu's Redis list for the queue, honouring
//!   kombu's priority sub-queues, so that an unmodified `celery worker` runs them.
//! - **Celery clients -> celeriac workers** ([`consume`]): [`CeleryBroker`] is a
//!   [`Broker`](crate::broker::Broker) over kombu's lists; `celeriac worker` consumes them
//!   like its own queues and writes results in Celery's Redis result-backend format, so that
//!   `AsyncResult(id).get()` in Python returns them ([`result`]).
//! - [`import`]: `celeriac import-celery` turns a dump of a Celery `beat_schedule` into YAML.
//!
//! Redis layout, for a kombu queue `Q` (kombu's `global_keyprefix` in front of every key):
//!
//! | key | what | owner |
//! |---|---|---|
//! | `Q`, `Q\x06\x163`, `Q\x06\x166`, `Q\x06\x169` | kombu's lists, one per priority step (LPUSH to publish, RPOP to consume) | kombu |
//! | `_celeriac.Q.unacked` | HASH tag -> `list_index \n message`: messages a celeriac worker holds | celeriac |
//! | `_celeriac.Q.unacked_index` | ZSET tag -> lease deadline (ms); expired ones are restored | celeriac |
//! | `_celeriac.Q.delayed` | ZSET of retries and eta messages -> due time (ms) | celeriac |
//! | `_celeriac.Q.dead` | LIST of dead letters (JSON records with the message) | celeriac |
//! | `_celeriac.Q.tags` | counter of reservation tags | celeriac |
//! | `_celeriac.published.FIRE_ID` | a beat tick already published (dedupe, with TTL) | celeriac |
//! | `celery-task-meta-ID` (backend db) | the result, JSON, with TTL = `result_expires` | Celery's format |
//!
//! celeriac keeps its reservations in keys of its own rather than in kombu's `unacked` hash,
//! because kombu restores its entries after `visibility_timeout` (1 hour by default) counted
//! from delivery, while celeriac workers hold a short lease that they extend while the task
//! runs: each side restores only what it understands. Python and celeriac workers can
//! consume the same kombu queue at the same time.
//!
//! Priorities: kombu on Redis serves LOWER numbers first (0 most urgent, also its default);
//! celeriac serves HIGHER numbers first. celeriac priority `p` is kombu priority `9 - p`
//! both ways (see [`protocol::kombu_priority`]), which keeps the order.

pub mod consume;
pub mod forward;
pub mod import;
pub mod protocol;
pub mod publish;
pub mod result;

use std::time::Duration;

use serde_json::{Map, Value};

pub use self::consume::{CeleryBroker, CeleryBrokerOptions, open_brokers};
pub use self::protocol::{CeleryMessage, CeleryTask, DecodeError, Properties};
pub use self::publish::{
    BeatRoute, CeleryPublisher, PUBLISH_LUA, PublishPlan, beat_route, celery_publish_plan,
    dedupe_key,
};

use crate::broker::link::{Link, LinkOptions};
use crate::broker::{BrokerError, RedisBrokerOptions, TaskMessage};
use crate::config::CeleryQueue;

/// The Redis keys of one kombu queue, for celeriac's scripts: KEYS 1-5 are celeriac's
/// bookkeeping, 6.. kombu's priority lists, most urgent first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KombuKeys {
    /// The kombu queue name.
    pub name: String,
    /// kombu's priority steps, ascending (the lists are in this order).
    pub steps: Vec<u8>,
    /// `[unacked, unacked_index, delayed, dead, tags, list(step 0), list(step 1), ...]`.
    pub all: Vec<String>,
}

impl KombuKeys {
    pub fn new(queue: &CeleryQueue) -> Self {
        let p = &queue.key_prefix;
        let name = &queue.name;
        let mut all = vec![
            format!("{p}_celeriac.{name}.unacked"),
            format!("{p}_celeriac.{name}.unacked_index"),
            format!("{p}_celeriac.{name}.delayed"),
            format!("{p}_celeriac.{name}.dead"),
            format!("{p}_celeriac.{name}.tags"),
        ];
        all.extend(
            queue
                .priority_steps
                .iter()
                .map(|&s| protocol::list_key(p, name, s)),
        );
        KombuKeys {
            name: name.clone(),
            steps: queue.priority_steps.clone(),
            all,
        }
    }

    pub fn unacked(&self) -> &str {
        &self.all[0]
    }

    pub fn index(&self) -> &str {
        &self.all[1]
    }

    pub fn delayed(&self) -> &str {
        &self.all[2]
    }

    pub fn dead(&self) -> &str {
        &self.all[3]
    }

    /// kombu's lists, most urgent first.
    pub fn lists(&self) -> &[String] {
        &self.all[5..]
    }

    /// The 1-based index (as the scripts count) of the list for a kombu priority.
    pub fn list_index(&self, kombu_priority: u8) -> usize {
        let step = protocol::priority_step(&self.steps, kombu_priority);
        self.steps.iter().position(|&s| s == step).unwrap_or(0) + 1
    }
}

/// A connection to a Celery app's Redis (broker or backend), with the broker's reconnect
/// handling and error classification.
pub(crate) fn link(url: &str) -> Result<Link, BrokerError> {
    let defaults = RedisBrokerOptions::default();
    Link::new(
        url,
        LinkOptions {
            connect_timeout: defaults.connect_timeout,
            response_timeout: defaults.response_timeout,
            reconnect_min: defaults.reconnect_min,
            reconnect_max: defaults.reconnect_max,
            tls_ca_pem: None,
        },
    )
}

/// Runs a script on a link's shared connection.
pub(crate) async fn invoke(
    link: &Link,
    invocation: &redis::ScriptInvocation<'_>,
) -> Result<redis::Value, BrokerError> {
    let c = link.get().await?;
    let mut conn = c.conn;
    invocation
        .invoke_async(&mut conn)
        .await
        .map_err(|e| link.fail(c.generation, e))
}

/// Runs a command on a link's shared connection.
pub(crate) async fn query<T: redis::FromRedisValue>(
    link: &Link,
    cmd: &redis::Cmd,
) -> Result<T, BrokerError> {
    let c = link.get().await?;
    let mut conn = c.conn;
    cmd.query_async(&mut conn)
        .await
        .map_err(|e| link.fail(c.generation, e))
}

/// How a celeriac message becomes a Celery call, and back:
///
/// | celeriac `args` | celeriac `kwargs` | Celery `args` | Celery `kwargs` |
/// |---|---|---|---|
/// | a list `[2, 3]` | none | `[2, 3]` | `{}` |
/// | an object `{x: 2}` | none | `[]` | `{x: 2}` |
/// | a list `[2]` | `{y: 3}` | `[2]` | `{y: 3}` |
/// | an object `{x: 2}` | `{y: 3}` | `[]` | `{x: 2, y: 3}` |
/// | null or `{}` | none | `[]` | `{}` |
/// | a scalar `7` | none | `[7]` | `{}` |
///
/// In the other direction a Celery call with positional arguments gives celeriac `args` =
/// the list (and `kwargs` when there are keyword arguments too); one with only keyword
/// arguments gives `args` = the object, which is what `{{name}}` placeholders of command
/// tasks read. So `cal.delay(x=2, y=3)` fills `{{x}}` and `{{y}}`.
pub fn celery_arguments(
    args: &Value,
    kwargs: Option<&Map<String, Value>>,
) -> (Vec<Value>, Map<String, Value>) {
    let mut k = Map::new();
    let positional = match args {
        Value::Array(a) => a.clone(),
        Value::Null => Vec::new(),
        Value::Object(o) => {
            k.extend(o.iter().map(|(a, b)| (a.clone(), b.clone())));
            Vec::new()
        }
        scalar => vec![scalar.clone()],
    };
    if let Some(kwargs) = kwargs {
        k.extend(kwargs.iter().map(|(a, b)| (a.clone(), b.clone())));
    }
    (positional, k)
}

/// The other direction of [`celery_arguments`]: celeriac `args` and `kwargs` of a Celery call.
pub fn celeriac_arguments(
    args: &[Value],
    kwargs: &Map<String, Value>,
) -> (Value, Option<Map<String, Value>>) {
    if args.is_empty() {
        (Value::Object(kwargs.clone()), None)
    } else if kwargs.is_empty() {
        (Value::Array(args.to_vec()), None)
    } else {
        (Value::Array(args.to_vec()), Some(kwargs.clone()))
    }
}

/// The Celery call for a celeriac message (task name as is: on a `protocol: celery` queue
/// the message's task is a Celery task name). The beat's tick identity travels in the
/// `celeriac_fire_id` and `celeriac_schedule` headers.
pub fn celery_task_of(message: &TaskMessage) -> CeleryTask {
    let (args, kwargs) = celery_arguments(&message.args, message.kwargs.as_ref());
    let mut task = CeleryTask::new(&message.task);
    task.id = message.id.clone();
    task.args = args;
    task.kwargs = kwargs;
    task.eta = message.eta;
    task.expires = message.expires;
    if let Some(f) = &message.fire_id {
        task.extra_headers
            .insert(protocol::FIRE_ID_HEADER.into(), Value::String(f.clone()));
    }
    if let Some(s) = &message.schedule {
        task.extra_headers
            .insert(protocol::SCHEDULE_HEADER.into(), Value::String(s.clone()));
    }
    task
}

/// Default TTL of the dedupe marker of a published beat tick.
pub const DEFAULT_DEDUPE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn arguments_round_trip_in_every_shape() {
        let cases = [
            (json!([2, 3]), None),
            (json!({"x": 2}), None),
            (json!([2]), Some(obj(json!({"y": 3})))),
        ];
        for (args, kwargs) in cases {
            let (a, k) = celery_arguments(&args, kwargs.as_ref());
            assert_eq!(celeriac_arguments(&a, &k), (args.clone(), kwargs.clone()));
        }
        let (a, k) = celery_arguments(&json!({"x": 2}), Some(&obj(json!({"y": 3}))));
        assert_eq!((a, Value::Object(k)), (vec![], json!({"x": 2, "y": 3})));
        let (a, k) = celery_arguments(&json!(7), None);
        assert_eq!((a, k.len()), (vec![json!(7)], 0));
    }

    #[test]
    fn keys_follow_kombu_names() {
        let q = CeleryQueue {
            broker: "redis://x/1".into(),
            backend: None,
            name: "celery".into(),
            priority_steps: vec![0, 3, 6, 9],
            key_prefix: String::new(),
        };
        let k = KombuKeys::new(&q);
        assert_eq!(
            k.lists(),
            [
                "celery",
                "celery\x06\x163",
                "celery\x06\x166",
                "celery\x06\x169"
            ]
        );
        assert_eq!(k.unacked(), "_celeriac.celery.unacked");
        assert_eq!(k.list_index(0), 1);
        assert_eq!(k.list_index(4), 2);
        assert_eq!(k.list_index(9), 4);
    }
}
