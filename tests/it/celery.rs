//! Celery interoperability against real Python Celery (celery + redis in a virtualenv that
//! `scripts/test` installs under `target/celery-venv`; `CELERIAC_PYTHON` points elsewhere)
//! and a private redis-server per test.
//!
//! - decoding messages captured from real Celery (`tests/fixtures/celery/messages.jsonl`);
//! - encode -> decode round trips (property test);
//! - a real `celery worker` runs what celeriac publishes (Rust API and `celeriac enqueue`),
//!   with the right arguments, the right number of times, in priority order;
//! - a real Python client's `.delay()` / `apply_async(priority=...)` run on `celeriac
//!   worker`, and `AsyncResult.get()` returns the results (failures raise);
//! - malformed and foreign entries and unknown task names are dead-lettered, the worker
//!   keeps going;
//! - a worker killed mid-task: the message comes back and runs again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use celeriac::broker::TaskMessage;
use celeriac::celery::{self, CeleryPublisher, CeleryTask, Properties, protocol};
use celeriac::config::CeleryQueue;
use proptest::prelude::*;
use redis::Commands;
use serde_json::{Value, json};

use crate::redis_server::{RedisOptions, RedisServer, free_port};
use crate::util::{celeriac, repo_root};

// ----- helpers ---------------------------------------------------------------------------

/// The Python with Celery installed. Fails (never skips) when it is missing.
fn python() -> PathBuf {
    let path = std::env::var_os("CELERIAC_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/celery-venv/bin/python"));
    let ok = Command::new(&path)
        .args(["-c", "import celery, redis"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "Python Celery is missing at {}: run scripts/test (it installs celery and redis into \
         target/celery-venv), or set CELERIAC_PYTHON to a python that can `import celery, redis`",
        path.display()
    );
    path
}

