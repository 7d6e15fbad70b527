//! In-process cost of the protocol operations, next to the primitives they are built from.
//! Run: `cargo bench -p protocol-core --bench protocol`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use protocol_core::bundle::{Bundle, PreKeyPublic};
use protocol_core::keys::identity::SignedPreKey;
use protocol_core::keys::{xeddsa, IdentityKeyPair, KeyPair};
use protocol_core::session::{KeyExchange, Session};
use protocol_core::{x3dh, Version};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::hint::black_box;

struct Setup {
    alice_id: IdentityKeyPair,
    bob_id: IdentityKeyPair,
    spk: SignedPreKey,
    opk: KeyPair,
    bundle: Bundle,
}

fn setup(version: Version, rng: &mut StdRng) -> Setup {
    let alice_id = IdentityKeyPair::generate(rng);
    let bob_id = IdentityKeyPair::generate(rng);
    let spk = SignedPreKey::generate(1, &bob_id, rng);
    let opk = KeyPair::generate(rng);
    let bundle = Bundle::from_keys(
        version,
        &bob_id,
        &spk,
        vec![PreKeyPublic {
            id: 1,
            key: opk.public.0,
        }],
    );
    Setup {
        alice_id,
        bob_id,
        spk,
        opk,
        bundle,
    }
}

/// An established, confirmed pair of sessions.
fn established(s: &Setup, rng: &mut StdRng) -> (Session, Session) {
    let mut a = Session::initiate(&s.alice_id, &s.bundle, 1, rng).unwrap();
    let kex = KeyExchange::parse(s.bundle.version, &a.encrypt(&[0; 32]).unwrap().data).unwrap();
    let (mut b, _) =
        Session::respond(&s.bob_id, &kex, &s.spk.key_pair, &s.opk.private, rng).unwrap();
    let r = b.encrypt(&[0; 32]).unwrap();
    a.decrypt(&r.data, rng).unwrap();
    (a, b)
}

fn primitives(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let k1 = KeyPair::generate(&mut rng);
    let k2 = KeyPair::generate(&mut rng);
    c.bench_function("floor/x25519", |b| {
        b.iter(|| black_box(k1.private.diffie_hellman(&k2.public).unwrap()))
    });
    // A public key from a private one: every key generation and every ratchet step.
    c.bench_function("floor/x25519_public_key", |b| {
        b.iter(|| black_box(k1.private.public_key()))
    });
    let id = IdentityKeyPair::generate(&mut rng);
    let z = [7u8; 64];
    c.bench_function("floor/ed25519_sign", |b| {
        b.iter(|| black_box(id.sign_twomemo(b"32 bytes of a signed prekey....", &z)))
    });
    let sig = id.sign_twomemo(b"32 bytes of a signed prekey....", &z);
    c.bench_function("floor/ed25519_verify", |b| {
        b.iter(|| {
            xeddsa::ed25519_verify(id.ed25519(), b"32 bytes of a signed prekey....", &sig).unwrap()
        })
    });
}

