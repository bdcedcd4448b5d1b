//! Celery's task message protocol, as kombu's Redis transport stores it in a list.
//!
//! One list entry is a JSON *envelope*:
//!
//! ```json
//! {"body": "<base64 of the JSON body>", "content-encoding": "utf-8",
//!  "content-type": "application/json",
//!  "headers": {"lang": "py", "task": "data_handle.cal", "id": "...", "eta": null, ...},
//!  "properties": {"correlation_id": "...", "reply_to": "", "delivery_mode": 2,
//!                 "delivery_info": {"exchange": "", "routing_key": "celery"},
//!                 "priority": 0, "body_encoding": "base64", "delivery_tag": "..."}}
//! ```
//!
//! Protocol v2 (Celery 4+) keeps the task's identity in `headers` and the body is
//! `[args, kwargs, embed]`; protocol v1 (Celery 3) keeps everything in a body object and
//! `headers` is empty. [`decode`] reads both; [`encode`] writes v2 with JSON content.
//!
//! Priorities: kombu's Redis transport serves LOWER numbers first (0 is the most urgent,
//! and kombu's default), celeriac serves HIGHER numbers first. [`kombu_priority`] and
//! [`celeriac_priority`] map one onto the other (`9 - p`), so that the order is kept.
//!
//! celeriac's own bookkeeping of a message (how many times it was delivered, why the last
//! attempt failed) travels in `properties` as `celeriac_attempt` / `celeriac_last_error`,
//! which kombu and Celery carry along and otherwise ignore.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};

/// The only content type celeriac reads and writes (Celery's default serializer).
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// kombu's separator between a queue name and its priority step in a list key.
pub const PRIORITY_SEPARATOR: &str = "\x06\x16";

/// Highest kombu priority (the LEAST urgent on Redis).
pub const KOMBU_MAX_PRIORITY: u8 = 9;

/// Header that carries a beat tick's identity (`schedule@instant`) to the task; a Python
/// task reads it as `self.request.celeriac_fire_id`.
pub const FIRE_ID_HEADER: &str = "celeriac_fire_id";
/// Header that carries the schedule name.
pub const SCHEDULE_HEADER: &str = "celeriac_schedule";

/// Property with the number of earlier deliveries that did not complete (celeriac's attempt).
const ATTEMPT_PROPERTY: &str = "celeriac_attempt";
/// Property with why the previous attempt did not complete.
const LAST_ERROR_PROPERTY: &str = "celeriac_last_error";

/// The kombu priority (0 most urgent) for a celeriac priority (9 most urgent).
pub fn kombu_priority(celeriac: u8) -> u8 {
    KOMBU_MAX_PRIORITY - celeriac.min(KOMBU_MAX_PRIORITY)
}

/// The celeriac priority (9 most urgent) for a kombu priority (0 most urgent).
pub fn celeriac_priority(kombu: u8) -> u8 {
    KOMBU_MAX_PRIORITY - kombu.min(KOMBU_MAX_PRIORITY)
}

/// The step (of kombu's `priority_steps`, ascending from 0) whose list a message of kombu
/// priority `kombu` goes to: the largest step not above it (kombu's `Channel.priority`).
pub fn priority_step(steps: &[u8], kombu: u8) -> u8 {
    steps
        .iter()
        .copied()
        .take_while(|&s| s <= kombu)
        .last()
        .unwrap_or(0)
}

/// The Redis list of a kombu queue for one priority step: `prefix + name` for step 0,
/// `prefix + name + "\x06\x16" + step` otherwise (kombu's `_q_for_pri`).
pub fn list_key(key_prefix: &str, queue: &str, step: u8) -> String {
    if step == 0 {
        format!("{key_prefix}{queue}")
    } else {
        format!("{key_prefix}{queue}{PRIORITY_SEPARATOR}{step}")
    }
}

