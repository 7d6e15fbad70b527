//! The interop scenarios. Each takes the namespace it runs in (except the two-namespace one); the
//! `#[test]` wrappers are in `main.rs`.

use crate::support::{PyPeer, OLDMEMO, OMEMO2};
use crate::*;
use serde_json::json;

/// Bodies with characters that need escaping or several UTF-8 bytes, so that both payload formats
/// (OMEMO 2's SCE envelope, OMEMO 0.3's raw UTF-8) are exercised beyond ASCII.
fn body(who: &str, i: usize) -> String {
    match i % 3 {
        0 => format!("{who} #{i}: plain text"),
        1 => format!("{who} #{i}: <b>&amp; \"quotes\" & 'apostrophes'</b>"),
        _ => format!("{who} #{i}: grüße, 你好, 🦀 — ok"),
    }
}

/// The pre key ids that were in `before` and are no longer in `after`.
fn removed(before: &[u32], after: &[u32]) -> Vec<u32> {
    before
        .iter()
        .filter(|id| !after.contains(id))
        .copied()
        .collect()
}

/// After the session is up in both directions: `rounds` messages each way, alternating, so that
/// every message starts a new DH ratchet step. No message may be a key exchange any more.
fn converse(p: &mut Pair, rounds: usize) {
    let ns = p.ns;
    for i in 0..rounds {
        let b = body("python→omemod", i);
        let x = p.py_send(&b);
        assert!(
            !key_is_kex(&x, ns, p.om.dev),
            "round {i}: python still sends key exchanges after the session was answered: {x}"
        );
        let r = p.om_recv(&x, &b);
        assert_eq!(r["key_exchange"], false, "round {i}: {r}");
        assert_eq!(
            heartbeat_actions(&r),
            Vec::<serde_json::Value>::new(),
            "round {i}: {r}"
        );

        let b = body("omemod→python", i);
        let (x, kex) = p.om_send(&b);
        assert!(
            !kex,
            "round {i}: omemod still sends key exchanges after python answered: {x}"
        );
        p.py_recv(&x, &b);
    }
    assert_eq!(
        p.deliver_py_outbox(),
        0,
        "python-omemo queued empty messages during a conversation"
    );
}

// ------------------------------------------------------------------------------------------------

