//! Storage forms load back to the same state, and refuse what they cannot understand.

use protocol_core::keys::identity::SignedPreKey;
use protocol_core::keys::snapshot::{prekey_from_snapshot, prekey_to_snapshot};
use protocol_core::keys::{IdentityKeyPair, KeyPair};
use protocol_core::session::{Session, SnapshotError};
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
