//! Public bundles (identity key, signed prekey, one-time prekeys) as values, for both versions.
//!
//! `identity_key` holds the form the version transports: the Curve25519 u-coordinate in 0.3
//! (without its 0x05 type byte), the Ed25519 point in OMEMO 2.

use crate::error::ErrorCause;
use crate::keys::identity::SignedPreKey;
use crate::keys::IdentityKeyPair;
use crate::Version;
use serde::{Deserialize, Serialize};

/// One public one-time prekey.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreKeyPublic {
    /// Prekey id (1 …).
    pub id: u32,
    /// X25519 public key.
    pub key: [u8; 32],
}

/// A bundle as published (or received) under one version's PEP node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// Which version's node this bundle belongs to.
    pub version: Version,
    /// 0.3: Curve25519 u (32 bytes, 0x05 stripped); OMEMO 2: Ed25519 public key.
    pub identity_key: [u8; 32],
    /// Id of the signed prekey.
    pub signed_prekey_id: u32,
    /// X25519 public signed prekey.
    pub signed_prekey: [u8; 32],
    /// 0.3: libsignal-flavour XEdDSA signature over `0x05 ‖ spk`; OMEMO 2: Ed25519 over `spk`.
    #[serde(with = "serde_bytes64")]
    pub signed_prekey_signature: [u8; 64],
    /// One-time prekeys.
    pub prekeys: Vec<PreKeyPublic>,
}

impl Bundle {
    /// The bundle `identity` publishes in `version` with signed prekey `spk` and the one-time
    /// `prekeys`: the identity key in the form that version transports, the signature in its
    /// flavour.
    pub fn from_keys(
        version: Version,
        identity: &IdentityKeyPair,
        spk: &SignedPreKey,
        prekeys: Vec<PreKeyPublic>,
    ) -> Self {
        let (identity_key, signed_prekey_signature) = match version {
            Version::Oldmemo => (*identity.curve25519(), spk.signature_oldmemo),
            Version::Twomemo => (*identity.ed25519(), spk.signature_twomemo),
        };
        Self {
            version,
            identity_key,
            signed_prekey_id: spk.id,
            signed_prekey: spk.key_pair.public.0,
            signed_prekey_signature,
            prekeys,
        }
    }
}

mod serde_bytes64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let v: Vec<u8> = Deserialize::deserialize(d)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("expected 64 bytes"))
    }
}

