//! Secrets sealed at rest (issue 24): after two daemons talked in both namespaces (sessions,
//! skipped message keys, redelivery, own messages) and one was backed up, no file of either
//! database directory (database, WAL, SHM, lock, generation file, backup) holds any secret the
//! databases know, raw, in hex or in base64 ([`secrets`]); the README's `sqlite3` queries still
//! answer; a wrong key refuses to start and changes nothing; a passphrase daemon starts locked; a
//! running Secret Service keeps the key.
//!
//! `OMEMOD_TEST_DAEMON=/path/to/omemod` runs the daemons of the first test from another binary
//! (an omemod from before sealing finds the secrets: the test shows what it guards against).
#[path = "../support/secrets.rs"]
mod secrets;
#[path = "../support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use secrets::{hits, secrets};
use serde_json::{json, Value};
use support::*;

fn omemod(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_omemod"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run omemod")
}

/// `omemod serve` on `d`'s database and socket, run to its end (for starts that must fail).
fn serve_once(d: &Daemon) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_omemod"))
        .args(["serve", "--socket"])
        .arg(&d.socket)
        .arg("--db")
        .arg(&d.db)
        .env("XDG_CONFIG_HOME", d.dir.path().join("config"))
        .env("DBUS_SESSION_BUS_ADDRESS", NO_SESSION_BUS)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run omemod")
}

fn daemon() -> Daemon {
    match std::env::var("OMEMOD_TEST_DAEMON") {
        Ok(bin) => Daemon::start_wrapped(
            &["sh", "-c", &format!("shift; exec '{bin}' \"$@\""), "sh"],
            &[],
        ),
        Err(_) => Daemon::start(),
    }
}

/// Alice and Bob talk in both namespaces: sessions both ways, a skipped message key each way
/// (a message read before the one sent ahead of it), redelivery rows.
fn talk(a: &mut Client, b: &mut Client) {
    a.learn("bob@example.org", b, &BOTH);
    b.learn("alice@example.org", a, &BOTH);
    for ns in BOTH {
        let x = a.encrypt_xml(&["bob@example.org"], Some("hello bob"), ns);
        b.decrypt("alice@example.org", &x).expect("bob decrypts");
        let y = b.encrypt_xml(&["alice@example.org"], Some("hello alice"), ns);
        a.decrypt("bob@example.org", &y).expect("alice decrypts");
        // Out of order: the first message's key is kept as a skipped key.
        let early = a.encrypt_xml(&["bob@example.org"], Some("first"), ns);
        let late = a.encrypt_xml(&["bob@example.org"], Some("second"), ns);
        b.decrypt("alice@example.org", &late).expect("second");
        let early_back = b.encrypt_xml(&["alice@example.org"], Some("first back"), ns);
        let late_back = b.encrypt_xml(&["alice@example.org"], Some("second back"), ns);
        a.decrypt("bob@example.org", &late_back)
            .expect("second back");
        // Held back: the skipped keys stay.
        let _ = (early, early_back);
    }
}

