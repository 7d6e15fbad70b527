//! Random conversations in both versions with reordering, drops, duplicates and corrupted
//! copies: every delivered message decrypts exactly once, and every failure leaves the
//! receiving session byte-for-byte unchanged.

use proptest::prelude::*;
use prost::Message;
use protocol_core::bundle::{Bundle, PreKeyPublic};
use protocol_core::keys::identity::SignedPreKey;
use protocol_core::keys::{IdentityKeyPair, KeyPair};
use protocol_core::session::{EncryptedKey, KeyExchange, Session};
use protocol_core::Version;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

struct Wire {
    from_alice: bool,
    plaintext: Vec<u8>,
    key: EncryptedKey,
    delivered: bool,
}

fn snapshot(s: &Option<Session>) -> Option<Vec<u8>> {
    s.as_ref().map(|s| {
        // The direct encoder writes exactly what prost writes for the snapshot message.
        for skipped in [false, true] {
            assert_eq!(
                &s.to_bytes(skipped)[..],
                &s.snapshot(skipped).encode_to_vec()[..]
            );
        }
        s.to_bytes(true).to_vec()
    })
}

fn conversation(version: Version, seed: u64, ops: Vec<(u8, u16)>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let bob_id = IdentityKeyPair::generate(&mut rng);
    let spk = SignedPreKey::generate(1, &bob_id, &mut rng);
    let opk = KeyPair::generate(&mut rng);
    let bundle = Bundle::from_keys(
        version,
        &bob_id,
        &spk,
        vec![PreKeyPublic {
            id: 7,
            key: opk.public.0,
        }],
    );
    let mut alice = Some(Session::initiate(&alice_id, &bundle, 7, &mut rng).unwrap());
    let mut bob: Option<Session> = None;
    let mut wire: Vec<Wire> = Vec::new();
    let mut counter = 0u32;

    for (op, idx) in ops {
        match op % 4 {
            // Send from alice (always possible) or bob (once he has a session).
            0 | 1 => {
                let from_alice = op % 4 == 0 || bob.is_none();
                let s = if from_alice {
                    alice.as_mut()
                } else {
                    bob.as_mut()
                }
                .unwrap();
                counter += 1;
                let plaintext = counter.to_be_bytes().repeat(8);
                let key = s.encrypt(&plaintext).unwrap();
                wire.push(Wire {
                    from_alice,
                    plaintext,
                    key,
                    delivered: false,
                });
            }
            // Deliver (possibly again) a message, or a corrupted copy of it.
            2 | 3 => {
                if wire.is_empty() {
                    continue;
                }
                let i = idx as usize % wire.len();
                let corrupt = op % 4 == 3;
                let w = &wire[i];
                let mut data = w.key.data.clone();
                if corrupt {
                    let at = rng.gen_range(0..data.len());
                    data[at] ^= 1 << rng.gen_range(0..8);
                }
                let receiver = if w.from_alice { &mut bob } else { &mut alice };
                let before = snapshot(receiver);
                let result = if w.key.kex {
                    match KeyExchange::parse(version, &data) {
                        Err(e) => Err(e),
                        Ok(kex) => match receiver.as_mut() {
                            Some(s) if s.matches_key_exchange(&kex) => {
                                s.decrypt_key_exchange(&kex, &mut rng)
                            }
                            // A different key exchange (only a corrupted one here) would
                            // replace the session if, and only if, it authenticates.
                            _ if kex.info.pre_key_id != 7 || kex.info.signed_pre_key_id != 1 => {
                                Err(protocol_core::session::SessionError::MissingPreKey)
                            }
                            _ => Session::respond(
                                &bob_id,
                                &kex,
                                &spk.key_pair,
                                &opk.private,
                                &mut rng,
                            )
                            .map(|(s, d)| {
                                *receiver = Some(s);
                                d
                            }),
                        },
                    }
                } else {
                    match receiver.as_mut() {
                        Some(s) => s.decrypt(&data, &mut rng),
                        None => continue,
                    }
                };
                let first = !wire[i].delivered;
                match result {
                    Ok(d) => {
                        assert!(first, "a message decrypted twice");
                        assert!(
                            !corrupt || data == wire[i].key.data,
                            "a corrupted message decrypted"
                        );
                        assert_eq!(*d.plaintext, wire[i].plaintext);
                        wire[i].delivered = true;
                    }
                    Err(e) => {
                        assert!(!first || corrupt, "a fresh intact message failed: {e}");
                        let receiver = if wire[i].from_alice { &bob } else { &alice };
                        assert_eq!(snapshot(receiver), before, "a failure changed the session");
                    }
                }
            }
            _ => unreachable!(),
        }
    }
    // Finally deliver everything left, in order: all must decrypt exactly once.
    for w in wire.iter_mut() {
        if w.delivered {
            continue;
        }
        let receiver = if w.from_alice { &mut bob } else { &mut alice };
        let d = if w.key.kex {
            let kex = KeyExchange::parse(version, &w.key.data).unwrap();
            match receiver.as_mut() {
                Some(s) => s.decrypt_key_exchange(&kex, &mut rng).unwrap(),
                None => {
                    let (s, d) =
                        Session::respond(&bob_id, &kex, &spk.key_pair, &opk.private, &mut rng)
                            .unwrap();
                    *receiver = Some(s);
                    d
                }
            }
        } else {
            receiver
                .as_mut()
                .unwrap()
                .decrypt(&w.key.data, &mut rng)
                .unwrap()
        };
        assert_eq!(*d.plaintext, w.plaintext);
        w.delivered = true;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn oldmemo_conversations(seed in any::<u64>(), ops in proptest::collection::vec((any::<u8>(), any::<u16>()), 1..120)) {
        conversation(Version::Oldmemo, seed, ops);
    }

    #[test]
    fn twomemo_conversations(seed in any::<u64>(), ops in proptest::collection::vec((any::<u8>(), any::<u16>()), 1..120)) {
        conversation(Version::Twomemo, seed, ops);
    }
}
