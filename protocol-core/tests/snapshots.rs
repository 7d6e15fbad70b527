//! Storage forms load back to the same state, and refuse what they cannot understand.

use protocol_core::keys::identity::SignedPreKey;
use protocol_core::keys::snapshot::{prekey_from_snapshot, prekey_to_snapshot};
use protocol_core::keys::{IdentityKeyPair, KeyPair};
use protocol_core::session::{KeyExchange, Session, SnapshotError};
use rand::rngs::StdRng;
use rand::SeedableRng;

#[test]
fn key_snapshots_round_trip() {
    let mut rng = StdRng::seed_from_u64(9);
    let id = IdentityKeyPair::generate(&mut rng);
    let back = IdentityKeyPair::from_snapshot(&id.to_snapshot()).unwrap();
    assert_eq!(back.ed25519(), id.ed25519());
    assert_eq!(back.curve25519(), id.curve25519());
    let spk = SignedPreKey::generate(4, &id, &mut rng);
    let back = SignedPreKey::from_snapshot(&spk.to_snapshot()).unwrap();
    assert_eq!(back.id, 4);
    assert_eq!(back.key_pair.public, spk.key_pair.public);
    assert_eq!(back.signature_oldmemo, spk.signature_oldmemo);
    assert_eq!(back.signature_twomemo, spk.signature_twomemo);
    let pk = KeyPair::generate(&mut rng);
    let (i, back) = prekey_from_snapshot(&prekey_to_snapshot(17, &pk)).unwrap();
    assert_eq!((i, back.public), (17, pk.public));
}

#[test]
fn bad_snapshots_are_refused() {
    let mut rng = StdRng::seed_from_u64(10);
    let id = IdentityKeyPair::generate(&mut rng);
    let good = id.to_snapshot();
    // Garbage, a future format, a truncated key.
    assert_eq!(
        IdentityKeyPair::from_snapshot(&[0xff; 7]).err(),
        Some(SnapshotError::Decode)
    );
    let mut future = good.to_vec();
    future[1] = 9; // field 1 (format) = 9
    assert_eq!(
        IdentityKeyPair::from_snapshot(&future).err(),
        Some(SnapshotError::UnknownFormat(9))
    );
    let short = [0x08, 0x01, 0x12, 0x03, 1, 2, 3];
    assert_eq!(
        IdentityKeyPair::from_snapshot(&short).err(),
        Some(SnapshotError::Invalid("private_key"))
    );
    assert!(Session::from_bytes(&[0x08, 0x05], Vec::new()).is_err());
    assert!(Session::from_bytes(&[0x08, 0x01, 0x10, 0x07], Vec::new()).is_err());
    assert!(Session::from_bytes(b"\x00\x01garbage", Vec::new()).is_err());
}

/// Snapshots written before earlier receiving chains were kept (fields 20 and 21 absent; made by
/// commit 360fdbd's code, see the fixture) still load and carry on: the late messages held back
/// then decrypt, replays are refused without changing anything, and both sides keep talking.
#[test]
fn snapshot_from_before_previous_chains_were_kept_still_loads() {
    use protocol_core::double_ratchet::RatchetError;
    use protocol_core::session::{KeyExchange, SessionError};
    use protocol_core::Version;

    let fixture: serde_json::Value = serde_json::from_str(include_str!(
        "fixtures/session_snapshots_before_previous_chains.json"
    ))
    .unwrap();
    let mut rng = StdRng::seed_from_u64(13);
    for (name, v) in [("oldmemo", Version::Oldmemo), ("twomemo", Version::Twomemo)] {
        let f = &fixture[name];
        let bytes = |k: &str| hex::decode(f[k].as_str().unwrap()).unwrap();
        let mut alice = Session::from_bytes(&bytes("alice"), Vec::new()).unwrap();
        let mut bob = Session::from_bytes(&bytes("bob"), Vec::new()).unwrap();
        assert_eq!(bob.skipped_key_count(), 2, "{name}: a1 and c0 were skipped");

        // A replay from the earlier chain: no chain state was kept for it then, so it cannot be
        // called a duplicate with certainty; it is refused and changes nothing.
        let before = bob.to_bytes(true);
        let replay = KeyExchange::parse(v, &bytes("replay_a0_kex")).unwrap();
        let err = bob.decrypt_key_exchange(&replay, &mut rng).unwrap_err();
        assert!(
            matches!(
                err,
                SessionError::Ratchet(RatchetError::MessageKeyDropped(0))
            ),
            "{name}: {err}"
        );
        assert_eq!(
            bob.to_bytes(true),
            before,
            "{name}: a refused replay changed the session"
        );

        // The held-back messages decrypt from the stored skipped keys.
        let late = KeyExchange::parse(v, &bytes("late_a1_kex")).unwrap();
        let d = bob.decrypt_key_exchange(&late, &mut rng).unwrap();
        assert_eq!(&d.plaintext[..], &[1u8; 32], "{name}");
        let d = bob.decrypt(&bytes("late_c0"), &mut rng).unwrap();
        assert_eq!(&d.plaintext[..], &[20u8; 32], "{name}");
        assert!(matches!(
            bob.decrypt(&bytes("replay_c1"), &mut rng).unwrap_err(),
            SessionError::Ratchet(RatchetError::DuplicateMessage(1))
        ));

        // The conversation carries on with ratchet turns, and the new state round-trips.
        for i in 0..4u8 {
            let m = bob.encrypt(&[30 + i; 32]).unwrap();
            assert_eq!(
                &alice.decrypt(&m.data, &mut rng).unwrap().plaintext[..],
                &[30 + i; 32]
            );
            let m = alice.encrypt(&[40 + i; 32]).unwrap();
            assert_eq!(
                &bob.decrypt(&m.data, &mut rng).unwrap().plaintext[..],
                &[40 + i; 32]
            );
        }
        let again = Session::from_bytes(&bob.to_bytes(true), Vec::new()).unwrap();
        assert_eq!(again.to_bytes(true), bob.to_bytes(true), "{name}");
    }
}