#[test]
fn no_file_of_the_database_or_its_backup_holds_a_secret() {
    let mut da = daemon();
    let mut db = daemon();
    let (mut a, mut b) = (da.client(), db.client());
    a.create_account("alice@example.org");
    b.create_account("bob@example.org");
    talk(&mut a, &mut b);
    let backup = da.db.parent().expect("state dir").join("backup.db");
    let out = omemod(&["backup", &path_str(&backup), "--db", &path_str(&da.db)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut known = secrets(&da.db);
    known.extend(secrets(&db.db));
    let count = |what: &str| known.iter().filter(|s| s.what.contains(what)).count();
    assert_eq!(count("identity.private_key"), 2);
    assert!(
        count("chain key") >= 4,
        "chain keys: {}",
        count("chain key")
    );
    assert!(count("root key") >= 4);
    assert!(count("skipped_keys.message_key") >= 4, "skipped keys");
    assert!(count("redelivery.key_material") >= 4, "redelivery");
    assert!(count("own_messages.key_material") >= 8, "own messages");
    assert!(count("prekeys.private_key") >= 100);

    let dirs: Vec<PathBuf> = [&da, &db]
        .iter()
        .map(|d| d.db.parent().expect("state dir").to_owned())
        .collect();
    let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    // While the daemons run (database, WAL, SHM, lock, generation file, backup)…
    let found = hits(&dirs, &known);
    assert!(
        found.is_empty(),
        "{} secrets found:\n{}",
        found.len(),
        found.join("\n")
    );
    // …and after they stopped.
    da.stop();
    db.stop();
    let found = hits(&dirs, &known);
    assert!(
        found.is_empty(),
        "{} secrets found:\n{}",
        found.len(),
        found.join("\n")
    );
}

/// README's "Looking at the state with sqlite3" queries, run by the real `sqlite3` on a sealed
/// database beside its daemon.
#[test]
fn the_readme_sqlite3_queries_answer_on_a_sealed_database() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let section = readme
        .split("## Looking at the state with sqlite3")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("the sqlite3 section");
    let queries: Vec<String> = section
        .split("```sh\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .map(|cmd| {
            let start = cmd.find('"').expect("a quoted query") + 1;
            let end = cmd.rfind('"').expect("a quoted query");
            cmd[start..end].replace("bob@example.net", "bob@example.org")
        })
        .collect();
    assert_eq!(queries.len(), 3, "{section}");

    let mut da = Daemon::start();
    let mut db = Daemon::start();
    let (mut a, mut b) = (da.client(), db.client());
    let alice_device = a.create_account("alice@example.org");
    let bob_device = b.create_account("bob@example.org");
    talk(&mut a, &mut b);
    let run = |sql: &str| {
        let out = Command::new("sqlite3")
            .arg("-readonly")
            .arg(&da.db)
            .arg(sql)
            .output()
            .expect("sqlite3 (Debian package sqlite3)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let devices = run(&queries[0]);
    let fingerprint = b.ok("fingerprint.get", json!({}))["fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_owned();
    for ns in BOTH {
        assert!(
            devices.contains(&format!("{ns}|{bob_device}|{fingerprint}|")),
            "{devices}"
        );
    }
    let bundle = run(&queries[1]);
    assert!(
        bundle.starts_with(&format!("alice@example.org|{alice_device}|")),
        "{bundle}"
    );
    let skipped = run(&queries[2]);
    for ns in BOTH {
        assert!(
            skipped.contains(&format!("bob@example.org|{ns}|{bob_device}|1|")),
            "{skipped}"
        );
    }
    da.stop();
    db.stop();
}

/// A database whose key file is gone, or another one: the daemon refuses to start, says why,
/// and the file is not touched.
#[test]
fn a_missing_or_wrong_key_refuses_to_start_and_changes_nothing() {
    let mut d = Daemon::start();
    d.client().create_account("alice@example.org");
    d.stop();
    let key_file = d.dir.path().join("config/omemod/omemod.key");
    assert!(
        key_file.exists(),
        "the default key file, outside the state directory"
    );
    let before = std::fs::read(&d.db).expect("db");
    let saved = std::fs::read(&key_file).expect("key");
    std::fs::write(&key_file, "f".repeat(64)).expect("another key");
    let out = serve_once(&d);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("does not open this database's key"), "{err}");
    std::fs::remove_file(&key_file).expect("remove key");
    let out = serve_once(&d);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("omemod.key"), "{err}");
    assert!(!key_file.exists(), "a missing key file is not made again");
    assert_eq!(
        std::fs::read(&d.db).expect("db"),
        before,
        "the database changed"
    );
    std::fs::write(&key_file, saved).expect("restore key");
    d.spawn();
    assert_eq!(d.client().ok("status", json!({}))["key_source"], "key-file");
}

/// A passphrase database: the daemon starts locked, answers `locked` until `unlock` with the
/// right passphrase, and then serves; `rekey` moves it back to a key file and re-seals every
/// value under a new data key.
#[test]
fn a_passphrase_daemon_starts_locked_until_unlocked_and_rekey_changes_the_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "correct horse battery\n").expect("pass");
    let mut d = Daemon::start_with(&["--key-source", "passphrase"]);
    // A new database with a passphrase source has no passphrase to start with: locked at once.
    let mut c = d.client();
    let status = c.ok("status", json!({}));
    assert_eq!(status["locked"], true, "{status}");
    assert_eq!(status["key_source"], "passphrase", "{status}");
    c.err("account.list", json!({}), "locked");
    // The first passphrase given seals the new database.
    assert_eq!(
        c.ok("unlock", json!({"passphrase": "correct horse battery"}))["unlocked"],
        true
    );
    c.create_account("alice@example.org");
    d.stop();
    d.spawn();
    let mut c = d.client();
    assert_eq!(c.ok("status", json!({}))["locked"], true);
    c.err("unlock", json!({"passphrase": "wrong"}), "wrong_passphrase");
    c.err("fingerprint.get", json!({}), "locked");
    let out = Command::new(env!("CARGO_BIN_EXE_omemod"))
        .args([
            "--socket",
            &path_str(&d.socket),
            "unlock",
            "--passphrase-file",
        ])
        .arg(&pass)
        .output()
        .expect("omemod unlock");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fp = c.ok("fingerprint.get", json!({}));
    d.stop();

    let key_file = dir.path().join("keys/omemod.key");
    let out = Command::new(env!("CARGO_BIN_EXE_omemod"))
        .args([
            "rekey",
            "--db",
            &path_str(&d.db),
            "--key-source",
            "key-file",
        ])
        .args(["--new-key-file", &path_str(&key_file), "--passphrase-file"])
        .arg(&pass)
        .output()
        .expect("omemod rekey");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(r["key_source"], "key-file", "{r}");
    assert_ne!(r["key_id"], r["previous_key_id"], "{r}");
    assert!(r["resealed"].as_u64().expect("resealed") > 100, "{r}");
    // Asked for a passphrase again, the daemon refuses the key file's database: a source is
    // never switched but by rekey.
    let out = Command::new(env!("CARGO_BIN_EXE_omemod"))
        .args([
            "serve",
            "--socket",
            &path_str(&d.socket),
            "--db",
            &path_str(&d.db),
        ])
        .args(["--key-source", "passphrase"])
        .env("XDG_CONFIG_HOME", d.dir.path().join("config"))
        .stdin(Stdio::null())
        .output()
        .expect("omemod serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("omemod rekey --key-source passphrase"),
        "{err}"
    );
    // Without the flag it opens from the key file, unlocked, with the same identity.
    d.extra.clear();
    d.spawn();
    let mut c = d.client();
    let status = c.ok("status", json!({}));
    assert_eq!(status["locked"], false, "{status}");
    assert_eq!(status["key_source"], "key-file", "{status}");
    assert_eq!(c.ok("fingerprint.get", json!({})), fp);
    d.stop();
}

