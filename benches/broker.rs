//! Broker micro-benchmarks: enqueue (single vs batched), drain (reserve + ack, batched), drain
//! with results, on a private redis-server and on the memory broker; then enqueue-to-delivery
//! latency through a blocked reserver, printed as percentiles.
//!
//! `cargo bench --bench broker` (criterion filters work: `cargo bench --bench broker -- drain`).
//! Redis is reached over TCP loopback by default; `CELERIAC_BENCH_REDIS=unix` uses the unix
//! socket instead. End-to-end comparisons with Celery live in `bench/`, not here.

#[path = "../tests/it/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use celeriac::broker::{
    Broker, Lease, MemoryBroker, RedisBroker, RedisBrokerOptions, TaskMessage, TaskResult,
    TaskStatus,
};
use criterion::{BenchmarkId, Criterion, Throughput};
use futures::StreamExt;
use redis_server::{RedisOptions, RedisServer, free_port};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

const LEASE: Duration = Duration::from_secs(60);

fn message(queue: &str) -> TaskMessage {
    TaskMessage::new("noop", queue).with_args(serde_json::json!({"n": 1}))
}

fn queues(name: &str) -> Vec<String> {
    vec![name.to_string()]
}

/// Fills `queue` with `n` messages (not timed).
async fn fill(b: &dyn Broker, queue: &str, n: u64) {
    let mut left = n as usize;
    while left > 0 {
        let batch: Vec<TaskMessage> = (0..left.min(1000)).map(|_| message(queue)).collect();
        left -= batch.len();
        b.enqueue_many(&batch).await.unwrap();
    }
}