/// Why a received bundle cannot be used.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BundleError {
    /// The signed prekey's signature does not verify with the identity key.
    #[error("signed prekey signature does not verify")]
    InvalidSignature,
    /// A key in the bundle is not a valid curve point (or has low order).
    #[error("invalid {0} key")]
    InvalidKey(&'static str),
    /// The bundle has no one-time prekeys.
    #[error("bundle has no one-time prekeys")]
    NoPreKeys,
    /// An id is out of range (0, or above the version's maximum).
    #[error("{0} id {1} out of range")]
    IdOutOfRange(&'static str, u32),
    /// Two one-time prekeys share an id.
    #[error("duplicate one-time prekey id {0}")]
    DuplicatePreKeyId(u32),
    /// Too many one-time prekeys.
    #[error("bundle has {0} one-time prekeys, more than allowed")]
    TooManyPreKeys(usize),
}

impl BundleError {
    /// Whom the error is due to: the peer published an unusable bundle.
    pub fn cause(&self) -> ErrorCause {
        ErrorCause::PeerMisbehaved
    }
}

/// Most one-time prekeys accepted in a received bundle.
pub const MAX_BUNDLE_PREKEYS: usize = 1000;

impl Bundle {
    /// Validates a received bundle: ids in range, keys valid, signature correct.
    pub fn verify(&self) -> Result<(), BundleError> {
        use crate::keys::{conversion, xeddsa};
        let max_id = match self.version {
            Version::Oldmemo => crate::consts::OLDMEMO_MAX_PREKEY_ID,
            Version::Twomemo => crate::consts::MAX_DEVICE_ID,
        };
        if self.signed_prekey_id == 0 || self.signed_prekey_id > max_id {
            return Err(BundleError::IdOutOfRange(
                "signed prekey",
                self.signed_prekey_id,
            ));
        }
        if self.prekeys.is_empty() {
            return Err(BundleError::NoPreKeys);
        }
        if self.prekeys.len() > MAX_BUNDLE_PREKEYS {
            return Err(BundleError::TooManyPreKeys(self.prekeys.len()));
        }
        let mut ids = std::collections::HashSet::with_capacity(self.prekeys.len());
        for p in &self.prekeys {
            if p.id == 0 || p.id > max_id {
                return Err(BundleError::IdOutOfRange("prekey", p.id));
            }
            if !ids.insert(p.id) {
                return Err(BundleError::DuplicatePreKeyId(p.id));
            }
            // A low-order prekey would make the key exchange's DH predictable (and encrypt to
            // that device fail later): refuse the bundle now.
            if !conversion::is_canonical_u(&p.key) || conversion::is_low_order_u(&p.key) {
                return Err(BundleError::InvalidKey("one-time prekey"));
            }
        }
        if !conversion::is_canonical_u(&self.signed_prekey)
            || conversion::is_low_order_u(&self.signed_prekey)
        {
            return Err(BundleError::InvalidKey("signed prekey"));
        }
        match self.version {
            Version::Oldmemo => {
                let mut msg = [0u8; 33];
                msg[0] = crate::keys::DJB_TYPE;
                msg[1..].copy_from_slice(&self.signed_prekey);
                xeddsa::libsignal_verify(&self.identity_key, &msg, &self.signed_prekey_signature)
                    .map_err(|e| match e {
                        crate::keys::KeyError::InvalidSignature => BundleError::InvalidSignature,
                        _ => BundleError::InvalidKey("identity"),
                    })
            }
            Version::Twomemo => {
                conversion::ed25519_to_curve25519(&self.identity_key)
                    .map_err(|_| BundleError::InvalidKey("identity"))?;
                xeddsa::ed25519_verify(
                    &self.identity_key,
                    &self.signed_prekey,
                    &self.signed_prekey_signature,
                )
                .map_err(|_| BundleError::InvalidSignature)
            }
        }
    }

    /// For OMEMO 0.3 bundles: the Edwards sign bit of the identity key (bit 63.7 of the
    /// signature), which python-omemo uses to recover the Ed25519 form.
    pub fn oldmemo_identity_sign_bit(&self) -> u8 {
        self.signed_prekey_signature[63] >> 7
    }
}

/// A bundle whose ids, keys and signed-prekey signature were checked ([`Bundle::verify`]), with
/// its identity key in Montgomery form. Only verification makes one, so X3DH can start from it
/// without checking (and converting) again; a caller that keeps bundles (parsed once, used for
/// many sessions) pays for one signature check per bundle, not per session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBundle {
    bundle: Bundle,
    identity_curve25519: [u8; 32],
}

impl VerifiedBundle {
    /// Verifies `bundle`.
    pub fn verify(bundle: Bundle) -> Result<Self, BundleError> {
        bundle.verify()?;
        let identity_curve25519 =
            crate::keys::RemoteIdentity::from_transported(bundle.version, bundle.identity_key)
                .curve25519()
                .map_err(|_| BundleError::InvalidKey("identity"))?;
        Ok(Self {
            bundle,
            identity_curve25519,
        })
    }

    /// The bundle.
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// The identity key as a Curve25519 u-coordinate (DH, fingerprints, trust).
    pub fn identity_curve25519(&self) -> &[u8; 32] {
        &self.identity_curve25519
    }

    /// The same bundle without the one-time prekey `id` (one we used, which must not be used
    /// again). Removing a prekey keeps everything that was verified true, but the result may
    /// offer no prekey at all.
    pub fn without_prekey(&self, id: u32) -> Self {
        let mut rest = self.clone();
        rest.bundle.prekeys.retain(|p| p.id != id);
        rest
    }

    /// Gives the bundle back.
    pub fn into_bundle(self) -> Bundle {
        self.bundle
    }
}
