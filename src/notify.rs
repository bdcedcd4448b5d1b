//! systemd readiness and watchdog notifications (sd_notify), without libsystemd.
//!
//! The binary reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` (and unsets them, so task commands do
//! not inherit them) and builds a [`Notifier`]; the daemons call it. With no socket every call
//! is a no-op. The watchdog is pinged by the loop that does the work ([`Notifier::watchdog_tick`]
//! from the beat's and the worker's loops), so a stuck loop stops the pings and systemd restarts
//! the service.

use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Path(PathBuf),
    /// Linux abstract socket (`@name` in NOTIFY_SOCKET).
    Abstract(Vec<u8>),
}

/// Sends sd_notify messages.
#[derive(Debug)]
pub struct Notifier {
    target: Option<Target>,
    /// Half of WATCHDOG_USEC: how often the watchdog is pinged.
    watchdog_every: Option<Duration>,
    last_ping: Mutex<Option<Instant>>,
    last_status: Mutex<String>,
}

impl Notifier {
    /// A notifier that sends nothing (not under systemd).
    pub fn disabled() -> Self {
        Notifier {
            target: None,
            watchdog_every: None,
            last_ping: Mutex::new(None),
            last_status: Mutex::new(String::new()),
        }
    }

    /// From the values of `NOTIFY_SOCKET` and `WATCHDOG_USEC` (already checked against
    /// `WATCHDOG_PID` by the caller).
    pub fn new(notify_socket: Option<OsString>, watchdog: Option<Duration>) -> Self {
        let target = notify_socket.filter(|s| !s.is_empty()).map(|s| {
            use std::os::unix::ffi::OsStrExt;
            let bytes = s.as_bytes();
            if let Some(name) = bytes.strip_prefix(b"@") {
                Target::Abstract(name.to_vec())
            } else {
                Target::Path(PathBuf::from(s))
            }
        });
        Notifier {
            watchdog_every: if target.is_some() {
                watchdog.map(|w| w / 2).filter(|w| !w.is_zero())
            } else {
                None
            },
            target,
            last_ping: Mutex::new(None),
            last_status: Mutex::new(String::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often loops must call [`Notifier::watchdog_tick`] at least (they cap their sleeps
    /// to this); `None` without a watchdog.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog_every
    }

    fn send(&self, message: &str) {
        let Some(target) = &self.target else {
            return;
        };
        let result = (|| -> std::io::Result<()> {
            let sock = UnixDatagram::unbound()?;
            match target {
                Target::Path(p) => sock.send_to(message.as_bytes(), p)?,
                Target::Abstract(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                    sock.send_to_addr(message.as_bytes(), &addr)?
                }
            };
            Ok(())
        })();
        if let Err(e) = result {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }

    /// READY=1 with a status line: configuration loaded and broker connected.
    pub fn ready(&self, status: &str) {
        *self.last_status.lock().expect("notifier poisoned") = status.to_string();
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// RELOADING=1 with MONOTONIC_USEC, before a reload is applied (follow with `ready`).
    pub fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// STOPPING=1 when shutdown begins.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    /// STATUS=..., only when it changed.
    pub fn status(&self, status: &str) {
        let mut last = self.last_status.lock().expect("notifier poisoned");
        if *last != status {
            *last = status.to_string();
            drop(last);
            self.send(&format!("STATUS={}", one_line(status)));
        }
    }

    /// WATCHDOG=1 if half the watchdog interval passed since the last ping. Call it from the
    /// loop that does the work, every iteration.
    pub fn watchdog_tick(&self) {
        let Some(every) = self.watchdog_every else {
            return;
        };
        let now = Instant::now();
        let mut last = self.last_ping.lock().expect("notifier poisoned");
        if last.is_none_or(|t| now.duration_since(t) >= every) {
            *last = Some(now);
            drop(last);
            self.send("WATCHDOG=1");
        }
    }
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

fn monotonic_usec() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes a timespec into the pointer we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000 + ts.tv_nsec as u128 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> (tempfile::TempDir, UnixDatagram, OsString) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        (dir, sock, path.into_os_string())
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn ready_reloading_status_stopping_reach_the_socket() {
        let (_dir, sock, path) = socket();
        let n = Notifier::new(Some(path), None);
        n.ready("3 schedules\nleader");
        assert_eq!(recv(&sock), "READY=1\nSTATUS=3 schedules leader");
        n.reloading();
        let msg = recv(&sock);
        assert!(msg.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{msg}");
        n.status("same");
        assert_eq!(recv(&sock), "STATUS=same");
        n.status("same");
        n.stopping();
        assert_eq!(
            recv(&sock),
            "STOPPING=1\nSTATUS=stopping",
            "unchanged status was resent"
        );
    }

    #[test]
    fn watchdog_pings_at_half_the_interval() {
        let (_dir, sock, path) = socket();
        let n = Notifier::new(Some(path), Some(Duration::from_millis(200)));
        assert_eq!(n.watchdog_every(), Some(Duration::from_millis(100)));
        n.watchdog_tick();
        assert_eq!(recv(&sock), "WATCHDOG=1");
        n.watchdog_tick(); // too soon: nothing sent
        std::thread::sleep(Duration::from_millis(120));
        n.watchdog_tick();
        assert_eq!(recv(&sock), "WATCHDOG=1");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut buf = [0u8; 64];
        assert!(
            sock.recv(&mut buf).is_err(),
            "a second ping was sent too soon"
        );
    }

    #[test]
    fn without_socket_everything_is_a_no_op() {
        let n = Notifier::new(None, Some(Duration::from_secs(10)));
        assert!(!n.enabled());
        assert_eq!(n.watchdog_every(), None);
        n.ready("x");
        n.watchdog_tick();
    }
}
