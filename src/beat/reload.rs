//! Hot reload: watch the configuration path and SIGHUP; load and validate the new
//! configuration fully; hand the beat either a new config or the errors that rejected it.
//!
//! The watch is on the DIRECTORY (the configuration directory, or the directory holding the
//! configuration file), not on the file: editors save by writing a temporary file and
//! renaming it over the old one, and Kubernetes ConfigMaps swap a `..data` symlink; a watch
//! on the old file would miss both. Any event in the directory triggers a check of the
//! files' content hash, so unrelated events and saves without changes cost one read.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, new_debouncer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, ConfigErrors};
use crate::shutdown::ReloadRequest;

/// How long the watcher waits for a burst of file events to settle.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// What a reload attempt produced.
#[derive(Debug)]
pub enum ReloadEvent {
    /// A valid configuration that differs from the running one.
    Changed(Arc<Config>),
    /// The new files do not validate: the old configuration keeps running.
    Rejected(ConfigErrors),
}

/// A hash of the configuration's bytes: every config file of a directory (in the order the
/// loader reads them) or the file itself. `None` when nothing can be read.
pub fn content_hash(path: &Path) -> Option<u64> {
    let mut h = DefaultHasher::new();
    if path.is_dir() {
        let mut names: Vec<PathBuf> = std::fs::read_dir(path)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(config::is_config_file_name)
            })
            .collect();
        names.sort();
        for p in names {
            p.file_name().hash(&mut h);
            std::fs::read(&p).ok()?.hash(&mut h);
        }
    } else {
        std::fs::read(path).ok()?.hash(&mut h);
    }
    Some(h.finish())
}

/// Watches `path` and listens to `sighup`; sends a [`ReloadEvent`] for every change of
/// content (file events) and for every SIGHUP (even without change). Runs until `shutdown`.
pub fn spawn(
    path: PathBuf,
    mut sighup: mpsc::Receiver<ReloadRequest>,
    shutdown: CancellationToken,
) -> mpsc::Receiver<ReloadEvent> {
    let (tx, rx) = mpsc::channel(4);
    let (fs_tx, mut fs_rx) = mpsc::channel::<()>(1);
    let watch_dir = if path.is_dir() {
        path.clone()
    } else {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    };
    let debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| {
        if result.is_ok() {
            // Coalesce: one pending check is enough.
            let _ = fs_tx.try_send(());
        }
    });
    let debouncer = match debouncer {
        Ok(mut d) => match d.watch(&watch_dir, RecursiveMode::NonRecursive) {
            Ok(()) => Some(d),
            Err(e) => {
                tracing::warn!(dir = %watch_dir.display(), error = %e, "cannot watch the configuration; reload with SIGHUP");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "file watching unavailable; reload with SIGHUP");
            None
        }
    };
    tokio::spawn(async move {
        // Keep the watcher alive as long as this task runs.
        let _debouncer = debouncer;
        let mut last = content_hash(&path);
        loop {
            let forced = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = sighup.recv() => match r {
                    Some(_) => true,
                    None => { sighup = mpsc::channel(1).1; continue; }
                },
                r = fs_rx.recv() => match r {
                    Some(()) => false,
                    None => return,
                },
            };
            let hash = content_hash(&path);
            if !forced && hash == last {
                continue;
            }
            tracing::info!(path = %path.display(), trigger = if forced { "SIGHUP" } else { "file change" }, "reloading configuration");
            let p = path.clone();
            let loaded = tokio::task::spawn_blocking(move || config::load(&p))
                .await
                .expect("config loading does not panic");
            match loaded {
                Ok(cfg) => {
                    last = hash;
                    if tx.send(ReloadEvent::Changed(Arc::new(cfg))).await.is_err() {
                        return;
                    }
                }
                Err(errors) => {
                    // Remember the hash: the same broken content is reported once.
                    last = hash;
                    for e in errors.iter() {
                        tracing::error!("{e}");
                    }
                    tracing::error!(
                        errors = errors.len(),
                        "reload rejected; the previous configuration keeps running"
                    );
                    if tx.send(ReloadEvent::Rejected(errors)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Passes reload events on unchanged and, beside them, keeps a watch of the configuration in
/// force (`initial`, then every applied reload): for the parts of a daemon other than the
/// beat that follow the configuration (the Celery forwarder).
pub fn observe(
    mut events: mpsc::Receiver<ReloadEvent>,
    initial: Arc<Config>,
) -> (
    mpsc::Receiver<ReloadEvent>,
    tokio::sync::watch::Receiver<Arc<Config>>,
) {
    let (tx, rx) = mpsc::channel(4);
    let (config_tx, config_rx) = tokio::sync::watch::channel(initial);
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let ReloadEvent::Changed(cfg) = &event {
                config_tx.send_replace(cfg.clone());
            }
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    (rx, config_rx)
}
