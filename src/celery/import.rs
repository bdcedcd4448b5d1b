//! `celeriac import-celery`: a JSON dump of a Celery app's `beat_schedule` (written by the
//! Python snippet in `docs/migrating-from-celery.md`) turned into celeriac YAML whose
//! schedules publish the same Celery tasks to `protocol: celery` queues, so that the
//! existing Celery workers keep running them.
//!
//! The dump:
//!
//! ```json
//! {"timezone": "Asia/Shanghai", "result_expires": 600,
//!  "broker_url": "redis://127.0.0.1:6379/1", "result_backend": "redis://127.0.0.1:6379/2",
//!  "beat_schedule": {
//!    "cal-nightly": {"task": "data_handle.cal", "args": [2, 3], "kwargs": {},
//!                    "options": {"queue": "celery", "priority": 0, "expires": 60},
//!                    "crontab": {"minute": "30", "hour": "2", "day_of_week": "*",
//!                                "day_of_month": "*", "month_of_year": "*"}},
//!    "cal-often": {"task": "data_handle.cal", "args": [1, 1], "every": 30.0}}}
//! ```
//!
//! What cannot be converted faithfully is reported as a warning and, for a schedule, the
//! schedule is written with `enabled: false` and a comment saying why.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Map, Value};

use super::protocol;
use crate::schedule::CronExpr;

/// Settings the dump may not have.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Queue for schedules whose options name none (Celery's default queue is `celery`).
    pub queue: String,
    /// The Celery app's broker URL, when the dump has no `broker_url` (or to override it).
    pub broker: Option<String>,
    /// The Celery app's result backend URL (overrides the dump's `result_backend`).
    pub backend: Option<String>,
}

/// The YAML, and what could not be converted faithfully.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub yaml: String,
    pub warnings: Vec<String>,
}

/// Converts a dump; warnings go into the YAML as comments (see [`import`] to get them).
pub fn beat_schedule_to_yaml(dump: &str, options: &ImportOptions) -> Result<String, String> {
    Ok(import(dump, options)?.yaml)
}

