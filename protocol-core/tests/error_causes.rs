//! Every operation family's error says whom it is due to: real failures, one per cause.

use protocol_core::bundle::{Bundle, PreKeyPublic};
use protocol_core::double_ratchet::DoubleRatchet;
use protocol_core::error::ErrorCause;
use protocol_core::keys::identity::SignedPreKey;
use protocol_core::keys::{IdentityKeyPair, KeyPair, PublicKey};
use protocol_core::session::{KeyExchange, Session, SessionRecord};
use protocol_core::xml::Encrypted;
use protocol_core::{payload, sce, Version};
use rand::rngs::StdRng;
use rand::SeedableRng;

struct Peers {
    alice: Session,
    bob: Session,
    bundle: Bundle,
    alice_id: IdentityKeyPair,
    rng: StdRng,
}

fn peers(version: Version) -> Peers {
    let mut rng = StdRng::seed_from_u64(18);
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let bob_id = IdentityKeyPair::generate(&mut rng);
    let spk = SignedPreKey::generate(1, &bob_id, &mut rng);
    let opk = KeyPair::generate(&mut rng);
    let prekeys = vec![PreKeyPublic {
        id: 3,
        key: opk.public.0,
    }];
    let bundle = Bundle::from_keys(version, &bob_id, &spk, prekeys);
    let mut alice = Session::initiate(&alice_id, &bundle, 3, &mut rng).unwrap();
    let first = alice.encrypt(&[1; 32]).unwrap().data;
    let kex = KeyExchange::parse(version, &first).unwrap();
    let (mut bob, _) =
        Session::respond(&bob_id, &kex, &spk.key_pair, &opk.private, &mut rng).unwrap();
    let answer = bob.encrypt(&[2; 32]).unwrap().data;
    alice.decrypt(&answer, &mut rng).unwrap();
    Peers {
        alice,
        bob,
        bundle,
        alice_id,
        rng,
    }
}

#[test]
fn the_peer_misbehaved() {
    for v in [Version::Oldmemo, Version::Twomemo] {
        let mut p = peers(v);
        let msg = p.alice.encrypt(&[3; 32]).unwrap().data;
        let mut forged = msg.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let e = p.bob.decrypt(&forged, &mut p.rng).unwrap_err();
        assert_eq!(e.cause(), ErrorCause::PeerMisbehaved, "bad MAC: {e}");

        p.bob.decrypt(&msg, &mut p.rng).unwrap();
        let e = p.bob.decrypt(&msg, &mut p.rng).unwrap_err();
        assert_eq!(e.cause(), ErrorCause::PeerMisbehaved, "replay: {e}");

        let e = p.bob.decrypt(&msg[..3], &mut p.rng).unwrap_err();
        assert_eq!(e.cause(), ErrorCause::PeerMisbehaved, "truncated: {e}");

        let mut bundle = p.bundle.clone();
        bundle.signed_prekey_signature[0] ^= 1;
        let e = bundle.verify().unwrap_err();
        assert_eq!(e.cause(), ErrorCause::PeerMisbehaved, "bad signature: {e}");
        let e = Session::initiate(&p.alice_id, &bundle, 3, &mut p.rng).unwrap_err();
        assert_eq!(e.cause(), ErrorCause::PeerMisbehaved, "{e}");

        let e = PublicKey::parse_oldmemo(&[6; 33]).unwrap_err();
        assert_eq!(e.cause(), ErrorCause::PeerMisbehaved, "{e}");
    }
    let sealed = payload::twomemo::encrypt(b"body", &mut StdRng::seed_from_u64(1));
    let mut ciphertext = sealed.ciphertext.clone();
    ciphertext[0] ^= 1;
    let e = payload::twomemo::decrypt(&sealed.key_material[..], &ciphertext).unwrap_err();
    assert_eq!(e.cause(), ErrorCause::PeerMisbehaved, "payload: {e}");

    let e = Encrypted::from_xml("<encrypted xmlns='urn:xmpp:omemo:2'><header").unwrap_err();
    assert_eq!(e.cause(), ErrorCause::PeerMisbehaved, "{e}");
    let e = sce::parse_envelope("<envelope xmlns='urn:xmpp:sce:1'/>").unwrap_err();
    assert_eq!(e.cause(), ErrorCause::PeerMisbehaved, "{e}");
}

#[test]
fn the_peer_is_incompatible() {
    let mut p = peers(Version::Oldmemo);
    let mut msg = p.alice.encrypt(&[3; 32]).unwrap().data;
    msg[0] = 0x44; // libsignal's version byte of a later wire format
    let e = p.bob.decrypt(&msg, &mut p.rng).unwrap_err();
    assert_eq!(e.cause(), ErrorCause::Incompatible, "{e}");

    let e =
        sce::parse_envelope("<envelope xmlns='urn:xmpp:sce:0'><content/></envelope>").unwrap_err();
    assert_eq!(e.cause(), ErrorCause::Incompatible, "{e}");
    let e = Encrypted::from_xml("<encrypted xmlns='urn:xmpp:omemo:1'/>").unwrap_err();
    assert_eq!(e.cause(), ErrorCause::Incompatible, "{e}");
}

#[test]
fn our_state_is_missing() {
    let mut p = peers(Version::Twomemo);
    let e = Session::initiate(&p.alice_id, &p.bundle, 99, &mut p.rng).unwrap_err();
    assert_eq!(e.cause(), ErrorCause::LocalState, "no such prekey: {e}");

    let own = KeyPair::generate(&mut p.rng);
    let mut responder = DoubleRatchet::respond(Version::Twomemo, &[7; 32], own);
    let e = responder.encrypt().unwrap_err();
    assert_eq!(
        e.cause(),
        ErrorCause::LocalState,
        "nothing received yet: {e}"
    );

    let msg = p.alice.encrypt(&[3; 32]).unwrap().data;
    let e = SessionRecord::new(None)
        .decrypt(&msg, &mut p.rng)
        .unwrap_err();
    assert_eq!(e.cause(), ErrorCause::LocalState, "no session: {e}");

    let e = Session::from_bytes(b"\xff\xff", Vec::new()).unwrap_err();
    assert_eq!(
        e.cause(),
        ErrorCause::LocalState,
        "unreadable snapshot: {e}"
    );
    let e = IdentityKeyPair::from_snapshot(b"\x08\x09").unwrap_err();
    assert_eq!(
        e.cause(),
        ErrorCause::LocalState,
        "snapshot from a newer release: {e}"
    );
}
