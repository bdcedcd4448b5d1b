//! The worker when things go wrong: killed mid-task, stopped with SIGTERM, Redis restarted
//! under it, tasks that fail, messages that cannot run. The real `celeriac worker` binary on
//! a private redis-server (see [`Setup`]).

use std::time::{Duration, Instant};

use celeriac::broker::{Broker, TaskMessage, TaskStatus};
use serde_json::json;

use crate::redis_server::{RedisOptions, RedisServer};
use crate::util::eventually;
use crate::worker::{SOON, Setup};

/// Kills a process group (a task the dead worker left behind).
fn kill_group(pgid: i32) {
    // SAFETY: kill(2) on a process group id read from the task's own trace.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
}

#[tokio::test]
async fn sigkilled_worker_loses_nothing_and_the_redelivery_knows_it_is_one() {
    // The task records its fire id and attempt, notices a redelivery by finding its fire id
    // already recorded, and only the first delivery hangs.
    let s = Setup::new(
        r#"
queues: {default: {}}
tasks:
  report:
    command:
      - sh
      - -c
      - |
        if grep -q "^$CELERIAC_FIRE_ID " "$DIR/seen" 2>/dev/null; then echo "redelivery of $CELERIAC_FIRE_ID"; fi
        echo "$CELERIAC_FIRE_ID $CELERIAC_ATTEMPT $$" >> "$DIR/seen"
        if [ "$CELERIAC_ATTEMPT" = 0 ]; then sleep 60; fi
        echo done
"#,
    )
    .await;
    let mut first = s.started_worker(&["--lease", "2s"]).await;
    let fire_id = "nightly@2026-11-27T02:30:00Z";
    let m = TaskMessage::new("report", "default").with_fire("nightly", fire_id);
    s.broker.enqueue(&m).await.unwrap();
    let seen = s.wait_lines("seen", 1, SOON).await;
    let orphan: i32 = seen[0].rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(seen[0], format!("{fire_id} 0 {orphan}"));

    let killed_at = Instant::now();
    first.kill();
    // The dead worker's command lives on in its own process group (a supervisor such as
    // systemd cleans it up with the cgroup); here the test does.
    kill_group(orphan);
    let stats = s.broker.queue_stats("default").await.unwrap();
    assert_eq!(stats.active, 1, "still leased to the dead worker");

    let _second = s.started_worker(&["--lease", "2s"]).await;
    let result = s.final_result(&m.id, SOON).await;
    // The lease (2 s) was last extended at most a third of it before the kill.
    assert!(
        killed_at.elapsed() >= Duration::from_millis(1300),
        "not redelivered before the lease ran out ({:?})",
        killed_at.elapsed()
    );
    assert_eq!(result.status, TaskStatus::Success);
    assert_eq!(result.attempts, 2);
    assert_eq!(result.fire_id.as_deref(), Some(fire_id));
    let output = result.output.unwrap();
    assert_eq!(output, format!("redelivery of {fire_id}\ndone\n"));
    let seen = s.lines("seen");
    assert_eq!(seen.len(), 2);
    assert!(seen[1].starts_with(&format!("{fire_id} 1 ")), "{seen:?}");
    let stats = s.broker.queue_stats("default").await.unwrap();
    assert_eq!(
        (stats.ready_total(), stats.delayed, stats.active, stats.dead),
        (0, 0, 0, 0)
    );
}

