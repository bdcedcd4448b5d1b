//! Big waves: thousands of ticks due at once are fired in waves, with the leader lease renewed
//! between them, so a wave that takes longer than the lease never loses leadership half-way
//! (which dropped the rest of a 1,000,000-schedule wave before).

use std::sync::Arc;
use std::time::Duration;

use celeriac::beat::redis_store::RedisBeatStore;
use celeriac::beat::store::{BeatStore, Fire, FireOutcome, LeaderToken};
use celeriac::beat::{Beat, BeatError, BeatOptions};
use celeriac::broker::{Broker, BrokerError, RedisBroker};
use celeriac::config::Config;
use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::redis_server::RedisServer;
use crate::util::{Hooked, StoreHooks};

/// The Redis store, with each fire call slowed down by `per_fire` per tick (a busy Redis),
/// and the fire calls numbered in `fail_calls` (from 0) failing as if the connection dropped
/// after Redis ran them (`applied`) or before.
struct SlowStore {
    inner: RedisBeatStore,
    per_fire: Duration,
    fail_calls: Vec<usize>,
    applied: bool,
    calls: std::sync::atomic::AtomicUsize,
}

impl SlowStore {
    fn new(inner: RedisBeatStore, per_fire: Duration) -> Self {
        SlowStore {
            inner,
            per_fire,
            fail_calls: Vec::new(),
            applied: false,
            calls: Default::default(),
        }
    }
}

#[async_trait::async_trait]
impl StoreHooks for SlowStore {
    fn inner(&self) -> &dyn BeatStore {
        &self.inner
    }
    async fn fire(
        &self,
        leader: &LeaderToken,
        fires: &[Fire],
    ) -> Result<Vec<FireOutcome>, BrokerError> {
        let call = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(self.per_fire * fires.len() as u32).await;
        if self.fail_calls.contains(&call) {
            if self.applied {
                self.inner.fire(leader, fires).await?;
            }
            return Err(BrokerError::ConnectionLost(format!(
                "test: fire call {call}"
            )));
        }
        self.inner.fire(leader, fires).await
    }
}

/// A configuration of `n` minute crons, all due at the same instants.
fn minute_crons(n: usize) -> Config {
    let mut yaml =
        String::from("queues:\n  default: {}\ntasks:\n  noop: {builtin: noop}\nschedules:\n");
    for i in 0..n {
        yaml.push_str(&format!("  s{i}: {{cron: '* * * * *', task: noop}}\n"));
    }
    celeriac::config::load_str(&yaml, std::path::Path::new("w.yaml")).unwrap()
}

/// Runs a beat (waves of 20) on a manual clock set just before a minute boundary, then moves
/// the clock 100 ms past it. Cancel the token to stop the beat, then await the task.
async fn run_past_a_boundary(
    cfg: Config,
    store: Arc<Hooked<SlowStore>>,
    lease_ttl: Duration,
) -> (CancellationToken, JoinHandle<Result<(), BeatError>>) {
    let boundary =
        DateTime::from_timestamp((Utc::now().timestamp() / 60 + 1) * 60, 0).expect("in range");
    let clock = Arc::new(celeriac::clock::ManualClock::new(
        boundary - chrono::Duration::milliseconds(200),
    ));
    let beat = Beat::new(
        Arc::new(cfg),
        store,
        clock.clone(),
        BeatOptions {
            lease_ttl,
            beat_id: "w".into(),
            wave_limit: 20,
            ..BeatOptions::default()
        },
    );
    let shutdown = CancellationToken::new();
    let (reload_tx, reloads) = tokio::sync::mpsc::channel(1);
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let _reload_source = reload_tx;
        beat.run(stop, reloads).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    clock.set(boundary + chrono::Duration::milliseconds(100));
    (shutdown, task)
}