/// Drains `n` messages with `consumers` concurrent reserve(batch) + ack_many loops, storing a
/// result per message when `results` is set. Returns the elapsed time.
async fn drain(
    b: Arc<dyn Broker>,
    queue: &str,
    n: u64,
    batch: usize,
    consumers: usize,
    results: bool,
) -> Duration {
    let start = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    // Consumers blocked in reserve when the last message is acked stop at once.
    let finished = CancellationToken::new();
    let tasks: Vec<_> = (0..consumers)
        .map(|_| {
            let (b, done, finished) = (b.clone(), done.clone(), finished.clone());
            let q = queues(queue);
            tokio::spawn(async move {
                loop {
                    let ds = tokio::select! {
                        _ = finished.cancelled() => return,
                        ds = b.reserve(&q, batch, LEASE, Duration::from_millis(50)) => ds.unwrap(),
                    };
                    if ds.is_empty() {
                        continue;
                    }
                    if results {
                        let stores = ds.iter().map(|d| {
                            let r =
                                TaskResult::for_message(d.message().unwrap(), TaskStatus::Success);
                            let b = b.clone();
                            async move { b.store_result(&r, Duration::from_secs(600)).await }
                        });
                        futures::future::try_join_all(stores).await.unwrap();
                    }
                    let leases: Vec<Lease> = ds.iter().map(|d| d.lease.clone()).collect();
                    b.ack_many(&leases).await.unwrap();
                    if done.fetch_add(ds.len() as u64, Ordering::Relaxed) + ds.len() as u64 >= n {
                        finished.cancel();
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

fn bench_enqueue(
    c: &mut Criterion,
    rt: &Runtime,
    name: &str,
    b: Arc<dyn Broker>,
    reset: &dyn Fn(),
) {
    let mut g = c.benchmark_group(format!("{name}/enqueue"));
    g.throughput(Throughput::Elements(1));
    g.bench_function("single", |bench| {
        bench.iter_custom(|iters| {
            let t = rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    b.enqueue(&message("bench")).await.unwrap();
                }
                start.elapsed()
            });
            reset();
            t
        })
    });
    g.bench_function("single-64-in-flight", |bench| {
        bench.iter_custom(|iters| {
            let t = rt.block_on(async {
                let start = Instant::now();
                futures::stream::iter(0..iters)
                    .map(|_| {
                        let b = b.clone();
                        async move { b.enqueue(&message("bench")).await.unwrap() }
                    })
                    .buffer_unordered(64)
                    .collect::<Vec<_>>()
                    .await;
                start.elapsed()
            });
            reset();
            t
        })
    });
    for size in [100usize, 1000] {
        g.throughput(Throughput::Elements(size as u64));
        g.bench_with_input(BenchmarkId::new("batch", size), &size, |bench, &size| {
            bench.iter_custom(|iters| {
                let t = rt.block_on(async {
                    let mut elapsed = Duration::ZERO;
                    for _ in 0..iters {
                        let batch: Vec<TaskMessage> = (0..size).map(|_| message("bench")).collect();
                        let start = Instant::now();
                        b.enqueue_many(&batch).await.unwrap();
                        elapsed += start.elapsed();
                    }
                    elapsed
                });
                reset();
                t
            })
        });
    }
    g.finish();
}

fn bench_drain(c: &mut Criterion, rt: &Runtime, name: &str, b: Arc<dyn Broker>, reset: &dyn Fn()) {
    let mut g = c.benchmark_group(format!("{name}/drain"));
    g.throughput(Throughput::Elements(1));
    let cases: [(usize, usize, bool); 6] = [
        (1, 1, false),
        (10, 1, false),
        (100, 1, false),
        (100, 4, false),
        (100, 1, true),
        (100, 4, true),
    ];
    for (batch, consumers, results) in cases {
        let id = format!(
            "batch-{batch}/consumers-{consumers}/results-{}",
            if results { "on" } else { "off" }
        );
        g.bench_function(id, |bench| {
            bench.iter_custom(|iters| {
                let t = rt.block_on(async {
                    fill(&*b, "bench", iters).await;
                    drain(b.clone(), "bench", iters, batch, consumers, results).await
                });
                reset();
                t
            })
        });
    }
    g.finish();
}

/// Enqueue-to-delivery latency through a reserver blocked in `reserve`, at low load.
fn latency(rt: &Runtime, name: &str, b: Arc<dyn Broker>) {
    let samples = 2000;
    let lat = rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let consumer = {
            let b = b.clone();
            tokio::spawn(async move {
                let q = queues("latency");
                let mut got = 0;
                while got < samples {
                    let ds = b
                        .reserve(&q, 10, LEASE, Duration::from_secs(5))
                        .await
                        .unwrap();
                    let now = Instant::now();
                    for d in &ds {
                        tx.send((d.id().to_string(), now)).unwrap();
                    }
                    let leases: Vec<Lease> = ds.iter().map(|d| d.lease.clone()).collect();
                    b.ack_many(&leases).await.unwrap();
                    got += ds.len();
                }
            })
        };
        let mut lat = Vec::with_capacity(samples);
        for _ in 0..samples {
            // Let the consumer block again: this measures the idle-worker path.
            tokio::time::sleep(Duration::from_millis(1)).await;
            let m = message("latency");
            let sent = Instant::now();
            b.enqueue(&m).await.unwrap();
            let (id, at) = rx.recv().await.unwrap();
            assert_eq!(id, m.id);
            lat.push(at - sent);
        }
        consumer.await.unwrap();
        lat
    });
    let mut lat = lat;
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "{name}/latency enqueue->delivery (blocked reserver, {samples} samples): \
         p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        lat[lat.len() - 1]
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();

    let unix = std::env::var("CELERIAC_BENCH_REDIS").is_ok_and(|v| v == "unix");
    let server = RedisServer::start_with(RedisOptions {
        tcp_port: (!unix).then(free_port),
        ..Default::default()
    });
    let url = if unix { server.url() } else { server.tcp_url() };
    let redis: Arc<dyn Broker> = Arc::new(
        rt.block_on(RedisBroker::connect(&url, RedisBrokerOptions::default()))
            .unwrap(),
    );
    let flush = || {
        let _: () = redis::cmd("FLUSHALL")
            .query(&mut server.connection())
            .unwrap();
    };
    let label = if unix { "redis-unix" } else { "redis-tcp" };
    bench_enqueue(&mut c, &rt, label, redis.clone(), &flush);
    bench_drain(&mut c, &rt, label, redis.clone(), &flush);

    let memory = MemoryBroker::new();
    let reset = {
        let memory = memory.clone();
        let rt = &rt;
        move || {
            rt.block_on(memory.purge("bench")).unwrap();
        }
    };
    let mem: Arc<dyn Broker> = Arc::new(memory.clone());
    bench_enqueue(&mut c, &rt, "memory", mem.clone(), &reset);
    bench_drain(&mut c, &rt, "memory", mem.clone(), &reset);

    c.final_summary();
    latency(&rt, label, redis);
    latency(&rt, "memory", mem);
}
