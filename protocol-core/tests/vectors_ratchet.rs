//! X3DH and the Double Ratchet against `session_oldmemo.json` / `session_twomemo.json`,
//! below the wire format: DH outputs, SK, root keys, chain keys, message keys, ciphertexts.
mod support;

use protocol_core::bundle::{Bundle, PreKeyPublic};
use protocol_core::double_ratchet::{DoubleRatchet, Header};
use protocol_core::keys::{IdentityKeyPair, KeyPair, PrivateKey, PublicKey};
use protocol_core::x3dh::{self, RemoteIdentity};
use protocol_core::Version;
use serde_json::Value;
use support::*;

fn identity(p: &Value) -> IdentityKeyPair {
    IdentityKeyPair::from_private(PrivateKey::from_bytes(hex32(&p["identity_priv"])))
}

fn key_pair(v: &Value) -> KeyPair {
    KeyPair::from_private(PrivateKey::from_bytes(hex32(v)))
}

fn bob_bundle(v: &Value, version: Version) -> Bundle {
    let bob = &v["bob"];
    let f = &v["bob_bundle_fields"];
    let sig_field = match version {
        Version::Oldmemo => "signedPreKeySignature",
        Version::Twomemo => "spks",
    };
    let identity_key = match version {
        Version::Oldmemo => hex32(&bob["identity_pub_curve25519"]),
        Version::Twomemo => hex32(&bob["identity_pub_ed25519"]),
    };
    Bundle {
        version,
        identity_key,
        signed_prekey_id: bob["signed_pre_key_id"].as_u64().unwrap() as u32,
        signed_prekey: hex32(&bob["signed_pre_key_pub"]),
        signed_prekey_signature: hex64(&f[sig_field]),
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

fn run(file: &str, version: Version) {
    let v = load(file);
    let alice = identity(&v["alice"]);
    let bob = identity(&v["bob"]);
    let x = &v["x3dh"];
    let bundle = bob_bundle(&v, version);
    bundle.verify().unwrap();

    // X3DH, both sides.
    let ek = key_pair(&x["alice_ephemeral_priv"]);
    assert_eq!(ek.public.0, hex32(&x["alice_ephemeral_pub"]));
    let pk_id = x["bob_one_time_pre_key_id"].as_u64().unwrap() as u32;
    let active = x3dh::active(&alice, &bundle, pk_id, &ek).unwrap();
    assert_eq!(*active.secret.sk, hex32(&x["shared_secret_SK_32"]));
    assert_eq!(
        active.signed_pre_key_id,
        x["bob_signed_pre_key_id"].as_u64().unwrap() as u32
    );
    let opk = v["bob"]["pre_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"].as_u64().unwrap() as u32 == pk_id)
        .unwrap();
    let opk_priv = PrivateKey::from_bytes(hex32(&opk["priv"]));
    let alice_ik = RemoteIdentity::from_transported(
        version,
        match version {
            Version::Oldmemo => *alice.curve25519(),
            Version::Twomemo => *alice.ed25519(),
        },
    );
    let bob_spk = key_pair(&v["bob"]["signed_pre_key_priv"]);
    let passive = x3dh::passive(
        version,
        &bob,
        &bob_spk.private,
        &opk_priv,
        &alice_ik,
        &ek.public,
    )
    .unwrap();
    assert_eq!(*passive.sk, *active.secret.sk);

    // Ratchets.
    let rk = &v["ratchet_keys"];
    let mut a = DoubleRatchet::initiate(
        version,
        &active.secret.sk,
        active.signed_pre_key,
        key_pair(&rk["alice_ratchet_1_priv"]),
    )
    .unwrap();
    let mut b = DoubleRatchet::respond(version, &passive.sk, bob_spk);
    let mut next_a = vec![hexv(&rk["alice_ratchet_2_priv"])];
    let mut next_b = vec![
        hexv(&rk["bob_ratchet_2_priv"]),
        hexv(&rk["bob_ratchet_1_priv"]),
    ];

    for m in v["messages"].as_array().unwrap() {
        let alice_sends = m["sender"] == "alice";
        let (sender, receiver) = if alice_sends {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        let (header, mk) = sender.encrypt().unwrap();
        assert_eq!(header.ratchet_key.0, hex32(&m["header_dh_pub"]));
        assert_eq!(header.n as u64, m["header_n"].as_u64().unwrap());
        assert_eq!(header.pn as u64, m["header_pn"].as_u64().unwrap());
        assert_eq!(mk.as_bytes(), &hex32(&m["message_key_HMAC_ck_0x01"]));
        let keys = mk.expand(version);
        assert_eq!(keys.cipher_key, hex32(&m["hkdf80_enc_key"]));
        assert_eq!(keys.mac_key, hex32(&m["hkdf80_auth_key"]));
        assert_eq!(keys.iv.to_vec(), hexv(&m["hkdf80_iv"]));
        let ct = keys.encrypt(&hexv(&m["plaintext_key_material"]));
        assert_eq!(ct, hexv(&m["aes256cbc_ciphertext"]));

        // A new ratchet key is drawn only when a message opens a new chain.
        let tape = match (header.n, alice_sends) {
            (0, true) => next_b.pop(),
            (0, false) => next_a.pop(),
            _ => None,
        };
        let mut rng = TapeRng::new(tape.into_iter().collect());
        let h = Header {
            ratchet_key: PublicKey(header.ratchet_key.0),
            n: header.n,
            pn: header.pn,
        };
        let pending = receiver.prepare_decrypt(&h, &mut rng).unwrap();
        assert_eq!(pending.message_key.as_bytes(), mk.as_bytes());
        let pt = pending.message_key.expand(version).decrypt(&ct).unwrap();
        assert_eq!(*pt, hexv(&m["plaintext_key_material"]));
        receiver.commit(pending);
        // A second delivery is a duplicate and changes nothing.
        assert!(receiver.prepare_decrypt(&h, &mut rng).is_err());
    }
    assert_eq!(b.own_ratchet_key().0, hex32(&rk["bob_ratchet_2_pub"]));
    assert!(next_a.is_empty() && next_b.is_empty());
}

#[test]
fn oldmemo_x3dh_and_ratchet() {
    run("session_oldmemo.json", Version::Oldmemo);
}

#[test]
fn twomemo_x3dh_and_ratchet() {
    run("session_twomemo.json", Version::Twomemo);
}
