//! Prometheus metrics: names in one place, and the exporter on `--metrics-addr`.
//!
//! Recording uses the `metrics` facade (a no-op until [`install`] sets a recorder), so the beat
//! and the worker record unconditionally. The text exposition format is the exporter's.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Histogram: seconds from a tick's nominal instant to its publication (beat).
pub const FIRE_LATENESS: &str = "celeriac_beat_fire_lateness_seconds";
/// Counter per schedule: ticks fired.
pub const FIRES: &str = "celeriac_beat_fires_total";
/// Counter per schedule and reason (`overlap`, `paused`): ticks skipped.
pub const SKIPS: &str = "celeriac_beat_skips_total";
/// Counter per schedule: ticks dropped by the misfire policy.
pub const MISFIRES: &str = "celeriac_beat_misfires_total";
/// Gauge: 1 while this beat leads.
pub const LEADER: &str = "celeriac_beat_leader";
/// Gauge: the fencing epoch of this beat's lease (0 when standby).
pub const EPOCH: &str = "celeriac_beat_epoch";
/// Gauge: schedules running.
pub const SCHEDULES: &str = "celeriac_beat_schedules";
/// Counter by `result` (`applied`, `rejected`): configuration reloads.
pub const RELOADS: &str = "celeriac_reloads_total";
/// Gauge by `queue` and `state` (`ready`, `delayed`, `active`, `dead`): messages.
pub const QUEUE_DEPTH: &str = "celeriac_queue_depth";
/// Histogram by `task`: run time in seconds.
pub const TASK_DURATION: &str = "celeriac_task_duration_seconds";
/// Counter by `task` and `outcome` (`succeeded`, `failed`, `retrying`, `expired`, `rejected`,
/// `cancelled`): finished deliveries.
pub const TASKS: &str = "celeriac_tasks_total";
/// Counter by `task`: retries scheduled.
pub const RETRIES: &str = "celeriac_task_retries_total";
/// Counter by `queue`: messages dead-lettered.
pub const DEAD_LETTERS: &str = "celeriac_dead_letters_total";
/// Gauge: tasks running in this worker.
pub const RUNNING: &str = "celeriac_worker_running";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether an exporter is installed: hot paths skip building per-schedule labels otherwise.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Starts the exporter: `GET http://ADDR/metrics` (any path) serves the text format.
/// Must be called from within a tokio runtime.
pub fn install(addr: SocketAddr) -> Result<(), String> {
    let lateness = [
        0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ];
    let durations = [
        0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
        3600.0,
    ];
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Full(FIRE_LATENESS.to_string()), &lateness)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(TASK_DURATION.to_string()), &durations)
        })
        .map_err(|e| e.to_string())?
        .install()
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    ENABLED.store(true, Ordering::Relaxed);
    Ok(())
}
