//! Minimal reproductions of what the chaos soak (`bench/chaos.rs`, docs/chaos.md) found.
//! Each test is `#[ignore]`d while its bug is open: run them with
//! `cargo test --test it chaos_regressions -- --ignored`. Remove the `#[ignore]` with the fix.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, TimeZone, Utc};

use crate::redis_server::RedisServer;
use crate::util::{Daemon, celeriac};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn beat(config: &std::path::Path, url: &str, log: std::path::PathBuf) -> Daemon {
    let mut cmd = celeriac();
    cmd.arg("beat")
        .arg("-c")
        .arg(config)
        .arg("--broker")
        .arg(url)
        .arg("--lease-ttl")
        .arg("2s")
        .arg("--allow-root");
    Daemon::spawn(cmd, log)
}

/// The journal entries, as field maps.
fn journal(server: &RedisServer) -> Vec<HashMap<String, String>> {
    let mut c = server.connection();
    let v: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("celeriac:beat:journal")
        .arg("-")
        .arg("+")
        .query(&mut c)
        .unwrap();
    v.into_iter()
        .map(|(_, fields)| fields.into_iter().collect())
        .collect()
}

/// Whether an entry says `schedule`'s tick at `tick_ms` fired (a routine batch's `ticks` line,
/// or a per-fire entry with its nominal instant in ms or RFC 3339 or its fire id) or was
/// dropped by the misfire policy (any `misfired` entry of the schedule).
fn accounts_for(e: &HashMap<String, String>, schedule: &str, tick_ms: i64) -> bool {
    let get = |k: &str| e.get(k).map(String::as_str).unwrap_or("");
    let tick = Utc.timestamp_millis_opt(tick_ms).unwrap();
    let fid = format!(
        "{schedule}@{}",
        tick.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    );
    match get("event") {
        "misfired" => get("schedule") == schedule,
        "fired" | "caught_up" => {
            let nominal_is_tick = get("nominal").parse::<i64>().ok() == Some(tick_ms)
                || DateTime::parse_from_rfc3339(get("nominal"))
                    .is_ok_and(|t| t.timestamp_millis() == tick_ms);
            get("ticks").lines().any(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                f.first() == Some(&schedule)
                    && f.last().and_then(|n| n.parse().ok()) == Some(tick_ms)
            }) || get("fire_id") == fid
                || (get("schedule") == schedule && nominal_is_tick)
        }
        _ => false,
    }
}

/// **Bug: the first tick of a schedule that never fired is lost without a trace when it
/// falls in a leader gap.** Found by the chaos soak (`tick lost (known bug: never-fired
/// schedule, leader gap)`): a schedule added by a reload, or present since the beats started,
/// whose first tick passes while the leader is dead or SIGSTOPped, is neither caught up by
/// the next leader nor journaled as dropped, whatever its misfire policy.
///
/// Cause: on takeover, `Beat::become_leader` plans the catch-up from the schedule's
/// last-fired record (`beat:last`); a schedule that never fired has none, and
/// `misfire::plan_catch_up` returns an empty plan for `last_fired == None` ("a new schedule:
/// nothing to catch up"). So the tick is silently skipped, although the schedule was
/// configured (and armed in a leader's agenda) before it: the journal says nothing, and
/// `celeriac why` cannot explain the missing run.
///
/// Reproduction: one beat leads with `first: {every: 10s, misfire: {grace: 1m, catch_up:
/// all}}`, is SIGKILLed before the first tick T; a second beat takes over 2 s after T.
/// Expected: `first@T` caught up (it is 2 s late, grace 1 min) — or at least a `misfired`
/// journal entry. Actual: nothing.
///
/// The beat-tests branch (commit eee0c0f, "fix the never-fired catch-up gap": a
/// `beat:armed` record of when each schedule was first armed) fixes this; un-ignore once it
/// is on main.
#[test]
fn first_tick_missed_while_no_beat_leads_is_neither_caught_up_nor_journaled() {
    let server = RedisServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("celeriac.yaml");
    std::fs::write(
        &config,
        "tasks:\n  noop: {builtin: noop}\n\
         schedules:\n  first:\n    task: noop\n    every: 10s\n    expires: never\n    \
         misfire: {grace: 1m, catch_up: all}\n",
    )
    .unwrap();

    // Start just after a 10 s boundary, so that the first tick T is ~9 s away.
    while now_ms() % 10_000 > 1_000 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let tick_ms = (now_ms() / 10_000 + 1) * 10_000;
    let tick: DateTime<Utc> = Utc.timestamp_millis_opt(tick_ms).unwrap();
    let mut a = beat(&config, &url, dir.path().join("a.log"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !a.log().contains("became leader") {
        assert!(
            std::time::Instant::now() < deadline,
            "beat a never led:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        now_ms() < tick_ms - 2_000,
        "too slow to lead before the tick"
    );
    a.kill();

    // The tick passes with no beat alive; a second beat takes over 2 s later.
    while now_ms() < tick_ms + 2_000 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let b = beat(&config, &url, dir.path().join("b.log"));
    let fire_id = format!(
        "first@{}",
        tick.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    loop {
        let j = journal(&server);
        let accounted = j.iter().any(|e| accounts_for(e, "first", tick_ms));
        if accounted {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{fire_id} was neither fired/caught up nor journaled as dropped after the takeover;\n\
             journal: {j:?}\nbeat b log:\n{}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The reproduction above recognises a fired tick in every journal form the beat writes.
#[test]
fn accounts_for_reads_batched_and_per_fire_journal_entries() {
    let tick_ms = 1_795_789_230_000;
    let e = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let batch = e(&[
        ("event", "fired"),
        (
            "ticks",
            "other\tdefault\tid1\t1795789230000\nfirst\tdefault\tid2\t1795789230000",
        ),
    ]);
    assert!(accounts_for(&batch, "first", tick_ms));
    assert!(!accounts_for(&batch, "first", tick_ms + 10_000));
    let caught_up_ms = e(&[
        ("event", "caught_up"),
        ("schedule", "first"),
        ("nominal", "1795789230000"),
    ]);
    assert!(accounts_for(&caught_up_ms, "first", tick_ms));
    let old_form = e(&[
        ("event", "caught_up"),
        ("schedule", "first"),
        ("fire_id", "first@2026-11-27T14:20:30Z"),
        ("nominal", "2026-11-27T14:20:30Z"),
    ]);
    assert!(accounts_for(&old_form, "first", tick_ms));
    let misfired = e(&[("event", "misfired"), ("schedule", "first")]);
    assert!(accounts_for(&misfired, "first", tick_ms));
    assert!(!accounts_for(
        &e(&[("event", "leader_acquired")]),
        "first",
        tick_ms
    ));
}
