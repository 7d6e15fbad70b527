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
use support::{path_str, prekey_ids, Client, Daemon, BOTH, OLDMEMO, OMEMO2};

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
    /// Messages refused with the actions that start a new session.
    refused_with_actions: usize,
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

/// `to` (acting as `to_jid`) stores the device list `from_jid` publishes in `ns`.
fn copy_devicelist(to: &mut Client, to_jid: &str, from: &mut Client, from_jid: &str, ns: &str) {
    let l = ok_as(from, from_jid, "devicelist.get", json!({"namespace": ns}));
    let params = json!({"jid": from_jid, "namespace": ns, "xml": l["xml"]});
    ok_as(to, to_jid, "devicelist.update", params);
}

/// `to` (acting as `to_jid`) stores the bundle `from_jid` publishes in `ns`.
fn copy_bundle(to: &mut Client, to_jid: &str, from: &mut Client, from_jid: &str, ns: &str) {
    let b = ok_as(from, from_jid, "bundle.get", json!({"namespace": ns}));
    let params =
        json!({"jid": from_jid, "namespace": ns, "device_id": b["device_id"], "xml": b["xml"]});
    ok_as(to, to_jid, "bundle.update", params);
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

/// The two people of the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Alice,
    Bob,
}

impl Who {
    fn jid(self) -> &'static str {
        match self {
            Who::Alice => ALICE,
            Who::Bob => BOB,
        }
    }

    fn other(self) -> Who {
        match self {
            Who::Alice => Who::Bob,
            Who::Bob => Who::Alice,
        }
    }
}

/// Alice's and bob's clients, what alice has sent so far, and what the rounds found.
struct Talk {
    alice: Client,
    bob: Client,
    seen: Positions,
    tally: Tally,
}

impl Talk {
    fn client(&mut self, who: Who) -> &mut Client {
        match who {
            Who::Alice => &mut self.alice,
            Who::Bob => &mut self.bob,
        }
    }

    /// Both clients, `who`'s first.
    fn both(&mut self, who: Who) -> (&mut Client, &mut Client) {
        match who {
            Who::Alice => (&mut self.alice, &mut self.bob),
            Who::Bob => (&mut self.bob, &mut self.alice),
        }
    }

    /// The client's part: performs `actions` that `me` was given (fetching from, and delivering
    /// to, the other, whose own follow-ups are performed in turn).
    fn perform(&mut self, me: Who, actions: &[Value], depth: u32) {
        if depth > 4 {
            return;
        }
        let peer = me.other();
        for a in actions.iter().filter(|a| a["jid"] == peer.jid()) {
            let ns = a["namespace"].as_str().unwrap_or_default().to_owned();
            match a["type"].as_str() {
                Some("fetch_bundle") => {
                    let (m, p) = self.both(me);
                    copy_bundle(m, me.jid(), p, peer.jid(), &ns);
                }
                Some("fetch_devicelist") => {
                    let (m, p) = self.both(me);
                    copy_devicelist(m, me.jid(), p, peer.jid(), &ns);
                }
                Some("send_heartbeat") => {
                    let params =
                        json!({"jid": peer.jid(), "namespace": ns, "device_id": a["device_id"]});
                    let hb = match call_as(self.client(me), me.jid(), "heartbeat", params.clone()) {
                        Err(e) if e["data"]["kind"] == "no_bundle" => {
                            let (m, p) = self.both(me);
                            copy_bundle(m, me.jid(), p, peer.jid(), &ns);
                            call_as(self.client(me), me.jid(), "heartbeat", params)
                        }
                        other => other,
                    };
                    if let Some(xml) = hb.ok().and_then(|hb| message(&hb, &ns)) {
                        let _ = self.deliver(me, &xml, depth);
                    }
                }
                // Publishing is reading `bundle.get`, which the peer does when it needs to.
                _ => {}
            }
        }
    }

