//! Redis-specific broker behaviour: each Lua script's effect on the keys, the Lua library as
//! the beat will use it, crash recovery with `appendonly yes`, reconnect logging, ACL users
//! and TLS. Each test runs its own private redis-server.

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::redis::{Commands, Connection};
use celeriac::broker::keys::{QueueKeys, result_key};
use celeriac::broker::{
    Broker, BrokerError, DeadSelector, Lease, RedisBroker, RedisBrokerOptions, TaskMessage,
    TaskResult, TaskStatus, enqueue_lua_lib, redact,
};
use chrono::Utc;

use crate::redis_server::{RedisOptions, RedisServer, free_port, make_tls_files, redis_has_tls};

const BAND: u64 = 1 << 44;
const LONG: Duration = Duration::from_secs(30);

async fn broker(server: &RedisServer) -> RedisBroker {
    RedisBroker::connect(&server.url(), quick_reconnect())
        .await
        .expect("connect to private redis")
}

fn quick_reconnect() -> RedisBrokerOptions {
    RedisBrokerOptions {
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        ..Default::default()
    }
}

fn q() -> Vec<String> {
    vec!["q".to_string()]
}

fn redis_now_ms(c: &mut Connection) -> i64 {
    let (s, us): (i64, i64) = ::redis::cmd("TIME").query(c).unwrap();
    s * 1000 + us / 1000
}

fn score(c: &mut Connection, key: &str, id: &str) -> Option<f64> {
    c.zscore(key, id).unwrap()
}

fn meta(c: &mut Connection, k: &QueueKeys, id: &str) -> Option<String> {
    c.hget(&k.meta, id).unwrap()
}

#[tokio::test]
async fn enqueue_script_writes_body_meta_and_scores() {
    let server = RedisServer::start();
    let b = broker(&server).await;
    let k = b.queue_keys("q");
    let mut c = server.connection();
    let now = TaskMessage::new("t", "q").with_priority(7);
    let eta = Utc::now() + chrono::Duration::seconds(60);
    let later = TaskMessage::new("t", "q").with_priority(2).with_eta(eta);
    b.enqueue_many(&[now.clone(), later.clone()]).await.unwrap();

    let body: Vec<u8> = c.hget(&k.msg, &now.id).unwrap();
    assert_eq!(TaskMessage::from_json(&body).unwrap(), now);
    assert_eq!(meta(&mut c, &k, &now.id).as_deref(), Some("7 0 0"));
    assert_eq!(meta(&mut c, &k, &later.id).as_deref(), Some("2 0 0"));
    assert_eq!(
        score(&mut c, &k.ready, &now.id),
        Some((2 * BAND + 1) as f64)
    );
    assert_eq!(
        score(&mut c, &k.delayed, &later.id),
        Some(eta.timestamp_millis() as f64)
    );
    assert_eq!(score(&mut c, &k.ready, &later.id), None);
    let signal: Vec<String> = c.lrange(&k.signal, 0, -1).unwrap();
    assert_eq!(signal.len(), 1, "one marker, however many messages");
    let seq: i64 = c.get(&k.seq).unwrap();
    assert_eq!(seq, 1);
}

#[tokio::test]
async fn reserve_script_leases_by_redis_time_promotes_and_requeues() {
    let server = RedisServer::start();
    let b = broker(&server).await;
    let k = b.queue_keys("q");
    let mut c = server.connection();
    let m = TaskMessage::new("t", "q").with_priority(4);
    b.enqueue(&m).await.unwrap();

    let before = redis_now_ms(&mut c);
    let d = b
        .reserve(&q(), 1, Duration::from_millis(10_000), Duration::ZERO)
        .await
        .unwrap();
    let after = redis_now_ms(&mut c);
    let deadline = score(&mut c, &k.active, &m.id).expect("in active") as i64;
    assert!(
        deadline >= before + 10_000 && deadline <= after + 10_000,
        "{deadline}"
    );
    assert_eq!(score(&mut c, &k.ready, &m.id), None);
    let token = d[0].lease.token;
    assert_eq!(meta(&mut c, &k, &m.id), Some(format!("4 0 {token}")));

    // Expire the lease by hand: the next reserve call requeues it at the front, attempt + 1.
    let _: () = c.zadd(&k.active, &m.id, before - 1).unwrap();
    let other = TaskMessage::new("t", "q").with_priority(4);
    b.enqueue(&other).await.unwrap();
    let again = b.reserve(&q(), 1, LONG, Duration::ZERO).await.unwrap();
    assert_eq!(again[0].id(), m.id, "requeued lease goes first in its band");
    assert_eq!(again[0].attempt, 1);
    assert_ne!(again[0].lease.token, token);
    assert_eq!(
        meta(&mut c, &k, &m.id),
        Some(format!("4 1 {} lease expired", again[0].lease.token))
    );

    // A due delayed message is promoted to the back of its band.
    let delayed = TaskMessage::new("t", "q")
        .with_priority(4)
        .with_countdown(LONG);
    b.enqueue(&delayed).await.unwrap();
    let _: () = c.zadd(&k.delayed, &delayed.id, before).unwrap();
    let next = b.reserve(&q(), 5, LONG, Duration::ZERO).await.unwrap();
    let ids: Vec<&str> = next.iter().map(|d| d.id()).collect();
    assert_eq!(ids, vec![other.id.as_str(), delayed.id.as_str()]);
    let zcard: usize = c.zcard(&k.delayed).unwrap();
    assert_eq!(zcard, 0);
}

