//! Loading and validating a large configuration: 100,000 schedules (half cron, half
//! interval) over several tasks and queues, as one file and as a directory of files (the
//! way a big deployment would generate them). Target: well under 3 s.
//!
//! The returned `Config` is dropped outside the timed part: a running beat keeps it.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

const SCHEDULES: usize = 100_000;
const FILES: usize = 4;

const CRONS: &[&str] = &[
    "*/5 * * * *",
    "30 2 * * *",
    "0 9 * * MON-FRI",
    "15,45 */2 * * *",
    "0 0 1 * *",
    "@hourly",
];
const ZONES: &[&str] = &["Asia/Shanghai", "Europe/Berlin", "America/New_York", "UTC"];

/// The base file: settings, queues and tasks.
fn base() -> String {
    "timezone: Asia/Shanghai\n\
     broker: redis://127.0.0.1:6379/0\n\
     result_expires: 1h\n\
     queues:\n  default: {}\n  reports: {}\n  mail: {}\n  batch: {}\n\
     tasks:\n\
     \x20 cleanup:\n    command: [/usr/local/bin/cleanup, --days, '{{days}}']\n    timeout: 5m\n    retry: {max: 3, backoff: 10s}\n\
     \x20 report:\n    command: [/usr/local/bin/report, '--kind={{kind}}']\n\
     \x20 mail: {builtin: echo}\n\
     \x20 noop: {builtin: noop}\n\
     \x20 sleep: {builtin: sleep, timeout: 1m}\n"
        .to_string()
}

/// One file's worth of schedules.
fn schedules(first: usize, count: usize) -> String {
    let mut out = String::with_capacity(count * 200);
    out.push_str("schedules:\n");
    for i in first..first + count {
        let _ = writeln!(out, "  schedule-{i:06}:");
        match i % 5 {
            0 => {
                let _ = writeln!(out, "    task: cleanup\n    args: {{days: {}}}", i % 30);
            }
            1 => {
                let _ = writeln!(
                    out,
                    "    task: report\n    args: {{kind: daily}}\n    queue: reports"
                );
            }
            2 => {
                let _ = writeln!(
                    out,
                    "    task: mail\n    args: [a, {i}]\n    queue: mail\n    priority: 7"
                );
            }
            3 => {
                let _ = writeln!(out, "    task: noop\n    queue: batch\n    overlap: skip");
            }
            _ => {
                let _ = writeln!(
                    out,
                    "    task: sleep\n    misfire: {{grace: 10m, catch_up: latest}}"
                );
            }
        }
        if i % 2 == 0 {
            let _ = writeln!(out, "    cron: \"{}\"", CRONS[i / 2 % CRONS.len()]);
            if i % 7 == 0 {
                let _ = writeln!(out, "    timezone: {}", ZONES[i % ZONES.len()]);
            }
        } else {
            let _ = writeln!(out, "    every: {}s", 30 + i % 3600);
            if i % 3 == 0 {
                let _ = writeln!(out, "    anchor: 2024-01-01T00:00:00+08:00");
            }
        }
    }
    out
}

/// The whole configuration in one file.
fn write_single_file(dir: &Path) -> u64 {
    let text = base() + &schedules(0, SCHEDULES);
    std::fs::write(dir.join("celeriac.yaml"), &text).unwrap();
    text.len() as u64
}

/// A base file and the schedules split over several files.
fn write_directory(dir: &Path) -> u64 {
    std::fs::write(dir.join("00-base.yaml"), base()).unwrap();
    let per_file = SCHEDULES / FILES;
    for f in 0..FILES {
        let name = dir.join(format!("{:02}-schedules.yaml", f + 1));
        std::fs::write(name, schedules(f * per_file, per_file)).unwrap();
    }
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn bench(c: &mut Criterion) {
    let single = tempfile::tempdir().unwrap();
    let single_bytes = write_single_file(single.path());
    let single_file = single.path().join("celeriac.yaml");
    let dir = tempfile::tempdir().unwrap();
    let dir_bytes = write_directory(dir.path());

    for (path, bytes, files) in [
        (single_file.as_path(), single_bytes, 1),
        (dir.path(), dir_bytes, FILES + 1),
    ] {
        let config = celeriac::config::load(path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.schedules.len(), SCHEDULES);
        eprintln!(
            "config_load: {} in {files} file(s), {:.1} MiB",
            config.summary(),
            bytes as f64 / (1024.0 * 1024.0)
        );
    }

    let mut group = c.benchmark_group("config_load");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    // Baseline for the ratio: yaml-rust2's own loader on the same file, with no positions,
    // no model and no validation.
    let text = std::fs::read_to_string(&single_file).unwrap();
    group.bench_function("baseline_yaml_rust2_load_one_file", |b| {
        b.iter_with_large_drop(|| yaml_rust2::YamlLoader::load_from_str(&text).unwrap())
    });
    group.bench_function("100k_schedules_one_file", |b| {
        b.iter_with_large_drop(|| celeriac::config::load(&single_file).unwrap())
    });
    group.bench_function("100k_schedules_directory", |b| {
        b.iter_with_large_drop(|| celeriac::config::load(dir.path()).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
