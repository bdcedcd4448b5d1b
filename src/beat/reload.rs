//! Hot reload: watch the configuration path and SIGHUP; load and validate the new
//! configuration fully; hand the beat either a new config or the errors that rejected it.
//!
//! The watch is on the DIRECTORY (the configuration directory, or the directory holding the
//! configuration file), not on the file: editors save by writing a temporary file and
//! renaming it over the old one, and Kubernetes ConfigMaps swap a `..data` symlink; a watch
//! on the old file would miss both. Any event in the directory that may change a file
//! triggers a check of the files' content hash, so unrelated events and saves without
//! changes cost one read. Reads are not such events: the check's own reads of the files
//! would otherwise trigger the next check, re-reading the configuration every
//! [`DEBOUNCE`] forever.
//!
//! When the configuration path is itself a symlink (a deploy's `current -> releases/v42`,
//! swapped atomically), the directory holding the link is watched too, so the swap is seen,
//! and the watch follows the link to the new target after it.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode};
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

/// Whether a file event may have changed a file: reads (opening, reading, closing after
/// reading) do not; closing after writing does.
fn may_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
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
        if let Ok(events) = result
            && events.iter().any(|e| may_change(&e.kind))
        {
            // Coalesce: one pending check is enough.
            let _ = fs_tx.try_send(());
        }
    });
    // The directory holding a symlinked configuration path (its swap is an event there).
    let link_dir = std::fs::symlink_metadata(&path)
        .is_ok_and(|m| m.file_type().is_symlink())
        .then(|| {
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."))
        })
        .filter(|d| *d != watch_dir);
    let debouncer = match debouncer {
        Ok(mut d) => match d.watch(&watch_dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                if let Some(dir) = &link_dir
                    && let Err(e) = d.watch(dir, RecursiveMode::NonRecursive)
                {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the directory of the configuration symlink; reload a swapped link with SIGHUP");
                }
                Some(d)
            }
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
        let mut debouncer = debouncer;
        // Where the watched directory leads (it changes when a symlink on the way is swapped).
        let mut target = std::fs::canonicalize(&watch_dir).ok();
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
            // A swapped symlink: watch the directory it leads to now.
            let now_target = std::fs::canonicalize(&watch_dir).ok();
            if now_target != target
                && let Some(d) = debouncer.as_mut()
            {
                let _ = d.unwatch(&watch_dir);
                match d.watch(&watch_dir, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        tracing::info!(dir = %watch_dir.display(), "configuration symlink swapped; watching its new target");
                        target = now_target;
                    }
                    Err(e) => {
                        tracing::warn!(dir = %watch_dir.display(), error = %e, "cannot watch the configuration's new target; reload with SIGHUP")
                    }
                }
            }
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
