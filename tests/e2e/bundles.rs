//! Stored peer bundles, which the daemon also keeps parsed and verified in memory: a new
//! session always starts from the committed bundle (replaced, set aside or deleted ones are
//! never used), and a one-time prekey used once is never used again, across restarts.

use super::protocol_list;
use super::support::*;
use protocol_core::bundle::{Bundle, PreKeyPublic};
use protocol_core::keys::identity::SignedPreKey;
use protocol_core::keys::{IdentityKeyPair, KeyPair};
use protocol_core::session::KeyExchange;
use protocol_core::xml::{bundle_to_xml, Encrypted};
use protocol_core::Version;
use rand::rngs::OsRng;
use serde_json::{json, Value};

const ME: &str = "me@example.org";
const PEER: &str = "peer@example.net";

fn version(ns: &str) -> Version {
    Version::from_namespace(ns).expect("namespace")
}

/// A bundle of `identity` offering the one-time prekeys `ids`.
fn bundle(identity: &IdentityKeyPair, ns: &str, ids: &[u32]) -> String {
    let v = version(ns);
    let spk = SignedPreKey::generate(1, identity, &mut OsRng);
    bundle_to_xml(&Bundle::from_keys(
        v,
        identity,
        &spk,
        ids.iter()
            .map(|&id| PreKeyPublic {
                id,
                key: KeyPair::generate(&mut OsRng).public.0,
            })
            .collect(),
    ))
}

fn update(c: &mut Client, ns: &str, device: u32, xml: &str) -> Value {
    c.ok(
        "bundle.update",
        json!({"jid": PEER, "namespace": ns, "device_id": device, "xml": xml}),
    )
}

