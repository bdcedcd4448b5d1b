//! Publishing celeriac messages to Celery workers: a Celery protocol v2 message LPUSHed onto
//! the kombu list of the message's priority, exactly where `apply_async` would put it.
//!
//! Two ways in:
//! - [`CeleryPublisher::publish`]: for `celeriac enqueue` and Rust callers.
//! - [`celery_publish_plan`] + [`PUBLISH_LUA`]: the pieces a script needs (list key,
//!   payload, dedupe key), for the beat. The beat's exactly-once fire stays on the beat side;
//!   when the Celery broker is not the beat's own Redis, the beat can record the plan in its
//!   fire script (an outbox) and deliver it with [`CeleryPublisher::publish_plan`], which
//!   pushes at most once per tick however often it is retried (a dedupe marker set in the
//!   same script as the push).

use std::time::Duration;

use super::protocol::{self, Properties};
use super::{DEFAULT_DEDUPE_TTL, KombuKeys, celery_task_of};
use crate::broker::link::Link;
use crate::broker::{BrokerError, TaskMessage};
use crate::config::CeleryQueue;

/// A Lua chunk defining
/// `celeriac_celery_publish(list_key, payload, dedupe_key, ttl_s, db, back_db)`: LPUSH
/// `payload` onto `list_key`, unless `dedupe_key` (may be `false`) is already set; returns 1
/// if pushed. When `db` is given (a number), the push happens in that database of the same
/// server and the script returns to `back_db` afterwards (Redis 7 lets a script SELECT; the
/// caller's connection is not affected): see [`beat_route`]. A script that calls it should
/// pass both keys among its KEYS.
pub const PUBLISH_LUA: &str = r#"
local function celeriac_celery_publish(list_key, payload, dedupe_key, ttl_s, db, back_db)
  if db then redis.call('SELECT', db) end
  local pushed = 1
  if dedupe_key and not redis.call('SET', dedupe_key, '1', 'NX', 'EX', ttl_s) then
    pushed = 0
  else
    redis.call('LPUSH', list_key, payload)
  end
  if db then redis.call('SELECT', back_db) end
  return pushed
end
"#;

/// How a beat whose own Redis is `beat_broker` can publish to a Celery queue inside its
/// atomic fire script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeatRoute {
    /// Same server and database: push directly.
    SameDatabase,
    /// Same server, another database: push after `SELECT db`, then `SELECT back`.
    OtherDatabase { db: i64, back: i64 },
    /// Another server: the fire script cannot reach it. Record the [`PublishPlan`] with the
    /// fire (an outbox) and deliver it with [`CeleryPublisher::publish_plan`], which pushes
    /// at most once per tick however often it is retried.
    OtherServer,
}

/// Decides the [`BeatRoute`] of a Celery queue for a beat on `beat_broker` (same host, port
/// or socket and user: same server).
pub fn beat_route(beat_broker: &str, queue: &CeleryQueue) -> BeatRoute {
    use redis::IntoConnectionInfo;
    let (Ok(beat), Ok(celery)) = (
        beat_broker.into_connection_info(),
        queue.broker.as_str().into_connection_info(),
    ) else {
        return BeatRoute::OtherServer;
    };
    let same_server = beat.addr() == celery.addr()
        && beat.redis_settings().username() == celery.redis_settings().username();
    if !same_server {
        return BeatRoute::OtherServer;
    }
    let (db, back) = (celery.redis_settings().db(), beat.redis_settings().db());
    if db == back {
        BeatRoute::SameDatabase
    } else {
        BeatRoute::OtherDatabase { db, back }
    }
}

/// What publishing one message means in Redis terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishPlan {
    /// The kombu list to LPUSH onto (the one of the message's priority step).
    pub list_key: String,
    /// The list entry: kombu's JSON envelope of a protocol v2 message.
    pub payload: String,
    /// The Celery task id (the result's id): the message's own id.
    pub task_id: String,
    /// For a beat tick (a message with a `fire_id`): the key that marks the tick published.
    pub dedupe_key: Option<String>,
}