/// A private Redis on TCP (Celery and kombu speak TCP URLs) and a temp dir.
struct Env {
    redis: RedisServer,
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let redis = RedisServer::start_with(RedisOptions {
            tcp_port: Some(free_port()),
            ..RedisOptions::default()
        });
        let dir = tempfile::Builder::new()
            .prefix("celeriac-celery-")
            .tempdir()
            .unwrap();
        Env { redis, dir }
    }

    /// `redis://127.0.0.1:PORT/DB`.
    fn url(&self, db: u8) -> String {
        format!("{}/{db}", self.redis.tcp_url())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn db(&self, db: u8) -> redis::Connection {
        redis::Client::open(self.url(db))
            .and_then(|c| c.get_connection())
            .unwrap()
    }

    fn queue(&self) -> CeleryQueue {
        CeleryQueue {
            broker: self.url(1),
            backend: Some(self.url(2)),
            name: "celery".into(),
            priority_steps: vec![0, 3, 6, 9],
            key_prefix: String::new(),
        }
    }

    /// Writes a celeriac configuration with a `protocol: celery` queue and `tasks`.
    fn config(&self, tasks: &str) -> PathBuf {
        let path = self.path("celeriac.yaml");
        let text = format!(
            "timezone: Asia/Shanghai\nresult_expires: 10m\nqueues:\n  celery:\n    protocol: celery\n    \
             broker: {}\n    backend: {}\ntasks:\n{tasks}",
            self.url(1),
            self.url(2)
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The Celery app of the tests (`data_handle`, as in the seed), written to the temp dir:
    /// `cal(x, y)` appends a line to `runs.jsonl` and returns `x + y`.
    fn write_app(&self) {
        let app = format!(
            r#"
import json, os
from celery import Celery
app = Celery('data_handle', broker='{broker}', backend='{backend}')
app.conf.worker_prefetch_multiplier = 1
app.conf.result_expires = 600

@app.task(name='data_handle.cal', bind=True)
def cal(self, x, y):
    with open('{runs}', 'a') as f:
        f.write(json.dumps({{'x': x, 'y': y, 'id': self.request.id,
                             'fire_id': getattr(self.request, 'celeriac_fire_id', None),
                             'priority': self.request.delivery_info.get('priority')}}) + '\n')
    return x + y
"#,
            broker = self.url(1),
            backend = self.url(2),
            runs = self.path("runs.jsonl").display(),
        );
        std::fs::write(self.path("data_handle.py"), app).unwrap();
    }

    /// A real `celery worker` (solo pool: one task at a time, in the order received).
    fn celery_worker(&self) -> Guard {
        let log = std::fs::File::create(self.path("celery-worker.log")).unwrap();
        let child = Command::new(python())
            .args([
                "-m",
                "celery",
                "-A",
                "data_handle",
                "worker",
                "-P",
                "solo",
                "-c",
                "1",
                "-Q",
                "celery",
                "-l",
                "info",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ])
            .current_dir(self.dir.path())
            .env("PYTHONPATH", self.dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start celery worker");
        Guard(child)
    }

    /// `celeriac worker` on the configuration.
    fn celeriac_worker(&self, config: &Path, extra: &[&str]) -> Guard {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("celeriac-worker.log"))
            .unwrap();
        let child = celeriac()
            .args(["worker", "--allow-root", "-c"])
            .arg(config)
            .args(extra)
            .env("CELERIAC_LOG", "info")
            .env_remove("CELERIAC_BROKER")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start celeriac worker");
        Guard(child)
    }

    /// Runs a Python script in the temp dir; returns its stdout, failing on a non-zero exit.
    fn run_python(&self, script: &str) -> String {
        let path = self.path("client.py");
        std::fs::write(&path, script).unwrap();
        let out = Command::new(python())
            .arg(&path)
            .current_dir(self.dir.path())
            .env("PYTHONPATH", self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "python failed: {}\n{}\ncelery worker log:\n{}\nceleriac worker log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log("celery-worker.log"),
            self.log("celeriac-worker.log"),
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    fn lines(&self, name: &str) -> Vec<String> {
        self.log(name).lines().map(str::to_string).collect()
    }
}

/// A child process killed when dropped.
struct Guard(Child);

impl Guard {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    fn is_running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `done` until it is true, failing after `timeout` with `what`.
fn wait_for(timeout: Duration, what: impl Fn() -> String, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting: {}", what());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The stored Celery result of a task id, if any.
fn celery_result(conn: &mut redis::Connection, id: &str) -> Option<Value> {
    let raw: Option<String> = conn.get(format!("celery-task-meta-{id}")).unwrap();
    raw.map(|r| serde_json::from_str(&r).unwrap())
}

// ----- the wire format -------------------------------------------------------------------

fn fixtures() -> Vec<Value> {
    let text = std::fs::read_to_string(repo_root().join("tests/fixtures/celery/messages.jsonl"))
        .expect("tests/fixtures/celery/messages.jsonl (written by capture.py)");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn messages_captured_from_real_celery_decode() {
    let fixtures = fixtures();
    assert!(fixtures.len() >= 6);
    for f in fixtures {
        let case = f["case"].as_str().unwrap();
        let raw = f["raw"].as_str().unwrap();
        let expect = &f["expect"];
        let m = protocol::decode(raw.as_bytes()).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(m.task.task, expect["task"], "{case}");
        assert_eq!(m.task.id, expect["id"], "{case}");
        assert_eq!(json!(m.task.args), expect["args"], "{case}");
        assert_eq!(
            Value::Object(m.task.kwargs.clone()),
            expect["kwargs"],
            "{case}"
        );
        assert_eq!(json!(m.properties.priority), expect["priority"], "{case}");
        assert_eq!(json!(m.protocol), expect["protocol"], "{case}");
        assert_eq!(m.task.eta.is_some(), expect["eta"] == json!(true), "{case}");
        assert_eq!(
            m.task.expires.is_some(),
            expect["expires"] == json!(true),
            "{case}"
        );
        // The list kombu chose is the one celeriac computes for that priority.
        let step = protocol::priority_step(&[0, 3, 6, 9], m.properties.priority);
        let queue = m.properties.routing_key.clone();
        let queue = if queue.is_empty() {
            "celery".to_string()
        } else {
            queue
        };
        assert_eq!(
            f["list"],
            json!(protocol::list_key("", &queue, step)),
            "{case}"
        );
        // celeriac re-encodes it into something that decodes the same.
        let again = protocol::decode(protocol::encode(&m.task, &m.properties).as_bytes()).unwrap();
        assert_eq!(again.task, m.task_v2_view(), "{case}");
    }
}

/// What a message looks like once re-encoded as protocol 2 (v1 has no v2-only headers).
trait V2View {
    fn task_v2_view(&self) -> CeleryTask;
}

impl V2View for protocol::CeleryMessage {
    fn task_v2_view(&self) -> CeleryTask {
        let mut t = self.task.clone();
        if t.root_id.is_none() {
            t.root_id = Some(t.id.clone());
        }
        if t.origin.is_none() {
            // encode fills in celeriac's origin.
            t.origin = protocol::decode(protocol::encode(&self.task, &self.properties).as_bytes())
                .unwrap()
                .task
                .origin;
        }
        t
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        (-1e12f64..1e12).prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn encode_then_decode_is_the_identity(
        name in "[a-z_.]{1,30}",
        args in prop::collection::vec(json_value(), 0..4),
        kwargs in prop::collection::btree_map("[a-z_]{1,8}", json_value(), 0..4),
        priority in 0u8..=9,
        eta_ms in prop::option::of(0i64..4_000_000_000_000),
        retries in 0u32..5,
        fire in prop::option::of("[a-z]{1,8}@[0-9TZ:-]{4,20}"),
    ) {
        let mut task = CeleryTask::new(name);
        task.args = args;
        task.kwargs = kwargs.into_iter().collect();
        task.eta = eta_ms.map(|ms| chrono::DateTime::from_timestamp_millis(ms).unwrap());
        task.retries = retries;
        task.root_id = Some(task.id.clone());
        task.origin = Some("celeriac@test".into());
        if let Some(f) = fire {
            task.extra_headers.insert(protocol::FIRE_ID_HEADER.into(), json!(f));
        }
        // Python's isoformat keeps microseconds: compare at that precision.
        let props = Properties::for_publish(&task, "celery", priority);
        let decoded = protocol::decode(protocol::encode(&task, &props).as_bytes()).unwrap();
        prop_assert_eq!(&decoded.task, &task);
        prop_assert_eq!(&decoded.properties, &props);
        prop_assert_eq!(decoded.protocol, 2);
    }

    #[test]
    fn celeriac_messages_survive_the_trip_through_celery_format(
        args in prop_oneof![
            prop::collection::vec(json_value(), 1..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", json_value(), 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ],
        priority in 0u8..=9,
    ) {
        let m = TaskMessage::new("data_handle.cal", "celery").with_args(args.clone()).with_priority(priority);
        let plan = celery::celery_publish_plan(&m, &CeleryQueue {
            broker: "redis://x/1".into(), backend: None, name: "celery".into(),
            priority_steps: vec![0, 3, 6, 9], key_prefix: String::new(),
        });
        let decoded = protocol::decode(plan.payload.as_bytes()).unwrap();
        let (back_args, back_kwargs) = celery::celeriac_arguments(&decoded.task.args, &decoded.task.kwargs);
        prop_assert_eq!(back_args, args);
        prop_assert_eq!(back_kwargs, None);
        prop_assert_eq!(protocol::celeriac_priority(decoded.properties.priority), priority);
        prop_assert_eq!(decoded.task.id, m.id);
    }
}

#[test]
fn garbage_is_reported_not_panicked_on() {
    for raw in [
        &b"not json"[..],
        b"[1, 2]",
        b"{\"hello\": 1}",
        b"{\"body\": \"!!\", \"properties\": {\"body_encoding\": \"base64\"}, \"headers\": {\"task\": \"t\", \"id\": \"i\"}}",
        b"{\"body\": \"gAR9lC4=\", \"content-type\": \"application/x-python-serialize\", \"properties\": {\"body_encoding\": \"base64\"}, \"headers\": {}}",
        b"{\"body\": \"W10=\", \"properties\": {\"body_encoding\": \"base64\"}, \"headers\": {\"task\": \"t\"}}",
        b"\xff\xfe",
    ] {
        assert!(protocol::decode(raw).is_err(), "{}", String::from_utf8_lossy(raw));
    }
}

// ----- celeriac -> Celery workers --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_worker_runs_what_celeriac_publishes_in_priority_order() {
    let _python = python();
    let env = Env::new();
    env.write_app();
    let config = env.config("  noop: {builtin: noop}\n");
    let publisher = CeleryPublisher::connect(&env.queue()).await.unwrap();

    // Published before the worker starts, so that it finds them all and picks by priority.
    let priorities = [0u8, 3, 5, 9, 9, 7];
    let messages: Vec<TaskMessage> = priorities
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            TaskMessage::new("data_handle.cal", "celery")
                .with_args(json!([i, p]))
                .with_priority(p)
        })
        .collect();
    assert_eq!(publisher.publish(&messages).await.unwrap(), vec![true; 6]);
    // A beat tick delivered twice (a retried outbox delivery) is published once.
    let tick = TaskMessage::new("data_handle.cal", "celery")
        .with_args(json!({"x": 100, "y": 1}))
        .with_fire("cal-nightly", "cal-nightly@2025-01-01T18:30:00Z");
    let plan = celery::celery_publish_plan(&tick, &env.queue());
    assert!(publisher.publish_plan(&plan).await.unwrap());
    assert!(!publisher.publish_plan(&plan).await.unwrap());
    // And the command line.
    let out = celeriac()
        .args([
            "enqueue",
            "data_handle.cal",
            "-Q",
            "celery",
            "--priority",
            "4",
            "--args",
        ])
        .arg(r#"{"x": 40, "y": 2}"#)
        .arg("-c")
        .arg(&config)
        .env_remove("CELERIAC_BROKER")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let enqueued_id = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let _worker = env.celery_worker();
    wait_for(
        Duration::from_secs(60),
        || {
            format!(
                "runs: {:?}\n{}",
                env.lines("runs.jsonl"),
                env.log("celery-worker.log")
            )
        },
        || env.lines("runs.jsonl").len() >= 8,
    );
    std::thread::sleep(Duration::from_millis(1500)); // nothing runs twice
    let runs: Vec<Value> = env
        .lines("runs.jsonl")
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(runs.len(), 8, "{runs:?}");

    let mut seen: Vec<(i64, i64)> = runs
        .iter()
        .map(|r| (r["x"].as_i64().unwrap(), r["y"].as_i64().unwrap()))
        .collect();
    seen.sort();
    let mut want: Vec<(i64, i64)> = priorities
        .iter()
        .enumerate()
        .map(|(i, &p)| (i as i64, i64::from(p)))
        .chain([(40, 2), (100, 1)])
        .collect();
    want.sort();
    assert_eq!(seen, want, "each message ran once with its arguments");

    // kombu priority = 9 - celeriac priority; Celery served the lists most urgent first.
    let kombu: Vec<i64> = runs
        .iter()
        .map(|r| r["priority"].as_i64().unwrap())
        .collect();
    let steps: Vec<u8> = kombu
        .iter()
        .map(|&k| protocol::priority_step(&[0, 3, 6, 9], k as u8))
        .collect();
    assert!(
        steps.windows(2).all(|w| w[0] <= w[1]),
        "order by priority: {runs:?}"
    );
    assert_eq!(kombu[0], 0, "{runs:?}");
    assert_eq!(*kombu.last().unwrap(), 9, "{runs:?}");

    let tick_run = runs.iter().find(|r| r["x"] == 100).unwrap();
    assert_eq!(tick_run["fire_id"], "cal-nightly@2025-01-01T18:30:00Z");
    assert_eq!(tick_run["id"], json!(tick.id));
    // The Python worker's result is readable by celeriac too.
    let mut backend = env.db(2);
    let meta = celery_result(&mut backend, &enqueued_id).expect("result of the enqueued task");
    assert_eq!(meta["result"], 42);
    // `celeriac result` finds it in the Celery app's backend.
    let out = celeriac()
        .args(["result", &enqueued_id, "--json", "-c"])
        .arg(&config)
        .env_remove("CELERIAC_BROKER")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["value"], 42, "{r}");
}

// ----- Celery clients -> celeriac workers ------------------------------------------------

#[test]
fn python_clients_get_celeriac_results_and_priorities_are_respected() {
    let python = python();
    let env = Env::new();
    let order = env.path("order.txt");
    let config = env.config(&format!(
        "  cal:\n    celery_name: data_handle.cal\n    command: [{py:?}, \"-c\", \"import sys, json; a = json.load(sys.stdin); args = a['args']; print(sum(args) if isinstance(args, list) else args['x'] + args['y'])\"]\n  \
         echo: {{builtin: echo, celery_name: data_handle.echo}}\n  \
         boom: {{builtin: fail, celery_name: data_handle.boom}}\n  \
         order:\n    celery_name: data_handle.order\n    command: [\"sh\", \"-c\", \"echo {{{{n}}}} >> {order}\"]\n",
        py = python.display().to_string(),
        order = order.display(),
    ));
    let client_head = format!(
        "import json\nfrom celery import Celery\nfrom celery.exceptions import NotRegistered\n\
         app = Celery('data_handle', broker='{}', backend='{}')\n",
        env.url(1),
        env.url(2)
    );
    // Published before the worker starts: kombu priorities (0 runs first on Redis).
    env.run_python(&format!(
        "{client_head}\
         ids = [app.send_task('data_handle.order', kwargs={{'n': n}}, priority=p).id\n\
                for n, p in [(1, 9), (2, 6), (3, 0), (4, 3), (5, 0), (6, 9)]]\n\
         json.dump(ids, open('order_ids.json', 'w'))\n"
    ));
    let mut worker = env.celeriac_worker(&config, &["--concurrency", "1"]);
    let out = env.run_python(&format!(
        "{client_head}\
         out = {{}}\n\
         for i in json.load(open('order_ids.json')):\n\
         \x20   app.AsyncResult(i).get(timeout=30)\n\
         out['ignored_id'] = app.send_task('data_handle.echo', args=(0,), ignore_result=True).id\n\
         out['positional'] = app.send_task('data_handle.cal', args=(2, 3)).get(timeout=30)\n\
         out['keyword'] = app.send_task('data_handle.cal', kwargs={{'x': 4, 'y': 5}}, priority=5).get(timeout=30)\n\
         out['echo'] = app.send_task('data_handle.echo', args=(1, 'é'), kwargs={{'k': [None]}}).get(timeout=30)\n\
         try:\n\
         \x20   app.send_task('data_handle.boom', kwargs={{'message': 'it broke'}}).get(timeout=30)\n\
         \x20   out['boom'] = 'no exception'\n\
         except RuntimeError as e:\n\
         \x20   out['boom'] = str(e)\n\
         r = app.send_task('data_handle.unknown', args=(1,))\n\
         try:\n\
         \x20   r.get(timeout=30)\n\
         \x20   out['unknown'] = 'no exception'\n\
         except NotRegistered as e:\n\
         \x20   out['unknown'] = 'NotRegistered ' + str(e)\n\
         out['unknown_state'] = r.state\n\
         print(json.dumps(out))\n"
    ));
    let out: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(out["positional"], 5);
    assert_eq!(out["keyword"], 9);
    assert_eq!(
        out["echo"],
        json!({"args": [1, "é"], "kwargs": {"k": [null]}})
    );
    assert_eq!(out["boom"], "it broke");
    assert_eq!(out["unknown"], "NotRegistered 'data_handle.unknown'");
    assert_eq!(out["unknown_state"], "FAILURE");
    // Ran before `positional` (concurrency 1, same list), but its success was not stored.
    let mut backend = env.db(2);
    assert_eq!(
        celery_result(&mut backend, out["ignored_id"].as_str().unwrap()),
        None
    );

    // concurrency 1: run one at a time, kombu priority 0 first, FIFO within a priority list.
    let ran: Vec<String> = env.lines("order.txt");
    assert_eq!(ran, ["3", "5", "4", "2", "1", "6"], "run order");

    // The unknown task's message was kept as a dead letter (and so was the failure, which
    // had no retries left), and the worker is still up.
    let mut broker = env.db(1);
    let dead: Vec<String> = broker.lrange("_celeriac.celery.dead", 0, -1).unwrap();
    let records: Vec<Value> = dead
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "{records:?}");
    let unknown = records
        .iter()
        .find(|r| r["task"] == "data_handle.unknown")
        .expect("the unknown task is a dead letter");
    assert!(
        unknown["reason"].as_str().unwrap().contains("unknown task"),
        "{unknown}"
    );
    assert!(records.iter().any(|r| r["task"] == "data_handle.boom"));
    assert!(worker.is_running());
    wait_for(
        Duration::from_secs(10),
        || env.log("celeriac-worker.log"),
        || broker.hlen::<_, usize>("_celeriac.celery.unacked").unwrap() == 0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_foreign_entries_go_to_dead_letters_and_the_worker_goes_on() {
    let env = Env::new();
    let config = env.config("  echo: {builtin: echo, celery_name: data_handle.cal}\n");
    let mut broker = env.db(1);
    let garbage: [&[u8]; 5] = [
        b"not json at all",
        b"{\"hello\": \"a foreign producer\"}",
        b"{\"body\": \"gAR9lC4=\", \"content-type\": \"application/x-python-serialize\", \"content-encoding\": \"binary\", \"headers\": {\"task\": \"data_handle.cal\", \"id\": \"pickled\"}, \"properties\": {\"body_encoding\": \"base64\", \"delivery_tag\": \"x\", \"priority\": 0, \"delivery_info\": {\"exchange\": \"\", \"routing_key\": \"celery\"}}}",
        b"{\"body\": \"bm90IGpzb24=\", \"headers\": {\"task\": \"data_handle.cal\", \"id\": \"bad-body\"}, \"properties\": {\"body_encoding\": \"base64\"}}",
        b"\xff\xfe\x00binary",
    ];
    for g in garbage {
        let _: () = broker.lpush("celery", g).unwrap();
    }
    // A real Python-published message (captured fixture) and one on a priority sub-list.
    let fixture = fixtures()
        .into_iter()
        .find(|f| f["case"] == "delay_positional")
        .unwrap();
    let _: () = broker
        .lpush("celery", fixture["raw"].as_str().unwrap())
        .unwrap();
    let publisher = CeleryPublisher::connect(&env.queue()).await.unwrap();
    let ok = TaskMessage::new("data_handle.cal", "celery")
        .with_args(json!([7]))
        .with_priority(1);
    publisher.publish(std::slice::from_ref(&ok)).await.unwrap();

    let mut worker = env.celeriac_worker(&config, &[]);
    let mut backend = env.db(2);
    let fixture_id = fixture["expect"]["id"].as_str().unwrap().to_string();
    wait_for(
        Duration::from_secs(30),
        || env.log("celeriac-worker.log"),
        || {
            celery_result(&mut backend, &fixture_id).is_some()
                && celery_result(&mut backend, &ok.id).is_some()
                && broker.llen::<_, usize>("_celeriac.celery.dead").unwrap() >= 5
        },
    );
    assert_eq!(
        celery_result(&mut backend, &fixture_id).unwrap()["result"],
        json!([2, 3])
    );
    assert_eq!(
        celery_result(&mut backend, &ok.id).unwrap()["status"],
        "SUCCESS"
    );
    std::thread::sleep(Duration::from_millis(300));
    let dead: Vec<Vec<u8>> = broker.lrange("_celeriac.celery.dead", 0, -1).unwrap();
    assert_eq!(dead.len(), 5);
    for record in &dead {
        let r: Value = serde_json::from_slice(record).unwrap();
        assert!(
            r["reason"]
                .as_str()
                .unwrap()
                .contains("not a Celery task message"),
            "{r}"
        );
    }
    let bodies: Vec<String> = dead
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(r).unwrap()["body"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        bodies.iter().any(|b| b == "not json at all"),
        "kept as they were: {bodies:?}"
    );
    assert!(worker.is_running(), "{}", env.log("celeriac-worker.log"));
    let left: usize = broker.llen("celery").unwrap();
    let unacked: usize = broker.hlen("_celeriac.celery.unacked").unwrap();
    assert_eq!((left, unacked), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_a_worker_killed_mid_task_comes_back_and_runs_again() {
    let env = Env::new();
    let starts = env.path("starts.txt");
    let config = env.config(&format!(
        "  slow:\n    celery_name: data_handle.slow\n    command: [\"sh\", \"-c\", \"echo start >> {}; sleep 2\"]\n",
        starts.display()
    ));
    let publisher = CeleryPublisher::connect(&env.queue()).await.unwrap();
    let m = TaskMessage::new("data_handle.slow", "celery");
    publisher.publish(std::slice::from_ref(&m)).await.unwrap();

    let mut first = env.celeriac_worker(&config, &["--lease", "2s"]);
    wait_for(
        Duration::from_secs(20),
        || env.log("celeriac-worker.log"),
        || env.lines("starts.txt").len() == 1,
    );
    first.kill(); // SIGKILL mid-task: no ack, no release.
    let mut broker = env.db(1);
    let unacked: usize = broker.hlen("_celeriac.celery.unacked").unwrap();
    assert_eq!(
        unacked, 1,
        "the killed worker's reservation is still recorded"
    );

    let _second = env.celeriac_worker(&config, &["--lease", "2s"]);
    let mut backend = env.db(2);
    wait_for(
        Duration::from_secs(30),
        || env.log("celeriac-worker.log"),
        || celery_result(&mut backend, &m.id).is_some(),
    );
    let meta = celery_result(&mut backend, &m.id).unwrap();
    assert_eq!(meta["status"], "SUCCESS", "{meta}");
    assert_eq!(env.lines("starts.txt").len(), 2, "ran again after the kill");
    assert!(
        env.log("celeriac-worker.log")
            .contains("Celery message restored"),
        "{}",
        env.log("celeriac-worker.log")
    );
    // Results are stored before the ack: wait for the ack.
    wait_for(
        Duration::from_secs(10),
        || env.log("celeriac-worker.log"),
        || broker.hlen::<_, usize>("_celeriac.celery.unacked").unwrap() == 0,
    );
}

// ----- import-celery ----------------------------------------------------------------------

#[test]
fn import_celery_converts_the_seed_setup_into_a_valid_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("beat.json");
    let out = dir.path().join("celeriac.yaml");
    std::fs::copy(
        repo_root().join("tests/fixtures/celery/beat_schedule.json"),
        &dump,
    )
    .unwrap();
    let run = celeriac()
        .arg("import-celery")
        .arg(&dump)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let cfg = celeriac::config::load(&out)
        .unwrap_or_else(|e| panic!("{e}\n{}", std::fs::read_to_string(&out).unwrap()));
    assert_eq!(cfg.timezone, chrono_tz::Asia::Shanghai);
    assert_eq!(cfg.result_expires, Duration::from_secs(600));
    let q = cfg.queues["celery"]
        .celery
        .as_ref()
        .expect("protocol: celery");
    assert_eq!(q.broker, "redis://127.0.0.1:6379/1");
    assert_eq!(q.backend.as_deref(), Some("redis://127.0.0.1:6379/2"));
    let nightly = &cfg.schedules["cal-nightly"];
    assert_eq!(nightly.task, "data_handle.cal");
    assert_eq!(nightly.args, json!([2, 3]));
    assert_eq!(nightly.queue, "celery");
    let next = nightly
        .timing
        .next_after("2025-01-01T00:00:00Z".parse().unwrap())
        .unwrap();
    // 02:30 in Shanghai is 18:30 UTC the day before.
    assert_eq!(next.to_rfc3339(), "2025-01-01T18:30:00+00:00");
    let often = &cfg.schedules["cal-every-30s"];
    assert_eq!(often.kwargs.as_ref().unwrap()["y"], 1);
    let t0: chrono::DateTime<chrono::Utc> = "2025-01-01T00:00:10Z".parse().unwrap();
    assert_eq!(
        often.timing.next_after(t0).unwrap().to_rfc3339(),
        "2025-01-01T00:00:30+00:00"
    );
    assert_eq!(
        often.priority, 9,
        "Celery's default priority is served first"
    );
    // Both-day-fields crontab: converted to `#N` with a warning in the file.
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("mon#1"), "{text}");
    assert!(text.contains("# WARNING"), "{text}");
    let disabled = &cfg.schedules["odd-days"];
    assert!(
        !disabled.enabled,
        "unconvertible crontab is disabled, not dropped"
    );
}

/// The dump snippet of the migration guide, run by real Python against the seed's setup,
/// gives what `import-celery` reads.
#[test]
fn the_documented_dump_snippet_produces_the_fixture_shape() {
    let env = Env::new();
    let doc = std::fs::read_to_string(repo_root().join("docs/migrating-from-celery.md")).unwrap();
    let snippet = doc
        .split("```python dump_beat_schedule.py\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/migrating-from-celery.md has the dump snippet");
    let app = r#"
from datetime import timedelta
from celery import Celery
from celery.schedules import crontab
app = Celery('data_handle', broker='redis://127.0.0.1:6379/1', backend='redis://127.0.0.1:6379/2')
app.conf.timezone = 'Asia/Shanghai'
app.conf.result_expires = 600
app.conf.beat_schedule = {
    'cal-nightly': {'task': 'data_handle.cal', 'schedule': crontab(minute=30, hour=2), 'args': (2, 3)},
    'cal every 30s': {'task': 'data_handle.cal', 'schedule': timedelta(seconds=30), 'kwargs': {'x': 1, 'y': 1},
                      'options': {'queue': 'celery', 'priority': 0, 'expires': 25}},
}
"#;
    std::fs::write(env.path("data_handle.py"), app).unwrap();
    let out = env
        .run_python(&snippet.replace("from proj.celery import app", "from data_handle import app"));
    let dump: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(dump["timezone"], "Asia/Shanghai");
    assert_eq!(dump["result_expires"], 600.0);
    assert_eq!(dump["beat_schedule"]["cal-nightly"]["crontab"]["hour"], "2");
    assert_eq!(dump["beat_schedule"]["cal every 30s"]["every"], 30.0);
    std::fs::write(env.path("beat.json"), &out).unwrap();
    let yaml = env.path("out.yaml");
    let run = celeriac()
        .arg("import-celery")
        .arg(env.path("beat.json"))
        .arg("-o")
        .arg(&yaml)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let cfg = celeriac::config::load(&yaml).unwrap();
    assert_eq!(cfg.schedules.len(), 2);
    assert_eq!(cfg.schedules["cal-every-30s"].priority, 9);
}

// ----- configuration ---------------------------------------------------------------------

#[test]
fn celery_queue_settings_are_validated_with_positions() {
    let text = r#"queues:
  celery:
    protocol: celery
    broker: redis+socket:///run/redis.sock
    priority_steps: [0, 5, 3]
  nobroker:
    protocol: celery
  native:
    backend: redis://127.0.0.1:6379/2
  typo: {protocol: celry}
tasks:
  a: {builtin: noop, celery_name: data_handle.cal}
  b: {builtin: noop, celery_name: [data_handle.cal]}
schedules:
  s:
    task: data_handle.not_a_celeriac_task
    every: 30s
    queue: native
"#;
    let errors = celeriac::config::load_str(text, Path::new("c.yaml"))
        .unwrap_err()
        .to_string();
    let lines: Vec<&str> = errors.lines().collect();
    assert_eq!(
        lines,
        [
            "c.yaml:4:13: unsupported `broker` URL `redis+socket:///run/redis.sock`; for a unix socket write `unix:///run/redis.sock`",
            "c.yaml:5:21: `priority_steps` must start with 0 and ascend, like kombu's default `[0, 3, 6, 9]`",
            "c.yaml:6:3: queue `nobroker` has `protocol: celery` but no `broker`: give the Celery app's broker URL, e.g. `broker: redis://127.0.0.1:6379/1`",
            "c.yaml:9:5: `backend` only applies to `protocol: celery` queues; add `protocol: celery` to queue `native` or remove `backend`",
            "c.yaml:10:20: unknown protocol `celry`; did you mean `celery`?",
            "c.yaml:13:3: Celery task name `data_handle.cal` is claimed by tasks `a` and `b`; a Celery name runs one task",
            "c.yaml:16:11: unknown task `data_handle.not_a_celeriac_task`",
        ],
        "{errors}"
    );
}

#[test]
fn schedules_on_celery_queues_name_celery_tasks() {
    let text = r#"timezone: Asia/Shanghai
queues:
  celery: {protocol: celery, broker: "redis://127.0.0.1:6379/1", name: kombu_q, priority_steps: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}
tasks:
  cal: {builtin: echo, celery_name: [data_handle.cal, legacy.cal]}
schedules:
  nightly:
    task: data_handle.cal
    cron: "30 2 * * *"
    args: [2, 3]
    kwargs: {round: true}
    queue: celery
"#;
    let cfg = celeriac::config::load_str(text, Path::new("c.yaml")).unwrap();
    let s = &cfg.schedules["nightly"];
    let q = cfg.celery_queue_of(s).expect("a celery queue");
    assert_eq!(q.name, "kombu_q");
    assert_eq!(q.priority_steps.len(), 10);
    assert_eq!(q.backend, None);
    assert_eq!(cfg.task_for_celery_name("legacy.cal").unwrap().name, "cal");
    assert_eq!(cfg.task_for_celery_name("cal").unwrap().name, "cal");
    assert!(cfg.task_for_celery_name("other").is_none());
    let plan = celery::celery_publish_plan(
        &TaskMessage::new(&s.task, &s.queue)
            .with_args(s.args.clone())
            .with_kwargs(s.kwargs.clone().unwrap())
            .with_priority(6),
        q,
    );
    assert_eq!(plan.list_key, "kombu_q\x06\x163");
    let m = protocol::decode(plan.payload.as_bytes()).unwrap();
    assert_eq!(m.task.args, vec![json!(2), json!(3)]);
    assert_eq!(m.task.kwargs["round"], json!(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_consumes_native_and_celery_queues_together() {
    use celeriac::broker::{Broker, RedisBroker, RedisBrokerOptions, TaskStatus};
    let env = Env::new();
    let config = env.path("mixed.yaml");
    std::fs::write(
        &config,
        format!(
            "broker: {native}\nqueues:\n  default: {{}}\n  celery:\n    protocol: celery\n    \
             broker: {broker}\n    backend: {backend}\ntasks:\n  echo: {{builtin: echo, celery_name: data_handle.echo}}\n",
            native = env.url(0),
            broker = env.url(1),
            backend = env.url(2)
        ),
    )
    .unwrap();
    let native = RedisBroker::connect(&env.url(0), RedisBrokerOptions::default())
        .await
        .unwrap();
    let publisher = CeleryPublisher::connect(&env.queue()).await.unwrap();
    let mut native_ids = Vec::new();
    let mut celery_ids = Vec::new();
    for i in 0..20 {
        let m = TaskMessage::new("echo", "default").with_args(json!({"i": i}));
        native.enqueue(&m).await.unwrap();
        native_ids.push(m.id);
        let c = TaskMessage::new("data_handle.echo", "celery").with_args(json!([i]));
        publisher.publish(std::slice::from_ref(&c)).await.unwrap();
        celery_ids.push(c.id);
    }
    let _worker = env.celeriac_worker(&config, &["--concurrency", "2"]);
    let mut backend = env.db(2);
    wait_for(
        Duration::from_secs(30),
        || env.log("celeriac-worker.log"),
        || {
            celery_ids
                .iter()
                .all(|id| celery_result(&mut backend, id).is_some())
        },
    );
    for (i, id) in celery_ids.iter().enumerate() {
        assert_eq!(
            celery_result(&mut backend, id).unwrap()["result"],
            json!([i])
        );
    }
    for (i, id) in native_ids.iter().enumerate() {
        let r = native
            .wait_result(id, Duration::from_secs(30))
            .await
            .unwrap()
            .expect("native result");
        assert_eq!(
            (r.status, r.value),
            (TaskStatus::Success, Some(json!({"i": i})))
        );
    }
}

// ----- CeleryBroker, through the Broker trait --------------------------------------------

async fn celery_broker(env: &Env) -> std::sync::Arc<dyn celeriac::broker::Broker> {
    let cfg_path = env.config("  echo: {builtin: echo, celery_name: data_handle.cal}\n");
    let cfg = celeriac::config::load(&cfg_path).unwrap();
    let mut brokers = celery::open_brokers(&cfg, &["celery".to_string()], Default::default())
        .await
        .unwrap();
    assert_eq!(brokers.len(), 1);
    brokers.remove(0).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_broker_reserves_by_priority_and_settles_every_way() {
    use celeriac::broker::DeadSelector;
    let env = Env::new();
    let broker = celery_broker(&env).await;
    let q = vec!["celery".to_string()];
    let lease = Duration::from_secs(30);
    let wait = Duration::from_millis(200);

    // Priorities across kombu's lists: 9 first, then 5, then 0.
    let msgs: Vec<TaskMessage> = [0u8, 5, 9]
        .iter()
        .map(|&p| {
            TaskMessage::new("data_handle.cal", "celery")
                .with_args(json!([p]))
                .with_priority(p)
        })
        .collect();
    assert_eq!(broker.enqueue_many(&msgs).await.unwrap(), 3);
    let stats = broker.queue_stats("celery").await.unwrap();
    assert_eq!(
        (stats.ready[9], stats.ready[6], stats.ready[0]),
        (1, 1, 1),
        "{stats:?}"
    );
    let got = broker.reserve(&q, 10, lease, wait).await.unwrap();
    let order: Vec<u8> = got.iter().map(|d| d.priority).collect();
    assert_eq!(
        order,
        [9, 5, 0],
        "highest first, each with its own priority"
    );
    let ids: Vec<&str> = got
        .iter()
        .map(|d| d.message().unwrap().id.as_str())
        .collect();
    assert_eq!(ids, [&msgs[2].id, &msgs[1].id, &msgs[0].id]);
    assert_eq!(
        got[0].message().unwrap().task,
        "echo",
        "mapped by celery_name"
    );
    assert_eq!(broker.queue_stats("celery").await.unwrap().active, 3);

    // ack: once.
    assert_eq!(
        broker.ack_many(&[got[0].lease.clone()]).await.unwrap(),
        [true]
    );
    assert_eq!(
        broker.ack_many(&[got[0].lease.clone()]).await.unwrap(),
        [false]
    );
    assert_eq!(
        broker
            .extend_lease(&[got[0].lease.clone(), got[1].lease.clone()], lease)
            .await
            .unwrap(),
        [false, true]
    );

    // release: back at the front, attempt unchanged.
    assert!(broker.release(&[got[1].lease.clone()]).await.unwrap()[0]);
    let again = broker.reserve(&q, 1, lease, wait).await.unwrap();
    assert_eq!(again[0].message().unwrap().id, msgs[1].id);
    assert_eq!(again[0].attempt, 0);

    // retry_later: waits in the delayed set, then comes back with attempt + 1, the reason,
    // and Celery's retries header + 1.
    let eta = chrono::Utc::now() + chrono::Duration::milliseconds(300);
    assert!(
        broker
            .retry_later(&again[0].lease, eta, "flaky")
            .await
            .unwrap()
    );
    assert_eq!(broker.queue_stats("celery").await.unwrap().delayed, 1);
    let retried = broker
        .reserve(&q, 1, lease, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].message().unwrap().id, msgs[1].id);
    assert_eq!(
        (retried[0].attempt, retried[0].last_error.as_deref()),
        (1, Some("flaky"))
    );
    let mut conn = env.db(1);
    let stored: String = conn
        .hget("_celeriac.celery.unacked", &retried[0].lease.id)
        .unwrap();
    let raw = stored.split_once('\n').unwrap().1;
    let decoded = protocol::decode(raw.as_bytes()).unwrap();
    assert_eq!(decoded.task.retries, 1);

    // dead letter, list, requeue.
    assert!(
        broker
            .dead_letter(&retried[0].lease, "gave up")
            .await
            .unwrap()
    );
    let dead = broker.dead_letters("celery", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].id.as_str(), dead[0].reason.as_str()),
        (msgs[1].id.as_str(), "gave up")
    );
    assert_eq!(
        broker
            .requeue_dead("celery", DeadSelector::Id(msgs[1].id.clone()))
            .await
            .unwrap(),
        1
    );
    let back = broker.reserve(&q, 1, lease, wait).await.unwrap();
    assert_eq!(
        (back[0].message().unwrap().id.as_str(), back[0].attempt),
        (msgs[1].id.as_str(), 0)
    );

    // A message with a future eta is not handed out before it.
    let later = TaskMessage::new("data_handle.cal", "celery")
        .with_eta(chrono::Utc::now() + chrono::Duration::milliseconds(400));
    broker.enqueue(&later).await.unwrap();
    assert!(
        broker
            .reserve(&q, 5, lease, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    let due = broker
        .reserve(&q, 5, lease, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(due[0].message().unwrap().id, later.id);

    // purge removes ready and delayed messages.
    broker.enqueue_many(&msgs).await.unwrap();
    assert_eq!(broker.purge("celery").await.unwrap(), 3);
    assert_eq!(broker.queue_stats("celery").await.unwrap().ready_total(), 0);
    broker.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_broker_restores_expired_leases_and_waits_for_messages_without_taking_them() {
    let env = Env::new();
    let broker = celery_broker(&env).await;
    let q = vec!["celery".to_string()];
    let m = TaskMessage::new("data_handle.cal", "celery");
    broker.enqueue(&m).await.unwrap();
    let first = broker
        .reserve(&q, 1, Duration::from_millis(300), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    // Not extended: the lease runs out and the next reserve restores and hands it out again.
    let second = broker
        .reserve(&q, 1, Duration::from_secs(30), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(second[0].message().unwrap().id, m.id);
    assert_eq!(second[0].attempt, 1);
    assert!(
        second[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("lease expired")
    );
    assert!(
        !broker.ack(&first[0].lease).await.unwrap(),
        "the stale holder lost it"
    );
    assert!(broker.ack(&second[0].lease).await.unwrap());

    // A reserve that waits is woken by a publish (BRPOP), not by polling.
    let waiter = {
        let broker = broker.clone();
        let q = q.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let got = broker
                .reserve(&q, 4, Duration::from_secs(30), Duration::from_secs(10))
                .await
                .unwrap();
            (got, start.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = TaskMessage::new("data_handle.cal", "celery").with_priority(2);
    broker.enqueue(&late).await.unwrap();
    let (got, took) = waiter.await.unwrap();
    assert_eq!(got[0].message().unwrap().id, late.id);
    assert!(took < Duration::from_secs(2), "{took:?}");
    let mut conn = env.db(1);
    let unacked: usize = conn.hlen("_celeriac.celery.unacked").unwrap();
    assert_eq!(unacked, 1, "the message it woke for was reserved");

    // A waiting reserve takes nothing while it waits: a waiter that goes away (a worker
    // killed while idle) loses no message published meanwhile.
    let waiter = {
        let broker = broker.clone();
        let q = q.clone();
        tokio::spawn(async move {
            broker
                .reserve(&q, 4, Duration::from_secs(30), Duration::from_secs(10))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    waiter.abort();
    let _ = waiter.await;
    let kept = TaskMessage::new("data_handle.cal", "celery").with_priority(9);
    broker.enqueue(&kept).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waiting: usize = conn.llen("celery").unwrap();
    assert_eq!(waiting, 1, "still in kombu's list");
    let got = broker
        .reserve(&q, 4, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(got[0].message().unwrap().id, kept.id);
}

/// What the beat's fire script can embed: a push into the Celery app's database of the same
/// server, at most once per tick, returning to the beat's database afterwards.
#[test]
fn publish_lua_pushes_into_another_database_once_per_tick() {
    let env = Env::new();
    let q = env.queue();
    let route = celery::beat_route(&env.url(0), &q);
    let celery::BeatRoute::OtherDatabase { db, back } = route else {
        panic!("{route:?}");
    };
    let tick = TaskMessage::new("data_handle.cal", "celery")
        .with_args(json!([1, 2]))
        .with_fire("s", "s@2025-01-01T00:00:00Z");
    let plan = celery::celery_publish_plan(&tick, &q);
    let script = redis::Script::new(&format!(
        "{}\nlocal r = celeriac_celery_publish(KEYS[1], ARGV[1], KEYS[2], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]))\n\
         redis.call('SET', KEYS[3], 'fired')\nreturn r",
        celery::PUBLISH_LUA
    ));
    let mut beat_db = env.db(0);
    let run = |conn: &mut redis::Connection| -> i64 {
        script
            .key(&plan.list_key)
            .key(plan.dedupe_key.as_deref().unwrap())
            .key("celeriac:fire:s")
            .arg(&plan.payload)
            .arg(3600)
            .arg(db)
            .arg(back)
            .invoke(conn)
            .unwrap()
    };
    assert_eq!(run(&mut beat_db), 1);
    assert_eq!(run(&mut beat_db), 0, "a repeated tick is not pushed again");
    let mut celery_db = env.db(1);
    let list: Vec<String> = celery_db.lrange(&plan.list_key, 0, -1).unwrap();
    assert_eq!(list, std::slice::from_ref(&plan.payload));
    let marker: Option<String> = beat_db.get("celeriac:fire:s").unwrap();
    assert_eq!(
        marker.as_deref(),
        Some("fired"),
        "the script went back to the beat's database"
    );
    let stray: Option<String> = celery_db.get("celeriac:fire:s").unwrap();
    assert_eq!(stray, None);
}

// ----- celeriac beat -> Celery workers ---------------------------------------------------

/// Two `celeriac beat`s on the celeriac Redis (db 0) fire a 1 s schedule on a `protocol:
/// celery` queue (the Celery app's Redis, db 1); an unmodified `celery worker` runs it. One
/// beat is SIGKILLed half-way (the other takes over). Every tick in the window ran exactly once,
/// with the schedule's arguments, its fire_id in the headers, and nothing is left in the outbox.
#[test]
fn celery_worker_runs_every_beat_tick_exactly_once() {
    let _python = python();
    let env = Env::new();
    env.write_app();
    let config = env.path("beat.yaml");
    std::fs::write(
        &config,
        format!(
            "timezone: Asia/Shanghai\nqueues:\n  celery:\n    protocol: celery\n    broker: {}\n    \
             backend: {}\ntasks:\n  noop: {{builtin: noop}}\nschedules:\n  cal-every:\n    \
             task: data_handle.cal\n    every: 1s\n    args: [2, 3]\n    queue: celery\n",
            env.url(1),
            env.url(2)
        ),
    )
    .unwrap();
    let beat = |n: u32| {
        let log = std::fs::File::create(env.path(&format!("beat{n}.log"))).unwrap();
        Guard(
            celeriac()
                .args(["beat", "--allow-root", "--lease-ttl", "3s", "-c"])
                .arg(&config)
                .arg("--broker")
                .arg(env.url(0))
                .env("CELERIAC_LOG", "info")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start beat"),
        )
    };
    let _worker = env.celery_worker();
    let mut first = beat(1);
    let _second = beat(2);
    let logs = || {
        format!(
            "runs: {:?}\nbeat1:\n{}\nbeat2:\n{}\ncelery:\n{}",
            env.lines("runs.jsonl"),
            env.log("beat1.log"),
            env.log("beat2.log"),
            env.log("celery-worker.log")
        )
    };
    wait_for(Duration::from_secs(60), logs, || {
        env.lines("runs.jsonl").len() >= 4
    });
    // Kill whichever beat; if it was the leader, the other takes over within the lease ttl.
    first.kill();
    let after_kill = env.lines("runs.jsonl").len();
    wait_for(Duration::from_secs(60), logs, || {
        env.lines("runs.jsonl").len() >= after_kill + 5
    });
    // Remove the schedule (hot reload): the beat stops firing and forwards what is left.
    std::fs::write(
        &config,
        format!(
            "timezone: Asia/Shanghai\nqueues:\n  celery:\n    protocol: celery\n    broker: {}\n    \
             backend: {}\ntasks:\n  noop: {{builtin: noop}}\n",
            env.url(1),
            env.url(2)
        ),
    )
    .unwrap();
    wait_for(Duration::from_secs(20), logs, || {
        env.log("beat2.log").contains("reload applied")
    });
    std::thread::sleep(Duration::from_secs(3));

    let runs: Vec<Value> = env
        .lines("runs.jsonl")
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut ticks: Vec<chrono::DateTime<chrono::Utc>> = runs
        .iter()
        .map(|r| {
            assert_eq!(
                (r["x"].as_i64(), r["y"].as_i64()),
                (Some(2), Some(3)),
                "{r}"
            );
            let fire_id = r["fire_id"]
                .as_str()
                .unwrap_or_else(|| panic!("no fire_id: {r}"));
            let at = fire_id
                .strip_prefix("cal-every@")
                .expect("fire_id names the schedule");
            chrono::DateTime::parse_from_rfc3339(at).unwrap().to_utc()
        })
        .collect();
    ticks.sort();
    let n = ticks.len();
    ticks.dedup();
    assert_eq!(ticks.len(), n, "a tick ran twice: {runs:?}");
    // Consecutive ticks, except across the kill: a gap there is what the misfire policy
    // (`latest` within grace) allows, never a double.
    let gaps = ticks
        .windows(2)
        .filter(|w| w[1] - w[0] != chrono::Duration::seconds(1))
        .count();
    assert!(
        gaps <= 1,
        "ticks lost outside the failover: {ticks:?}\n{}",
        logs()
    );
    // Nothing left in the outbox (celeriac queue `celery` on db 0).
    let mut native = env.db(0);
    let keys: Vec<String> = native.keys("*{q:celery}*").unwrap();
    for k in keys
        .iter()
        .filter(|k| k.ends_with(":ready") || k.ends_with(":active"))
    {
        let n: u64 = native.zcard(k).unwrap();
        assert_eq!(n, 0, "{k} still holds {n} message(s)\n{}", logs());
    }
}

/// The outbox forwarder: a tick pushed by a forwarder that died before its ack comes back
/// after the lease and is acked without a second push; while the Celery broker is down the
/// message waits in the outbox, and goes out once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarder_pushes_each_tick_once_and_keeps_it_while_celery_is_down() {
    use celeriac::broker::{Broker, RedisBroker, RedisBrokerOptions};
    use celeriac::celery::forward::Forwarder;
    let env = Env::new();
    let outbox: std::sync::Arc<dyn Broker> = std::sync::Arc::new(
        RedisBroker::connect(&env.url(0), RedisBrokerOptions::default())
            .await
            .unwrap(),
    );
    let queue = env.queue();
    let tick = TaskMessage::new("data_handle.cal", "celery")
        .with_args(json!([1, 2]))
        .with_fire("cal", "cal@2026-01-01T00:00:00Z");
    outbox.enqueue(&tick).await.unwrap();
    // A forwarder takes it, pushes it, and dies before acking.
    let taken = outbox
        .reserve(
            &["celery".to_string()],
            10,
            Duration::from_millis(300),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    let publisher = CeleryPublisher::connect(&queue).await.unwrap();
    assert_eq!(
        publisher
            .publish(std::slice::from_ref(&tick))
            .await
            .unwrap(),
        vec![true]
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Another forwarder finds it again once the lease ran out: acked, not pushed twice.
    let mut forwarder = Forwarder::new(outbox.clone(), vec![("celery".into(), queue.clone())])
        .unwrap()
        .with_lease(Duration::from_secs(5));
    assert_eq!(forwarder.round().await.unwrap(), 1);
    let mut kombu = env.db(1);
    let lists = publisher.keys().lists().to_vec();
    let mut pushed =
        move || -> u64 { lists.iter().map(|l| kombu.llen::<_, u64>(l).unwrap()).sum() };
    assert_eq!(pushed(), 1, "pushed twice");
    let stats = outbox.queue_stats("celery").await.unwrap();
    assert_eq!((stats.ready_total(), stats.active), (0, 0));

    // The Celery broker unreachable: the round fails, the message stays in the outbox.
    let dead = CeleryQueue {
        broker: format!("redis://127.0.0.1:{}/1", free_port()),
        ..queue.clone()
    };
    let second =
        TaskMessage::new("data_handle.cal", "celery").with_fire("cal", "cal@2026-01-01T00:00:01Z");
    outbox.enqueue(&second).await.unwrap();
    let mut down = Forwarder::new(outbox.clone(), vec![("celery".into(), dead)]).unwrap();
    assert!(down.round().await.is_err());
    let stats = outbox.queue_stats("celery").await.unwrap();
    assert_eq!(
        stats.ready_total(),
        1,
        "released back to the outbox: {stats:?}"
    );
    // Back up (here: the right URL): published.
    assert_eq!(forwarder.round().await.unwrap(), 1);
    assert_eq!(pushed(), 2);

    // An undecodable outbox entry is dead-lettered with the reason, not retried forever.
    let memory = celeriac::broker::memory::MemoryBroker::new();
    assert!(
        memory
            .enqueue_raw("celery", "junk", 5, b"{not json".to_vec())
            .unwrap()
    );
    let mut f = Forwarder::new(
        std::sync::Arc::new(memory.clone()),
        vec![("celery".into(), queue)],
    )
    .unwrap();
    assert_eq!(f.round().await.unwrap(), 0);
    let dead = memory.dead_letters("celery", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("undecodable"), "{dead:?}");
    assert_eq!(pushed(), 2);
}
