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

#[test]
fn worker_notifies_ready_pings_the_watchdog_and_says_stopping() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut cmd = celeriac();
    cmd.args(["worker", "--allow-root", "-c"])
        .arg(&cfg)
        .arg("--broker")
        .arg(redis.url())
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000");
    let mut worker = Daemon::spawn(cmd, dir.path().join("worker.log"));

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
    let status = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(worker.wait_exit(Duration::from_secs(10)));
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
    let mut cmd = celeriac();
    cmd.args(["worker", "--allow-root", "-c"])
        .arg(&cfg)
        .arg("--broker")
        .arg(redis.url())
        .arg("--metrics-addr")
        .arg(format!("127.0.0.1:{port}"));
    let worker = Daemon::spawn(cmd, dir.path().join("worker.log"));
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
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| scrape(port))
            .unwrap_or_default();
        let done = sample(
            &text,
            &[
                "celeriac_tasks_total",
                "task=\"noop\"",
                "outcome=\"succeeded\"",
            ],
        ) == Some(3.0)
            && sample(&text, &["celeriac_dead_letters_total", "queue=\"default\""]) == Some(1.0);
        if done {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed the tasks:\n{text}\n{}",
            worker.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
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
