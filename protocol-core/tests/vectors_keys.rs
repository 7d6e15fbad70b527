//! Keys, conversions, XEdDSA and fingerprints against `xeddsa.json`, `conversions.json`,
//! `misc.json`.
mod support;

use protocol_core::keys::conversion::{curve25519_to_ed25519, ed25519_to_curve25519};
use protocol_core::keys::xeddsa;
use protocol_core::keys::{fingerprint, IdentityKeyPair, PrivateKey};
use support::*;

#[test]
fn conversions_reproduce() {
    let v = load("conversions.json");
    let cases = v["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for c in cases {
        let k = PrivateKey::from_bytes(hex32(&c["priv"]));
        assert_eq!(k.public_key().0, hex32(&c["curve25519_pub_u"]));
        assert_eq!(xeddsa::ed25519_public(&k), hex32(&c["ed25519_pub"]));
        assert_eq!(
            ed25519_to_curve25519(&hex32(&c["ed25519_pub"])).unwrap(),
            hex32(&c["ed25519_to_curve25519"])
        );
        let u = hex32(&c["curve25519_pub_u"]);
        assert_eq!(
            curve25519_to_ed25519(&u, 0).unwrap(),
            hex32(&c["curve25519_to_ed25519_sign0"])
        );
        assert_eq!(
            curve25519_to_ed25519(&u, 1).unwrap(),
            hex32(&c["curve25519_to_ed25519_sign1"])
        );
    }
}

#[test]
fn xeddsa_cases_reproduce() {
    let v = load("xeddsa.json");
    let cases = v["xeddsa_cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for c in cases {
        let k = PrivateKey::from_bytes(hex32(&c["priv"]));
        assert_eq!(k.public_key().0, hex32(&c["curve25519_pub"]));
        assert_eq!(
            xeddsa::ed25519_public(&k),
            hex32(&c["ed25519_pub_from_priv"])
        );
        let msg = hexv(&c["message"]);
        let z = hex64(&c["nonce_Z"]);
        let u = hex32(&c["curve25519_pub"]);
        assert_eq!(
            xeddsa::xeddsa_sign(&k, &msg, &z),
            hex64(&c["xeddsa_signature"])
        );
        assert_eq!(
            xeddsa::libsignal_sign(&k, &msg, &z),
            hex64(&c["libsignal_signature"])
        );
        xeddsa::xeddsa_verify(&u, &msg, &hex64(&c["xeddsa_signature"])).unwrap();
        xeddsa::xeddsa_verify(&u, &msg, &hex64(&c["xeddsa_signature_strict_spec_nonce"])).unwrap();
        xeddsa::libsignal_verify(&u, &msg, &hex64(&c["xeddsa_signature"])).unwrap();
        xeddsa::libsignal_verify(&u, &msg, &hex64(&c["libsignal_signature"])).unwrap();
        let strict_ok = xeddsa::xeddsa_verify(&u, &msg, &hex64(&c["libsignal_signature"])).is_ok();
        assert_eq!(
            strict_ok,
            c["libsignal_signature_valid_strict_xeddsa_verify"]
                .as_bool()
                .unwrap()
        );
        assert!(!c["tampered_valid"].as_bool().unwrap());
        assert!(
            xeddsa::libsignal_verify(&u, &msg, &hex64(&c["tampered_xeddsa_signature"])).is_err()
        );
        assert!(xeddsa::xeddsa_verify(&u, &msg, &hex64(&c["tampered_xeddsa_signature"])).is_err());
    }
}

#[test]
fn rfc8032_seed_cases_verify() {
    let v = load("xeddsa.json");
    for c in v["ed25519_seed_cases"].as_array().unwrap() {
        let k = PrivateKey::from_bytes(hex32(&c["priv_scalar_clamped"]));
        assert_eq!(xeddsa::ed25519_public(&k), hex32(&c["ed25519_pub"]));
        assert_eq!(k.public_key().0, hex32(&c["curve25519_pub"]));
        let msg = hexv(&c["message"]);
        xeddsa::ed25519_verify(
            &hex32(&c["ed25519_pub"]),
            &msg,
            &hex64(&c["rfc8032_signature"]),
        )
        .unwrap();
    }
}

#[test]
fn fingerprints_and_label_signature() {
    let v = load("misc.json");
    for c in v["fingerprints"].as_array().unwrap() {
        let id = IdentityKeyPair::from_private(PrivateKey::from_bytes(hex32(&c["priv"])));
        assert_eq!(id.ed25519(), &hex32(&c["ed25519_pub"]));
        assert_eq!(id.curve25519(), &hex32(&c["curve25519_pub"]));
        let groups: Vec<&str> = c["python_omemo_format_identity_key"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g.as_str().unwrap())
            .collect();
        assert_eq!(id.fingerprint(), groups.join(" "));
        assert_eq!(
            fingerprint(&ed25519_to_curve25519(id.ed25519()).unwrap()),
            groups.join(" ")
        );
    }
    let l = &v["label_signing"];
    let id = IdentityKeyPair::from_private(PrivateKey::from_bytes(hex32(&l["identity_priv"])));
    assert_eq!(id.ed25519(), &hex32(&l["identity_pub_ed25519"]));
    let sig = id.sign_twomemo(&hexv(&l["label_utf8"]), &hex64(&l["nonce"]));
    assert_eq!(sig, hex64(&l["labelsig"]));
    xeddsa::ed25519_verify(id.ed25519(), &hexv(&l["label_utf8"]), &sig).unwrap();
}