#[tokio::test]
async fn failing_task_retries_with_backoff_then_is_dead_lettered_with_the_reason() {
    let s = Setup::new(
        r#"
queues: {default: {}}
tasks:
  flaky:
    builtin: fail
    retry: {max: 2, backoff: 300ms, max_backoff: 1s}
"#,
    )
    .await;
    let _worker = s.started_worker(&[]).await;
    let m = TaskMessage::new("flaky", "default").with_args(json!({"message": "disk full"}));
    s.broker.enqueue(&m).await.unwrap();

    // Watch the stored result change: retrying (attempt 1), retrying (2), failure (3).
    let mut seen: Vec<(TaskStatus, u32, chrono::DateTime<chrono::Utc>)> = Vec::new();
    let deadline = Instant::now() + SOON;
    loop {
        if let Some(r) = s.broker.get_result(&m.id).await.unwrap()
            && seen.last().map(|l| (l.0, l.1)) != Some((r.status, r.attempts))
        {
            seen.push((r.status, r.attempts, r.started_at.unwrap()));
            if r.status.is_final() {
                assert_eq!(r.error.as_deref(), Some("disk full"));
                break;
            }
        }
        assert!(Instant::now() < deadline, "no final result: {seen:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let states: Vec<(TaskStatus, u32)> = seen.iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(
        states,
        vec![
            (TaskStatus::Retrying, 1),
            (TaskStatus::Retrying, 2),
            (TaskStatus::Failure, 3)
        ]
    );
    // Backoff 300 ms then 600 ms (doubled), each with +-20 % jitter.
    let gap1 = (seen[1].2 - seen[0].2).to_std().unwrap();
    let gap2 = (seen[2].2 - seen[1].2).to_std().unwrap();
    assert!(gap1 >= Duration::from_millis(240), "{gap1:?}");
    assert!(gap2 >= Duration::from_millis(480), "{gap2:?}");

    let dead = s.broker.dead_letters("default", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, m.id);
    assert_eq!(dead[0].reason, "failed after 3 attempt(s): disk full");
    assert_eq!(dead[0].attempt, 2);
    assert_eq!(dead[0].message().unwrap().args, m.args);
    let stats = s.broker.queue_stats("default").await.unwrap();
    assert_eq!(
        (stats.ready_total(), stats.delayed, stats.active),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn bad_messages_are_dead_lettered_and_never_block_the_queue() {
    let s = Setup::new(
        r#"
queues: {default: {}}
tasks:
  say: {builtin: echo}
  copy:
    command: ['cp', '{{from}}', '{{to}}']
"#,
    )
    .await;
    let k = s.broker.queue_keys("default");
    let mut c = s.server.connection();
    // Pushed straight into Redis, the way a foreign or buggy producer might, at the top
    // priority so that they come first: a body that is not JSON, JSON that is not a message,
    // a ready entry with no body at all.
    let _: () = ::redis::pipe()
        .hset(&k.msg, "garbage", b"\xff\xfe not json")
        .zadd(&k.ready, "garbage", 1)
        .hset(&k.msg, "not-a-message", r#"{"hello": "world"}"#)
        .zadd(&k.ready, "not-a-message", 2)
        .zadd(&k.ready, "no-body", 3)
        .query(&mut c)
        .unwrap();
    let unknown = TaskMessage::new("no-such-task", "default").with_priority(9);
    let missing_arg = TaskMessage::new("copy", "default")
        .with_priority(9)
        .with_args(json!({"from": "/etc/hostname"}));
    let wrong_shape = TaskMessage::new("copy", "default")
        .with_priority(9)
        .with_args(json!(["/etc/hostname", "/tmp/x"]));
    let good = TaskMessage::new("say", "default")
        .with_priority(0)
        .with_args(json!(["still alive"]));
    s.broker
        .enqueue_many(&[
            unknown.clone(),
            missing_arg.clone(),
            wrong_shape.clone(),
            good.clone(),
        ])
        .await
        .unwrap();

    let mut worker = s.started_worker(&["--concurrency", "1"]).await;
    let ok = s.final_result(&good.id, SOON).await;
    assert_eq!(ok.status, TaskStatus::Success);
    assert_eq!(ok.value, Some(json!(["still alive"])));

    // Settled in batches after the results: wait for all six dead letters.
    let dead = eventually("six dead letters", SOON, || async {
        let dead = s.broker.dead_letters("default", 100).await.unwrap();
        (dead.len() >= 6).then_some(dead)
    })
    .await;
    let reason = |id: &str| {
        dead.iter()
            .find(|d| d.id == id)
            .map(|d| d.reason.clone())
            .unwrap_or_else(|| panic!("{id} not dead-lettered: {dead:?}"))
    };
    assert!(
        reason("garbage").starts_with("undecodable message: "),
        "{}",
        reason("garbage")
    );
    assert!(
        reason("not-a-message").contains("missing field"),
        "{dead:?}"
    );
    assert_eq!(
        reason("no-body"),
        "undecodable message: message body missing"
    );
    assert_eq!(reason(&unknown.id), "unknown task `no-such-task`");
    assert_eq!(
        reason(&missing_arg.id),
        "argument `to` is used by the command template but missing from the task's args"
    );
    assert!(
        reason(&wrong_shape.id).contains("missing from the task's args"),
        "{dead:?}"
    );
    assert_eq!(dead.len(), 6);
    // The raw body is kept as it was (lossily shown), for a human to look at.
    let garbage = dead.iter().find(|d| d.id == "garbage").unwrap();
    assert!(garbage.body.ends_with(" not json"), "{:?}", garbage.body);

    // Dead-lettered messages with a decodable body also have a result saying why.
    let r = s.final_result(&unknown.id, SOON).await;
    assert_eq!(r.status, TaskStatus::DeadLettered);
    assert_eq!(r.error.as_deref(), Some("unknown task `no-such-task`"));

    // Still running, still consuming.
    assert!(worker.try_status().is_none(), "{}", worker.log());
    let after = TaskMessage::new("say", "default");
    s.broker.enqueue(&after).await.unwrap();
    s.final_result(&after.id, SOON).await;
    let stats = s.broker.queue_stats("default").await.unwrap();
    assert_eq!((stats.ready_total(), stats.active, stats.dead), (0, 0, 6));
}

#[tokio::test]
async fn sigterm_lets_running_tasks_finish_within_grace_and_exits_zero() {
    let s = Setup::new(
        r#"
queues: {default: {}}
tasks:
  work:
    command: ['sh', '-c', 'echo "start $1" >> "$DIR/trace"; sleep 1; echo "end $1" >> "$DIR/trace"', 'sh', '{{n}}']
"#,
    )
    .await;
    let messages: Vec<TaskMessage> = (0..4)
        .map(|i| TaskMessage::new("work", "default").with_args(json!({ "n": i })))
        .collect();
    s.broker.enqueue_many(&messages).await.unwrap();
    let mut w = s
        .started_worker(&["--concurrency", "2", "--grace", "10s"])
        .await;
    s.wait_lines("trace", 2, SOON).await;
    let stopped_at = Instant::now();
    w.signal(libc::SIGTERM);
    let status = w.wait_exit(SOON).await;
    assert_eq!(status.code(), Some(0), "{}", w.log());
    assert!(stopped_at.elapsed() < Duration::from_secs(5));
    let trace = s.lines("trace");
    assert_eq!(
        trace.len(),
        4,
        "the two running finished, no new ones: {trace:?}"
    );
    let mut finished = 0;
    for m in &messages {
        if let Some(r) = s.broker.get_result(&m.id).await.unwrap() {
            assert_eq!(r.status, TaskStatus::Success);
            finished += 1;
        }
    }
    assert_eq!(finished, 2);
    let stats = s.broker.queue_stats("default").await.unwrap();
    assert_eq!(
        (stats.ready_total(), stats.active),
        (2, 0),
        "the rest stay queued, nothing is held"
    );
}

#[tokio::test]
async fn task_longer_than_grace_is_stopped_and_returned_with_its_attempt_unchanged() {
    let s = Setup::new(
        r#"
queues: {default: {}}
tasks:
  long:
    command:
      - sh
      - -c
      - |
        echo "$CELERIAC_ATTEMPT" >> "$DIR/runs"
        if [ -e "$DIR/ran-once" ]; then exit 0; fi
        touch "$DIR/ran-once"
        sleep 60
"#,
    )
    .await;
    let m = TaskMessage::new("long", "default");
    s.broker.enqueue(&m).await.unwrap();
    let mut w = s.started_worker(&["--grace", "1s", "--lease", "30s"]).await;
    s.wait_lines("runs", 1, SOON).await;
    let stopped_at = Instant::now();
    w.signal(libc::SIGTERM);
    let status = w.wait_exit(SOON).await;
    assert_eq!(status.code(), Some(0), "{}", w.log());
    let took = stopped_at.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(6),
        "{took:?}"
    );
    assert!(w.log().contains("grace period over"), "{}", w.log());
    assert!(s.broker.get_result(&m.id).await.unwrap().is_none());
    // Back on the queue at once (not after the 30 s lease), attempt unchanged.
    let stats = s.broker.queue_stats("default").await.unwrap();
    assert_eq!((stats.ready_total(), stats.active), (1, 0));

    let _next = s.started_worker(&[]).await;
    let r = s.final_result(&m.id, SOON).await;
    assert_eq!(r.status, TaskStatus::Success);
    assert_eq!(r.attempts, 1, "a returned message is not a new attempt");
    assert_eq!(s.lines("runs"), vec!["0", "0"]);
}

#[tokio::test]
async fn redis_restart_mid_run_is_logged_once_and_every_task_completes() {
    let server = RedisServer::start_with(RedisOptions {
        appendonly: true,
        ..Default::default()
    });
    let mut s = Setup::with_server(
        server,
        "queues: {default: {}}\ntasks:\n  nap: {builtin: sleep}\n",
    )
    .await;
    let mut w = s
        .started_worker(&["--concurrency", "4", "--lease", "3s"])
        .await;
    let mut ids = Vec::new();
    let batch = |from: usize| -> Vec<TaskMessage> {
        (from..from + 60)
            .map(|i| {
                TaskMessage::new("nap", "default").with_args(json!({ "seconds": 0.02, "i": i }))
            })
            .collect()
    };
    let first = batch(0);
    ids.extend(first.iter().map(|m| m.id.clone()));
    s.broker.enqueue_many(&first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;

    s.server.restart();

    // Enqueue more once Redis is back (the library reconnects too).
    let second = batch(60);
    ids.extend(second.iter().map(|m| m.id.clone()));
    eventually("an enqueue after the restart", SOON, || async {
        s.broker.enqueue_many(&second).await.ok()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &ids {
        let r = loop {
            if let Some(r) = s.broker.get_result(id).await.unwrap() {
                break r;
            }
            if Instant::now() > deadline {
                let stats = s.broker.queue_stats("default").await.unwrap();
                panic!("no result for {id}; {stats:?}; worker log:\n{}", w.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(r.status, TaskStatus::Success, "{r:?}");
    }
    // Every task has a result; a message whose ack was lost with the restart is redelivered
    // (at least once) and may still be running: the queue drains to nothing.
    let counts = eventually("the queue to drain", Duration::from_secs(30), || async {
        let stats = s.broker.queue_stats("default").await.unwrap();
        let counts = (stats.ready_total(), stats.delayed, stats.active, stats.dead);
        (counts == (0, 0, 0, 0)).then_some(counts)
    })
    .await;
    assert_eq!(counts, (0, 0, 0, 0));
    let log = w.log();
    assert_eq!(log.matches("lost connection to Redis").count(), 1, "{log}");
    assert_eq!(
        log.matches("connection to Redis restored").count(),
        1,
        "{log}"
    );
    let warnings = log
        .lines()
        .filter(|l| l.contains(" WARN ") && !l.contains("running as root"))
        .count();
    assert_eq!(warnings, 1, "the loss is logged once:\n{log}");
    assert!(w.try_status().is_none(), "still running: {log}");
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(SOON).await.code(), Some(0));
}

#[tokio::test]
async fn second_sigterm_stops_waiting_and_returns_the_running_task() {
    let s = Setup::new(
        r#"
queues: {default: {}}
tasks:
  long:
    command: ['sh', '-c', 'echo "$CELERIAC_ATTEMPT" >> "$DIR/runs"; sleep 60']
"#,
    )
    .await;
    let m = TaskMessage::new("long", "default");
    s.broker.enqueue(&m).await.unwrap();
    let mut w = s.started_worker(&["--grace", "60s"]).await;
    s.wait_lines("runs", 1, SOON).await;
    w.signal(libc::SIGTERM);
    w.wait_for_log("draining", SOON).await;
    let stopped_at = Instant::now();
    w.signal(libc::SIGTERM);
    let status = w.wait_exit(SOON).await;
    assert_eq!(status.code(), Some(0), "{}", w.log());
    assert!(
        stopped_at.elapsed() < Duration::from_secs(5),
        "did not wait for the grace"
    );
    let stats = s.broker.queue_stats("default").await.unwrap();
    assert_eq!((stats.ready_total(), stats.active), (1, 0), "returned");
}

/// CPU time (user + system) a process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): state is field 3, utime 14.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test]
async fn worker_waits_quietly_while_redis_is_down_and_resumes() {
    let mut s = Setup::new("queues: {default: {}}\ntasks:\n  say: {builtin: echo}\n").await;
    let mut w = s.started_worker(&[]).await;
    s.server.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cpu_ticks(w.pid());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cpu_ticks(w.pid()) - before;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    assert!(
        used * 10 < hz * 3,
        "a worker waiting for Redis must not spin: {used} ticks in 3 s"
    );
    assert!(w.try_status().is_none(), "still running: {}", w.log());
    s.server.start_again();
    let m = TaskMessage::new("say", "default");
    eventually("an enqueue once Redis is back", SOON, || async {
        s.broker.enqueue(&m).await.ok()
    })
    .await;
    s.final_result(&m.id, SOON).await;
    let log = w.log();
    assert_eq!(log.matches("lost connection to Redis").count(), 1, "{log}");
    assert_eq!(
        log.matches("connection to Redis restored").count(),
        1,
        "{log}"
    );
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") && !l.contains("running as root"))
        .collect();
    assert_eq!(warnings.len(), 1, "the loss is logged once:\n{log}");
}

#[tokio::test]
async fn a_message_redelivered_too_often_is_dead_lettered_not_run() {
    // A message whose lease keeps expiring (it kills or hangs every worker that runs it)
    // comes back with a growing attempt count; past retry.max + 5 it is not started again.
    let s = Setup::new(
        "queues: {default: {}}\ntasks:\n  t:\n    command: ['sh', '-c', 'touch \"$DIR/ran\"']\n    retry: {max: 1}\n",
    )
    .await;
    let mut poison = TaskMessage::new("t", "default");
    poison.attempt = 7;
    s.broker.enqueue(&poison).await.unwrap();
    let _worker = s.started_worker(&[]).await;
    let r = s.final_result(&poison.id, SOON).await;
    assert_eq!(r.status, TaskStatus::DeadLettered);
    assert!(!s.path("ran").exists(), "not started again");
    let dead = s.broker.dead_letters("default", 1).await.unwrap();
    assert!(
        dead[0]
            .reason
            .starts_with("delivered 8 times without completing"),
        "{}",
        dead[0].reason
    );
}
