//! No key is used twice after a restore or a copy of the database (issue 19): alice's daemon is
//! copied (by `omemod backup`, or by SQLite's backup API as `sqlite3 .backup` does, with no
//! stamp), goes on for a moment (messages both ways in both namespaces, a key exchange that
//! consumes one of her prekeys), is SIGKILLed well within a second of the copy, and the copy is
//! put back (`omemod restore`, or a plain file copy). Then, round after round:
//!
//! - no (ratchet key, counter) position of alice's sending chains is ever used twice (every
//!   key element she sends is parsed with protocol-core);
//! - her bundle offers none of the prekeys used after the copy;
//! - no message she decrypted after the copy decrypts again as new;
//! - the conversation with bob recovers in both directions, with the client doing nothing but
//!   the actions it is given.
//!
//! The default suite runs a few rounds; `restore_100_rounds_each` (ignored) runs 100 of each.
#[path = "../support/mod.rs"]
mod support;

use protocol_core::wire::{oldmemo, twomemo};
use protocol_core::xml::Encrypted;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{path_str, Client, Daemon, BOTH, OMEMO2};

const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";

/// How the copy is taken and put back.
#[derive(Debug, Clone, Copy)]
enum Copy {
    /// `omemod backup` while the daemon runs, `omemod restore` after.
    Omemod,
    /// SQLite's online backup API (what `sqlite3 .backup` does) while the daemon runs, and a
    /// plain file copy over the database after: the copy carries no stamp.
    Sqlite,
}

/// What the rounds found.
#[derive(Debug, Default)]
struct Tally {
    rounds: usize,
    /// Rounds whose restore `status.rollback` reported.
    detected: usize,
    /// Sending positions of alice seen twice.
    reused: usize,
    /// Prekeys used after the copy that alice's bundle offers again.
    republished: usize,
    /// Messages decrypted after the copy that decrypted again as new.
    replayed: usize,
    /// Rounds after which the conversation did not work both ways.
    unrecovered: usize,
    /// Bob's messages on old sessions refused as `possible_replay` (replays included).
    refused_as_replay: usize,
    /// Longest time from the copy to the kill.
    slowest_kill: Duration,
}

/// Alice's sending positions (namespace, ratchet key, counter) seen so far.
#[derive(Default)]
struct Positions(HashSet<(bool, [u8; 32], u32)>);

impl Positions {
    /// Records the position of every key in `xml` (alice's message); returns how many were
    /// seen before.
    fn record(&mut self, xml: &str) -> usize {
        let element = Encrypted::from_xml(xml).expect("alice's <encrypted>");
        let old = element.version == protocol_core::Version::Oldmemo;
        element
            .keys
            .iter()
            .filter(|k| {
                let (key, n) = ratchet_position(old, k.kex, &k.data);
                !self.0.insert((old, key, n))
            })
            .count()
    }
}

/// The (ratchet key, counter) of one key element.
fn ratchet_position(old: bool, kex: bool, data: &[u8]) -> ([u8; 32], u32) {
    if old {
        let inner = if kex {
            oldmemo::PreKeySignalMessage::parse(data)
                .expect("0.3 key exchange")
                .message
        } else {
            data.to_vec()
        };
        let m = oldmemo::parse_signal_message(&inner)
            .expect("0.3 message")
            .message;
        (m.ratchet_key, m.counter)
    } else {
        let auth = if kex {
            twomemo::OMEMOKeyExchange::parse(data)
                .expect("OMEMO 2 key exchange")
                .message
        } else {
            twomemo::OMEMOAuthenticatedMessage::parse(data).expect("OMEMO 2 message")
        };
        let m = auth.parse_message().expect("OMEMOMessage");
        (m.dh_pub, m.n)
    }
}