/// Waits until the default queue holds `n` ready messages; `Err(count)` after 30 s.
async fn ready_reaches(broker: &RedisBroker, n: u64) -> Result<(), u64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = broker.queue_stats("default").await.unwrap().ready_total();
        if ready >= n {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(ready);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wave_longer_than_the_lease_keeps_leadership_and_fires_every_tick() {
    let server = RedisServer::start();
    let broker = crate::beat_core::connect(&server).await;
    // 300 minute crons due at the same instant; firing them takes 300 x 10 ms = 3 s, three
    // times the 1 s lease.
    let store = Arc::new(Hooked(SlowStore::new(
        RedisBeatStore::new(broker.clone(), "w"),
        Duration::from_millis(10),
    )));
    let (shutdown, task) =
        run_past_a_boundary(minute_crons(300), store.clone(), Duration::from_secs(1)).await;
    if let Err(ready) = ready_reaches(&broker, 300).await {
        panic!(
            "only {ready} of 300 ticks fired; journal: {:?}",
            store.read_journal(None, 50).await
        );
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let journal = store.read_journal(None, 10_000).await.unwrap();
    let lost: Vec<_> = journal
        .iter()
        .filter(|e| e.event == "leader_lost" && e.detail != "beat stopped; lease released")
        .collect();
    assert!(lost.is_empty(), "leadership lost during the wave: {lost:?}");
    let acquired = journal
        .iter()
        .filter(|e| e.event == "leader_acquired")
        .count();
    assert_eq!(acquired, 1, "one leadership for the whole wave");
    let fired = journal.iter().filter(|e| e.event == "fired").count();
    assert_eq!(fired, 300);
    let stats = broker.queue_stats("default").await.unwrap();
    assert_eq!(stats.ready_total(), 300, "a tick fired twice");
}

/// Waves are pipelined (the next one is sent while the previous one is in Redis): when
/// calls of both fail on the way (some after Redis ran them, some before), every tick is
/// still fired exactly once, by the retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_waves_that_fail_midway_fire_every_tick_once() {
    for applied in [false, true] {
        let server = RedisServer::start();
        let broker = crate::beat_core::connect(&server).await;
        // Waves of 20 (the first one too: the first-wave size is 1,000). Calls 0 and 1 are
        // the first two waves, both in flight at once (the second is sent before the first
        // one's answer is in); call 4 fails later on.
        let mut slow = SlowStore::new(
            RedisBeatStore::new(broker.clone(), "w"),
            Duration::from_millis(2),
        );
        slow.fail_calls = vec![0, 1, 4];
        slow.applied = applied;
        let store = Arc::new(Hooked(slow));
        // Retries of failed waves come with the loop's wake-ups (lease renewals).
        let (shutdown, task) =
            run_past_a_boundary(minute_crons(200), store.clone(), Duration::from_secs(2)).await;
        if let Err(ready) = ready_reaches(&broker, 200).await {
            panic!("applied={applied}: only {ready} of 200 ticks fired");
        }
        // Give stray retries time to show up, then count.
        tokio::time::sleep(Duration::from_millis(500)).await;
        shutdown.cancel();
        task.await.unwrap().unwrap();
        assert!(
            store.calls.load(std::sync::atomic::Ordering::SeqCst) > 10,
            "the failing calls were retried"
        );
        let stats = broker.queue_stats("default").await.unwrap();
        assert_eq!(
            stats.ready_total(),
            200,
            "applied={applied}: a tick fired twice"
        );
        // Every ready message has its body, and no body is left without its message (the
        // retries went under new ids, so deleting the refused ones' bodies lost nothing).
        let ready = crate::beat_core::ready_ids(&broker, "default").await;
        let bodies: Vec<String> = redis::from_redis_value(
            broker
                .command(redis::cmd("HKEYS").arg(format!("{}{{q:default}}:msg", broker.prefix())))
                .await
                .unwrap(),
        )
        .unwrap();
        let ready: std::collections::BTreeSet<String> = ready.into_iter().collect();
        let bodies: std::collections::BTreeSet<String> = bodies.into_iter().collect();
        assert_eq!(
            ready, bodies,
            "applied={applied}: bodies and ready messages differ"
        );
        let journal = store.read_journal(None, 10_000).await.unwrap();
        let fired: std::collections::BTreeSet<_> = journal
            .iter()
            .filter(|e| e.event == "fired")
            .filter_map(|e| e.schedule.clone())
            .collect();
        assert_eq!(fired.len(), 200, "applied={applied}: every schedule fired");
    }
}