#[tokio::test]
async fn ack_extend_retry_and_dead_letter_scripts_change_exactly_their_keys() {
    let server = RedisServer::start();
    let b = broker(&server).await;
    let k = b.queue_keys("q");
    let mut c = server.connection();
    let ms: Vec<TaskMessage> = (0..3)
        .map(|_| TaskMessage::new("t", "q").with_priority(6))
        .collect();
    b.enqueue_many(&ms).await.unwrap();
    let d = b
        .reserve(&q(), 3, Duration::from_secs(5), Duration::ZERO)
        .await
        .unwrap();

    // ack: body, meta and active entry gone.
    assert_eq!(b.ack_many(&[d[0].lease.clone()]).await.unwrap(), vec![true]);
    assert_eq!(score(&mut c, &k.active, &ms[0].id), None);
    assert!(!c.hexists::<_, _, bool>(&k.msg, &ms[0].id).unwrap());
    assert_eq!(meta(&mut c, &k, &ms[0].id), None);

    // extend: deadline moves to Redis now + lease.
    let old = score(&mut c, &k.active, &ms[1].id).unwrap() as i64;
    let ext = b
        .extend_lease(&[d[1].lease.clone()], Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(ext, vec![true]);
    let new = score(&mut c, &k.active, &ms[1].id).unwrap() as i64;
    assert!(new >= old + 590_000, "{old} -> {new}");

    // retry: active -> delayed at the eta, attempt + 1, token cleared, reason kept.
    let eta = Utc::now() + chrono::Duration::seconds(120);
    assert!(b.retry_later(&d[1].lease, eta, "exit 3").await.unwrap());
    assert_eq!(
        score(&mut c, &k.delayed, &ms[1].id),
        Some(eta.timestamp_millis() as f64)
    );
    assert_eq!(score(&mut c, &k.active, &ms[1].id), None);
    assert_eq!(meta(&mut c, &k, &ms[1].id).as_deref(), Some("6 1 0 exit 3"));

    // dead letter: gone from the queue, one JSON entry on the list.
    assert!(b.dead_letter(&d[2].lease, "bad args").await.unwrap());
    assert_eq!(score(&mut c, &k.active, &ms[2].id), None);
    assert!(!c.hexists::<_, _, bool>(&k.msg, &ms[2].id).unwrap());
    let entries: Vec<String> = c.lrange(&k.dead, 0, -1).unwrap();
    assert_eq!(entries.len(), 1);
    let entry: serde_json::Value = serde_json::from_str(&entries[0]).unwrap();
    assert_eq!(entry["id"], ms[2].id.as_str());
    assert_eq!(entry["reason"], "bad args");
    assert_eq!(entry["priority"], 6);
    assert_eq!(entry["attempt"], 0);
    let body = entry["body"].as_str().unwrap();
    assert_eq!(TaskMessage::from_json(body.as_bytes()).unwrap(), ms[2]);

    // requeue-dead: back in ready, meta reset, list empty.
    assert_eq!(b.requeue_dead("q", DeadSelector::All).await.unwrap(), 1);
    assert_eq!(c.llen::<_, usize>(&k.dead).unwrap(), 0);
    assert!(score(&mut c, &k.ready, &ms[2].id).is_some());
    assert_eq!(meta(&mut c, &k, &ms[2].id).as_deref(), Some("6 0 0"));

    // purge: ready and delayed gone with their bodies; nothing else touched.
    assert_eq!(b.purge("q").await.unwrap(), 2);
    let left: usize = c.hlen(&k.msg).unwrap();
    assert_eq!(left, 0);
    let metas: usize = c.hlen(&k.meta).unwrap();
    assert_eq!(metas, 0);
}

#[tokio::test]
async fn dead_letter_list_is_capped() {
    let server = RedisServer::start();
    let options = RedisBrokerOptions {
        dead_letter_limit: 3,
        ..quick_reconnect()
    };
    let b = RedisBroker::connect(&server.url(), options).await.unwrap();
    let ms: Vec<TaskMessage> = (0..5).map(|_| TaskMessage::new("t", "q")).collect();
    b.enqueue_many(&ms).await.unwrap();
    for d in b.reserve(&q(), 5, LONG, Duration::ZERO).await.unwrap() {
        assert!(b.dead_letter(&d.lease, "x").await.unwrap());
    }
    let dead = b.dead_letters("q", 10).await.unwrap();
    let ids: Vec<&str> = dead.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![ms[4].id.as_str(), ms[3].id.as_str(), ms[2].id.as_str()]
    );
}