/// The one-time prekey id the key exchange in an encrypt answer uses.
fn prekey_used(r: &Value, ns: &str) -> u32 {
    let xml = r["messages"][0]["xml"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"));
    let e = Encrypted::from_xml(xml).unwrap();
    assert!(e.keys[0].kex, "{r}");
    KeyExchange::parse(version(ns), &e.keys[0].data)
        .unwrap()
        .info
        .pre_key_id
}

fn call(c: &mut Client, method: &str, ns: &str, device: u32) -> Result<Value, Value> {
    c.call(
        method,
        json!({"jid": PEER, "namespace": ns, "device_id": device}),
    )
}

/// A new session to `device` (the first message, or a replacement): its prekey, or the
/// error's kind.
fn new_session(c: &mut Client, ns: &str, device: u32, replace: bool) -> Result<u32, String> {
    let method = if replace {
        "session.replace"
    } else {
        "heartbeat"
    };
    call(c, method, ns, device)
        .map(|r| prekey_used(&r, ns))
        .map_err(|e| e["data"]["kind"].as_str().unwrap_or_default().to_owned())
}

fn setup(ns: &str, devices: &[u32]) -> (Daemon, Client) {
    let d = Daemon::start();
    let mut c = d.client();
    c.create_account(ME);
    c.ok(
        "devicelist.update",
        json!({"jid": PEER, "namespace": ns, "xml": protocol_list(ns, devices)}),
    );
    (d, c)
}

#[test]
fn a_replaced_bundle_is_used_never_the_one_it_replaced() {
    for ns in BOTH {
        let (_d, mut c) = setup(ns, &[11]);
        let id = IdentityKeyPair::generate(&mut OsRng);
        update(&mut c, ns, 11, &bundle(&id, ns, &[1, 2]));
        let first = new_session(&mut c, ns, 11, false).unwrap();
        assert!([1, 2].contains(&first));
        // The peer publishes a new bundle (same identity): the next session takes from it.
        update(&mut c, ns, 11, &bundle(&id, ns, &[3]));
        assert_eq!(new_session(&mut c, ns, 11, true), Ok(3), "{ns}");
        // ... and its only prekey is used now.
        assert_eq!(
            new_session(&mut c, ns, 11, true),
            Err("no_bundle".into()),
            "{ns}"
        );
    }
}

#[test]
fn a_used_prekey_is_never_used_again_even_after_restarts() {
    for ns in BOTH {
        let (mut d, mut c) = setup(ns, &[12]);
        let id = IdentityKeyPair::generate(&mut OsRng);
        update(&mut c, ns, 12, &bundle(&id, ns, &[1, 2, 3]));
        let mut used = vec![new_session(&mut c, ns, 12, false).unwrap()];
        for _ in 0..2 {
            // A restart empties memory: the bundle comes from the database, without the used.
            assert!(d.stop().is_some_and(|s| s.success()));
            d.spawn();
            c = d.client();
            let pk = new_session(&mut c, ns, 12, true).unwrap();
            assert!(
                !used.contains(&pk),
                "{ns}: prekey {pk} again after {used:?}"
            );
            used.push(pk);
        }
        used.sort_unstable();
        assert_eq!(used, [1, 2, 3]);
        assert_eq!(
            new_session(&mut c, ns, 12, true),
            Err("no_bundle".into()),
            "{ns}"
        );
        // Without a restart too: a fresh bundle's prekeys, each once.
        update(&mut c, ns, 12, &bundle(&id, ns, &[4, 5]));
        d.stop();
        d.spawn();
        c = d.client();
        let a = new_session(&mut c, ns, 12, true).unwrap();
        let b = new_session(&mut c, ns, 12, true).unwrap();
        assert!(
            a != b && [4, 5].contains(&a) && [4, 5].contains(&b),
            "{a} {b}"
        );
    }
}

#[test]
fn a_bundle_set_aside_is_not_used_until_accepted() {
    for ns in BOTH {
        let (_d, mut c) = setup(ns, &[13]);
        let old = IdentityKeyPair::generate(&mut OsRng);
        update(&mut c, ns, 13, &bundle(&old, ns, &[1, 2]));
        let first = new_session(&mut c, ns, 13, false).unwrap();
        // Another identity: set aside, the stored bundle stays the old one. While it waits for
        // the user nothing is sent to the device (issue 19); once the user keeps the old
        // identity, the next session takes from the old bundle.
        let new = IdentityKeyPair::generate(&mut OsRng);
        let new_bundle = bundle(&new, ns, &[3]);
        let r = update(&mut c, ns, 13, &new_bundle);
        assert_eq!(r["identity_changed"], true, "{r}");
        assert_eq!(
            new_session(&mut c, ns, 13, true),
            Err("identity_changed".into()),
            "{ns}"
        );
        c.ok(
            "identity.accept",
            json!({"jid": PEER, "namespace": ns, "device_id": 13, "fingerprint": old.fingerprint()}),
        );
        let second = new_session(&mut c, ns, 13, true).unwrap();
        assert!(
            second != first && [1, 2].contains(&second),
            "{ns}: {second}"
        );
        // Set aside again, then accepted: its bundle becomes the device's, and the next session
        // takes from it.
        let r = update(&mut c, ns, 13, &new_bundle);
        assert_eq!(r["identity_changed"], true, "{r}");
        let fp = new.fingerprint();
        let r = c.ok(
            "identity.accept",
            json!({"jid": PEER, "namespace": ns, "device_id": 13, "fingerprint": fp}),
        );
        assert_eq!(r["bundle_installed"], true, "{r}");
        assert_eq!(new_session(&mut c, ns, 13, false), Ok(3), "{ns}");
    }
}

#[test]
fn bundles_go_with_their_account() {
    for ns in BOTH {
        let (_d, mut c) = setup(ns, &[14]);
        let id = IdentityKeyPair::generate(&mut OsRng);
        update(&mut c, ns, 14, &bundle(&id, ns, &[1, 2]));
        new_session(&mut c, ns, 14, false).unwrap();
        c.ok("account.delete", json!({"jid": ME}));
        // The same JID again (it gets the same row id): nothing of the old account's bundles.
        c.create_account(ME);
        c.ok(
            "devicelist.update",
            json!({"jid": PEER, "namespace": ns, "xml": protocol_list(ns, &[14])}),
        );
        assert_eq!(
            new_session(&mut c, ns, 14, false),
            Err("no_bundle".into()),
            "{ns}"
        );
    }
}

/// The signed prekeys as stored: (id, retired) by id.
fn stored_signed_prekeys(d: &Daemon) -> Vec<(u32, bool)> {
    let conn = rusqlite::Connection::open(&d.db).expect("open db");
    let mut st = conn
        .prepare("SELECT id, retired_at IS NOT NULL FROM signed_prekeys ORDER BY id")
        .expect("prepare");
    let rows = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows");
    rows
}

fn rotate(c: &mut Client, days_ahead: u32) {
    c.ok(
        "debug.maintenance",
        json!({"pass": "signed_prekeys", "days_ahead": days_ahead}),
    );
}

/// The rotation replaces the signed prekey whether the account's keys are in memory (used
/// since start) or not (read on first use, after the rotation): the bundle carries the new key
/// either way, and a retired key goes after its grace period.
#[test]
fn signed_prekey_rotation_reaches_the_bundle_with_keys_in_memory_or_not() {
    let mut d = Daemon::start_with(&["--enable-debug-methods"]);
    let mut c = d.client();
    c.create_account(ME);
    let v0 = c.bundle("urn:xmpp:omemo:2")["bundle_version"].clone();
    let first = stored_signed_prekeys(&d);
    assert_eq!(first.len(), 1, "{first:?}");
    // Not due yet: nothing changes.
    rotate(&mut c, 0);
    assert_eq!(stored_signed_prekeys(&d), first);
    // Keys in memory.
    rotate(&mut c, 8);
    let second = stored_signed_prekeys(&d);
    assert_eq!(second.len(), 2, "{second:?}");
    assert_eq!(second[0], (first[0].0, true));
    let (new_id, retired) = second[1];
    assert!(!retired && new_id != first[0].0);
    let b = c.bundle("urn:xmpp:omemo:2");
    assert_ne!(b["bundle_version"], v0);
    assert!(
        b["xml"]
            .as_str()
            .expect("xml")
            .contains(&format!("<spk id='{new_id}'>")),
        "{b}"
    );
    // Keys not in memory: a restart, the rotation first, then the bundle.
    d.stop();
    d.spawn();
    let mut c = d.client();
    rotate(&mut c, 16);
    let third = stored_signed_prekeys(&d);
    // The first key's grace period is over; the second is retired, the third current.
    assert_eq!(third.len(), 2, "{third:?}");
    assert_eq!(third[0], (new_id, true));
    let (newest, retired) = third[1];
    assert!(!retired && newest != new_id);
    let b = c.bundle("urn:xmpp:omemo:2");
    assert!(
        b["xml"]
            .as_str()
            .expect("xml")
            .contains(&format!("<spk id='{newest}'>")),
        "{b}"
    );
}
