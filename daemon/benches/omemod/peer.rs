//! An in-process OMEMO device (protocol-core): the daemon's peers, and the subject of the
//! protocol-core measurements. It builds real `<encrypted>` elements, device lists and bundles.

use std::collections::HashMap;

use protocol_core::bundle::{Bundle, PreKeyPublic};
use protocol_core::keys::identity::SignedPreKey;
use protocol_core::keys::{IdentityKeyPair, KeyPair};
use protocol_core::payload;
use protocol_core::sce::{build_envelope, parse_envelope, EnvelopeOptions};
use protocol_core::session::{KeyExchange, Session};
use protocol_core::xml::{bundle_to_xml, Encrypted, KeyElement};
use protocol_core::Version;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

pub struct Device {
    pub jid: String,
    pub device_id: u32,
    pub version: Version,
    identity: IdentityKeyPair,
    spk: SignedPreKey,
    /// One-time prekeys with private keys.
    opks: Vec<(u32, KeyPair)>,
    /// Public-only prekeys (random points) that make the bundle realistically large.
    fake_opks: Vec<(u32, [u8; 32])>,
    pub sessions: HashMap<(String, u32), Session>,
    pub rng: StdRng,
}

impl Device {
    pub fn new(jid: &str, device_id: u32, version: Version, real: usize, fake: usize) -> Self {
        let mut rng = StdRng::from_entropy();
        let identity = IdentityKeyPair::generate(&mut rng);
        let spk = SignedPreKey::generate(1, &identity, &mut rng);
        let opks = (1..=real as u32)
            .map(|i| (i, KeyPair::generate(&mut rng)))
            .collect();
        let fake_opks = (0..fake as u32)
            .map(|i| {
                let mut k = [0u8; 32];
                rng.fill_bytes(&mut k);
                k[31] &= 0x7f;
                (real as u32 + 1 + i, k)
            })
            .collect();
        Device {
            jid: jid.to_owned(),
            device_id,
            version,
            identity,
            spk,
            opks,
            fake_opks,
            sessions: HashMap::new(),
            rng,
        }
    }

    pub fn bundle(&self) -> Bundle {
        let mut prekeys: Vec<PreKeyPublic> = self
            .opks
            .iter()
            .map(|(id, k)| PreKeyPublic {
                id: *id,
                key: k.public.0,
            })
            .collect();
        prekeys.extend(
            self.fake_opks
                .iter()
                .map(|(id, k)| PreKeyPublic { id: *id, key: *k }),
        );
        Bundle::from_keys(self.version, &self.identity, &self.spk, prekeys)
    }

    pub fn bundle_xml(&self) -> String {
        bundle_to_xml(&self.bundle())
    }

    /// Builds a session from `bundle` (of `jid`/`dev`) with its prekey `pk`.
    pub fn initiate(&mut self, jid: &str, dev: u32, bundle: &Bundle, pk: u32) {
        let s = Session::initiate(&self.identity, bundle, pk, &mut self.rng).expect("initiate");
        self.sessions.insert((jid.to_owned(), dev), s);
    }

    /// One `<encrypted>` element with `body` for `targets` (each must have a session).
    pub fn encrypt_to(&mut self, targets: &[(String, u32)], body: &str, sce_to: &str) -> String {
        let (km, iv, pl): (Vec<u8>, Option<Vec<u8>>, Vec<u8>) = match self.version {
            Version::Oldmemo => {
                let p = payload::oldmemo::encrypt(body.as_bytes(), &mut self.rng);
                (p.key_material.to_vec(), Some(p.iv.to_vec()), p.ciphertext)
            }
            Version::Twomemo => {
                let env = build_envelope(
                    body,
                    &EnvelopeOptions {
                        from: &self.jid,
                        to: Some(sce_to),
                        time: None,
                    },
                    &mut self.rng,
                );
                let p = payload::twomemo::encrypt(env.as_bytes(), &mut self.rng);
                (p.key_material.to_vec(), None, p.ciphertext)
            }
        };
        let mut keys = Vec::with_capacity(targets.len());
        for t in targets {
            let s = self.sessions.get_mut(t).expect("session for target");
            let k = s.encrypt(&km).expect("encrypt");
            keys.push(KeyElement {
                jid: (self.version == Version::Twomemo).then(|| t.0.clone()),
                rid: t.1,
                kex: k.kex,
                data: k.data,
            });
        }
        Encrypted {
            version: self.version,
            sid: self.device_id,
            keys,
            iv,
            payload: Some(pl),
        }
        .to_xml()
    }

    /// Decrypts the key for this device in `xml` (responding to a key exchange) and the payload.
    pub fn receive(&mut self, from: &str, xml: &str) -> Option<String> {
        let e = Encrypted::from_xml(xml).expect("parse <encrypted>");
        let key = e
            .keys
            .iter()
            .find(|k| k.rid == self.device_id)
            .expect("a key for this device");
        let addr = (from.to_owned(), e.sid);
        let d = if key.kex {
            let kex = KeyExchange::parse(self.version, &key.data).expect("kex");
            match self.sessions.get_mut(&addr) {
                Some(s) if s.matches_key_exchange(&kex) => s
                    .decrypt_key_exchange(&kex, &mut self.rng)
                    .expect("decrypt"),
                _ => {
                    let opk = &self
                        .opks
                        .iter()
                        .find(|(id, _)| *id == kex.info.pre_key_id)
                        .expect("our prekey")
                        .1;
                    let (s, d) = Session::respond(
                        &self.identity,
                        &kex,
                        &self.spk.key_pair,
                        &opk.private,
                        &mut self.rng,
                    )
                    .expect("respond");
                    self.sessions.insert(addr, s);
                    d
                }
            }
        } else {
            self.sessions
                .get_mut(&addr)
                .expect("session")
                .decrypt(&key.data, &mut self.rng)
                .expect("decrypt")
        };
        let ct = e.payload.as_ref()?;
        match self.version {
            Version::Oldmemo => {
                let pt = payload::oldmemo::decrypt(&d.plaintext, e.iv.as_deref().expect("iv"), ct)
                    .expect("payload");
                Some(String::from_utf8(pt.to_vec()).expect("utf-8"))
            }
            Version::Twomemo => {
                let pt = payload::twomemo::decrypt(&d.plaintext, ct).expect("payload");
                let env = parse_envelope(std::str::from_utf8(&pt).expect("utf-8")).expect("sce");
                env.body.map(|b| b.as_str().to_owned())
            }
        }
    }
}
