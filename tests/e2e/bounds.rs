//! Resources stay bounded whatever a remote sender or a local client does (issue 11): each test
//! reproduces one abuse case and checks the bound from docs/rpc.md "Limits".
#[path = "../support/mod.rs"]
mod support;

use serde_json::{json, Value};
use support::*;

const ALICE: &str = "alice@example.org";
const EVE: &str = "eve@example.org";

/// Sends `count` decrypts of normal (non key exchange) messages from random devices of EVE, in
/// batches, and checks that each is answered `no_session`.
fn no_session_flood(c: &mut Client, me: u32, count: usize, seed: &mut u64) {
    const BATCH: usize = 256;
    let mut sent = 0;
    while sent < count {
        let n = BATCH.min(count - sent);
        let batch: Vec<(&str, Value)> = (0..n)
            .map(|_| {
                // xorshift: device ids spread over the whole id space.
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                let sid = (*seed % 0x7fff_fffe) as u32 + 1;
                let xml = format!(
                    "<encrypted xmlns='{OMEMO2}'><header sid='{sid}'><keys jid='{ALICE}'><key rid='{me}'>AAECAwQF</key></keys></header></encrypted>"
                );
                ("decrypt", json!({"from": EVE, "xml": xml}))
            })
            .collect();
        let answers = c.batch(&batch);
        assert_eq!(answers.len(), n);
        for a in answers {
            match a {
                Err(e) => assert_eq!(e["data"]["kind"], "no_session", "{e}"),
                Ok(v) => panic!("decrypt without a session succeeded: {v}"),
            }
        }
        sent += n;
    }
}

#[test]
fn no_session_decrypts_from_random_devices_leave_memory_flat() {
    // OMEMOD_FLOOD=200000 reproduces the issue's figure; the default keeps the test short.
    let flood: usize = std::env::var("OMEMOD_FLOOD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let d = Daemon::start();
    let mut c = d.client();
    let me = c.create_account(ALICE);
    let pid = d.pid().expect("pid");
    let mut seed = seed(0x9e37_79b9_7f4a_7c15) | 1;
    // Warm up allocator arenas and caches before the first measurement.
    no_session_flood(&mut c, me, 5_000, &mut seed);
    let before = rss_kib(pid);
    let start = std::time::Instant::now();
    no_session_flood(&mut c, me, flood, &mut seed);
    let after = rss_kib(pid);
    eprintln!(
        "figure: RSS {before} kB -> {after} kB after {flood} no_session decrypts ({:.1} s)",
        start.elapsed().as_secs_f64()
    );
    // Before the fix the table kept one slot per device: +64 MB for 100,000 (200,000 measured
    // once: 17,576 kB -> 17,684 kB with it).
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} kB to {after} kB"
    );
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

