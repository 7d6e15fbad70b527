//! Hostile input to sessions and bundles: each gets its typed error and changes nothing.

use protocol_core::bundle::{Bundle, BundleError, PreKeyPublic, VerifiedBundle};
use protocol_core::double_ratchet::RatchetError;
use protocol_core::keys::identity::SignedPreKey;
use protocol_core::keys::{IdentityKeyPair, KeyError, KeyPair};
use protocol_core::session::{KeyExchange, Session, SessionError};
use protocol_core::wire::{oldmemo, twomemo};
use protocol_core::x3dh::X3dhError;
use protocol_core::Version;
use rand::rngs::StdRng;
use rand::SeedableRng;

struct Pair {
    alice: Session,
    bob: Session,
    bundle: Bundle,
    rng: StdRng,
}

fn bundle_for(version: Version, id: &IdentityKeyPair, spk: &SignedPreKey, opk: &KeyPair) -> Bundle {
    Bundle::from_keys(
        version,
        id,
        spk,
        vec![PreKeyPublic {
            id: 3,
            key: opk.public.0,
        }],
    )
}

fn pair(version: Version) -> Pair {
    let mut rng = StdRng::seed_from_u64(7);
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let bob_id = IdentityKeyPair::generate(&mut rng);
    let spk = SignedPreKey::generate(1, &bob_id, &mut rng);
    let opk = KeyPair::generate(&mut rng);
    let bundle = bundle_for(version, &bob_id, &spk, &opk);
    let mut alice = Session::initiate(&alice_id, &bundle, 3, &mut rng).unwrap();
    let first = alice.encrypt(b"hello key material 32 bytes long").unwrap();
    let kex = KeyExchange::parse(version, &first.data).unwrap();
    let (bob, _) = Session::respond(&bob_id, &kex, &spk.key_pair, &opk.private, &mut rng).unwrap();
    Pair {
        alice,
        bob,
        bundle,
        rng,
    }
}

fn both() -> [Version; 2] {
    [Version::Oldmemo, Version::Twomemo]
}

#[test]
fn wrong_mac_is_rejected_and_changes_nothing() {
    for v in both() {
        let mut p = pair(v);
        let mut msg = p.alice.encrypt(&[1; 32]).unwrap().data;
        // The key exchange wrapper is still on (alice is unconfirmed): strip it.
        if v == Version::Oldmemo {
            msg = oldmemo::PreKeySignalMessage::parse(&msg).unwrap().message;
        } else {
            msg = twomemo::OMEMOKeyExchange::parse(&msg)
                .unwrap()
                .message
                .encode();
        }
        let before = p.bob.to_bytes(true);
        let mut bad = msg.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        let err = p.bob.decrypt(&bad, &mut p.rng).unwrap_err();
        assert!(
            matches!(err, SessionError::AuthenticationFailed),
            "{v}: {err}"
        );
        assert_eq!(p.bob.to_bytes(true), before);
        // The intact message still decrypts afterwards, once.
        assert_eq!(*p.bob.decrypt(&msg, &mut p.rng).unwrap().plaintext, [1; 32]);
        let err = p.bob.decrypt(&msg, &mut p.rng).unwrap_err();
        assert!(
            matches!(
                err,
                SessionError::Ratchet(RatchetError::DuplicateMessage(1))
            ),
            "{v}: {err}"
        );
    }
}

#[test]
fn too_many_skipped_is_rejected() {
    for v in both() {
        let mut p = pair(v);
        // Confirm alice so she sends plain messages.
        let reply = p.bob.encrypt(&[2; 32]).unwrap();
        p.alice.decrypt(&reply.data, &mut p.rng).unwrap();
        let mut last = None;
        for _ in 0..(protocol_core::consts::MAX_SKIP + 2) {
            last = Some(p.alice.encrypt(&[3; 32]).unwrap().data);
        }
        let before = p.bob.to_bytes(true);
        let err = p.bob.decrypt(&last.unwrap(), &mut p.rng).unwrap_err();
        assert!(
            matches!(err, SessionError::Ratchet(RatchetError::TooManySkipped(_))),
            "{v}: {err}"
        );
        assert_eq!(p.bob.to_bytes(true), before);
    }
}