#[tokio::test]
async fn requeue_dead_by_id_finds_entries_beyond_the_first_chunk() {
    let server = RedisServer::start();
    let b = broker(&server).await;
    let ms: Vec<TaskMessage> = (0..1200).map(|_| TaskMessage::new("t", "q")).collect();
    b.enqueue_many(&ms).await.unwrap();
    let mut leases: Vec<Lease> = Vec::new();
    while leases.len() < 1200 {
        let d = b.reserve(&q(), 1000, LONG, Duration::ZERO).await.unwrap();
        leases.extend(d.into_iter().map(|d| d.lease));
    }
    for l in &leases {
        assert!(b.dead_letter(l, "x").await.unwrap());
    }
    // The oldest dead letter is at the far end of the list (newest first).
    let n = b
        .requeue_dead("q", DeadSelector::Id(ms[0].id.clone()))
        .await
        .unwrap();
    assert_eq!(n, 1);
    let stats = b.queue_stats("q").await.unwrap();
    assert_eq!((stats.ready_total(), stats.dead), (1, 1199));
    assert_eq!(b.requeue_dead("q", DeadSelector::All).await.unwrap(), 1199);
}

#[tokio::test]
async fn results_are_one_element_lists_whose_ttl_survives_waiting() {
    let server = RedisServer::start();
    let b = broker(&server).await;
    let mut c = server.connection();
    let m = TaskMessage::new("t", "q");
    let r = TaskResult::for_message(&m, TaskStatus::Success);
    let waiter = {
        let b = Arc::new(broker(&server).await);
        let id = m.id.clone();
        tokio::spawn(async move { b.wait_result(&id, Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.store_result(&r, Duration::from_secs(100)).await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), Some(r.clone()));
    let key = result_key("celeriac:", &m.id);
    let kind: String = ::redis::cmd("TYPE").arg(&key).query(&mut c).unwrap();
    assert_eq!(kind, "list");
    let len: usize = c.llen(&key).unwrap();
    assert_eq!(len, 1);
    let pttl: i64 = c.pttl(&key).unwrap();
    assert!(
        pttl > 90_000 && pttl <= 100_000,
        "ttl lost while waiting: {pttl}"
    );
}

#[tokio::test]
async fn the_lua_library_enqueues_inside_another_atomic_script() {
    // How the beat's fire script uses it: its own key first, then the queue's eight keys.
    let server = RedisServer::start();
    let b = broker(&server).await;
    let k = b.queue_keys("q");
    let fire = format!(
        "{}\n{}",
        enqueue_lua_lib(),
        r#"
        if redis.call('SET', KEYS[1], '1', 'NX') == false then return 0 end
        local k = celeriac_keys(2)
        local r = celeriac_enqueue(k, celeriac_now_ms(), ARGV[1], tonumber(ARGV[2]), 0, 0, ARGV[3])
        celeriac_signal(k)
        return r
        "#
    );
    let script = ::redis::Script::new(&fire);
    let m = TaskMessage::new("nightly", "q")
        .with_priority(8)
        .with_fire("nightly", "nightly@2025-01-01T02:30:00Z");
    for expected in [1, 0] {
        let mut inv = script.prepare_invoke();
        inv.key("celeriac:fire:nightly:1735698600000")
            .key(&k.all()[..])
            .arg(&m.id)
            .arg(m.priority)
            .arg(m.to_json());
        let r = b.invoke_script(&inv).await.unwrap();
        assert_eq!(r, ::redis::Value::Int(expected), "fired twice");
    }
    let d = b.reserve(&q(), 10, LONG, Duration::ZERO).await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].message().unwrap(), &m);
    assert_eq!(d[0].priority, 8);
}

