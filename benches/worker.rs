//! End-to-end worker benchmark: the real `celeriac worker` binary (release build) on a private
//! redis-server over TCP loopback, measured from outside the way `bench/celery_bench.py`
//! measures Celery, so that `bench/worker_vs_celery.sh` can print the two side by side.
//!
//! `cargo bench --bench worker -- [--quick] [--json PATH] [--only drain,latency,enqueue,rss]
//! [--concurrency 1,4,16,256] [--repeat 3] [--vs OTHER_CELERIAC_BINARY] [--log info]
//! [--redis-stats]`
//!
//! - enqueue: `Broker::enqueue_many` of no-op messages, batches of 1000, 4 batches in flight.
//! - drain: N no-op tasks queued first; `celeriac worker --max-tasks N` is started and timed
//!   until it exits (it exits 0 once N tasks have run and been acknowledged): results off
//!   (`ignore_result: true`) and on, at several `--concurrency` values.
//! - latency: one worker idle and waiting; one task at a time, 2 ms apart; enqueue-to-start
//!   = the result's `started_at` minus the message's `enqueued_at` (same machine clock).
//! - rss: VmRSS of an idle worker after its first task.
//!
//! `CELERIAC_BENCH_WRAP="perf record -g -o /tmp/w.perf --"` runs each worker under a profiler;
//! `CELERIAC_BENCH_BIN=/path/to/celeriac` runs another build (before/after comparisons).

#[path = "../tests/it/redis_server.rs"]
mod redis_server;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac::broker::{Broker, RedisBroker, RedisBrokerOptions, TaskMessage};
use redis_server::{RedisOptions, RedisServer, free_port};
use serde_json::{Value, json};

const QUEUE: &str = "bench";

struct Options {
    quick: bool,
    json: Option<PathBuf>,
    only: Vec<String>,
    concurrency: Vec<usize>,
    log: String,
    redis_stats: bool,
    repeat: usize,
    vs: Option<String>,
}

fn options() -> Options {
    let mut o = Options {
        quick: false,
        json: None,
        only: Vec::new(),
        concurrency: vec![1, 4, 16, 256],
        log: "warn".into(),
        redis_stats: false,
        repeat: 3,
        vs: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--json" => o.json = args.next().map(PathBuf::from),
            "--only" => {
                o.only = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
            "--concurrency" => {
                o.concurrency = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(|c| c.parse().expect("--concurrency 1,4,64"))
                    .collect()
            }
            "--log" => o.log = args.next().unwrap_or_default(),
            "--redis-stats" => o.redis_stats = true,
            "--repeat" => o.repeat = args.next().and_then(|r| r.parse().ok()).unwrap_or(3),
            "--vs" => o.vs = args.next(),
            // `cargo bench` passes --bench; criterion-style filters are ignored.
            _ => {}
        }
    }
    o
}

struct Bench {
    server: RedisServer,
    url: String,
    dir: tempfile::TempDir,
    config: PathBuf,
    broker: Arc<RedisBroker>,
    log: String,
    redis_stats: bool,
}

