//! The `celeriac` binary's `check` and `next` commands, run as a user runs them.

use crate::util::{celeriac, repo_root};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = celeriac()
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run celeriac");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_shipped_example_with_a_summary() {
    let (code, out, _) = run(&["check", "-c", "schedules/"]);
    assert_eq!(code, 0);
    assert_eq!(out, "schedules/: ok (4 schedules, 3 tasks, 2 queues)\n");
}

#[test]
fn check_prints_every_error_with_location_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "timezone: Asia/Shangai\ntasks:\n  t: {builtin: noop}\nschedules:\n  a:\n    task: t\n    cron: \"61 * * * *\"\n  b:\n    task: nope\n    every: 10s\n    priorty: 3\n",
    )
    .unwrap();
    let (code, out, err) = run(&["check", "-c", file.to_str().unwrap()]);
    assert_eq!(code, 78, "stdout: {out}\nstderr: {err}");
    let f = file.display().to_string();
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines[0].starts_with(&format!("{f}:1:11: ")), "{err}");
    assert!(lines[0].contains("Asia/Shanghai"), "{err}");
    assert!(
        err.contains(&format!("{f}:7:12: ")),
        "cron field column: {err}"
    );
    assert!(err.contains(&format!("{f}:9:11: ")), "unknown task: {err}");
    assert!(
        err.contains(&format!("{f}:11:5: ")) && err.contains("priority"),
        "unknown key: {err}"
    );
    assert!(
        err.ends_with("configuration is invalid (4 errors)\n"),
        "{err}"
    );
}

#[test]
fn check_of_a_missing_path_is_a_config_error() {
    let (code, _, err) = run(&["check", "-c", "/nonexistent/celeriac"]);
    assert_eq!(code, 78);
    assert!(err.contains("/nonexistent/celeriac"), "{err}");
}

#[test]
fn next_cron_prints_rfc3339_in_the_zone_offset_across_a_dst_gap() {
    let (code, out, _) = run(&[
        "next",
        "--cron",
        "30 2 * * *",
        "--tz",
        "America/New_York",
        "--after",
        "2025-03-08T12:00:00Z",
        "--count",
        "3",
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "2025-03-09T03:00:00-04:00\n2025-03-10T02:30:00-04:00\n2025-03-11T02:30:00-04:00\n"
    );
}

#[test]
fn next_defaults_to_utc_and_prints_json_on_request() {
    let (code, out, _) = run(&[
        "next",
        "--cron",
        "0 0 29 2 *",
        "--after",
        "2025-01-01T00:00:00Z",
        "--count",
        "2",
        "--json",
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "[\"2028-02-29T00:00:00+00:00\",\"2032-02-29T00:00:00+00:00\"]\n"
    );
}

#[test]
fn next_every_uses_the_anchor_grid() {
    let (code, out, _) = run(&[
        "next",
        "--every",
        "90s",
        "--anchor",
        "2025-01-01T00:00:00Z",
        "--after",
        "2025-01-01T00:01:00Z",
        "--count",
        "2",
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "2025-01-01T00:01:30+00:00\n2025-01-01T00:03:00+00:00\n"
    );
}

#[test]
fn next_accepts_a_local_after_in_the_zone() {
    let (code, out, _) = run(&[
        "next",
        "--cron",
        "30 1 * * *",
        "--tz",
        "America/New_York",
        "--after",
        "2025-11-02T00:00",
        "--count",
        "2",
    ]);
    assert_eq!(code, 0);
    // The repeated 01:30 fires once (first occurrence) since the hour is restricted.
    assert_eq!(
        out,
        "2025-11-02T01:30:00-04:00\n2025-11-03T01:30:00-05:00\n"
    );
}

#[test]
fn next_rejects_bad_input_on_stderr_with_nonzero_exit() {
    for args in [
        &["next", "--cron", "61 * * * *"][..],
        &["next", "--cron", "* * * *"],
        &["next", "--cron", "0 0 30 2 *"],
        &["next", "--cron", "* * * * *", "--tz", "Mars/Olympus"],
        &["next", "--cron", "* * * * *", "--after", "yesterday"],
        &["next", "--every", "0s"],
    ] {
        let (code, out, err) = run(args);
        assert_ne!(code, 0, "{args:?} succeeded");
        assert!(out.is_empty(), "{args:?} printed to stdout: {out}");
        assert!(!err.is_empty(), "{args:?} printed no error");
    }
    let (_, _, err) = run(&["next", "--cron", "* * * * *", "--tz", "Asia/Shangai"]);
    assert!(err.contains("Asia/Shanghai"), "no suggestion: {err}");
}

#[test]
fn next_of_configured_schedules_lists_each_one() {
    let (code, out, _) = run(&[
        "next",
        "-c",
        "schedules/",
        "--after",
        "2025-01-06T00:00:00+08:00",
    ]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "disk-report\t2025-01-06T00:00:15+08:00",
            "heartbeat\t2025-01-06T00:00:05+08:00",
            "nightly-cleanup\t2025-01-06T02:30:00+08:00",
            "weekday-morning-report\t2025-01-06T09:00:00+08:00",
        ]
    );
    let (code, out, _) = run(&[
        "next",
        "-c",
        "schedules/",
        "nightly-cleanup",
        "--after",
        "2025-01-06T00:00:00+08:00",
        "--count",
        "2",
        "--json",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v[0]["next"],
        serde_json::json!(["2025-01-06T02:30:00+08:00", "2025-01-07T02:30:00+08:00"])
    );
    let (code, _, err) = run(&["next", "-c", "schedules/", "no-such"]);
    assert_eq!(code, 2);
    assert!(err.contains("no-such"));
}
