//! The beat core in process, driven by a [`ManualClock`]: `Beat::new(...).run(...)` on the
//! memory store and on the Redis store (a private redis-server), with the wall clock set by
//! the test and the loop's idleness read from [`BeatStatus::settled`].
//!
//! What is asserted is what the beat decided (the journal: fired, caught_up, misfired,
//! skipped_overlap, paused, reload_applied, reload_rejected, leader_*) and what it enqueued,
//! never how long it took. The leader lease runs on real monotonic time (short ttls here).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use celeriac::beat::memory_store::MemoryBeatStore;
use celeriac::beat::redis_store::RedisBeatStore;
use celeriac::beat::reload::ReloadEvent;
use celeriac::beat::store::{BeatStore, Claim, Fire, FireOutcome, JournalEntry, LeaderToken};
use celeriac::beat::{Beat, BeatError, BeatOptions, BeatStatus};
use celeriac::broker::{
    Broker, BrokerError, MemoryBroker, RedisBroker, RedisBrokerOptions, TaskMessage,
};
use celeriac::clock::{Clock, ManualClock};
use celeriac::config::{self, Config};
use chrono::{DateTime, TimeZone, Utc};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::redis_server::RedisServer;
use crate::util::{Hooked, StoreHooks, eventually};

/// Generous bound for anything that takes milliseconds on an idle machine.
const SOON: Duration = Duration::from_secs(15);

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

fn secs(s: i64) -> chrono::Duration {
    chrono::Duration::seconds(s)
}

