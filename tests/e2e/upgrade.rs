//! Upgrades from frozen databases: each of `daemon/tests/fixtures/upgrade/schema-{1,2,3,8}` was
//! written by the omemod of the day that schema version was current (see its README.md and
//! `scripts/make-upgrade-fixtures`), with two accounts in one database that hold sessions with
//! each other in both namespaces. Today's omemod opens a copy, migrates it to today's version, and
//! every conversation goes on where it stopped: the next message of each session (encrypted by
//! the old binary, never decrypted) decrypts, a reply goes back on the same session, the message
//! whose key was skipped decrypts, and all of it survives a restart. Every fixture holds its
//! secrets in plaintext (sealing came with schema 9, issue 24): once upgraded, no file of the
//! database holds any of them ([`secrets`]).
#[path = "../support/secrets.rs"]
mod secrets;
#[path = "../support/mod.rs"]
mod support;

use serde::Deserialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use support::*;

fn fixture(schema: u32) -> PathBuf {
    repo().join(format!("daemon/tests/fixtures/upgrade/schema-{schema}"))
}

/// Today's schema version: the number of files in `migrations/` (versions are consecutive from
/// 1, which `storage::migrations` checks; a file's own number may run ahead of its version
/// while branches that each add one are merged).
fn latest_schema() -> u32 {
    let files = std::fs::read_dir(repo().join("migrations"))
        .expect("migrations/")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".sql")?.get(..4)?.parse::<u32>().ok()
        })
        .count();
    u32::try_from(files).expect("a migration count")
}

/// `PRAGMA user_version` as the file's header holds it (bytes 60..64, big-endian), read without
/// SQLite so that nothing touches the fixture.
fn header_version(db: &Path) -> u32 {
    let bytes = std::fs::read(db).expect("read database");
    let field: [u8; 4] = bytes[60..64].try_into().expect("header");
    u32::from_be_bytes(field)
}

/// `PRAGMA user_version` of the live database, read beside the running daemon.
fn live_version(db: &Path) -> u32 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open database");
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version")
}

/// Today's daemon on a copy of the fixture: started once on an empty database of its own to get
/// a place to run, stopped, and started again on the copy.
fn daemon_on(schema: u32) -> Daemon {
    // The skipped keys in the fixture age with the checkout; the default bound (30 days) would
    // prune them at start one day, which is the calendar's doing, not the upgrade's.
    let mut d = Daemon::start_with(&["--skipped-key-max-age", "36500"]);
    d.stop();
    for suffix in ["", "-wal", "-shm", ".generation"] {
        let mut p = d.db.clone().into_os_string();
        p.push(suffix);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("remove {p:?}: {e}"),
        }
    }
    let from = fixture(schema);
    std::fs::copy(from.join("omemod.db"), &d.db).expect("copy omemod.db");
    // Schema 3 kept the rollback-detection counter beside the database.
    let generation = from.join("omemod.db.generation");
    if generation.exists() {
        let mut to = d.db.clone().into_os_string();
        to.push(".generation");
        std::fs::copy(&generation, to).expect("copy omemod.db.generation");
    }
    d.spawn();
    d
}

/// `next-messages.json`.
#[derive(Deserialize)]
struct Saved {
    schema_version: u32,
    accounts: Vec<Account>,
    messages: Vec<Message>,
}

#[derive(Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Account {
    jid: String,
    device_id: u64,
}

/// A message the old binary encrypted and nobody decrypted: the `next` one of a session, or
/// one held back whose key was `skipped`.
#[derive(Deserialize)]
struct Message {
    kind: String,
    namespace: String,
    from: String,
    to: String,
    body: String,
    xml: String,
}

/// Both accounts of the fixture, on one daemon.
struct Talk {
    c: Client,
    accounts: Vec<Account>,
}

impl Talk {
    fn device(&self, jid: &str) -> u64 {
        self.accounts
            .iter()
            .find(|a| a.jid == jid)
            .map(|a| a.device_id)
            .unwrap_or_else(|| panic!("no account {jid}"))
    }

    /// Encrypts `body` from `from` to `to`'s one device on their session in `ns`, which must go
    /// on (no key exchange); returns the XML.
    fn send(&mut self, ns: &str, from: &str, to: &str, body: &str) -> String {
        let r = self.c.ok(
            "encrypt",
            json!({"account": from, "to": [to], "body": body, "namespaces": [ns]}),
        );
        let devices = r["devices"].as_array().expect("devices");
        assert_eq!(devices.len(), 1, "{r}");
        assert_eq!(devices[0]["device_id"], self.device(to), "{r}");
        assert_eq!(devices[0]["status"], "encrypted", "{r}");
        assert_eq!(devices[0]["kex"], false, "the session was rebuilt: {r}");
        let m = &r["messages"][0];
        assert_eq!(m["namespace"], ns, "{r}");
        m["xml"].as_str().expect("xml").to_owned()
    }

    /// `to` decrypts `xml` from `from` on their session in `ns` and must read `body`.
    fn receive(&mut self, ns: &str, from: &str, to: &str, xml: &str, body: &str) {
        let r = self
            .c
            .call("decrypt", json!({"account": to, "from": from, "xml": xml}))
            .unwrap_or_else(|e| panic!("{ns}: {to} cannot decrypt {body:?}: {e}"));
        assert_eq!(r["body"], body, "{r}");
        assert_eq!(r["namespace"], ns, "{r}");
        assert_eq!(r["sender"]["jid"], from, "{r}");
        assert_eq!(r["sender"]["device_id"], self.device(from), "{r}");
        assert_eq!(r["key_exchange"], false, "{r}");
        assert_eq!(r["redelivered"], false, "{r}");
    }