fn protocol(c: &mut Criterion) {
    for version in [Version::Oldmemo, Version::Twomemo] {
        let name = match version {
            Version::Oldmemo => "oldmemo",
            Version::Twomemo => "twomemo",
        };
        let mut rng = StdRng::seed_from_u64(2);
        let s = setup(version, &mut rng);
        let eph = KeyPair::generate(&mut rng);
        c.bench_function(&format!("{name}/x3dh_active"), |b| {
            b.iter(|| black_box(x3dh::active(&s.alice_id, &s.bundle, 1, &eph).unwrap()))
        });
        let alice_ik = x3dh::RemoteIdentity::from_transported(
            version,
            match version {
                Version::Oldmemo => *s.alice_id.curve25519(),
                Version::Twomemo => *s.alice_id.ed25519(),
            },
        );
        c.bench_function(&format!("{name}/x3dh_passive"), |b| {
            b.iter(|| {
                black_box(
                    x3dh::passive(
                        version,
                        &s.bob_id,
                        &s.spk.key_pair.private,
                        &s.opk.private,
                        &alice_ik,
                        &eph.public,
                    )
                    .unwrap(),
                )
            })
        });
        c.bench_function(&format!("{name}/session_initiate"), |b| {
            b.iter(|| black_box(Session::initiate(&s.alice_id, &s.bundle, 1, &mut rng).unwrap()))
        });
        let (mut a, bob) = established(&s, &mut rng);
        c.bench_function(&format!("{name}/encrypt"), |b| {
            b.iter(|| black_box(a.encrypt(&[1; 32]).unwrap()))
        });
        // Decrypt on a fresh copy each time: same chain, no DH step (bob has already taken
        // the DH step into alice's current chain).
        let (mut a, mut bob2) = established(&s, &mut rng);
        let first = a.encrypt(&[1; 32]).unwrap().data;
        bob2.decrypt(&first, &mut rng).unwrap();
        let msg = a.encrypt(&[1; 32]).unwrap().data;
        c.bench_function(&format!("{name}/decrypt_same_chain"), |b| {
            b.iter_batched(
                || bob2.clone(),
                |mut bob| black_box(bob.decrypt(&msg, &mut StdRng::seed_from_u64(3)).unwrap()),
                BatchSize::SmallInput,
            )
        });
        // A message on a new ratchet key: two DH and two root steps.
        let (mut a, mut b) = (a, bob2.clone());
        let m = a.encrypt(&[1; 32]).unwrap().data;
        b.decrypt(&m, &mut rng).unwrap();
        let r = b.encrypt(&[1; 32]).unwrap().data;
        let a_before = a.clone();
        c.bench_function(&format!("{name}/decrypt_ratchet_step"), |bch| {
            bch.iter_batched(
                || a_before.clone(),
                |mut a| black_box(a.decrypt(&r, &mut StdRng::seed_from_u64(4)).unwrap()),
                BatchSize::SmallInput,
            )
        });
        let _ = bob;
    }
}

/// The wire and payload layers of a received message, apart from the ratchet: parsing the
/// `<encrypted>` element, opening the payload and (OMEMO 2) parsing the SCE envelope.
fn wire(c: &mut Criterion) {
    use protocol_core::payload;
    use protocol_core::sce::{build_envelope, parse_envelope, EnvelopeOptions};
    use protocol_core::xml::{Encrypted, KeyElement};
    let mut rng = StdRng::seed_from_u64(9);
    let body = "Hello, this is a benchmark message of moderate length. \u{1F600}";
    for version in [Version::Oldmemo, Version::Twomemo] {
        let name = match version {
            Version::Oldmemo => "oldmemo",
            Version::Twomemo => "twomemo",
        };
        let s = setup(version, &mut rng);
        let (mut a, _) = established(&s, &mut rng);
        let (km, iv, ct) = match version {
            Version::Oldmemo => {
                let p = payload::oldmemo::encrypt(body.as_bytes(), &mut rng);
                (p.key_material.to_vec(), Some(p.iv.to_vec()), p.ciphertext)
            }
            Version::Twomemo => {
                let opts = EnvelopeOptions {
                    from: "alice@example.org",
                    to: Some("bob@example.org"),
                    time: None,
                };
                let env = build_envelope(body, &opts, &mut rng);
                let p = payload::twomemo::encrypt(env.as_bytes(), &mut rng);
                (p.key_material.to_vec(), None, p.ciphertext)
            }
        };
        let key = a.encrypt(&km).unwrap();
        let element = Encrypted {
            version,
            sid: 1,
            keys: vec![KeyElement {
                jid: (version == Version::Twomemo).then(|| "bob@example.org".to_owned()),
                rid: 2,
                kex: key.kex,
                data: key.data,
            }],
            iv: iv.clone(),
            payload: Some(ct.clone()),
        };
        let xml = element.to_xml();
        c.bench_function(&format!("{name}/element_from_xml"), |b| {
            b.iter(|| black_box(Encrypted::from_xml(&xml).unwrap()))
        });
        c.bench_function(&format!("{name}/payload_decrypt"), |b| match version {
            Version::Oldmemo => b.iter(|| {
                black_box(payload::oldmemo::decrypt(&km, iv.as_deref().unwrap(), &ct).unwrap())
            }),
            Version::Twomemo => b.iter(|| black_box(payload::twomemo::decrypt(&km, &ct).unwrap())),
        });
        if version == Version::Twomemo {
            let pt = payload::twomemo::decrypt(&km, &ct).unwrap();
            let text = std::str::from_utf8(&pt).unwrap().to_owned();
            c.bench_function(&format!("{name}/sce_parse_envelope"), |b| {
                b.iter(|| black_box(parse_envelope(&text).unwrap()))
            });
        }
    }
}

criterion_group!(benches, primitives, protocol, wire);
criterion_main!(benches);
