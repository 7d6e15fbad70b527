//! The client API, complete (issue 20): what a client author following docs/clients.md asks
//! for. Each test failed on the code before issue 20.

use super::support::*;
use serde_json::{json, Value};
use std::process::{Command, Output, Stdio};

const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";
const CAROL: &str = "carol@example.org";

/// alice's daemon (account created with `trust_mode`) knowing bob's, in both namespaces.
fn pair(trust_mode: &str) -> (Daemon, Daemon, Client, Client, u32) {
    let (da, db) = (Daemon::start(), Daemon::start());
    let (mut a, mut b) = (da.client(), db.client());
    a.ok(
        "account.create",
        json!({"jid": ALICE, "trust_mode": trust_mode}),
    );
    let bob_id = b.create_account(BOB);
    a.learn(BOB, &mut b, &BOTH);
    b.learn(ALICE, &mut a, &BOTH);
    (da, db, a, b, bob_id)
}

fn fingerprint(c: &mut Client) -> String {
    c.ok("fingerprint.get", json!({}))["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The omemod command line against the daemon at `socket`.
fn omemod(socket: &std::path::Path, args: &[&str]) -> Output {
    let config = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_omemod"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env("XDG_CONFIG_HOME", config.path())
        .env_remove("OMEMOD_CONFIG")
        .env_remove("OMEMOD_SOCKET")
        .stdin(Stdio::null())
        .output()
        .expect("run omemod")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn devices_list_gives_fingerprint_trust_label_and_staleness() {
    let (_da, _db, mut a, mut b, bob_id) = pair("btbv");
    let bob_fp = fingerprint(&mut b);
    a.encrypt_xml(&[BOB], Some("hi"), OMEMO2);
    let list = a.ok("devices.list", json!({"jid": BOB}));
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    for d in list {
        assert_eq!(d["device_id"], bob_id, "{d}");
        assert_eq!(d["fingerprint"], bob_fp, "{d}");
        assert_eq!(d["trust"], "trusted", "{d}");
        assert_eq!(d["trust_source"], "blind", "{d}");
        assert!(d.get("label").is_some(), "{d}");
        assert_eq!(d["stale"], false, "{d}");
        assert_eq!(d["this_device"], false, "{d}");
        assert!(d["unanswered"].is_u64() && d["first_seen"].is_i64(), "{d}");
    }
    // Our own device: this one, with our fingerprint.
    let me = fingerprint(&mut a);
    let ours = a.devicelist(OMEMO2);
    a.ok(
        "devicelist.update",
        json!({"jid": ALICE, "namespace": OMEMO2, "xml": ours["xml"]}),
    );
    let own = a.ok("devices.list", json!({"jid": ALICE}));
    assert_eq!(own[0]["this_device"], true, "{own}");
    assert_eq!(own[0]["fingerprint"], me, "{own}");
}

#[test]
fn trust_list_names_the_devices_of_each_key() {
    let (_da, _db, mut a, _b, bob_id) = pair("btbv");
    let list = a.ok("trust.list", json!({"jid": BOB}));
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(
        list[0]["devices"],
        json!([
            {"namespace": OLDMEMO, "device_id": bob_id},
            {"namespace": OMEMO2, "device_id": bob_id},
        ]),
        "{list}"
    );
}

#[test]
fn the_devices_command_shows_a_table_or_json() {
    let (da, _db, mut a, mut b, bob_id) = pair("btbv");
    let bob_fp = fingerprint(&mut b);
    let out = omemod(&da.socket, &["devices", "--jid", BOB]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    for needle in [
        "JID",
        "DEVICE",
        "TRUST",
        "STALE",
        "LAST SEEN",
        "FINGERPRINT",
    ] {
        assert!(lines[0].contains(needle), "{table}");
    }
    for line in &lines[1..] {
        for needle in [BOB, &bob_id.to_string(), "trusted (blind)", bob_fp.as_str()] {
            assert!(line.contains(needle), "{needle}: {table}");
        }
    }
    let out = omemod(&da.socket, &["devices", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json, a.ok("devices.list", json!({})));
}

#[test]
fn init_takes_avoid_and_trust_mode() {
    let d = Daemon::start();
    // `avoid` reaches the daemon: an id out of range is refused.
    let out = omemod(&d.socket, &["init", "--jid", ALICE, "--avoid", "5,0"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("avoid"), "{}", text(&out.stderr));
    let out = omemod(
        &d.socket,
        &[
            "init",
            "--jid",
            ALICE,
            "--avoid",
            "5,6",
            "--trust-mode",
            "manual",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(![5, 6].contains(&r["device_id"].as_u64().unwrap()), "{r}");
    // Manual: bob's key is undecided.
    let db = Daemon::start();
    let (mut a, mut b) = (d.client(), db.client());
    b.create_account(BOB);
    a.learn(BOB, &mut b, &[OMEMO2]);
    let list = a.ok("trust.list", json!({"jid": BOB}));
    assert_eq!(list[0]["level"], "undecided", "{list}");
}

#[test]
fn an_encrypt_that_reaches_no_device_says_why_for_each() {
    let (_da, _db, mut a, mut b, bob_id) = pair("btbv");
    // Nobody's device list: fetch it.
    let e = a.err(
        "encrypt",
        json!({"to": [CAROL], "body": "x"}),
        "no_device_reached",
    );
    assert_eq!(e["data"]["devices"], json!([]), "{e}");
    assert_eq!(e["data"]["actions"][0]["type"], "fetch_devicelist", "{e}");
    assert_eq!(e["data"]["actions"][0]["jid"], CAROL, "{e}");
    assert_eq!(e["data"]["cause"], "local_state", "{e}");
    // Untrusted: a decision keeps it out.
    let fp = fingerprint(&mut b);
    a.ok(
        "trust.set",
        json!({"jid": BOB, "fingerprint": fp, "level": "distrusted"}),
    );
    let e = a.err(
        "encrypt",
        json!({"to": [BOB], "body": "x", "namespaces": [OMEMO2]}),
        "no_device_reached",
    );
    assert_eq!(e["data"]["devices"][0]["device_id"], bob_id, "{e}");
    assert_eq!(e["data"]["devices"][0]["status"], "untrusted", "{e}");
    assert_eq!(e["data"]["cause"], "policy", "{e}");
    assert!(e["message"].as_str().unwrap().contains("untrusted"), "{e}");
    // A listed device without a bundle: fetch it.
    let dc = Daemon::start();
    let mut c = dc.client();
    c.create_account(CAROL);
    let list = c.devicelist(OMEMO2);
    a.ok(
        "devicelist.update",
        json!({"jid": CAROL, "namespace": OMEMO2, "xml": list["xml"]}),
    );
    let e = a.err(
        "encrypt",
        json!({"to": [CAROL], "body": "x", "namespaces": [OMEMO2]}),
        "no_device_reached",
    );
    assert_eq!(e["data"]["devices"][0]["status"], "no_bundle", "{e}");
    assert_eq!(e["data"]["actions"][0]["type"], "fetch_bundle", "{e}");
    // Nothing moved: once the bundle is there, the message goes out.
    a.learn(CAROL, &mut c, &[OMEMO2]);
    let x = a.encrypt_xml(&[CAROL], Some("now"), OMEMO2);
    assert_eq!(c.decrypt(ALICE, &x).unwrap()["body"], "now");
}

#[test]
fn encrypt_plan_normalises_jids() {
    let (_da, _db, mut a, _b, bob_id) = pair("btbv");
    let p = a.ok(
        "encrypt.plan",
        json!({"to": ["Bob@Example.ORG"], "namespaces": [OMEMO2]}),
    );
    assert_eq!(p["devices"][0]["jid"], BOB, "{p}");
    assert_eq!(p["devices"][0]["device_id"], bob_id, "{p}");
    assert_eq!(p["ready"], true, "{p}");
}

#[test]
fn each_trust_event_of_a_fan_out_names_its_device() {
    let mut da = Daemon::start();
    let mut a = da.client();
    a.ok(
        "account.create",
        json!({"jid": ALICE, "trust_mode": "manual"}),
    );
    // bob has two devices with two keys.
    let (d1, d2) = (Daemon::start(), Daemon::start());
    let (mut b1, mut b2) = (d1.client(), d2.client());
    let ids = [b1.create_account(BOB), b2.create_account(BOB)];
    let fps = [fingerprint(&mut b1), fingerprint(&mut b2)];
    let devices: String = ids.iter().map(|i| format!("<device id='{i}'/>")).collect();
    a.ok(
        "devicelist.update",
        json!({"jid": BOB, "namespace": OMEMO2, "xml": format!("<devices xmlns='{OMEMO2}'>{devices}</devices>")}),
    );
    for b in [&mut b1, &mut b2] {
        let bundle = b.bundle(OMEMO2);
        a.ok(
            "bundle.update",
            json!({"jid": BOB, "namespace": OMEMO2, "device_id": bundle["device_id"], "xml": bundle["xml"]}),
        );
    }
    // The decisions are gone (typed away in the sqlite shell): the next fan-out sees both keys
    // for the first time.
    drop(a);
    da.stop();
    let conn = rusqlite::Connection::open(&da.db).unwrap();
    conn.execute("DELETE FROM trust", []).unwrap();
    drop(conn);
    da.spawn();
    let mut a = da.client();
    let mut events = da.client();
    events.ok("subscribe", json!({"types": ["trust_decision_needed"]}));
    let _ = a.call(
        "encrypt",
        json!({"to": [BOB], "body": "hi", "namespaces": [OMEMO2]}),
    );
    let mut seen: Vec<(u64, String)> = (0..2)
        .map(|_| {
            let e = events.event().expect("event");
            assert_eq!(e["type"], "trust_decision_needed", "{e}");
            let fp = e["fingerprint"].as_str().unwrap().to_owned();
            (e["device_id"].as_u64().unwrap(), fp)
        })
        .collect();
    seen.sort();
    let mut want: Vec<(u64, String)> = ids.iter().map(|i| u64::from(*i)).zip(fps).collect();
    want.sort();
    assert_eq!(seen, want);
}

#[test]
fn the_trust_source_matches_the_trust_mode() {
    let sources = |a: &mut Client| -> Vec<(Value, Value)> {
        let l = a.ok("trust.list", json!({"jid": BOB}));
        let mut v: Vec<(Value, Value)> = l
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["level"].clone(), t["source"].clone()))
            .collect();
        v.sort_by_key(|(l, s)| format!("{l}{s}"));
        v
    };
    let pairs = |v: &[(&str, &str)]| -> Vec<(Value, Value)> {
        v.iter().map(|(l, s)| (json!(l), json!(s))).collect()
    };
    // Manual: no one decided, the mode left it undecided.
    let (_da, _db, mut a, _b, _) = pair("manual");
    assert_eq!(sources(&mut a), pairs(&[("undecided", "policy")]));
    // Tofu: the first key is trusted on first use, a second one waits.
    let (_da, _db, mut a, _b, _) = pair("tofu");
    assert_eq!(sources(&mut a), pairs(&[("trusted", "tofu")]));
    let other = Daemon::start();
    let mut b2 = other.client();
    b2.create_account(BOB);
    a.learn(BOB, &mut b2, &[OMEMO2]);
    assert_eq!(
        sources(&mut a),
        pairs(&[("trusted", "tofu"), ("undecided", "policy")])
    );
    // Blind trust, until the user verifies a key of the contact.
    let (_da, _db, mut a, mut b, _) = pair("btbv");
    assert_eq!(sources(&mut a), pairs(&[("trusted", "blind")]));
    let fp = fingerprint(&mut b);
    a.ok(
        "trust.set",
        json!({"jid": BOB, "fingerprint": fp, "level": "trusted"}),
    );
    a.learn(BOB, &mut b2, &[OMEMO2]);
    assert_eq!(
        sources(&mut a),
        pairs(&[("trusted", "manual"), ("undecided", "policy")])
    );
}

/// omemod-client's typed methods read the new answers: devices, trust with their devices, the
/// plan, an encrypt that reaches nobody, and our own message read back.
#[test]
fn the_rust_client_types_the_new_answers() {
    let (_da, _db, mut a, mut b, bob_id) = pair("btbv");
    let x = a.encrypt_xml(&[BOB], Some("typed"), OMEMO2);
    let bob_fp = fingerprint(&mut b);
    let conn = a.connection();
    let c = conn.get_ref();
    let devices = conn.block_on(c.devices(Some(BOB))).unwrap();
    assert_eq!(devices.len(), 2);
    assert!(devices
        .iter()
        .all(|d| d.fingerprint.as_deref() == Some(bob_fp.as_str())
            && d.trust_source.as_deref() == Some("blind")
            && !d.stale));
    let trust = conn.block_on(c.trust_list(Some(BOB))).unwrap();
    assert_eq!(trust[0].devices.len(), 2);
    let plan = conn
        .block_on(c.encrypt_plan(&[BOB], Some(&[OMEMO2])))
        .unwrap();
    assert!(plan.ready && plan.devices[0].device_id == bob_id);
    let e = conn
        .block_on(c.encrypt(&omemod_client::EncryptRequest {
            to: &[CAROL],
            body: "nobody",
            namespaces: None,
            sce_to: None,
        }))
        .unwrap_err();
    let (devices, actions) = e.unreached().expect("no_device_reached");
    assert!(devices.is_empty() && actions.len() == 2, "{e}");
    let own = conn
        .block_on(c.decrypt(&omemod_client::DecryptRequest {
            from: ALICE,
            xml: &x,
            to: BOB,
            group_chat: false,
        }))
        .unwrap();
    assert!(own.own && own.sent_at.is_some());
    assert_eq!(own.body.as_deref(), Some("typed"));
}