    /// `from`'s message reaches the other, who does what it is told; the answer.
    fn deliver(&mut self, from: Who, xml: &str, depth: u32) -> Result<Value, Value> {
        if from == Who::Alice {
            self.tally.reused += self.seen.record(xml);
        }
        let to = from.other();
        let r = call_as(
            self.client(to),
            to.jid(),
            "decrypt",
            json!({"from": from.jid(), "xml": xml}),
        );
        let follow = match &r {
            Ok(d) => d["actions"].clone(),
            Err(e) => {
                if e["data"]["kind"] == "possible_replay" {
                    self.tally.refused_as_replay += 1;
                }
                if e["data"]["actions"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty())
                {
                    self.tally.refused_with_actions += 1;
                }
                e["data"]["actions"].clone()
            }
        };
        self.perform(
            to,
            follow.as_array().map_or(&[][..], Vec::as_slice),
            depth + 1,
        );
        r
    }

    /// `from` sends `body` in `ns` and the other reads it, each doing what they are told;
    /// whether it was read as a new message with exactly that body.
    fn send(&mut self, from: Who, ns: &str, body: &str) -> bool {
        for _ in 0..3 {
            let to = from.other().jid();
            let params = json!({"to": [to], "body": body, "namespaces": [ns]});
            // No device reached (e.g. its bundle must be fetched first) is an error whose
            // `data.actions` say what to do, like a skipped device's in a success.
            let r = match call_as(self.client(from), from.jid(), "encrypt", params) {
                Ok(r) => r,
                Err(e) if e["data"]["kind"] == "no_device_reached" => e["data"].clone(),
                Err(e) => panic!("encrypt as {}: {e}", from.jid()),
            };
            let Some(xml) = message(&r, ns) else {
                self.perform(
                    from,
                    r["actions"].as_array().map_or(&[][..], Vec::as_slice),
                    0,
                );
                continue;
            };
            return self
                .deliver(from, &xml, 0)
                .is_ok_and(|d| d["body"] == body && d["redelivered"] == false);
        }
        false
    }
}

