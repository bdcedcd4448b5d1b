//! Chaos soak with an audit (issue 8; docs/chaos.md).
//!
//! Starts a private redis-server (AOF), three `celeriac beat` and three `celeriac worker`
//! processes on a generated configuration, injects faults at random times (seeded), lets the
//! system settle, then audits the history: every tick exactly once, every task at least once,
//! nothing lost. Prints a table and exits 1 on any violation.
//!
//! ```sh
//! cargo build && cargo run --example chaos -- --seconds 90 --schedules 120 --seed 42
//! cargo build --release && cargo run --release --example chaos -- --minutes 30
//! ```

#[path = "chaos/audit.rs"]
mod audit;
#[path = "chaos/cluster.rs"]
mod cluster;
#[path = "chaos/config.rs"]
mod config;
#[path = "chaos/journal.rs"]
mod journal;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use audit::{Period, QueueState, ResultRecord, Scheduled};
use cluster::{Cluster, Kind};
use config::Sched;

/// Chaos soak: faults against a real cluster, then an audit of every tick and task.
#[derive(Debug, Parser)]
#[command(name = "chaos")]
struct Opts {
    /// Fault window length in minutes (overrides --seconds).
    #[arg(long)]
    minutes: Option<u64>,
    /// Fault window length in seconds (default 180).
    #[arg(long, default_value_t = 180)]
    seconds: u64,
    /// Number of fixed schedules (plus about a tenth more that reloads add and remove).
    #[arg(long, default_value_t = 500)]
    schedules: usize,
    /// RNG seed (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// The celeriac binary (default: next to this example, i.e. target/<profile>/celeriac).
    #[arg(long)]
    celeriac: Option<PathBuf>,
    /// Beats and workers.
    #[arg(long, default_value_t = 3)]
    beats: usize,
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Beat leader lease ttl (`celeriac beat --lease-ttl`), ms.
    #[arg(long, default_value_t = 3000)]
    lease_ttl_ms: u64,
    /// Worker message lease (`celeriac worker --lease`), ms.
    #[arg(long, default_value_t = 8000)]
    worker_lease_ms: u64,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Redis `appendfsync`. `always` (default): Redis never acknowledges a write it has not
    /// written, so every loss is the product's. `everysec`: as in production, but a SIGKILLed
    /// Redis may lose ~1-2 s of acknowledged writes when its fsync lags (docs/chaos.md).
    #[arg(long, default_value = "always")]
    appendfsync: String,
    /// Mean pause between two faults, ms.
    #[arg(long, default_value_t = 4000)]
    fault_pause_ms: u64,
    /// Do not fail on known product bugs (each has an ignored regression test in
    /// tests/it/chaos_regressions.rs); they are still counted in the table.
    #[arg(long)]
    allow_known_bugs: bool,
    /// Keep the run directory (logs, config, AOF, execution log) even when the audit passes.
    #[arg(long)]
    keep: bool,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillLeader,
    KillWorker,
    StopBeat,
    StopBeatShort,
    KillRedis,
    Reload,
    InvalidReload,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "SIGKILL leader beat (+ restart)",
            Fault::KillWorker => "SIGKILL worker (+ restart)",
            Fault::StopBeat => "SIGSTOP beat > lease ttl, SIGCONT",
            Fault::StopBeatShort => "SIGSTOP beat < lease ttl, SIGCONT",
            Fault::KillRedis => "SIGKILL redis (+ restart from AOF)",
            Fault::Reload => "reload: add/remove schedules",
            Fault::InvalidReload => "invalid reload (then restored)",
        }
    }
}

const FAULTS: [(Fault, u32); 7] = [
    (Fault::KillLeader, 25),
    (Fault::KillWorker, 20),
    (Fault::StopBeat, 15),
    (Fault::StopBeatShort, 5),
    (Fault::KillRedis, 15),
    (Fault::Reload, 15),
    (Fault::InvalidReload, 10),
];

