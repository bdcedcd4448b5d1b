//! The processes under test: one private redis-server, beats and workers. Every child is
//! killed when the [`Cluster`] is dropped (normal end, error, panic), and gets SIGKILL from the
//! kernel if the driver itself dies (`PR_SET_PDEATHSIG`).

use std::fs::{File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set by SIGINT/SIGTERM: the driver stops, and drops (kills) everything.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Beat,
    Worker,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Beat => "beat",
            Kind::Worker => "worker",
        }
    }
}

pub struct Proc {
    pub kind: Kind,
    pub index: usize,
    pub child: Option<Child>,
    pub stopped: bool,
}

impl Proc {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

/// An unexpected exit of a beat or worker (not caused by the driver).
#[derive(Debug, Clone)]
pub struct Crash {
    pub what: String,
    pub status: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub redis_port: u16,
    pub appendfsync: String,
    pub celeriac: PathBuf,
    pub beat_lease_ttl: Duration,
    pub worker_lease: Duration,
    pub concurrency: usize,
    redis: Option<Child>,
    pub procs: Vec<Proc>,
    /// Every worker pid the driver SIGKILLed (its task executions may repeat).
    pub killed_worker_pids: Vec<u32>,
    /// Every worker pid ever started.
    pub worker_pids: Vec<u32>,
    pub crashes: Vec<Crash>,
}

fn log_file(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}

fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: plain kill(2) on a pid we spawned.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

impl Cluster {
    pub fn new(
        dir: PathBuf,
        celeriac: PathBuf,
        appendfsync: String,
        beat_lease_ttl: Duration,
        worker_lease: Duration,
        concurrency: usize,
    ) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        Cluster {
            dir,
            redis_port: port,
            appendfsync,
            celeriac,
            beat_lease_ttl,
            worker_lease,
            concurrency,
            redis: None,
            procs: Vec::new(),
            killed_worker_pids: Vec::new(),
            worker_pids: Vec::new(),
            crashes: Vec::new(),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.redis_port)
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    /// Starts redis-server (on the same port and directory each time: a restart loads the AOF)
    /// and waits until it answers PING (not LOADING).
    pub fn start_redis(&mut self) -> Result<Duration, String> {
        let data = self.dir.join("redis");
        std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.redis_port.to_string())
            .args(["--bind", "127.0.0.1", "--appendonly", "yes"])
            .args(["--appendfsync", &self.appendfsync])
            .args(["--save", "", "--daemonize", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(log_file(&self.dir.join("redis.log")))
            .stderr(log_file(&self.dir.join("redis.log")));
        die_with_parent(&mut cmd);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        self.redis = Some(child);
        let client = redis::Client::open(self.url()).map_err(|e| e.to_string())?;
        loop {
            if let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(500))
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return Ok(started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err("redis-server did not answer within 30 s".into());
            }
            if let Some(Ok(Some(status))) = self.redis.as_mut().map(|c| c.try_wait()) {
                return Err(format!("redis-server exited: {status} (see redis.log)"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill_redis(&mut self) {
        if let Some(mut c) = self.redis.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn command(&self, kind: Kind, index: usize) -> Command {
        let mut cmd = Command::new(&self.celeriac);
        cmd.arg("--log-format").arg("json").arg(kind.name());
        cmd.arg("-c")
            .arg(self.config_dir())
            .arg("--broker")
            .arg(self.url())
            .arg("--allow-root");
        match kind {
            Kind::Beat => {
                cmd.arg("--lease-ttl")
                    .arg(format!("{}ms", self.beat_lease_ttl.as_millis()));
            }
            Kind::Worker => {
                cmd.arg("--lease")
                    .arg(format!("{}ms", self.worker_lease.as_millis()))
                    .arg("--concurrency")
                    .arg(self.concurrency.to_string())
                    .arg("--grace")
                    .arg("20s");
            }
        }
        let log = self.dir.join(format!("{}-{index}.log", kind.name()));
        cmd.env_remove("CELERIAC_BROKER")
            .env_remove("CELERIAC_CONFIG")
            .env("CELERIAC_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file(&log))
            .stderr(log_file(&log));
        die_with_parent(&mut cmd);
        cmd
    }

    /// Starts process `index` of `kind` (a new slot, or the restart of a dead one).
    pub fn start(&mut self, kind: Kind, index: usize) -> Result<u32, String> {
        let child = self
            .command(kind, index)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.celeriac.display()))?;
        let pid = child.id();
        if kind == Kind::Worker {
            self.worker_pids.push(pid);
        }
        match self
            .procs
            .iter_mut()
            .find(|p| p.kind == kind && p.index == index)
        {
            Some(p) => {
                p.child = Some(child);
                p.stopped = false;
            }
            None => self.procs.push(Proc {
                kind,
                index,
                child: Some(child),
                stopped: false,
            }),
        }
        Ok(pid)
    }

    pub fn proc_mut(&mut self, kind: Kind, index: usize) -> &mut Proc {
        self.procs
            .iter_mut()
            .find(|p| p.kind == kind && p.index == index)
            .expect("known process")
    }

    pub fn find_pid(&self, pid: u32) -> Option<(Kind, usize)> {
        self.procs
            .iter()
            .find(|p| p.pid() == Some(pid))
            .map(|p| (p.kind, p.index))
    }

    /// SIGKILLs a process and reaps it; returns its pid.
    pub fn kill(&mut self, kind: Kind, index: usize) -> Option<u32> {
        let p = self.proc_mut(kind, index);
        let mut child = p.child.take()?;
        let pid = child.id();
        let _ = child.kill();
        let _ = child.wait();
        p.stopped = false;
        if kind == Kind::Worker {
            self.killed_worker_pids.push(pid);
        }
        Some(pid)
    }

    pub fn stop(&mut self, kind: Kind, index: usize) -> Option<u32> {
        let p = self.proc_mut(kind, index);
        let pid = p.pid()?;
        signal(pid, libc::SIGSTOP);
        p.stopped = true;
        Some(pid)
    }

    pub fn cont(&mut self, kind: Kind, index: usize) {
        let p = self.proc_mut(kind, index);
        if let Some(pid) = p.pid() {
            signal(pid, libc::SIGCONT);
        }
        p.stopped = false;
    }

    /// Restarts any beat or worker that exited without the driver killing it (and records it).
    pub fn supervise(&mut self) -> Result<(), String> {
        let mut dead = Vec::new();
        for p in &mut self.procs {
            if let Some(c) = p.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                dead.push((p.kind, p.index, status));
                p.child = None;
            }
        }
        for (kind, index, status) in dead {
            self.crashes.push(Crash {
                what: format!("{}-{index}", kind.name()),
                status: describe(status),
                at: chrono::Utc::now(),
            });
            eprintln!(
                "chaos: {}-{index} exited on its own ({}); restarting it",
                kind.name(),
                describe(status)
            );
            std::thread::sleep(Duration::from_millis(200));
            self.start(kind, index)?;
        }
        Ok(())
    }

    /// Sends SIGTERM to every process of `kind` and waits (up to `timeout`) for them to exit.
    /// Returns the processes that had to be killed.
    pub fn terminate_all(&mut self, kind: Kind, timeout: Duration) -> Vec<String> {
        let mut forced = Vec::new();
        for p in self.procs.iter_mut().filter(|p| p.kind == kind) {
            if let Some(pid) = p.pid() {
                if p.stopped {
                    signal(pid, libc::SIGCONT);
                    p.stopped = false;
                }
                signal(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + timeout;
        for p in self.procs.iter_mut().filter(|p| p.kind == kind) {
            let Some(mut c) = p.child.take() else {
                continue;
            };
            loop {
                match c.try_wait() {
                    Ok(Some(status)) => {
                        if !status.success() {
                            forced.push(format!(
                                "{}-{} exited {}",
                                kind.name(),
                                p.index,
                                describe(status)
                            ));
                        }
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        forced.push(format!(
                            "{}-{} killed after the timeout",
                            kind.name(),
                            p.index
                        ));
                        break;
                    }
                }
            }
        }
        forced
    }
}

/// How many processes have each of `pids` as parent (from /proc/*/stat).
pub fn children_of(pids: &[u32]) -> Vec<usize> {
    let mut counts = vec![0; pids.len()];
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return counts;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{name}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may contain spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|x| x.1) else {
            continue;
        };
        let ppid: u32 = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if let Some(k) = pids.iter().position(|&p| p == ppid && p != 0) {
            counts[k] += 1;
        }
    }
    counts
}

pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => status.to_string(),
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.kill_redis();
    }
}