#[test]
fn session_identities_and_spk_signatures() {
    for (file, old) in [
        ("session_oldmemo.json", true),
        ("session_twomemo.json", false),
    ] {
        let v = load(file);
        for who in ["alice", "bob"] {
            let p = &v[who];
            let id =
                IdentityKeyPair::from_private(PrivateKey::from_bytes(hex32(&p["identity_priv"])));
            assert_eq!(id.curve25519(), &hex32(&p["identity_pub_curve25519"]));
            assert_eq!(id.ed25519(), &hex32(&p["identity_pub_ed25519"]));
            let spk = PrivateKey::from_bytes(hex32(&p["signed_pre_key_priv"]));
            assert_eq!(spk.public_key().0, hex32(&p["signed_pre_key_pub"]));
            let z = hex64(&p["signed_pre_key_signature_nonce"]);
            let want = hex64(&p["signed_pre_key_signature_raw"]);
            if old {
                let sig = id.sign_oldmemo(&spk.public_key().serialize_oldmemo(), &z);
                // The raw vector signature is the Ed25519 one before sign-bit stuffing.
                let mut raw = sig;
                raw[63] &= 0x7f;
                assert_eq!(raw, want, "{file} {who}");
                xeddsa::libsignal_verify(
                    id.curve25519(),
                    &spk.public_key().serialize_oldmemo(),
                    &sig,
                )
                .unwrap();
            } else {
                assert_eq!(
                    id.sign_twomemo(spk.public_key().as_bytes(), &z),
                    want,
                    "{file} {who}"
                );
            }
            for pk in p["pre_keys"].as_array().unwrap() {
                let k = PrivateKey::from_bytes(hex32(&pk["priv"]));
                assert_eq!(k.public_key().0, hex32(&pk["pub"]));
            }
        }
    }
}

#[test]
fn debug_output_has_no_secret() {
    let k = PrivateKey::from_bytes([7u8; 32]);
    let id = IdentityKeyPair::from_private(k.clone());
    assert_eq!(format!("{k:?}"), "PrivateKey(<redacted>)");
    let d = format!("{id:?}");
    assert!(!d.contains(&hex::encode(*k.to_bytes())));
    assert!(d.starts_with("IdentityKeyPair("));
}

#[test]
fn hostile_keys_rejected() {
    use protocol_core::keys::{KeyError, PublicKey};
    // Identity element / small order Edwards points.
    let mut ident = [0u8; 32];
    ident[0] = 1;
    assert!(ed25519_to_curve25519(&ident).is_err());
    // Non-canonical u (p itself) and top bit set.
    let mut p = [0xffu8; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    assert_eq!(curve25519_to_ed25519(&p, 0), Err(KeyError::InvalidPoint));
    let mut top = [0u8; 32];
    top[31] = 0x80;
    top[0] = 9;
    assert_eq!(curve25519_to_ed25519(&top, 0), Err(KeyError::InvalidPoint));
    // u = 0 and u = 1 are low order: DH with them yields zero → rejected.
    let k = PrivateKey::from_bytes([9u8; 32]);
    assert_eq!(
        k.diffie_hellman(&PublicKey([0u8; 32])).unwrap_err(),
        KeyError::LowOrderPoint
    );
    let mut one = [0u8; 32];
    one[0] = 1;
    assert_eq!(
        k.diffie_hellman(&PublicKey(one)).unwrap_err(),
        KeyError::LowOrderPoint
    );
    // 0.3 key parsing.
    assert!(PublicKey::parse_oldmemo(&[5u8; 32]).is_err());
    assert_eq!(
        PublicKey::parse_oldmemo(&[6u8; 33]),
        Err(KeyError::WrongType(6))
    );
    assert!(PublicKey::parse_oldmemo(&[]).is_err());
    // Signature with high bits in s.
    let u = k.public_key().0;
    let mut sig = xeddsa::libsignal_sign(&k, b"m", &[1u8; 64]);
    xeddsa::libsignal_verify(&u, b"m", &sig).unwrap();
    sig[63] |= 0x20;
    assert_eq!(
        xeddsa::libsignal_verify(&u, b"m", &sig),
        Err(KeyError::InvalidSignature)
    );
    // Wrong message.
    let sig = xeddsa::libsignal_sign(&k, b"m", &[1u8; 64]);
    assert!(xeddsa::libsignal_verify(&u, b"n", &sig).is_err());
}
