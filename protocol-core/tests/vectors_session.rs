//! Whole sessions through the public `Session` API against `session_*.json`: every key
//! element (key exchanges and authenticated messages) reproduced byte for byte, decrypted by
//! the other side, with a snapshot round trip between every step.
mod support;

use protocol_core::bundle::{Bundle, PreKeyPublic};
use protocol_core::keys::{IdentityKeyPair, KeyPair, PrivateKey};
use protocol_core::session::{KeyExchange, Session};
use protocol_core::Version;
use serde_json::Value;
use support::*;

fn identity(p: &Value) -> IdentityKeyPair {
    IdentityKeyPair::from_private(PrivateKey::from_bytes(hex32(&p["identity_priv"])))
}

fn bob_bundle(v: &Value, version: Version) -> Bundle {
    let bob = &v["bob"];
    let (sig, ik) = match version {
        Version::Oldmemo => ("signedPreKeySignature", "identity_pub_curve25519"),
        Version::Twomemo => ("spks", "identity_pub_ed25519"),
    };
    Bundle {
        version,
        identity_key: hex32(&bob[ik]),
        signed_prekey_id: bob["signed_pre_key_id"].as_u64().unwrap() as u32,
        signed_prekey: hex32(&bob["signed_pre_key_pub"]),
        signed_prekey_signature: hex64(&v["bob_bundle_fields"][sig]),
        prekeys: bob["pre_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| PreKeyPublic {
                id: p["id"].as_u64().unwrap() as u32,
                key: hex32(&p["pub"]),
            })
            .collect(),
    }
}

fn reload(s: &Session) -> Session {
    let skipped: Vec<_> = s.skipped_keys().cloned().collect();
    Session::from_bytes(&s.to_bytes(false), skipped).unwrap()
}

fn run(file: &str, version: Version) {
    let v = load(file);
    let alice_id = identity(&v["alice"]);
    let bob_id = identity(&v["bob"]);
    let rk = &v["ratchet_keys"];
    let x = &v["x3dh"];
    let pk_id = x["bob_one_time_pre_key_id"].as_u64().unwrap() as u32;
    let mut rng = TapeRng::new(vec![
        hexv(&x["alice_ephemeral_priv"]),
        hexv(&rk["alice_ratchet_1_priv"]),
    ]);
    let mut alice =
        Session::initiate(&alice_id, &bob_bundle(&v, version), pk_id, &mut rng).unwrap();
    assert!(rng.tape.is_empty());
    let bob_spk = KeyPair::from_private(PrivateKey::from_bytes(hex32(
        &v["bob"]["signed_pre_key_priv"],
    )));
    let opk = v["bob"]["pre_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"].as_u64().unwrap() as u32 == pk_id)
        .map(|p| PrivateKey::from_bytes(hex32(&p["priv"])))
        .unwrap();
    let mut bob: Option<Session> = None;
    let mut next = [
        vec![hexv(&rk["bob_ratchet_1_priv"])],
        vec![],
        vec![hexv(&rk["alice_ratchet_2_priv"])],
        vec![hexv(&rk["bob_ratchet_2_priv"])],
    ]
    .into_iter();

    for m in v["messages"].as_array().unwrap() {
        let km = hexv(&m["plaintext_key_material"]);
        let mut rng = TapeRng::new(next.next().unwrap());
        if m["sender"] == "alice" {
            let out = alice.encrypt(&km).unwrap();
            let kex = m["is_key_exchange"].as_bool().unwrap();
            assert_eq!(out.kex, kex);
            let want = if kex {
                hexv(&m["key_exchange"])
            } else {
                hexv(&m["authenticated_message"])
            };
            assert_eq!(
                hex::encode(&out.data),
                hex::encode(&want),
                "{file}: alice's wire bytes"
            );
            let dec = if kex {
                let parsed = KeyExchange::parse(version, &out.data).unwrap();
                match bob.as_mut() {
                    Some(b) if b.matches_key_exchange(&parsed) => {
                        b.decrypt_key_exchange(&parsed, &mut rng).unwrap()
                    }
                    _ => {
                        let (s, d) =
                            Session::respond(&bob_id, &parsed, &bob_spk, &opk, &mut rng).unwrap();
                        bob = Some(s);
                        d
                    }
                }
            } else {
                bob.as_mut().unwrap().decrypt(&out.data, &mut rng).unwrap()
            };
            assert_eq!(*dec.plaintext, km);
        } else {
            let b = bob.as_mut().unwrap();
            let out = b.encrypt(&km).unwrap();
            assert!(!out.kex);
            assert_eq!(
                hex::encode(&out.data),
                hex::encode(hexv(&m["authenticated_message"]))
            );
            let dec = alice.decrypt(&out.data, &mut rng).unwrap();
            assert_eq!(*dec.plaintext, km);
            assert!(alice.confirmed());
        }
        assert!(rng.tape.is_empty(), "every drawn ratchet key was used");
        alice = reload(&alice);
        bob = bob.as_ref().map(reload);
    }
}

#[test]
fn oldmemo_session_reproduces_wire_bytes() {
    run("session_oldmemo.json", Version::Oldmemo);
}

#[test]
fn twomemo_session_reproduces_wire_bytes() {
    run("session_twomemo.json", Version::Twomemo);
}
