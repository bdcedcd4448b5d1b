//! Process signals, turned into values the rest of the program can wait on.
//!
//! This is the only module that touches signals. SIGTERM and SIGINT cancel the returned
//! [`CancellationToken`]; SIGHUP sends a [`ReloadRequest`] on a channel. A second SIGINT/SIGTERM
//! while shutting down is reported too, so a daemon can stop waiting for its grace period.
//! Daemons (`beat`, `worker`, `run`) only ever see the token and the channel.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A request to re-read the configuration (SIGHUP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadRequest;

/// What the signal listener hands to the daemons.
pub struct Signals {
    /// Cancelled on the first SIGTERM or SIGINT.
    pub shutdown: CancellationToken,
    /// Cancelled on the second SIGTERM or SIGINT: stop waiting for running work.
    pub force: CancellationToken,
    /// One message per SIGHUP.
    pub reload: mpsc::Receiver<ReloadRequest>,
}

/// Installs the signal handlers and spawns the task that listens to them.
/// Must be called from within a tokio runtime.
pub fn listen() -> std::io::Result<Signals> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let shutdown = CancellationToken::new();
    let force = CancellationToken::new();
    let (tx, rx) = mpsc::channel(4);
    let (s, f) = (shutdown.clone(), force.clone());
    tokio::spawn(async move {
        loop {
            let stop = tokio::select! {
                _ = term.recv() => true,
                _ = int.recv() => true,
                _ = hup.recv() => false,
            };
            if stop {
                if s.is_cancelled() {
                    f.cancel();
                    tracing::warn!("second stop signal: not waiting for running work");
                } else {
                    tracing::info!("stop signal received: shutting down");
                    s.cancel();
                }
            } else if tx.try_send(ReloadRequest).is_err() {
                tracing::debug!("reload already pending; SIGHUP coalesced");
            }
        }
    });
    Ok(Signals {
        shutdown,
        force,
        reload: rx,
    })
}