/// A Celery task call: what the headers and body of a message say, whatever the protocol
/// version and transport.
#[derive(Debug, Clone, PartialEq)]
pub struct CeleryTask {
    /// Task id (also the id of its result, `celery-task-meta-<id>`).
    pub id: String,
    /// Task name, e.g. `data_handle.cal`.
    pub task: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    /// Do not run before.
    pub eta: Option<DateTime<Utc>>,
    /// Do not run after (Celery marks it revoked instead).
    pub expires: Option<DateTime<Utc>>,
    /// How many times Celery retried it (`Task.retry()`).
    pub retries: u32,
    pub root_id: Option<String>,
    pub parent_id: Option<String>,
    pub group: Option<String>,
    pub group_index: Option<i64>,
    /// The node that sent it.
    pub origin: Option<String>,
    pub ignore_result: bool,
    /// `[time_limit, soft_time_limit]` in seconds.
    pub timelimit: [Option<f64>; 2],
    /// Display name override.
    pub shadow: Option<String>,
    /// Callbacks, errbacks, chain and chord (the body's third element), kept as is.
    pub embed: Value,
    /// Headers not listed above, kept as they are (e.g. `celeriac_fire_id`, stamps).
    pub extra_headers: Map<String, Value>,
}

impl CeleryTask {
    /// A call of `task` with no arguments, a fresh UUID v4 id (what Celery uses) and empty
    /// everything else.
    pub fn new(task: impl Into<String>) -> Self {
        CeleryTask {
            id: uuid::Uuid::new_v4().to_string(),
            task: task.into(),
            args: Vec::new(),
            kwargs: Map::new(),
            eta: None,
            expires: None,
            retries: 0,
            root_id: None,
            parent_id: None,
            group: None,
            group_index: None,
            origin: None,
            ignore_result: false,
            timelimit: [None, None],
            shadow: None,
            embed: default_embed(),
            extra_headers: Map::new(),
        }
    }

    /// An extra header's string value (`celeriac_fire_id`, ...).
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.extra_headers.get(name).and_then(Value::as_str)
    }
}

/// `{"callbacks": null, "errbacks": null, "chain": null, "chord": null}`.
fn default_embed() -> Value {
    json!({"callbacks": null, "errbacks": null, "chain": null, "chord": null})
}

/// Transport properties of a message in kombu's Redis envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Properties {
    /// kombu priority, 0 (most urgent on Redis) to 9.
    pub priority: u8,
    /// Unique per publish (kombu uses a UUID).
    pub delivery_tag: String,
    pub exchange: String,
    pub routing_key: String,
    pub correlation_id: String,
    pub reply_to: String,
    /// Set by kombu when it restored the message after a consumer died.
    pub redelivered: bool,
    /// Earlier deliveries that did not complete (celeriac's bookkeeping; 0 when absent).
    pub attempt: u32,
    /// Why the previous attempt did not complete (celeriac's bookkeeping).
    pub last_error: Option<String>,
}

impl Properties {
    /// Properties for publishing `task` to the kombu queue `routing_key` at kombu priority
    /// `priority`, with a fresh delivery tag.
    pub fn for_publish(task: &CeleryTask, routing_key: &str, priority: u8) -> Self {
        Properties {
            priority: priority.min(KOMBU_MAX_PRIORITY),
            delivery_tag: uuid::Uuid::new_v4().to_string(),
            exchange: String::new(),
            routing_key: routing_key.to_string(),
            correlation_id: task.id.clone(),
            reply_to: String::new(),
            redelivered: false,
            attempt: 0,
            last_error: None,
        }
    }
}

/// A decoded list entry.
#[derive(Debug, Clone, PartialEq)]
pub struct CeleryMessage {
    pub task: CeleryTask,
    pub properties: Properties,
    /// 1 or 2.
    pub protocol: u8,
}

/// Why a list entry is not a Celery task message celeriac can run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a kombu message: {0}")]
    NotKombu(String),
    #[error(
        "unsupported content type `{0}` (celeriac reads application/json; configure the Celery app with task_serializer='json')"
    )]
    ContentType(String),
    #[error("unsupported body encoding `{0}`")]
    BodyEncoding(String),
    #[error("body is not valid base64: {0}")]
    Base64(String),
    #[error("body is not valid JSON: {0}")]
    BodyJson(String),
    #[error("not a Celery task message: {0}")]
    NotCelery(String),
}