impl Bench {
    fn flush(&self) {
        let mut c = self.server.connection();
        let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut c).unwrap();
    }

    /// CPU seconds (user + system) Redis has used so far.
    fn redis_cpu(&self) -> f64 {
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .query(&mut self.server.connection())
            .unwrap();
        info.lines()
            .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
            .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
            .sum()
    }

    /// With `--redis-stats`: Redis's own per-command counts and times since the last flush.
    fn print_redis_stats(&self) {
        if !self.redis_stats {
            return;
        }
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.server.connection())
            .unwrap();
        for line in info.lines().filter(|l| l.starts_with("cmdstat_")) {
            println!("    redis {line}");
        }
    }

    fn worker(&self, args: &[&str], log: &Path) -> Child {
        self.worker_of(&this_build(), args, log)
    }

    /// A worker of the `celeriac` binary at `bin`.
    fn worker_of(&self, bin: &str, args: &[&str], log: &Path) -> Child {
        let file = std::fs::File::create(log).unwrap();
        // CELERIAC_BENCH_WRAP="perf record -g -o /tmp/worker.perf --" profiles the worker.
        let wrap = std::env::var("CELERIAC_BENCH_WRAP").unwrap_or_default();
        let mut wrap = wrap.split_whitespace();
        let mut cmd = match wrap.next() {
            Some(program) => {
                let mut c = Command::new(program);
                c.args(wrap).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(["worker", "-c"])
            .arg(&self.config)
            .args(["--broker", &self.url, "--allow-root", "-Q", QUEUE])
            .args(args)
            .env("CELERIAC_LOG", &self.log)
            .env_remove("CELERIAC_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start celeriac worker")
    }

    async fn fill(&self, task: &str, n: usize) {
        let mut left = n;
        while left > 0 {
            let batch: Vec<TaskMessage> = (0..left.min(1000))
                .map(|_| TaskMessage::new(task, QUEUE))
                .collect();
            left -= batch.len();
            self.broker.enqueue_many(&batch).await.unwrap();
        }
    }
}

async fn bench_enqueue(b: &Bench, n: usize) -> Value {
    b.flush();
    let batches: Vec<Vec<TaskMessage>> = (0..n / 1000)
        .map(|_| (0..1000).map(|_| TaskMessage::new("noop", QUEUE)).collect())
        .collect();
    let started = Instant::now();
    let broker = b.broker.clone();
    futures::stream::iter(batches)
        .for_each_concurrent(4, |batch| {
            let broker = broker.clone();
            async move {
                broker.enqueue_many(&batch).await.unwrap();
            }
        })
        .await;
    let took = started.elapsed();
    let rate = n as f64 / took.as_secs_f64();
    println!("enqueue_many (1000 a batch, 4 in flight): {n} in {took:.2?} = {rate:.0}/s");
    b.flush();
    json!({"what": "enqueue", "n": n, "seconds": took.as_secs_f64(), "per_second": rate})
}

/// The `celeriac` binary measured: this build, or `CELERIAC_BENCH_BIN`.
fn this_build() -> String {
    std::env::var("CELERIAC_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_celeriac").to_string())
}

/// One drain: tasks per second, worker and Redis CPU microseconds per task, worker peak RSS.
struct DrainRun {
    rate: f64,
    most_active: u64,
    worker_us: f64,
    redis_us: f64,
    peak_mib: f64,
}