/// Converts a dump.
pub fn import(dump: &str, options: &ImportOptions) -> Result<Imported, String> {
    let root: Value = serde_json::from_str(dump).map_err(|e| format!("not JSON: {e}"))?;
    let root = root
        .as_object()
        .ok_or("expected a JSON object with `beat_schedule`")?;
    let schedule = match root.get("beat_schedule") {
        Some(Value::Object(s)) => s.clone(),
        Some(Value::Null) | None => Map::new(),
        Some(_) => return Err("`beat_schedule` is not an object".into()),
    };
    let mut warnings = Vec::new();
    let timezone = root
        .get("timezone")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .unwrap_or("UTC");
    let broker = options
        .broker
        .clone()
        .or_else(|| {
            root.get("broker_url")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379/0".to_string());
    let backend = options.backend.clone().or_else(|| {
        root.get("result_backend")
            .and_then(Value::as_str)
            .filter(|b| b.starts_with("redis"))
            .map(str::to_string)
    });
    if let Some(b) = root.get("result_backend").and_then(Value::as_str)
        && !b.is_empty()
        && !b.starts_with("redis")
        && options.backend.is_none()
    {
        warnings.push(format!(
            "result backend `{b}` is not Redis: celeriac writes results only to a Redis backend"
        ));
    }
    let default_queue = if options.queue.is_empty() {
        "celery".to_string()
    } else {
        options.queue.clone()
    };

    let mut queues: BTreeMap<String, ()> = BTreeMap::new();
    queues.insert(default_queue.clone(), ());
    let mut entries = String::new();
    let mut names: BTreeMap<String, ()> = BTreeMap::new();
    for (celery_name, entry) in &schedule {
        let name = unique_name(&schedule_name(celery_name), &mut names);
        if &name != celery_name {
            warnings.push(format!(
                "schedule `{celery_name}` is named `{name}` (celeriac names are letters, digits and `_-.:/@`)"
            ));
        }
        let converted = convert_entry(&name, entry, &default_queue);
        for w in &converted.warnings {
            warnings.push(format!("schedule `{name}`: {w}"));
        }
        if let Some(q) = &converted.queue {
            queues.insert(q.clone(), ());
        }
        entries.push_str(&converted.yaml);
    }

    let mut y = String::new();
    y.push_str("# Converted from a Celery beat_schedule by `celeriac import-celery`.\n");
    y.push_str(
        "# The schedules publish Celery task messages to `protocol: celery` queues, so the\n",
    );
    y.push_str("# Celery workers keep running the tasks; see docs/migrating-from-celery.md.\n");
    for w in &warnings {
        let _ = writeln!(y, "# WARNING: {w}");
    }
    let _ = writeln!(y, "timezone: {}", quote(timezone));
    y.push_str("# celeriac's own Redis (beat leader lease, fire records). Sharing the Celery\n");
    y.push_str("# broker's database is fine: celeriac's keys start with `celeriac:`.\n");
    let _ = writeln!(y, "broker: {}", quote(&broker));
    if let Some(secs) = root.get("result_expires").and_then(seconds)
        && secs >= 1.0
    {
        let _ = writeln!(y, "result_expires: {}", duration_text(secs));
    }
    y.push_str("queues:\n");
    for q in queues.keys() {
        let _ = writeln!(y, "  {}:", quote(q));
        y.push_str("    protocol: celery\n");
        let _ = writeln!(y, "    broker: {}", quote(&broker));
        if let Some(b) = &backend {
            let _ = writeln!(y, "    backend: {}", quote(b));
        }
    }
    if entries.is_empty() {
        y.push_str("schedules: {}\n");
    } else {
        y.push_str("schedules:\n");
        y.push_str(&entries);
    }
    Ok(Imported { yaml: y, warnings })
}

struct Converted {
    yaml: String,
    queue: Option<String>,
    warnings: Vec<String>,
}

fn convert_entry(name: &str, entry: &Value, default_queue: &str) -> Converted {
    let mut warnings = Vec::new();
    let mut problems = Vec::new();
    let e = entry.as_object().cloned().unwrap_or_default();
    let task = e.get("task").and_then(Value::as_str).unwrap_or_default();
    if task.is_empty() {
        problems.push("no `task`".to_string());
    }
    let timing = if let Some(c) = e.get("crontab") {
        match crontab(c) {
            Ok((expr, note)) => {
                warnings.extend(note);
                Some(format!("cron: {}", quote(&expr)))
            }
            Err(why) => {
                problems.push(why);
                None
            }
        }
    } else if let Some(secs) = e.get("every").and_then(seconds) {
        if secs < 0.001 {
            problems.push(format!("interval of {secs} s is too short"));
            None
        } else {
            Some(format!("every: {}", duration_text(secs)))
        }
    } else {
        problems
            .push("no `crontab` or `every` (solar and custom schedules are not supported)".into());
        None
    };
    let options = e
        .get("options")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let queue = options
        .get("queue")
        .and_then(Value::as_str)
        .filter(|q| !q.is_empty())
        .map(str::to_string);
    let mut y = String::new();
    let _ = writeln!(y, "  {}:", quote(name));
    let _ = writeln!(
        y,
        "    task: {}",
        quote(if task.is_empty() { "MISSING" } else { task })
    );
    match &timing {
        Some(t) => {
            let _ = writeln!(y, "    {t}");
        }
        None => y.push_str("    every: 1h  # placeholder: see the comment below\n"),
    }
    match e.get("args") {
        Some(Value::Array(a)) if !a.is_empty() => {
            let _ = writeln!(y, "    args: {}", Value::Array(a.clone()));
        }
        _ => {}
    }
    match e.get("kwargs") {
        Some(Value::Object(k)) if !k.is_empty() => {
            let _ = writeln!(y, "    kwargs: {}", Value::Object(k.clone()));
        }
        _ => {}
    }
    let _ = writeln!(
        y,
        "    queue: {}",
        quote(queue.as_deref().unwrap_or(default_queue))
    );
    match options.get("priority").and_then(Value::as_i64) {
        Some(p) => {
            let kombu = p.clamp(0, 9) as u8;
            let _ = writeln!(
                y,
                "    priority: {}  # Celery/kombu priority {p} (on Redis 0 runs first; celeriac: 9 runs first)",
                protocol::celeriac_priority(kombu)
            );
        }
        // kombu's default priority (0) is the most urgent one on Redis.
        None => {
            y.push_str("    priority: 9  # Celery's default (kombu priority 0, served first)\n")
        }
    }
    match options.get("expires") {
        Some(v) if seconds(v).is_some() => {
            let secs = seconds(v).expect("checked");
            let _ = writeln!(y, "    expires: {}", duration_text(secs.max(0.001)));
        }
        Some(Value::Null) | None => {
            y.push_str("    expires: never  # Celery beat sets no expiry unless asked\n")
        }
        Some(other) => warnings.push(format!(
            "option expires={other} is not a number of seconds; not converted"
        )),
    }
    for key in options.keys() {
        if !matches!(key.as_str(), "queue" | "priority" | "expires") {
            warnings.push(format!("option `{key}` is not converted"));
        }
    }
    if let Some(r) = e.get("relative").and_then(Value::as_bool)
        && r
    {
        warnings.push(
            "`relative=True` has no equivalent: intervals are anchored (see `anchor:`)".into(),
        );
    }
    if !problems.is_empty() {
        let _ = writeln!(
            y,
            "    enabled: false  # NOT CONVERTED: {}",
            problems.join("; ")
        );
        warnings.push(format!(
            "not converted ({}); written with `enabled: false`",
            problems.join("; ")
        ));
    }
    Converted {
        yaml: y,
        queue,
        warnings,
    }
}

/// A Celery `crontab` (fields as strings, as the dump snippet writes them) as a 5-field cron
/// expression, and a note when the meaning had to be adapted.
fn crontab(v: &Value) -> Result<(String, Option<String>), String> {
    let field = |k: &str| -> String {
        match v.get(k) {
            None | Some(Value::Null) => "*".to_string(),
            Some(Value::String(s)) => s.trim().to_string(),
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(","),
            Some(other) => other.to_string(),
        }
    };
    let (minute, hour, dom, month, dow) = (
        field("minute"),
        field("hour"),
        field("day_of_month"),
        field("month_of_year"),
        field("day_of_week"),
    );
    let mut note = None;
    let restricted = |f: &str| f != "*" && f != "?";
    let dow_out = if restricted(&dom) && restricted(&dow) {
        // Celery runs when BOTH day fields match; cron when EITHER does. The common case, a
        // weekday within one week of the month, is cron's `DAY#N`.
        let week = match dom.as_str() {
            "1-7" => Some(1),
            "8-14" => Some(2),
            "15-21" => Some(3),
            "22-28" => Some(4),
            _ => None,
        };
        match week {
            Some(n) if !dow.contains([',', '-', '/', '*']) => {
                note = Some(format!(
                    "crontab day_of_month={dom} AND day_of_week={dow} became `{dow}#{n}`"
                ));
                format!("{dow}#{n}")
            }
            _ => {
                return Err(format!(
                    "crontab restricts both day_of_month ({dom}) and day_of_week ({dow}); Celery \
                     needs both to match, cron either: rewrite it by hand"
                ));
            }
        }
    } else {
        dow
    };
    let dom_out = if note.is_some() { "*".to_string() } else { dom };
    let expr = format!("{minute} {hour} {dom_out} {month} {dow_out}");
    CronExpr::parse(&expr)
        .map_err(|e| format!("crontab `{expr}` is not valid cron: {}", e.message))?;
    Ok((expr, note))
}

/// Seconds from a number or a `{"seconds": n}`-less timedelta string such as `0:10:00`.
fn seconds(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => {
            let s = s.trim();
            if let Ok(f) = s.parse::<f64>() {
                return Some(f);
            }
            // Python's str(timedelta): `[D day[s], ]H:MM:SS[.ffffff]`.
            let (days, clock) = match s.split_once(", ") {
                Some((d, c)) => (d.split_whitespace().next()?.parse::<f64>().ok()?, c),
                None => (0.0, s),
            };
            let parts: Vec<f64> = clock
                .split(':')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            match parts.as_slice() {
                [h, m, sec] => Some(days * 86400.0 + h * 3600.0 + m * 60.0 + sec),
                _ => None,
            }
        }
        _ => None,
    }
}

/// `90` -> `1m30s`, `0.5` -> `500ms` (humantime, without spaces).
fn duration_text(secs: f64) -> String {
    let d = Duration::from_millis((secs * 1000.0).round() as u64);
    humantime::format_duration(d).to_string().replace(' ', "")
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn quote(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// A celeriac name for a Celery schedule name (which may contain spaces).
fn schedule_name(celery: &str) -> String {
    let mut out: String = celery
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/' | '@') {
                c
            } else {
                '-'
            }
        })
        .collect();
    out.truncate(200);
    if out.is_empty() {
        out.push_str("schedule");
    }
    out
}

