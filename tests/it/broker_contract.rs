//! The broker contract: one set of behaviours, run against every [`Broker`] implementation.
//!
//! Each behaviour is an `async fn(Env)`; the `contract!` macro at the bottom turns each into a
//! test per flavour (`broker_contract::memory::NAME`, `broker_contract::redis::NAME`, the latter
//! on a private redis-server). Timing assertions are generous: the machine is shared.

use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac::broker::{
    Broker, BrokerError, DeadSelector, Delivery, MemoryBroker, RedisBroker, RedisBrokerOptions,
    TaskMessage, TaskResult, TaskStatus,
};
use chrono::Utc;
use serde_json::json;

use crate::redis_server::RedisServer;

/// A broker under test, with the hooks the contract needs.
pub struct Env {
    pub broker: Arc<dyn Broker>,
    memory: Option<MemoryBroker>,
    redis: Option<(RedisServer, Arc<RedisBroker>)>,
}

impl Env {
    pub fn memory() -> Env {
        let m = MemoryBroker::new();
        Env {
            broker: Arc::new(m.clone()),
            memory: Some(m),
            redis: None,
        }
    }

    pub async fn redis() -> Env {
        let server = RedisServer::start();
        let broker = Arc::new(
            RedisBroker::connect(&server.url(), RedisBrokerOptions::default())
                .await
                .expect("connect to private redis"),
        );
        Env {
            broker: broker.clone(),
            memory: None,
            redis: Some((server, broker)),
        }
    }

    /// Stores a raw body as a ready message, bypassing the enqueue API.
    fn push_raw(&self, queue: &str, id: &str, priority: u8, body: &[u8]) {
        if let Some(m) = &self.memory {
            m.enqueue_raw(queue, id, priority, body.to_vec()).unwrap();
        }
        if let Some((server, broker)) = &self.redis {
            // By hand, the way a foreign or buggy producer might: body and ready entry only.
            let k = broker.queue_keys(queue);
            let mut c = server.connection();
            let score = (9 - u64::from(priority)) * (1u64 << 44) + 1_000_000;
            ::redis::pipe()
                .hset(&k.msg, id, body)
                .zadd(&k.ready, id, score)
                .exec(&mut c)
                .unwrap();
        }
    }
}

fn msg(queue: &str, priority: u8) -> TaskMessage {
    TaskMessage::new("noop", queue).with_priority(priority)
}