/// The one-time prekey id a key exchange in `xml` uses.
fn prekey_used(xml: &str) -> u32 {
    let element = Encrypted::from_xml(xml).expect("<encrypted>");
    let key = element.keys.iter().find(|k| k.kex).expect("a key exchange");
    match element.version {
        protocol_core::Version::Oldmemo => {
            oldmemo::PreKeySignalMessage::parse(&key.data)
                .expect("kex")
                .pre_key_id
        }
        protocol_core::Version::Twomemo => {
            twomemo::OMEMOKeyExchange::parse(&key.data)
                .expect("kex")
                .pk_id
        }
    }
}

/// Prekey ids of a `<bundle>` (either namespace).
fn prekey_ids(xml: &str) -> BTreeSet<u32> {
    let attr = if xml.contains("<pk ") {
        "<pk id="
    } else {
        "<preKeyPublic preKeyId="
    };
    xml.match_indices(attr)
        .map(|(i, _)| {
            let rest = &xml[i + attr.len() + 1..];
            rest[..rest.find(['\'', '"']).expect("quote")]
                .parse()
                .expect("prekey id")
        })
        .collect()
}

fn omemod(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_omemod"))
        .args(args)
        .output()
        .expect("run omemod");
    assert!(
        out.status.success(),
        "omemod {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Calls as `account`.
fn call_as(c: &mut Client, account: &str, method: &str, mut params: Value) -> Result<Value, Value> {
    params["account"] = json!(account);
    c.call(method, params)
}

fn ok_as(c: &mut Client, account: &str, method: &str, params: Value) -> Value {
    call_as(c, account, method, params).unwrap_or_else(|e| panic!("{method} as {account}: {e}"))
}

/// The message of namespace `ns` in an `encrypt` or `heartbeat` answer.
fn message(r: &Value, ns: &str) -> Option<String> {
    r["messages"]
        .as_array()?
        .iter()
        .find(|m| m["namespace"] == ns)
        .and_then(|m| m["xml"].as_str())
        .map(str::to_owned)
}

/// One side of the conversation: a daemon's client acting as `jid`.
struct Side<'a> {
    c: &'a mut Client,
    jid: &'a str,
}

/// The client's part: performs `actions` that `me` was given (fetching from / delivering to
/// `peer`, whose own follow-ups are performed in turn). Alice's messages are recorded.
fn perform(
    me: &mut Side<'_>,
    peer: &mut Side<'_>,
    actions: &[Value],
    alice: &mut Positions,
    tally: &mut Tally,
    depth: u32,
) {
    if depth > 4 {
        return;
    }
    for a in actions {
        let ns = a["namespace"].as_str().unwrap_or_default().to_owned();
        match a["type"].as_str() {
            Some("fetch_bundle") if a["jid"] == peer.jid => {
                let b = ok_as(peer.c, peer.jid, "bundle.get", json!({"namespace": ns}));
                ok_as(
                    me.c,
                    me.jid,
                    "bundle.update",
                    json!({"jid": peer.jid, "namespace": ns, "device_id": b["device_id"], "xml": b["xml"]}),
                );
            }
            Some("fetch_devicelist") if a["jid"] == peer.jid => {
                let l = ok_as(peer.c, peer.jid, "devicelist.get", json!({"namespace": ns}));
                ok_as(
                    me.c,
                    me.jid,
                    "devicelist.update",
                    json!({"jid": peer.jid, "namespace": ns, "xml": l["xml"]}),
                );
            }
            Some("send_heartbeat") if a["jid"] == peer.jid => {
                let params = json!({"jid": peer.jid, "namespace": ns, "device_id": a["device_id"]});
                let hb = match call_as(me.c, me.jid, "heartbeat", params.clone()) {
                    Ok(hb) => hb,
                    Err(e) if e["data"]["kind"] == "no_bundle" => {
                        let fetch =
                            json!([{"type": "fetch_bundle", "jid": peer.jid, "namespace": ns}]);
                        perform(
                            me,
                            peer,
                            fetch.as_array().expect("list"),
                            alice,
                            tally,
                            depth + 1,
                        );
                        match call_as(me.c, me.jid, "heartbeat", params) {
                            Ok(hb) => hb,
                            Err(_) => continue,
                        }
                    }
                    Err(_) => continue,
                };
                let Some(xml) = message(&hb, &ns) else {
                    continue;
                };
                if me.jid == ALICE {
                    tally.reused += alice.record(&xml);
                }
                if let Ok(d) = call_as(
                    peer.c,
                    peer.jid,
                    "decrypt",
                    json!({"from": me.jid, "xml": xml}),
                ) {
                    let follow = d["actions"].as_array().cloned().unwrap_or_default();
                    perform(peer, me, &follow, alice, tally, depth + 1);
                }
            }
            // Publishing is reading `bundle.get`, which the peer does when it needs the bundle.
            _ => {}
        }
    }
}

/// Alice sends `body` to bob in `ns` and bob reads it, each doing what they are told; whether
/// bob read exactly `body`.
fn alice_to_bob(
    alice: &mut Side<'_>,
    bob: &mut Side<'_>,
    ns: &str,
    body: &str,
    seen: &mut Positions,
    tally: &mut Tally,
) -> bool {
    for _ in 0..3 {
        let r = ok_as(
            alice.c,
            ALICE,
            "encrypt",
            json!({"to": [BOB], "body": body, "namespaces": [ns]}),
        );
        let Some(xml) = message(&r, ns) else {
            let actions = r["actions"].as_array().cloned().unwrap_or_default();
            perform(alice, bob, &actions, seen, tally, 0);
            continue;
        };
        tally.reused += seen.record(&xml);
        return match call_as(bob.c, BOB, "decrypt", json!({"from": ALICE, "xml": xml})) {
            Ok(d) => {
                let follow = d["actions"].as_array().cloned().unwrap_or_default();
                perform(bob, alice, &follow, seen, tally, 0);
                d["body"] == body
            }
            Err(_) => false,
        };
    }
    false
}

/// Bob sends `body` to alice in `ns` and alice reads it, each doing what they are told; the
/// message and whether alice read exactly `body` as a new message.
fn bob_to_alice(
    alice: &mut Side<'_>,
    bob: &mut Side<'_>,
    ns: &str,
    body: &str,
    seen: &mut Positions,
    tally: &mut Tally,
) -> (String, bool) {
    let r = ok_as(
        bob.c,
        BOB,
        "encrypt",
        json!({"to": [ALICE], "body": body, "namespaces": [ns]}),
    );
    let xml = message(&r, ns).unwrap_or_else(|| panic!("bob has no session with alice: {r}"));
    match call_as(alice.c, ALICE, "decrypt", json!({"from": BOB, "xml": xml})) {
        Ok(d) => {
            let follow = d["actions"].as_array().cloned().unwrap_or_default();
            perform(alice, bob, &follow, seen, tally, 0);
            let fresh = d["body"] == body && d["redelivered"] == false;
            (xml, fresh)
        }
        Err(e) => {
            if e["data"]["kind"] == "possible_replay" {
                tally.refused_as_replay += 1;
            }
            let follow = e["data"]["actions"].as_array().cloned().unwrap_or_default();
            perform(alice, bob, &follow, seen, tally, 0);
            (xml, false)
        }
    }
}

/// Alice and bob both learn each other (both namespaces) and talk until it works both ways.
fn introduce(a: &mut Client, b: &mut Client) {
    for ns in BOTH {
        let l = ok_as(b, BOB, "devicelist.get", json!({"namespace": ns}));
        ok_as(
            a,
            ALICE,
            "devicelist.update",
            json!({"jid": BOB, "namespace": ns, "xml": l["xml"]}),
        );
        let l = ok_as(a, ALICE, "devicelist.get", json!({"namespace": ns}));
        ok_as(
            b,
            BOB,
            "devicelist.update",
            json!({"jid": ALICE, "namespace": ns, "xml": l["xml"]}),
        );
    }
}

/// Takes the copy of alice's database.
fn take_copy(how: Copy, d: &Daemon, dst: &Path) {
    match how {
        Copy::Omemod => omemod(&["backup", &path_str(dst), "--db", &path_str(&d.db)]),
        Copy::Sqlite => {
            let src = rusqlite::Connection::open_with_flags(
                &d.db,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .expect("open live database");
            src.backup(rusqlite::DatabaseName::Main, dst, None)
                .expect("backup");
        }
    }
}

/// Puts the copy back (the daemon is stopped).
fn put_back(how: Copy, d: &Daemon, copy: &Path) {
    match how {
        Copy::Omemod => omemod(&["restore", &path_str(copy), "--db", &path_str(&d.db)]),
        Copy::Sqlite => {
            for suffix in ["-wal", "-shm"] {
                let mut p = d.db.as_os_str().to_owned();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
            std::fs::copy(copy, &d.db).expect("copy over the database");
        }
    }
}

/// `rounds` rounds of copy, activity, SIGKILL, put back, checks.
fn rounds(how: Copy, rounds: usize) -> Tally {
    let mut da = Daemon::start();
    let mut db = Daemon::start();
    let mut tally = Tally::default();
    let mut seen = Positions::default();
    let mut a = da.client();
    let mut b = db.client();
    a.create_account(ALICE);
    b.create_account(BOB);
    introduce(&mut a, &mut b);
    for ns in BOTH {
        let ok = alice_to_bob(
            &mut Side {
                c: &mut a,
                jid: ALICE,
            },
            &mut Side {
                c: &mut b,
                jid: BOB,
            },
            ns,
            "hello",
            &mut seen,
            &mut tally,
        );
        assert!(ok, "{ns}: first contact");
        let (_, ok) = bob_to_alice(
            &mut Side {
                c: &mut a,
                jid: ALICE,
            },
            &mut Side {
                c: &mut b,
                jid: BOB,
            },
            ns,
            "hello back",
            &mut seen,
            &mut tally,
        );
        assert!(ok, "{ns}: first answer");
    }
    for round in 0..rounds {
        tally.rounds += 1;
        // A new contact with alice's current bundle, whose key exchanges reach alice after
        // the copy (prepared before it, to keep the time to the kill short).
        let carol = format!("carol{round}@example.org");
        b.create_account(&carol);
        let mut carol_kex = Vec::new();
        for ns in BOTH {
            let l = ok_as(&mut a, ALICE, "devicelist.get", json!({"namespace": ns}));
            ok_as(
                &mut b,
                &carol,
                "devicelist.update",
                json!({"jid": ALICE, "namespace": ns, "xml": l["xml"]}),
            );
            let bu = ok_as(&mut a, ALICE, "bundle.get", json!({"namespace": ns}));
            ok_as(
                &mut b,
                &carol,
                "bundle.update",
                json!({"jid": ALICE, "namespace": ns, "device_id": bu["device_id"], "xml": bu["xml"]}),
            );
            let r = ok_as(
                &mut b,
                &carol,
                "encrypt",
                json!({"to": [ALICE], "body": "hi alice", "namespaces": [ns]}),
            );
            carol_kex.push(message(&r, ns).expect("carol's key exchange"));
        }
        let copy = da.dir.path().join(format!("copy-{round}.db"));
        take_copy(how, &da, &copy);
        let copied = Instant::now();
        // After the copy: two messages each way per namespace, and a new contact's key
        // exchange that consumes one of alice's prekeys per namespace.
        let mut decrypted_after = Vec::new();
        let mut used = BTreeSet::new();
        {
            let (al, bo) = (
                Side {
                    c: &mut a,
                    jid: ALICE,
                },
                Side {
                    c: &mut b,
                    jid: BOB,
                },
            );
            for ns in BOTH {
                for k in 0..2 {
                    let body = format!("{round}: alice {k}");
                    let r = ok_as(
                        al.c,
                        ALICE,
                        "encrypt",
                        json!({"to": [BOB], "body": body, "namespaces": [ns]}),
                    );
                    let xml = message(&r, ns).expect("alice's message");
                    tally.reused += seen.record(&xml);
                    let _ = call_as(bo.c, BOB, "decrypt", json!({"from": ALICE, "xml": xml}));
                    let body = format!("{round}: bob {k}");
                    let r = ok_as(
                        bo.c,
                        BOB,
                        "encrypt",
                        json!({"to": [ALICE], "body": body, "namespaces": [ns]}),
                    );
                    let xml = message(&r, ns).expect("bob's message");
                    if call_as(al.c, ALICE, "decrypt", json!({"from": BOB, "xml": xml}))
                        .is_ok_and(|d| d["body"] == body)
                    {
                        decrypted_after.push((BOB.to_owned(), xml));
                    }
                }
            }
        }
        for xml in &carol_kex {
            used.insert(prekey_used(xml));
            if call_as(&mut a, ALICE, "decrypt", json!({"from": carol, "xml": xml})).is_ok() {
                decrypted_after.push((carol.clone(), xml.clone()));
            }
        }
        da.kill();
        tally.slowest_kill = tally.slowest_kill.max(copied.elapsed());
        put_back(how, &da, &copy);
        let _ = std::fs::remove_file(&copy);
        da.spawn();
        a = da.client();
        let status = a.ok("status", json!({}));
        if !status["rollback"].is_null() {
            tally.detected += 1;
        }
        for ns in BOTH {
            let bu = ok_as(&mut a, ALICE, "bundle.get", json!({"namespace": ns}));
            tally.republished += prekey_ids(bu["xml"].as_str().expect("xml"))
                .intersection(&used)
                .count();
        }
        for (from, xml) in &decrypted_after {
            match call_as(&mut a, ALICE, "decrypt", json!({"from": from, "xml": xml})) {
                Ok(d) if d["redelivered"] == false => tally.replayed += 1,
                Err(e) if e["data"]["kind"] == "possible_replay" => tally.refused_as_replay += 1,
                _ => {}
            }
        }
        // Bob accepts 3 new sessions per device in 10 minutes (the rebuild rate limit, kept in
        // memory): far more restores than anyone makes, so his daemon restarts now and then.
        if round % 3 == 2 {
            db.stop();
            db.spawn();
            b = db.client();
        }
        // Recovery, the client doing only what it is told: bob writes first on odd rounds,
        // alice on even ones; then both directions must work in both namespaces.
        let mut recovered = true;
        for ns in BOTH {
            let (mut al, mut bo) = (
                Side {
                    c: &mut a,
                    jid: ALICE,
                },
                Side {
                    c: &mut b,
                    jid: BOB,
                },
            );
            if round % 2 == 1 {
                bob_to_alice(
                    &mut al,
                    &mut bo,
                    ns,
                    &format!("{round}: bob first"),
                    &mut seen,
                    &mut tally,
                );
            }
            recovered &= alice_to_bob(
                &mut al,
                &mut bo,
                ns,
                &format!("{round}: alice again"),
                &mut seen,
                &mut tally,
            );
            let (_, ok) = bob_to_alice(
                &mut al,
                &mut bo,
                ns,
                &format!("{round}: bob again"),
                &mut seen,
                &mut tally,
            );
            recovered &= ok;
            recovered &= alice_to_bob(
                &mut al,
                &mut bo,
                ns,
                &format!("{round}: alice on"),
                &mut seen,
                &mut tally,
            );
        }
        if !recovered {
            tally.unrecovered += 1;
        }
    }
    tally
}

fn check(how: Copy, n: usize) {
    let started = Instant::now();
    let t = rounds(how, n);
    eprintln!("{how:?}: {t:?} in {:?}", started.elapsed());
    assert_eq!(t.rounds, n);
    assert_eq!(
        (t.reused, t.republished, t.replayed, t.unrecovered),
        (0, 0, 0, 0),
        "{how:?}: (positions reused, prekeys republished, old messages decrypted as new, \
         rounds not recovered): {t:?}"
    );
    assert_eq!(t.detected, n, "{how:?}: every restore is noticed: {t:?}");
    // Of bob's messages read after each copy, those on a chain the copy holds are refused as
    // possible replays when they come again (the others no longer decrypt at all).
    assert!(t.refused_as_replay >= n, "{how:?}: {t:?}");
    assert!(
        t.slowest_kill < Duration::from_secs(1),
        "{how:?}: the kill came {:?} after the copy",
        t.slowest_kill
    );
}

/// Rounds in the default suite (`OMEMOD_RESTORE_ROUNDS` overrides).
fn default_rounds() -> usize {
    std::env::var("OMEMOD_RESTORE_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

/// An account of alice's daemon that knows bob's device (OMEMO 2).
fn account_knowing_bob(a: &mut Client, b: &mut Client, jid: &str) {
    a.create_account(jid);
    let list = ok_as(b, BOB, "devicelist.get", json!({"namespace": OMEMO2}));
    ok_as(
        a,
        jid,
        "devicelist.update",
        json!({"jid": BOB, "namespace": OMEMO2, "xml": list["xml"]}),
    );
    let bu = ok_as(b, BOB, "bundle.get", json!({"namespace": OMEMO2}));
    ok_as(
        a,
        jid,
        "bundle.update",
        json!({"jid": BOB, "namespace": OMEMO2, "device_id": bu["device_id"], "xml": bu["xml"]}),
    );
}

/// `jid` writes to bob (a session row written).
fn write_to_bob(a: &mut Client, jid: &str) {
    let r = ok_as(
        a,
        jid,
        "encrypt",
        json!({"to": [BOB], "body": "hi", "namespaces": [OMEMO2]}),
    );
    assert!(message(&r, OMEMO2).is_some(), "{r}");
}

/// Deleted sessions are no older copy after a SIGKILL, even when the record named one of them;
/// a copy from before a deletion is one, shown by the deletion count alone when the generation
/// is the same.
#[test]
fn deleted_sessions_are_no_rollback_and_a_copy_from_before_them_is() {
    let mut da = Daemon::start();
    let db = Daemon::start();
    let (mut a, mut b) = (da.client(), db.client());
    b.create_account(BOB);
    account_knowing_bob(&mut a, &mut b, "stays@example.org");
    account_knowing_bob(&mut a, &mut b, "goes@example.org");
    write_to_bob(&mut a, "stays@example.org");
    // The last session row written (the one the record names) is deleted next.
    write_to_bob(&mut a, "goes@example.org");
    a.ok("account.delete", json!({"jid": "goes@example.org"}));
    da.kill();
    da.spawn();
    let status = da.client().ok("status", json!({}));
    assert_eq!(status["rollback"], Value::Null, "{status}");
    // A copy, a write, a deletion, a crash, the copy put back: the same generation, but the
    // copy has seen one deletion less.
    let mut a = da.client();
    account_knowing_bob(&mut a, &mut b, "goes2@example.org");
    write_to_bob(&mut a, "goes2@example.org");
    let copy = da.dir.path().join("copy.db");
    take_copy(Copy::Sqlite, &da, &copy);
    write_to_bob(&mut a, "stays@example.org");
    a.ok("account.delete", json!({"jid": "goes2@example.org"}));
    da.kill();
    put_back(Copy::Sqlite, &da, &copy);
    da.spawn();
    let status = da.client().ok("status", json!({}));
    assert_eq!(
        status["rollback"]["found_by"],
        json!(["deletions"]),
        "{status}"
    );
    assert_eq!(
        status["rollback"]["accounts"],
        json!(["stays@example.org", "goes2@example.org"]),
        "{status}"
    );
}

#[test]
fn restore_of_an_omemod_backup_after_sigkill_reuses_no_key() {
    check(Copy::Omemod, default_rounds());
}

#[test]
fn restore_of_a_sqlite_copy_after_sigkill_reuses_no_key() {
    check(Copy::Sqlite, default_rounds());
}

#[test]
#[ignore = "100 rounds of each kind: run by hand (see docs)"]
fn restore_100_rounds_each() {
    check(Copy::Omemod, 100);
    check(Copy::Sqlite, 100);
}