struct Driver {
    opts: Opts,
    rng: StdRng,
    cluster: Cluster,
    /// Dynamic schedules currently configured, and the serial of the next one.
    dynamic: Vec<Sched>,
    serial: usize,
    /// name -> timing and configured periods
    schedules: BTreeMap<String, Scheduled>,
    faults: BTreeMap<&'static str, usize>,
    events: Vec<String>,
    t0: Instant,
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

impl Driver {
    fn log(&mut self, msg: String) {
        let line = format!("[{:>7.1}s] {msg}", self.t0.elapsed().as_secs_f64());
        eprintln!("chaos: {line}");
        self.events.push(line);
    }

    /// Sleeps while supervising the children; fails on Ctrl-C.
    fn wait(&mut self, d: Duration) -> Result<(), String> {
        let end = Instant::now() + d;
        loop {
            if cluster::interrupted() {
                return Err("interrupted".into());
            }
            self.cluster.supervise()?;
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }

    fn redis(&self) -> Result<redis::Connection, String> {
        redis::Client::open(self.cluster.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .map_err(|e| e.to_string())
    }

    /// The beat slot holding the leader lease, from `celeriac:beat:leader` (`host/pid/x:epoch`).
    fn leader(&self) -> Option<usize> {
        let mut c = self.redis().ok()?;
        let v: Option<String> = redis::cmd("GET")
            .arg("celeriac:beat:leader")
            .query(&mut c)
            .ok()?;
        let v = v?;
        let token = v.rsplit_once(':')?.0;
        let parts: Vec<&str> = token.split('/').collect();
        let pid: u32 = parts.get(parts.len().checked_sub(2)?)?.parse().ok()?;
        match self.cluster.find_pid(pid) {
            Some((Kind::Beat, i)) => Some(i),
            _ => None,
        }
    }

    /// Loads the configuration directory with celeriac's own loader and records the timing
    /// of every schedule (names are never reused).
    fn record_timings(&mut self) -> Result<(), String> {
        let cfg = celeriac::config::load(&self.cluster.config_dir())
            .map_err(|e| format!("generated config does not load: {e}"))?;
        for (name, s) in &cfg.schedules {
            self.schedules
                .entry(name.clone())
                .or_insert_with(|| Scheduled {
                    timing: s.timing.clone(),
                    periods: Vec::new(),
                });
        }
        Ok(())
    }

    fn write_dynamic(&self, text: &str) -> Result<(), String> {
        config::write_atomic(&self.cluster.config_dir(), "dynamic.yaml", text)
            .map_err(|e| e.to_string())
    }

    fn pick(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n)
    }

    /// The worker with the most task processes (children) running, polled for up to `wait`
    /// until one runs any; a random one if none does.
    fn busiest_worker(&mut self, wait: Duration) -> Result<(usize, usize), String> {
        let end = Instant::now() + wait;
        let start = self.pick(self.opts.workers);
        loop {
            let counts = cluster::children_of(
                &(0..self.opts.workers)
                    .map(|i| self.cluster.proc_mut(Kind::Worker, i).pid().unwrap_or(0))
                    .collect::<Vec<_>>(),
            );
            // Rotate the start so that ties go to a random worker.
            let best = (0..self.opts.workers)
                .map(|k| (start + k) % self.opts.workers)
                .max_by_key(|&i| {
                    (
                        counts[i],
                        std::cmp::Reverse((i + self.opts.workers - start) % self.opts.workers),
                    )
                })
                .unwrap_or(start);
            if counts[best] > 0 || Instant::now() >= end {
                return Ok((best, counts[best]));
            }
            self.wait(Duration::from_millis(30))?;
        }
    }

    fn inject(&mut self, fault: Fault) -> Result<(), String> {
        *self.faults.entry(fault.name()).or_default() += 1;
        match fault {
            Fault::KillLeader => {
                let (i, what) = match self.leader() {
                    Some(i) => (i, "leader"),
                    None => (self.pick(self.opts.beats), "no leader; random"),
                };
                let pid = self.cluster.kill(Kind::Beat, i);
                let down = Duration::from_millis(self.rng.random_range(200..3000));
                self.log(format!(
                    "SIGKILL beat-{i} ({what}, pid {pid:?}); restart in {down:?}"
                ));
                self.wait(down)?;
                let pid = self.cluster.start(Kind::Beat, i)?;
                self.log(format!("beat-{i} restarted (pid {pid})"));
            }
            Fault::KillWorker => {
                // Prefer a worker that is running tasks right now (mid-task), waiting up to 2 s.
                let (i, running) = self.busiest_worker(Duration::from_secs(2))?;
                let pid = self.cluster.kill(Kind::Worker, i);
                self.log(format!("worker-{i} was running {running} task(s)"));
                let down = Duration::from_millis(self.rng.random_range(200..2000));
                self.log(format!(
                    "SIGKILL worker-{i} (pid {pid:?}); restart in {down:?}"
                ));
                self.wait(down)?;
                let pid = self.cluster.start(Kind::Worker, i)?;
                self.log(format!("worker-{i} restarted (pid {pid})"));
            }
            Fault::StopBeat | Fault::StopBeatShort => {
                let leader = self.leader();
                let i = match leader {
                    Some(l) if self.rng.random_bool(0.7) => l,
                    _ => self.pick(self.opts.beats),
                };
                let ttl = self.opts.lease_ttl_ms;
                let pause = Duration::from_millis(match fault {
                    // Longer than the lease: a standby takes over; the resumed beat must not
                    // fire again.
                    Fault::StopBeat => ttl + self.rng.random_range(500..3000),
                    // Shorter: the leader keeps its lease (or loses it at the edge) and resumes.
                    _ => self.rng.random_range(ttl * 5 / 10..ttl),
                });
                self.cluster.stop(Kind::Beat, i);
                let role = if leader == Some(i) {
                    "leader"
                } else {
                    "standby"
                };
                self.log(format!("SIGSTOP beat-{i} ({role}) for {pause:?}"));
                self.wait(pause)?;
                self.cluster.cont(Kind::Beat, i);
                self.log(format!("SIGCONT beat-{i}"));
            }
            Fault::KillRedis => {
                self.cluster.kill_redis();
                let down = Duration::from_millis(self.rng.random_range(100..2500));
                self.log(format!("SIGKILL redis; restart in {down:?}"));
                self.wait(down)?;
                let took = self.cluster.start_redis()?;
                self.log(format!(
                    "redis restarted from its AOF (ready after {took:?})"
                ));
            }
            Fault::Reload => {
                let n = self.dynamic.len();
                let remove = if n == 0 {
                    0
                } else {
                    self.rng.random_range(0..=n.div_ceil(3))
                };
                let target = (self.opts.schedules / 10).max(3);
                let add = self.rng.random_range(0..=target.div_ceil(3))
                    + target.saturating_sub(n - remove) / 2;
                let mut removed = Vec::new();
                for _ in 0..remove {
                    let k = self.rng.random_range(0..self.dynamic.len());
                    removed.push(self.dynamic.swap_remove(k));
                }
                let mut added = Vec::new();
                for _ in 0..add {
                    let s = config::dynamic_schedule(self.serial, &mut self.rng);
                    self.serial += 1;
                    added.push(s.name.clone());
                    self.dynamic.push(s);
                }
                let text = config::dynamic_yaml(&self.dynamic);
                self.write_dynamic(&text)?;
                let at = now();
                self.record_timings()?;
                for s in &removed {
                    if let Some(p) = self
                        .schedules
                        .get_mut(&s.name)
                        .and_then(|x| x.periods.last_mut())
                    {
                        p.to = Some(at);
                    }
                }
                for name in &added {
                    if let Some(x) = self.schedules.get_mut(name) {
                        x.periods.push(Period {
                            from: Some(at),
                            to: None,
                        });
                    }
                }
                self.log(format!(
                    "reload: +{} -{} dynamic schedules (now {})",
                    added.len(),
                    removed.len(),
                    self.dynamic.len()
                ));
            }
            Fault::InvalidReload => {
                let good = config::dynamic_yaml(&self.dynamic);
                let bad = config::invalid_yaml(&self.dynamic, self.serial);
                self.serial += 1;
                self.write_dynamic(&bad)?;
                let hold = Duration::from_millis(self.rng.random_range(1000..3000));
                self.log(format!("invalid reload written; restored in {hold:?}"));
                self.wait(hold)?;
                self.write_dynamic(&good)?;
                // Let the beats see the restored file before anything restarts a beat
                // (a beat started on the invalid file would refuse to start).
                self.wait(Duration::from_millis(800))?;
                self.log("valid configuration restored".into());
            }
        }
        Ok(())
    }
}

fn main() {
    let opts = Opts::parse();
    cluster::install_signal_handlers();
    match run(opts) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("chaos: error: {e}");
            std::process::exit(2);
        }
    }
}