/// Decodes one list entry (protocol v2 or v1, JSON content).
pub fn decode(raw: &[u8]) -> Result<CeleryMessage, DecodeError> {
    let envelope: Value =
        serde_json::from_slice(raw).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let Value::Object(mut envelope) = envelope else {
        return Err(DecodeError::NotKombu(
            "the entry is not a JSON object".into(),
        ));
    };
    let properties = match envelope.remove("properties") {
        Some(Value::Object(p)) => p,
        _ => return Err(DecodeError::NotKombu("no `properties` object".into())),
    };
    let content_type = envelope
        .get("content-type")
        .and_then(Value::as_str)
        .unwrap_or(CONTENT_TYPE_JSON);
    if content_type != CONTENT_TYPE_JSON {
        return Err(DecodeError::ContentType(content_type.to_string()));
    }
    let body_bytes = match envelope.remove("body") {
        Some(Value::String(s)) => match properties.get("body_encoding").and_then(Value::as_str) {
            Some("base64") => BASE64
                .decode(s.as_bytes())
                .map_err(|e| DecodeError::Base64(e.to_string()))?,
            None | Some("utf-8") | Some("utf8") => s.into_bytes(),
            Some(other) => return Err(DecodeError::BodyEncoding(other.to_string())),
        },
        // A body stored as JSON directly (not kombu's way, but unambiguous).
        Some(other @ (Value::Array(_) | Value::Object(_))) => other.to_string().into_bytes(),
        _ => return Err(DecodeError::NotKombu("no `body`".into())),
    };
    let body: Value =
        serde_json::from_slice(&body_bytes).map_err(|e| DecodeError::BodyJson(e.to_string()))?;
    let headers = match envelope.remove("headers") {
        Some(Value::Object(h)) => h,
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err(DecodeError::NotKombu("`headers` is not an object".into())),
    };
    let (task, protocol) = if headers.contains_key("task") {
        (task_v2(headers, body)?, 2)
    } else {
        (task_v1(body)?, 1)
    };
    Ok(CeleryMessage {
        task,
        properties: read_properties(&properties),
        protocol,
    })
}