/// Device lists and bundles travel as XML both ways; both sides read the same device ids, and the
/// identity keys they parse give the same fingerprint on both sides.
pub fn devicelist_and_bundle_exchange(ns: &'static str) {
    let mut om = Om::start(OM_JID);
    let mut py = PyPeer::start(PY_JID);

    // omemod's own published items.
    let list = om.c.devicelist(ns);
    assert_eq!(
        list_ids(list["xml"].as_str().unwrap()),
        vec![om.dev],
        "omemod's own list: {list}"
    );
    let b = om.c.bundle(ns);
    let om_pks = prekey_ids(b["xml"].as_str().unwrap(), ns);
    assert!(
        om_pks.len() >= 25,
        "omemod's {} bundle has {} pre keys: {b}",
        short(ns),
        om_pks.len()
    );

    // python → omemod.
    let py_fp = py_fingerprint(&mut py);
    let py_bundle = py.bundle(ns);
    let r = om_learns_py(&mut om, &mut py, ns);
    assert_eq!(
        fp(r["fingerprint"].as_str().expect("fingerprint")),
        py_fp,
        "omemod reads another identity key from python's {} bundle than python-omemo has: {r}",
        short(ns)
    );
    assert_eq!(
        r["prekey_count"].as_u64().unwrap() as usize,
        prekey_ids(&py_bundle, ns).len(),
        "omemod miscounted the pre keys of python's bundle: {r}\n{py_bundle}"
    );
    let devs = om.c.ok("devices.list", json!({"jid": PY_JID}));
    assert!(
        devs.as_array()
            .unwrap()
            .iter()
            .any(|d| d["device_id"] == py.device_id),
        "devices.list lacks python's device: {devs}"
    );

    // omemod → python.
    py_learns_om(&mut py, &mut om, ns);

    // A message each way makes both sides use what they parsed; then compare fingerprints.
    let mut p = Pair { om, py, ns };
    let (x, kex) = p.om_send("hello python");
    assert!(kex, "omemod's first message must be a key exchange");
    p.py_recv(&x, "hello python");
    assert_eq!(p.deliver_py_outbox(), 1);
    let seen = py_device_info(&mut p.py, OM_JID, p.om.dev);
    assert_eq!(
        fp(seen["fingerprint"].as_str().unwrap()),
        p.om.fingerprint,
        "python-omemo reads another identity key from omemod's {} bundle than omemod has: {seen}",
        short(ns)
    );
    assert!(
        seen["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == ns),
        "python-omemo does not list omemod's device in {ns}: {seen}"
    );
    let x = p.py_send("hello omemod");
    let r = p.om_recv(&x, "hello omemod");
    assert_eq!(
        fp(r["sender"]["fingerprint"].as_str().unwrap()),
        py_fp,
        "{r}"
    );
}

/// omemod builds the session from python's bundle; the first message is a key exchange; python's
/// used pre key leaves its bundle; then 6 messages each way with the ratchet turning.
pub fn session_initiated_by_omemod(ns: &'static str) {
    let mut p = Pair::new(ns);
    let pks_before = prekey_ids(&p.py.bundle(ns), ns);

    // Two messages before any answer: both key exchanges (the initiator repeats the key exchange
    // until it hears back).
    let (x0, kex0) = p.om_send("first from omemod");
    assert!(
        kex0,
        "omemod's first message to a new device must be a key exchange: {x0}"
    );
    let (x1, kex1) = p.om_send("second from omemod, still unanswered");
    assert!(
        kex1,
        "omemod must keep sending key exchanges until python answers: {x1}"
    );
    p.py_recv(&x0, "first from omemod");
    p.py_recv(&x1, "second from omemod, still unanswered");

    // python-omemo consumed one of its pre keys and published a replacement.
    let py_bundle = p.py.bundle(ns);
    let pks_after = prekey_ids(&py_bundle, ns);
    assert_eq!(
        removed(&pks_before, &pks_after).len(),
        1,
        "python-omemo should have used exactly one pre key: before {pks_before:?} after {pks_after:?}"
    );
    let r = om_learns_py_bundle(&mut p.om, &mut p.py, ns);
    assert_eq!(
        r["prekey_count"].as_u64().unwrap() as usize,
        pks_after.len(),
        "{r}"
    );

    // python-omemo answers every key exchange it decrypts with an empty message (python-omemo 2.1:
    // `if key_exchange is not None …: send empty message`); omemod decrypts both as empty.
    assert_eq!(
        p.deliver_py_outbox(),
        2,
        "python-omemo should answer each of the two key exchanges"
    );

    converse(&mut p, 6);
}

/// python builds the session from omemod's bundle; omemod's used pre key leaves its bundle; then
/// 6 messages each way with the ratchet turning.
pub fn session_initiated_by_python(ns: &'static str) {
    let mut p = Pair::new(ns);
    let pks_before = prekey_ids(p.om.c.bundle(ns)["xml"].as_str().unwrap(), ns);

    let x0 = p.py_send("first from python");
    assert!(
        key_is_kex(&x0, ns, p.om.dev),
        "python's first message must be a key exchange: {x0}"
    );
    let x1 = p.py_send("second from python, still unanswered");
    assert!(
        key_is_kex(&x1, ns, p.om.dev),
        "python repeats the key exchange until answered: {x1}"
    );
    let r = p.om_recv(&x0, "first from python");
    assert_eq!(
        r["key_exchange"], true,
        "omemod did not flag python's key exchange: {r}"
    );
    let publish: Vec<_> = r["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["type"] == "publish_bundle" && a["namespace"] == ns)
        .collect();
    assert_eq!(
        publish.len(),
        1,
        "omemod used a pre key: it must ask to republish its {ns} bundle: {r}"
    );
    let r = p.om_recv(&x1, "second from python, still unanswered");
    assert_eq!(r["key_exchange"], true, "{r}");

    // omemod deleted the used pre key from its bundle.
    let om_bundle = p.om.c.bundle(ns);
    let pks_after = prekey_ids(om_bundle["xml"].as_str().unwrap(), ns);
    assert_eq!(
        removed(&pks_before, &pks_after).len(),
        1,
        "omemod should have used exactly one pre key: before {pks_before:?} after {pks_after:?}"
    );
    py_learns_om_bundle(&mut p.py, &mut p.om, ns); // python-omemo parses the republished bundle

    // omemod answers with a message (the responder never sends key exchanges).
    let (x, kex) = p.om_send("omemod answers");
    assert!(
        !kex,
        "omemod, the responder, must not send a key exchange: {x}"
    );
    p.py_recv(&x, "omemod answers");

    converse(&mut p, 6);
}

/// python → omemod, delivered out of order: key exchanges (2, 3, 1), then within a chain (4, 1, 3),
/// and message 2 delivered late, after the ratchet turned twice; its replay is a duplicate.
pub fn out_of_order_python_to_omemod(ns: &'static str) {
    let mut p = Pair::new(ns);
    let k: Vec<String> = (1..=3).map(|i| format!("kex message {i}")).collect();
    let kx: Vec<String> = k.iter().map(|b| p.py_send(b)).collect();
    for x in &kx {
        assert!(key_is_kex(x, ns, p.om.dev), "{x}");
    }
    let r = p.om_recv(&kx[1], &k[1]);
    assert_eq!(r["key_exchange"], true, "{r}");
    p.om_recv(&kx[2], &k[2]);
    p.om_recv(&kx[0], &k[0]);

    let (x, _) = p.om_send("reply 1");
    p.py_recv(&x, "reply 1");

    let a: Vec<String> = (1..=4)
        .map(|i| body(&format!("chain message {i}"), i))
        .collect();
    let ax: Vec<String> = a.iter().map(|b| p.py_send(b)).collect();
    p.om_recv(&ax[3], &a[3]);
    p.om_recv(&ax[0], &a[0]);
    p.om_recv(&ax[2], &a[2]);

    // The ratchet turns: omemod answers, python sends on a new chain.
    let (x, kex) = p.om_send("reply 2");
    assert!(!kex);
    p.py_recv(&x, "reply 2");
    let x = p.py_send("new chain");
    p.om_recv(&x, "new chain");

    // The skipped message of the older chain arrives late.
    p.om_recv(&ax[1], &a[1]);
    om_redelivers(&mut p.om, PY_JID, &ax[1], "a replay of the late message");

    // The session still works both ways.
    converse(&mut p, 1);
}

/// omemod → python, delivered out of order, the mirror of the previous test; python-omemo must
/// reject the replay of the late message.
pub fn out_of_order_omemod_to_python(ns: &'static str) {
    let mut p = Pair::new(ns);
    let k: Vec<String> = (1..=3).map(|i| format!("kex message {i}")).collect();
    let kx: Vec<String> = k
        .iter()
        .map(|b| {
            let (x, kex) = p.om_send(b);
            assert!(kex, "{x}");
            x
        })
        .collect();
    p.py_recv(&kx[1], &k[1]);
    p.py_recv(&kx[2], &k[2]);
    p.py_recv(&kx[0], &k[0]);
    assert_eq!(
        p.deliver_py_outbox(),
        3,
        "python-omemo should answer each of the three key exchanges"
    );

    let x = p.py_send("reply 1");
    p.om_recv(&x, "reply 1");

    let a: Vec<String> = (1..=4)
        .map(|i| body(&format!("chain message {i}"), i))
        .collect();
    let ax: Vec<String> = a
        .iter()
        .map(|b| {
            let (x, kex) = p.om_send(b);
            assert!(!kex, "{x}");
            x
        })
        .collect();
    p.py_recv(&ax[3], &a[3]);
    p.py_recv(&ax[0], &a[0]);
    p.py_recv(&ax[2], &a[2]);

    let x = p.py_send("reply 2");
    p.om_recv(&x, "reply 2");
    let (x, _) = p.om_send("new chain");
    p.py_recv(&x, "new chain");

    p.py_recv(&ax[1], &a[1]);
    let r =
        p.py.cmd(json!({"cmd": "decrypt", "from": OM_JID, "xml": ax[1]}));
    assert_eq!(
        r["ok"], false,
        "python-omemo accepted a replay of omemod's message: {r}"
    );
    assert_eq!(r["error"], "DecryptionFailed", "{r}");

    converse(&mut p, 1);
}

/// Copies of python's messages (the key exchange, a message of the current chain, and both
/// again after the ratchet moved on) are redeliveries for omemod: the same answer, marked
/// `redelivered`, with the session left intact.
pub fn replay_redelivered_by_omemod(ns: &'static str) {
    let mut p = Pair::new(ns);
    let k0 = p.py_send("key exchange");
    let r = p.om_recv(&k0, "key exchange");
    assert_eq!(r["key_exchange"], true, "{r}");
    om_redelivers(&mut p.om, PY_JID, &k0, "a replayed key exchange");

    let (x, _) = p.om_send("answer");
    p.py_recv(&x, "answer");

    let m1 = p.py_send("message 1");
    p.om_recv(&m1, "message 1");
    om_redelivers(&mut p.om, PY_JID, &m1, "a replay from the current chain");
    // The same key element with another payload never opens.
    let mut tampered = protocol_core::xml::Encrypted::from_xml(&m1).expect("valid element");
    if let Some(b) = tampered.payload.as_mut() {
        b[0] ^= 1;
    }
    om_rejects(
        &mut p.om,
        PY_JID,
        &tampered.to_xml(),
        "duplicate_message",
        "a tampered copy",
    );
    let m2 = p.py_send("message 2");
    p.om_recv(&m2, "message 2");

    // The ratchet moves on; the replays are now from older chains.
    let (x, _) = p.om_send("answer 2");
    p.py_recv(&x, "answer 2");
    let m3 = p.py_send("message 3");
    p.om_recv(&m3, "message 3");
    om_redelivers(&mut p.om, PY_JID, &m1, "a replay from an older chain");
    om_redelivers(&mut p.om, PY_JID, &m2, "a replay from an older chain");
    om_redelivers(&mut p.om, PY_JID, &m3, "a replay from the current chain");
    om_redelivers(
        &mut p.om,
        PY_JID,
        &k0,
        "a replayed key exchange after the session moved on",
    );

    converse(&mut p, 2);
}

/// python initiates; omemod's decrypt asks for a heartbeat; omemod's `heartbeat` builds an empty
/// message that python-omemo decrypts as empty, after which python stops sending key exchanges.
pub fn heartbeat_from_omemod_after_key_exchange(ns: &'static str) {
    let mut p = Pair::new(ns);
    let x = p.py_send("key exchange from python");
    assert!(key_is_kex(&x, ns, p.om.dev), "{x}");
    let r = p.om_recv(&x, "key exchange from python");
    assert_eq!(r["key_exchange"], true, "{r}");
    let hb = heartbeat_actions(&r);
    assert_eq!(
        hb,
        vec![
            json!({"type": "send_heartbeat", "jid": PY_JID, "namespace": ns, "device_id": p.py.device_id})
        ],
        "omemod must ask for exactly one heartbeat to python after a new session: {r}"
    );

    let h = p.om.c.ok(
        "heartbeat",
        json!({"jid": PY_JID, "namespace": ns, "device_id": p.py.device_id}),
    );
    let msgs = h["messages"].as_array().expect("messages");
    assert_eq!(msgs.len(), 1, "{h}");
    assert_eq!(msgs[0]["namespace"], ns, "{h}");
    let devs = h["devices"].as_array().expect("devices");
    assert_eq!(
        devs.len(),
        1,
        "the heartbeat goes to python's device only: {h}"
    );
    assert_eq!(devs[0]["device_id"], p.py.device_id, "{h}");
    assert_eq!(devs[0]["status"], "encrypted", "{h}");
    assert_eq!(devs[0]["kex"], false, "omemod is the responder: {h}");
    let hx = msgs[0]["xml"].as_str().unwrap().to_owned();
    assert!(
        !hx.contains("<payload"),
        "an empty message has no payload: {hx}"
    );
    assert_eq!(key_rids(&hx), vec![p.py.device_id], "{hx}");
    py_recv_from(&mut p.py, &p.om, &hx, None, ns);
    assert_eq!(
        p.deliver_py_outbox(),
        0,
        "python-omemo must not answer an empty message"
    );

    // The heartbeat completed python's session: its next message is no key exchange.
    let x = p.py_send("after the heartbeat");
    assert!(
        !key_is_kex(&x, ns, p.om.dev),
        "python still sends key exchanges after the heartbeat: {x}"
    );
    let r = p.om_recv(&x, "after the heartbeat");
    assert_eq!(r["key_exchange"], false, "{r}");
    assert!(heartbeat_actions(&r).is_empty(), "{r}");
    converse(&mut p, 1);
}

/// omemod initiates; python-omemo answers the key exchange with an empty message; omemod decrypts
/// it as empty (and does not answer it), after which omemod stops sending key exchanges.
pub fn empty_message_from_python_after_key_exchange(ns: &'static str) {
    let mut p = Pair::new(ns);
    let (x, kex) = p.om_send("key exchange from omemod");
    assert!(kex, "{x}");
    p.py_recv(&x, "key exchange from omemod");

    let out = p.py.ok(json!({"cmd": "outbox"}));
    let msgs = out["messages"].as_array().unwrap();
    assert_eq!(
        msgs.len(),
        1,
        "python-omemo should queue one empty message after a key exchange: {out}"
    );
    assert_eq!(msgs[0]["to"], OM_JID, "{out}");
    assert_eq!(msgs[0]["ns"], ns, "{out}");
    let ex = msgs[0]["xml"].as_str().unwrap();
    assert!(
        !ex.contains("<payload"),
        "python's empty message has a payload: {ex}"
    );
    let r = om_recv_from(&mut p.om, &p.py, ex, None, ns);
    assert_eq!(r["key_exchange"], false, "{r}");
    assert!(
        heartbeat_actions(&r).is_empty(),
        "omemod must not answer an empty message with another: {r}"
    );
    om_redelivers(&mut p.om, PY_JID, ex, "a replayed empty message");

    let (x, kex) = p.om_send("after python's empty message");
    assert!(
        !kex,
        "omemod still sends key exchanges after python's empty message: {x}"
    );
    p.py_recv(&x, "after python's empty message");
    converse(&mut p, 1);
}

/// One message from omemod (alice) to a JID (bob) with two python-omemo devices and one omemod
/// device; all three decrypt it. Bob's device list is built the way PEP would: each device
/// publishes the list it received with itself added.
pub fn two_python_devices_and_one_omemod_device(ns: &'static str) {
    const BOB: &str = "bob@multi.example";
    let mut alice = Om::start(OM_JID);
    let mut py1 = PyPeer::start(BOB);
    let mut py2 = PyPeer::start(BOB);
    let mut bob_om = Om::start(BOB);
    assert!(
        py1.device_id != py2.device_id
            && py1.device_id != bob_om.dev
            && py2.device_id != bob_om.dev,
        "device id collision"
    );

    // py1 publishes [py1]; py2 receives it and republishes [py1, py2]; bob's omemod device receives
    // that and republishes [py1, py2, om]; both python devices receive the final list.
    let l1 = py1.devicelist(ns);
    assert_eq!(list_ids(&l1), vec![py1.device_id], "{l1}");
    py2.ok(json!({"cmd": "add_devicelist", "jid": BOB, "ns": ns, "xml": l1}));
    let l2 = py2.devicelist(ns);
    let mut want = vec![py1.device_id, py2.device_id];
    want.sort_unstable();
    assert_eq!(
        list_ids(&l2),
        want,
        "python-omemo must republish its own list with itself added: {l2}"
    );
    let r = bob_om.c.ok(
        "devicelist.update",
        json!({"jid": BOB, "namespace": ns, "xml": l2}),
    );
    assert_eq!(r["own_device_missing"], true, "{r}");
    let l3 = bob_om.c.devicelist(ns)["xml"].as_str().unwrap().to_owned();
    want.push(bob_om.dev);
    want.sort_unstable();
    assert_eq!(
        list_ids(&l3),
        want,
        "omemod must republish bob's list with its device added: {l3}"
    );
    for py in [&mut py1, &mut py2] {
        let r = py.ok(json!({"cmd": "add_devicelist", "jid": BOB, "ns": ns, "xml": l3}));
        assert_eq!(
            serde_json::from_value::<Vec<u32>>(r["device_ids"].clone()).unwrap(),
            want,
            "{r}"
        );
        // python-omemo keeps publishing the full list.
        assert_eq!(list_ids(&py.devicelist(ns)), want);
    }

    // alice's omemod gets bob's list and the three bundles; every bob device gets alice's items.
    let r = alice.c.ok(
        "devicelist.update",
        json!({"jid": BOB, "namespace": ns, "xml": l3}),
    );
    assert_eq!(
        serde_json::from_value::<Vec<u32>>(r["device_ids"].clone()).unwrap(),
        want,
        "{r}"
    );
    for py in [&mut py1, &mut py2] {
        om_learns_py_bundle(&mut alice, py, ns);
    }
    let b = bob_om.c.bundle(ns);
    alice.c.ok(
        "bundle.update",
        json!({"jid": BOB, "namespace": ns, "device_id": bob_om.dev, "xml": b["xml"]}),
    );
    for py in [&mut py1, &mut py2] {
        py_learns_om(py, &mut alice, ns);
    }
    let al = alice.c.devicelist(ns);
    bob_om.c.ok(
        "devicelist.update",
        json!({"jid": OM_JID, "namespace": ns, "xml": al["xml"]}),
    );
    let ab = alice.c.bundle(ns);
    bob_om.c.ok(
        "bundle.update",
        json!({"jid": OM_JID, "namespace": ns, "device_id": alice.dev, "xml": ab["xml"]}),
    );

    // One element, three keys, all key exchanges.
    let text = "to all of bob's devices: <ok> & 🦀";
    let expect = [
        (BOB, py1.device_id),
        (BOB, py2.device_id),
        (BOB, bob_om.dev),
    ];
    let (x, kex) = om_send_to(&mut alice, &[BOB], &expect, text, ns);
    assert!(kex, "{x}");
    for py in [&mut py1, &mut py2] {
        py_recv_from(py, &alice, &x, Some(text), ns);
    }
    let r = bob_om
        .c
        .decrypt(OM_JID, &x)
        .unwrap_or_else(|e| panic!("bob's omemod device: {e}"));
    assert_eq!(r["body"], text, "{r}");
    assert_eq!(r["key_exchange"], true, "{r}");
    assert_eq!(r["sender"]["device_id"], alice.dev, "{r}");
    if ns == OMEMO2 {
        assert_eq!(r["envelope"]["from"], OM_JID, "{r}");
        assert_eq!(r["envelope"]["to"], BOB, "{r}");
    }

    // Every python device answers the key exchange; alice takes the empty messages; her next
    // message is a key exchange only for the omemod device, which has not answered yet.
    for py in [&mut py1, &mut py2] {
        assert_eq!(
            deliver_outbox(py, &mut alice, ns),
            1,
            "python {} did not answer",
            py.device_id
        );
    }
    let r = alice.c.ok(
        "encrypt",
        json!({"to": [BOB], "body": "second", "namespaces": [ns]}),
    );
    let x = r["messages"][0]["xml"].as_str().unwrap().to_owned();
    for d in r["devices"].as_array().unwrap() {
        let dev = d["device_id"].as_u64().unwrap() as u32;
        assert_eq!(d["status"], "encrypted", "{r}");
        assert_eq!(d["kex"], dev == bob_om.dev, "kex flag for {dev}: {r}");
    }
    for py in [&mut py1, &mut py2] {
        py_recv_from(py, &alice, &x, Some("second"), ns);
    }
    let r = bob_om
        .c
        .decrypt(OM_JID, &x)
        .unwrap_or_else(|e| panic!("bob's omemod device: {e}"));
    assert_eq!(r["body"], "second", "{r}");

    // A python device of bob's writes to alice: alice decrypts it. python-omemo also encrypts to
    // its own other devices, so it gets their bundles first (as it would fetch them from PEP).
    let b2 = py2.bundle(ns);
    py1.ok(
        json!({"cmd": "add_bundle", "jid": BOB, "device_id": py2.device_id, "ns": ns, "xml": b2}),
    );
    let bb = bob_om.c.bundle(ns);
    py1.ok(json!({"cmd": "add_bundle", "jid": BOB, "device_id": bob_om.dev, "ns": ns, "xml": bb["xml"]}));
    let x = py_send_to(
        &mut py1,
        &[OM_JID],
        &[alice.dev],
        "from bob's first python device",
        ns,
    );
    om_recv_from(
        &mut alice,
        &py1,
        &x,
        Some("from bob's first python device"),
        ns,
    );
}

/// A recipient announcing both namespaces: omemod's `encrypt` with `all_namespaces` gives one
/// element per namespace (one stanza), python-omemo decrypts each; without it, only the
/// preferred namespace (OMEMO 2) is used. python answers in each namespace separately.
pub fn both_namespaces_in_one_stanza() {
    let mut p = Pair::with(OMEMO2, &[OMEMO2, OLDMEMO]);
    let text = "one stanza, two namespaces: <&> ü";
    let r = p.om.c.ok(
        "encrypt",
        json!({"to": [PY_JID], "body": text, "all_namespaces": true}),
    );
    let msgs = r["messages"].as_array().unwrap();
    assert_eq!(
        msgs.len(),
        2,
        "all_namespaces: one element per namespace expected: {r}"
    );
    let devs = r["devices"].as_array().unwrap();
    assert_eq!(devs.len(), 2, "one report per (device, namespace): {r}");
    for ns in [OMEMO2, OLDMEMO] {
        let d = devs
            .iter()
            .find(|d| d["namespace"] == ns)
            .unwrap_or_else(|| panic!("{r}"));
        assert_eq!(d["device_id"], p.py.device_id, "{r}");
        assert_eq!(d["status"], "encrypted", "{r}");
        assert_eq!(d["kex"], true, "{r}");
        let m = msgs
            .iter()
            .find(|m| m["namespace"] == ns)
            .unwrap_or_else(|| panic!("no {ns}: {r}"));
        let x = m["xml"].as_str().unwrap();
        assert!(x.starts_with("<encrypted") && x.contains(ns), "{x}");
        py_recv_from(&mut p.py, &p.om, x, Some(text), ns);
        assert_eq!(
            deliver_outbox(&mut p.py, &mut p.om, ns),
            1,
            "python's answer to the {ns} key exchange"
        );
    }

    // Without all_namespaces, the preferred namespace only.
    let r =
        p.om.c
            .ok("encrypt", json!({"to": [PY_JID], "body": "preferred only"}));
    let msgs = r["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "{r}");
    assert_eq!(
        msgs[0]["namespace"], OMEMO2,
        "OMEMO 2 is preferred by default: {r}"
    );
    py_recv_from(
        &mut p.py,
        &p.om,
        msgs[0]["xml"].as_str().unwrap(),
        Some("preferred only"),
        OMEMO2,
    );

    // python answers in each namespace; omemod decrypts both.
    for ns in [OMEMO2, OLDMEMO] {
        let b = format!("python in {}", short(ns));
        let x = py_send_to(&mut p.py, &[OM_JID], &[p.om.dev], &b, ns);
        om_recv_from(&mut p.om, &p.py, &x, Some(&b), ns);
    }

    // Both sessions are confirmed: a second two-namespace message has no key exchange left.
    let r = p.om.c.ok(
        "encrypt",
        json!({"to": [PY_JID], "body": "again", "all_namespaces": true}),
    );
    assert_eq!(r["messages"].as_array().unwrap().len(), 2, "{r}");
    for d in r["devices"].as_array().unwrap() {
        assert_eq!(d["kex"], false, "{r}");
    }
    for m in r["messages"].as_array().unwrap() {
        let ns = m["namespace"].as_str().unwrap();
        py_recv_from(
            &mut p.py,
            &p.om,
            m["xml"].as_str().unwrap(),
            Some("again"),
            ns,
        );
    }
    p.ns = OLDMEMO;
    converse(&mut p, 1);
    p.ns = OMEMO2;
    converse(&mut p, 1);
}

/// A long one-sided chain: the receiver of the 54th message of a chain (counter n = 53, the
/// XEP-0384 / python-omemo staleness number) sends a heartbeat, in both directions, and the
/// other side decrypts it as empty; afterwards the chain is fresh again.
pub fn heartbeat_after_long_one_sided_chain(ns: &'static str) {
    let mut p = Pair::new(ns);
    let (x, _) = p.om_send("start");
    p.py_recv(&x, "start");
    assert_eq!(p.deliver_py_outbox(), 1); // python's empty message is n = 0 of its new chain

    // python → omemod: messages n = 1 … 53 of that chain.
    for n in 1..=53u32 {
        let b = format!("python one-sided n={n}");
        let x = p.py_send(&b);
        let r = p.om_recv(&x, &b);
        let hb = heartbeat_actions(&r);
        if n < 53 {
            assert!(hb.is_empty(), "omemod asked for a heartbeat at n={n}: {r}");
        } else {
            assert_eq!(
                hb,
                vec![
                    json!({"type": "send_heartbeat", "jid": PY_JID, "namespace": ns, "device_id": p.py.device_id})
                ],
                "omemod must ask for a heartbeat at n=53: {r}"
            );
        }
    }
    let h = p.om.c.ok(
        "heartbeat",
        json!({"jid": PY_JID, "namespace": ns, "device_id": p.py.device_id}),
    );
    assert_eq!(h["devices"][0]["status"], "encrypted", "{h}");
    py_recv_from(
        &mut p.py,
        &p.om,
        h["messages"][0]["xml"].as_str().unwrap(),
        None,
        ns,
    );
    let x = p.py_send("new chain after the heartbeat");
    let r = p.om_recv(&x, "new chain after the heartbeat");
    assert!(heartbeat_actions(&r).is_empty(), "{r}");

    // omemod → python: omemod's chain is fresh (n = 0 …); python-omemo queues a heartbeat at n=53.
    for n in 0..=53u32 {
        let b = format!("omemod one-sided n={n}");
        let (x, _) = p.om_send(&b);
        p.py_recv(&x, &b);
        let out = p.py.ok(json!({"cmd": "outbox"}));
        let msgs = out["messages"].as_array().unwrap();
        if n < 53 {
            assert!(
                msgs.is_empty(),
                "python-omemo sent a heartbeat at n={n}: {out}"
            );
        } else {
            assert_eq!(
                msgs.len(),
                1,
                "python-omemo should send a heartbeat at n=53: {out}"
            );
            assert_eq!(msgs[0]["to"], OM_JID);
            let r = om_recv_from(&mut p.om, &p.py, msgs[0]["xml"].as_str().unwrap(), None, ns);
            assert!(heartbeat_actions(&r).is_empty(), "{r}");
        }
    }
    converse(&mut p, 1);
}

/// omemod's `content_xml` of a python-omemo message parses on its own with python's XML parser,
/// the body in `jabber:client`. (Envelopes whose prefixes are declared on `<envelope>`, as some
/// XMPP libraries write them, are covered by protocol-core's `bad_input_xml` test.)
pub fn content_xml_parses_on_its_own() {
    let mut p = Pair::new(OMEMO2);
    let x = p.py_send("<b>bold</b> & more");
    let r = p.om_recv(&x, "<b>bold</b> & more");
    let content = r["content_xml"].as_str().expect("content_xml").to_owned();
    let script = "import sys, xml.etree.ElementTree as E\n\
        root = E.fromstring('<wrapper>' + sys.stdin.read() + '</wrapper>')\n\
        print(' '.join(c.tag for c in root))\n\
        print(root.find('{jabber:client}body').text)";
    let mut child = std::process::Command::new(crate::support::python())
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(content.as_bytes()).expect("write");
    }
    let out = child.wait_with_output().expect("python ran");
    assert!(
        out.status.success(),
        "python could not parse {content:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("{jabber:client}body"), "{content}");
    assert_eq!(lines.next(), Some("<b>bold</b> & more"), "{content}");
}

/// OMEMO 2 SCE affixes written by python-omemo's side are checked against the conversation the
/// stanza arrived in: a room message replayed into another room, and a group chat message without
/// `<to>`, are refused without moving the ratchet; the correctly delivered copy decrypts.
pub fn sce_checked_against_python() {
    let ns = OMEMO2;
    let mut p = Pair::new(ns);
    let room = "room@muc.example";
    let r = p.py.ok(
        json!({"cmd": "encrypt", "to": [OM_JID], "body": "to the room",
                           "ns": [ns], "sce_to": room}),
    );
    let x = r["messages"][ns].as_str().expect("xml").to_owned();
    p.om.c.err(
        "decrypt",
        json!({"from": PY_JID, "xml": x, "to": "other@muc.example", "group_chat": true}),
        "sce_mismatch",
    );
    p.om.c.err(
        "decrypt",
        json!({"from": PY_JID, "xml": x, "to": OM_JID}),
        "sce_mismatch",
    );
    let r = p.om.c.ok(
        "decrypt",
        json!({"from": PY_JID, "xml": x, "to": room, "group_chat": true}),
    );
    assert_eq!(r["body"], "to the room", "{r}");

    let r =
        p.py.ok(json!({"cmd": "encrypt", "to": [OM_JID], "body": "no to",
                           "ns": [ns], "sce_to": null}));
    let x = r["messages"][ns].as_str().expect("xml").to_owned();
    p.om.c.err(
        "decrypt",
        json!({"from": PY_JID, "xml": x, "to": room, "group_chat": true}),
        "sce_mismatch",
    );
    // Transition: a client that cannot tell the conversation gets it (1:1, `to` unknown).
    let r = p.om.c.ok("decrypt", json!({"from": PY_JID, "xml": x}));
    assert_eq!(r["body"], "no to", "{r}");

    let x = p.py_send("one to one");
    let r =
        p.om.c
            .ok("decrypt", json!({"from": PY_JID, "xml": x, "to": OM_JID}));
    assert_eq!(r["body"], "one to one", "{r}");
}

/// An empty text from omemod reaches python-omemo. OMEMO 0.3 cannot carry an empty body (an
/// empty `<payload/>` is unreadable to python-omemo and the libsignal family), so there it goes
/// out as an empty message; OMEMO 2's envelope carries the empty `<body/>`.
pub fn empty_text_from_omemod(ns: &'static str) {
    let mut p = Pair::new(ns);
    let (first, _) = p.om_send("first");
    p.py_recv(&first, "first");
    let (x, _) = p.om_send("");
    if ns == OLDMEMO {
        assert!(
            !x.contains("<payload"),
            "an empty 0.3 body must not become an empty <payload/>: {x}"
        );
    }
    let r =
        p.py.cmd(json!({"cmd": "decrypt", "from": OM_JID, "xml": x}));
    assert_eq!(
        r["ok"],
        true,
        "python-omemo could not read omemod's empty text in {}: {r}\nmessage: {x}",
        short(ns)
    );
    if ns == OLDMEMO {
        assert_eq!(r["empty"], true, "{r}");
    } else {
        assert_eq!(r["empty"], false, "{r}");
        assert!(r["body"].as_str().unwrap_or_default().is_empty(), "{r}");
    }
    // The conversation goes on.
    let (y, _) = p.om_send("after the empty text");
    p.py_recv(&y, "after the empty text");
}

/// XEP-0420 0.5 against python-omemo: its envelope with a 400-character `<rpad>` (longer than
/// the 0–200 omemod writes: must not be rejected) and an XEP-0082 `<time>` with a zone offset
/// and milliseconds decrypts, and `sent_at` checks that time; omemod's own envelope is padded
/// to the minimum and carries an XEP-0082 UTC `<time>` that python-omemo's side reads.
pub fn sce_0_5_envelopes_with_python() {
    let ns = OMEMO2;
    let mut p = Pair::new(ns);
    let stamp = "2026-07-01T14:34:56.789+02:00";
    let r =
        p.py.ok(json!({"cmd": "encrypt", "to": [OM_JID], "body": "padded",
                           "ns": [ns], "rpad_len": 400, "time": stamp}));
    let x = r["messages"][ns].as_str().expect("xml").to_owned();
    // Sent at 12:34:56Z: an hour later is too far off, and nothing moved.
    p.om.c.err(
        "decrypt",
        json!({"from": PY_JID, "xml": x, "to": OM_JID, "sent_at": "2026-07-01T13:40:00Z"}),
        "sce_mismatch",
    );
    let r = p.om.c.ok(
        "decrypt",
        json!({"from": PY_JID, "xml": x, "to": OM_JID, "sent_at": "2026-07-01T12:40:00Z"}),
    );
    assert_eq!(r["body"], "padded", "{r}");
    assert_eq!(r["envelope"]["time"], stamp, "{r}");

    let (x, _) = p.om_send("ok");
    let r = p.py_recv(&x, "ok");
    let time = r["sce_time"].as_str().expect("omemod writes <time>");
    assert!(
        time.len() == 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "not XEP-0082 UTC: {time}"
    );
    assert_eq!(r["sce_rpad"], true, "{r}");
    let envelope = r["envelope"].as_str().expect("envelope");
    assert!(
        envelope.len() >= 512,
        "padded to 512 bytes first: {envelope}"
    );
}

/// The label of one device as omemod's `devices.list` shows it: (label, label_status).
fn om_label(om: &mut Om, jid: &str, dev: u32) -> (serde_json::Value, serde_json::Value) {
    let r = om.c.ok("devices.list", json!({"jid": jid}));
    let d = r
        .as_array()
        .expect("devices")
        .iter()
        .find(|d| d["namespace"] == OMEMO2 && d["device_id"] == dev)
        .cloned()
        .unwrap_or_else(|| panic!("omemod does not list {jid}/{dev}: {r}"));
    (d["label"].clone(), d["label_status"].clone())
}

/// Signed device labels (XEP-0384 0.9) both ways: python-omemo's signed label is shown by
/// omemod, omemod's is verified and shown by python-omemo; a forged `labelsig` is ignored by
/// both. omemod's 0.3 list, which python-omemo's schema refuses with a label, carries none.
pub fn labels_both_ways() {
    let mut om = Om::start(OM_JID);
    let mut py = PyPeer::start(PY_JID);

    // python-omemo → omemod.
    let r = py.ok(json!({"cmd": "set_label", "label": "Python phone 🐍"}));
    let list = r["xml"].as_str().expect("xml").to_owned();
    assert!(list.contains("labelsig="), "{list}");
    om_learns_py(&mut om, &mut py, OMEMO2);
    assert_eq!(
        om_label(&mut om, PY_JID, py.device_id),
        (json!("Python phone 🐍"), json!("verified"))
    );
    let forged = list.replace("Python phone 🐍", "Bank support");
    om.c.ok(
        "devicelist.update",
        json!({"jid": PY_JID, "namespace": OMEMO2, "xml": forged}),
    );
    assert_eq!(
        om_label(&mut om, PY_JID, py.device_id),
        (serde_json::Value::Null, json!("bad_signature"))
    );

    // omemod → python-omemo (its bundle first: python-omemo checks labels of devices whose
    // identity key it has).
    let r =
        om.c.ok("account.set_label", json!({"label": "omemod laptop"}));
    assert_eq!(r["actions"][0]["type"], "publish_devicelist", "{r}");
    py_learns_om_bundle(&mut py, &mut om, OMEMO2);
    py_learns_om(&mut py, &mut om, OMEMO2);
    assert_eq!(
        py_device_info(&mut py, OM_JID, om.dev)["label"],
        "omemod laptop"
    );
    py_learns_om(&mut py, &mut om, OLDMEMO);
    // A forged label on omemod's device: python-omemo ignores it and keeps the signed one.
    let ours = om.c.devicelist(OMEMO2)["xml"].as_str().unwrap().to_owned();
    let forged = ours.replace("omemod laptop", "Bank support");
    py.ok(json!({"cmd": "add_devicelist", "jid": OM_JID, "ns": OMEMO2, "xml": forged}));
    assert_eq!(
        py_device_info(&mut py, OM_JID, om.dev)["label"],
        "omemod laptop"
    );
}
