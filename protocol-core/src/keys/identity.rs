//! The device identity: one key pair for both versions, as python-omemo does, so one device
//! id has one identity (and one fingerprint) in both namespaces.
//!
//! We keep the clamped X25519 scalar `k`. OMEMO 0.3 publishes the Montgomery key `k·9` and
//! signs libsignal-style; OMEMO 2 publishes the Edwards key `A = k·B` with its real sign bit
//! and signs Ed25519-style. The 0.3 signature carries A's sign bit in bit 63.7, so a peer that
//! converts our 0.3 key to Edwards gets exactly our OMEMO 2 `<ik>`.
//!
//! A peer's identity key is kept as its version transports it ([`RemoteIdentity`]).

use super::conversion::ed25519_to_curve25519;
use super::xeddsa::{self, Nonce};
use super::{fingerprint, KeyError, KeyPair, PrivateKey, PublicKey};
use crate::Version;
use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

/// Our identity key pair.
#[derive(Clone)]
pub struct IdentityKeyPair {
    private: PrivateKey,
    curve25519: [u8; 32],
    ed25519: [u8; 32],
}

impl IdentityKeyPair {
    /// A fresh random identity.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self::from_private(PrivateKey::generate(rng))
    }

    /// The identity of a stored private key.
    pub fn from_private(private: PrivateKey) -> Self {
        let curve25519 = private.public_key().0;
        let ed25519 = xeddsa::ed25519_public(&private);
        Self {
            private,
            curve25519,
            ed25519,
        }
    }

    /// The identity as its owner stored it: the private key with the public keys
    /// [`Self::from_private`] computed when it was made, taken as they are (two scalar
    /// multiplications saved per identity loaded). Anyone who could alter them could replace
    /// the private key as well; for a key of unknown origin, use `from_private`.
    pub fn from_stored(private: PrivateKey, curve25519: [u8; 32], ed25519: [u8; 32]) -> Self {
        Self {
            private,
            curve25519,
            ed25519,
        }
    }

    /// The private key (for X3DH).
    pub fn private(&self) -> &PrivateKey {
        &self.private
    }

    /// The clamped private scalar, for storage.
    pub fn private_bytes(&self) -> Zeroizing<[u8; 32]> {
        self.private.to_bytes()
    }

    /// Montgomery public key (OMEMO 0.3 form without the 0x05).
    pub fn curve25519(&self) -> &[u8; 32] {
        &self.curve25519
    }

    /// Edwards public key with its real sign bit (OMEMO 2 `<ik>`).
    pub fn ed25519(&self) -> &[u8; 32] {
        &self.ed25519
    }

    /// The public key as an X25519 [`PublicKey`].
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.curve25519)
    }

    /// Fingerprint shown to users (same in both versions).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.curve25519)
    }

    /// OMEMO 0.3 signature (libsignal flavour) over `msg`.
    pub fn sign_oldmemo(&self, msg: &[u8], z: &Nonce) -> [u8; 64] {
        xeddsa::libsignal_sign(&self.private, msg, z)
    }

    /// OMEMO 2 signature (Ed25519, verifiable against [`Self::ed25519`]) over `msg`.
    pub fn sign_twomemo(&self, msg: &[u8], z: &Nonce) -> [u8; 64] {
        xeddsa::ed25519_sign(&self.private, msg, z)
    }

    /// Signs an OMEMO 2 device label (`labelsig`).
    pub fn sign_label(&self, label: &str, rng: &mut impl CryptoRngCore) -> [u8; 64] {
        let mut z = [0u8; 64];
        rng.fill_bytes(&mut z);
        self.sign_twomemo(label.as_bytes(), &z)
    }
}

impl std::fmt::Debug for IdentityKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            private: _,
            curve25519: _,
            ed25519: _,
        } = self;
        write!(f, "IdentityKeyPair({})", self.fingerprint())
    }
}

/// A signed prekey with its signatures for both versions.
#[derive(Clone, Debug)]
pub struct SignedPreKey {
    /// Signed prekey id.
    pub id: u32,
    /// The key pair.
    pub key_pair: KeyPair,
    /// OMEMO 0.3 signature over `0x05 ‖ public` (libsignal flavour).
    pub signature_oldmemo: [u8; 64],
    /// OMEMO 2 signature over the raw public key.
    pub signature_twomemo: [u8; 64],
}

impl SignedPreKey {
    /// Generates and signs a new signed prekey.
    pub fn generate(id: u32, identity: &IdentityKeyPair, rng: &mut impl CryptoRngCore) -> Self {
        Self::sign(id, KeyPair::generate(rng), identity, rng)
    }

    /// Signs `key_pair` as signed prekey `id`.
    pub fn sign(
        id: u32,
        key_pair: KeyPair,
        identity: &IdentityKeyPair,
        rng: &mut impl CryptoRngCore,
    ) -> Self {
        let mut z1 = [0u8; 64];
        let mut z2 = [0u8; 64];
        rng.fill_bytes(&mut z1);
        rng.fill_bytes(&mut z2);
        let signature_oldmemo = identity.sign_oldmemo(&key_pair.public.serialize_oldmemo(), &z1);
        let signature_twomemo = identity.sign_twomemo(key_pair.public.as_bytes(), &z2);
        Self {
            id,
            key_pair,
            signature_oldmemo,
            signature_twomemo,
        }
    }
}

/// The identity key of a peer in the form its version transports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RemoteIdentity {
    /// OMEMO 0.3: Curve25519 u.
    Curve25519([u8; 32]),
    /// OMEMO 2: Ed25519 point (sign bit as published).
    Ed25519([u8; 32]),
}

impl RemoteIdentity {
    /// The identity as its version transports it.
    pub fn from_transported(version: Version, key: [u8; 32]) -> Self {
        match version {
            Version::Oldmemo => RemoteIdentity::Curve25519(key),
            Version::Twomemo => RemoteIdentity::Ed25519(key),
        }
    }

    /// The 32 transported bytes.
    pub fn transported(&self) -> [u8; 32] {
        match self {
            RemoteIdentity::Curve25519(k) | RemoteIdentity::Ed25519(k) => *k,
        }
    }

    /// Its Montgomery form (for DH and fingerprints).
    pub fn curve25519(&self) -> Result<[u8; 32], KeyError> {
        match self {
            RemoteIdentity::Curve25519(k) => Ok(*k),
            RemoteIdentity::Ed25519(k) => ed25519_to_curve25519(k),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_identity_signs_as_the_one_it_was_made_from() {
        let made = IdentityKeyPair::generate(&mut rand::thread_rng());
        let stored = IdentityKeyPair::from_stored(
            made.private().clone(),
            *made.curve25519(),
            *made.ed25519(),
        );
        assert_eq!(stored.fingerprint(), made.fingerprint());
        let z = [3u8; 64];
        let sig = stored.sign_twomemo(b"label", &z);
        assert_eq!(sig, made.sign_twomemo(b"label", &z));
        xeddsa::ed25519_verify(made.ed25519(), b"label", &sig).unwrap();
    }
}