fn read_properties(p: &Map<String, Value>) -> Properties {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
    let info = p.get("delivery_info").and_then(Value::as_object);
    let priority = match p.get("priority") {
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .unwrap_or(0),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
        _ => 0,
    };
    Properties {
        priority: priority.clamp(0, i64::from(KOMBU_MAX_PRIORITY)) as u8,
        delivery_tag: text(p.get("delivery_tag")),
        exchange: text(info.and_then(|i| i.get("exchange"))),
        routing_key: text(info.and_then(|i| i.get("routing_key"))),
        correlation_id: text(p.get("correlation_id")),
        reply_to: text(p.get("reply_to")),
        redelivered: info
            .and_then(|i| i.get("redelivered"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
        attempt: p
            .get(ATTEMPT_PROPERTY)
            .and_then(Value::as_u64)
            .map_or(0, |a| a.min(u64::from(u32::MAX)) as u32),
        last_error: p
            .get(LAST_ERROR_PROPERTY)
            .and_then(Value::as_str)
            .map(str::to_string),
    }
}

/// Known v2 headers, which are not kept in `extra_headers`.
const V2_HEADERS: &[&str] = &[
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
];

fn task_v2(mut headers: Map<String, Value>, body: Value) -> Result<CeleryTask, DecodeError> {
    let not = |why: &str| DecodeError::NotCelery(why.to_string());
    let task =
        required_string(&headers, "task").ok_or_else(|| not("no task name in `headers.task`"))?;
    let id = required_string(&headers, "id").ok_or_else(|| not("no task id in `headers.id`"))?;
    let Value::Array(mut parts) = body else {
        return Err(not("a protocol 2 body must be `[args, kwargs, embed]`"));
    };
    if parts.is_empty() || parts.len() > 3 {
        return Err(not("a protocol 2 body must be `[args, kwargs, embed]`"));
    }
    parts.resize(3, Value::Null);
    let embed = parts.pop().expect("three parts");
    let kwargs = match parts.pop().expect("three parts") {
        Value::Object(k) => k,
        Value::Null => Map::new(),
        _ => return Err(not("kwargs (second element of the body) is not an object")),
    };
    let args = match parts.pop().expect("three parts") {
        Value::Array(a) => a,
        Value::Null => Vec::new(),
        _ => return Err(not("args (first element of the body) is not a list")),
    };
    let mut t = CeleryTask {
        id,
        task,
        args,
        kwargs,
        eta: instant(headers.get("eta")).map_err(|e| not(&format!("eta: {e}")))?,
        expires: instant(headers.get("expires")).map_err(|e| not(&format!("expires: {e}")))?,
        retries: headers.get("retries").and_then(Value::as_u64).unwrap_or(0) as u32,
        root_id: optional_string(&headers, "root_id"),
        parent_id: optional_string(&headers, "parent_id"),
        group: optional_string(&headers, "group"),
        group_index: headers.get("group_index").and_then(Value::as_i64),
        origin: optional_string(&headers, "origin"),
        ignore_result: headers
            .get("ignore_result")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        timelimit: timelimit(headers.get("timelimit")),
        shadow: optional_string(&headers, "shadow"),
        embed: if embed.is_null() {
            default_embed()
        } else {
            embed
        },
        extra_headers: Map::new(),
    };
    headers.retain(|k, _| !V2_HEADERS.contains(&k.as_str()));
    t.extra_headers = headers;
    Ok(t)
}

fn task_v1(body: Value) -> Result<CeleryTask, DecodeError> {
    let not = |why: &str| DecodeError::NotCelery(why.to_string());
    let Value::Object(b) = body else {
        return Err(not(
            "no `headers.task` (protocol 2) and the body is not an object (protocol 1)",
        ));
    };
    let task = required_string(&b, "task").ok_or_else(|| not("no task name"))?;
    let id = required_string(&b, "id").ok_or_else(|| not("no task id"))?;
    let args = match b.get("args") {
        Some(Value::Array(a)) => a.clone(),
        None | Some(Value::Null) => Vec::new(),
        _ => return Err(not("args is not a list")),
    };
    let kwargs = match b.get("kwargs") {
        Some(Value::Object(k)) => k.clone(),
        None | Some(Value::Null) => Map::new(),
        _ => return Err(not("kwargs is not an object")),
    };
    Ok(CeleryTask {
        id,
        task,
        args,
        kwargs,
        eta: instant(b.get("eta")).map_err(|e| not(&format!("eta: {e}")))?,
        expires: instant(b.get("expires")).map_err(|e| not(&format!("expires: {e}")))?,
        retries: b.get("retries").and_then(Value::as_u64).unwrap_or(0) as u32,
        root_id: None,
        parent_id: None,
        group: optional_string(&b, "taskset").or_else(|| optional_string(&b, "group")),
        group_index: None,
        origin: None,
        ignore_result: false,
        timelimit: timelimit(b.get("timelimit")),
        shadow: None,
        embed: json!({
            "callbacks": b.get("callbacks").cloned().unwrap_or(Value::Null),
            "errbacks": b.get("errbacks").cloned().unwrap_or(Value::Null),
            "chain": null,
            "chord": b.get("chord").cloned().unwrap_or(Value::Null),
        }),
        extra_headers: Map::new(),
    })
}

fn required_string(map: &Map<String, Value>, key: &str) -> Option<String> {
    map.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn optional_string(map: &Map<String, Value>, key: &str) -> Option<String> {
    map.get(key).and_then(Value::as_str).map(str::to_string)
}

fn timelimit(v: Option<&Value>) -> [Option<f64>; 2] {
    match v.and_then(Value::as_array) {
        Some(a) => [
            a.first().and_then(Value::as_f64),
            a.get(1).and_then(Value::as_f64),
        ],
        None => [None, None],
    }
}

/// An ISO 8601 instant as Python's `isoformat()` writes it; a naive one is taken as UTC.
fn instant(v: Option<&Value>) -> Result<Option<DateTime<Utc>>, String> {
    let s = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.is_empty() => return Ok(None),
        Some(Value::String(s)) => s.trim(),
        Some(other) => return Err(format!("expected an ISO 8601 string, found {other}")),
    };
    parse_iso8601(s)
        .map(Some)
        .ok_or_else(|| format!("`{s}` is not an ISO 8601 instant"))
}

/// Parses what Python's `datetime.isoformat()` produces (with or without offset, `T` or a
/// space between date and time); a naive instant is taken as UTC.
pub fn parse_iso8601(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%:z"] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc());
        }
    }
    None
}

