//! Tails the beat journal stream (`celeriac:beat:journal`) for the whole run, so that the
//! audit sees every decision although the stream is capped. The fire script writes its
//! `fired` / `caught_up` entry in the same atomic step as the enqueue, so this is the
//! authoritative record of what was enqueued.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use redis::Value;

#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    /// When the decision was made (Redis time for fires, the beat's clock otherwise), Unix ms.
    pub at_ms: i64,
    pub schedule: String,
    pub event: String,
    pub nominal: Option<DateTime<Utc>>,
    pub fire_id: String,
    pub detail: String,
    pub beat: String,
}

impl Entry {
    pub fn at(&self) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(self.at_ms)
            .single()
            .unwrap_or_default()
    }

    /// `message ID on QUEUE` -> (ID, QUEUE).
    pub fn message(&self) -> Option<(String, String)> {
        let rest = self.detail.strip_prefix("message ")?;
        let (id, q) = rest.split_once(" on ")?;
        Some((id.to_string(), q.to_string()))
    }
}

#[derive(Default)]
pub struct Tail {
    pub entries: Mutex<Vec<Entry>>,
    /// Set when the stream was trimmed past what we had read (entries were missed).
    pub gap: AtomicBool,
    pub stop: AtomicBool,
}

fn id_key(id: &str) -> (u64, u64) {
    let (a, b) = id.split_once('-').unwrap_or((id, "0"));
    (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
}

fn bulk(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        _ => String::new(),
    }
}

/// A nominal instant as Unix ms (fire script entries) or RFC 3339 (the beat's own entries).
fn parse_nominal(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(ms) = s.parse::<i64>() {
        return Utc.timestamp_millis_opt(ms).single();
    }
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn parse_entries(v: &Value) -> Vec<Entry> {
    let mut out = Vec::new();
    let Value::Array(entries) = v else {
        return out;
    };
    for e in entries {
        let Value::Array(parts) = e else { continue };
        if parts.len() < 2 {
            continue;
        }
        let id = bulk(&parts[0]);
        let Value::Array(fields) = &parts[1] else {
            continue;
        };
        let mut m: HashMap<String, String> = HashMap::new();
        for pair in fields.chunks(2) {
            if let [k, v] = pair {
                m.insert(bulk(k), bulk(v));
            }
        }
        let g = |k: &str| m.get(k).cloned().unwrap_or_default();
        let at_ms = g("at").parse().unwrap_or(0);
        // A batch of routine fires is one entry: `ticks` = lines
        // "schedule\tqueue\tid\tnominal_ms" (each line one fired tick).
        if let Some(ticks) = m.get("ticks") {
            for line in ticks.lines() {
                let f: Vec<&str> = line.split('\t').collect();
                let [schedule, queue, msg, nominal] = f[..] else {
                    out.push(Entry {
                        id: id.clone(),
                        at_ms,
                        schedule: String::new(),
                        event: "unparsed".into(),
                        nominal: None,
                        fire_id: String::new(),
                        detail: line.to_string(),
                        beat: g("beat"),
                    });
                    continue;
                };
                let nominal = parse_nominal(nominal);
                out.push(Entry {
                    id: id.clone(),
                    at_ms,
                    schedule: schedule.to_string(),
                    event: g("event"),
                    nominal,
                    fire_id: nominal
                        .map(|n| celeriac::beat::store::fire_id(schedule, n))
                        .unwrap_or_default(),
                    detail: format!("message {msg} on {queue}"),
                    beat: g("beat"),
                });
            }
            continue;
        }
        let schedule = g("schedule");
        let nominal = parse_nominal(&g("nominal"));
        let mut fire_id = g("fire_id");
        if fire_id.is_empty()
            && !schedule.is_empty()
            && let Some(n) = nominal
        {
            fire_id = celeriac::beat::store::fire_id(&schedule, n);
        }
        out.push(Entry {
            id,
            at_ms,
            schedule,
            event: g("event"),
            nominal,
            fire_id,
            detail: g("detail"),
            beat: g("beat"),
        });
    }
    out
}

/// Runs until `tail.stop`: reads new entries every 100 ms, reconnecting across Redis restarts.
pub fn run(url: String, key: String, tail: Arc<Tail>) {
    let client = redis::Client::open(url).expect("redis url");
    let mut last = "0-0".to_string();
    let mut conn = None;
    loop {
        let stopping = tail.stop.load(Ordering::SeqCst);
        if conn.is_none() {
            conn = client
                .get_connection_with_timeout(Duration::from_millis(500))
                .ok();
            if conn.is_none() {
                if stopping {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        let c = conn.as_mut().expect("connected");
        // Was the stream trimmed past our position?
        if last != "0-0" {
            match redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query::<Value>(c)
            {
                Ok(v) => {
                    if let Some(first) = parse_entries(&v).first()
                        && id_key(&first.id) > id_key(&last)
                    {
                        // The oldest entry is newer than the last one we read: did we miss
                        // any? Only if something between existed; be conservative.
                        tail.gap.store(true, Ordering::SeqCst);
                    }
                }
                Err(_) => {
                    conn = None;
                    continue;
                }
            }
        }
        // BLOCK: returns as soon as anything is added, so the reader stays right behind the
        // writers (the fire script trims the stream harder when its batches are large).
        let reply = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(5000)
            .arg("BLOCK")
            .arg(100)
            .arg("STREAMS")
            .arg(&key)
            .arg(&last)
            .query::<Value>(c);
        match reply {
            Ok(Value::Array(streams)) => {
                let mut got = 0;
                for s in streams {
                    if let Value::Array(parts) = s
                        && parts.len() == 2
                    {
                        let entries = parse_entries(&parts[1]);
                        got += entries.len();
                        if let Some(e) = entries.last() {
                            last = e.id.clone();
                        }
                        tail.entries.lock().unwrap().extend(entries);
                    }
                }
                if got > 0 {
                    continue;
                }
            }
            Ok(_) => {}
            Err(_) => {
                conn = None;
                continue;
            }
        }
        if stopping {
            return;
        }
    }
}
