//! Watching a running worker the way operators do: the systemd notification sequence on a
//! real unix datagram socket, and Prometheus metrics scraped over HTTP.

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::redis_server::{RedisServer, free_port};
use crate::util::{Daemon, celeriac};

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("celeriac.yaml");
    std::fs::write(
        &path,
        "queues:\n  default: {}\ntasks:\n  noop: {builtin: noop}\n  boom: {builtin: fail}\n",
    )
    .unwrap();
    path
}

/// Datagrams received on `sock` until `stop` matches one or `limit` passes.
fn collect(sock: &UnixDatagram, limit: Duration, stop: impl Fn(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = stop(&msg);
            out.push(msg);
            if done {
                break;
            }
        }
    }
    out
}

/// `celeriac KIND --allow-root -c CFG --broker REDIS ARGS...` with `env`, logging to
/// `DIR/KIND.log`.
fn daemon(
    kind: &str,
    cfg: &std::path::Path,
    redis: &RedisServer,
    args: &[&str],
    env: &[(&str, &std::path::Path)],
) -> Daemon {
    let mut cmd = celeriac();
    cmd.args([kind, "--allow-root", "-c"])
        .arg(cfg)
        .arg("--broker")
        .arg(redis.url())
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let dir = cfg.parent().expect("config in a directory");
    Daemon::spawn(cmd, dir.join(format!("{kind}.log")))
}