/// An instant as Python's `isoformat()` of an aware UTC datetime writes it.
pub fn format_iso8601(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, false)
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    body: String,
    #[serde(rename = "content-encoding")]
    content_encoding: &'static str,
    #[serde(rename = "content-type")]
    content_type: &'static str,
    headers: HeadersOut<'a>,
    properties: PropertiesOut<'a>,
}

#[derive(Serialize)]
struct HeadersOut<'a> {
    lang: &'static str,
    task: &'a str,
    id: &'a str,
    shadow: Option<&'a str>,
    eta: Option<String>,
    expires: Option<String>,
    group: Option<&'a str>,
    group_index: Option<i64>,
    retries: u32,
    timelimit: [Option<f64>; 2],
    root_id: &'a str,
    parent_id: Option<&'a str>,
    argsrepr: String,
    kwargsrepr: String,
    origin: &'a str,
    ignore_result: bool,
    #[serde(flatten)]
    extra: &'a Map<String, Value>,
}

#[derive(Serialize)]
struct PropertiesOut<'a> {
    correlation_id: &'a str,
    reply_to: &'a str,
    delivery_mode: u8,
    delivery_info: DeliveryInfoOut<'a>,
    priority: u8,
    body_encoding: &'static str,
    delivery_tag: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    celeriac_attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    celeriac_last_error: Option<&'a str>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Serialize)]
struct DeliveryInfoOut<'a> {
    exchange: &'a str,
    routing_key: &'a str,
}

/// Encodes a task call as a protocol 2 message in kombu's Redis envelope (JSON body,
/// base64), exactly as `apply_async` would store it.
pub fn encode(task: &CeleryTask, properties: &Properties) -> String {
    let body = json!([task.args, task.kwargs, task.embed]);
    let origin = task.origin.clone().unwrap_or_else(default_origin);
    let envelope = EnvelopeOut {
        body: BASE64.encode(body.to_string()),
        content_encoding: "utf-8",
        content_type: CONTENT_TYPE_JSON,
        headers: HeadersOut {
            lang: "py",
            task: &task.task,
            id: &task.id,
            shadow: task.shadow.as_deref(),
            eta: task.eta.map(format_iso8601),
            expires: task.expires.map(format_iso8601),
            group: task.group.as_deref(),
            group_index: task.group_index,
            retries: task.retries,
            timelimit: task.timelimit,
            root_id: task.root_id.as_deref().unwrap_or(&task.id),
            parent_id: task.parent_id.as_deref(),
            argsrepr: python_repr_args(&task.args),
            kwargsrepr: python_repr(&Value::Object(task.kwargs.clone())),
            origin: &origin,
            ignore_result: task.ignore_result,
            extra: &task.extra_headers,
        },
        properties: PropertiesOut {
            correlation_id: &properties.correlation_id,
            reply_to: &properties.reply_to,
            delivery_mode: 2,
            delivery_info: DeliveryInfoOut {
                exchange: &properties.exchange,
                routing_key: &properties.routing_key,
            },
            priority: properties.priority,
            body_encoding: "base64",
            delivery_tag: &properties.delivery_tag,
            celeriac_attempt: properties.attempt,
            celeriac_last_error: properties.last_error.as_deref(),
        },
    };
    serde_json::to_string(&envelope).expect("an envelope always serializes")
}

/// `celeriac@HOST` (Celery's `origin` is `gen<pid>@host`).
fn default_origin() -> String {
    let id = crate::worker::default_worker_id();
    let host = id.split('/').next().unwrap_or("localhost");
    format!("celeriac@{host}")
}