/// The key that marks the beat tick `fire_id` published on a kombu queue's Redis.
pub fn dedupe_key(queue: &CeleryQueue, fire_id: &str) -> String {
    format!("{}_celeriac.published.{fire_id}", queue.key_prefix)
}

/// How `message` is published on the kombu queue `queue`: its task (a Celery task name),
/// arguments (see [`super::celery_arguments`]), id, eta and expiry; celeriac priority `p`
/// becomes kombu priority `9 - p`, in the list of that priority's step.
pub fn celery_publish_plan(message: &TaskMessage, queue: &CeleryQueue) -> PublishPlan {
    let task = celery_task_of(message);
    let kombu = protocol::kombu_priority(message.priority);
    let properties = Properties::for_publish(&task, &queue.name, kombu);
    let step = protocol::priority_step(&queue.priority_steps, kombu);
    PublishPlan {
        list_key: protocol::list_key(&queue.key_prefix, &queue.name, step),
        payload: protocol::encode(&task, &properties),
        task_id: task.id,
        dedupe_key: message.fire_id.as_deref().map(|f| dedupe_key(queue, f)),
    }
}

/// The dedupe-and-push script (sent with EVAL inside pipelines; Redis caches it).
const PUBLISH_SCRIPT: &str = include_str!("lua/publish.lua");

/// Publishes to one kombu queue of a Celery app.
pub struct CeleryPublisher {
    link: Link,
    queue: CeleryQueue,
    dedupe_ttl: Duration,
}

impl CeleryPublisher {
    /// Connects to the Celery app's broker (fails with a transient error when it cannot be
    /// reached now).
    pub async fn connect(queue: &CeleryQueue) -> Result<Self, BrokerError> {
        let link = super::link(&queue.broker)?;
        link.get().await?;
        Ok(CeleryPublisher {
            link,
            queue: queue.clone(),
            dedupe_ttl: DEFAULT_DEDUPE_TTL,
        })
    }

    /// A publisher that connects on first use (and reconnects with backoff): for daemons
    /// that must start while the Celery broker is down.
    pub fn lazy(queue: &CeleryQueue) -> Result<Self, BrokerError> {
        Ok(CeleryPublisher {
            link: super::link(&queue.broker)?,
            queue: queue.clone(),
            dedupe_ttl: DEFAULT_DEDUPE_TTL,
        })
    }

    /// The queue's keys.
    pub fn keys(&self) -> KombuKeys {
        KombuKeys::new(&self.queue)
    }

    /// Publishes messages (one round trip). A message with a `fire_id` is pushed at most
    /// once per `fire_id`. Returns, per message, whether it was pushed.
    pub async fn publish(&self, messages: &[TaskMessage]) -> Result<Vec<bool>, BrokerError> {
        let plans: Vec<PublishPlan> = messages
            .iter()
            .map(|m| celery_publish_plan(m, &self.queue))
            .collect();
        self.publish_plans(&plans).await
    }

    /// Delivers one plan (see the module docs: safe to repeat for a beat tick).
    pub async fn publish_plan(&self, plan: &PublishPlan) -> Result<bool, BrokerError> {
        Ok(self.publish_plans(std::slice::from_ref(plan)).await?[0])
    }

    /// Delivers plans in one pipeline.
    pub async fn publish_plans(&self, plans: &[PublishPlan]) -> Result<Vec<bool>, BrokerError> {
        publish_plans(&self.link, plans, self.dedupe_ttl).await
    }
}

