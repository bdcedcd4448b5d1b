//! Operations end to end on a real Redis with two beats and a worker: `status`, `pause`,
//! `resume`, `trigger`, `why`, `workers`, `dead-letters`; JSON logs parse line by line; a
//! broker password never appears in any output.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::redis_server::{RedisOptions, RedisServer, free_port};
use crate::util::{Daemon, celeriac};

const PASSWORD: &str = "s3cret-Pa55word";

fn cli(config: &std::path::Path, broker: &str, args: &[&str]) -> (bool, String, String) {
    let out = celeriac()
        .args(args)
        .arg("-c")
        .arg(config)
        .arg("--broker")
        .arg(broker)
        .output()
        .expect("run celeriac");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(config: &std::path::Path, broker: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, out, err) = cli(config, broker, &all);
    assert!(ok, "{args:?} failed: {err}");
    assert!(
        !out.contains(PASSWORD) && !err.contains(PASSWORD),
        "password printed by {args:?}"
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn journal_events(why: &Value) -> Vec<String> {
    why["journal"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn status_pause_resume_trigger_why_on_two_beats_without_leaking_the_password() {
    let port = free_port();
    let server = RedisServer::start_with(RedisOptions {
        tcp_port: Some(port),
        ..Default::default()
    });
    let mut c = server.connection();
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "ops",
            "on",
            &format!(">{PASSWORD}"),
            "~*",
            "&*",
            "+@all",
        ])
        .query(&mut c)
        .unwrap();
    let broker = format!("redis://ops:{PASSWORD}@127.0.0.1:{port}/0");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("celeriac.yaml");
    std::fs::write(
        &config,
        "tasks:\n  echo: {builtin: echo}\n  boom: {builtin: fail}\n\
         schedules:\n  tick:\n    task: echo\n    every: 1s\n    args: {n: 1}\n\
         \x20 hourly:\n    task: echo\n    cron: \"0 * * * *\"\n",
    )
    .unwrap();
    let daemon = |name: &'static str, args: &[&str]| {
        let mut cmd = celeriac();
        cmd.args(args)
            .arg("-c")
            .arg(&config)
            .arg("--broker")
            .arg(&broker)
            .arg("--allow-root")
            .arg("--log-format")
            .arg("json");
        (
            name,
            Daemon::spawn(cmd, dir.path().join(format!("{name}.log"))),
        )
    };
    let beat1 = daemon("beat1", &["beat", "--lease-ttl", "2s"]);
    let beat2 = daemon("beat2", &["beat", "--lease-ttl", "2s"]);
    let worker = daemon("worker", &["worker", "--concurrency", "2"]);

    // status: one leader, ticks recorded, the worker's heartbeat.
    wait_for("a leader and a fired tick", Duration::from_secs(20), || {
        let s = json(&config, &broker, &["status"]);
        !s["leader"].is_null()
            && s["schedules"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["name"] == "tick" && !x["last_fired"].is_null())
    });
    wait_for("the worker's heartbeat", Duration::from_secs(10), || {
        json(&config, &broker, &["workers"])
            .as_array()
            .unwrap()
            .len()
            == 1
    });
    let status = json(&config, &broker, &["status"]);
    assert_eq!(status["queues"][0]["name"], "default");
    assert_eq!(status["workers"][0]["queues"][0], "default");

    // pause: the beat records the paused ticks; resume: it fires again.
    assert!(cli(&config, &broker, &["pause", "tick"]).0);
    wait_for(
        "a paused tick in the journal",
        Duration::from_secs(10),
        || {
            let why = json(&config, &broker, &["why", "tick"]);
            why["schedule"]["paused"] == true
                && journal_events(&why)
                    .iter()
                    .filter(|e| *e == "paused")
                    .count()
                    >= 2
        },
    );
    // Paused ticks are decided but not fired: "last fired" stays behind "last tick".
    let why = json(&config, &broker, &["why", "tick"]);
    let at = |k: &str| {
        why["schedule"][k]
            .as_str()
            .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
            .unwrap_or_else(|| panic!("no {k}: {why}"))
    };
    assert!(at("last_tick") > at("last_fired"), "{why}");
    assert!(cli(&config, &broker, &["resume", "tick"]).0);
    let resumed_at = chrono::Utc::now();
    wait_for("a fire after resume", Duration::from_secs(10), || {
        let why = json(&config, &broker, &["why", "tick"]);
        why["journal"].as_array().unwrap().iter().any(|e| {
            e["event"] == "fired"
                && e["at"]
                    .as_str()
                    .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
                    .is_some_and(|t| t > resumed_at)
        })
    });
    let why = json(&config, &broker, &["why", "tick"]);
    assert!(
        journal_events(&why).contains(&"resumed".to_string()),
        "{why}"
    );

    // trigger: fires the hourly schedule now; the worker runs it.
    let t = json(&config, &broker, &["trigger", "hourly"]);
    let id = t["id"].as_str().unwrap().to_string();
    assert!(t["fire_id"].as_str().unwrap().starts_with("hourly@"));
    wait_for(
        "the triggered task's result",
        Duration::from_secs(10),
        || {
            let (ok, out, _) = cli(&config, &broker, &["result", &id, "--json"]);
            ok && out.contains("\"success\"")
        },
    );
    let why = json(&config, &broker, &["why", "hourly"]);
    assert!(
        journal_events(&why).contains(&"triggered".to_string()),
        "{why}"
    );

    // Unknown names are usage errors.
    let (ok, _, err) = cli(&config, &broker, &["pause", "nope"]);
    assert!(!ok && err.contains("no schedule named `nope`"), "{err}");

    // Dead letters: a failing task ends up there, and can be requeued.
    let (ok, out, _) = cli(&config, &broker, &["enqueue", "boom"]);
    assert!(ok);
    let boom = out.trim().to_string();
    wait_for("a dead letter", Duration::from_secs(10), || {
        json(&config, &broker, &["dead-letters", "default"])["default"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["id"] == boom.as_str())
    });
    let (ok, out, _) = cli(
        &config,
        &broker,
        &["dead-letters", "default", "--requeue", &boom],
    );
    assert!(ok && out.contains("requeued 1"), "{out}");

    // Logs: JSON lines only, never the password.
    for (name, mut d) in [beat1, beat2, worker] {
        let ok = d.stop(Duration::from_secs(30)).success();
        let stderr = d.log();
        assert!(ok, "{name} did not exit cleanly: {stderr}");
        assert!(!stderr.contains(PASSWORD), "{name} logged the password");
        for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{name}: not a JSON line ({e}): {line}"));
            assert!(
                v["level"].is_string() && v["timestamp"].is_string(),
                "{line}"
            );
        }
    }
}