fn run(opts: Opts) -> Result<bool, String> {
    let seed = opts.seed.unwrap_or_else(rand::random);
    let window = Duration::from_secs(opts.minutes.map_or(opts.seconds, |m| m * 60));
    let celeriac = match &opts.celeriac {
        Some(p) => p.clone(),
        None => {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            exe.parent()
                .and_then(|p| p.parent())
                .map(|p| p.join("celeriac"))
                .ok_or("cannot locate the celeriac binary; pass --celeriac")?
        }
    };
    if !celeriac.exists() {
        return Err(format!(
            "{} does not exist: run `cargo build` (or --release) first, or pass --celeriac",
            celeriac.display()
        ));
    }
    let tmp = tempfile::Builder::new()
        .prefix("celeriac-chaos-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let dir = tmp.path().to_path_buf();
    println!(
        "chaos: seed {seed}, {} s of faults, {} schedules, binary {}, appendfsync {}, dir {}",
        window.as_secs(),
        opts.schedules,
        celeriac.display(),
        opts.appendfsync,
        dir.display()
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir).map_err(|e| e.to_string())?;
    let exec_log = dir.join("exec.log");
    std::fs::write(&exec_log, "").map_err(|e| e.to_string())?;

    let base = config::base_schedules(opts.schedules, &mut rng);
    let expires = (window.as_secs() * 3).max(3600);
    std::fs::write(
        config_dir.join("base.yaml"),
        config::base_yaml(&base, &exec_log, expires),
    )
    .map_err(|e| e.to_string())?;

    let cluster = Cluster::new(
        dir.clone(),
        celeriac,
        opts.appendfsync.clone(),
        Duration::from_millis(opts.lease_ttl_ms),
        Duration::from_millis(opts.worker_lease_ms),
        opts.concurrency,
    );
    let mut d = Driver {
        rng,
        cluster,
        dynamic: Vec::new(),
        serial: 0,
        schedules: BTreeMap::new(),
        faults: BTreeMap::new(),
        events: Vec::new(),
        t0: Instant::now(),
        opts,
    };
    let initial_dynamic = (d.opts.schedules / 10).max(3);
    for _ in 0..initial_dynamic {
        let s = config::dynamic_schedule(d.serial, &mut d.rng);
        d.serial += 1;
        d.dynamic.push(s);
    }
    let text = config::dynamic_yaml(&d.dynamic);
    d.write_dynamic(&text)?;
    d.record_timings()?;
    for s in d.schedules.values_mut() {
        s.periods.push(Period {
            from: None,
            to: None,
        });
    }

    d.cluster.start_redis()?;
    let tail = Arc::new(journal::Tail::default());
    let tailer = {
        let (url, tail) = (d.cluster.url(), tail.clone());
        std::thread::spawn(move || journal::run(url, "celeriac:beat:journal".into(), tail))
    };
    for i in 0..d.opts.beats {
        d.cluster.start(Kind::Beat, i)?;
    }
    for i in 0..d.opts.workers {
        d.cluster.start(Kind::Worker, i)?;
    }
    d.log(format!(
        "redis on port {}, {} beats, {} workers started",
        d.cluster.redis_port, d.opts.beats, d.opts.workers
    ));

    // Warm up: a leader fires (the schedules' first ticks have no catch-up to do).
    let warm_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        d.wait(Duration::from_millis(500))?;
        let fired = tail
            .entries
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.event == "fired")
            .count();
        if fired > 0 && d.t0.elapsed() > Duration::from_secs(8) {
            break;
        }
        if Instant::now() > warm_deadline {
            return Err("no beat fired anything within 60 s of the start".into());
        }
    }
    let w0 = now();
    let fault_end = Instant::now() + window;
    d.log(format!("faults start (window {window:?})"));
    while Instant::now() < fault_end {
        let pause = Duration::from_millis(
            d.rng
                .random_range((d.opts.fault_pause_ms / 4)..=(d.opts.fault_pause_ms * 7 / 4)),
        );
        d.wait(pause.min(fault_end.saturating_duration_since(Instant::now())))?;
        if Instant::now() >= fault_end {
            break;
        }
        let total: u32 = FAULTS.iter().map(|f| f.1).sum();
        let mut x = d.rng.random_range(0..total);
        let mut fault = FAULTS[0].0;
        for (f, w) in FAULTS {
            if x < w {
                fault = f;
                break;
            }
            x -= w;
        }
        d.inject(fault)?;
    }
    let w1 = now();
    d.log("faults stop; settling".into());

    // Settle: the last catch-up fires within a lease ttl or two; ticks up to w1 are audited.
    let settle = Duration::from_millis(d.opts.lease_ttl_ms * 3).max(Duration::from_secs(10));
    d.wait(settle)?;
    d.log("stopping the beats".into());
    let forced_beats = d.cluster.terminate_all(Kind::Beat, Duration::from_secs(15));
    for f in &forced_beats {
        d.log(format!("beat shutdown: {f}"));
    }
    // Drain: every queue empty (a killed worker's messages come back after the lease).
    let drain_deadline = Instant::now()
        + Duration::from_millis(d.opts.worker_lease_ms * 4)
        + Duration::from_secs(60);
    let queues_left = loop {
        d.wait(Duration::from_millis(500))?;
        let left = queue_states(&d)?;
        let busy: u64 = left.values().map(|s| s.ready + s.delayed + s.active).sum();
        if busy == 0 || Instant::now() > drain_deadline {
            break left;
        }
    };
    let _ = queues_left;
    d.log("queues drained; stopping the workers".into());
    let forced_workers = d
        .cluster
        .terminate_all(Kind::Worker, Duration::from_secs(30));
    for f in &forced_workers {
        d.log(format!("worker shutdown: {f}"));
    }
    // Let orphaned task processes of killed workers finish their append.
    std::thread::sleep(Duration::from_millis(1500));
    tail.stop.store(true, Ordering::SeqCst);
    let _ = tailer.join();

    // --- collect ----------------------------------------------------------------------------
    let queues = queue_states(&d)?;
    let journal = std::mem::take(&mut *tail.entries.lock().unwrap());
    let dump: String = journal
        .iter()
        .map(|e| {
            format!(
                "{} {} {} {} {} {} {}\n",
                e.at().format("%H:%M:%S%.3f"),
                e.event,
                e.schedule,
                e.fire_id,
                e.nominal.map(|n| n.to_rfc3339()).unwrap_or_default(),
                e.beat,
                e.detail
            )
        })
        .collect();
    let _ = std::fs::write(dir.join("journal.txt"), dump);
    let text = std::fs::read_to_string(&exec_log).map_err(|e| e.to_string())?;
    let (execs, bad) = audit::parse_exec_log(&text);
    let mut ids: Vec<String> = journal
        .iter()
        .filter(|e| e.event == "fired" || e.event == "caught_up")
        .filter_map(|e| e.message().map(|m| m.0))
        .collect();
    ids.sort();
    ids.dedup();
    let results = read_results(&d, &ids)?;
    let killed: HashSet<u32> = d.cluster.killed_worker_pids.iter().copied().collect();
    let mut crashes: Vec<String> = d
        .cluster
        .crashes
        .iter()
        .map(|c| format!("{} {} at {}", c.what, c.status, c.at))
        .collect();
    crashes.extend(forced_beats.iter().chain(&forced_workers).cloned());
    let tol = Duration::from_secs(3);
    let report = audit::audit(&audit::Input {
        window: (w0, w1),
        reload_tolerance: tol,
        schedules: &d.schedules,
        journal: &journal,
        journal_gap: tail.gap.load(Ordering::SeqCst),
        execs: &execs,
        bad_exec_lines: bad,
        results: &results,
        queues: &queues,
        killed_worker_pids: &killed,
        worker_pids: &d.cluster.worker_pids.iter().copied().collect(),
        faults: &d.faults,
        crashes: &crashes,
        allow_known_bugs: d.opts.allow_known_bugs,
    });
    d.cluster.kill_redis();

    println!();
    println!(
        "chaos soak: seed {seed}, {} s of faults, {} fixed + {} dynamic schedules, {} beats, {} workers, appendfsync {}",
        window.as_secs(),
        d.opts.schedules,
        d.serial
            - d.faults
                .get(Fault::InvalidReload.name())
                .copied()
                .unwrap_or(0),
        d.opts.beats,
        d.opts.workers,
        d.opts.appendfsync
    );
    println!("audit window {} .. {}", w0.to_rfc3339(), w1.to_rfc3339());
    println!();
    let mut text = audit::table(&report, &d.faults);
    let ok = report.violations.is_empty();
    if !ok {
        text.push_str("\nVIOLATIONS:\n");
        for v in &report.violations {
            text.push_str(&format!("  {v}\n"));
        }
    }
    print!("{text}");
    let _ = std::fs::write(dir.join("report.txt"), &text);
    let keep = !ok || d.opts.keep;
    let events = d.events.join("\n");
    let _ = std::fs::write(dir.join("events.txt"), events);
    drop(d);
    if keep {
        let kept = tmp.keep();
        println!();
        println!("run directory kept: {}", kept.display());
    }
    println!("{}", if ok { "chaos: PASS" } else { "chaos: FAIL" });
    Ok(ok)
}

