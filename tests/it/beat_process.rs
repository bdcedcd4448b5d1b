//! Real `celeriac beat` processes on a private redis-server: several beats racing, the
//! leader SIGKILLed or SIGSTOPped past its lease, Redis killed and restarted, and hot
//! reloads (editor-style atomic save, Kubernetes ConfigMap symlink swap, SIGHUP, an invalid
//! file).
//!
//! What is checked is deterministic: every tick of a schedule fired at most once (by
//! fire_id, in the journal and in the queue), no gap where the misfire policy says the missed
//! ticks are caught up, and which beat leads. Time bounds are generous; exact timings are
//! never asserted.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use celeriac::beat::redis_store::RedisBeatStore;
use celeriac::beat::store::{BeatStore, JournalEntry};
use celeriac::broker::{RedisBroker, TaskMessage};
use chrono::{DateTime, Utc};

use crate::redis_server::{RedisOptions, RedisServer, free_port};
use crate::util::{Daemon, celeriac, eventually};

/// Lease ttl of the beats here: short, so failovers are quick.
const TTL: Duration = Duration::from_secs(2);
const TTL_ARG: &str = "2s";
/// Generous bound for things that take well under a second on an idle machine.
const SOON: Duration = Duration::from_secs(20);

/// Queue `default`; tasks `noop`, `record` (appends the tick's fire_id to `DIR/fires.txt`)
/// and `slow` (the same, then sleeps 2.5 s).
fn header(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "queues:\n  default: {{}}\ntasks:\n  noop: {{builtin: noop}}\n  \
         record: {{command: [sh, -c, 'echo \"$CELERIAC_FIRE_ID\" >> {d}/fires.txt']}}\n  \
         slow: {{command: [sh, -c, 'echo \"$CELERIAC_FIRE_ID\" >> {d}/fires.txt; sleep 2.5']}}\n\
         schedules:\n"
    )
}

/// A private redis-server, a configuration directory, and a library view of the beat
/// store for inspection.
struct Cluster {
    server: RedisServer,
    dir: tempfile::TempDir,
    conf: PathBuf,
    store: Arc<RedisBeatStore>,
    broker: Arc<RedisBroker>,
    logs: AtomicUsize,
    /// Processes connect over TCP (the server was started with a port).
    tcp: bool,
}

impl Cluster {
    /// `schedules` is the `schedules:` block (entries indented by two spaces), written to
    /// `conf/beat.yaml`.
    async fn new(schedules: &str, options: RedisOptions) -> Cluster {
        let tcp = options.tcp_port.is_some();
        let server = RedisServer::start_with(options);
        let dir = tempfile::Builder::new()
            .prefix("celeriac-beat-")
            .tempdir()
            .expect("temp dir");
        let conf = dir.path().join("conf");
        std::fs::create_dir(&conf).unwrap();
        std::fs::write(
            conf.join("beat.yaml"),
            format!("{}{schedules}", header(dir.path())),
        )
        .unwrap();
        let broker = crate::beat_core::connect(&server).await;
        let store = Arc::new(RedisBeatStore::new(broker.clone(), "test"));
        Cluster {
            server,
            dir,
            conf,
            store,
            broker,
            logs: AtomicUsize::new(0),
            tcp,
        }
    }

    /// The URL the processes use: TCP when the server listens on a port, else its socket.
    fn beat_broker_url(&self) -> String {
        if self.tcp {
            self.server.tcp_url()
        } else {
            self.server.url()
        }
    }

    /// The configuration's lines before the schedules.
    fn header(&self) -> String {
        header(self.dir.path())
    }

    /// Starts `celeriac worker -c CONF`, logging to a file of its own.
    fn worker(&self) -> Daemon {
        let n = self.logs.fetch_add(1, Ordering::Relaxed);
        let mut cmd = self.command("worker", &self.conf);
        cmd.arg("--allow-root");
        Daemon::spawn(cmd, self.dir.path().join(format!("worker-{n}.log")))
    }

