//! The worker as a user runs it: the real `celeriac worker` binary as a child process on a
//! private redis-server, tasks sent with `celeriac enqueue` (or the library, to set up many at
//! once), results read back with `celeriac result` and the broker API.
//!
//! Failure handling (SIGKILL, SIGTERM drain, Redis restart, retries, bad input) is in
//! `worker_faults.rs`; the [`Setup`] here is shared.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use celeriac::broker::{Broker, RedisBroker, RedisBrokerOptions, TaskMessage, TaskResult};
use chrono::Utc;
use serde_json::{Value, json};

use crate::redis_server::RedisServer;
use crate::util::{Daemon, celeriac, eventually, running_as_root};

/// Generous bound for things that take milliseconds on an idle machine.
pub const SOON: Duration = Duration::from_secs(15);

/// A private redis-server, a temp dir with a configuration pointing at it, and a library
/// broker on the same server for setting up and inspecting state.
pub struct Setup {
    pub server: RedisServer,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub broker: Arc<RedisBroker>,
    logs: AtomicUsize,
}

impl Setup {
    /// `yaml` is the configuration without `broker:`; `$DIR` in it stands for the temp dir.
    pub async fn new(yaml: &str) -> Setup {
        Setup::with_server(RedisServer::start(), yaml).await
    }

    pub async fn with_server(server: RedisServer, yaml: &str) -> Setup {
        let dir = tempfile::Builder::new()
            .prefix("celeriac-worker-")
            .tempdir()
            .expect("temp dir");
        let config = dir.path().join("celeriac.yaml");
        let body = yaml.replace("$DIR", &dir.path().display().to_string());
        std::fs::write(&config, format!("broker: {}\n{body}", server.url())).unwrap();
        let broker = RedisBroker::connect(
            &server.url(),
            RedisBrokerOptions {
                reconnect_min: Duration::from_millis(20),
                reconnect_max: Duration::from_millis(200),
                ..Default::default()
            },
        )
        .await
        .expect("connect to private redis");
        Setup {
            server,
            dir,
            config,
            broker: Arc::new(broker),
            logs: AtomicUsize::new(0),
        }
    }