fn queue_states(d: &Driver) -> Result<BTreeMap<String, QueueState>, String> {
    let mut c = d.redis()?;
    let mut out = BTreeMap::new();
    for q in config::QUEUES {
        let k = celeriac::broker::keys::QueueKeys::new("celeriac:", q);
        let (ready, delayed, active, bodies, dead): (u64, u64, u64, u64, u64) = redis::pipe()
            .cmd("ZCARD")
            .arg(&k.ready)
            .cmd("ZCARD")
            .arg(&k.delayed)
            .cmd("ZCARD")
            .arg(&k.active)
            .cmd("HLEN")
            .arg(&k.msg)
            .cmd("LLEN")
            .arg(&k.dead)
            .query(&mut c)
            .map_err(|e| e.to_string())?;
        out.insert(
            q.to_string(),
            QueueState {
                ready,
                delayed,
                active,
                bodies,
                dead,
            },
        );
    }
    Ok(out)
}

fn read_results(d: &Driver, ids: &[String]) -> Result<HashMap<String, ResultRecord>, String> {
    let mut c = d.redis()?;
    let mut out = HashMap::new();
    for chunk in ids.chunks(1000) {
        let mut p = redis::pipe();
        for id in chunk {
            p.cmd("LINDEX").arg(format!("celeriac:result:{id}")).arg(0);
        }
        let vals: Vec<Option<String>> = p.query(&mut c).map_err(|e| e.to_string())?;
        for (id, v) in chunk.iter().zip(vals) {
            let rec = v
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .map(|j| ResultRecord {
                    status: j.get("status").and_then(|s| s.as_str()).map(str::to_string),
                    attempts: j.get("attempts").and_then(|a| a.as_u64()),
                })
                .unwrap_or_default();
            out.insert(id.clone(), rec);
        }
    }
    Ok(out)
}
