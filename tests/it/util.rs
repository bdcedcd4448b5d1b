//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use celeriac::beat::store::{BeatStore, Claim, Fire, FireOutcome, JournalEntry, LeaderToken};
use celeriac::broker::BrokerError;
use chrono::{DateTime, Utc};

/// The `celeriac` binary built for this test run.
pub fn celeriac() -> Command {
    Command::new(env!("CARGO_BIN_EXE_celeriac"))
}

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A long-running child process (a `celeriac worker`, ...) whose stderr and stdout go to a
/// log file, so it never blocks on a full pipe and its log can be read at any time.
/// SIGKILLed and reaped on drop.
pub struct Daemon {
    child: std::process::Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts `cmd` with both output streams appended to `log`.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Daemon {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open daemon log");
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().expect("clone log file"))
            .stderr(file)
            .spawn()
            .expect("start daemon");
        Daemon { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid; it has not been reaped while we hold it.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its exit status, if it has exited.
    pub fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("poll daemon")
    }

    /// SIGTERM, then waits (blocking) up to `timeout` for it to exit; panics (with its log)
    /// if it does not.
    pub fn stop(&mut self, timeout: std::time::Duration) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "process did not stop within {timeout:?} of SIGTERM; its log:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for it to exit; panics (with its log) if it does not.
    pub async fn wait_exit(&mut self, timeout: std::time::Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return status;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "process did not exit within {timeout:?}; its log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Waits up to `timeout` until its log contains `needle`; panics (with the log) if not.
    pub async fn wait_for_log(&mut self, needle: &str, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return;
            }
            if let Some(status) = self.try_status() {
                panic!(
                    "process exited ({status}) before logging {needle:?}; its log:\n{}",
                    self.log()
                );
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "no {needle:?} in the log within {timeout:?}; the log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `probe` every 20 ms until it returns `Some`, for up to `timeout`; panics with
/// `what` otherwise.
pub async fn eventually<T, F, Fut>(what: &str, timeout: std::time::Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if std::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// True when the tests run as root (the worker then needs `--allow-root`).
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// What a test's beat store wrapper changes: `claim` and `fire` go through these (by default
/// straight to the inner store); wrap it in [`Hooked`] for a store whose every other call
/// goes straight to the inner store.
#[async_trait::async_trait]
pub trait StoreHooks: Send + Sync + 'static {
    fn inner(&self) -> &dyn BeatStore;

    async fn claim(&self, token: &str, ttl: Duration) -> Result<Claim, BrokerError> {
        self.inner().claim(token, ttl).await
    }

    async fn fire(
        &self,
        leader: &LeaderToken,
        fires: &[Fire],
    ) -> Result<Vec<FireOutcome>, BrokerError> {
        self.inner().fire(leader, fires).await
    }
}

/// A beat store made of [`StoreHooks`] (dereferences to them, for the test's own fields).
pub struct Hooked<H>(pub H);

impl<H> std::ops::Deref for Hooked<H> {
    type Target = H;
    fn deref(&self) -> &H {
        &self.0
    }
}

#[async_trait::async_trait]
impl<H: StoreHooks> BeatStore for Hooked<H> {
    async fn claim(&self, token: &str, ttl: Duration) -> Result<Claim, BrokerError> {
        StoreHooks::claim(&self.0, token, ttl).await
    }
    async fn resign(&self, token: &str) -> Result<(), BrokerError> {
        self.0.inner().resign(token).await
    }
    async fn fire(
        &self,
        leader: &LeaderToken,
        fires: &[Fire],
    ) -> Result<Vec<FireOutcome>, BrokerError> {
        StoreHooks::fire(&self.0, leader, fires).await
    }
    async fn last_fired(
        &self,
        schedules: &[String],
    ) -> Result<Vec<Option<DateTime<Utc>>>, BrokerError> {
        self.0.inner().last_fired(schedules).await
    }
    async fn arm(&self, schedules: &[String], at: DateTime<Utc>) -> Result<(), BrokerError> {
        self.0.inner().arm(schedules, at).await
    }
    async fn armed(&self, schedules: &[String]) -> Result<Vec<Option<DateTime<Utc>>>, BrokerError> {
        self.0.inner().armed(schedules).await
    }
    async fn disarm(&self, schedules: &[String]) -> Result<(), BrokerError> {
        self.0.inner().disarm(schedules).await
    }
    async fn journal(&self, entries: &[JournalEntry]) -> Result<(), BrokerError> {
        self.0.inner().journal(entries).await
    }
    async fn read_journal(
        &self,
        schedule: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, BrokerError> {
        self.0.inner().read_journal(schedule, limit).await
    }
}
