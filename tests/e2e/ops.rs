//! Operating omemod: one daemon per database, JIDs in any spelling, account lifecycle (delete,
//! backup, restore, export/import), configuration, logs.
#[path = "../support/mod.rs"]
mod support;

use serde_json::json;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// Runs `omemod ARGS` to completion (with a deadline) and returns its output.
fn omemod(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_omemod"));
    cmd.args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start omemod");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "omemod {args:?} did not exit: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn second_daemon_on_one_database_refuses_to_start_and_names_the_first() {
    let a = Daemon::start();
    a.client().create_account("alice@example.org");
    let other = a.dir.path().join("other/omemod.sock");
    let out = omemod(
        &[
            "serve",
            "--socket",
            &path_str(&other),
            "--db",
            &path_str(&a.db),
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let pid = a.pid().expect("pid").to_string();
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    assert!(err.contains(&path_str(&a.socket)), "{err}");
    assert!(!other.exists(), "the second daemon must not listen");
    // The first one is untouched and still serves.
    let accounts = a.client().ok("account.list", json!({}));
    assert_eq!(accounts.as_array().map(Vec::len), Some(1));
}

#[test]
fn lock_is_released_when_the_daemon_dies() {
    let mut a = Daemon::start();
    a.client().create_account("alice@example.org");
    a.kill();
    a.spawn();
    assert_eq!(
        a.client().ok("account.list", json!({}))[0]["jid"],
        "alice@example.org"
    );
}