#[test]
fn skipped_keys_are_bounded_per_session() {
    let mut p = pair(Version::Twomemo);
    let reply = p.bob.encrypt(&[2; 32]).unwrap();
    p.alice.decrypt(&reply.data, &mut p.rng).unwrap();
    let mut msgs = Vec::new();
    for _ in 0..900 {
        msgs.push(p.alice.encrypt(&[3; 32]).unwrap().data);
    }
    p.bob.decrypt(msgs.last().unwrap(), &mut p.rng).unwrap();
    // Turn the ratchet and skip another 900: the store stays at its bound, oldest dropped.
    let r = p.bob.encrypt(&[4; 32]).unwrap();
    p.alice.decrypt(&r.data, &mut p.rng).unwrap();
    let mut msgs2 = Vec::new();
    for _ in 0..900 {
        msgs2.push(p.alice.encrypt(&[5; 32]).unwrap().data);
    }
    let d = p.bob.decrypt(msgs2.last().unwrap(), &mut p.rng).unwrap();
    assert_eq!(
        p.bob.skipped_key_count(),
        protocol_core::consts::MAX_SKIPPED_KEYS_PER_SESSION
    );
    assert!(!d.skipped.evicted.is_empty());
    // The newest skipped ones still decrypt; the oldest were evicted.
    assert!(p.bob.decrypt(&msgs2[0], &mut p.rng).is_ok());
    assert!(p.bob.decrypt(&msgs[0], &mut p.rng).is_err());
}

#[test]
fn low_order_and_noncanonical_ratchet_keys_are_rejected() {
    for v in both() {
        let mut p = pair(v);
        let before = p.bob.to_bytes(true);
        for key in [
            [0u8; 32],
            {
                let mut k = [0u8; 32];
                k[0] = 1;
                k
            },
            [0xff; 32],
        ] {
            let msg = match v {
                Version::Oldmemo => {
                    let mut m = oldmemo::SignalMessage {
                        ratchet_key: key,
                        counter: 0,
                        previous_counter: 0,
                        ciphertext: vec![0; 48],
                    }
                    .encode();
                    m.extend_from_slice(&[0; 8]);
                    m
                }
                Version::Twomemo => twomemo::OMEMOAuthenticatedMessage {
                    mac: [0; 16],
                    message: twomemo::OMEMOMessage {
                        n: 0,
                        pn: 0,
                        dh_pub: key,
                        ciphertext: vec![0; 48],
                    }
                    .encode(),
                }
                .encode(),
            };
            let err = p.bob.decrypt(&msg, &mut p.rng).unwrap_err();
            assert!(
                matches!(
                    err,
                    SessionError::Ratchet(RatchetError::InvalidKey(KeyError::LowOrderPoint))
                        | SessionError::InvalidKey(KeyError::InvalidPoint)
                ),
                "{v}: {err}"
            );
        }
        assert_eq!(p.bob.to_bytes(true), before);
    }
}

#[test]
fn malformed_bytes_are_rejected() {
    for v in both() {
        let mut p = pair(v);
        let good = p.bob.encrypt(&[9; 32]).unwrap().data;
        let before = p.alice.to_bytes(true);
        for len in 0..good.len() {
            assert!(
                p.alice.decrypt(&good[..len], &mut p.rng).is_err(),
                "{v}: truncated to {len}"
            );
            assert!(KeyExchange::parse(v, &good[..len]).is_err());
        }
        assert!(matches!(
            p.alice.decrypt(&[0xaa; 5000], &mut p.rng),
            Err(SessionError::Malformed(_))
        ));
        assert_eq!(p.alice.to_bytes(true), before);
        assert_eq!(
            *p.alice.decrypt(&good, &mut p.rng).unwrap().plaintext,
            [9; 32]
        );
    }
}

#[test]
fn bad_bundles_are_refused() {
    for v in both() {
        let p = pair(v);
        let mut rng = StdRng::seed_from_u64(1);
        let me = IdentityKeyPair::generate(&mut rng);
        let mut b = p.bundle.clone();
        b.signed_prekey_signature[5] ^= 1;
        assert_eq!(b.verify(), Err(BundleError::InvalidSignature));
        assert!(matches!(
            Session::initiate(&me, &b, 3, &mut rng),
            Err(SessionError::X3dh(X3dhError::InvalidBundle(
                BundleError::InvalidSignature
            )))
        ));
        let mut b = p.bundle.clone();
        b.signed_prekey[0] ^= 1; // signature no longer matches
        assert_eq!(b.verify(), Err(BundleError::InvalidSignature));
        let mut b = p.bundle.clone();
        b.prekeys.clear();
        assert_eq!(b.verify(), Err(BundleError::NoPreKeys));
        let mut b = p.bundle.clone();
        b.prekeys.push(b.prekeys[0].clone());
        assert_eq!(b.verify(), Err(BundleError::DuplicatePreKeyId(3)));
        let mut b = p.bundle.clone();
        b.prekeys[0].id = 0;
        assert!(matches!(b.verify(), Err(BundleError::IdOutOfRange(..))));
        let mut b = p.bundle.clone();
        b.prekeys[0].key = [0; 32]; // low order: the bundle is refused before any DH
        assert_eq!(b.verify(), Err(BundleError::InvalidKey("one-time prekey")));
        assert!(matches!(
            Session::initiate(&me, &b, 3, &mut rng),
            Err(SessionError::X3dh(X3dhError::InvalidBundle(
                BundleError::InvalidKey("one-time prekey")
            )))
        ));
        assert!(matches!(
            Session::initiate(&me, &p.bundle, 99, &mut rng),
            Err(SessionError::X3dh(X3dhError::UnknownPreKey(99)))
        ));
    }
}