fn qs(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

const LONG: Duration = Duration::from_secs(30);

async fn reserve(env: &Env, queues: &[&str], max: usize, wait: Duration) -> Vec<Delivery> {
    env.broker
        .reserve(&qs(queues), max, LONG, wait)
        .await
        .expect("reserve")
}

fn ids(ds: &[Delivery]) -> Vec<String> {
    ds.iter().map(|d| d.id().to_string()).collect()
}

pub async fn priority_wins_across_queues(env: Env) {
    let b = &env.broker;
    b.enqueue_many(&[msg("a", 1), msg("a", 5)]).await.unwrap();
    b.enqueue_many(&[msg("b", 9), msg("b", 3)]).await.unwrap();
    b.enqueue(&msg("c", 5)).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..5 {
        let d = reserve(&env, &["a", "b", "c"], 1, Duration::ZERO).await;
        assert_eq!(d.len(), 1);
        seen.push(d[0].priority);
    }
    assert_eq!(seen, vec![9, 5, 5, 3, 1]);

    // The same in one batch: a batch never takes a lower priority while a higher one waits.
    b.enqueue_many(&[
        msg("a", 2),
        msg("a", 0),
        msg("b", 7),
        msg("c", 4),
        msg("c", 8),
    ])
    .await
    .unwrap();
    let batch = reserve(&env, &["a", "b", "c"], 10, Duration::ZERO).await;
    let prios: Vec<u8> = batch.iter().map(|d| d.priority).collect();
    assert_eq!(prios, vec![8, 7, 4, 2, 0]);
    assert_eq!(batch[0].lease.queue, "c");
    assert_eq!(batch[1].lease.queue, "b");
}

pub async fn fifo_within_a_priority(env: Env) {
    let mut sent = Vec::new();
    for i in 0..5 {
        let m = msg("q", 4).with_args(json!([i]));
        sent.push(m.id.clone());
        env.broker.enqueue(&m).await.unwrap();
    }
    let batch: Vec<TaskMessage> = (5..20).map(|i| msg("q", 4).with_args(json!([i]))).collect();
    sent.extend(batch.iter().map(|m| m.id.clone()));
    env.broker.enqueue_many(&batch).await.unwrap();
    // A higher priority enqueued last still comes first.
    let urgent = msg("q", 6);
    env.broker.enqueue(&urgent).await.unwrap();

    let mut got = Vec::new();
    loop {
        let d = reserve(&env, &["q"], 7, Duration::ZERO).await;
        if d.is_empty() {
            break;
        }
        got.extend(ids(&d));
    }
    assert_eq!(got[0], urgent.id);
    assert_eq!(got[1..], sent[..]);
}

pub async fn eta_and_countdown_delay_delivery(env: Env) {
    let later = msg("q", 5).with_countdown(Duration::from_millis(600));
    let past = msg("q", 5).with_eta(Utc::now() - chrono::Duration::seconds(5));
    env.broker
        .enqueue_many(&[later.clone(), past.clone()])
        .await
        .unwrap();
    let stats = env.broker.queue_stats("q").await.unwrap();
    assert_eq!((stats.delayed, stats.ready_total()), (1, 1));

    let now = reserve(&env, &["q"], 10, Duration::ZERO).await;
    assert_eq!(
        ids(&now),
        vec![past.id.clone()],
        "an eta in the past is ready at once"
    );

    let start = Instant::now();
    let d = reserve(&env, &["q"], 10, Duration::from_secs(5)).await;
    assert_eq!(ids(&d), vec![later.id.clone()]);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(400),
        "delivered early: {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "woke late: {waited:?}");
    assert_eq!(d[0].message().unwrap().eta, later.eta);
}

pub async fn expired_lease_is_redelivered_with_attempt_plus_one(env: Env) {
    let m = msg("q", 5);
    env.broker.enqueue(&m).await.unwrap();
    let first = env
        .broker
        .reserve(&qs(&["q"]), 1, Duration::from_millis(300), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(first[0].attempt, 0);
    assert_eq!(first[0].message().unwrap().attempt, 0);

    let start = Instant::now();
    let again = reserve(&env, &["q"], 1, Duration::from_secs(5)).await;
    assert_eq!(ids(&again), vec![m.id.clone()]);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(again[0].attempt, 1);
    assert_eq!(again[0].message().unwrap().attempt, 1);
    assert_eq!(again[0].last_error.as_deref(), Some("lease expired"));

    // The first holder lost its lease: it can no longer ack, extend or retry.
    assert!(!env.broker.ack(&first[0].lease).await.unwrap());
    let ext = env
        .broker
        .extend_lease(&[first[0].lease.clone()], LONG)
        .await
        .unwrap();
    assert_eq!(ext, vec![false]);
    assert!(
        !env.broker
            .dead_letter(&first[0].lease, "stale")
            .await
            .unwrap()
    );
    assert!(env.broker.ack(&again[0].lease).await.unwrap());
    assert_eq!(
        env.broker.queue_stats("q").await.unwrap(),
        Default::default()
    );
}

pub async fn extending_a_lease_prevents_redelivery(env: Env) {
    env.broker.enqueue(&msg("q", 5)).await.unwrap();
    let d = env
        .broker
        .reserve(&qs(&["q"]), 1, Duration::from_millis(400), Duration::ZERO)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let ext = env
        .broker
        .extend_lease(&[d[0].lease.clone()], Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(ext, vec![true]);
    let none = reserve(&env, &["q"], 1, Duration::from_millis(900)).await;
    assert!(none.is_empty(), "redelivered despite the extension");
    assert!(env.broker.ack(&d[0].lease).await.unwrap());
}

pub async fn ack_removes_the_message(env: Env) {
    env.broker.enqueue(&msg("q", 5)).await.unwrap();
    let d = reserve(&env, &["q"], 1, Duration::ZERO).await;
    let stats = env.broker.queue_stats("q").await.unwrap();
    assert_eq!((stats.ready_total(), stats.active), (0, 1));
    assert!(env.broker.ack(&d[0].lease).await.unwrap());
    assert!(!env.broker.ack(&d[0].lease).await.unwrap(), "second ack");
    assert_eq!(
        env.broker.queue_stats("q").await.unwrap(),
        Default::default()
    );
    assert!(reserve(&env, &["q"], 1, Duration::ZERO).await.is_empty());
}

pub async fn retry_later_goes_through_delayed_with_attempt_plus_one(env: Env) {
    let m = msg("q", 3);
    env.broker.enqueue(&m).await.unwrap();
    let d = reserve(&env, &["q"], 1, Duration::ZERO).await;
    let eta = Utc::now() + chrono::Duration::milliseconds(500);
    assert!(
        env.broker
            .retry_later(&d[0].lease, eta, "exit code 1")
            .await
            .unwrap()
    );
    let stats = env.broker.queue_stats("q").await.unwrap();
    assert_eq!(
        (stats.delayed, stats.active, stats.ready_total()),
        (1, 0, 0)
    );
    assert!(reserve(&env, &["q"], 1, Duration::ZERO).await.is_empty());
    assert!(
        !env.broker.ack(&d[0].lease).await.unwrap(),
        "retried lease still held"
    );

    let again = reserve(&env, &["q"], 1, Duration::from_secs(5)).await;
    assert_eq!(ids(&again), vec![m.id.clone()]);
    assert_eq!(again[0].attempt, 1);
    assert_eq!(again[0].priority, 3);
    assert_eq!(again[0].last_error.as_deref(), Some("exit code 1"));
    assert!(Utc::now() >= eta);

    // An eta already passed goes straight back to ready.
    assert!(
        env.broker
            .retry_later(&again[0].lease, Utc::now(), "again")
            .await
            .unwrap()
    );
    let third = reserve(&env, &["q"], 1, Duration::ZERO).await;
    assert_eq!(third[0].attempt, 2);
}

pub async fn dead_letters_are_listed_and_requeued(env: Env) {
    let ms: Vec<TaskMessage> = (0..3).map(|_| msg("q", 7)).collect();
    env.broker.enqueue_many(&ms).await.unwrap();
    let d = reserve(&env, &["q"], 3, Duration::ZERO).await;
    assert!(
        env.broker
            .dead_letter(&d[0].lease, "unknown task noop")
            .await
            .unwrap()
    );
    assert!(
        env.broker
            .dead_letter(&d[1].lease, "bad args")
            .await
            .unwrap()
    );
    assert!(!env.broker.dead_letter(&d[1].lease, "twice").await.unwrap());
    let stats = env.broker.queue_stats("q").await.unwrap();
    assert_eq!((stats.dead, stats.active), (2, 1));

    let dead = env.broker.dead_letters("q", 10).await.unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(
        (dead[0].id.as_str(), dead[0].reason.as_str()),
        (ms[1].id.as_str(), "bad args")
    );
    assert_eq!(dead[1].reason, "unknown task noop");
    assert_eq!(dead[0].priority, 7);
    assert_eq!(dead[0].message().unwrap(), ms[1]);
    assert!((Utc::now() - dead[0].at).num_seconds().abs() < 60);
    assert_eq!(env.broker.dead_letters("q", 1).await.unwrap().len(), 1);

    let none = env
        .broker
        .requeue_dead("q", DeadSelector::Id("no-such-id".into()))
        .await
        .unwrap();
    assert_eq!(none, 0);
    let one = env
        .broker
        .requeue_dead("q", DeadSelector::Id(ms[0].id.clone()))
        .await
        .unwrap();
    assert_eq!(one, 1);
    assert_eq!(env.broker.queue_stats("q").await.unwrap().dead, 1);
    let rest = env
        .broker
        .requeue_dead("q", DeadSelector::All)
        .await
        .unwrap();
    assert_eq!(rest, 1);

    let back = reserve(&env, &["q"], 10, Duration::ZERO).await;
    let mut got = ids(&back);
    got.sort();
    let mut want = vec![ms[0].id.clone(), ms[1].id.clone()];
    want.sort();
    assert_eq!(got, want);
    assert!(back.iter().all(|d| d.attempt == 0 && d.priority == 7));
    let stats = env.broker.queue_stats("q").await.unwrap();
    assert_eq!((stats.dead, stats.active), (0, 3));
}

pub async fn expires_and_all_fields_are_carried(env: Env) {
    let expires = Utc::now() + chrono::Duration::minutes(5);
    let mut kw = serde_json::Map::new();
    kw.insert("days".into(), json!(7));
    let m = msg("q", 2)
        .with_args(json!(["a", 1, {"n": null}, []]))
        .with_kwargs(kw)
        .with_expires(expires)
        .with_fire("nightly", "nightly@2025-01-01T02:30:00+08:00");
    env.broker.enqueue(&m).await.unwrap();
    let d = reserve(&env, &["q"], 1, Duration::ZERO).await;
    assert_eq!(d[0].message().unwrap(), &m);
    assert!(!d[0].message().unwrap().is_expired_at(Utc::now()));
}

pub async fn results_are_stored_fetched_and_expire(env: Env) {
    let m = msg("q", 5);
    let mut r = TaskResult::for_message(&m, TaskStatus::Success);
    r.value = Some(json!({"ok": true}));
    r.set_output(b"hello\n", 1024);
    assert_eq!(env.broker.get_result(&m.id).await.unwrap(), None);
    env.broker
        .store_result(&r, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(env.broker.get_result(&m.id).await.unwrap(), Some(r.clone()));

    // Storing again replaces the result.
    let mut r2 = r.clone();
    r2.status = TaskStatus::Failure;
    env.broker
        .store_result(&r2, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        env.broker.get_result(&m.id).await.unwrap().unwrap().status,
        TaskStatus::Failure
    );

    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        env.broker.get_result(&m.id).await.unwrap(),
        None,
        "result outlived its TTL"
    );
}

pub async fn results_are_stored_in_batches(env: Env) {
    let messages: Vec<TaskMessage> = (0..1200).map(|_| msg("q", 5)).collect();
    let mut results: Vec<TaskResult> = messages
        .iter()
        .map(|m| TaskResult::for_message(m, TaskStatus::Success))
        .collect();
    env.broker
        .store_results(&results, Duration::from_secs(60))
        .await
        .unwrap();
    for r in [&results[0], &results[777], &results[1199]] {
        assert_eq!(
            env.broker.get_result(&r.id).await.unwrap().as_ref(),
            Some(r)
        );
    }
    // Storing again replaces, as one by one.
    results[3].status = TaskStatus::Failure;
    env.broker
        .store_results(&results[3..4], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        env.broker
            .get_result(&results[3].id)
            .await
            .unwrap()
            .unwrap()
            .status,
        TaskStatus::Failure
    );
    env.broker
        .store_results(&[], Duration::from_secs(60))
        .await
        .unwrap();
}

pub async fn wait_result_wakes_when_the_result_is_stored(env: Env) {
    let m = msg("q", 5);
    let start = Instant::now();
    assert_eq!(
        env.broker
            .wait_result(&m.id, Duration::from_millis(300))
            .await
            .unwrap(),
        None
    );
    assert!(start.elapsed() >= Duration::from_millis(250));

    let r = TaskResult::for_message(&m, TaskStatus::Success);
    let broker = env.broker.clone();
    let stored = r.clone();
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let b = env.broker.clone();
            let id = m.id.clone();
            tokio::spawn(async move { b.wait_result(&id, Duration::from_secs(10)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    broker
        .store_result(&stored, Duration::from_secs(60))
        .await
        .unwrap();
    for w in waiters {
        let got = w.await.unwrap().unwrap();
        assert_eq!(got, Some(r.clone()));
    }
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // Waiting did not consume or alter the stored result.
    assert_eq!(env.broker.get_result(&m.id).await.unwrap(), Some(r.clone()));
    assert_eq!(
        env.broker
            .wait_result(&m.id, Duration::from_secs(1))
            .await
            .unwrap(),
        Some(r)
    );
}

pub async fn purge_removes_ready_and_delayed_only(env: Env) {
    let mut ms: Vec<TaskMessage> = (0..4).map(|i| msg("q", i)).collect();
    ms.push(msg("q", 5).with_countdown(Duration::from_secs(60)));
    ms.push(msg("q", 5).with_countdown(Duration::from_secs(60)));
    env.broker.enqueue_many(&ms).await.unwrap();
    env.broker.enqueue(&msg("other", 5)).await.unwrap();
    let held = reserve(&env, &["q"], 1, Duration::ZERO).await;
    assert_eq!(env.broker.purge("q").await.unwrap(), 5);
    let stats = env.broker.queue_stats("q").await.unwrap();
    assert_eq!(
        (stats.ready_total(), stats.delayed, stats.active),
        (0, 0, 1)
    );
    assert_eq!(
        env.broker.queue_stats("other").await.unwrap().ready_total(),
        1
    );
    assert!(env.broker.ack(&held[0].lease).await.unwrap());
    assert_eq!(env.broker.purge("q").await.unwrap(), 0);
}

pub async fn stats_count_ready_per_priority(env: Env) {
    let mut ms = vec![msg("q", 0), msg("q", 9), msg("q", 9), msg("q", 4)];
    ms.push(msg("q", 4).with_countdown(Duration::from_secs(60)));
    env.broker.enqueue_many(&ms).await.unwrap();
    reserve(&env, &["q"], 1, Duration::ZERO).await;
    let stats = env.broker.queue_stats("q").await.unwrap();
    let mut ready = [0; 10];
    ready[0] = 1;
    ready[9] = 1;
    ready[4] = 1;
    assert_eq!(stats.ready, ready);
    assert_eq!((stats.delayed, stats.active, stats.dead), (1, 1, 0));
    assert_eq!(
        env.broker.queue_stats("empty").await.unwrap(),
        Default::default()
    );
}

pub async fn blocked_reserve_wakes_promptly_on_enqueue(env: Env) {
    let b = env.broker.clone();
    let waiter = tokio::spawn(async move {
        let d = b
            .reserve(&qs(&["x", "q"]), 10, LONG, Duration::from_secs(10))
            .await
            .unwrap();
        (d, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "reserve returned without a message");
    let m = msg("q", 5);
    let t0 = Instant::now();
    env.broker.enqueue(&m).await.unwrap();
    let (d, woke) = waiter.await.unwrap();
    assert_eq!(ids(&d), vec![m.id.clone()]);
    let latency = woke - t0;
    assert!(
        latency < Duration::from_millis(200),
        "woke after {latency:?}"
    );
}

pub async fn every_blocked_reserver_gets_work_from_one_batch(env: Env) {
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let b = env.broker.clone();
            tokio::spawn(async move {
                b.reserve(&qs(&["q"]), 1, LONG, Duration::from_secs(10))
                    .await
                    .unwrap()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    env.broker
        .enqueue_many(&[msg("q", 5), msg("q", 5), msg("q", 5)])
        .await
        .unwrap();
    let mut got = Vec::new();
    for w in waiters {
        let d = w.await.unwrap();
        assert_eq!(d.len(), 1);
        got.extend(ids(&d));
    }
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 3);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}

pub async fn undecodable_body_is_delivered_raw_with_the_error(env: Env) {
    env.push_raw("q", "garbage-1", 6, b"\xff not json {");
    let d = reserve(&env, &["q"], 5, Duration::ZERO).await;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].id(), "garbage-1");
    assert_eq!(d[0].priority, 6);
    let bad = d[0].payload.as_ref().expect_err("garbage decoded");
    assert_eq!(bad.body, b"\xff not json {");
    assert!(!bad.error.is_empty());
    assert!(
        env.broker
            .dead_letter(&d[0].lease, &format!("undecodable: {}", bad.error))
            .await
            .unwrap()
    );
    let dead = env.broker.dead_letters("q", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, "garbage-1");
    assert!(dead[0].body.ends_with(" not json {"), "{:?}", dead[0].body);
    assert!(dead[0].message().is_none());
    assert!(dead[0].reason.starts_with("undecodable: "));
}

pub async fn batched_enqueue_and_ack(env: Env) {
    let ms: Vec<TaskMessage> = (0..2500)
        .map(|i| msg(if i % 2 == 0 { "a" } else { "b" }, (i % 10) as u8))
        .collect();
    assert_eq!(env.broker.enqueue_many(&ms).await.unwrap(), 2500);
    let mut leases = Vec::new();
    loop {
        let d = reserve(&env, &["a", "b"], 1000, Duration::ZERO).await;
        if d.is_empty() {
            break;
        }
        assert!(d.len() <= 1000);
        leases.extend(d.into_iter().map(|d| d.lease));
    }
    assert_eq!(leases.len(), 2500);
    let mut stale = leases[0].clone();
    stale.token += 1_000_000;
    leases.push(stale);
    let acked = env.broker.ack_many(&leases).await.unwrap();
    assert_eq!(acked.len(), 2501);
    assert!(acked[..2500].iter().all(|&a| a));
    assert!(!acked[2500], "a wrong token acked");
    for q in ["a", "b"] {
        assert_eq!(env.broker.queue_stats(q).await.unwrap(), Default::default());
    }
}

pub async fn duplicate_ids_are_enqueued_once(env: Env) {
    let m = msg("q", 5);
    assert!(env.broker.enqueue(&m).await.unwrap());
    assert!(!env.broker.enqueue(&m).await.unwrap());
    assert_eq!(
        env.broker
            .enqueue_many(&[m.clone(), msg("q", 5)])
            .await
            .unwrap(),
        1
    );
    let d = reserve(&env, &["q"], 10, Duration::ZERO).await;
    assert_eq!(d.len(), 2);
    assert!(
        !env.broker.enqueue(&m).await.unwrap(),
        "queued while reserved"
    );
    env.broker.ack(&d[0].lease).await.unwrap();
    // Once acknowledged, the id may be used again.
    assert!(env.broker.enqueue(&m).await.unwrap());
}

pub async fn release_returns_to_the_front_without_counting_an_attempt(env: Env) {
    let first = msg("q", 5);
    let second = msg("q", 5);
    env.broker
        .enqueue_many(&[first.clone(), second.clone()])
        .await
        .unwrap();
    let d = reserve(&env, &["q"], 1, Duration::ZERO).await;
    assert_eq!(d[0].id(), first.id);
    let later = msg("q", 5);
    env.broker.enqueue(&later).await.unwrap();
    assert_eq!(
        env.broker.release(&[d[0].lease.clone()]).await.unwrap(),
        vec![true]
    );
    assert_eq!(
        env.broker.release(&[d[0].lease.clone()]).await.unwrap(),
        vec![false]
    );
    let all = reserve(&env, &["q"], 10, Duration::ZERO).await;
    assert_eq!(
        ids(&all),
        vec![first.id.clone(), second.id.clone(), later.id.clone()]
    );
    assert_eq!(all[0].attempt, 0);
}

pub async fn invalid_input_is_rejected(env: Env) {
    let err = env.broker.enqueue(&msg("q", 10)).await.unwrap_err();
    assert!(matches!(err, BrokerError::InvalidMessage(_)), "{err}");
    assert!(!err.is_transient());
    let err = env.broker.enqueue(&msg("bad{tag}", 1)).await.unwrap_err();
    assert!(matches!(err, BrokerError::InvalidQueue(_)), "{err}");
    let err = env
        .broker
        .reserve(&[], 1, LONG, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, BrokerError::InvalidQueue(_)), "{err}");
    assert!(reserve(&env, &["q"], 0, Duration::ZERO).await.is_empty());
    env.broker.ping().await.unwrap();
}

pub async fn equal_priorities_are_served_round_robin_across_queues(env: Env) {
    let a: Vec<TaskMessage> = (0..3).map(|_| msg("a", 5)).collect();
    let b: Vec<TaskMessage> = (0..3).map(|_| msg("b", 5)).collect();
    env.broker.enqueue_many(&a).await.unwrap();
    env.broker.enqueue_many(&b).await.unwrap();
    let mut from = Vec::new();
    for _ in 0..4 {
        let d = reserve(&env, &["a", "b"], 1, Duration::ZERO).await;
        from.push(d[0].lease.queue.clone());
    }
    assert!(
        from.contains(&"a".to_string()) && from.contains(&"b".to_string()),
        "{from:?}"
    );
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Env::memory()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Env::redis().await).await;
                }
            )*
        }
    };
}

contract!(
    priority_wins_across_queues,
    fifo_within_a_priority,
    eta_and_countdown_delay_delivery,
    expired_lease_is_redelivered_with_attempt_plus_one,
    extending_a_lease_prevents_redelivery,
    ack_removes_the_message,
    retry_later_goes_through_delayed_with_attempt_plus_one,
    dead_letters_are_listed_and_requeued,
    expires_and_all_fields_are_carried,
    results_are_stored_fetched_and_expire,
    results_are_stored_in_batches,
    wait_result_wakes_when_the_result_is_stored,
    purge_removes_ready_and_delayed_only,
    stats_count_ready_per_priority,
    blocked_reserve_wakes_promptly_on_enqueue,
    every_blocked_reserver_gets_work_from_one_batch,
    undecodable_body_is_delivered_raw_with_the_error,
    batched_enqueue_and_ack,
    duplicate_ids_are_enqueued_once,
    release_returns_to_the_front_without_counting_an_attempt,
    invalid_input_is_rejected,
    equal_priorities_are_served_round_robin_across_queues,
);
