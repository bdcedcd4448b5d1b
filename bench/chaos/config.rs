//! The generated configuration: `base.yaml` (queues, tasks, the fixed schedules) and
//! `dynamic.yaml` (schedules that reloads add and remove). Every task appends one line
//! `task_id fire_id attempt worker_pid` to the execution log (a `/bin/sh` builtin `printf`,
//! so a task costs one fork+exec).

use std::fmt::Write as _;
use std::path::Path;

use rand::RngExt;
use rand::rngs::StdRng;

pub const QUEUES: [&str; 4] = ["default", "high", "reports", "bulk"];

/// One generated schedule.
#[derive(Debug, Clone)]
pub struct Sched {
    pub name: String,
    /// `every: 2s` or `cron: "*/2 * * * *"`, as YAML.
    pub timing: String,
    pub task: &'static str,
    pub queue: &'static str,
    pub priority: u8,
    /// A `misfire:` mapping, or empty for the default.
    pub misfire: &'static str,
}

impl Sched {
    fn yaml(&self, out: &mut String) {
        let _ = writeln!(out, "  {}:", self.name);
        let _ = writeln!(out, "    task: {}", self.task);
        let _ = writeln!(out, "    {}", self.timing);
        let _ = writeln!(out, "    queue: {}", self.queue);
        let _ = writeln!(out, "    priority: {}", self.priority);
        let _ = writeln!(out, "    expires: never");
        if !self.misfire.is_empty() {
            let _ = writeln!(out, "    misfire: {}", self.misfire);
        }
    }
}

const MISFIRE: [&str; 5] = [
    "",
    "",
    "{catch_up: all}",
    "{catch_up: none}",
    "{grace: 1m, catch_up: all, max: 100}",
];

/// The timing of base schedule `i` of `n`: a fixed mix of fast intervals and minute crons.
fn base_timing(i: usize, n: usize, rng: &mut StdRng) -> String {
    let f = i as f64 / n as f64;
    if i < 3 || f < 0.02 {
        "every: 1s".into()
    } else if f < 0.05 {
        "every: 2s".into()
    } else if f < 0.15 {
        "every: 5s".into()
    } else if f < 0.35 {
        let e = [7, 10, 15, 20, 30][rng.random_range(0..5)];
        format!("every: {e}s")
    } else if f < 0.60 {
        "cron: \"* * * * *\"".into()
    } else if f < 0.75 {
        "cron: \"*/2 * * * *\"".into()
    } else {
        let e = [3, 4, 6, 9, 45, 60, 90][rng.random_range(0..7)];
        format!("every: {e}s")
    }
}

pub fn base_schedules(n: usize, rng: &mut StdRng) -> Vec<Sched> {
    (0..n)
        .map(|i| {
            let timing = base_timing(i, n, rng);
            // A few slow tasks (1 s), so that killed workers are caught mid-task.
            let slow = timing.starts_with("every: ") && i % 10 == 7;
            Sched {
                name: format!("s{i:04}"),
                timing,
                task: if slow { "slow" } else { "append" },
                queue: QUEUES[rng.random_range(0..QUEUES.len())],
                priority: rng.random_range(0..10),
                misfire: MISFIRE[i % MISFIRE.len()],
            }
        })
        .collect()
}

/// A fresh dynamic schedule (names are never reused).
pub fn dynamic_schedule(serial: usize, rng: &mut StdRng) -> Sched {
    let timing = match rng.random_range(0..6) {
        0 => "every: 1s".to_string(),
        1 => "every: 2s".to_string(),
        2 => "cron: \"* * * * *\"".to_string(),
        _ => format!("every: {}s", [3, 5, 7, 10][rng.random_range(0..4)]),
    };
    Sched {
        name: format!("dyn{serial:05}"),
        timing,
        task: "append",
        queue: QUEUES[rng.random_range(0..QUEUES.len())],
        priority: rng.random_range(0..10),
        misfire: MISFIRE[serial % MISFIRE.len()],
    }
}

pub fn base_yaml(schedules: &[Sched], exec_log: &Path, result_expires_s: u64) -> String {
    let log = exec_log.display().to_string();
    assert!(
        !log.contains('\'') && !log.contains('"') && !log.contains('\\'),
        "the run directory must not contain quotes"
    );
    let line = format!(
        "printf '%s %s %s %s\\\\n' \\\"$CELERIAC_TASK_ID\\\" \\\"$CELERIAC_FIRE_ID\\\" \\\"$CELERIAC_ATTEMPT\\\" \\\"$PPID\\\" >> {log}"
    );
    let mut out = String::new();
    let _ = writeln!(out, "timezone: Asia/Shanghai");
    let _ = writeln!(out, "result_expires: {result_expires_s}s");
    let _ = writeln!(out, "queues:");
    for q in QUEUES {
        let _ = writeln!(out, "  {q}: {{}}");
    }
    let _ = writeln!(out, "tasks:");
    let _ = writeln!(out, "  append:");
    let _ = writeln!(out, "    command: [\"/bin/sh\", \"-c\", \"{line}\"]");
    let _ = writeln!(out, "    timeout: 60s");
    let _ = writeln!(out, "  slow:");
    let _ = writeln!(
        out,
        "    command: [\"/bin/sh\", \"-c\", \"sleep 1; {line}\"]"
    );
    let _ = writeln!(out, "    timeout: 60s");
    let _ = writeln!(out, "schedules:");
    for s in schedules {
        s.yaml(&mut out);
    }
    out
}

pub fn dynamic_yaml(schedules: &[Sched]) -> String {
    let mut out = String::from("schedules:\n");
    if schedules.is_empty() {
        out = String::from("schedules: {}\n");
    }
    for s in schedules {
        s.yaml(&mut out);
    }
    out
}

/// A dynamic file that does not validate (a cron minute out of range, an unknown key).
pub fn invalid_yaml(schedules: &[Sched], serial: usize) -> String {
    let mut out = dynamic_yaml(schedules);
    if schedules.is_empty() {
        out = String::from("schedules:\n");
    }
    let _ = writeln!(out, "  broken{serial:05}:");
    let _ = writeln!(out, "    task: append");
    let _ = writeln!(out, "    cron: \"61 * * * *\"");
    let _ = writeln!(out, "    qeueu: default");
    out
}

/// Writes `text` to `dir/name` atomically (temporary hidden file + rename).
pub fn write_atomic(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(name))
}