/// Alice and bob both learn each other (both namespaces) and talk until it works both ways.
fn introduce(a: &mut Client, b: &mut Client) {
    for ns in BOTH {
        copy_devicelist(a, ALICE, b, BOB, ns);
        copy_devicelist(b, BOB, a, ALICE, ns);
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
    let mut t = Talk {
        alice: da.client(),
        bob: db.client(),
        seen: Positions::default(),
        tally: Tally::default(),
    };
    t.alice.create_account(ALICE);
    t.bob.create_account(BOB);
    introduce(&mut t.alice, &mut t.bob);
    for ns in BOTH {
        assert!(t.send(Who::Alice, ns, "hello"), "{ns}: first contact");
        assert!(t.send(Who::Bob, ns, "hello back"), "{ns}: first answer");
    }
    for round in 0..rounds {
        t.tally.rounds += 1;
        // A new contact with alice's current bundle, whose key exchanges reach alice after
        // the copy (prepared before it, to keep the time to the kill short).
        let carol = format!("carol{round}@example.org");
        t.bob.create_account(&carol);
        let mut carol_kex = Vec::new();
        for ns in BOTH {
            copy_devicelist(&mut t.bob, &carol, &mut t.alice, ALICE, ns);
            copy_bundle(&mut t.bob, &carol, &mut t.alice, ALICE, ns);
            let params = json!({"to": [ALICE], "body": "hi alice", "namespaces": [ns]});
            let r = ok_as(&mut t.bob, &carol, "encrypt", params);
            carol_kex.push(message(&r, ns).expect("carol's key exchange"));
        }
        let copy = da.dir.path().join(format!("copy-{round}.db"));
        take_copy(how, &da, &copy);
        let copied = Instant::now();
        // After the copy: two messages each way per namespace, and the new contact's key
        // exchange, which consumes one of alice's prekeys per namespace.
        let mut decrypted_after = Vec::new();
        let mut used = BTreeSet::new();
        for ns in BOTH {
            for k in 0..2 {
                let params = json!({"to": [BOB], "body": "after", "namespaces": [ns]});
                let r = ok_as(&mut t.alice, ALICE, "encrypt", params);
                let xml = message(&r, ns).expect("alice's message");
                t.tally.reused += t.seen.record(&xml);
                let _ = call_as(
                    &mut t.bob,
                    BOB,
                    "decrypt",
                    json!({"from": ALICE, "xml": xml}),
                );
                let body = format!("{round}: bob {k}");
                let params = json!({"to": [ALICE], "body": body, "namespaces": [ns]});
                let r = ok_as(&mut t.bob, BOB, "encrypt", params);
                let xml = message(&r, ns).expect("bob's message");
                if call_as(
                    &mut t.alice,
                    ALICE,
                    "decrypt",
                    json!({"from": BOB, "xml": xml}),
                )
                .is_ok_and(|d| d["body"] == body)
                {
                    decrypted_after.push((BOB.to_owned(), xml));
                }
            }
        }
        for xml in carol_kex {
            used.insert(prekey_used(&xml));
            if call_as(
                &mut t.alice,
                ALICE,
                "decrypt",
                json!({"from": carol, "xml": xml}),
            )
            .is_ok()
            {
                decrypted_after.push((carol.clone(), xml));
            }
        }
        da.kill();
        t.tally.slowest_kill = t.tally.slowest_kill.max(copied.elapsed());
        put_back(how, &da, &copy);
        let _ = std::fs::remove_file(&copy);
        da.spawn();
        t.alice = da.client();
        let status = t.alice.ok("status", json!({}));
        if !status["rollback"].is_null() {
            t.tally.detected += 1;
        }
        if round == 0 {
            // The republication is a duty no call caused, kept for the first subscriber.
            let mut l = da.client();
            l.ok("subscribe", json!({"types": ["publish_bundle"]}));
            let mut namespaces: Vec<Value> = (0..2)
                .map(|_| l.event().expect("publish_bundle duty"))
                .inspect(|e| {
                    assert_eq!(
                        (&e["cause"], &e["in_answer"]),
                        (&json!("rollback"), &json!(false)),
                        "{e}"
                    )
                })
                .map(|e| e["namespace"].clone())
                .collect();
            namespaces.sort_by_key(Value::to_string);
            assert_eq!(namespaces, [json!(OLDMEMO), json!(OMEMO2)]);
        }
        for ns in BOTH {
            let bu = ok_as(&mut t.alice, ALICE, "bundle.get", json!({"namespace": ns}));
            t.tally.republished += prekey_ids(bu["xml"].as_str().expect("xml"))
                .intersection(&used)
                .count();
        }
        for (from, xml) in &decrypted_after {
            let params = json!({"from": from, "xml": xml});
            match call_as(&mut t.alice, ALICE, "decrypt", params) {
                Ok(d) if d["redelivered"] == false => t.tally.replayed += 1,
                Err(e) if e["data"]["kind"] == "possible_replay" => t.tally.refused_as_replay += 1,
                _ => {}
            }
        }
        // Bob accepts 3 new sessions per device in 10 minutes (the rebuild rate limit, kept in
        // memory): far more restores than anyone makes, so his daemon restarts now and then.
        if round % 3 == 2 {
            db.stop();
            db.spawn();
            t.bob = db.client();
        }
        // Recovery, the clients doing only what they are told: bob writes first on odd
        // rounds, alice on even ones; then both directions must work in both namespaces.
        let mut recovered = true;
        for ns in BOTH {
            if round % 2 == 1 {
                // Refused, with the actions that start the new session: once alice's client
                // did them, bob's next message reads, with no message of alice's own.
                let refused_before = t.tally.refused_with_actions;
                recovered &= !t.send(Who::Bob, ns, &format!("{round}: bob first"));
                recovered &= t.tally.refused_with_actions > refused_before;
            } else {
                recovered &= t.send(Who::Alice, ns, &format!("{round}: alice first"));
            }
            recovered &= t.send(Who::Bob, ns, &format!("{round}: bob again"));
            recovered &= t.send(Who::Alice, ns, &format!("{round}: alice on"));
        }
        if !recovered {
            t.tally.unrecovered += 1;
        }
    }
    t.tally
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
    copy_devicelist(a, jid, b, BOB, OMEMO2);
    copy_bundle(a, jid, b, BOB, OMEMO2);
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