    /// `celeriac SUBCOMMAND -c CONF --broker URL`, with no CELERIAC_* variables inherited.
    fn command(&self, subcommand: &str, conf: &Path) -> std::process::Command {
        let mut cmd = celeriac();
        cmd.arg(subcommand)
            .arg("-c")
            .arg(conf)
            .arg("--broker")
            .arg(self.beat_broker_url());
        for var in [
            "CELERIAC_BROKER",
            "CELERIAC_CONFIG",
            "CELERIAC_LOG_FORMAT",
            "CELERIAC_KEY_PREFIX",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("CELERIAC_LOG", "info");
        cmd
    }

    /// Starts `celeriac beat -c CONF`, logging to a file of its own.
    fn beat(&self) -> Daemon {
        self.beat_on(&self.conf)
    }

    fn beat_on(&self, conf: &Path) -> Daemon {
        self.beat_with(conf, TTL_ARG)
    }

    fn beat_with(&self, conf: &Path, lease_ttl: &str) -> Daemon {
        let n = self.logs.fetch_add(1, Ordering::Relaxed);
        let mut cmd = self.command("beat", conf);
        cmd.arg("--allow-root").arg("--lease-ttl").arg(lease_ttl);
        Daemon::spawn(cmd, self.dir.path().join(format!("beat-{n}.log")))
    }

    async fn journal(&self) -> Vec<JournalEntry> {
        // Retried: the first request after a Redis restart meets the broken connection.
        let mut j = eventually("the journal to be readable", SOON, || async {
            self.store.read_journal(None, 9_000).await.ok()
        })
        .await;
        j.reverse();
        j
    }

    /// Fired or caught-up entries of a schedule, oldest first.
    async fn fires(&self, schedule: &str) -> Vec<JournalEntry> {
        self.journal()
            .await
            .into_iter()
            .filter(|e| {
                e.schedule.as_deref() == Some(schedule)
                    && (e.event == "fired" || e.event == "caught_up")
            })
            .collect()
    }

    /// The nominal instants fired for a schedule, sorted; panics if one fired twice.
    async fn fired_once(&self, schedule: &str) -> Vec<DateTime<Utc>> {
        let fires = self.fires(schedule).await;
        let mut seen = BTreeSet::new();
        for e in &fires {
            let t = e.nominal.expect("fire entries carry the nominal instant");
            assert!(
                seen.insert(t),
                "{schedule}@{t} fired twice: {:#?}",
                fires
                    .iter()
                    .filter(|x| x.nominal == Some(t))
                    .collect::<Vec<_>>()
            );
        }
        seen.into_iter().collect()
    }

    /// Waits until a schedule has fired at least `n` ticks in all.
    async fn wait_fires(&self, schedule: &str, n: usize, timeout: Duration) {
        eventually(&format!("{n} fires of {schedule}"), timeout, || async {
            (self.fires(schedule).await.len() >= n).then_some(())
        })
        .await;
    }

    /// The pid of the leading beat (from the lease value `host/pid/random:epoch`).
    async fn leader_pid(&self) -> Option<u32> {
        let (value, _) = self.store.leader().await.ok()??;
        value.split('/').nth(1)?.parse().ok()
    }

    /// Every message in the queue, decoded.
    async fn queued(&self) -> Vec<TaskMessage> {
        let key = format!("{}{{q:default}}:msg", self.broker.prefix());
        let v = eventually("the queue to be readable", SOON, || async {
            self.broker
                .command(redis::cmd("HVALS").arg(&key))
                .await
                .ok()
        })
        .await;
        let redis::Value::Array(items) = v else {
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|x| match x {
                redis::Value::BulkString(b) => TaskMessage::from_json(b).ok(),
                _ => None,
            })
            .collect()
    }

    /// Journal fires and queued messages agree one to one (by fire_id).
    async fn assert_queue_matches_journal(&self) {
        let msgs = self.queued().await;
        let ids: Vec<String> = msgs.iter().filter_map(|m| m.fire_id.clone()).collect();
        let unique: BTreeSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "a fire_id was enqueued twice");
        let journal: BTreeSet<String> = self
            .journal()
            .await
            .into_iter()
            .filter(|e| e.event == "fired" || e.event == "caught_up")
            .filter_map(|e| e.fire_id)
            .collect();
        assert_eq!(
            unique.into_iter().cloned().collect::<BTreeSet<String>>(),
            journal,
            "queue and journal disagree"
        );
    }
}