#[test]
fn key_exchange_with_wrong_keys_builds_nothing() {
    for v in both() {
        let mut rng = StdRng::seed_from_u64(3);
        let alice_id = IdentityKeyPair::generate(&mut rng);
        let bob_id = IdentityKeyPair::generate(&mut rng);
        let spk = SignedPreKey::generate(1, &bob_id, &mut rng);
        let opk = KeyPair::generate(&mut rng);
        let other = KeyPair::generate(&mut rng);
        let bundle = bundle_for(v, &bob_id, &spk, &opk);
        let mut alice = Session::initiate(&alice_id, &bundle, 3, &mut rng).unwrap();
        let kex = KeyExchange::parse(v, &alice.encrypt(&[1; 32]).unwrap().data).unwrap();
        // The wrong one-time prekey gives another secret: the MAC fails, no session.
        assert!(matches!(
            Session::respond(&bob_id, &kex, &spk.key_pair, &other.private, &mut rng),
            Err(SessionError::AuthenticationFailed)
        ));
        assert!(Session::respond(&bob_id, &kex, &spk.key_pair, &opk.private, &mut rng).is_ok());
    }
}

#[test]
fn debug_output_never_shows_secrets() {
    for v in both() {
        let p = pair(v);
        let snap = p.bob.snapshot(true);
        let secrets = [
            snap.root_key.clone(),
            snap.own_ratchet_private.clone(),
            snap.sending_chain_key.clone().unwrap_or_default(),
        ];
        let dbg = format!("{:?} {:?} {:?}", p.bob, p.alice, snap);
        for s in secrets.iter().filter(|s| !s.is_empty()) {
            assert!(!dbg.contains(&hex::encode(s)), "hex secret in Debug");
            let decimal = format!("{:?}", s);
            assert!(
                !dbg.contains(&decimal[1..decimal.len() - 1]),
                "byte list secret in Debug"
            );
        }
        assert!(dbg.contains("redacted"));
    }
}

#[test]
fn a_verified_bundle_is_made_only_by_verifying_and_starts_the_same_session() {
    for v in both() {
        let p = pair(v);
        let mut b = p.bundle.clone();
        b.signed_prekey_signature[5] ^= 1;
        assert_eq!(
            VerifiedBundle::verify(b),
            Err(BundleError::InvalidSignature)
        );
        let mut b = p.bundle.clone();
        b.prekeys[0].key = [0; 32];
        assert!(VerifiedBundle::verify(b).is_err());

        let verified = VerifiedBundle::verify(p.bundle.clone()).unwrap();
        let me = IdentityKeyPair::generate(&mut StdRng::seed_from_u64(2));
        let mut plain =
            Session::initiate(&me, &p.bundle, 3, &mut StdRng::seed_from_u64(5)).unwrap();
        let mut fast =
            Session::initiate_verified(&me, &verified, 3, &mut StdRng::seed_from_u64(5)).unwrap();
        assert_eq!(plain.remote_curve25519(), fast.remote_curve25519());
        assert_eq!(plain.remote_identity(), fast.remote_identity());
        assert_eq!(
            plain.encrypt(&[9; 32]).unwrap(),
            fast.encrypt(&[9; 32]).unwrap()
        );
        // Taking a prekey out keeps the rest verified; the last one leaves none to use.
        let rest = verified.without_prekey(3);
        assert!(rest.bundle().prekeys.is_empty());
        assert_eq!(rest.identity_curve25519(), verified.identity_curve25519());
        assert!(matches!(
            Session::initiate_verified(&me, &rest, 3, &mut StdRng::seed_from_u64(5)),
            Err(SessionError::X3dh(X3dhError::UnknownPreKey(3)))
        ));
    }
}
