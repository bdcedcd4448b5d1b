//! The systemd units in `systemd/` pass `systemd-analyze verify` (with the unit's binary path
//! pointed at the test build), with no warning about our files.

use std::process::Command;

use crate::util::repo_root;

#[test]
fn units_pass_systemd_analyze_verify_without_warnings() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-analyze is not installed on this machine");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_celeriac");
    for entry in std::fs::read_dir(repo_root().join("systemd")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        std::fs::write(
            dir.path().join(&name),
            text.replace("/usr/local/bin/celeriac", bin),
        )
        .unwrap();
    }
    // A template is verified through an instance of it.
    std::fs::copy(
        dir.path().join("celeriac-worker@.service"),
        dir.path()
            .join("celeriac-worker@default\\x2creports.service"),
    )
    .unwrap();
    for unit in [
        "celeriac.target",
        "celeriac-beat.service",
        "celeriac-worker@default\\x2creports.service",
    ] {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(dir.path().join(unit))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{unit}: {stderr}");
        let ours: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(&*dir.path().to_string_lossy()) || l.contains("celeriac"))
            .collect();
        assert!(
            ours.is_empty(),
            "{unit}: warnings about our units:\n{}",
            ours.join("\n")
        );
    }
}

#[test]
fn units_run_the_documented_commands() {
    let beat = std::fs::read_to_string(repo_root().join("systemd/celeriac-beat.service")).unwrap();
    assert!(beat.contains("Type=notify"));
    assert!(beat.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(beat.contains("WatchdogSec="));
    assert!(beat.contains("ExecStart=/usr/local/bin/celeriac beat"));
    let worker =
        std::fs::read_to_string(repo_root().join("systemd/celeriac-worker@.service")).unwrap();
    assert!(worker.contains("ExecStart=/usr/local/bin/celeriac worker --queues %I"));
    assert!(worker.contains("KillMode=mixed"));
    for unit in [&beat, &worker] {
        for hardening in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
        ] {
            assert!(unit.contains(hardening), "missing {hardening}");
        }
    }
}