/// 2,000 idle connections against a daemon whose file limit is 1,024 (soft and hard, as under
/// systemd's default): the longest idle ones are closed (with `too_many_connections`) to make room,
/// the daemon never runs out of descriptors, and a new client is served.
#[test]
fn idle_connections_beyond_the_limit_evict_the_oldest_and_new_clients_are_served() {
    use std::os::unix::net::UnixStream;
    let d = Daemon::start_wrapped(
        &["prlimit", "--nofile=1024:1024", "--"],
        &["--max-connections", "200"],
    );
    let pid = d.pid().expect("pid");
    // Sample the daemon's descriptors while the connections pour in.
    let mut idle = Vec::new();
    let peak = peak_while(pid, open_fds, || {
        for _ in 0..2_000 {
            idle.push(UnixStream::connect(&d.socket).expect("connect"));
        }
        let mut c = d.client();
        let status = c.ok("status", json!({}));
        assert!(status.is_object());
    });
    let fds = open_fds(pid);
    eprintln!("figure: daemon fds with 2000 idle connections attempted: {fds} (peak {peak})");
    // 200 connections, 50 closing, the database and the listener: far from 1,024.
    assert!(peak < 300, "{peak} descriptors open at the peak");
    // The first connections were evicted and told why.
    let mut first = Wire::from_stream(idle.swap_remove(0));
    let notice = first.read().expect("eviction notice");
    assert_eq!(
        notice["error"]["data"]["kind"], "too_many_connections",
        "{notice}"
    );
    assert!(first.read().is_none(), "evicted connection must be closed");
    // The newest ones still work.
    let mut last = Wire::from_stream(idle.pop().expect("last"));
    let v = last
        .raw(r#"{"jsonrpc":"2.0","id":1,"method":"status"}"#)
        .expect("answer");
    assert!(v["id"] == 1 && v.get("error").is_none(), "{v}");
}

/// A request line trickled in and never finished is cut off after `--partial-line-timeout`, while
/// a connection that is merely idle between lines stays open.
#[test]
fn partial_lines_time_out_but_idle_connections_stay() {
    let d = Daemon::start_with(&["--partial-line-timeout", "1"]);
    let mut idle = d.client();
    let mut slow = d.wire();
    slow.send_raw_no_newline(r#"{"jsonrpc":"2.0","id":1,"meth"#);
    std::thread::sleep(std::time::Duration::from_millis(2_500));
    let v = slow.read().expect("timeout notice");
    assert_eq!(v["error"]["data"]["kind"], "line_timeout", "{v}");
    assert!(slow.read().is_none(), "connection must be closed");
    assert!(idle.call("status", json!({})).is_ok());
}

/// A client that sends batches and never reads its answers: the daemon stops reading from it once
/// its queue of answers is full (memory stays bounded) and disconnects it after
/// `--write-stall-timeout`.
#[test]
fn a_client_that_never_reads_is_bounded_then_disconnected() {
    let d = Daemon::start_with(&["--max-in-flight", "4", "--write-stall-timeout", "6"]);
    let pid = d.pid().expect("pid");
    let mut c = d.client();
    let one = c.ok("rpc.discover", json!({})).to_string().len();
    let before = rss_kib(pid);
    // Ten discovers per batch: each answer line is ~10 × the OpenRPC document.
    let batch: Vec<Value> = (0..10)
        .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "rpc.discover"}))
        .collect();
    let line = Value::Array(batch).to_string();
    // A connection of its own that never reads.
    let never_reads = d.wire();
    let mut raw: &std::os::unix::net::UnixStream = never_reads.stream();
    raw.set_nonblocking(true).expect("nonblocking");
    let text = format!("{line}\n").repeat(400).into_bytes();
    let mut written = 0usize;
    let started = std::time::Instant::now();
    // Write until the daemon stops reading (our writes would block for good) or all went out.
    while written < text.len() && started.elapsed() < std::time::Duration::from_secs(15) {
        use std::io::Write;
        match raw.write(&text[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(_) => break,
        }
    }
    let sent = written / (line.len() + 1);
    // Sample while the daemon works through what it read, before the stall timeout.
    let mut peak = 0;
    for _ in 0..40 {
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let answer = one * 10;
    eprintln!(
        "figure: never-reading client: {sent} batch lines of ~{answer} B answers sent; RSS {before} kB -> {peak} kB"
    );
    // Before: up to 256 queued lines of answers (> 100 MB here). Now: the queue (16 MiB) plus
    // one answer per running request.
    assert!(
        peak < before + 48 * 1024,
        "RSS grew from {before} kB to {peak} kB"
    );
    // After the stall timeout the daemon hangs up; the daemon still serves others.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let mut other = d.client();
    assert!(other.call("status", json!({})).is_ok());
    raw.set_nonblocking(false).expect("blocking");
    raw.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok();
    let mut drained = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        use std::io::Read;
        match raw.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => drained += n,
            // Closed with our unread requests still in its buffer.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("daemon did not close the stalled connection: {e}"),
        }
    }
    eprintln!("figure: stalled client closed after {drained} bytes");
}

fn devicelist_xml(ids: impl Iterator<Item = u32>) -> String {
    let devices: String = ids.map(|i| format!("<device id='{i}'/>")).collect();
    format!("<devices xmlns='{OMEMO2}'>{devices}</devices>")
}