/// Consecutive ticks of a 1 s interval: no gap between the first and the last.
fn assert_contiguous(schedule: &str, ticks: &[DateTime<Utc>]) {
    for w in ticks.windows(2) {
        assert_eq!(
            w[1] - w[0],
            chrono::Duration::seconds(1),
            "{schedule}: a gap between {} and {} (all ticks: {ticks:?})",
            w[0],
            w[1]
        );
    }
}

fn pid_index(beats: &[Daemon], pid: u32) -> usize {
    beats
        .iter()
        .position(|b| b.pid() == pid)
        .unwrap_or_else(|| panic!("the leader pid {pid} is none of our beats"))
}

async fn leader_index(c: &Cluster, beats: &[Daemon]) -> usize {
    let pid = eventually("a leader", SOON, || c.leader_pid()).await;
    pid_index(beats, pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beat_process_three_beats_race_and_every_tick_fires_exactly_once() {
    let c = Cluster::new(
        "  tick: {task: record, every: 1s, misfire: {grace: 60s, catch_up: all, max: 100}}\n",
        RedisOptions::default(),
    )
    .await;
    let _worker = c.worker();
    // The default lease: no failover is expected here, even on a loaded machine.
    let beats: Vec<Daemon> = (0..3).map(|_| c.beat_with(&c.conf, "10s")).collect();
    c.wait_fires("tick", 8, Duration::from_secs(30)).await;
    let ticks = c.fired_once("tick").await;
    assert_contiguous("tick", &ticks);
    // One beat acquired the lease; the others stood by.
    let acquired: Vec<String> = c
        .journal()
        .await
        .into_iter()
        .filter(|e| e.event == "leader_acquired")
        .map(|e| e.beat)
        .collect();
    assert_eq!(acquired.len(), 1, "{acquired:?}");
    let leader = leader_index(&c, &beats).await;
    let fired_by: BTreeSet<String> = c.fires("tick").await.into_iter().map(|e| e.beat).collect();
    assert_eq!(fired_by.len(), 1, "fired by several beats: {fired_by:?}");
    for (i, b) in beats.iter().enumerate() {
        assert_eq!(
            b.log().contains("became leader"),
            i == leader,
            "beat {i}: {}",
            b.log()
        );
    }
    // The worker ran each fired tick once: the fire_ids its task wrote match the journal.
    let journal: BTreeSet<String> = c
        .fires("tick")
        .await
        .into_iter()
        .filter_map(|e| e.fire_id)
        .collect();
    let file = c.dir.path().join("fires.txt");
    let ran: Vec<String> = eventually("the worker to run every fired tick", SOON, || async {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        let seen: BTreeSet<&String> = lines.iter().collect();
        journal.iter().all(|id| seen.contains(id)).then_some(lines)
    })
    .await;
    let unique: BTreeSet<&String> = ran.iter().collect();
    assert_eq!(unique.len(), ran.len(), "a tick ran twice: {ran:?}");
    // `celeriac why` shows the same decisions.
    let out = c
        .command("why", &c.conf)
        .args(["tick", "--json"])
        .output()
        .expect("run celeriac why");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let why: serde_json::Value = serde_json::from_slice(&out.stdout).expect("why --json");
    let shown: Vec<&str> = why["journal"]
        .as_array()
        .expect("journal")
        .iter()
        .filter(|e| e["event"] == "fired" || e["event"] == "caught_up")
        .filter_map(|e| e["fire_id"].as_str())
        .collect();
    assert!(!shown.is_empty(), "{why}");
    assert!(shown.iter().all(|id| journal.contains(*id)), "{why}");
}

/// Three schedules with different catch-up policies, for the failover tests.
const POLICIES: &str = "  all: {task: noop, every: 1s, misfire: {grace: 60s, catch_up: all, max: 100}}\n\
    \x20 latest: {task: noop, every: 1s, misfire: {grace: 60s, catch_up: latest}}\n\
    \x20 none: {task: noop, every: 1s, misfire: {grace: 60s, catch_up: none}}\n";

/// After a failover: `all` has no gap, `latest` caught up at most one tick per takeover,
/// `none` caught up nothing; nothing fired twice.
async fn assert_policies_after_failover(c: &Cluster, takeovers: usize) {
    let all = c.fired_once("all").await;
    assert_contiguous("all", &all);
    c.fired_once("latest").await;
    c.fired_once("none").await;
    let caught = |name: &'static str| async move {
        c.fires(name)
            .await
            .into_iter()
            .filter(|e| e.event == "caught_up")
            .count()
    };
    assert!(caught("latest").await <= takeovers);
    assert_eq!(caught("none").await, 0);
    c.assert_queue_matches_journal().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beat_process_sigkill_leader_standby_takes_over_within_the_lease() {
    let c = Cluster::new(POLICIES, RedisOptions::default()).await;
    let mut beats = vec![c.beat(), c.beat()];
    c.wait_fires("all", 3, Duration::from_secs(30)).await;
    let old = leader_index(&c, &beats).await;
    let new = 1 - old;
    let before = c.fires("all").await.len();
    let killed = Instant::now();
    beats[old].kill();
    let new_pid = beats[new].pid();
    eventually("the standby to take the lease", SOON, || async {
        (c.leader_pid().await == Some(new_pid)).then_some(())
    })
    .await;
    let took = killed.elapsed();
    assert!(
        took < TTL + Duration::from_secs(3),
        "takeover took {took:?} with a {TTL:?} lease"
    );
    c.wait_fires("all", before + 4, SOON).await;
    assert_policies_after_failover(&c, 1).await;
    // The ticks missed during the failover were decided by policy and journaled.
    let j = c.journal().await;
    assert!(
        j.iter()
            .any(|e| e.event == "misfired" && e.schedule.as_deref() == Some("none")),
        "no misfire journaled for `none`"
    );
    assert!(beats[new].log().contains("became leader"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beat_process_sigstopped_leader_does_not_fire_stale_ticks_after_sigcont() {
    let c = Cluster::new(POLICIES, RedisOptions::default()).await;
    let mut beats = vec![c.beat(), c.beat()];
    c.wait_fires("all", 3, Duration::from_secs(30)).await;
    let old = leader_index(&c, &beats).await;
    let new = 1 - old;
    beats[old].signal(libc::SIGSTOP);
    let new_pid = beats[new].pid();
    eventually("the standby to take the lease", SOON, || async {
        (c.leader_pid().await == Some(new_pid)).then_some(())
    })
    .await;
    // Stopped well past its lease, with ticks due all along.
    tokio::time::sleep(TTL).await;
    let before = c.fires("all").await.len();
    beats[old].signal(libc::SIGCONT);
    beats[old].wait_for_log("lost leadership", SOON).await;
    c.wait_fires("all", before + 3, SOON).await;
    assert_eq!(c.leader_pid().await, Some(new_pid));
    assert_policies_after_failover(&c, 1).await;
    // Nothing fired by the old leader after the new one took over.
    let old_id = c
        .fires("all")
        .await
        .first()
        .map(|e| e.beat.clone())
        .unwrap();
    let j = c.journal().await;
    let took_over = j
        .iter()
        .position(|e| e.event == "leader_acquired" && !e.beat.is_empty() && e.beat != old_id)
        .expect("the standby's leader_acquired");
    let stale: Vec<&JournalEntry> = j[took_over..]
        .iter()
        .filter(|e| (e.event == "fired" || e.event == "caught_up") && e.beat == old_id)
        .collect();
    assert!(
        stale.is_empty(),
        "the old leader fired after the takeover: {stale:#?}"
    );
    assert!(beats[old].try_status().is_none(), "the old leader exited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beat_process_redis_restart_beats_reconnect_log_once_and_continue() {
    let mut c = Cluster::new(
        POLICIES,
        RedisOptions {
            appendonly: true,
            // The beats connect over TCP to this port; it comes back on the same port.
            tcp_port: Some(free_port()),
            // Redis writes the AOF before it replies in every mode, so a killed process loses
            // nothing acknowledged; `always` also rules out a postponed write behind a slow
            // background fsync.
            extra: vec!["--appendfsync".into(), "always".into()],
            ..Default::default()
        },
    )
    .await;
    let mut beats = [c.beat(), c.beat()];
    c.wait_fires("all", 3, Duration::from_secs(30)).await;
    let before = c.fires("all").await.len();
    c.server.kill();
    // Down for longer than the lease.
    tokio::time::sleep(TTL + Duration::from_secs(1)).await;
    c.server.start_again();
    c.wait_fires("all", before + 4, SOON).await;
    assert_policies_after_failover(&c, 2).await;
    // Each beat logs the loss once and the recovery once (a standby reconnects on its next
    // claim, after the link's reconnect backoff of up to 5 s).
    for (i, b) in beats.iter_mut().enumerate() {
        b.wait_for_log("broker reachable again", SOON).await;
        let log = b.log();
        assert_eq!(
            log.matches("broker unreachable").count(),
            1,
            "beat {i} did not log the loss exactly once:\n{log}"
        );
        assert_eq!(
            log.matches("broker reachable again").count(),
            1,
            "beat {i}:\n{log}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Hot reload
// ---------------------------------------------------------------------------------------

/// Writes `content` to `dir/name` the way editors save: a temp file, then a rename over it.
fn atomic_save(dir: &Path, name: &str, content: &str) {
    let tmp = dir.join(format!(".{name}.swp"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

async fn reloads_applied(c: &Cluster) -> Vec<String> {
    c.journal()
        .await
        .into_iter()
        .filter(|e| e.event == "reload_applied")
        .map(|e| e.detail)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beat_process_hot_reload_atomic_save_invalid_file_and_sighup() {
    let c = Cluster::new("  a: {task: noop, every: 1s}\n", RedisOptions::default()).await;
    let mut beat = c.beat();
    c.wait_fires("a", 2, Duration::from_secs(30)).await;

    // Editor-style save adding `b`.
    atomic_save(
        &c.conf,
        "beat.yaml",
        &format!(
            "{}  a: {{task: noop, every: 1s}}\n  b: {{task: noop, every: 1s}}\n",
            c.header()
        ),
    );
    eventually("the reload adding b", SOON, || async {
        reloads_applied(&c)
            .await
            .contains(&"added [b], changed [], removed []".to_string())
            .then_some(())
    })
    .await;
    c.wait_fires("b", 2, SOON).await;

    // An invalid save: rejected with file:line:col, a and b keep firing.
    atomic_save(
        &c.conf,
        "beat.yaml",
        &format!(
            "{}  a: {{task: noop, every: 1s}}\n  b: {{tsak: noop, every: 1s}}\n",
            c.header()
        ),
    );
    beat.wait_for_log("reload rejected", SOON).await;
    let log = beat.log();
    let file = c.conf.join("beat.yaml").display().to_string();
    let located = log
        .lines()
        .any(|l| l.contains(&format!("{file}:9:")) && l.contains("tsak"));
    assert!(located, "no `{file}:9:COL` error about `tsak` in:\n{log}");
    let (a0, b0) = (c.fires("a").await.len(), c.fires("b").await.len());
    c.wait_fires("a", a0 + 2, SOON).await;
    c.wait_fires("b", b0 + 2, SOON).await;
    assert!(
        c.journal()
            .await
            .iter()
            .any(|e| e.event == "reload_rejected" && e.detail.contains("tsak")),
        "rejection not journaled"
    );

    // Fixed again, removing b: applied.
    atomic_save(
        &c.conf,
        "beat.yaml",
        &format!("{}  a: {{task: noop, every: 1s}}\n", c.header()),
    );
    eventually("the reload removing b", SOON, || async {
        reloads_applied(&c)
            .await
            .contains(&"added [], changed [], removed [b]".to_string())
            .then_some(())
    })
    .await;

    // SIGHUP reloads even without a change.
    let n = reloads_applied(&c).await.len();
    beat.signal(libc::SIGHUP);
    eventually("the SIGHUP reload", SOON, || async {
        (reloads_applied(&c).await.len() > n).then_some(())
    })
    .await;
    assert!(beat.log().contains("SIGHUP"), "{}", beat.log());
    c.fired_once("a").await;
    let b = c.fired_once("b").await;
    let last_b = *b.last().unwrap();
    let a0 = c.fires("a").await.len();
    c.wait_fires("a", a0 + 2, SOON).await;
    assert_eq!(
        c.fired_once("b").await.last(),
        Some(&last_b),
        "b fired after removal"
    );
    assert!(
        beat.try_status().is_none(),
        "the beat exited:\n{}",
        beat.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beat_process_hot_reload_kubernetes_configmap_symlink_swap() {
    let c = Cluster::new(
        "  unused: {task: noop, every: 1h}\n",
        RedisOptions::default(),
    )
    .await;
    // A ConfigMap volume: beat.yaml -> ..data/beat.yaml, ..data -> ..TIMESTAMP/.
    let cm = c.dir.path().join("configmap");
    let v1 = cm.join("..2025_01_01_00_00_00.000000001");
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::write(
        v1.join("beat.yaml"),
        format!("{}  a: {{task: noop, every: 1s}}\n", c.header()),
    )
    .unwrap();
    std::os::unix::fs::symlink(v1.file_name().unwrap(), cm.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/beat.yaml", cm.join("beat.yaml")).unwrap();
    let beat = c.beat_on(&cm);
    c.wait_fires("a", 2, Duration::from_secs(30)).await;

    // The kubelet's update: a new timestamped dir, a temp symlink, renamed over ..data.
    let v2 = cm.join("..2025_01_01_00_01_00.000000002");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::write(
        v2.join("beat.yaml"),
        format!(
            "{}  a: {{task: noop, every: 1s}}\n  c: {{task: noop, every: 1s}}\n",
            c.header()
        ),
    )
    .unwrap();
    std::os::unix::fs::symlink(v2.file_name().unwrap(), cm.join("..data_tmp")).unwrap();
    std::fs::rename(cm.join("..data_tmp"), cm.join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();
    eventually("the reload adding c", SOON, || async {
        reloads_applied(&c)
            .await
            .contains(&"added [c], changed [], removed []".to_string())
            .then_some(())
    })
    .await;
    c.wait_fires("c", 2, SOON).await;
    c.fired_once("a").await;
    assert!(beat.log().contains("file change"), "{}", beat.log());
}

/// Redis itself stalls (DEBUG SLEEP) for longer than the lease: every beat is cut off at
/// once, the lease expires in Redis, and whichever beat claims first afterwards leads. No
/// tick fires twice and, with `catch_up: all`, none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beat_process_redis_stalled_past_the_lease_no_tick_doubled() {
    let c = Cluster::new(
        POLICIES,
        RedisOptions {
            extra: vec!["--enable-debug-command".into(), "yes".into()],
            ..Default::default()
        },
    )
    .await;
    let _beats = [c.beat(), c.beat()];
    c.wait_fires("all", 3, Duration::from_secs(30)).await;
    let before = c.fires("all").await.len();
    let mut conn = c.server.connection();
    tokio::task::spawn_blocking(move || {
        let _: redis::RedisResult<()> = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(TTL.as_secs_f64() + 2.0)
            .query(&mut conn);
    })
    .await
    .unwrap();
    c.wait_fires("all", before + 4, SOON).await;
    assert_policies_after_failover(&c, 2).await;
}

/// The chaos-run case of the never-fired catch-up gap, with real processes: a brand-new
/// schedule's leader is SIGKILLed before the schedule's first tick; the standby takes over
/// only after that tick (its lease outlives it) and must catch it up instead of losing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beat_process_regression_standby_catches_up_a_never_fired_schedule_after_sigkill() {
    let now = Utc::now();
    let anchor = DateTime::<Utc>::from_timestamp(now.timestamp() + 6, 0).unwrap();
    let c = Cluster::new(
        &format!(
            "  fresh: {{task: noop, every: 1h, anchor: '{}'}}\n",
            anchor.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        RedisOptions::default(),
    )
    .await;
    // Leases longer than the time to the first tick.
    let mut beats = vec![c.beat_with(&c.conf, "8s"), c.beat_with(&c.conf, "8s")];
    let old = leader_index(&c, &beats).await;
    assert!(
        Utc::now() < anchor - chrono::Duration::seconds(1),
        "setup too slow: the leader was found after the first tick was nearly due"
    );
    beats[old].kill();
    let fires = eventually(
        "the standby to fire the missed first tick",
        SOON,
        || async {
            let f = c.fires("fresh").await;
            (!f.is_empty()).then_some(f)
        },
    )
    .await;
    assert_eq!(fires.len(), 1, "{fires:#?}");
    assert_eq!(fires[0].event, "caught_up");
    assert_eq!(fires[0].nominal, Some(anchor));
    assert!(beats[1 - old].log().contains("became leader"));
}

/// The removed-then-re-added case with real processes: a schedule removed by an atomic save
/// and added back a few seconds later, then a failover (graceful stop of the leader right
/// after the re-add): no tick from the time the schedule was absent fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beat_process_regression_readded_schedule_does_not_catch_up_its_absence_after_failover() {
    let with = "  keep: {task: noop, every: 1s}\n  \
                back: {task: noop, every: 1s, misfire: {grace: 1h, catch_up: all, max: 1000}}\n";
    let c = Cluster::new(with, RedisOptions::default()).await;
    let mut beats = vec![c.beat(), c.beat()];
    c.wait_fires("back", 2, Duration::from_secs(30)).await;
    atomic_save(
        &c.conf,
        "beat.yaml",
        &format!("{}  keep: {{task: noop, every: 1s}}\n", c.header()),
    );
    let applied = |what: &'static str| {
        let c = &c;
        async move {
            eventually(what, SOON, || async {
                let entries: Vec<JournalEntry> = c
                    .journal()
                    .await
                    .into_iter()
                    .filter(|e| e.event == "reload_applied" && e.detail.contains(what))
                    .collect();
                // Both beats applied it.
                (entries.len() == 2).then(|| entries.iter().map(|e| e.at).max().unwrap())
            })
            .await
        }
    };
    let removed_at = applied("removed [back]").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    atomic_save(&c.conf, "beat.yaml", &format!("{}{with}", c.header()));
    let readded_at = applied("added [back]").await;
    let old = leader_index(&c, &beats).await;
    beats[old].stop(SOON);
    let new_pid = beats[1 - old].pid();
    eventually("the standby to lead", SOON, || async {
        (c.leader_pid().await == Some(new_pid)).then_some(())
    })
    .await;
    let n = c.fires("keep").await.len();
    c.wait_fires("keep", n + 2, SOON).await;
    let back = c.fired_once("back").await;
    let absent: Vec<&DateTime<Utc>> = back
        .iter()
        .filter(|t| **t > removed_at + chrono::Duration::seconds(1) && **t < readded_at)
        .collect();
    assert!(
        absent.is_empty(),
        "ticks from while `back` was removed ({removed_at} .. {readded_at}) fired: {absent:?}"
    );
    assert!(back.iter().any(|t| *t > readded_at), "{back:?}");
}

/// A deploy-style symlinked configuration directory (`-c current`, `current -> releases/v1`,
/// swapped atomically to `releases/v2`): the swap is seen (the watch used to stay on the old
/// release's directory, so only SIGHUP reloaded), and so are later edits in the new release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beat_process_hot_reload_symlinked_config_directory_swap() {
    let c = Cluster::new(
        "  unused: {task: noop, every: 1h}\n",
        RedisOptions::default(),
    )
    .await;
    let releases = c.dir.path().join("releases");
    let (v1, v2) = (releases.join("v1"), releases.join("v2"));
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::create_dir_all(&v2).unwrap();
    let a = "  a: {task: noop, every: 1s}\n";
    std::fs::write(v1.join("beat.yaml"), format!("{}{a}", c.header())).unwrap();
    let current = c.dir.path().join("current");
    std::os::unix::fs::symlink("releases/v1", &current).unwrap();
    let beat = c.beat_on(&current);
    c.wait_fires("a", 2, Duration::from_secs(30)).await;

    std::fs::write(
        v2.join("beat.yaml"),
        format!("{}{a}  c: {{task: noop, every: 1s}}\n", c.header()),
    )
    .unwrap();
    std::os::unix::fs::symlink("releases/v2", c.dir.path().join("current.tmp")).unwrap();
    std::fs::rename(c.dir.path().join("current.tmp"), &current).unwrap();
    eventually("the reload adding c", SOON, || async {
        reloads_applied(&c)
            .await
            .contains(&"added [c], changed [], removed []".to_string())
            .then_some(())
    })
    .await;
    c.wait_fires("c", 2, SOON).await;

    // Edited in place in the new release: seen too.
    atomic_save(
        &v2,
        "beat.yaml",
        &format!(
            "{}{a}  c: {{task: noop, every: 1s}}\n  d: {{task: noop, every: 1s}}\n",
            c.header()
        ),
    );
    eventually("the reload adding d", SOON, || async {
        reloads_applied(&c)
            .await
            .contains(&"added [d], changed [], removed []".to_string())
            .then_some(())
    })
    .await;
    c.wait_fires("d", 2, SOON).await;
    assert!(beat.log().contains("file change"), "{}", beat.log());
}

/// Bytes a process has read (all read syscalls: files and sockets), from /proc.
fn read_bytes(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("read /proc/PID/io");
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("rchar in /proc/PID/io")
}

/// An idle beat does not keep re-reading its configuration: the watcher's own reads of the
/// files (to hash them) used to count as file events, which made it hash the whole
/// configuration again every 300 ms, forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beat_process_regression_idle_beat_does_not_keep_rereading_its_configuration() {
    // A 600 kB configuration (comments), one hourly schedule.
    let padding: String = (0..6000)
        .map(|i| format!("# padding {i:05} {}\n", "x".repeat(80)))
        .collect();
    let c = Cluster::new(
        &format!("  hourly: {{task: noop, every: 1h}}\n{padding}"),
        RedisOptions::default(),
    )
    .await;
    let size = std::fs::metadata(c.conf.join("beat.yaml")).unwrap().len();
    assert!(size > 500_000);
    let mut beat = c.beat_with(&c.conf, "10s");
    beat.wait_for_log("became leader", SOON).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = read_bytes(beat.pid());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let read = read_bytes(beat.pid()) - before;
    assert!(
        read < size / 2,
        "an idle beat read {read} bytes in 3 s (its configuration is {size} bytes)"
    );
    // It still notices a real change.
    atomic_save(
        &c.conf,
        "beat.yaml",
        &format!(
            "{}  hourly: {{task: noop, every: 1h}}\n  b: {{task: noop, every: 1s}}\n",
            c.header()
        ),
    );
    c.wait_fires("b", 1, SOON).await;
}

/// `overlap: skip` end to end: a 1 s schedule whose task runs 2.5 s on a real worker. Ticks
/// while the previous run is queued or running are skipped (journaled); each fired tick runs
/// once; two runs never overlap, so fired ticks are at least 2 s apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beat_process_overlap_skip_with_a_worker_running_slow_tasks() {
    let c = Cluster::new(
        "  slow: {task: slow, every: 1s, overlap: skip}\n",
        RedisOptions::default(),
    )
    .await;
    let _worker = c.worker();
    let _beat = c.beat_with(&c.conf, "10s");
    c.wait_fires("slow", 3, Duration::from_secs(30)).await;
    let fired = c.fired_once("slow").await;
    for w in fired.windows(2) {
        assert!(
            w[1] - w[0] >= chrono::Duration::seconds(2),
            "runs overlapped: {fired:?}"
        );
    }
    let skipped = c
        .journal()
        .await
        .iter()
        .filter(|e| e.event == "skipped_overlap" && e.schedule.as_deref() == Some("slow"))
        .count();
    assert!(skipped >= 2, "{skipped} skips");
    let ids: BTreeSet<String> = c
        .fires("slow")
        .await
        .into_iter()
        .filter_map(|e| e.fire_id)
        .collect();
    let file = c.dir.path().join("fires.txt");
    let ran: Vec<String> = eventually("the fired ticks to run", SOON, || async {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        ids.iter().all(|id| lines.contains(id)).then_some(lines)
    })
    .await;
    let unique: BTreeSet<&String> = ran.iter().collect();
    assert_eq!(unique.len(), ran.len(), "a tick ran twice: {ran:?}");
}
