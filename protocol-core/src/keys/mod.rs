//! Key types: X25519 key pairs (signed prekeys, one-time prekeys, ephemeral and ratchet keys)
//! and the identity key pair that serves both versions.
//!
//! * [`conversion`]: Montgomery ↔ Edwards, canonical and low-order checks.
//! * [`identity`]: our identity key pair, signed prekeys, a peer's identity key.
//! * [`snapshot`]: storage forms of our own keys.
//! * [`xeddsa`]: the two signature flavours (libsignal XEdDSA, Ed25519).

pub mod conversion;
pub mod identity;
pub mod snapshot;
pub mod xeddsa;

pub use identity::{IdentityKeyPair, RemoteIdentity};

use crate::error::ErrorCause;
use rand_core::CryptoRngCore;
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The libsignal type byte in front of every Curve25519 public key in OMEMO 0.3.
pub const DJB_TYPE: u8 = 0x05;

/// Errors about keys.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// A serialized key had the wrong length.
    #[error("key has {found} bytes, expected {expected}")]
    WrongLength {
        /// Expected length.
        expected: usize,
        /// Length found.
        found: usize,
    },
    /// An OMEMO 0.3 key did not start with the 0x05 type byte.
    #[error("key type byte is {0:#04x}, expected 0x05")]
    WrongType(u8),
    /// A point is not a valid, canonically encoded curve point.
    #[error("not a valid curve point")]
    InvalidPoint,
    /// A point has small order (would make a Diffie-Hellman output predictable).
    #[error("low-order curve point")]
    LowOrderPoint,
    /// A signature did not verify.
    #[error("invalid signature")]
    InvalidSignature,
}

impl KeyError {
    /// Whom the error is due to: keys come from the peer (bundles, messages), so a bad one is
    /// the peer's.
    pub fn cause(&self) -> ErrorCause {
        ErrorCause::PeerMisbehaved
    }
}

/// Clamps a 32-byte X25519 scalar as RFC 7748 and libsignal do.
pub fn clamp(mut k: [u8; 32]) -> [u8; 32] {
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    k
}

/// An X25519 private key, stored clamped (so its Ed25519 public key is well defined).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PrivateKey([u8; 32]);

impl PrivateKey {
    /// A fresh random private key.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(k.as_mut());
        Self(clamp(*k))
    }

    /// A private key from its 32 bytes (clamped on the way in).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(clamp(bytes))
    }

    /// The 32 clamped bytes.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0)
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The X25519 public key: `k·B` on the Edwards curve with the base point's precomputed
    /// table, mapped to its Montgomery u. The same key as the ladder `x25519(k, 9)`, in about a
    /// quarter of the time (every key generation and every ratchet step makes one).
    pub fn public_key(&self) -> PublicKey {
        let point = curve25519_dalek::EdwardsPoint::mul_base_clamped(self.0);
        PublicKey(point.to_montgomery().to_bytes())
    }

    /// X25519 with `public`; fails if the result is all zeros (a low-order `public`).
    pub fn diffie_hellman(&self, public: &PublicKey) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        let out = Zeroizing::new(x25519_dalek::x25519(self.0, public.0));
        if out.iter().all(|b| *b == 0) {
            return Err(KeyError::LowOrderPoint);
        }
        Ok(out)
    }
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// An X25519 public key (the Montgomery u-coordinate, 32 bytes little-endian).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The raw 32 bytes (OMEMO 2 form).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// `0x05 ‖ u`, the OMEMO 0.3 form.
    pub fn serialize_oldmemo(&self) -> [u8; 33] {
        let mut out = [0u8; 33];
        out[0] = DJB_TYPE;
        out[1..].copy_from_slice(&self.0);
        out
    }

    /// Parses the OMEMO 0.3 form (exactly 33 bytes, starting with 0x05).
    pub fn parse_oldmemo(bytes: &[u8]) -> Result<Self, KeyError> {
        match bytes {
            [DJB_TYPE, rest @ ..] if rest.len() == 32 => {
                let mut k = [0u8; 32];
                k.copy_from_slice(rest);
                Ok(Self(k))
            }
            _ if bytes.len() != 33 => Err(KeyError::WrongLength {
                expected: 33,
                found: bytes.len(),
            }),
            [t, ..] => Err(KeyError::WrongType(*t)),
            [] => Err(KeyError::WrongLength {
                expected: 33,
                found: 0,
            }),
        }
    }

    /// Parses the raw 32-byte form.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        let k: [u8; 32] = bytes.try_into().map_err(|_| KeyError::WrongLength {
            expected: 32,
            found: bytes.len(),
        })?;
        Ok(Self(k))
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey(")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// An X25519 key pair.
#[derive(Clone, Debug)]
pub struct KeyPair {
    /// Private half.
    pub private: PrivateKey,
    /// Public half.
    pub public: PublicKey,
}

impl KeyPair {
    /// A fresh random key pair.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self::from_private(PrivateKey::generate(rng))
    }

    /// The key pair of `private`.
    pub fn from_private(private: PrivateKey) -> Self {
        let public = private.public_key();
        Self { private, public }
    }
}

/// Formats a Curve25519 public key as users compare it: 8 groups of 8 lowercase hex digits.
pub fn fingerprint(curve25519: &[u8; 32]) -> String {
    let hex: String = curve25519.iter().map(|b| format!("{b:02x}")).collect();
    hex.as_bytes()
        .chunks(8)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_from_the_table_is_the_ladders() {
        // RFC 7748, 6.1: Alice's key pair.
        let a = hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
            .unwrap();
        let k = PrivateKey::from_bytes(a.try_into().unwrap());
        assert_eq!(
            hex::encode(k.public_key().0),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        let mut rng = rand::thread_rng();
        for _ in 0..200 {
            let k = PrivateKey::generate(&mut rng);
            let ladder = x25519_dalek::x25519(k.0, x25519_dalek::X25519_BASEPOINT_BYTES);
            assert_eq!(k.public_key().0, ladder);
        }
    }
}