async fn drain_once(b: &Bench, bin: &str, n: usize, concurrency: usize, results: bool) -> DrainRun {
    b.flush();
    let task = if results { "noop" } else { "noop_ignore" };
    b.fill(task, n).await;
    let log = b
        .dir
        .path()
        .join(format!("drain-{concurrency}-{results}.log"));
    let c = concurrency.to_string();
    let ns = n.to_string();
    let redis_cpu_before = b.redis_cpu();
    let started = Instant::now();
    let child = b.worker_of(bin, &["--concurrency", &c, "--max-tasks", &ns], &log);
    let peak = watch_peak_rss(child.id());
    // Most messages reserved at once (leased, not yet acknowledged), sampled.
    let most_active = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let (broker, most) = (b.broker.clone(), most_active.clone());
        tokio::spawn(async move {
            loop {
                if let Ok(s) = broker.queue_stats(QUEUE).await {
                    most.fetch_max(s.active, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let (ok, worker_cpu) = tokio::task::block_in_place(|| wait_with_usage(child));
    sampler.abort();
    let most_active = most_active.load(std::sync::atomic::Ordering::Relaxed);
    let peak_kib = peak.join().unwrap();
    let took = started.elapsed();
    let redis_cpu = b.redis_cpu() - redis_cpu_before;
    assert!(
        ok,
        "worker failed: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    let stats = b.broker.queue_stats(QUEUE).await.unwrap();
    assert_eq!(
        (stats.ready_total(), stats.active),
        (0, 0),
        "everything ran and was acknowledged"
    );
    if results {
        let keys: usize = redis::cmd("DBSIZE")
            .query(&mut b.server.connection())
            .unwrap();
        assert!(keys >= n, "a result per task ({keys} keys)");
    }
    b.print_redis_stats();
    DrainRun {
        rate: n as f64 / took.as_secs_f64(),
        most_active,
        worker_us: worker_cpu * 1e6 / n as f64,
        redis_us: redis_cpu * 1e6 / n as f64,
        peak_mib: peak_kib as f64 / 1024.0,
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

/// Drains `repeat` times (alternating with the `vs` build when given) and reports medians.
async fn bench_drain(
    b: &Bench,
    n: usize,
    concurrency: usize,
    results: bool,
    repeat: usize,
    vs: Option<&str>,
) -> Value {
    let bin = this_build();
    let mut runs = Vec::new();
    let mut other = Vec::new();
    for _ in 0..repeat {
        runs.push(drain_once(b, &bin, n, concurrency, results).await);
        if let Some(vs) = vs {
            other.push(drain_once(b, vs, n, concurrency, results).await);
        }
    }
    let rates: Vec<f64> = runs.iter().map(|r| r.rate).collect();
    let (lo, hi) = (
        rates.iter().cloned().fold(f64::MAX, f64::min),
        rates.iter().cloned().fold(0.0, f64::max),
    );
    let rate = median(rates);
    let worker_us = median(runs.iter().map(|r| r.worker_us).collect());
    let redis_us = median(runs.iter().map(|r| r.redis_us).collect());
    let peak_mib = median(runs.iter().map(|r| r.peak_mib).collect());
    let most_active = runs.iter().map(|r| r.most_active).max().unwrap_or(0);
    println!(
        "drain {n} no-op tasks, results {}, --concurrency {concurrency}: median {rate:.0}/s \
         (min {lo:.0}, max {hi:.0}; {repeat} runs, process start to exit); CPU per task: \
         worker {worker_us:.1} us, redis {redis_us:.1} us; worker peak RSS {peak_mib:.1} MiB; \
         at most {most_active} messages reserved at once",
        if results { "on" } else { "off" },
    );
    let mut v = json!({"what": "drain", "n": n, "results": results, "concurrency": concurrency,
           "runs": repeat, "per_second": rate, "min_per_second": lo, "max_per_second": hi,
           "worker_cpu_us_per_task": worker_us, "redis_cpu_us_per_task": redis_us,
           "worker_peak_rss_mib": peak_mib, "most_reserved_at_once": most_active});
    if !other.is_empty() {
        let vs_rate = median(other.iter().map(|r| r.rate).collect());
        let vs_worker = median(other.iter().map(|r| r.worker_us).collect());
        let vs_redis = median(other.iter().map(|r| r.redis_us).collect());
        println!(
            "    vs {}: median {vs_rate:.0}/s, CPU per task worker {vs_worker:.1} us, redis \
             {vs_redis:.1} us; ratio this/vs {:.2}",
            vs.unwrap(),
            rate / vs_rate
        );
        v["vs_per_second"] = json!(vs_rate);
        v["vs_worker_cpu_us_per_task"] = json!(vs_worker);
        v["vs_redis_cpu_us_per_task"] = json!(vs_redis);
    }
    v
}

/// A worker that is killed and reaped when dropped, also when the benchmark panics.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for a child and returns whether it exited 0 and the CPU seconds (user + system)
/// it used (wait4's rusage).
fn wait_with_usage(child: Child) -> (bool, f64) {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child's pid, with valid pointers; the Child is not waited on
    // elsewhere.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert!(pid > 0, "wait4: {}", std::io::Error::last_os_error());
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    (ok, secs(usage.ru_utime) + secs(usage.ru_stime))
}

/// Follows a process's peak RSS (VmHWM, KiB) until it exits. (wait4's ru_maxrss would count
/// the memory of this process copied by fork before the exec.)
fn watch_peak_rss(pid: u32) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while let Some(hwm) = rss_kib(pid).map(|(_, hwm)| hwm).filter(|&h| h > 0) {
            peak = hwm;
            std::thread::sleep(Duration::from_millis(5));
        }
        peak
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

async fn bench_latency(b: &Bench, samples: usize) -> Value {
    b.flush();
    let log = b.dir.path().join("latency.log");
    let child = Reaped(b.worker(&["--concurrency", "4"], &log));
    // Up and consuming once a first task has run.
    let first = TaskMessage::new("noop", QUEUE);
    b.broker.enqueue(&first).await.unwrap();
    b.broker
        .wait_result(&first.id, Duration::from_secs(20))
        .await
        .unwrap()
        .expect("the worker runs a first task");
    // A few more to warm up (connections, first allocations), not counted.
    let mut ids = Vec::with_capacity(samples);
    for i in 0..samples + 20 {
        let m = TaskMessage::new("noop", QUEUE);
        b.broker.enqueue(&m).await.unwrap();
        if i >= 20 {
            ids.push((m.id.clone(), m.enqueued_at));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut lat = Vec::with_capacity(samples);
    for (id, enqueued_at) in &ids {
        let r = b
            .broker
            .wait_result(id, Duration::from_secs(10))
            .await
            .unwrap()
            .expect("result");
        let started = r.started_at.expect("started_at");
        lat.push((started - *enqueued_at).num_microseconds().unwrap() as f64 / 1000.0);
    }
    drop(child);
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (p50, p90, p99, max) = (
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        lat[lat.len() - 1],
    );
    println!(
        "enqueue-to-start latency, idle worker, {samples} tasks 2 ms apart: p50 {p50:.3} ms  p90 {p90:.3} ms  p99 {p99:.3} ms  max {max:.3} ms"
    );
    json!({"what": "latency", "samples": samples, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "max_ms": max})
}

/// VmRSS and VmHWM (KiB) of a live process; `None` once it is gone (a zombie has neither).
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

async fn bench_rss(b: &Bench) -> Value {
    b.flush();
    let log = b.dir.path().join("rss.log");
    let child = Reaped(b.worker(&[], &log));
    let m = TaskMessage::new("noop", QUEUE);
    b.broker.enqueue(&m).await.unwrap();
    b.broker
        .wait_result(&m.id, Duration::from_secs(20))
        .await
        .unwrap()
        .expect("result");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss, hwm) = rss_kib(child.0.id()).expect("worker alive");
    drop(child);
    println!(
        "idle worker (default --concurrency 4) after one task: RSS {:.1} MiB (peak {:.1} MiB)",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    json!({"what": "rss", "rss_mib": rss as f64 / 1024.0, "peak_mib": hwm as f64 / 1024.0})
}

use futures::StreamExt;

fn main() {
    let o = options();
    let wanted = |what: &str| o.only.is_empty() || o.only.iter().any(|w| w == what);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = RedisServer::start_with(RedisOptions {
        tcp_port: Some(free_port()),
        ..Default::default()
    });
    let url = server.tcp_url();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bench.yaml");
    std::fs::write(
        &config,
        format!(
            "queues: {{{QUEUE}: {{}}}}\nresult_expires: 10m\ntasks:\n  noop: {{builtin: noop}}\n  noop_ignore: {{builtin: noop, ignore_result: true}}\n"
        ),
    )
    .unwrap();
    let broker = Arc::new(
        rt.block_on(RedisBroker::connect(&url, RedisBrokerOptions::default()))
            .unwrap(),
    );
    let b = Bench {
        server,
        url,
        dir,
        config,
        broker,
        log: o.log.clone(),
        redis_stats: o.redis_stats,
    };
    let (enqueue_n, drain_n, samples) = if o.quick {
        (100_000, 50_000, 500)
    } else {
        (500_000, 100_000, 2000)
    };
    let mut out = Vec::new();
    rt.block_on(async {
        if wanted("enqueue") {
            out.push(bench_enqueue(&b, enqueue_n).await);
        }
        if wanted("drain") {
            for results in [false, true] {
                for &c in &o.concurrency {
                    out.push(bench_drain(&b, drain_n, c, results, o.repeat, o.vs.as_deref()).await);
                }
            }
        }
        if wanted("latency") {
            out.push(bench_latency(&b, samples).await);
        }
        if wanted("rss") {
            out.push(bench_rss(&b).await);
        }
    });
    if let Some(path) = o.json {
        let doc = json!({"system": "celeriac", "results": out});
        std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    }
}
