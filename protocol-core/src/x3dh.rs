//! X3DH key agreement (Signal's X3DH with OMEMO's parameters).
//!
//! `ikm = 0xFF×32 ‖ DH(IK_A, SPK_B) ‖ DH(EK_A, IK_B) ‖ DH(EK_A, SPK_B) ‖ DH(EK_A, OPK_B)`,
//! `SK = HKDF(ikm, salt = 0×32, info)`. The one-time prekey is mandatory in OMEMO.

use crate::bundle::{Bundle, BundleError, VerifiedBundle};
use crate::error::ErrorCause;
use crate::keys::{IdentityKeyPair, KeyError, KeyPair, PrivateKey, PublicKey};
use crate::{kdf, Version};
use thiserror::Error;
use zeroize::Zeroizing;

// The peer's identity is a key type; X3DH's callers have always found it here too.
pub use crate::keys::RemoteIdentity;

/// Errors of the key agreement.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum X3dhError {
    /// The bundle is invalid (bad signature, bad key, …).
    #[error("invalid bundle: {0}")]
    InvalidBundle(#[from] BundleError),
    /// The bundle has no one-time prekey with the requested id.
    #[error("bundle has no one-time prekey {0}")]
    UnknownPreKey(u32),
    /// A key taking part is invalid or of low order.
    #[error("invalid key: {0}")]
    InvalidKey(#[from] KeyError),
}

impl X3dhError {
    /// Whom the error is due to.
    pub fn cause(&self) -> ErrorCause {
        match self {
            X3dhError::InvalidBundle(e) => e.cause(),
            // The caller picked a prekey the bundle does not offer.
            X3dhError::UnknownPreKey(_) => ErrorCause::LocalState,
            X3dhError::InvalidKey(e) => e.cause(),
        }
    }
}

/// What both sides of a session need from X3DH.
#[derive(Clone)]
pub struct SharedSecret {
    /// SK (= the first root key).
    pub sk: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedSecret(<redacted>)")
    }
}

/// The initiator's result: the secret plus what goes into the key exchange header.
#[derive(Debug, Clone)]
pub struct ActiveResult {
    /// The shared secret.
    pub secret: SharedSecret,
    /// Our ephemeral public key (`ek` / `baseKey`).
    pub ephemeral: PublicKey,
    /// The one-time prekey we used; the responder consumes it.
    pub pre_key_id: u32,
    /// The signed prekey we used.
    pub signed_pre_key_id: u32,
    /// The responder's signed prekey (our first remote ratchet key).
    pub signed_pre_key: PublicKey,
}

fn derive(version: Version, dhs: [&[u8; 32]; 4]) -> SharedSecret {
    let mut ikm = Zeroizing::new([0xffu8; 32 * 5]);
    for (i, dh) in dhs.iter().enumerate() {
        ikm[32 * (i + 1)..32 * (i + 2)].copy_from_slice(*dh);
    }
    let sk = kdf::hkdf::<32>(&[0u8; 32], ikm.as_ref(), version.x3dh_info());
    SharedSecret { sk }
}

/// The initiator's side: verifies the bundle, then agrees on SK with `ephemeral` (fresh) and
/// the bundle's one-time prekey `pre_key_id`.
pub fn active(
    own: &IdentityKeyPair,
    bundle: &Bundle,
    pre_key_id: u32,
    ephemeral: &KeyPair,
) -> Result<ActiveResult, X3dhError> {
    bundle.verify()?;
    let ik_b =
        RemoteIdentity::from_transported(bundle.version, bundle.identity_key).curve25519()?;
    agree(own, bundle, &ik_b, pre_key_id, ephemeral)
}

/// [`active`] from a bundle verified before (not verified again).
pub fn active_verified(
    own: &IdentityKeyPair,
    bundle: &VerifiedBundle,
    pre_key_id: u32,
    ephemeral: &KeyPair,
) -> Result<ActiveResult, X3dhError> {
    agree(
        own,
        bundle.bundle(),
        bundle.identity_curve25519(),
        pre_key_id,
        ephemeral,
    )
}

/// The initiator's agreement with a verified `bundle` whose identity is `ik_b` (Montgomery).
fn agree(
    own: &IdentityKeyPair,
    bundle: &Bundle,
    ik_b: &[u8; 32],
    pre_key_id: u32,
    ephemeral: &KeyPair,
) -> Result<ActiveResult, X3dhError> {
    let opk = bundle
        .prekeys
        .iter()
        .find(|p| p.id == pre_key_id)
        .ok_or(X3dhError::UnknownPreKey(pre_key_id))?;
    let ik_b = PublicKey(*ik_b);
    let spk_b = PublicKey(bundle.signed_prekey);
    let dh1 = own.private().diffie_hellman(&spk_b)?;
    let dh2 = ephemeral.private.diffie_hellman(&ik_b)?;
    let dh3 = ephemeral.private.diffie_hellman(&spk_b)?;
    let dh4 = ephemeral.private.diffie_hellman(&PublicKey(opk.key))?;
    Ok(ActiveResult {
        secret: derive(bundle.version, [&dh1, &dh2, &dh3, &dh4]),
        ephemeral: ephemeral.public,
        pre_key_id,
        signed_pre_key_id: bundle.signed_prekey_id,
        signed_pre_key: spk_b,
    })
}

/// The responder's side, from a received key exchange.
pub fn passive(
    version: Version,
    own: &IdentityKeyPair,
    signed_pre_key: &PrivateKey,
    one_time_pre_key: &PrivateKey,
    remote_identity: &RemoteIdentity,
    ephemeral: &PublicKey,
) -> Result<SharedSecret, X3dhError> {
    let ik_a = PublicKey(remote_identity.curve25519()?);
    let dh1 = signed_pre_key.diffie_hellman(&ik_a)?;
    let dh2 = own.private().diffie_hellman(ephemeral)?;
    let dh3 = signed_pre_key.diffie_hellman(ephemeral)?;
    let dh4 = one_time_pre_key.diffie_hellman(ephemeral)?;
    Ok(derive(version, [&dh1, &dh2, &dh3, &dh4]))
}