/// Rewrites a stored entry for its next delivery: `attempt` and `last_error` in
/// `properties`, and (when `redelivered`) kombu's redelivered flags; for a retry,
/// `headers.retries + 1` and `headers.eta`. The rest of the entry is kept as it is. An entry
/// that is not a JSON object with `properties` is returned unchanged.
pub fn rewrite_for_redelivery(
    raw: &[u8],
    attempt: u32,
    last_error: Option<&str>,
    redelivered: bool,
    retry_eta: Option<DateTime<Utc>>,
) -> Vec<u8> {
    let Ok(Value::Object(mut envelope)) = serde_json::from_slice::<Value>(raw) else {
        return raw.to_vec();
    };
    let Some(Value::Object(props)) = envelope.get_mut("properties") else {
        return raw.to_vec();
    };
    props.insert(ATTEMPT_PROPERTY.into(), json!(attempt));
    match last_error {
        Some(e) => props.insert(LAST_ERROR_PROPERTY.into(), json!(e)),
        None => props.remove(LAST_ERROR_PROPERTY),
    };
    if redelivered && let Some(Value::Object(info)) = props.get_mut("delivery_info") {
        info.insert("redelivered".into(), Value::Bool(true));
    }
    if let Some(Value::Object(headers)) = envelope.get_mut("headers")
        && headers.contains_key("task")
    {
        if redelivered {
            headers.insert("redelivered".into(), Value::Bool(true));
        }
        if let Some(eta) = retry_eta {
            let retries = headers.get("retries").and_then(Value::as_u64).unwrap_or(0);
            headers.insert("retries".into(), json!(retries + 1));
            headers.insert("eta".into(), json!(format_iso8601(eta)));
        }
    }
    serde_json::to_vec(&Value::Object(envelope)).expect("a JSON value always serializes")
}

/// celeriac's attempt count stored in an entry (0 when absent or unreadable).
pub fn stored_attempt(raw: &[u8]) -> u32 {
    serde_json::from_slice::<Value>(raw)
        .ok()
        .and_then(|v| v.get("properties")?.get(ATTEMPT_PROPERTY)?.as_u64())
        .map_or(0, |a| a.min(u64::from(u32::MAX)) as u32)
}

/// Python's `repr()` of a tuple of arguments, as Celery's `argsrepr`: `(2, 3)`, `('a',)`.
fn python_repr_args(args: &[Value]) -> String {
    let items: Vec<String> = args.iter().map(python_repr).collect();
    match items.len() {
        1 => format!("({},)", items[0]),
        _ => format!("({})", items.join(", ")),
    }
}

/// Python's `repr()` of a JSON value (what `json.loads` would give), for `argsrepr` and
/// `kwargsrepr`, which Celery only displays.
fn python_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let mut out = String::with_capacity(s.len() + 2);
            out.push('\'');
            for c in s.chars() {
                match c {
                    '\'' => out.push_str("\\'"),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('\'');
            out
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(python_repr).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!(
                    "{}: {}",
                    python_repr(&Value::String(k.clone())),
                    python_repr(v)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_map_with_order_kept() {
        assert_eq!(kombu_priority(9), 0);
        assert_eq!(kombu_priority(0), 9);
        assert_eq!(kombu_priority(5), 4);
        for p in 0..=9 {
            assert_eq!(celeriac_priority(kombu_priority(p)), p);
        }
        assert_eq!(kombu_priority(200), 0);
    }

    #[test]
    fn priority_steps_pick_the_largest_step_not_above() {
        let steps = [0, 3, 6, 9];
        let got: Vec<u8> = (0..=9).map(|k| priority_step(&steps, k)).collect();
        assert_eq!(got, [0, 0, 0, 3, 3, 3, 6, 6, 6, 9]);
        assert_eq!(list_key("", "celery", 0), "celery");
        assert_eq!(list_key("p:", "celery", 6), "p:celery\x06\x166");
    }

    #[test]
    fn python_repr_looks_like_python() {
        assert_eq!(python_repr_args(&[json!(2), json!(3)]), "(2, 3)");
        assert_eq!(python_repr_args(&[json!("a")]), "('a',)");
        assert_eq!(python_repr_args(&[]), "()");
        assert_eq!(
            python_repr(&json!({"x": [true, null], "y": "it's"})),
            r#"{'x': [True, None], 'y': 'it\'s'}"#
        );
    }

    #[test]
    fn iso8601_in_the_forms_python_writes() {
        let t = parse_iso8601("2026-11-27T10:57:47.299916+00:00").unwrap();
        assert_eq!(format_iso8601(t), "2026-11-27T10:57:47.299916+00:00");
        assert_eq!(
            parse_iso8601("2026-11-27T18:57:47+08:00").unwrap(),
            parse_iso8601("2026-11-27T10:57:47").unwrap()
        );
        assert!(parse_iso8601("yesterday").is_none());
    }
}