    /// `from` sends `body` and `to` reads it.
    fn say(&mut self, ns: &str, from: &str, to: &str, body: &str) {
        let xml = self.send(ns, from, to, body);
        self.receive(ns, from, to, &xml, body);
    }
}

fn upgrade(schema: u32) {
    let dir = fixture(schema);
    let saved: Saved = serde_json::from_slice(
        &std::fs::read(dir.join("next-messages.json")).expect("next-messages.json"),
    )
    .expect("next-messages.json");
    assert_eq!(saved.schema_version, schema);
    assert_eq!(header_version(&dir.join("omemod.db")), schema);
    let latest = latest_schema();
    assert!(
        latest > schema,
        "schema {schema} is today's: nothing to upgrade"
    );
    let of_kind = |kind: &'static str| saved.messages.iter().filter(move |m| m.kind == kind);
    assert_eq!(of_kind("next").count(), 4, "both ways, both namespaces");
    assert_eq!(of_kind("skipped").count(), 2, "one per namespace");
    for ns in BOTH {
        assert!(
            of_kind("next").any(|m| m.namespace == ns),
            "no {ns} message"
        );
        assert!(
            of_kind("skipped").any(|m| m.namespace == ns),
            "none in {ns}"
        );
    }

    // The fixture's secrets, read from a copy (SQLite would leave files beside the fixture).
    let scratch = tempfile::tempdir().expect("tempdir");
    std::fs::copy(dir.join("omemod.db"), scratch.path().join("omemod.db")).expect("copy");
    let known = secrets::secrets(&scratch.path().join("omemod.db"));
    let count = |what: &str| known.iter().filter(|s| s.what.contains(what)).count();
    assert_eq!(count("identity.private_key"), 2);
    assert!(count("root key") >= 4, "root keys");
    assert_eq!(count("skipped_keys.message_key"), 2);
    if schema >= 8 {
        assert!(count("redelivery.key_material") > 0, "redelivery");
        assert!(count("own_messages.key_material") > 0, "own messages");
    }

    let mut d = daemon_on(schema);
    let state = d.db.parent().expect("state dir").to_owned();
    let no_secret_left = |when: &str| {
        let found = secrets::hits(&[state.as_path()], &known);
        assert!(
            found.is_empty(),
            "{when}: {} of the fixture's {} secrets found:\n{}",
            found.len(),
            known.len(),
            found.join("\n")
        );
    };
    no_secret_left("after the upgrade");
    let mut t = Talk {
        c: d.client(),
        accounts: saved.accounts.clone(),
    };
    assert_eq!(live_version(&d.db), latest, "migrations not applied");
    let status = t.c.ok("status", json!({}));
    assert_eq!(status["rollback"], Value::Null, "{status}");

    // The accounts are the ones the old daemon made, with their device ids.
    let list = t.c.ok("account.list", json!({}));
    let mut found: Vec<Account> = serde_json::from_value(list).expect("account list");
    let mut expected = saved.accounts.clone();
    found.sort();
    expected.sort();
    assert_eq!(found, expected);

    // Each session's next message, then a reply on that session and an answer to the reply.
    for m in of_kind("next") {
        let (ns, from, to) = (&m.namespace, &m.from, &m.to);
        t.receive(ns, from, to, &m.xml, &m.body);
        t.say(ns, to, from, &format!("today's reply to: {}", m.body));
        t.say(ns, from, to, &format!("today's answer to: {}", m.body));
    }
    // The messages held back: their keys were skipped before the upgrade.
    for m in of_kind("skipped") {
        t.receive(&m.namespace, &m.from, &m.to, &m.xml, &m.body);
    }

    // What today's daemon wrote into the migrated file is there after a restart: the saved
    // messages are known as decrypted (a redelivery, from the table a migration added), and the
    // sessions go on.
    d.stop();
    d.spawn();
    t.c = d.client();
    assert_eq!(live_version(&d.db), latest);
    for m in &saved.messages {
        let again = t.c.ok(
            "decrypt",
            json!({"account": m.to, "from": m.from, "xml": m.xml}),
        );
        assert_eq!(again["redelivered"], true, "{again}");
        assert_eq!(again["body"], m.body.as_str(), "{again}");
    }
    for m in of_kind("next") {
        let body = format!("after a restart, {} to {}", m.from, m.to);
        t.say(&m.namespace, &m.from, &m.to, &body);
    }
    d.stop();
    no_secret_left("after the daemon stopped");
}

#[test]
fn schema_1_database_upgrades_and_its_sessions_go_on() {
    upgrade(1);
}

#[test]
fn schema_2_database_upgrades_and_its_sessions_go_on() {
    upgrade(2);
}

#[test]
fn schema_3_database_upgrades_and_its_sessions_go_on() {
    upgrade(3);
}

/// The last schema before sealing: redelivery and own-message key material too.
#[test]
fn schema_8_database_upgrades_sealed_and_its_sessions_go_on() {
    upgrade(8);
}