fn millis(ms: i64) -> chrono::Duration {
    chrono::Duration::milliseconds(ms)
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// A configuration with queue `default`, task `noop` and the given `schedules:` block
/// (entries indented by two spaces).
fn config(schedules: &str) -> Arc<Config> {
    let text = format!(
        "timezone: UTC\nqueues:\n  default: {{}}\ntasks:\n  noop: {{builtin: noop}}\nschedules:\n{schedules}"
    );
    Arc::new(
        config::load_str(&text, Path::new("beat.yaml"))
            .unwrap_or_else(|e| panic!("test configuration does not load: {e}\n{text}")),
    )
}

/// A private redis-server and a connected library broker on it.
async fn redis() -> (RedisServer, Arc<RedisBroker>) {
    let server = RedisServer::start();
    let broker = connect(&server).await;
    (server, broker)
}

/// A broker on the private server that reconnects quickly (the fault tests restart it).
pub(crate) async fn connect(server: &RedisServer) -> Arc<RedisBroker> {
    Arc::new(
        RedisBroker::connect(
            &server.url(),
            RedisBrokerOptions {
                reconnect_min: Duration::from_millis(20),
                reconnect_max: Duration::from_millis(200),
                response_timeout: Duration::from_secs(2),
                ..Default::default()
            },
        )
        .await
        .expect("connect to the private redis-server"),
    )
}

/// One beat running in this process.
struct Running {
    status: watch::Receiver<BeatStatus>,
    shutdown: CancellationToken,
    reloads: mpsc::Sender<ReloadEvent>,
    task: tokio::task::JoinHandle<Result<(), BeatError>>,
    clock: ManualClock,
}

fn start(
    config: Arc<Config>,
    store: Arc<dyn BeatStore>,
    clock: &ManualClock,
    beat_id: &str,
    lease_ttl: Duration,
) -> Running {
    let beat = Beat::new(
        config,
        store,
        Arc::new(clock.clone()),
        BeatOptions {
            lease_ttl,
            beat_id: beat_id.to_string(),
            ..BeatOptions::default()
        },
    );
    let status = beat.status();
    let shutdown = CancellationToken::new();
    let (reloads, rx) = mpsc::channel(4);
    let task = tokio::spawn(beat.run(shutdown.clone(), rx));
    Running {
        status,
        shutdown,
        reloads,
        task,
        clock: clock.clone(),
    }
}

impl Running {
    fn status(&self) -> BeatStatus {
        self.status.borrow().clone()
    }

    /// Waits until it leads and is idle with every tick up to the clock's time handled.
    async fn settle(&self) {
        settle(&self.status, self.clock.now()).await;
    }

    /// Sets the clock and waits until the beat has handled everything due by then.
    async fn at(&self, t: DateTime<Utc>) {
        self.clock.set(t);
        self.settle().await;
    }

    /// Applies a configuration as a hot reload and waits until it is applied.
    async fn reload(&self, config: Arc<Config>) {
        let before = self.status().reloads;
        self.reloads
            .send(ReloadEvent::Changed(config))
            .await
            .expect("beat is running");
        eventually("the reload to be applied", SOON, || async {
            (self.status.borrow().reloads > before).then_some(())
        })
        .await;
        self.settle().await;
    }

    /// Graceful stop: the lease is released.
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(SOON, self.task)
            .await
            .expect("beat stops")
            .expect("beat task")
            .expect("beat ran");
    }

    /// Dies without a word: the lease stays until it expires.
    async fn crash(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Waits until the beat leads and is idle with every tick up to `now` handled.
async fn settle(status: &watch::Receiver<BeatStatus>, now: DateTime<Utc>) {
    let mut rx = status.clone();
    let waited = tokio::time::timeout(
        SOON,
        rx.wait_for(|s| s.leader && s.settled.is_some_and(|t| t > now)),
    )
    .await;
    match waited {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => panic!("the beat stopped before settling at {now}"),
        Err(_) => panic!(
            "the beat did not lead and settle at {now} within {SOON:?}: {:?}",
            status.borrow()
        ),
    }
}

/// Journal entries (oldest first).
async fn journal(store: &dyn BeatStore) -> Vec<JournalEntry> {
    let mut j = store.read_journal(None, 9_000).await.expect("read journal");
    j.reverse();
    j
}

/// Fired and caught-up entries of one schedule, oldest first: (event, nominal).
async fn fires_of(store: &dyn BeatStore, schedule: &str) -> Vec<(String, DateTime<Utc>)> {
    journal(store)
        .await
        .into_iter()
        .filter(|e| {
            e.schedule.as_deref() == Some(schedule)
                && (e.event == "fired" || e.event == "caught_up")
        })
        .map(|e| (e.event, e.nominal.expect("fire entries carry the nominal")))
        .collect()
}

/// Nominal instants fired (in any way) for a schedule; panics on any duplicate fire_id.
async fn fired_once(store: &dyn BeatStore, schedule: &str) -> Vec<DateTime<Utc>> {
    let fires = fires_of(store, schedule).await;
    let mut seen = BTreeSet::new();
    for (_, t) in &fires {
        assert!(
            seen.insert(*t),
            "{schedule}@{} fired twice: {fires:?}",
            rfc(*t)
        );
    }
    fires.into_iter().map(|(_, t)| t).collect()
}

/// Every message in a Redis queue (ready, reserved or delayed), decoded.
/// The ids of a queue's ready messages, in the order workers take them.
pub(crate) async fn ready_ids(broker: &RedisBroker, queue: &str) -> Vec<String> {
    let key = format!("{}{{q:{queue}}}:ready", broker.prefix());
    let v = broker
        .command(redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1))
        .await
        .expect("ZRANGE");
    redis::from_redis_value(v).expect("ready ids")
}

async fn queued(broker: &RedisBroker, queue: &str) -> Vec<TaskMessage> {
    let key = format!("{}{{q:{queue}}}:msg", broker.prefix());
    let v = broker
        .command(redis::cmd("HVALS").arg(&key))
        .await
        .expect("HVALS");
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

/// The instants of `timing` in `(from, to]`.
fn ticks(
    cfg: &Config,
    schedule: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    let timing = &cfg.schedules[schedule].timing;
    let mut out = Vec::new();
    let mut t = from;
    while let Some(n) = timing.next_after(t) {
        if n > to {
            break;
        }
        out.push(n);
        t = n;
    }
    out
}

// ---------------------------------------------------------------------------------------
// Exactly once, from the nominal instant
// ---------------------------------------------------------------------------------------

/// Steps the clock by uneven amounts (never more than the 1 s period, so every tick is
/// within its default grace) across `steps` seconds, and checks that every whole second fired
/// exactly once, under its nominal fire_id.
async fn one_second_interval_fires_every_tick_once(store: Arc<dyn BeatStore>) {
    let cfg = config("  s:\n    task: noop\n    every: 1s\n");
    let t0 = utc(2025, 1, 1, 0, 0, 0) + millis(300);
    let clock = ManualClock::new(t0);
    let beat = start(cfg, store.clone(), &clock, "solo", Duration::from_secs(10));
    beat.settle().await;
    let steps = [700, 130, 990, 450, 1000, 20, 600, 880, 310, 1000];
    let mut t = t0;
    for i in 0..300 {
        t += millis(steps[i % steps.len()]);
        beat.at(t).await;
    }
    let fired = fired_once(&*store, "s").await;
    let expected: Vec<DateTime<Utc>> = (1..)
        .map(|k| utc(2025, 1, 1, 0, 0, 0) + secs(k))
        .take_while(|x| *x <= t)
        .collect();
    assert_eq!(fired.len(), expected.len(), "ticks fired up to {t}");
    assert_eq!(fired, expected, "fires drifted from the 1 s grid");
    assert_eq!(beat.status().fired as usize, expected.len());
    assert_eq!(beat.status().misfired, 0);
    beat.stop().await;
}

#[tokio::test]
async fn beat_core_interval_fires_each_tick_once_without_drift_memory() {
    let store = Arc::new(MemoryBeatStore::new(MemoryBroker::new()));
    one_second_interval_fires_every_tick_once(store).await;
}

#[tokio::test]
async fn beat_core_interval_fires_each_tick_once_without_drift_redis() {
    let (_server, broker) = redis().await;
    let store = Arc::new(RedisBeatStore::new(broker.clone(), "solo"));
    one_second_interval_fires_every_tick_once(store).await;
    // The queue holds one message per tick, each with its own fire_id.
    let msgs = queued(&broker, "default").await;
    let ids: BTreeSet<String> = msgs.iter().filter_map(|m| m.fire_id.clone()).collect();
    assert_eq!(ids.len(), msgs.len(), "a fire_id was enqueued twice");
    assert!(ids.contains("s@2025-01-01T00:00:01Z"), "{ids:?}");
}

/// Cron schedules across DST days: America/New_York (2025-03-09 spring forward, 2025-11-02
/// fall back) and Asia/Shanghai's DST of 1988 (spring forward on 04-17, back on 09-11).
#[tokio::test]
async fn beat_core_crons_fire_once_per_tick_across_dst_days() {
    let cfg = config(
        "  ny-hourly: {task: noop, cron: '0 * * * *', timezone: America/New_York, misfire: {grace: 1h}}\n\
         \x20 ny-0230: {task: noop, cron: '30 2 * * *', timezone: America/New_York, misfire: {grace: 1h}}\n\
         \x20 ny-0130: {task: noop, cron: '30 1 * * *', timezone: America/New_York, misfire: {grace: 1h}}\n\
         \x20 ny-quarter: {task: noop, cron: '*/15 1-3 * * *', timezone: America/New_York, misfire: {grace: 1h}}\n\
         \x20 sh-hourly: {task: noop, cron: '0 * * * *', timezone: Asia/Shanghai, misfire: {grace: 1h}}\n\
         \x20 sh-0230: {task: noop, cron: '30 2 * * *', timezone: Asia/Shanghai, misfire: {grace: 1h}}\n",
    );
    // Each window is a local day (plus a little) around a transition; the clock moves in
    // 7-minute steps, so ticks fire up to 7 minutes late, under their nominal identity.
    let windows = [
        (utc(1988, 4, 16, 15, 0, 0), utc(1988, 4, 17, 17, 0, 0)),
        (utc(1988, 9, 10, 14, 0, 0), utc(1988, 9, 11, 17, 0, 0)),
        (utc(2025, 3, 9, 4, 0, 0), utc(2025, 3, 10, 5, 0, 0)),
        (utc(2025, 11, 2, 3, 0, 0), utc(2025, 11, 3, 6, 0, 0)),
    ];
    let mut expected: BTreeMap<&str, Vec<DateTime<Utc>>> = BTreeMap::new();
    for (from, to) in windows {
        let store: Arc<dyn BeatStore> = Arc::new(MemoryBeatStore::new(MemoryBroker::new()));
        let clock = ManualClock::new(from);
        let beat = start(
            cfg.clone(),
            store.clone(),
            &clock,
            "dst",
            Duration::from_secs(10),
        );
        beat.settle().await;
        let mut t = from;
        while t < to {
            t = (t + chrono::Duration::minutes(7)).min(to);
            beat.at(t).await;
        }
        beat.stop().await;
        for name in cfg.schedules.keys() {
            let want = ticks(&cfg, name, from, to);
            assert_eq!(
                fired_once(&*store, name).await,
                want,
                "{name} in ({from}, {to}]"
            );
            expected.entry(name.as_str()).or_default().extend(want);
        }
    }
    // Independent spot checks of the DST rules on those days.
    let count = |name: &str, from: DateTime<Utc>, to: DateTime<Utc>| {
        expected[name]
            .iter()
            .filter(|t| **t >= from && **t < to)
            .count()
    };
    // New York local days: 23 and 25 hours.
    assert_eq!(
        count(
            "ny-hourly",
            utc(2025, 3, 9, 5, 0, 0),
            utc(2025, 3, 10, 4, 0, 0)
        ),
        23
    );
    assert_eq!(
        count(
            "ny-hourly",
            utc(2025, 11, 2, 4, 0, 0),
            utc(2025, 11, 3, 5, 0, 0)
        ),
        25
    );
    // 02:30 does not exist on 03-09: fired once, at the transition (03:00 EDT = 07:00Z).
    assert!(expected["ny-0230"].contains(&utc(2025, 3, 9, 7, 0, 0)));
    // 01:30 happens twice on 11-02: the first one (EDT, 05:30Z) only.
    assert!(expected["ny-0130"].contains(&utc(2025, 11, 2, 5, 30, 0)));
    assert!(!expected["ny-0130"].contains(&utc(2025, 11, 2, 6, 30, 0)));
    // Hour restricted to 1-3, minutes */15, on the fall-back day: 01:xx repeats only for
    // unrestricted hours, so 12 ticks (01:00..03:45 once each).
    assert_eq!(
        count(
            "ny-quarter",
            utc(2025, 11, 2, 4, 0, 0),
            utc(2025, 11, 3, 4, 0, 0)
        ),
        12
    );
    // Shanghai 1988: 23-hour day on 04-17, 25-hour day on 09-11.
    assert_eq!(
        count(
            "sh-hourly",
            utc(1988, 4, 16, 16, 0, 0),
            utc(1988, 4, 17, 15, 0, 0)
        ),
        23
    );
    assert_eq!(
        count(
            "sh-hourly",
            utc(1988, 9, 10, 15, 0, 0),
            utc(1988, 9, 11, 16, 0, 0)
        ),
        25
    );
    // 02:30 skipped on 04-17: fired at the transition 03:00 CDT (= 18:00Z the day before).
    assert!(expected["sh-0230"].contains(&utc(1988, 4, 16, 18, 0, 0)));
}

/// A store that counts fire calls and their sizes, and can make claims fail (a beat cut
/// off from the lease while its fire path still works) or delay fire calls.
struct Spy {
    inner: Arc<dyn BeatStore>,
    fire_calls: Mutex<Vec<(Instant, usize)>>,
    claims_fail: AtomicBool,
    /// Fire calls fail with a transient error (before reaching the store).
    fires_fail: AtomicBool,
    /// Claims are held this long before they are sent (a slow network, a stalled client).
    claim_delay: Mutex<Duration>,
    /// When the last claim that won or extended the lease was sent.
    last_ok_claim_sent: Mutex<Option<Instant>>,
    /// When each claim that won or extended the lease was sent.
    renewals: Mutex<Vec<Instant>>,
    claims: AtomicUsize,
    /// Every tick the store reported as fired: (schedule, nominal).
    fired: Mutex<Vec<(String, DateTime<Utc>)>>,
}

impl Spy {
    fn new(inner: Arc<dyn BeatStore>) -> Arc<Hooked<Spy>> {
        Arc::new(Hooked(Spy {
            inner,
            fire_calls: Mutex::new(Vec::new()),
            claims_fail: AtomicBool::new(false),
            fires_fail: AtomicBool::new(false),
            claim_delay: Mutex::new(Duration::ZERO),
            last_ok_claim_sent: Mutex::new(None),
            renewals: Mutex::new(Vec::new()),
            claims: AtomicUsize::new(0),
            fired: Mutex::new(Vec::new()),
        }))
    }
}

#[async_trait]
impl StoreHooks for Spy {
    fn inner(&self) -> &dyn BeatStore {
        &*self.inner
    }
    async fn claim(&self, token: &str, ttl: Duration) -> Result<Claim, BrokerError> {
        self.claims.fetch_add(1, Ordering::Relaxed);
        if self.claims_fail.load(Ordering::SeqCst) {
            return Err(BrokerError::ConnectionLost("spy: cut off".into()));
        }
        let delay = *self.claim_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        let sent = Instant::now();
        let r = self.inner.claim(token, ttl).await;
        if matches!(r, Ok(Claim::Acquired { .. } | Claim::Renewed { .. })) {
            *self.last_ok_claim_sent.lock().unwrap() = Some(sent);
            self.renewals.lock().unwrap().push(sent);
        }
        r
    }
    async fn fire(
        &self,
        leader: &LeaderToken,
        fires: &[Fire],
    ) -> Result<Vec<FireOutcome>, BrokerError> {
        self.fire_calls
            .lock()
            .unwrap()
            .push((Instant::now(), fires.len()));
        if self.fires_fail.load(Ordering::SeqCst) {
            return Err(BrokerError::ConnectionLost("spy: fire failed".into()));
        }
        let outcomes = self.inner.fire(leader, fires).await?;
        let mut fired = self.fired.lock().unwrap();
        for (f, o) in fires.iter().zip(&outcomes) {
            if *o == FireOutcome::Fired {
                fired.push((f.schedule.clone(), f.nominal));
            }
        }
        Ok(outcomes)
    }
}

/// 2,000 ticks due at once go to the store in two calls, not 2,000: a first wave of 1,000
/// (small, so that Redis has work while the next one is built), then the rest (waves of up
/// to 2,000).
#[tokio::test]
async fn beat_core_a_wave_of_many_due_schedules_fires_in_few_batches() {
    let (_server, broker) = redis().await;
    let n = 2000;
    let mut yaml = String::new();
    for i in 0..n {
        yaml.push_str(&format!("  s{i:04}: {{task: noop, every: 60s}}\n"));
    }
    let cfg = config(&yaml);
    let spy = Spy::new(Arc::new(RedisBeatStore::new(broker.clone(), "wave")));
    let clock = ManualClock::new(utc(2025, 1, 1, 0, 0, 30));
    let beat = start(cfg, spy.clone(), &clock, "wave", Duration::from_secs(10));
    beat.settle().await;
    assert!(spy.fire_calls.lock().unwrap().is_empty());
    beat.at(utc(2025, 1, 1, 0, 1, 0)).await;
    let calls = spy.fire_calls.lock().unwrap().clone();
    assert_eq!(
        calls.iter().map(|c| c.1).collect::<Vec<_>>(),
        vec![1000, 1000],
        "the wave was not a first wave of 1,000 and one of the rest"
    );
    assert_eq!(beat.status().fired, n as u64);
    let stats = broker.queue_stats("default").await.unwrap();
    assert_eq!(stats.ready_total(), n as u64);
    beat.stop().await;
}

// ---------------------------------------------------------------------------------------
// Misfire policies on start / takeover, expires: auto
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn beat_core_misfire_policies_on_start_after_downtime() {
    let (_server, broker) = redis().await;
    let cfg = config(
        "  none: {task: noop, every: 10s, misfire: {grace: 60s, catch_up: none}}\n\
         \x20 latest: {task: noop, every: 10s, misfire: {grace: 60s, catch_up: latest}, expires: never}\n\
         \x20 all3: {task: noop, every: 10s, misfire: {grace: 60s, catch_up: all, max: 3}}\n\
         \x20 all-grace: {task: noop, every: 10s, misfire: {grace: 22s, catch_up: all, max: 10}}\n\
         \x20 default: {task: noop, every: 10s}\n\
         \x20 auto: {task: noop, every: 10s, misfire: {grace: 60s}, expires: auto}\n\
         \x20 long-down: {task: noop, every: 1s, misfire: {grace: 5s, catch_up: all, max: 100}}\n",
    );
    let store: Arc<dyn BeatStore> = Arc::new(RedisBeatStore::new(broker.clone(), "a"));
    let t0 = utc(2025, 1, 1, 0, 0, 5);
    let clock = ManualClock::new(t0);
    let a = start(
        cfg.clone(),
        store.clone(),
        &clock,
        "a",
        Duration::from_secs(10),
    );
    a.settle().await;
    a.at(utc(2025, 1, 1, 0, 0, 10) + millis(300)).await;
    // Every schedule fired 00:00:10 (long-down also 00:00:06..10).
    for name in cfg.schedules.keys() {
        assert!(
            fired_once(&*store, name)
                .await
                .contains(&utc(2025, 1, 1, 0, 0, 10)),
            "{name}"
        );
    }
    a.stop().await;
    // Down until 00:00:55: ticks 20, 30, 40, 50 were missed.
    clock.set(utc(2025, 1, 1, 0, 0, 55));
    let b = start(
        cfg.clone(),
        store.clone(),
        &clock,
        "b",
        Duration::from_secs(10),
    );
    b.settle().await;
    let caught = |name: &'static str| {
        let store = store.clone();
        async move {
            fires_of(&*store, name)
                .await
                .into_iter()
                .filter(|(e, _)| e == "caught_up")
                .map(|(_, t)| t.format("%S").to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(caught("none").await, Vec::<String>::new());
    assert_eq!(caught("latest").await, ["50"]);
    assert_eq!(caught("all3").await, ["30", "40", "50"]);
    // Grace 22 s from 00:00:55: only 40 and 50 are recent enough.
    assert_eq!(caught("all-grace").await, ["40", "50"]);
    // Default: latest within a grace of one period (10 s): 50 only.
    assert_eq!(caught("default").await, ["50"]);
    // 1 s ticks, 44 missed, grace 5 s: 50..55 caught up, 11..49 dropped (journaled).
    assert_eq!(
        caught("long-down").await,
        ["50", "51", "52", "53", "54", "55"]
    );
    let j = journal(&*store).await;
    let misfired = |name: &str| {
        j.iter()
            .filter(|e| e.event == "misfired" && e.schedule.as_deref() == Some(name))
            .map(|e| e.detail.clone())
            .collect::<Vec<_>>()
    };
    assert!(
        misfired("none")[0].starts_with("4 missed tick(s) not fired"),
        "{:?}",
        misfired("none")
    );
    assert!(
        misfired("all3")[0].starts_with("1 missed tick(s)"),
        "{:?}",
        misfired("all3")
    );
    assert!(
        misfired("long-down")[0].starts_with("39 missed tick(s)"),
        "{:?}",
        misfired("long-down")
    );
    assert!(misfired("latest")[0].starts_with("3 missed tick(s)"));
    // The next tick fires normally for every policy, once.
    b.at(utc(2025, 1, 1, 0, 1, 0) + millis(100)).await;
    for name in ["none", "latest", "all3", "all-grace", "default", "auto"] {
        let f = fired_once(&*store, name).await;
        assert_eq!(f.last(), Some(&utc(2025, 1, 1, 0, 1, 0)), "{name}");
    }
    // expires: auto (the default): each message expires at the schedule's next nominal tick after both its
    // nominal instant and the moment it was sent.
    let msgs = queued(&broker, "default").await;
    let expiry = |fid: &str| {
        msgs.iter()
            .find(|m| m.fire_id.as_deref() == Some(fid))
            .unwrap_or_else(|| panic!("no message {fid}"))
            .expires
    };
    assert_eq!(
        expiry("auto@2025-01-01T00:00:10Z"),
        Some(utc(2025, 1, 1, 0, 0, 20))
    );
    // Caught up at 00:00:55: the tick of 00:00:50 expires at 00:01:00.
    assert_eq!(
        expiry("auto@2025-01-01T00:00:50Z"),
        Some(utc(2025, 1, 1, 0, 1, 0))
    );
    assert_eq!(
        expiry("auto@2025-01-01T00:01:00Z"),
        Some(utc(2025, 1, 1, 0, 1, 10))
    );
    assert_eq!(expiry("latest@2025-01-01T00:00:50Z"), None);
    b.stop().await;
}

// ---------------------------------------------------------------------------------------
// Overlap, pause
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn beat_core_overlap_skip_waits_for_the_previous_run_to_be_acked_redis() {
    let (_server, broker) = redis().await;
    let store: Arc<dyn BeatStore> = Arc::new(RedisBeatStore::new(broker.clone(), "o"));
    overlap_skip_waits_for_ack(store, broker).await;
}

#[tokio::test]
async fn beat_core_overlap_skip_waits_for_the_previous_run_to_be_acked_memory() {
    let broker = MemoryBroker::new();
    let store: Arc<dyn BeatStore> = Arc::new(MemoryBeatStore::new(broker.clone()));
    overlap_skip_waits_for_ack(store, Arc::new(broker)).await;
}

async fn overlap_skip_waits_for_ack(store: Arc<dyn BeatStore>, broker: Arc<dyn Broker>) {
    let cfg = config(
        "  slow: {task: noop, every: 10s, overlap: skip}\n\
         \x20 free: {task: noop, every: 10s}\n",
    );
    let clock = ManualClock::new(utc(2025, 1, 1, 0, 0, 5));
    let beat = start(cfg, store.clone(), &clock, "o", Duration::from_secs(10));
    beat.settle().await;
    beat.at(utc(2025, 1, 1, 0, 0, 10)).await;
    // Still queued: the next tick is skipped.
    beat.at(utc(2025, 1, 1, 0, 0, 20)).await;
    // Reserved (running): skipped again.
    let queues = vec!["default".to_string()];
    let mut running = Vec::new();
    for _ in 0..10 {
        let d = broker
            .reserve(
                &queues,
                10,
                Duration::from_secs(300),
                Duration::from_millis(100),
            )
            .await
            .unwrap();
        running.extend(d);
        if running
            .iter()
            .any(|d| d.message().and_then(|m| m.schedule.clone()).as_deref() == Some("slow"))
        {
            break;
        }
    }
    let slow = running
        .iter()
        .find(|d| d.message().and_then(|m| m.schedule.clone()).as_deref() == Some("slow"))
        .expect("the slow schedule's message")
        .lease
        .clone();
    beat.at(utc(2025, 1, 1, 0, 0, 30)).await;
    // Acked: the next tick fires.
    assert!(broker.ack(&slow).await.unwrap());
    beat.at(utc(2025, 1, 1, 0, 0, 40)).await;
    let fired: Vec<String> = fired_once(&*store, "slow")
        .await
        .iter()
        .map(|t| t.format("%S").to_string())
        .collect();
    assert_eq!(fired, ["10", "40"]);
    assert_eq!(fired_once(&*store, "free").await.len(), 4);
    let j = journal(&*store).await;
    let skipped: Vec<String> = j
        .iter()
        .filter(|e| e.event == "skipped_overlap")
        .map(|e| {
            format!(
                "{}@{}",
                e.schedule.clone().unwrap(),
                e.nominal.unwrap().format("%S")
            )
        })
        .collect();
    assert_eq!(skipped, ["slow@20", "slow@30"]);
    assert_eq!(beat.status().skipped, 2);
    beat.stop().await;
}

#[tokio::test]
async fn beat_core_paused_schedule_skips_ticks_until_resumed_and_does_not_catch_them_up() {
    let (_server, broker) = redis().await;
    let cfg =
        config("  p: {task: noop, every: 10s, misfire: {grace: 1h, catch_up: all, max: 100}}\n");
    let redis_store = Arc::new(RedisBeatStore::new(broker.clone(), "p"));
    let store: Arc<dyn BeatStore> = redis_store.clone();
    let clock = ManualClock::new(utc(2025, 1, 1, 0, 0, 5));
    let beat = start(
        cfg.clone(),
        store.clone(),
        &clock,
        "p",
        Duration::from_secs(10),
    );
    beat.settle().await;
    beat.at(utc(2025, 1, 1, 0, 0, 10)).await;
    celeriac::ops::set_paused(&redis_store, "p", true, "test")
        .await
        .unwrap();
    beat.at(utc(2025, 1, 1, 0, 0, 20)).await;
    beat.at(utc(2025, 1, 1, 0, 0, 30)).await;
    celeriac::ops::set_paused(&redis_store, "p", false, "test")
        .await
        .unwrap();
    beat.at(utc(2025, 1, 1, 0, 0, 40)).await;
    // A takeover later does not fire the paused ticks either.
    beat.stop().await;
    clock.set(utc(2025, 1, 1, 0, 0, 45));
    let b = start(cfg, store.clone(), &clock, "p2", Duration::from_secs(10));
    b.settle().await;
    b.at(utc(2025, 1, 1, 0, 0, 50)).await;
    let fired: Vec<String> = fired_once(&*store, "p")
        .await
        .iter()
        .map(|t| t.format("%S").to_string())
        .collect();
    assert_eq!(fired, ["10", "40", "50"]);
    let events: Vec<String> = journal(&*store)
        .await
        .into_iter()
        .filter(|e| e.schedule.as_deref() == Some("p"))
        .map(|e| {
            format!(
                "{}{}",
                e.event,
                e.nominal
                    .map(|t| t.format("@%S").to_string())
                    .unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            "fired@10",
            "paused",
            "paused@20",
            "paused@30",
            "resumed",
            "fired@40",
            "fired@50"
        ]
    );
    b.stop().await;
}

// ---------------------------------------------------------------------------------------
// Reload as a diff
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn beat_core_reload_applies_a_diff_and_rejects_invalid_configurations() {
    let broker = MemoryBroker::new();
    let store: Arc<dyn BeatStore> = Arc::new(MemoryBeatStore::new(broker.clone()));
    let v1 = config(
        "  same: {task: noop, every: 10s}\n\
         \x20 args: {task: noop, every: 10s, args: {v: 1}}\n\
         \x20 timing: {task: noop, every: 10s}\n\
         \x20 gone: {task: noop, every: 10s}\n",
    );
    let clock = ManualClock::new(utc(2025, 1, 1, 0, 0, 5));
    let beat = start(v1, store.clone(), &clock, "r", Duration::from_secs(10));
    beat.settle().await;
    beat.at(utc(2025, 1, 1, 0, 0, 10)).await;
    clock.set(utc(2025, 1, 1, 0, 0, 13));
    let v2 = config(
        "  same: {task: noop, every: 10s}\n\
         \x20 args: {task: noop, every: 10s, args: {v: 2}}\n\
         \x20 timing: {task: noop, every: 6s}\n\
         \x20 new: {task: noop, every: 3s}\n",
    );
    beat.reload(v2).await;
    let mut t = utc(2025, 1, 1, 0, 0, 13);
    while t < utc(2025, 1, 1, 0, 0, 30) {
        t += secs(1);
        beat.at(t).await;
    }
    let seconds = |v: Vec<DateTime<Utc>>| {
        v.iter()
            .map(|t| t.format("%S").to_string())
            .collect::<Vec<_>>()
    };
    // Unchanged and changed-but-same-timing schedules keep their grid.
    assert_eq!(
        seconds(fired_once(&*store, "same").await),
        ["10", "20", "30"]
    );
    assert_eq!(
        seconds(fired_once(&*store, "args").await),
        ["10", "20", "30"]
    );
    // Changed timing: the next tick is recomputed on the new grid (6 s from the epoch).
    assert_eq!(
        seconds(fired_once(&*store, "timing").await),
        ["10", "18", "24", "30"]
    );
    assert_eq!(
        seconds(fired_once(&*store, "new").await),
        ["15", "18", "21", "24", "27", "30"]
    );
    assert_eq!(seconds(fired_once(&*store, "gone").await), ["10"]);
    let j = journal(&*store).await;
    let applied: Vec<&str> = j
        .iter()
        .filter(|e| e.event == "reload_applied")
        .map(|e| e.detail.as_str())
        .collect();
    assert_eq!(
        applied,
        ["added [new], changed [args, timing], removed [gone]"]
    );
    // The args change reached the messages: the ticks after the reload carry v: 2.
    let queues = vec!["default".to_string()];
    let mut args = BTreeMap::new();
    loop {
        let got = broker
            .reserve(&queues, 100, Duration::from_secs(60), Duration::ZERO)
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        for d in got {
            let m = d.message().expect("a decodable message").clone();
            if m.schedule.as_deref() == Some("args") {
                args.insert(m.fire_id.clone().unwrap(), m.args.clone());
            }
            broker.ack(&d.lease).await.unwrap();
        }
    }
    assert_eq!(
        args["args@2025-01-01T00:00:10Z"],
        serde_json::json!({"v": 1})
    );
    assert_eq!(
        args["args@2025-01-01T00:00:20Z"],
        serde_json::json!({"v": 2})
    );
    assert_eq!(beat.status().reloads, 1);

    // An invalid configuration is rejected: journaled with file:line:col, nothing changes.
    let errors = config::load_str(
        "queues: {default: {}}\ntasks: {noop: {builtin: noop}}\nschedules:\n  same: {task: noop, every: 10s, queue: nope}\n",
        Path::new("broken.yaml"),
    )
    .unwrap_err();
    beat.reloads
        .send(ReloadEvent::Rejected(errors))
        .await
        .unwrap();
    eventually("the rejection to be journaled", SOON, || async {
        journal(&*store)
            .await
            .into_iter()
            .find(|e| e.event == "reload_rejected")
    })
    .await;
    let rejected = journal(&*store)
        .await
        .into_iter()
        .find(|e| e.event == "reload_rejected")
        .unwrap();
    assert!(
        rejected.detail.contains("broken.yaml:4:"),
        "{}",
        rejected.detail
    );
    beat.at(utc(2025, 1, 1, 0, 0, 40)).await;
    assert_eq!(
        seconds(fired_once(&*store, "same").await),
        ["10", "20", "30", "40"]
    );
    assert_eq!(beat.status().reloads, 1);
    beat.stop().await;
}

// ---------------------------------------------------------------------------------------
// Journal
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn beat_core_journal_records_each_decision() {
    let (_server, broker) = redis().await;
    let cfg = config("  j: {task: noop, every: 10s, overlap: skip, misfire: {grace: 5s}}\n");
    let store: Arc<dyn BeatStore> = Arc::new(RedisBeatStore::new(broker.clone(), "j"));
    let clock = ManualClock::new(utc(2025, 1, 1, 0, 0, 5));
    let beat = start(
        cfg.clone(),
        store.clone(),
        &clock,
        "j",
        Duration::from_secs(10),
    );
    beat.settle().await;
    beat.at(utc(2025, 1, 1, 0, 0, 10)).await; // fired
    beat.at(utc(2025, 1, 1, 0, 0, 20)).await; // skipped_overlap (10 still queued)
    broker.purge("default").await.unwrap();
    beat.at(utc(2025, 1, 1, 0, 0, 37)).await; // 30 is 7 s late: misfired (grace 5 s)
    beat.reload(config(
        "  j: {task: noop, every: 10s, overlap: skip, misfire: {grace: 5s}, args: [1]}\n",
    ))
    .await;
    beat.stop().await;
    let events: Vec<String> = journal(&*store)
        .await
        .into_iter()
        .map(|e| {
            format!(
                "{} {}{}",
                e.event,
                e.schedule.unwrap_or_default(),
                e.nominal
                    .map(|t| t.format("@%S").to_string())
                    .unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            "leader_acquired ",
            "fired j@10",
            "skipped_overlap j@20",
            "misfired j@30",
            "reload_applied ",
            "leader_lost ",
        ]
    );
    // The per-schedule view `celeriac why` reads has the same decisions of `j`.
    let why: Vec<String> = store
        .read_journal(Some("j"), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(why, ["misfired", "skipped_overlap", "fired"]);
}

// ---------------------------------------------------------------------------------------
// Several beats on one store
// ---------------------------------------------------------------------------------------

const SHORT_TTL: Duration = Duration::from_millis(1500);

async fn leader_of<'a>(beats: &'a [&'a Running]) -> &'a Running {
    eventually("one beat to lead", SOON, || async {
        let leaders: Vec<&Running> = beats
            .iter()
            .copied()
            .filter(|b| b.status().leader)
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    })
    .await
}

#[tokio::test]
async fn beat_core_two_beats_one_leads_and_each_tick_fires_once() {
    let (server, _broker) = redis().await;
    let cfg =
        config("  s: {task: noop, every: 1s, misfire: {grace: 30s, catch_up: all, max: 100}}\n");
    let clock = ManualClock::new(utc(2025, 1, 1, 0, 0, 0) + millis(500));
    let sa: Arc<dyn BeatStore> = Arc::new(RedisBeatStore::new(connect(&server).await, "a"));
    let sb: Arc<dyn BeatStore> = Arc::new(RedisBeatStore::new(connect(&server).await, "b"));
    let a = start(cfg.clone(), sa.clone(), &clock, "a", SHORT_TTL);
    let b = start(cfg.clone(), sb.clone(), &clock, "b", SHORT_TTL);
    let mut t = clock.now();
    for _ in 0..20 {
        t += millis(500);
        clock.set(t);
        leader_of(&[&a, &b]).await.settle().await;
    }
    let (leader, standby) = if a.status().leader { (a, b) } else { (b, a) };
    assert!(!standby.status().leader);
    // The leader dies without releasing the lease; the standby takes over once it expires
    // and catches up what the dead leader missed.
    leader.crash().await;
    for _ in 0..4 {
        t += millis(500);
        clock.set(t);
    }
    eventually("the standby to take over", SOON, || async {
        standby.status().leader.then_some(())
    })
    .await;
    for _ in 0..10 {
        t += millis(500);
        standby.at(t).await;
    }
    let fired = fired_once(&*sa, "s").await;
    let expected: Vec<DateTime<Utc>> = (1..)
        .map(|k| utc(2025, 1, 1, 0, 0, 0) + secs(k))
        .take_while(|x| *x <= t)
        .collect();
    assert_eq!(fired, expected, "ticks lost or doubled across the failover");
    standby.stop().await;
}

/// Two beats on one Redis with a 2 s lease and a 1 s schedule `s`: "a" (through a [`Spy`])
/// leads after four 250 ms steps, "b" stands by.
struct LeaderAndStandby {
    server: RedisServer,
    clock: ManualClock,
    ttl: Duration,
    spy: Arc<Hooked<Spy>>,
    a: Running,
    sb: Arc<dyn BeatStore>,
    b: Running,
    t: DateTime<Utc>,
}

async fn leader_and_standby() -> LeaderAndStandby {
    let (server, _broker) = redis().await;
    let cfg =
        config("  s: {task: noop, every: 1s, misfire: {grace: 30s, catch_up: all, max: 100}}\n");
    let clock = ManualClock::new(utc(2025, 1, 1, 0, 0, 0) + millis(500));
    let ttl = Duration::from_millis(2000);
    let spy = Spy::new(Arc::new(RedisBeatStore::new(connect(&server).await, "a")));
    let a = start(cfg.clone(), spy.clone(), &clock, "a", ttl);
    a.settle().await;
    let sb: Arc<dyn BeatStore> = Arc::new(RedisBeatStore::new(connect(&server).await, "b"));
    let b = start(cfg.clone(), sb.clone(), &clock, "b", ttl);
    let mut t = clock.now();
    for _ in 0..4 {
        t += millis(250);
        a.at(t).await;
    }
    LeaderAndStandby {
        server,
        clock,
        ttl,
        spy,
        a,
        sb,
        b,
        t,
    }
}

/// Moves the clock on by 250 ms every 50 ms (ticks keep coming) until `b` leads.
async fn step_until_leader(
    b: &Running,
    clock: &ManualClock,
    t: &mut DateTime<Utc>,
    since: Instant,
) {
    while !b.status().leader {
        assert!(since.elapsed() < SOON, "b never took over");
        *t += millis(250);
        clock.set(*t);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The leader is cut off from the lease (its claims fail) while its fire path still
/// works: it must stop firing before the lease it last renewed can have expired, and the
/// other beat fires every tick from then on, each once.
#[tokio::test]
async fn beat_core_leader_that_cannot_renew_stops_firing_before_its_lease_expires() {
    let LeaderAndStandby {
        server: _server,
        clock,
        ttl,
        spy,
        a,
        sb,
        b,
        mut t,
    } = leader_and_standby().await;
    assert!(!b.status().leader);
    spy.claims_fail.store(true, Ordering::SeqCst);
    let cut = Instant::now();
    // Keep ticks coming (every 50 ms real time, 250 ms of beat time) so that the cut-off
    // leader has something to fire at every moment until b takes over.
    step_until_leader(&b, &clock, &mut t, cut).await;
    eventually("a to know it does not lead", SOON, || async {
        (!a.status().leader).then_some(())
    })
    .await;
    let last_ok = spy
        .last_ok_claim_sent
        .lock()
        .unwrap()
        .expect("a renewed at least once");
    let calls = spy.fire_calls.lock().unwrap().clone();
    let late: Vec<_> = calls
        .iter()
        .filter(|(at, _)| *at >= last_ok + ttl)
        .collect();
    assert!(
        late.is_empty(),
        "a fired after its lease could have expired: {late:?}"
    );
    assert!(
        calls.iter().any(|(at, _)| *at > cut),
        "a did not keep firing while its lease was surely still valid"
    );
    for _ in 0..8 {
        t += millis(250);
        b.at(t).await;
    }
    let fired = fired_once(&*sb, "s").await;
    let expected: Vec<DateTime<Utc>> = (1..)
        .map(|k| utc(2025, 1, 1, 0, 0, 0) + secs(k))
        .take_while(|x| *x <= t)
        .collect();
    assert_eq!(
        fired, expected,
        "ticks lost or doubled across the lease loss"
    );
    b.stop().await;
    a.stop().await;
}

// ---------------------------------------------------------------------------------------
// Regressions
// ---------------------------------------------------------------------------------------

/// Never-fired catch-up gap (found by a chaos run): a brand-new schedule's leader dies
/// before the schedule's first tick; the tick due while it was dying (before the standby
/// could take over) was lost, because with no last-fired record there was "nothing to
/// catch up". It is owed since the schedule was armed, and caught up by policy.
#[tokio::test]
async fn beat_core_regression_never_fired_schedule_catches_up_the_tick_missed_in_a_takeover() {
    let (server, _broker) = redis().await;
    let cfg = config("  fresh: {task: noop, every: 60s}\n");
    let clock = ManualClock::new(utc(2025, 1, 1, 0, 0, 10));
    let sa: Arc<dyn BeatStore> = Arc::new(RedisBeatStore::new(connect(&server).await, "a"));
    let sb: Arc<dyn BeatStore> = Arc::new(RedisBeatStore::new(connect(&server).await, "b"));
    let a = start(cfg.clone(), sa.clone(), &clock, "a", SHORT_TTL);
    a.settle().await;
    let b = start(cfg.clone(), sb.clone(), &clock, "b", SHORT_TTL);
    a.at(utc(2025, 1, 1, 0, 0, 59)).await;
    assert!(fires_of(&*sa, "fresh").await.is_empty());
    // a dies one second before the first tick; b takes over 5 s after it.
    a.crash().await;
    clock.set(utc(2025, 1, 1, 0, 1, 5));
    b.settle().await;
    assert_eq!(
        fires_of(&*sb, "fresh").await,
        [("caught_up".to_string(), utc(2025, 1, 1, 0, 1, 0))]
    );
    b.at(utc(2025, 1, 1, 0, 2, 0)).await;
    assert_eq!(
        fired_once(&*sb, "fresh").await,
        [utc(2025, 1, 1, 0, 1, 0), utc(2025, 1, 1, 0, 2, 0)]
    );
    b.stop().await;
}

/// The other face of the same gap: the tick between loading the configuration and the
/// first wave (here the clock passes a tick before the loop first runs).
#[tokio::test]
async fn beat_core_regression_tick_between_config_load_and_first_wave_is_not_lost() {
    let store: Arc<dyn BeatStore> = Arc::new(MemoryBeatStore::new(MemoryBroker::new()));
    let cfg = config("  fresh: {task: noop, every: 60s}\n");
    let clock = ManualClock::new(utc(2025, 1, 1, 0, 0, 59) + millis(900));
    let beat = Beat::new(
        cfg,
        store.clone(),
        Arc::new(clock.clone()),
        BeatOptions {
            beat_id: "slow-start".into(),
            ..BeatOptions::default()
        },
    );
    let status = beat.status();
    // Loaded at 00:00:59.9; the loop starts at 00:01:00.4.
    clock.set(utc(2025, 1, 1, 0, 1, 0) + millis(400));
    let shutdown = CancellationToken::new();
    let (_tx, rx) = mpsc::channel(1);
    let task = tokio::spawn(beat.run(shutdown.clone(), rx));
    settle(&status, clock.now()).await;
    assert_eq!(
        fired_once(&*store, "fresh").await,
        [utc(2025, 1, 1, 0, 1, 0)]
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// A schedule removed by a reload and added back later must start afresh: the ticks of the
/// time it was absent are not caught up, neither by this beat nor by the next leader (the
/// last-fired record of the old schedule used to survive the removal in the store, so the
/// next takeover caught up the absent period as "missed").
#[tokio::test]
async fn beat_core_regression_removed_then_readded_schedule_does_not_catch_up_its_absence() {
    let (server, _broker) = redis().await;
    let with = config(
        "  keep: {task: noop, every: 10s}\n\
         \x20 back: {task: noop, every: 10s, misfire: {grace: 1h, catch_up: all, max: 1000}}\n",
    );
    let without = config("  keep: {task: noop, every: 10s}\n");
    let clock = ManualClock::new(utc(2025, 1, 1, 0, 0, 5));
    let sa: Arc<dyn BeatStore> = Arc::new(RedisBeatStore::new(connect(&server).await, "a"));
    let a = start(with.clone(), sa.clone(), &clock, "a", SHORT_TTL);
    a.settle().await;
    a.at(utc(2025, 1, 1, 0, 0, 10)).await;
    a.at(utc(2025, 1, 1, 0, 0, 20)).await;
    clock.set(utc(2025, 1, 1, 0, 0, 25));
    a.reload(without.clone()).await;
    // Absent for ten minutes.
    clock.set(utc(2025, 1, 1, 0, 10, 25));
    a.reload(with.clone()).await;
    assert_eq!(
        fired_once(&*sa, "back").await,
        [utc(2025, 1, 1, 0, 0, 10), utc(2025, 1, 1, 0, 0, 20)]
    );
    // a goes away before the re-added schedule fires; b takes over.
    a.stop().await;
    clock.set(utc(2025, 1, 1, 0, 10, 27));
    let sb: Arc<dyn BeatStore> = Arc::new(RedisBeatStore::new(connect(&server).await, "b"));
    let b = start(with.clone(), sb.clone(), &clock, "b", SHORT_TTL);
    b.settle().await;
    b.at(utc(2025, 1, 1, 0, 10, 30)).await;
    assert_eq!(
        fired_once(&*sb, "back").await,
        [
            utc(2025, 1, 1, 0, 0, 10),
            utc(2025, 1, 1, 0, 0, 20),
            utc(2025, 1, 1, 0, 10, 30)
        ],
        "ticks from while the schedule was removed were fired"
    );
    b.stop().await;
}

/// A reload adds a schedule on the leader, which dies before the schedule's first tick; the
/// standby that takes over has not reloaded yet (its file arrives later, or its watcher is
/// slower). When it reloads, the ticks the schedule is owed since the first leader armed it
/// are caught up by its misfire policy, as a takeover catches up the schedules it knows.
/// (They used to be lost: a reload only put the added schedule on the agenda from then.)
#[tokio::test]
async fn beat_core_schedule_added_before_a_takeover_is_caught_up_when_the_new_leader_reloads() {
    let (server, _broker) = redis().await;
    let before = config("  keep: {task: noop, every: 10s}\n");
    let after = config(
        "  keep: {task: noop, every: 10s}\n\
         \x20 new: {task: noop, every: 10s, misfire: {grace: 1h, catch_up: all, max: 100}}\n",
    );
    let clock = ManualClock::new(utc(2025, 1, 1, 0, 0, 5));
    let sa: Arc<dyn BeatStore> = Arc::new(RedisBeatStore::new(connect(&server).await, "a"));
    let a = start(before.clone(), sa.clone(), &clock, "a", SHORT_TTL);
    a.settle().await;
    clock.set(utc(2025, 1, 1, 0, 0, 7));
    a.reload(after.clone()).await;
    a.crash().await;
    clock.set(utc(2025, 1, 1, 0, 0, 35));
    let sb: Arc<dyn BeatStore> = Arc::new(RedisBeatStore::new(connect(&server).await, "b"));
    let b = start(before.clone(), sb.clone(), &clock, "b", SHORT_TTL);
    b.settle().await;
    assert!(fired_once(&*sb, "new").await.is_empty());
    clock.set(utc(2025, 1, 1, 0, 0, 36));
    b.reload(after.clone()).await;
    let owed = [
        utc(2025, 1, 1, 0, 0, 10),
        utc(2025, 1, 1, 0, 0, 20),
        utc(2025, 1, 1, 0, 0, 30),
    ];
    assert_eq!(fired_once(&*sb, "new").await, owed);
    // Then on time, and a schedule added afresh is owed nothing.
    b.at(utc(2025, 1, 1, 0, 0, 40)).await;
    let mut then = owed.to_vec();
    then.push(utc(2025, 1, 1, 0, 0, 40));
    assert_eq!(fired_once(&*sb, "new").await, then);
    let more = config(
        "  keep: {task: noop, every: 10s}\n\
         \x20 new: {task: noop, every: 10s, misfire: {grace: 1h, catch_up: all, max: 100}}\n\
         \x20 fresh: {task: noop, every: 10s, misfire: {grace: 1h, catch_up: all, max: 100}}\n",
    );
    clock.set(utc(2025, 1, 1, 0, 0, 45));
    b.reload(more).await;
    assert!(fired_once(&*sb, "fresh").await.is_empty());
    b.at(utc(2025, 1, 1, 0, 0, 50)).await;
    assert_eq!(fired_once(&*sb, "fresh").await, [utc(2025, 1, 1, 0, 0, 50)]);
    b.stop().await;
}

/// Same family as the removed-then-re-added case: a schedule whose timing changes by reload
/// starts its new timing at the reload; a takeover right after the change must not catch up
/// ticks of the NEW timing from before the change (the old last-fired record made them look
/// missed), while the leader that applied the reload never fires them.
#[tokio::test]
async fn beat_core_regression_timing_change_is_not_caught_up_from_before_the_change() {
    let (server, _broker) = redis().await;
    let hourly =
        config("  s: {task: noop, every: 60s, misfire: {grace: 10m, catch_up: all, max: 100}}\n");
    let fast =
        config("  s: {task: noop, every: 10s, misfire: {grace: 10m, catch_up: all, max: 100}}\n");
    let clock = ManualClock::new(utc(2025, 1, 1, 0, 0, 30));
    let sa: Arc<dyn BeatStore> = Arc::new(RedisBeatStore::new(connect(&server).await, "a"));
    let a = start(hourly.clone(), sa.clone(), &clock, "a", SHORT_TTL);
    a.settle().await;
    a.at(utc(2025, 1, 1, 0, 1, 0)).await;
    clock.set(utc(2025, 1, 1, 0, 1, 35));
    a.reload(fast.clone()).await;
    a.stop().await;
    clock.set(utc(2025, 1, 1, 0, 1, 37));
    let b = start(fast.clone(), sa.clone(), &clock, "b", SHORT_TTL);
    b.settle().await;
    b.at(utc(2025, 1, 1, 0, 1, 40)).await;
    assert_eq!(
        fired_once(&*sa, "s").await,
        [utc(2025, 1, 1, 0, 1, 0), utc(2025, 1, 1, 0, 1, 40)],
        "ticks of the new timing from before the reload were caught up"
    );
    b.stop().await;
}

/// Guard for the never-fired fix: when the store lost everything (Redis restarted without
/// persistence), a schedule with neither a last-fired nor an armed record counts as new; the
/// leader must not "catch up" the ticks it fired itself before the loss.
#[tokio::test]
async fn beat_core_store_that_lost_its_data_does_not_make_the_leader_refire_ticks() {
    let (server, _broker) = redis().await;
    let cfg =
        config("  s: {task: noop, every: 1s, misfire: {grace: 30s, catch_up: all, max: 100}}\n");
    let clock = ManualClock::new(utc(2025, 1, 1, 0, 0, 0) + millis(500));
    let spy = Spy::new(Arc::new(RedisBeatStore::new(connect(&server).await, "a")));
    let a = start(cfg, spy.clone(), &clock, "a", SHORT_TTL);
    a.settle().await;
    let mut t = clock.now();
    for _ in 0..5 {
        t += secs(1);
        a.at(t).await;
    }
    let _: () = redis::cmd("FLUSHALL")
        .query(&mut server.connection())
        .unwrap();
    for _ in 0..5 {
        t += secs(1);
        a.at(t).await;
    }
    let fired = spy.fired.lock().unwrap().clone();
    let unique: BTreeSet<&(String, DateTime<Utc>)> = fired.iter().collect();
    assert_eq!(unique.len(), fired.len(), "a tick fired twice: {fired:?}");
    assert!(fired.len() >= 8, "{fired:?}");
    a.stop().await;
}

/// `celeriac run`'s store: paused ticks are skipped and journaled like on Redis (the memory
/// store used to journal fires only, not its paused and overlap decisions).
#[tokio::test]
async fn beat_core_paused_schedule_on_the_memory_store_skips_and_journals_ticks() {
    let mem = Arc::new(MemoryBeatStore::new(MemoryBroker::new()));
    let store: Arc<dyn BeatStore> = mem.clone();
    let cfg = config("  p: {task: noop, every: 10s}\n");
    let clock = ManualClock::new(utc(2025, 1, 1, 0, 0, 5));
    let beat = start(cfg, store.clone(), &clock, "m", Duration::from_secs(10));
    beat.settle().await;
    beat.at(utc(2025, 1, 1, 0, 0, 10)).await;
    mem.set_paused("p", true);
    beat.at(utc(2025, 1, 1, 0, 0, 20)).await;
    mem.set_paused("p", false);
    beat.at(utc(2025, 1, 1, 0, 0, 30)).await;
    let events: Vec<String> = journal(&*store)
        .await
        .into_iter()
        .filter(|e| e.schedule.as_deref() == Some("p"))
        .map(|e| format!("{}@{}", e.event, e.nominal.unwrap().format("%S")))
        .collect();
    assert_eq!(events, ["fired@10", "paused@20", "fired@30"]);
    assert_eq!(beat.status().skipped, 1);
    beat.stop().await;
}

/// The wall clock jumps a day forward under a leading beat whose lease is still valid (an
/// NTP step, a resumed VM): the missed ticks of a 1 s interval are dropped in bulk, as one
/// journal entry, not popped, journaled and logged one by one (86,400 of them here, which
/// kept the loop busy for more than 15 s); the next tick fires on time.
#[tokio::test]
async fn beat_core_regression_wall_clock_jump_drops_missed_ticks_in_bulk() {
    let (_server, broker) = redis().await;
    let cfg = config("  s: {task: noop, every: 1s, misfire: {grace: 5s}}\n");
    let store: Arc<dyn BeatStore> = Arc::new(RedisBeatStore::new(broker.clone(), "jump"));
    let t0 = utc(2025, 1, 1, 0, 0, 0) + millis(500);
    let clock = ManualClock::new(t0);
    let beat = start(cfg, store.clone(), &clock, "jump", Duration::from_secs(10));
    beat.settle().await;
    beat.at(t0 + secs(2)).await;
    let jumped = t0 + chrono::Duration::days(1);
    beat.at(jumped).await;
    beat.at(jumped + secs(1)).await;
    let j = journal(&*store).await;
    let misfired: Vec<&JournalEntry> = j.iter().filter(|e| e.event == "misfired").collect();
    assert_eq!(
        misfired.len(),
        1,
        "{} misfired entries for one jump",
        misfired.len()
    );
    // 86,393 ticks were dropped, counted up to the enumeration bound.
    assert!(
        misfired.iter().any(|e| e
            .detail
            .starts_with("at least 10000 missed tick(s) not fired (from ")),
        "{misfired:#?}"
    );
    // Fired: the 2 ticks before the jump, the 5 within the 5 s grace at the jump
    // (00:00:00.5 + 1 day - 5 s = 23:59:55.5: 56, 57, 58, 59 and 00:00:00), the next one.
    let fired = fired_once(&*store, "s").await;
    assert_eq!(fired.len(), 2 + 5 + 1, "{fired:?}");
    assert_eq!(fired.last(), Some(&(utc(2025, 1, 2, 0, 0, 1))));
    assert_eq!(beat.status().misfired, 10_000);
    // A smaller jump (30 s) is counted exactly, with its range.
    beat.at(jumped + secs(31)).await;
    let j = journal(&*store).await;
    let last = j.iter().rfind(|e| e.event == "misfired").unwrap();
    assert_eq!(
        last.detail,
        "25 missed tick(s) not fired (from 2025-01-02T00:00:02+00:00 to \
         2025-01-02T00:00:26+00:00; late beyond their grace of 5s)"
    );
    assert_eq!(last.nominal, Some(utc(2025, 1, 2, 0, 0, 26)));
    assert_eq!(fired_once(&*store, "s").await.len(), 2 + 5 + 1 + 5);
    assert_eq!(beat.status().misfired, 10_000 + 25);
    beat.stop().await;
}

/// The leader's renewals are delayed past its lease (a stalled client): it must not fire
/// once the lease it last renewed can have expired, even when a late renewal answers, and
/// the other beat fires each tick once.
#[tokio::test]
async fn beat_core_leader_whose_renewals_are_delayed_past_the_lease_stops_firing() {
    let LeaderAndStandby {
        server: _server,
        clock,
        ttl,
        spy,
        a,
        sb,
        b,
        mut t,
    } = leader_and_standby().await;
    *spy.claim_delay.lock().unwrap() = Duration::from_millis(3000);
    let cut = Instant::now();
    step_until_leader(&b, &clock, &mut t, cut).await;
    // Keep ticks coming while a's delayed renewals come back.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        t += millis(250);
        clock.set(t);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    *spy.claim_delay.lock().unwrap() = Duration::ZERO;
    let fired_by_a = spy.fired.lock().unwrap().clone();
    let calls = spy.fire_calls.lock().unwrap().clone();
    let renewals = spy.renewals.lock().unwrap().clone();
    // Every fire call a made was sent while a lease it had won or renewed (the claim sent
    // at most a ttl before) was surely still valid.
    let stale: Vec<_> = calls
        .iter()
        .filter(|(at, _)| !renewals.iter().any(|r| r <= at && *at < *r + ttl))
        .collect();
    assert!(
        stale.is_empty(),
        "a fired after its lease could have expired: {stale:?}"
    );
    assert!(
        calls.iter().any(|(at, _)| *at > cut),
        "a never fired after the stall began"
    );
    b.at(t + millis(250)).await;
    let fired = fired_once(&*sb, "s").await;
    let last = *fired.last().unwrap();
    let expected: Vec<DateTime<Utc>> = (1..)
        .map(|k| utc(2025, 1, 1, 0, 0, 0) + secs(k))
        .take_while(|x| *x <= last)
        .collect();
    assert_eq!(
        fired, expected,
        "ticks lost or doubled across the stalled renewals"
    );
    // What a reported as fired is part of that once-each sequence.
    assert!(fired_by_a.iter().all(|(_, n)| expected.contains(n)));
    b.stop().await;
    a.stop().await;
}

/// Several due ticks of one `overlap: skip` schedule in one wave (the loop fell a few ticks
/// behind, within grace): the first fires and the others are skipped, since the first one's
/// message is queued. Both stores write a batch's messages only after deciding all of it
/// (the memory store enqueues after its loop; the Redis fire script writes the bodies in one
/// command at the end), so their overlap checks did not see the batch's own messages: all
/// fired.
async fn overlap_skip_within_one_wave(store: Arc<dyn BeatStore>) {
    let cfg = config("  s: {task: noop, every: 1s, overlap: skip, misfire: {grace: 10s}}\n");
    let clock = ManualClock::new(utc(2025, 1, 1, 0, 0, 0) + millis(500));
    let beat = start(cfg, store.clone(), &clock, "w", Duration::from_secs(10));
    beat.settle().await;
    beat.at(utc(2025, 1, 1, 0, 0, 3) + millis(500)).await;
    let mut entries: Vec<JournalEntry> = journal(&*store)
        .await
        .into_iter()
        .filter(|e| e.schedule.as_deref() == Some("s"))
        .collect();
    // (The Redis store journals a batch's routine fires after its other decisions.)
    entries.sort_by_key(|e| e.nominal);
    let decided: Vec<String> = entries
        .iter()
        .map(|e| format!("{}@{}", e.event, e.nominal.unwrap().format("%S")))
        .collect();
    assert_eq!(
        decided,
        ["fired@01", "skipped_overlap@02", "skipped_overlap@03"]
    );
    beat.stop().await;
}

#[tokio::test]
async fn beat_core_regression_overlap_skip_within_one_wave_memory() {
    overlap_skip_within_one_wave(Arc::new(MemoryBeatStore::new(MemoryBroker::new()))).await;
}

#[tokio::test]
async fn beat_core_regression_overlap_skip_within_one_wave_redis() {
    let (_server, broker) = redis().await;
    overlap_skip_within_one_wave(Arc::new(RedisBeatStore::new(broker, "w"))).await;
}

/// Fires that hit a transient error are retried (the store dedupes), but not for a schedule
/// that a reload removed meanwhile: its pending tick used to fire after the removal.
#[tokio::test]
async fn beat_core_regression_pending_retry_of_a_removed_schedule_is_dropped() {
    let mem = Arc::new(MemoryBeatStore::new(MemoryBroker::new()));
    let spy = Spy::new(mem.clone());
    let both = config("  stay: {task: noop, every: 10s}\n  gone: {task: noop, every: 10s}\n");
    let clock = ManualClock::new(utc(2025, 1, 1, 0, 0, 5));
    let beat = start(both, spy.clone(), &clock, "p", SHORT_TTL);
    beat.settle().await;
    spy.fires_fail.store(true, Ordering::SeqCst);
    clock.set(utc(2025, 1, 1, 0, 0, 10));
    eventually("a failed fire", SOON, || async {
        (!spy.fire_calls.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    beat.reloads
        .send(ReloadEvent::Changed(config(
            "  stay: {task: noop, every: 10s}\n",
        )))
        .await
        .unwrap();
    eventually("the reload", SOON, || async {
        (beat.status().reloads == 1).then_some(())
    })
    .await;
    spy.fires_fail.store(false, Ordering::SeqCst);
    beat.settle().await;
    let fired: Vec<(String, DateTime<Utc>)> = spy.fired.lock().unwrap().clone();
    assert_eq!(fired, [("stay".to_string(), utc(2025, 1, 1, 0, 0, 10))]);
    beat.stop().await;
}

/// A takeover after downtime where every one of many schedules missed ticks beyond its
/// grace: each gets a "misfired" journal entry. Writing them one round trip at a time kept
/// the loop from renewing its lease (20,000 schedules: seconds) before the catch-up fired.
#[tokio::test]
async fn beat_core_takeover_journaling_many_misfires_is_quick() {
    let (_server, broker) = redis().await;
    let n = 20_000;
    let mut yaml = String::new();
    for i in 0..n {
        yaml.push_str(&format!(
            "  s{i:05}: {{task: noop, every: 10s, misfire: {{grace: 5s}}}}\n"
        ));
    }
    let cfg = config(&yaml);
    let store: Arc<dyn BeatStore> = Arc::new(RedisBeatStore::new(broker.clone(), "m"));
    let clock = ManualClock::new(utc(2025, 1, 1, 0, 0, 5));
    let a = start(
        cfg.clone(),
        store.clone(),
        &clock,
        "a",
        Duration::from_secs(10),
    );
    a.settle().await;
    a.at(utc(2025, 1, 1, 0, 0, 10)).await;
    a.stop().await;
    clock.set(utc(2025, 1, 1, 0, 1, 3));
    let started = Instant::now();
    let b = start(
        cfg.clone(),
        store.clone(),
        &clock,
        "b",
        Duration::from_secs(10),
    );
    b.settle().await;
    let took = started.elapsed();
    // Ticks 20..50 dropped (60 caught up by `latest`), once: the takeover was not repeated.
    assert_eq!(b.status().misfired, 4 * n as u64);
    assert!(
        took < SOON,
        "takeover with {n} misfire entries took {took:?}"
    );
    // a held epoch 1; b took over once (a lost lease would have meant another epoch).
    assert_eq!(
        b.status().epoch,
        2,
        "leadership flapped during the takeover"
    );
    eprintln!("takeover with {n} misfire entries took {took:?}");
    b.stop().await;
}

/// A fire for a store-level test: a message on `queue` at `priority`.
fn store_fire(schedule: &str, nominal: DateTime<Utc>, queue: &str, priority: u8) -> Fire {
    let id = celeriac::beat::store::fire_id(schedule, nominal);
    Fire {
        schedule: schedule.to_string(),
        nominal,
        message: TaskMessage::new("noop", queue)
            .with_priority(priority)
            .with_fire(schedule, id),
        overlap_skip: false,
        catch_up: false,
    }
}

/// The Redis store keeps one record per schedule (`beat:last`: the last decided tick, then
/// the last message): batches mixing queues, priorities and instants land each fire on its
/// own queue with its own record; `disarm` (a removed or retimed schedule) drops when it was
/// armed and keeps its record, which still refuses its old ticks.
#[tokio::test]
async fn beat_core_redis_store_records_last_tick_and_message_in_one_record() {
    let (_server, broker) = redis().await;
    let store = RedisBeatStore::new(broker.clone(), "rec");
    let Claim::Acquired { epoch } = store.claim("tok", Duration::from_secs(10)).await.unwrap()
    else {
        panic!("a fresh store's lease is free");
    };
    let leader = LeaderToken {
        token: "tok".into(),
        epoch,
    };
    let t0 = utc(2025, 1, 1, 0, 0, 0);
    let t1 = t0 + secs(60);
    // Runs of equal parameters, then different queue, priority and instant, then the same
    // schedule twice in one batch (the newer tick wins the record).
    let fires = vec![
        store_fire("a", t0, "default", 5),
        store_fire("b", t0, "default", 5),
        store_fire("c", t0, "urgent", 9),
        store_fire("d", t1, "default", 5),
        store_fire("d", t1 + secs(60), "default", 5),
    ];
    let out = store.fire(&leader, &fires).await.unwrap();
    assert_eq!(out, vec![FireOutcome::Fired; 5]);
    let names: Vec<String> = ["a", "b", "c", "d", "never"].map(String::from).to_vec();
    let last = store.last_fired(&names).await.unwrap();
    assert_eq!(
        last,
        vec![Some(t0), Some(t0), Some(t0), Some(t1 + secs(60)), None]
    );
    let msgs = store.last_messages(&names).await.unwrap();
    let c = msgs[2].as_ref().expect("c has a message");
    assert_eq!(c.queue, "urgent");
    assert_eq!(c.id, fires[2].message.id);
    assert_eq!(c.nominal, Some(t0));
    assert_eq!(msgs[3].as_ref().unwrap().id, fires[4].message.id);
    assert!(msgs[4].is_none());
    assert_eq!(queued(&broker, "default").await.len(), 4);
    assert_eq!(queued(&broker, "urgent").await.len(), 1);
    // Workers take them in the order they were fired: "a" and "b" share a run (instant, queue,
    // priority) and so a ready score, ordered by their ids (UUID v7: creation order).
    let ready = ready_ids(&broker, "default").await;
    let fired_order: Vec<String> = [0, 1, 3, 4].map(|i| fires[i].message.id.clone()).to_vec();
    assert_eq!(ready, fired_order);
    // The journal has one "fired" entry per fire, with its message and queue (the batch's
    // entry as the beat built it: every fire was routine).
    let fired_entries = |journal: Vec<JournalEntry>| -> BTreeSet<(String, String, String)> {
        journal
            .into_iter()
            .filter(|e| e.event == "fired")
            .map(|e| (e.schedule.unwrap(), e.fire_id.unwrap(), e.detail))
            .collect()
    };
    let expected: BTreeSet<(String, String, String)> = fires
        .iter()
        .map(|f| {
            (
                f.schedule.clone(),
                f.message.fire_id.clone().unwrap(),
                format!("message {} on {}", f.message.id, f.message.queue),
            )
        })
        .collect();
    let journal = store.read_journal(None, 100).await.unwrap();
    assert_eq!(fired_entries(journal), expected);
    // Again (under new message ids, as the beat retries): every tick was decided already,
    // and the bodies written for the refused messages are gone again.
    let mut retried = fires.clone();
    retried.iter_mut().for_each(|f| f.renew_id(None));
    let again = store.fire(&leader, &retried).await.unwrap();
    assert_eq!(again, vec![FireOutcome::AlreadyFired; 5]);
    assert_eq!(queued(&broker, "default").await.len(), 4);
    assert_eq!(queued(&broker, "urgent").await.len(), 1);
    // Not the leader (a stale epoch): nothing fires, no body stays.
    let stale = LeaderToken {
        token: "tok".into(),
        epoch: epoch + 1,
    };
    let t9 = t0 + secs(3600);
    let refused = store
        .fire(
            &stale,
            &[
                store_fire("a", t9, "default", 5),
                store_fire("z", t9, "urgent", 9),
            ],
        )
        .await
        .unwrap();
    assert_eq!(refused, vec![FireOutcome::NotLeader; 2]);
    assert_eq!(queued(&broker, "default").await.len(), 4);
    assert_eq!(queued(&broker, "urgent").await.len(), 1);
    // A batch where only some fire: the script writes the lines of those (not the beat's).
    let mixed = vec![
        store_fire("a", t0, "default", 5),
        store_fire("e", t1, "urgent", 9),
        store_fire("b", t0, "default", 5),
    ];
    let out = store.fire(&leader, &mixed).await.unwrap();
    assert_eq!(
        out,
        vec![
            FireOutcome::AlreadyFired,
            FireOutcome::Fired,
            FireOutcome::AlreadyFired
        ]
    );
    let newest = store.read_journal(None, 1).await.unwrap();
    assert_eq!(
        fired_entries(newest),
        BTreeSet::from([(
            "e".to_string(),
            mixed[1].message.fire_id.clone().unwrap(),
            format!("message {} on urgent", mixed[1].message.id)
        )])
    );

    // Paused: the tick is decided (recorded) but the last message stays the previous one.
    store.set_paused("a", true).await.unwrap();
    let paused = store
        .fire(&leader, &[store_fire("a", t1, "default", 5)])
        .await
        .unwrap();
    assert_eq!(paused, vec![FireOutcome::Paused]);
    assert_eq!(
        queued(&broker, "default").await.len(),
        4,
        "no body for a paused tick"
    );
    assert_eq!(store.last_fired(&names[..1]).await.unwrap(), vec![Some(t1)]);
    let a = store
        .last_messages(&names[..1])
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    assert_eq!(
        (a.id.as_str(), a.nominal),
        (fires[0].message.id.as_str(), Some(t0))
    );
    store.set_paused("a", false).await.unwrap();

    // Disarmed: no armed instant any more (arming again takes the new one), the record kept;
    // the old tick is still refused, a new one fires.
    let since = t0 - secs(3600);
    store.arm(&names[..2], since).await.unwrap();
    store.arm(&names[..2], t1).await.unwrap();
    assert_eq!(
        store.armed(&names[..2]).await.unwrap(),
        vec![Some(since), Some(since)],
        "arming keeps the first instant"
    );
    store.disarm(&names[..2]).await.unwrap();
    assert_eq!(store.armed(&names[..2]).await.unwrap(), vec![None, None]);
    store.arm(&names[..1], t1).await.unwrap();
    assert_eq!(store.armed(&names[..1]).await.unwrap(), vec![Some(t1)]);
    assert_eq!(
        store.last_fired(&names[..2]).await.unwrap(),
        vec![Some(t1), Some(t0)]
    );
    let kept = store.last_messages(&names[..2]).await.unwrap();
    assert_eq!(kept[0].as_ref().unwrap().id, fires[0].message.id);
    assert_eq!(kept[1].as_ref().unwrap().id, fires[1].message.id);
    let after = store
        .fire(
            &leader,
            &[
                store_fire("b", t0, "default", 5),
                store_fire("b", t1, "default", 5),
            ],
        )
        .await
        .unwrap();
    assert_eq!(after, vec![FireOutcome::AlreadyFired, FireOutcome::Fired]);
    assert_eq!(
        store.last_fired(&names[1..2]).await.unwrap(),
        vec![Some(t1)]
    );
}