/// Pushes plans in one pipeline: plain LPUSH, or the dedupe script for beat ticks.
pub(crate) async fn publish_plans(
    link: &Link,
    plans: &[PublishPlan],
    dedupe_ttl: Duration,
) -> Result<Vec<bool>, BrokerError> {
    if plans.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for plan in plans {
        match &plan.dedupe_key {
            None => {
                pipe.cmd("LPUSH").arg(&plan.list_key).arg(&plan.payload);
            }
            Some(dedupe) => {
                // EVAL (not EVALSHA) inside a pipeline: no NOSCRIPT round trip to handle.
                pipe.cmd("EVAL")
                    .arg(PUBLISH_SCRIPT)
                    .arg(2)
                    .arg(&plan.list_key)
                    .arg(dedupe)
                    .arg(&plan.payload)
                    .arg(dedupe_ttl.as_secs().max(1));
            }
        }
    }
    let c = link.get().await?;
    let mut conn = c.conn;
    let replies: Vec<redis::Value> = pipe
        .query_async(&mut conn)
        .await
        .map_err(|e| link.fail(c.generation, e))?;
    Ok(plans
        .iter()
        .zip(replies)
        .map(|(plan, reply)| match plan.dedupe_key {
            None => true,
            Some(_) => matches!(reply, redis::Value::Int(1)),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn queue() -> CeleryQueue {
        CeleryQueue {
            broker: "redis://127.0.0.1:6379/1".into(),
            backend: None,
            name: "celery".into(),
            priority_steps: vec![0, 3, 6, 9],
            key_prefix: String::new(),
        }
    }

    #[test]
    fn plan_puts_the_message_on_its_priority_list() {
        let m = TaskMessage::new("data_handle.cal", "celery")
            .with_args(json!([2, 3]))
            .with_priority(9);
        let plan = celery_publish_plan(&m, &queue());
        assert_eq!(plan.list_key, "celery");
        assert_eq!(plan.task_id, m.id);
        assert_eq!(plan.dedupe_key, None);
        let decoded = protocol::decode(plan.payload.as_bytes()).unwrap();
        assert_eq!(decoded.task.task, "data_handle.cal");
        assert_eq!(decoded.task.args, vec![json!(2), json!(3)]);
        assert_eq!(decoded.properties.priority, 0);
        assert_eq!(decoded.properties.routing_key, "celery");

        let low = celery_publish_plan(&m.clone().with_priority(0), &queue());
        assert_eq!(low.list_key, "celery\x06\x169");
        let mid = celery_publish_plan(&m.clone().with_priority(5), &queue());
        assert_eq!(mid.list_key, "celery\x06\x163");
    }

    #[test]
    fn beat_route_tells_servers_and_databases_apart() {
        let q = queue();
        assert_eq!(
            beat_route("redis://127.0.0.1:6379/0", &q),
            BeatRoute::OtherDatabase { db: 1, back: 0 }
        );
        assert_eq!(
            beat_route("redis://127.0.0.1:6379/1", &q),
            BeatRoute::SameDatabase
        );
        assert_eq!(
            beat_route("redis://127.0.0.1:6380/1", &q),
            BeatRoute::OtherServer
        );
        assert_eq!(
            beat_route("redis://10.0.0.1:6379/1", &q),
            BeatRoute::OtherServer
        );
        assert_eq!(beat_route("not a url", &q), BeatRoute::OtherServer);
    }

    #[test]
    fn beat_ticks_carry_their_identity_and_a_dedupe_key() {
        let m = TaskMessage::new("data_handle.cal", "celery")
            .with_fire("nightly", "nightly@2025-01-01T00:00:00Z");
        let plan = celery_publish_plan(&m, &queue());
        assert_eq!(
            plan.dedupe_key.as_deref(),
            Some("_celeriac.published.nightly@2025-01-01T00:00:00Z")
        );
        let decoded = protocol::decode(plan.payload.as_bytes()).unwrap();
        assert_eq!(
            decoded.task.header_str(protocol::FIRE_ID_HEADER),
            Some("nightly@2025-01-01T00:00:00Z")
        );
        assert_eq!(
            decoded.task.header_str(protocol::SCHEDULE_HEADER),
            Some("nightly")
        );
    }
}