    /// A file in the temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `celeriac SUBCOMMAND -c CONFIG ARGS...`, with no CELERIAC_* variables inherited.
    pub fn command(&self, subcommand: &str, args: &[&str]) -> Command {
        let mut cmd = celeriac();
        cmd.arg(subcommand).arg("-c").arg(&self.config).args(args);
        for var in [
            "CELERIAC_BROKER",
            "CELERIAC_CONFIG",
            "CELERIAC_ALLOW_ROOT",
            "CELERIAC_LOG_FORMAT",
            "CELERIAC_KEY_PREFIX",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("CELERIAC_LOG", "info");
        cmd
    }

    /// Runs a CLI command to completion: exit code, stdout, stderr.
    pub fn run(&self, subcommand: &str, args: &[&str]) -> (i32, String, String) {
        let out = self
            .command(subcommand, args)
            .output()
            .expect("run celeriac");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts `celeriac worker --allow-root ARGS...`, logging to a file of its own.
    pub fn worker(&self, args: &[&str]) -> Daemon {
        let n = self.logs.fetch_add(1, Ordering::Relaxed);
        let mut cmd = self.command("worker", &["--allow-root"]);
        cmd.args(args);
        Daemon::spawn(cmd, self.path(&format!("worker-{n}.log")))
    }

    /// Starts a worker and waits until it consumes.
    pub async fn started_worker(&self, args: &[&str]) -> Daemon {
        let mut w = self.worker(args);
        w.wait_for_log("worker started", SOON).await;
        w
    }

    /// The final result of a task (waits for it).
    pub async fn final_result(&self, id: &str, timeout: Duration) -> TaskResult {
        eventually(&format!("the final result of {id}"), timeout, || async {
            self.broker
                .get_result(id)
                .await
                .unwrap()
                .filter(|r| r.status.is_final())
        })
        .await
    }

    /// Lines of a file in the temp dir (empty when it does not exist yet).
    pub fn lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.path(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Waits until a file in the temp dir has at least `n` lines, and returns them.
    pub async fn wait_lines(&self, name: &str, n: usize, timeout: Duration) -> Vec<String> {
        eventually(&format!("{n} lines in {name}"), timeout, || async {
            let lines = self.lines(name);
            (lines.len() >= n).then_some(lines)
        })
        .await
    }
}

/// The id and the pretty-printed result of `celeriac enqueue ... --wait`.
fn split_wait_output(stdout: &str) -> (String, Value) {
    let (id, json) = stdout.split_once('\n').expect("id line, then the result");
    let result: Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("result is not JSON ({e}): {stdout}"));
    (id.to_string(), result)
}

#[tokio::test]
async fn command_task_end_to_end_with_placeholders_stdin_env_and_result_lookup() {
    let s = Setup::new(
        r#"
queues: {default: {}}
tasks:
  greet:
    command: ['sh', '-c', 'echo "hello $1"; cat; echo; env | grep ^CELERIAC_ | sort', 'sh', '{{name}} the {{title}}']
  say: {builtin: echo}
"#,
    )
    .await;
    let _worker = s.started_worker(&["--concurrency", "2"]).await;

    // Shell metacharacters in an argument reach the program as they are: no shell.
    let args = json!({"name": "Ada; $(touch pwned)", "title": "Countess"});
    let (code, out, err) = s.run(
        "enqueue",
        &[
            "greet",
            "--args",
            &args.to_string(),
            "--wait",
            "--timeout",
            "15s",
        ],
    );
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    let (id, result) = split_wait_output(&out);
    assert_eq!(result["id"], id.as_str());
    assert_eq!(result["status"], "success");
    assert_eq!(result["exit_code"], 0);
    assert_eq!(result["attempts"], 1);
    assert_eq!(result["queue"], "default");
    let output = result["output"].as_str().unwrap();
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(
        lines[0], "hello Ada; $(touch pwned) the Countess",
        "{output}"
    );
    let stdin: Value = serde_json::from_str(lines[1]).expect("stdin is one JSON document");
    assert_eq!(stdin["args"], args);
    for expected in [
        format!("CELERIAC_TASK_ID={id}"),
        "CELERIAC_TASK=greet".to_string(),
        "CELERIAC_QUEUE=default".to_string(),
        "CELERIAC_ATTEMPT=0".to_string(),
        format!("CELERIAC_ARGS={args}"),
    ] {
        assert!(lines.contains(&expected.as_str()), "{expected} in {output}");
    }
    assert!(!s.path("pwned").exists() && !PathBuf::from("pwned").exists());

    // `celeriac result ID` prints the same stored result.
    let (code, out, err) = s.run("result", &[&id, "--json"]);
    assert_eq!(code, 0, "{err}");
    let stored: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stored, result);

    // A builtin: echo returns its arguments as the value.
    let (code, out, err) = s.run(
        "enqueue",
        &["say", "--args", r#"{"x": [1, 2], "e": []}"#, "--wait"],
    );
    assert_eq!(code, 0, "{err}");
    let (_, result) = split_wait_output(&out);
    assert_eq!(result["value"], json!({"x": [1, 2], "e": []}));

    // An id that never ran.
    let (code, _, err) = s.run("result", &["no-such-id"]);
    assert_eq!(code, 1);
    assert!(err.contains("no result for no-such-id"), "{err}");
}

#[tokio::test]
async fn purge_removes_ready_and_delayed_messages_of_one_queue() {
    let s = Setup::new("queues: {default: {}, parked: {}}\ntasks:\n  say: {builtin: echo}\n").await;
    for extra in [
        &[][..],
        &["--countdown", "1h"][..],
        &["--priority", "9"][..],
    ] {
        let mut args = vec!["say", "-Q", "parked"];
        args.extend_from_slice(extra);
        let (code, out, err) = s.run("enqueue", &args);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.trim().len(), 36, "prints the id: {out}");
    }
    let (code, _, _) = s.run("enqueue", &["say", "-Q", "default"]);
    assert_eq!(code, 0);
    let stats = s.broker.queue_stats("parked").await.unwrap();
    assert_eq!((stats.ready_total(), stats.delayed), (2, 1));

    let (code, out, err) = s.run("purge", &["parked"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "purged 3 messages from `parked`\n");
    let stats = s.broker.queue_stats("parked").await.unwrap();
    assert_eq!((stats.ready_total(), stats.delayed), (0, 0));
    assert_eq!(
        s.broker.queue_stats("default").await.unwrap().ready_total(),
        1,
        "other queues untouched"
    );
    let (code, out, _) = s.run("purge", &["parked"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "purged 0 messages from `parked`\n")
    );
}

#[tokio::test]
async fn tasks_run_by_priority_across_queues_and_fifo_within_a_priority() {
    let s = Setup::new(
        r#"
queues: {a: {}, b: {}}
tasks:
  mark:
    command: ['sh', '-c', 'echo "$1" >> "$DIR/order"', 'sh', '{{label}}']
"#,
    )
    .await;
    // Queued before the worker starts, so the order is the broker's alone.
    let plan: &[(&str, &[u8])] = &[("a", &[1, 5, 9, 5, 1, 9, 0]), ("b", &[3, 9, 7, 3, 5])];
    let mut sent = Vec::new();
    for (queue, priorities) in plan {
        for (i, p) in priorities.iter().enumerate() {
            let label = format!("{queue}:{p}:{i}");
            sent.push(label.clone());
            let m = TaskMessage::new("mark", *queue)
                .with_priority(*p)
                .with_args(json!({ "label": label }));
            s.broker.enqueue(&m).await.unwrap();
        }
    }
    let _worker = s.started_worker(&["-Q", "a,b", "--concurrency", "1"]).await;
    let ran = s.wait_lines("order", sent.len(), SOON).await;
    let parsed: Vec<(String, u8, usize)> = ran
        .iter()
        .map(|l| {
            let mut f = l.split(':');
            (
                f.next().unwrap().to_string(),
                f.next().unwrap().parse().unwrap(),
                f.next().unwrap().parse().unwrap(),
            )
        })
        .collect();
    let priorities: Vec<u8> = parsed.iter().map(|p| p.1).collect();
    let mut sorted = priorities.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(priorities, sorted, "highest priority first: {ran:?}");
    for (queue, priority, index) in &parsed {
        // FIFO within a queue and priority: every earlier message of the same band ran first.
        let earlier = parsed
            .iter()
            .take_while(|p| &p.0 != queue || p.1 != *priority || p.2 != *index)
            .filter(|p| &p.0 == queue && p.1 == *priority)
            .count();
        let expected = plan.iter().find(|(q, _)| q == queue).unwrap().1[..*index]
            .iter()
            .filter(|p| **p == *priority)
            .count();
        assert_eq!(
            earlier, expected,
            "FIFO in {queue} priority {priority}: {ran:?}"
        );
    }
    let mut ran_sorted = ran.clone();
    ran_sorted.sort();
    sent.sort();
    assert_eq!(ran_sorted, sent, "each ran exactly once");
}

#[tokio::test]
async fn countdown_and_eta_are_respected() {
    let s = Setup::new("queues: {default: {}}\ntasks:\n  say: {builtin: echo}\n").await;
    let _worker = s.started_worker(&[]).await;
    let t0 = Utc::now();
    let (code, out, err) = s.run("enqueue", &["say", "--countdown", "2s"]);
    assert_eq!(code, 0, "{err}");
    let countdown_id = out.trim().to_string();
    let eta = Utc::now() + chrono::Duration::milliseconds(1200);
    let m = TaskMessage::new("say", "default").with_eta(eta);
    s.broker.enqueue(&m).await.unwrap();
    let now_id = TaskMessage::new("say", "default");
    s.broker.enqueue(&now_id).await.unwrap();

    let first = s.final_result(&now_id.id, SOON).await;
    assert!(s.broker.get_result(&countdown_id).await.unwrap().is_none());
    assert!(s.broker.get_result(&m.id).await.unwrap().is_none());
    assert!(
        first.started_at.unwrap() < eta,
        "not held back by the delayed ones"
    );

    let at_eta = s.final_result(&m.id, SOON).await;
    let started = at_eta.started_at.unwrap();
    assert!(started >= eta, "eta {eta} but started {started}");
    assert!(
        started - eta < chrono::Duration::seconds(2),
        "picked up promptly: eta {eta}, started {started}"
    );
    let counted = s.final_result(&countdown_id, SOON).await;
    let started = counted.started_at.unwrap();
    assert!(
        started >= t0 + chrono::Duration::seconds(2),
        "countdown from {t0}, started {started}"
    );
}

#[tokio::test]
async fn result_ttl_from_config_expires_results() {
    let s =
        Setup::new("result_expires: 1s\nqueues: {default: {}}\ntasks:\n  say: {builtin: echo}\n")
            .await;
    let _worker = s.started_worker(&[]).await;
    let (code, out, err) = s.run("enqueue", &["say", "--args", "[1]", "--wait"]);
    assert_eq!(code, 0, "{err}");
    let (id, _) = split_wait_output(&out);
    let (code, _, _) = s.run("result", &[&id]);
    assert_eq!(code, 0, "readable right after");
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg(celeriac::broker::keys::result_key(s.broker.prefix(), &id))
        .query(&mut s.server.connection())
        .unwrap();
    assert!(ttl > 0 && ttl <= 1000, "PTTL {ttl}");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (code, _, err) = s.run("result", &[&id]);
    assert_eq!(code, 1, "expired");
    assert!(err.contains("expired") && err.contains("1s"), "{err}");
}

#[tokio::test]
async fn max_tasks_exits_zero_after_n_tasks_and_leaves_the_rest_queued() {
    let s = Setup::new("queues: {default: {}}\ntasks:\n  say: {builtin: echo}\n").await;
    let messages: Vec<TaskMessage> = (0..8)
        .map(|i| TaskMessage::new("say", "default").with_args(json!([i])))
        .collect();
    s.broker.enqueue_many(&messages).await.unwrap();
    // More permits than tasks allowed: the budget, not the concurrency, bounds the reserve.
    let mut w = s.worker(&["--concurrency", "8", "--max-tasks", "3"]);
    let status = w.wait_exit(SOON).await;
    assert_eq!(status.code(), Some(0), "{}", w.log());
    let mut done = 0;
    for m in &messages {
        if s.broker.get_result(&m.id).await.unwrap().is_some() {
            done += 1;
        }
    }
    assert_eq!(done, 3);
    let stats = s.broker.queue_stats("default").await.unwrap();
    assert_eq!((stats.ready_total(), stats.active), (5, 0), "{stats:?}");
    // The first three in FIFO order ran.
    for m in &messages[..3] {
        assert!(s.broker.get_result(&m.id).await.unwrap().is_some());
    }
}

#[tokio::test]
async fn concurrency_one_never_runs_two_tasks_and_never_hoards_messages() {
    let s = Setup::new(
        r#"
queues: {default: {}}
tasks:
  slow:
    command: ['sh', '-c', 'echo "$PPID start $1" >> "$DIR/trace"; sleep 0.2; echo "$PPID end $1" >> "$DIR/trace"', 'sh', '{{n}}']
"#,
    )
    .await;
    let messages: Vec<TaskMessage> = (0..6)
        .map(|i| TaskMessage::new("slow", "default").with_args(json!({ "n": i })))
        .collect();
    s.broker.enqueue_many(&messages).await.unwrap();
    let one = s.started_worker(&["--concurrency", "1"]).await;
    // While it runs, it holds the one message it is running, and at most the one it has just
    // finished while that one's acknowledgement is on its way: never one it cannot start.
    let t = Instant::now();
    let mut max_active = 0;
    while t.elapsed() < Duration::from_millis(700) {
        let stats = s.broker.queue_stats("default").await.unwrap();
        max_active = max_active.max(stats.active);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        (1..=2).contains(&max_active),
        "{max_active} reserved at once"
    );
    // A second worker started late still finds work: the first did not reserve ahead.
    let two = s.started_worker(&["--concurrency", "1"]).await;
    for m in &messages {
        s.final_result(&m.id, SOON).await;
    }
    let mut workers = std::collections::HashSet::new();
    for m in &messages {
        workers.insert(s.broker.get_result(&m.id).await.unwrap().unwrap().worker);
    }
    assert_eq!(workers.len(), 2, "both workers ran tasks");
    // Per worker ($PPID of the task is its worker), starts and ends alternate.
    for worker in [one.pid(), two.pid()] {
        let events: Vec<String> = s
            .lines("trace")
            .into_iter()
            .filter_map(|l| l.strip_prefix(&format!("{worker} ")).map(str::to_string))
            .collect();
        assert!(!events.is_empty());
        for pair in events.chunks(2) {
            let n = pair[0].strip_prefix("start ").expect("a start");
            assert_eq!(pair.get(1), Some(&format!("end {n}")), "{events:?}");
        }
    }
}

#[tokio::test]
async fn refuses_root_without_allow_root() {
    if !running_as_root() {
        println!("not running as root: root refusal not checked");
        return;
    }
    let s = Setup::new("queues: {default: {}}\ntasks:\n  say: {builtin: echo}\n").await;
    let (code, _, err) = s.run("worker", &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("refusing to run `celeriac worker` as root") && err.contains("--allow-root"),
        "{err}"
    );
    let mut cmd = s.command("worker", &[]);
    cmd.env("CELERIAC_ALLOW_ROOT", "1");
    let mut w = Daemon::spawn(cmd, s.path("root.log"));
    w.wait_for_log("worker started", SOON).await;
    assert_eq!(
        w.log().matches("running as root").count(),
        1,
        "warned once: {}",
        w.log()
    );
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(SOON).await.code(), Some(0));
}

#[tokio::test]
async fn worker_exits_69_when_the_broker_is_unreachable_at_start() {
    let s = Setup::new("queues: {default: {}}\ntasks:\n  say: {builtin: echo}\n").await;
    let gone = s.path("no-redis.sock");
    let url = format!("unix://{}", gone.display());
    let (code, _, err) = s.run("worker", &["--allow-root", "--broker", &url]);
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("unavailable"), "{err}");
    let (code, _, err) = s.run("worker", &["--allow-root", "-Q", "nope"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("queue `nope` is not declared"), "{err}");
}

#[tokio::test]
async fn timed_out_and_expired_tasks_are_recorded_as_such() {
    let s = Setup::new(
        r#"
queues: {default: {}}
tasks:
  hang:
    command: ['sleep', '30']
    timeout: 300ms
  say: {builtin: echo}
"#,
    )
    .await;
    let _worker = s.started_worker(&[]).await;
    let hang = TaskMessage::new("hang", "default");
    let stale =
        TaskMessage::new("say", "default").with_expires(Utc::now() - chrono::Duration::seconds(1));
    s.broker
        .enqueue_many(&[hang.clone(), stale.clone()])
        .await
        .unwrap();
    let r = s.final_result(&hang.id, SOON).await;
    assert_eq!(r.status, celeriac::broker::TaskStatus::Timeout);
    assert_eq!(r.error.as_deref(), Some("timed out after 300ms"));
    // The result is stored before the message is settled: wait for the dead letter.
    let dead = eventually("the dead letter", SOON, || async {
        let dead = s.broker.dead_letters("default", 10).await.unwrap();
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert_eq!(dead.len(), 1, "no retries configured: dead-lettered");
    assert_eq!(
        dead[0].reason,
        "failed after 1 attempt(s): timed out after 300ms"
    );

    let r = s.final_result(&stale.id, SOON).await;
    assert_eq!(r.status, celeriac::broker::TaskStatus::Expired);
    assert!(r.started_at.is_none(), "never started");
    let counts = eventually("the queue to settle", SOON, || async {
        let stats = s.broker.queue_stats("default").await.unwrap();
        let counts = (stats.ready_total(), stats.active, stats.dead);
        (counts == (0, 0, 1)).then_some(counts)
    })
    .await;
    assert_eq!(counts, (0, 0, 1));
}

#[tokio::test]
async fn a_chatty_failing_command_keeps_the_end_of_its_output() {
    let s = Setup::new(
        r#"
queues: {default: {}}
tasks:
  chatty:
    command: ['sh', '-c', 'head -c 200000 /dev/zero | tr "\0" x; echo; echo "boom: disk full" >&2; exit 3']
"#,
    )
    .await;
    let _worker = s.started_worker(&[]).await;
    let (code, out, _) = s.run("enqueue", &["chatty", "--wait"]);
    assert_eq!(code, 1);
    let (_, result) = split_wait_output(&out);
    assert_eq!(result["status"], "failure");
    assert_eq!(result["exit_code"], 3);
    let output = result["output"].as_str().unwrap();
    assert!(
        output.ends_with("xxx\nboom: disk full\n"),
        "the error is kept"
    );
    assert!(output.starts_with("[... "), "says what was dropped");
    assert!(output.len() <= 64 * 1024 + 64, "bounded: {}", output.len());
}