fn median_ms(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A contact whose device list churns (each update names 450 new devices and drops the last
/// ones): rows of dropped devices are pruned beyond the per-contact cap, so the row count stays
/// bounded and an update costs the same at the 100th time as at the first. A list over the cap
/// is refused with `too_many_devices`.
#[test]
fn churning_device_lists_keep_rows_bounded() {
    const BOB: &str = "bob@example.org";
    let da = Daemon::start();
    let db = Daemon::start();
    let mut a = da.client();
    let mut b = db.client();
    a.create_account(ALICE);
    b.create_account(BOB);
    a.learn(BOB, &mut b, &[OMEMO2]);
    b.learn(ALICE, &mut a, &[OMEMO2]);
    let first = a.encrypt_xml(&[BOB], Some("hello"), OMEMO2);
    b.decrypt(ALICE, &first).expect("key exchange");

    let mut update_ms = Vec::new();
    let mut decrypt_ms = Vec::new();
    for round in 0..100u32 {
        let ids = (0..450).map(|i| 1 + round * 450 + i);
        let xml = devicelist_xml(ids);
        let t = std::time::Instant::now();
        b.ok(
            "devicelist.update",
            json!({"jid": EVE, "namespace": OMEMO2, "xml": xml}),
        );
        update_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let m = a.encrypt_xml(&[BOB], Some("still here"), OMEMO2);
        let t = std::time::Instant::now();
        let r = b.decrypt(ALICE, &m).expect("unrelated decrypt");
        decrypt_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(r["body"], "still here");
    }
    let conn = rusqlite::Connection::open(&db.db).expect("open db");
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM devices WHERE jid = ?1", [EVE], |r| {
            r.get(0)
        })
        .expect("count");
    eprintln!(
        "figure: 100 churning updates of 450 devices: {rows} rows kept; update median {:.1} ms (first {:.1}, 2nd {:.1}, 10th {:.1}, 50th {:.1}, last {:.1}); unrelated decrypt median {:.1} ms",
        median_ms(update_ms.clone()),
        update_ms[0],
        update_ms[1],
        update_ms[9],
        update_ms[49],
        update_ms[99],
        median_ms(decrypt_ms)
    );
    // Before: 45,000 rows. Now: the list (450) plus at most 500 dropped ones.
    assert!(rows <= 950, "{rows} device rows");
    let listed = b.ok("devices.list", json!({"jid": EVE}));
    assert!(listed.to_string().len() < 1 << 20);
    // Over the cap: refused, typed.
    let e = b.err(
        "devicelist.update",
        json!({"jid": EVE, "namespace": OMEMO2, "xml": devicelist_xml(1..=501)}),
        "too_many_devices",
    );
    assert_eq!(e["data"]["max"], 500);
}

/// `bundle.update` refuses a bundle offering a low-order one-time prekey (a key exchange with it
/// would have a predictable DH output; encrypting to the device used to fail later instead).
#[test]
fn bundle_with_a_low_order_prekey_is_refused() {
    const BOB: &str = "bob@example.org";
    let da = Daemon::start();
    let db = Daemon::start();
    let mut a = da.client();
    let mut b = db.client();
    a.create_account(ALICE);
    b.create_account(BOB);
    let bundle = b.bundle(OMEMO2);
    let xml = bundle["xml"].as_str().expect("xml");
    let device_id = bundle["device_id"].clone();
    let start = xml.find("<pk ").expect("a prekey");
    let open_end = start + xml[start..].find('>').expect(">") + 1;
    let close = open_end + xml[open_end..].find("</pk>").expect("</pk>");
    // u = 0 (order 2) and an order-8 point, in standard base64.
    for low in [
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "4Ot6fDtBuK4WVuP68Z/EatoJjeucMrH9hmIFFl9JuAA=",
    ] {
        let bad = format!("{}{low}{}", &xml[..open_end], &xml[close..]);
        let e = a.err(
            "bundle.update",
            json!({"jid": BOB, "namespace": OMEMO2, "device_id": device_id, "xml": bad}),
            "invalid_bundle",
        );
        assert!(
            e["message"]
                .as_str()
                .unwrap_or("")
                .contains("one-time prekey"),
            "{e}"
        );
    }
    // The genuine bundle is accepted.
    a.ok(
        "bundle.update",
        json!({"jid": BOB, "namespace": OMEMO2, "device_id": device_id, "xml": xml}),
    );
}

fn omemod_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_omemod"))
        .args(args)
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .expect("run omemod")
}