/// `Session::to_bytes` writes the snapshot directly; it must equal prost's encoding of
/// `Session::snapshot` in every state, including multi-byte indexes, earlier chains and
/// skipped keys, and load back to the same session.
#[test]
fn direct_snapshot_encoding_equals_prost() {
    use prost::Message;
    use protocol_core::bundle::{Bundle, PreKeyPublic};
    use protocol_core::Version;

    let same = |s: &Session, what: &str| {
        for skipped in [false, true] {
            let direct = s.to_bytes(skipped);
            assert_eq!(
                &direct[..],
                &s.snapshot(skipped).encode_to_vec()[..],
                "{what}, skipped keys included: {skipped}"
            );
        }
        let again = Session::from_bytes(&s.to_bytes(true), Vec::new()).unwrap();
        assert_eq!(again.to_bytes(true), s.to_bytes(true), "{what}");
    };
    for version in [Version::Oldmemo, Version::Twomemo] {
        let mut rng = StdRng::seed_from_u64(21);
        let alice_id = IdentityKeyPair::generate(&mut rng);
        let bob_id = IdentityKeyPair::generate(&mut rng);
        let spk = SignedPreKey::generate(300, &bob_id, &mut rng);
        let opk = KeyPair::generate(&mut rng);
        let bundle = Bundle::from_keys(
            version,
            &bob_id,
            &spk,
            vec![PreKeyPublic {
                id: 70_000,
                key: opk.public.0,
            }],
        );
        let mut alice = Session::initiate(&alice_id, &bundle, 70_000, &mut rng).unwrap();
        same(&alice, "fresh initiator");
        let first = alice.encrypt(&[1; 32]).unwrap();
        let kex = KeyExchange::parse(version, &first.data).unwrap();
        let (mut bob, _) =
            Session::respond(&bob_id, &kex, &spk.key_pair, &opk.private, &mut rng).unwrap();
        same(&bob, "fresh responder");
        // Indexes of one, two and three varint bytes, with skipped keys from each turn.
        let mut held = Vec::new();
        for (turn, count) in [(0u8, 3usize), (1, 200), (2, 17_000)] {
            let (from, to) = if turn % 2 == 0 {
                (&mut bob, &mut alice)
            } else {
                (&mut alice, &mut bob)
            };
            for i in 0..count {
                let m = from.encrypt(&[turn; 32]).unwrap();
                // Keep the first one back: the receiver stores its key as skipped. Deliver
                // the next few hundred (within the skip limit), drop the rest.
                if i == 0 {
                    held.push(m);
                } else if i <= 300 {
                    to.decrypt(&m.data, &mut rng).unwrap();
                }
            }
        }
        same(&alice, "initiator after three turns");
        same(&bob, "responder after three turns");
        assert!(alice.skipped_key_count() + bob.skipped_key_count() > 0);

        // A prepared encryption changes nothing until committed, is what `encrypt` would
        // have sent, and `to_bytes_after` is the state after its commit.
        let before = alice.to_bytes(true);
        let mut twin = alice.clone();
        let (key, pending) = alice.prepare_encrypt(&[9; 32]).unwrap();
        assert_eq!(alice.to_bytes(true), before);
        assert_eq!(twin.encrypt(&[9; 32]).unwrap(), key);
        let after = alice.to_bytes_after(&pending, true);
        assert_eq!(after, twin.to_bytes(true));
        assert!(alice.commit_encrypt(pending));
        assert_eq!(alice.to_bytes(true), after);
        let d = bob.decrypt(&key.data, &mut rng).unwrap();
        assert_eq!(&d.plaintext[..], &[9; 32]);
        // One prepared before another encryption is stale: refused, nothing changes.
        let (_, stale) = alice.prepare_encrypt(&[1; 32]).unwrap();
        alice.encrypt(&[2; 32]).unwrap();
        let now = alice.to_bytes(true);
        assert!(!alice.commit_encrypt(stale));
        assert_eq!(alice.to_bytes(true), now);
    }
}