#[tokio::test]
async fn scripts_survive_a_script_flush() {
    let server = RedisServer::start();
    let b = broker(&server).await;
    let mut c = server.connection();
    let _: () = ::redis::cmd("SCRIPT").arg("FLUSH").query(&mut c).unwrap();
    b.enqueue(&TaskMessage::new("t", "q")).await.unwrap();
    assert_eq!(
        b.reserve(&q(), 1, LONG, Duration::ZERO)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn batched_result_store_survives_a_script_flush_and_sets_ttls() {
    let server = RedisServer::start();
    let b = broker(&server).await;
    let mut c = server.connection();
    let _: () = ::redis::cmd("SCRIPT").arg("FLUSH").query(&mut c).unwrap();
    let results: Vec<TaskResult> = (0..3)
        .map(|_| TaskResult::for_message(&TaskMessage::new("t", "q"), TaskStatus::Success))
        .collect();
    b.store_results(&results, Duration::from_secs(60))
        .await
        .unwrap();
    for r in &results {
        assert_eq!(b.get_result(&r.id).await.unwrap().as_ref(), Some(r));
        let ttl: i64 = c.pttl(result_key(b.prefix(), &r.id)).unwrap();
        assert!(ttl > 50_000 && ttl <= 60_000, "{ttl}");
    }
}

#[tokio::test]
async fn nothing_acknowledged_is_lost_when_redis_is_killed_and_restarted() {
    let mut server = RedisServer::start_with(RedisOptions {
        appendonly: true,
        ..Default::default()
    });
    let b = broker(&server).await;
    let all: Vec<TaskMessage> = (0..2000)
        .map(|i| TaskMessage::new("t", "q").with_priority((i % 10) as u8))
        .collect();
    assert_eq!(b.enqueue_many(&all).await.unwrap(), 2000);
    let lease = Duration::from_millis(1500);
    let first = b.reserve(&q(), 300, lease, Duration::ZERO).await.unwrap();
    let (acked, held) = first.split_at(200);
    let leases: Vec<Lease> = acked.iter().map(|d| d.lease.clone()).collect();
    assert!(b.ack_many(&leases).await.unwrap().iter().all(|&a| a));
    let acked: HashSet<String> = acked.iter().map(|d| d.id().to_string()).collect();
    let held: HashSet<String> = held.iter().map(|d| d.id().to_string()).collect();

    server.kill();
    let err = b.enqueue(&TaskMessage::new("t", "q")).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    let err = b.ping().await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    // A reserve while Redis is down waits out its budget instead of spinning.
    let start = Instant::now();
    let err = b
        .reserve(&q(), 10, lease, Duration::from_millis(400))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(
        start.elapsed() >= Duration::from_millis(350),
        "{:?}",
        start.elapsed()
    );

    server.start_again();
    let mut seen: HashSet<String> = HashSet::new();
    let mut redelivered = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 1800 && Instant::now() < deadline {
        let ds = match b.reserve(&q(), 500, LONG, Duration::from_secs(2)).await {
            Ok(ds) => ds,
            Err(e) if e.is_transient() => continue,
            Err(e) => panic!("permanent error after restart: {e}"),
        };
        for d in &ds {
            assert!(!acked.contains(d.id()), "an acknowledged message came back");
            if held.contains(d.id()) {
                assert_eq!(
                    d.attempt, 1,
                    "held at the crash, redelivered after its lease"
                );
                redelivered += 1;
            }
            seen.insert(d.id().to_string());
        }
        let leases: Vec<Lease> = ds.iter().map(|d| d.lease.clone()).collect();
        b.ack_many(&leases).await.unwrap();
    }
    let expected: HashSet<String> = all
        .iter()
        .map(|m| m.id.clone())
        .filter(|id| !acked.contains(id))
        .collect();
    assert_eq!(seen, expected, "messages lost across the restart");
    assert_eq!(redelivered, 100);
    let t = b.link_transitions();
    assert_eq!((t.lost, t.restored), (1, 1));
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Keeps a second dispatcher registered for the life of the test binary. With at most one
/// registered, tracing computes a callsite's interest from the default dispatcher of whichever
/// thread hits the callsite first, so an event first seen by another test's thread (no
/// subscriber) would be disabled for this thread's capturing subscriber too.
fn interest_from_all_dispatchers() {
    static EXTRA: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
    EXTRA.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
}

#[tokio::test]
async fn connection_loss_and_restore_are_logged_once_each() {
    interest_from_all_dispatchers();
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut server = RedisServer::start();
    let b = broker(&server).await;
    b.ping().await.unwrap();
    server.kill();
    // Many failing calls over a second: one "lost" line, no line per attempt.
    let start = Instant::now();
    let mut failures = 0;
    while start.elapsed() < Duration::from_secs(1) {
        let e = b.ping().await.unwrap_err();
        assert!(e.is_transient(), "{e:?}");
        failures += 1;
        let _ = b.reserve(&q(), 1, LONG, Duration::from_millis(50)).await;
    }
    assert!(failures > 5);
    server.start_again();
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.ping().await.is_err() {
        assert!(Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..10 {
        b.ping().await.unwrap();
    }
    let text = logs.text();
    assert_eq!(
        text.matches("lost connection to Redis").count(),
        1,
        "{text}"
    );
    assert_eq!(
        text.matches("connection to Redis restored").count(),
        1,
        "{text}"
    );
    assert_eq!(text.lines().count(), 2, "{text}");
    let t = b.link_transitions();
    assert_eq!((t.lost, t.restored), (1, 1));
}

#[tokio::test]
async fn acl_user_and_password_in_the_url() {
    let port = free_port();
    let server = RedisServer::start_with(RedisOptions {
        tcp_port: Some(port),
        ..Default::default()
    });
    let mut c = server.connection();
    let _: () = ::redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "worker",
            "on",
            ">s3cret",
            "~celeriac:*",
            "&*",
            "+@all",
        ])
        .query(&mut c)
        .unwrap();
    let url = format!("redis://worker:s3cret@127.0.0.1:{port}/0");
    assert_eq!(
        redact(&url),
        format!("redis://worker:***@127.0.0.1:{port}/0")
    );
    let b = RedisBroker::connect(&url, quick_reconnect()).await.unwrap();
    assert!(!b.url().contains("s3cret"));
    let m = TaskMessage::new("t", "q");
    b.enqueue(&m).await.unwrap();
    assert_eq!(
        b.reserve(&q(), 1, LONG, Duration::ZERO).await.unwrap()[0].id(),
        m.id
    );

    let bad = format!("redis://worker:wrong@127.0.0.1:{port}/0");
    let err = match RedisBroker::connect(&bad, quick_reconnect()).await {
        Ok(_) => panic!("a wrong password was accepted"),
        Err(e) => e,
    };
    assert!(matches!(err, BrokerError::Auth(_)), "{err:?}");
    assert!(!err.is_transient());
    assert!(
        !err.to_string().contains("wrong"),
        "password in error: {err}"
    );

    // Unix socket form: user and password as query parameters.
    let unix = format!("{}?user=worker&pass=s3cret", server.url());
    let b = RedisBroker::connect(&unix, quick_reconnect())
        .await
        .unwrap();
    b.ping().await.unwrap();
}

#[tokio::test]
async fn tls_with_a_private_ca() {
    if !redis_has_tls() {
        eprintln!("SKIP tls_with_a_private_ca: this redis-server was built without TLS support");
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let Some(tls) = make_tls_files(certs.path()) else {
        eprintln!("SKIP tls_with_a_private_ca: the openssl command line is not available");
        return;
    };
    let port = free_port();
    let _server = RedisServer::start_with(RedisOptions {
        tcp_port: Some(port),
        tls: Some(tls.clone()),
        ..Default::default()
    });
    let url = format!("rediss://localhost:{port}");
    let options = RedisBrokerOptions {
        tls_ca_file: Some(tls.ca_cert.clone()),
        ..quick_reconnect()
    };
    let b = RedisBroker::connect(&url, options).await.unwrap();
    let m = TaskMessage::new("t", "q");
    b.enqueue(&m).await.unwrap();
    let d = b
        .reserve(&q(), 1, LONG, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(d[0].id(), m.id);

    // Without the private CA the server's certificate is not trusted.
    let untrusted = RedisBroker::connect(&url, quick_reconnect()).await;
    assert!(untrusted.is_err(), "connected without trusting the CA");
}
