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

#[test]
fn mixed_case_jids_are_one_account_one_peer_one_trust_decision() {
    let da = Daemon::start();
    let db = Daemon::start();
    let (mut a, mut b) = (da.client(), db.client());
    let created = a.ok("account.create", json!({"jid": "Alice@Example.ORG"}));
    assert_eq!(created["jid"], "alice@example.org");
    a.err(
        "account.create",
        json!({"jid": "alice@EXAMPLE.org"}),
        "account_exists",
    );
    assert_eq!(
        a.ok("fingerprint.get", json!({"account": "ALICE@example.org"}))["jid"],
        "alice@example.org"
    );
    b.create_account("bob@example.org");
    a.learn("BOB@Example.org", &mut b, &[OMEMO2]);
    b.learn("alice@EXAMPLE.org", &mut a, &[OMEMO2]);
    // One peer whatever the spelling: one recipient device, one device list.
    let r = a.ok(
        "encrypt",
        json!({"to": ["bob@example.org", "Bob@Example.Org"], "body": "hi", "namespaces": [OMEMO2]}),
    );
    assert_eq!(r["devices"].as_array().map(Vec::len), Some(1), "{r}");
    let x = r["messages"][0]["xml"].as_str().expect("xml").to_owned();
    let d = b.ok("decrypt", json!({"from": "ALICE@example.ORG", "xml": x}));
    assert_eq!(d["body"], "hi");
    assert_eq!(d["sender"]["jid"], "alice@example.org");
    let devices = b.ok("devices.list", json!({"jid": "Alice@Example.org"}));
    assert_eq!(devices.as_array().map(Vec::len), Some(1), "{devices}");
    assert_eq!(devices[0]["jid"], "alice@example.org");
    // One trust decision: set under one spelling, seen and enforced under the others.
    let fp = a.ok("fingerprint.get", json!({}))["fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_owned();
    b.ok(
        "trust.set",
        json!({"jid": "ALICE@EXAMPLE.ORG", "fingerprint": fp, "level": "distrusted"}),
    );
    let list = b.ok("trust.list", json!({"jid": "alice@example.org"}));
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["level"], "distrusted");
    let r = b.ok(
        "encrypt",
        json!({"to": ["Alice@example.org"], "body": "no", "namespaces": [OMEMO2]}),
    );
    assert_eq!(r["devices"][0]["status"], "untrusted", "{r}");
    // Not a bare JID: typed errors.
    for bad in ["alice@example.org/phone", "a@b@c", "@example.org", ""] {
        b.err(
            "encrypt",
            json!({"to": [bad], "body": "x", "namespaces": [OMEMO2]}),
            "invalid_jid",
        );
        b.err("trust.list", json!({"jid": bad}), "invalid_jid");
    }
}