/// Scrapes `port` until `done` holds for the text; panics after `limit` with the last text
/// and `context()`.
fn scrape_until(
    port: u16,
    limit: Duration,
    done: impl Fn(&str) -> bool,
    context: impl Fn() -> String,
) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let text = std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| scrape(port))
            .unwrap_or_default();
        if done(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never got there:\n{text}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A daemon of `kind` on a private Redis with the configuration `write_config` writes, under
/// a systemd-like notification socket with a watchdog of `watchdog_usec`.
fn notified(
    kind: &str,
    write_config: fn(&std::path::Path) -> std::path::PathBuf,
    watchdog_usec: &str,
) -> (
    RedisServer,
    tempfile::TempDir,
    std::path::PathBuf,
    UnixDatagram,
    Daemon,
) {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let d = daemon(
        kind,
        &cfg,
        &redis,
        &[],
        &[
            ("NOTIFY_SOCKET", &sock_path),
            ("WATCHDOG_USEC", std::path::Path::new(watchdog_usec)),
        ],
    );
    (redis, dir, cfg, sock, d)
}

#[test]
fn worker_notifies_ready_pings_the_watchdog_and_says_stopping() {
    let (_redis, _dir, _cfg, sock, mut worker) = notified("worker", config, "400000");

    let first = collect(&sock, Duration::from_secs(10), |m| m.contains("READY=1"));
    assert!(
        first
            .last()
            .is_some_and(|m| m.starts_with("READY=1\nSTATUS=consuming default")),
        "{first:?}\n{}",
        worker.log()
    );
    // Watchdog every 200 ms (half of WATCHDOG_USEC) from the idle reserve loop.
    let window = collect(&sock, Duration::from_millis(1500), |_| false);
    let pings = window.iter().filter(|m| m.as_str() == "WATCHDOG=1").count();
    assert!(
        (4..=12).contains(&pings),
        "{pings} pings in 1.5 s: {window:?}"
    );

    worker.signal(libc::SIGTERM);
    let last = collect(&sock, Duration::from_secs(10), |m| m.contains("STOPPING=1"));
    assert!(last.iter().any(|m| m.starts_with("STOPPING=1")), "{last:?}");
    let status = worker.stop(Duration::from_secs(10));
    assert!(status.success(), "{}", worker.log());
    // The variables are not passed on to tasks.
    assert!(!worker.log().contains("NOTIFY_SOCKET"));
}

fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// The value of the first sample whose name and labels contain all of `parts`.
fn sample(text: &str, parts: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| parts.iter().all(|p| l.contains(p)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn worker_metrics_are_scraped_over_http() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let worker = daemon("worker", &cfg, &redis, &["--metrics-addr", &addr], &[]);
    for task in ["noop", "noop", "noop", "boom"] {
        let out = celeriac()
            .args(["enqueue", task, "-c"])
            .arg(&cfg)
            .arg("--broker")
            .arg(redis.url())
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let text = scrape_until(
        port,
        Duration::from_secs(20),
        |text| {
            sample(
                text,
                &[
                    "celeriac_tasks_total",
                    "task=\"noop\"",
                    "outcome=\"succeeded\"",
                ],
            ) == Some(3.0)
                && sample(text, &["celeriac_dead_letters_total", "queue=\"default\""]) == Some(1.0)
        },
        || worker.log(),
    );
    assert!(text.contains("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("# TYPE celeriac_task_duration_seconds histogram"),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &[
                "celeriac_tasks_total",
                "task=\"boom\"",
                "outcome=\"failed\""
            ]
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &text,
            &["celeriac_task_duration_seconds_count", "task=\"noop\""]
        ) == Some(3.0),
        "{text}"
    );
    assert!(text.contains("celeriac_queue_depth{"), "{text}");
}

fn beat_config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("beat.yaml");
    std::fs::write(
        &path,
        "queues:\n  default: {}\ntasks:\n  noop: {builtin: noop}\n\
         schedules:\n  tick:\n    every: 1s\n    task: noop\n",
    )
    .unwrap();
    path
}

#[test]
fn beat_notifies_ready_watchdog_reloading_and_stopping() {
    let (_redis, _dir, cfg, sock, mut beat) = notified("beat", beat_config, "600000");

    let first = collect(&sock, Duration::from_secs(15), |m| m.contains("READY=1"));
    let ready = first.last().cloned().unwrap_or_default();
    assert!(
        ready.starts_with("READY=1\nSTATUS=leader (epoch 1), 1 schedules"),
        "{first:?}\n{}",
        beat.log()
    );
    // Watchdog every 300 ms from the beat loop, whose sleeps are capped to that even though
    // its next wake-up (tick or lease renewal) is further away; STATUS follows the fires.
    let window = collect(&sock, Duration::from_millis(2500), |_| false);
    let pings = window.iter().filter(|m| m.as_str() == "WATCHDOG=1").count();
    assert!(
        (5..=12).contains(&pings),
        "{pings} pings in 2.5 s: {window:?}"
    );
    assert!(
        window
            .iter()
            .any(|m| m.starts_with("STATUS=leader (epoch 1), 1 schedules, ")
                && m.contains("last tick@")),
        "{window:?}"
    );

    // SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1 again.
    beat.signal(libc::SIGHUP);
    let reload = collect(&sock, Duration::from_secs(10), |m| m.starts_with("READY=1"));
    let at = reload
        .iter()
        .position(|m| m.starts_with("RELOADING=1\nMONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no RELOADING: {reload:?}\n{}", beat.log()));
    assert!(
        reload[at..]
            .iter()
            .any(|m| m.starts_with("READY=1\nSTATUS=leader")),
        "{reload:?}"
    );
    // An invalid reload is announced the same way (and rejected).
    std::fs::write(&cfg, "schedules:\n  tick: {every: nope, task: noop}\n").unwrap();
    let rejected = collect(&sock, Duration::from_secs(10), |m| m.starts_with("READY=1"));
    assert!(
        rejected.iter().any(|m| m.starts_with("RELOADING=1"))
            && rejected.last().is_some_and(|m| m.starts_with("READY=1")),
        "{rejected:?}\n{}",
        beat.log()
    );

    beat.signal(libc::SIGTERM);
    let last = collect(&sock, Duration::from_secs(10), |m| m.contains("STOPPING=1"));
    assert!(last.iter().any(|m| m.starts_with("STOPPING=1")), "{last:?}");
    let status = beat.stop(Duration::from_secs(10));
    assert!(status.success(), "{}", beat.log());
}

#[test]
fn beat_metrics_are_scraped_over_http() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = beat_config(dir.path());
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let beat = daemon("beat", &cfg, &redis, &["--metrics-addr", &addr], &[]);
    let text = scrape_until(
        port,
        Duration::from_secs(20),
        |text| {
            sample(text, &["celeriac_beat_fires_total", "schedule=\"tick\""])
                .is_some_and(|n| n >= 2.0)
        },
        || beat.log(),
    );
    assert_eq!(
        sample(&text, &["celeriac_beat_leader "]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &["celeriac_beat_epoch "]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &["celeriac_beat_schedules "]),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE celeriac_beat_fire_lateness_seconds histogram"),
        "{text}"
    );
    let count = sample(&text, &["celeriac_beat_fire_lateness_seconds_count"]).unwrap();
    assert!(count >= 2.0, "{text}");
    // Every fire on an idle machine lands well within a second of its nominal instant.
    assert_eq!(
        sample(
            &text,
            &["celeriac_beat_fire_lateness_seconds_bucket", "le=\"1\""]
        ),
        Some(count),
        "{text}"
    );
    // A reload is counted.
    std::fs::write(
        &cfg,
        "queues:\n  default: {}\ntasks:\n  noop: {builtin: noop}\n\
         schedules:\n  tick:\n    every: 2s\n    task: noop\n",
    )
    .unwrap();
    scrape_until(
        port,
        Duration::from_secs(15),
        |text| sample(text, &["celeriac_reloads_total", "result=\"applied\""]) == Some(1.0),
        || beat.log(),
    );
    // No secret and no broker URL in the exposition.
    assert!(!scrape(port).contains("redis://"));
}