fn unique_name(base: &str, taken: &mut BTreeMap<String, ()>) -> String {
    let mut name = base.to_string();
    let mut n = 2;
    while taken.contains_key(&name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    taken.insert(name.clone(), ());
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn crontab_fields_become_cron_in_cron_order() {
        let c = json!({"minute": "30", "hour": "2", "day_of_week": "mon-fri", "day_of_month": "*", "month_of_year": "*"});
        assert_eq!(crontab(&c).unwrap().0, "30 2 * * mon-fri");
        let first_monday =
            json!({"minute": "0", "hour": "9", "day_of_week": "mon", "day_of_month": "1-7"});
        let (expr, note) = crontab(&first_monday).unwrap();
        assert_eq!(expr, "0 9 * * mon#1");
        assert!(note.is_some());
        let both = json!({"minute": "0", "hour": "9", "day_of_week": "mon", "day_of_month": "13"});
        assert!(crontab(&both).unwrap_err().contains("both"));
    }

    #[test]
    fn timedeltas_and_durations() {
        assert_eq!(seconds(&json!("0:10:00")), Some(600.0));
        assert_eq!(seconds(&json!("1 day, 0:00:30")), Some(86430.0));
        assert_eq!(seconds(&json!(30.0)), Some(30.0));
        assert_eq!(duration_text(90.0), "1m30s");
        assert_eq!(duration_text(0.5), "500ms");
    }

    #[test]
    fn odd_names_are_made_valid_and_unique() {
        let mut taken = BTreeMap::new();
        assert_eq!(
            unique_name(&schedule_name("add every 30"), &mut taken),
            "add-every-30"
        );
        assert_eq!(
            unique_name(&schedule_name("add every/30"), &mut taken),
            "add-every/30"
        );
        assert_eq!(
            unique_name(&schedule_name("add-every 30"), &mut taken),
            "add-every-30-2"
        );
    }
}
