//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// The `celeriac` binary built for this test run.
pub fn celeriac() -> Command {
    Command::new(env!("CARGO_BIN_EXE_celeriac"))
}

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
