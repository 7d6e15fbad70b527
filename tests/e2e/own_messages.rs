//! Our own messages read back (issue 20): what this device sent comes back to every process of
//! the user — a sent carbon, a room's reflection, the archive — and `decrypt` answers what was
//! sent, marked `own`, in both namespaces, after a restart too. A tampered copy and a copy read
//! in another conversation are refused; messages of our other devices are not affected.

use super::support::*;
use protocol_core::xml::Encrypted;
use serde_json::{json, Value};

const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";
const CAROL: &str = "carol@example.org";
const ROOM: &str = "room@muc.example.org";

/// An element alice sent, where it went, and what it carried.
struct Sent {
    ns: &'static str,
    xml: String,
    element: Value,
    /// The stanza's `to` and type as a copy of it arrives: bob (a carbon, the archive), or the
    /// room (its reflection).
    to: &'static str,
    group_chat: bool,
    body: Option<String>,
}

fn encrypt(c: &mut Client, ns: &'static str, to: &[&str], body: Option<&str>, room: bool) -> Sent {
    let mut p = json!({"to": to, "namespaces": [ns]});
    if let Some(b) = body {
        p["body"] = json!(b);
    }
    if room {
        p["sce_to"] = json!(ROOM);
    }
    let r = c.ok("encrypt", p);
    let m = &r["messages"][0];
    assert_eq!(m["namespace"], ns, "{r}");
    Sent {
        ns,
        xml: m["xml"].as_str().expect("xml").to_owned(),
        element: m["element"].clone(),
        to: if room { ROOM } else { BOB },
        group_chat: room,
        body: body.map(str::to_owned),
    }
}

/// alice's daemon knowing bob's, in both namespaces.
fn alice_and_bob() -> (Daemon, Daemon, Client, Client) {
    let (da, db) = (Daemon::start(), Daemon::start());
    let (mut a, mut b) = (da.client(), db.client());
    a.create_account(ALICE);
    b.create_account(BOB);
    a.learn(BOB, &mut b, &BOTH);
    (da, db, a, b)
}

/// `s`'s element changed by `change`, as XML.
fn altered(s: &Sent, change: impl FnOnce(&mut Encrypted)) -> String {
    let mut el: Encrypted = serde_json::from_value(s.element.clone()).unwrap();
    change(&mut el);
    el.to_xml()
}

fn read(c: &mut Client, s: &Sent) -> Result<Value, Value> {
    c.call(
        "decrypt",
        json!({"from": ALICE, "xml": s.xml, "to": s.to, "group_chat": s.group_chat}),
    )
}

/// The answer for our own `s`: what was sent, from us, marked own.
fn assert_own(r: &Value, s: &Sent, me: u32) {
    assert_eq!(r["own"], true, "{r}");
    assert_eq!(r["namespace"], s.ns, "{r}");
    assert_eq!(r["body"].as_str(), s.body.as_deref(), "{r}");
    assert_eq!(r["empty"], s.body.is_none(), "{r}");
    assert_eq!(r["sender"]["jid"], ALICE, "{r}");
    assert_eq!(r["sender"]["device_id"], me, "{r}");
    assert!(r["sent_at"].as_i64().is_some_and(|t| t > 0), "{r}");
    assert_eq!(r["actions"], json!([]), "{r}");
}

/// alice (process A) writes to bob and into a room with bob and carol, in both namespaces;
/// process B on the same daemon, and a process started after a restart, read every element
/// back with the same content. bob reads them as usual.
#[test]
fn own_messages_are_read_back_by_every_process_in_both_namespaces() {
    let mut da = Daemon::start();
    let db = Daemon::start();
    let dc = Daemon::start();
    let (mut a, mut b, mut c) = (da.client(), db.client(), dc.client());
    let me = a.create_account(ALICE);
    b.create_account(BOB);
    c.create_account(CAROL);
    a.learn(BOB, &mut b, &BOTH);
    a.learn(CAROL, &mut c, &BOTH);
    b.learn(ALICE, &mut a, &BOTH);
    let mut sent = Vec::new();
    for ns in BOTH {
        sent.push(encrypt(
            &mut a,
            ns,
            &[BOB],
            Some(&format!("mine to bob {ns}")),
            false,
        ));
        sent.push(encrypt(
            &mut a,
            ns,
            &[BOB, CAROL],
            Some(&format!("mine to the room {ns}")),
            true,
        ));
        sent.push(encrypt(&mut a, ns, &[BOB], None, false));
        sent.push(encrypt(
            &mut a,
            ns,
            &[BOB],
            Some(&format!("second to bob {ns}")),
            false,
        ));
    }
    // Process A itself, and process B (another connection), in any order and more than once.
    let mut a2 = da.client();
    for s in sent.iter().rev() {
        assert_own(&read(&mut a2, s).expect("process B reads it"), s, me);
        assert_own(&read(&mut a, s).expect("process A reads it"), s, me);
        assert_own(&read(&mut a2, s).expect("again"), s, me);
    }
    // The recipients read them as always.
    for s in sent.iter().filter(|s| s.body.is_some() && !s.group_chat) {
        let r = b
            .call("decrypt", json!({"from": ALICE, "xml": s.xml, "to": BOB}))
            .unwrap();
        assert_eq!(
            (r["body"].as_str(), &r["own"]),
            (s.body.as_deref(), &json!(false)),
            "{r}"
        );
    }
    // After a restart, a new process.
    assert!(da.stop().is_some_and(|st| st.success()));
    da.spawn();
    let mut a3 = da.client();
    for s in &sent {
        assert_own(&read(&mut a3, s).expect("after the restart"), s, me);
    }
    // The structured form reads the same.
    let s = &sent[0];
    let r = a3.ok(
        "decrypt",
        json!({"from": ALICE, "element": s.element, "to": s.to}),
    );
    assert_own(&r, s, me);
}