/// A store that answers until `hang` is set, then never again (a stuck call).
struct HangingStore {
    inner: celeriac::beat::memory_store::MemoryBeatStore,
    hang: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HangingStore {
    async fn gate(&self) {
        if self.hang.load(std::sync::atomic::Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
}

#[async_trait::async_trait]
impl crate::util::StoreHooks for HangingStore {
    fn inner(&self) -> &dyn celeriac::beat::store::BeatStore {
        &self.inner
    }
    async fn claim(
        &self,
        token: &str,
        ttl: Duration,
    ) -> Result<celeriac::beat::store::Claim, celeriac::broker::BrokerError> {
        self.gate().await;
        self.inner().claim(token, ttl).await
    }
    async fn fire(
        &self,
        leader: &celeriac::beat::store::LeaderToken,
        fires: &[celeriac::beat::store::Fire],
    ) -> Result<Vec<celeriac::beat::store::FireOutcome>, celeriac::broker::BrokerError> {
        self.gate().await;
        self.inner().fire(leader, fires).await
    }
}

/// The watchdog is pinged by the beat loop itself, not by a timer beside it: when the loop
/// hangs (here: a store call that never returns), the pings stop and systemd would restart it.
#[test]
fn a_stuck_beat_loop_stops_the_watchdog_pings() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let cfg = celeriac::config::load_str(
        "queues:\n  default: {}\ntasks:\n  noop: {builtin: noop}\n\
         schedules:\n  tick: {every: 1s, task: noop}\n",
        std::path::Path::new("inline.yaml"),
    )
    .unwrap();
    let notifier = Arc::new(celeriac::notify::Notifier::new(
        Some(sock_path.clone().into_os_string()),
        Some(Duration::from_millis(200)),
    ));
    let hang = Arc::new(AtomicBool::new(false));
    let store = crate::util::Hooked(HangingStore {
        inner: celeriac::beat::memory_store::MemoryBeatStore::new(
            celeriac::broker::memory::MemoryBroker::new(),
        ),
        hang: hang.clone(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let beat = celeriac::beat::Beat::new(
        Arc::new(cfg),
        Arc::new(store),
        Arc::new(celeriac::clock::SystemClock),
        celeriac::beat::BeatOptions {
            notifier: Some(notifier),
            lease_ttl: Duration::from_secs(3),
            ..Default::default()
        },
    );
    let (_tx, reloads) = tokio::sync::mpsc::channel(1);
    rt.spawn(beat.run(shutdown.clone(), reloads));

    let healthy = collect(&sock, Duration::from_millis(1500), |_| false);
    let pings = healthy
        .iter()
        .filter(|m| m.as_str() == "WATCHDOG=1")
        .count();
    assert!(
        pings >= 5,
        "healthy loop: {pings} pings in 1.5 s: {healthy:?}"
    );

    // The loop's next store call (a fire within 1 s, a renewal within 1 s) never returns.
    hang.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1500));
    // Drop what was sent before the loop reached the hanging call.
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    while sock.recv(&mut buf).is_ok() {}
    sock.set_nonblocking(false).unwrap();
    let stuck = collect(&sock, Duration::from_millis(1500), |_| false);
    assert!(
        !stuck.iter().any(|m| m == "WATCHDOG=1"),
        "pings went on while the loop was stuck: {stuck:?}"
    );
    shutdown.cancel();
    rt.shutdown_timeout(Duration::from_millis(100));
}

/// With `signing_key_file`, the beat signs what it fires and a worker holding the key runs
/// it (unsigned ticks would be dead-lettered).
#[test]
fn signed_beat_ticks_run_on_a_signing_worker() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("signing.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
    let cfg = dir.path().join("signed.yaml");
    std::fs::write(
        &cfg,
        format!(
            "signing_key_file: {}\nqueues:\n  default: {{}}\ntasks:\n  noop: {{builtin: noop}}\n\
             schedules:\n  tick: {{every: 1s, task: noop}}\n",
            key.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let beat = daemon("beat", &cfg, &redis, &[], &[]);
    let addr = format!("127.0.0.1:{port}");
    let worker = daemon("worker", &cfg, &redis, &["--metrics-addr", &addr], &[]);
    let text = scrape_until(
        port,
        Duration::from_secs(20),
        |text| {
            sample(
                text,
                &[
                    "celeriac_tasks_total",
                    "task=\"noop\"",
                    "outcome=\"succeeded\"",
                ],
            )
            .is_some_and(|n| n >= 3.0)
        },
        || format!("beat:\n{}\nworker:\n{}", beat.log(), worker.log()),
    );
    assert!(
        !text.contains("celeriac_dead_letters_total"),
        "{text}\n{}",
        worker.log()
    );
}
