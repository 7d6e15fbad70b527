//! Versioned storage forms of our own keys (protobuf, fields only ever added), so a caller can
//! persist them and load them back across releases.

use super::identity::SignedPreKey;
use super::{IdentityKeyPair, KeyPair, PrivateKey};
use crate::error::SnapshotError;
use prost::Message;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Current format of every key snapshot.
pub const KEY_SNAPSHOT_FORMAT: u32 = 1;

/// Storage form of an identity key pair (its clamped private scalar).
#[derive(Clone, PartialEq, Message, Zeroize, ZeroizeOnDrop)]
#[prost(skip_debug)]
pub struct IdentitySnapshot {
    /// [`KEY_SNAPSHOT_FORMAT`].
    #[prost(uint32, tag = "1")]
    pub format: u32,
    /// Clamped X25519 private key.
    #[prost(bytes = "vec", tag = "2")]
    pub private_key: Vec<u8>,
}

/// Storage form of a one-time prekey.
#[derive(Clone, PartialEq, Message, Zeroize, ZeroizeOnDrop)]
#[prost(skip_debug)]
pub struct PreKeySnapshot {
    /// [`KEY_SNAPSHOT_FORMAT`].
    #[prost(uint32, tag = "1")]
    pub format: u32,
    /// Prekey id.
    #[prost(uint32, tag = "2")]
    pub id: u32,
    /// X25519 private key.
    #[prost(bytes = "vec", tag = "3")]
    pub private_key: Vec<u8>,
}

/// Storage form of a signed prekey with both signatures.
#[derive(Clone, PartialEq, Message, Zeroize, ZeroizeOnDrop)]
#[prost(skip_debug)]
pub struct SignedPreKeySnapshot {
    /// [`KEY_SNAPSHOT_FORMAT`].
    #[prost(uint32, tag = "1")]
    pub format: u32,
    /// Signed prekey id.
    #[prost(uint32, tag = "2")]
    pub id: u32,
    /// X25519 private key.
    #[prost(bytes = "vec", tag = "3")]
    pub private_key: Vec<u8>,
    /// OMEMO 0.3 signature.
    #[prost(bytes = "vec", tag = "4")]
    pub signature_oldmemo: Vec<u8>,
    /// OMEMO 2 signature.
    #[prost(bytes = "vec", tag = "5")]
    pub signature_twomemo: Vec<u8>,
}

fn check_format(format: u32) -> Result<(), SnapshotError> {
    if format == 0 || format > KEY_SNAPSHOT_FORMAT {
        return Err(SnapshotError::UnknownFormat(format));
    }
    Ok(())
}

fn key32(v: &[u8], field: &'static str) -> Result<PrivateKey, SnapshotError> {
    let k: [u8; 32] = v.try_into().map_err(|_| SnapshotError::Invalid(field))?;
    Ok(PrivateKey::from_bytes(k))
}

fn sig64(v: &[u8], field: &'static str) -> Result<[u8; 64], SnapshotError> {
    v.try_into().map_err(|_| SnapshotError::Invalid(field))
}

impl IdentityKeyPair {
    /// The snapshot bytes.
    pub fn to_snapshot(&self) -> Zeroizing<Vec<u8>> {
        let s = IdentitySnapshot {
            format: KEY_SNAPSHOT_FORMAT,
            private_key: self.private_bytes().to_vec(),
        };
        Zeroizing::new(s.encode_to_vec())
    }

    /// Loads snapshot bytes.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let s = IdentitySnapshot::decode(bytes).map_err(|_| SnapshotError::Decode)?;
        check_format(s.format)?;
        Ok(Self::from_private(key32(&s.private_key, "private_key")?))
    }
}

/// Snapshot bytes of one-time prekey `id`.
pub fn prekey_to_snapshot(id: u32, key: &KeyPair) -> Zeroizing<Vec<u8>> {
    let s = PreKeySnapshot {
        format: KEY_SNAPSHOT_FORMAT,
        id,
        private_key: key.private.to_bytes().to_vec(),
    };
    Zeroizing::new(s.encode_to_vec())
}

/// Loads a one-time prekey snapshot: its id and key pair.
pub fn prekey_from_snapshot(bytes: &[u8]) -> Result<(u32, KeyPair), SnapshotError> {
    let s = PreKeySnapshot::decode(bytes).map_err(|_| SnapshotError::Decode)?;
    check_format(s.format)?;
    Ok((
        s.id,
        KeyPair::from_private(key32(&s.private_key, "private_key")?),
    ))
}

impl SignedPreKey {
    /// The snapshot bytes.
    pub fn to_snapshot(&self) -> Zeroizing<Vec<u8>> {
        let s = SignedPreKeySnapshot {
            format: KEY_SNAPSHOT_FORMAT,
            id: self.id,
            private_key: self.key_pair.private.to_bytes().to_vec(),
            signature_oldmemo: self.signature_oldmemo.to_vec(),
            signature_twomemo: self.signature_twomemo.to_vec(),
        };
        Zeroizing::new(s.encode_to_vec())
    }

    /// Loads snapshot bytes.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let s = SignedPreKeySnapshot::decode(bytes).map_err(|_| SnapshotError::Decode)?;
        check_format(s.format)?;
        Ok(Self {
            id: s.id,
            key_pair: KeyPair::from_private(key32(&s.private_key, "private_key")?),
            signature_oldmemo: sig64(&s.signature_oldmemo, "signature_oldmemo")?,
            signature_twomemo: sig64(&s.signature_twomemo, "signature_twomemo")?,
        })
    }
}

macro_rules! redacted_debug {
    ($($t:ty),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{} {{ format: {}, .. }}", stringify!($t), self.format)
            }
        }
    )*};
}
redacted_debug!(IdentitySnapshot, PreKeySnapshot, SignedPreKeySnapshot);