/// Another local user got to the socket path first (`/tmp/omemod-<uid>` when there is no
/// runtime directory): `omemod call` must refuse to talk to that socket, so the squatter never
/// sees the request.
#[test]
fn a_squatted_socket_makes_the_cli_refuse() {
    use std::os::unix::fs::{chown, PermissionsExt};
    const NOBODY: u32 = 65534;
    let t = tempfile::tempdir().expect("tempdir");
    // 1. The whole directory belongs to the other user.
    let dir = t.path().join("omemod-squatted");
    std::fs::create_dir(&dir).expect("mkdir");
    let sock = dir.join("omemod.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    if chown(&dir, Some(NOBODY), Some(NOBODY)).is_err() {
        eprintln!("not root: cannot give the directory to another user; skipping that case");
    } else {
        chown(&sock, Some(NOBODY), Some(NOBODY)).expect("chown socket");
        let out = omemod_cli(&[
            "--socket",
            sock.to_str().expect("utf-8"),
            "call",
            "encrypt",
            r#"{"to": ["bob@example.org"], "body": "TOP SECRET"}"#,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("owned by uid 65534"), "{err}");
        assert!(
            listener.accept().is_err(),
            "the squatter must not get a connection"
        );
    }
    // 2. A shared, world-writable directory (like /tmp itself) holding a socket: refused too,
    //    whoever owns the socket.
    let shared = t.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let sock2 = shared.join("omemod.sock");
    let listener2 = std::os::unix::net::UnixListener::bind(&sock2).expect("bind");
    listener2.set_nonblocking(true).expect("nonblocking");
    let out = omemod_cli(&["--socket", sock2.to_str().expect("utf-8"), "status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("writable by other users"), "{err}");
    assert!(listener2.accept().is_err());
    // 3. A symlink in place of the socket's directory.
    let d = Daemon::start();
    let link = t.path().join("link");
    std::os::unix::fs::symlink(d.socket.parent().expect("dir"), &link).expect("symlink");
    let out = omemod_cli(&[
        "--socket",
        link.join("omemod.sock").to_str().expect("utf-8"),
        "status",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("symbolic link"), "{err}");
    // The genuine path works.
    let out = omemod_cli(&["--socket", d.socket.to_str().expect("utf-8"), "status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Symlinks at the database (or its directory) are refused, and `--socket` in an existing
/// directory leaves that directory's mode alone.
#[test]
fn symlinked_database_is_refused_and_existing_directories_keep_their_mode() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().expect("tempdir");
    let state = t.path().join("state");
    std::fs::create_dir(&state).expect("mkdir");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let victim = t.path().join("victim");
    std::fs::write(&victim, b"not a database").expect("write");
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let db = state.join("omemod.db");
    std::os::unix::fs::symlink(&victim, &db).expect("symlink");
    let home = t.path().join("home");
    std::fs::create_dir(&home).expect("mkdir");
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let sock = home.join("x.sock");
    let serve = |db: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_omemod"))
            .args(["serve", "--socket"])
            .arg(&sock)
            .arg("--db")
            .arg(db)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let out = serve(&db).wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("symbolic link"), "{err}");
    let mode = std::fs::metadata(&victim)
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o644, "the symlink's target was changed");
    assert_eq!(std::fs::read(&victim).expect("read"), b"not a database");
    // A symlinked database directory.
    let dir_link = t.path().join("state-link");
    std::os::unix::fs::symlink(&state, &dir_link).expect("symlink");
    let out = serve(&dir_link.join("other.db"))
        .wait_with_output()
        .expect("wait");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("symbolic link"));
    // A real database with the socket in an existing 0755 directory: it stays 0755.
    let mut child = serve(&state.join("real.db"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !sock.exists() {
        assert!(std::time::Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mode = std::fs::metadata(&home).expect("meta").permissions().mode() & 0o777;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        mode, 0o755,
        "--socket changed the mode of an existing directory"
    );
}

/// 80 fake devices of one JID (none of them in its device list) each send a valid key
/// exchange that skips 20 messages: the sessions, trust rows and skipped keys they leave are
/// bounded by the per-JID cap on sessions with unlisted devices; a restart with
/// `--skipped-key-max-age 0` expires the skipped keys in the start-up maintenance pass.
#[test]
fn key_exchange_flood_from_unlisted_devices_is_bounded_and_skipped_keys_expire() {
    use protocol_core::keys::IdentityKeyPair;
    use protocol_core::session::Session;
    use protocol_core::xml::{bundle_from_xml, Encrypted, KeyElement};
    use protocol_core::Version;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    // 1,000 measured once (debug build, 234 s): 32 sessions, 32 trust rows, 640 skipped keys.
    const FAKES: u32 = 80;
    const SKIP: usize = 20;
    let mut d = Daemon::start_with(&["--durability", "normal"]);
    let mut c = d.client();
    let me = c.create_account(ALICE);
    let mut rng = StdRng::seed_from_u64(seed(11));
    let mut bundle = None;
    let mut next_pk = 0usize;
    let started = std::time::Instant::now();
    let mut decrypt_s = 0.0;
    for i in 0..FAKES {
        if i % 90 == 0 {
            let b = c.bundle(OMEMO2);
            bundle = Some(
                bundle_from_xml(Version::Twomemo, b["xml"].as_str().expect("xml")).expect("bundle"),
            );
            next_pk = 0;
        }
        let b = bundle.as_ref().expect("bundle");
        let pk = b.prekeys[next_pk].id;
        next_pk += 1;
        let identity = IdentityKeyPair::generate(&mut rng);
        let mut s = Session::initiate(&identity, b, pk, &mut rng).expect("initiate");
        let mut key = None;
        for _ in 0..=SKIP {
            key = Some(s.encrypt(&[7u8; 48]).expect("encrypt"));
        }
        let k = key.expect("key");
        let xml = Encrypted {
            version: Version::Twomemo,
            sid: 100_000 + i,
            keys: vec![KeyElement {
                jid: Some(ALICE.to_owned()),
                rid: me,
                kex: k.kex,
                data: k.data,
            }],
            iv: None,
            payload: None,
        }
        .to_xml();
        let t = std::time::Instant::now();
        let r = c.decrypt(EVE, &xml).expect("valid key exchange");
        decrypt_s += t.elapsed().as_secs_f64();
        assert_eq!(r["key_exchange"], true);
    }
    let secs = started.elapsed().as_secs_f64();
    let conn = rusqlite::Connection::open(&d.db).expect("open db");
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).expect(sql) };
    let sessions = count("SELECT count(*) FROM sessions WHERE jid = 'eve@example.org'");
    let trust = count("SELECT count(*) FROM trust WHERE jid = 'eve@example.org'");
    let skipped = count("SELECT count(*) FROM skipped_keys WHERE jid = 'eve@example.org'");
    let devices = count("SELECT count(*) FROM devices WHERE jid = 'eve@example.org'");
    eprintln!(
        "figure: {FAKES} key exchanges from unlisted devices in {secs:.1} s ({decrypt_s:.1} s in the daemon): {sessions} sessions, {trust} trust rows, {skipped} skipped keys, {devices} device rows kept"
    );
    // Before: one of each per fake device, and 20 skipped keys each.
    assert!(sessions <= 32, "{sessions}");
    assert!(trust <= 32, "{trust}");
    assert!(skipped <= 32 * SKIP as i64, "{skipped}");
    assert!(devices <= 32, "{devices}");
    assert!(skipped > 0);
    drop(conn);
    // Expiry: the start-up maintenance pass deletes keys older than the limit.
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    d.stop();
    d.extra = vec!["--skipped-key-max-age".into(), "0".into()];
    d.spawn();
    let conn = rusqlite::Connection::open(&d.db).expect("open db");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left: i64 = conn
            .query_row("SELECT count(*) FROM skipped_keys", [], |r| r.get(0))
            .expect("count");
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} skipped keys did not expire"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A skipped key that expired (`--skipped-key-max-age`) leaves its session knowing so: the late
/// message it was kept for, never decrypted, is `too_many_skipped` with cause `local_state`
/// (its key was dropped), never `duplicate_message`, which docs/rpc.md keeps for messages that
/// were decrypted; the key's bytes are gone from the database and its WAL. A real replay is
/// still a replay (a redelivery within the window).
#[test]
fn an_expired_skipped_key_is_a_dropped_key_not_a_duplicate() {
    let da = Daemon::start();
    let mut db = Daemon::start();
    let (mut a, mut b) = (da.client(), db.client());
    a.create_account(ALICE);
    b.create_account("bob@example.org");
    a.learn("bob@example.org", &mut b, &BOTH);
    b.learn(ALICE, &mut a, &BOTH);
    let mut late = Vec::new();
    for ns in BOTH {
        let first = a.encrypt_xml(&["bob@example.org"], Some("first"), ns);
        b.decrypt(ALICE, &first).expect("key exchange");
        let skipped = a.encrypt_xml(&["bob@example.org"], Some("late"), ns);
        let next = a.encrypt_xml(&["bob@example.org"], Some("next"), ns);
        let r = b.decrypt(ALICE, &next).expect("decrypt");
        late.push((ns, skipped, next, r));
    }
    let keys = blobs(&db.db, "SELECT message_key FROM skipped_keys");
    assert_eq!(keys.len(), 2);
    // Whole seconds: the keys must be older than "now" when the limit is 0.
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    drop(b);
    db.stop();
    db.extra = vec!["--skipped-key-max-age".into(), "0".into()];
    db.spawn();
    let wal = {
        let mut p = db.db.as_os_str().to_owned();
        p.push("-wal");
        std::path::PathBuf::from(p)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let file = std::fs::read(&db.db).unwrap_or_default();
        let log = std::fs::read(&wal).unwrap_or_default();
        let found = |k: &Vec<u8>| {
            [&file, &log]
                .iter()
                .any(|h| h.windows(k.len()).any(|w| w == k.as_slice()))
        };
        if !keys.iter().any(found) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expired skipped keys are still in the files"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut b = db.client();
    for (ns, skipped, next, first) in &late {
        let e = b.err(
            "decrypt",
            json!({"from": ALICE, "xml": skipped}),
            "too_many_skipped",
        );
        assert_eq!(e["data"]["cause"], "local_state", "{ns}: {e}");
        assert_redelivery(first, &b.decrypt(ALICE, next).expect("redelivery"));
    }
}

/// The database on a 2 MiB filesystem: once it is full, writes fail with `storage_error` (the
/// daemon keeps serving), and they succeed again when space comes back. Needs root (tmpfs
/// mount); skipped otherwise.
#[test]
fn a_full_disk_gives_storage_error_and_the_daemon_recovers() {
    struct Mount(std::path::PathBuf);
    impl Drop for Mount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let t = tempfile::tempdir().expect("tempdir");
    let tiny = t.path().join("tiny");
    std::fs::create_dir(&tiny).expect("mkdir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs"])
        .arg(&tiny)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("cannot mount a tmpfs (not root?): skipped");
        return;
    }
    let _mount = Mount(tiny.clone());
    let filler = tiny.join("filler");
    std::fs::write(&filler, vec![0u8; 512 * 1024]).expect("filler");
    let db = tiny.join("state/omemod.db");
    let mut d = Daemon::start_with(&["--durability", "normal"]);
    d.stop();
    d.db = db.clone();
    d.spawn();
    let mut c = d.client();
    c.create_account(ALICE);
    let mut full_at = None;
    for i in 0..400u32 {
        let xml = devicelist_xml((1..=450).map(|k| k + i * 1_000));
        match c.call(
            "devicelist.update",
            json!({"jid": format!("c{i}@example.org"), "namespace": OMEMO2, "xml": xml}),
        ) {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e["data"]["kind"], "storage_error", "{e}");
                full_at = Some(i);
                break;
            }
        }
    }
    let full_at = full_at.expect("the disk never filled up");
    eprintln!("figure: 2 MiB filesystem full after {full_at} device-list updates");
    // Still serving reads and answering.
    assert!(c.call("status", json!({})).is_ok());
    assert!(c
        .call("devices.list", json!({"jid": "c0@example.org"}))
        .is_ok());
    // Space comes back: writes work again.
    std::fs::remove_file(&filler).expect("rm filler");
    let xml = devicelist_xml(1..=10);
    c.ok(
        "devicelist.update",
        json!({"jid": "after@example.org", "namespace": OMEMO2, "xml": xml}),
    );
    d.stop();
}

/// Documents of 37,500 attributes (260 KB) from one client are refused with a typed error, and are
/// parsed off the thread that answers other clients (the figure shows `status` latency meanwhile).
#[test]
fn attribute_bombs_are_refused_and_parsed_off_the_answering_thread() {
    let d = Daemon::start();
    let me = d.client().create_account(ALICE);
    let mut heavy = d.wire();
    let mut light = d.client();
    let attrs: String = (0..37_500u32)
        .map(|i| format!(" a{}=''", i % 1_000_000))
        .collect::<String>()
        .chars()
        .take(255 * 1024)
        .collect();
    let attrs = &attrs[..attrs.rfind(' ').unwrap_or(0)];
    let xml = format!(
        "<encrypted xmlns='{OMEMO2}'><header sid='5'{attrs}><keys jid='{ALICE}'><key rid='{me}'>AAECAwQF</key></keys></header></encrypted>"
    );
    let line = json!({"jsonrpc": "2.0", "id": 1, "method": "decrypt", "params": {"from": EVE, "xml": xml}})
        .to_string();
    for _ in 0..3 {
        heavy.send_raw(&line);
    }
    let mut status_ms = Vec::new();
    for _ in 0..5 {
        let t = std::time::Instant::now();
        light.ok("status", json!({}));
        status_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    for _ in 0..3 {
        let v = heavy.read().expect("answer");
        assert_eq!(v["error"]["data"]["kind"], "invalid_message", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("attributes"),
            "{v}"
        );
    }
    eprintln!(
        "figure: status while 3 attribute bombs ({} bytes each) are parsed: max {:.1} ms",
        xml.len(),
        status_ms.iter().cloned().fold(0.0, f64::max)
    );
}