/// A private session bus with GNOME Keyring's Secret Service on it, unlocked, its keyrings in
/// `home`; both stop with the value.
struct Keyring {
    bus: std::process::Child,
    address: String,
}

impl Keyring {
    fn start(home: &Path) -> Keyring {
        use std::io::{BufRead, Write};
        let mut bus = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon (scripts/test-deps installs dbus-daemon)");
        let mut address = String::new();
        std::io::BufReader::new(bus.stdout.take().expect("stdout"))
            .read_line(&mut address)
            .expect("the bus address");
        let address = address.trim().to_owned();
        // `--unlock` creates the login keyring with the password on stdin, or unlocks it.
        let mut keyring = Command::new("gnome-keyring-daemon")
            .args(["--unlock", "--components=secrets"])
            .env("DBUS_SESSION_BUS_ADDRESS", &address)
            .env("HOME", home)
            .env("XDG_DATA_HOME", home.join("data"))
            .env("XDG_RUNTIME_DIR", home)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gnome-keyring-daemon (scripts/test-deps installs gnome-keyring)");
        keyring
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"test keyring password")
            .expect("password");
        // It forks the daemon and exits once the keyring is unlocked.
        assert!(keyring.wait().expect("gnome-keyring-daemon").success());
        Keyring { bus, address }
    }
}

impl Drop for Keyring {
    fn drop(&mut self) {
        // The keyring daemon leaves when its bus goes away.
        let _ = self.bus.kill();
        let _ = self.bus.wait();
    }
}

/// With a Secret Service running (and no systemd credential), a new database's key goes into the
/// keyring, not into a key file; the database opens again from it, and without the keyring it
/// refuses to start and stays as it was.
#[test]
fn a_running_secret_service_keeps_the_key_and_nothing_else_opens_it() {
    let home = tempfile::tempdir().expect("tempdir");
    let keyring = Keyring::start(home.path());
    let on_bus = format!("DBUS_SESSION_BUS_ADDRESS={}", keyring.address);
    let mut d = Daemon::start_wrapped(&["env", &on_bus], &[]);
    let status = d.client().ok("status", json!({}));
    assert_eq!(status["key_source"], "secret-service", "{status}");
    let item = status["key_source_ref"].as_str().expect("the item's id");
    assert_eq!(item.len(), 32, "{status}");
    d.client().create_account("alice@example.org");
    d.stop();
    assert!(
        !d.dir.path().join("config/omemod/omemod.key").exists(),
        "no key file beside the keyring"
    );
    let before = std::fs::read(&d.db).expect("db");

    // Without the keyring: a clear error, and the database as it was.
    let out = serve_once(&d);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("Secret Service"), "{err}");
    assert_eq!(
        std::fs::read(&d.db).expect("db"),
        before,
        "the database changed"
    );

    // With it, the same key again.
    d.spawn();
    let mut c = d.client();
    assert_eq!(c.ok("status", json!({}))["key_source"], "secret-service");
    assert_eq!(
        c.ok("account.list", json!({}))[0]["jid"],
        "alice@example.org"
    );
}
