//! End to end through RPC alone: two daemons (alice, bob) exchange device lists and bundles,
//! then messages both ways in each namespace, out of order, with a replay, and to alice's
//! second device (a third daemon). Then hostile input over the socket.
#[path = "../support/mod.rs"]
mod support;

use serde_json::json;
use support::*;

const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";

struct World {
    _a: Daemon,
    _b: Daemon,
    a: Client,
    b: Client,
}

fn world(namespaces: &[&str]) -> World {
    let da = Daemon::start();
    let db = Daemon::start();
    let mut a = da.client();
    let mut b = db.client();
    a.create_account(ALICE);
    b.create_account(BOB);
    a.learn(BOB, &mut b, namespaces);
    b.learn(ALICE, &mut a, namespaces);
    World {
        _a: da,
        _b: db,
        a,
        b,
    }
}

fn body(r: &serde_json::Value) -> &str {
    r["body"].as_str().unwrap_or_else(|| panic!("no body: {r}"))
}

fn conversation(ns: &str) {
    let mut w = world(&[ns]);
    // First message: a key exchange.
    let first = w.a.encrypt_xml(&[BOB], Some("hi bob"), ns);
    let r = w.b.decrypt(ALICE, &first).expect("key exchange decrypts");
    assert_eq!(body(&r), "hi bob");
    assert_eq!(r["key_exchange"], true);
    assert_eq!(r["namespace"], ns);
    assert_eq!(r["sender"]["jid"], ALICE);
    assert!(
        r["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["type"] == "send_heartbeat"),
        "{r}"
    );
    assert!(
        r["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["type"] == "publish_bundle"),
        "{r}"
    );
    // The same key exchange again (another client process, a retry): the same answer, marked
    // as a redelivery, with no actions and nothing rebuilt.
    let again = w.b.decrypt(ALICE, &first).expect("redelivery");
    assert_redelivery(&r, &again);
    // Bob answers with the heartbeat the decrypt asked for; alice stops sending key exchanges.
    let hb = w.b.ok(
        "heartbeat",
        json!({"jid": ALICE, "namespace": ns, "device_id": r["sender"]["device_id"]}),
    );
    let hb_xml = hb["messages"][0]["xml"].as_str().unwrap().to_owned();
    let r = w.a.decrypt(BOB, &hb_xml).expect("heartbeat decrypts");
    assert_eq!(r["empty"], true);
    let m = w.a.ok(
        "encrypt",
        json!({"to": [BOB], "body": "confirmed", "namespaces": [ns]}),
    );
    assert_eq!(m["devices"][0]["kex"], false, "{m}");
    let x = m["messages"][0]["xml"].as_str().unwrap().to_owned();
    assert_eq!(body(&w.b.decrypt(ALICE, &x).unwrap()), "confirmed");

    // Ping-pong: the ratchet turns every time.
    for i in 0..5 {
        let x = w.a.encrypt_xml(&[BOB], Some(&format!("a{i}")), ns);
        assert_eq!(body(&w.b.decrypt(ALICE, &x).unwrap()), format!("a{i}"));
        let y = w.b.encrypt_xml(&[ALICE], Some(&format!("b{i}")), ns);
        assert_eq!(body(&w.a.decrypt(BOB, &y).unwrap()), format!("b{i}"));
    }

    // Out of order: 5 messages delivered 4, 2, 0, 3, 1 — then all replays refused.
    let msgs: Vec<String> = (0..5)
        .map(|i| w.a.encrypt_xml(&[BOB], Some(&format!("o{i}")), ns))
        .collect();
    let mut firsts = vec![serde_json::Value::Null; 5];
    for i in [4, 2, 0, 3, 1] {
        firsts[i] = w.b.decrypt(ALICE, &msgs[i]).unwrap();
        assert_eq!(body(&firsts[i]), format!("o{i}"));
    }
    for (m, first) in msgs.iter().zip(&firsts) {
        assert_redelivery(first, &w.b.decrypt(ALICE, m).unwrap());
    }
    // A message skipped across a ratchet turn arrives late.
    let late = w.a.encrypt_xml(&[BOB], Some("late"), ns);
    let next = w.a.encrypt_xml(&[BOB], Some("next"), ns);
    assert_eq!(body(&w.b.decrypt(ALICE, &next).unwrap()), "next");
    let reply = w.b.encrypt_xml(&[ALICE], Some("turn"), ns);
    assert_eq!(body(&w.a.decrypt(BOB, &reply).unwrap()), "turn");
    let after = w.a.encrypt_xml(&[BOB], Some("after turn"), ns);
    assert_eq!(body(&w.b.decrypt(ALICE, &after).unwrap()), "after turn");
    let r = w.b.decrypt(ALICE, &late).unwrap();
    assert_eq!(body(&r), "late");
    assert_redelivery(&r, &w.b.decrypt(ALICE, &late).unwrap());
}

#[test]
fn conversation_omemo2() {
    conversation(OMEMO2);
}

#[test]
fn conversation_oldmemo() {
    conversation(OLDMEMO);
}

#[test]
fn both_namespaces_in_one_call_and_second_device() {
    // alice has two devices (two daemons, one JID); bob speaks both namespaces.
    let mut w = world(&BOTH);
    let d2 = Daemon::start();
    let mut a2 = d2.client();
    let a2_id = a2.create_account(ALICE);
    let a1_id = w.a.ok("fingerprint.get", json!({}))["device_id"]
        .as_u64()
        .unwrap() as u32;
    // Both alice devices publish a device list with both ids; everyone learns it.
    for ns in BOTH {
        let list = protocol_list(ns, &[a1_id, a2_id]);
        for c in [&mut w.a, &mut a2, &mut w.b] {
            c.ok(
                "devicelist.update",
                json!({"jid": ALICE, "namespace": ns, "xml": list}),
            );
        }
        let b2 = a2.bundle(ns);
        for c in [&mut w.a, &mut w.b] {
            c.ok(
                "bundle.update",
                json!({"jid": ALICE, "namespace": ns, "device_id": a2_id, "xml": b2["xml"]}),
            );
        }
        let b1 = w.a.bundle(ns);
        a2.ok(
            "bundle.update",
            json!({"jid": ALICE, "namespace": ns, "device_id": a1_id, "xml": b1["xml"]}),
        );
        let bb = w.b.bundle(ns);
        let bl = w.b.devicelist(ns);
        a2.ok(
            "devicelist.update",
            json!({"jid": BOB, "namespace": ns, "xml": bl["xml"]}),
        );
        a2.ok(
            "bundle.update",
            json!({"jid": BOB, "namespace": ns, "device_id": bb["device_id"], "xml": bb["xml"]}),
        );
    }
    // bob → alice in both namespaces at once: each of alice's devices gets a key in each.
    let r = w.b.ok(
        "encrypt",
        json!({"to": [ALICE], "body": "to both of you", "all_namespaces": true}),
    );
    let msgs = r["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2, "{r}");
    for m in msgs {
        let x = m["xml"].as_str().unwrap();
        assert_eq!(body(&w.a.decrypt(BOB, x).unwrap()), "to both of you");
        assert_eq!(body(&a2.decrypt(BOB, x).unwrap()), "to both of you");
    }
    // alice's first device writes to bob; her second device gets a copy (own devices).
    let r = w.a.ok(
        "encrypt",
        json!({"to": [BOB], "body": "copy to myself", "namespaces": [OMEMO2]}),
    );
    let x = r["messages"][0]["xml"].as_str().unwrap().to_owned();
    let rids: Vec<u64> = r["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_u64().unwrap())
        .collect();
    assert!(
        rids.contains(&u64::from(a2_id)),
        "own other device included: {r}"
    );
    assert!(!rids.contains(&u64::from(a1_id)), "never to ourselves: {r}");
    assert_eq!(body(&w.b.decrypt(ALICE, &x).unwrap()), "copy to myself");
    assert_eq!(body(&a2.decrypt(ALICE, &x).unwrap()), "copy to myself");
    // The sending device cannot decrypt its own message.
    let e = w.a.err(
        "decrypt",
        json!({"from": ALICE, "xml": x}),
        "not_for_this_device",
    );
    assert!(
        e["data"]["recipients"]
            .as_array()
            .unwrap()
            .contains(&json!(a2_id)),
        "{e}"
    );
}

fn protocol_list(ns: &str, ids: &[u32]) -> String {
    let devices: String = ids.iter().map(|i| format!("<device id='{i}'/>")).collect();
    if ns == OMEMO2 {
        format!("<devices xmlns='{ns}'>{devices}</devices>")
    } else {
        format!("<list xmlns='{ns}'>{devices}</list>")
    }
}

#[test]
fn state_survives_restart() {
    let mut w = world(&[OMEMO2]);
    let x = w.a.encrypt_xml(&[BOB], Some("before"), OMEMO2);
    let first = w.b.decrypt(ALICE, &x).unwrap();
    assert_eq!(body(&first), "before");
    assert!(w._b.stop().is_some_and(|s| s.success()), "SIGTERM exits 0");
    w._b.spawn();
    let mut b = w._b.client();
    assert_redelivery(&first, &b.decrypt(ALICE, &x).unwrap());
    let y = w.a.encrypt_xml(&[BOB], Some("after"), OMEMO2);
    assert_eq!(body(&b.decrypt(ALICE, &y).unwrap()), "after");
    let z = b.encrypt_xml(&[ALICE], Some("back"), OMEMO2);
    assert_eq!(body(&w.a.decrypt(BOB, &z).unwrap()), "back");
}

#[test]
fn untrusted_devices_get_no_content() {
    let mut w = world(&[OMEMO2]);
    let fp = w.b.ok("fingerprint.get", json!({}))["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    w.a.ok(
        "trust.set",
        json!({"jid": BOB, "fingerprint": fp, "level": "distrusted"}),
    );
    let r = w.a.ok(
        "encrypt",
        json!({"to": [BOB], "body": "secret", "namespaces": [OMEMO2]}),
    );
    assert_eq!(r["messages"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(r["devices"][0]["status"], "untrusted", "{r}");
    let list = w.a.ok("trust.list", json!({"jid": BOB}));
    assert_eq!(list[0]["level"], "distrusted");
    assert_eq!(list[0]["source"], "manual");
    // And bob's messages are refused.
    let x = w.b.encrypt_xml(&[ALICE], Some("hello"), OMEMO2);
    w.a.err("decrypt", json!({"from": BOB, "xml": x}), "distrusted");
    w.a.ok(
        "trust.set",
        json!({"jid": BOB, "fingerprint": fp, "level": "trusted"}),
    );
    assert_eq!(body(&w.a.decrypt(BOB, &x).unwrap()), "hello");
}

#[test]
fn catchup_keeps_prekeys_and_defers_heartbeats() {
    let mut w = world(&[OMEMO2]);
    w.b.ok("catchup.begin", json!({}));
    let x = w.a.encrypt_xml(&[BOB], Some("from the archive"), OMEMO2);
    let r = w.b.decrypt(ALICE, &x).unwrap();
    assert!(
        !r["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["type"] == "send_heartbeat"),
        "{r}"
    );
    let end = w.b.ok("catchup.end", json!({}));
    let actions = end["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 1, "{end}");
    assert_eq!(actions[0]["type"], "send_heartbeat");
    assert_eq!(actions[0]["jid"], ALICE);
}

#[test]
fn own_device_missing_from_own_list() {
    let d = Daemon::start();
    let mut c = d.client();
    let id = c.create_account(ALICE);
    let r = c.ok(
        "devicelist.update",
        json!({"jid": ALICE, "namespace": OMEMO2, "xml": protocol_list(OMEMO2, &[7])}),
    );
    assert_eq!(r["own_device_missing"], true);
    assert_eq!(r["actions"][0]["type"], "publish_devicelist");
    let mine = c.devicelist(OMEMO2);
    let xml = mine["xml"].as_str().unwrap();
    assert!(
        xml.contains(&id.to_string()) && xml.contains("'7'") || xml.contains("\"7\""),
        "{xml}"
    );
    let b = c.bundle(OMEMO2);
    assert_eq!(b["node"], "urn:xmpp:omemo:2:bundles");
    assert_eq!(b["item_id"], id.to_string());
    assert_eq!(b["publish_options"]["pubsub#max_items"], "max");
    let b = c.bundle(OLDMEMO);
    assert_eq!(
        b["node"],
        format!("eu.siacs.conversations.axolotl.bundles:{id}")
    );
    assert_eq!(b["item_id"], "current");
}

mod bad_input;
mod bundles;
mod files;
mod links;
mod trust;