/// A copy whose payload was changed, and a copy read in another conversation than it was sent
/// in (a private message shown as the room's, the room's as a private one), are refused, in
/// both namespaces (0.3 has no envelope: the conversation recorded at sending decides).
#[test]
fn tampered_and_moved_own_messages_are_refused() {
    let (_da, _db, mut a, _b) = alice_and_bob();
    for ns in BOTH {
        let private = encrypt(&mut a, ns, &[BOB], Some("private"), false);
        let group = encrypt(&mut a, ns, &[BOB], Some("to the room"), true);
        // Tampered: the payload's last byte flipped.
        let tampered = altered(&private, |el| {
            let payload = el.payload.as_mut().expect("payload");
            *payload.last_mut().unwrap() ^= 1;
        });
        let e = a.err(
            "decrypt",
            json!({"from": ALICE, "xml": tampered, "to": BOB}),
            "authentication_failed",
        );
        assert_eq!(e["data"]["cause"], "peer_misbehaved", "{e}");
        // Moved: the private message read in the room, and the other way round.
        a.err(
            "decrypt",
            json!({"from": ALICE, "xml": private.xml, "to": ROOM, "group_chat": true}),
            "sce_mismatch",
        );
        a.err(
            "decrypt",
            json!({"from": ALICE, "xml": group.xml, "to": BOB}),
            "sce_mismatch",
        );
        a.err(
            "decrypt",
            json!({"from": ALICE, "xml": private.xml, "to": CAROL}),
            "sce_mismatch",
        );
        // The intact copies still read.
        assert_eq!(read(&mut a, &private).unwrap()["body"], "private");
        assert_eq!(read(&mut a, &group).unwrap()["body"], "to the room");
        // An element of ours we did not keep (keys changed): a typed error, not a guess.
        let unknown = altered(&private, |el| el.keys[0].data[0] ^= 1);
        let e = a.err(
            "decrypt",
            json!({"from": ALICE, "xml": unknown, "to": BOB}),
            "unknown_own_message",
        );
        assert_eq!(e["data"]["cause"], "local_state", "{e}");
    }
}

/// Retries of an `encrypt` with its idempotency key return the first answer and keep one
/// record per element; with redelivery off nothing is kept, and our copies are
/// `unknown_own_message`.
#[test]
fn own_records_follow_the_redelivery_bounds() {
    let (da, _db, mut a, mut b) = alice_and_bob();
    let rows = |d: &Daemon| -> i64 {
        let conn = rusqlite::Connection::open_with_flags(
            &d.db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        conn.query_row("SELECT count(*) FROM own_messages", [], |r| r.get(0))
            .unwrap()
    };
    let p = json!({"to": [BOB], "body": "once", "all_namespaces": true, "idempotency_key": "k1"});
    let first = a.ok("encrypt", p.clone());
    assert_eq!(
        first["messages"].as_array().map(Vec::len),
        Some(2),
        "{first}"
    );
    assert_eq!(rows(&da), 2);
    assert_eq!(a.ok("encrypt", p), first);
    assert_eq!(rows(&da), 2, "a retry adds no record");
    // Redelivery off: nothing kept.
    let dq = Daemon::start_with(&["--redelivery-retention", "0"]);
    let mut q = dq.client();
    q.create_account(ALICE);
    q.learn(BOB, &mut b, &[OMEMO2]);
    let x = q.encrypt_xml(&[BOB], Some("not kept"), OMEMO2);
    assert_eq!(rows(&dq), 0);
    q.err(
        "decrypt",
        json!({"from": ALICE, "xml": x, "to": BOB}),
        "unknown_own_message",
    );
}
