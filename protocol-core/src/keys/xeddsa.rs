//! XEdDSA (Signal's "XEdDSA and VXEdDSA" §2.3) and libsignal's flavour of it, plus
//! Ed25519-compatible signing with an X25519 scalar (what OMEMO 2 publishes).
//!
//! All three signers share one core: `r = hash1(a ‖ M ‖ Z)`, `R = r·B`,
//! `s = r + SHA-512(R ‖ A ‖ M)·a`. They differ in which `a`/`A` they use and in
//! where the Edwards sign bit goes.

use super::conversion::curve25519_to_ed25519;
use super::{KeyError, PrivateKey};
use curve25519_dalek::constants::ED25519_BASEPOINT_TABLE;
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha512};
use zeroize::Zeroizing;

/// 64 bytes of fresh randomness per signature ("Z").
pub type Nonce = [u8; 64];

fn scalar_from_hash(h: Sha512) -> Scalar {
    let digest: [u8; 64] = h.finalize().into();
    Scalar::from_bytes_mod_order_wide(&digest)
}

/// The shared signing core. `a_bytes` are hashed into the nonce exactly as given (the
/// libraries hash the raw private key when it was not negated).
fn sign_core(a_bytes: &[u8; 32], a_pub: &[u8; 32], msg: &[u8], z: &Nonce) -> [u8; 64] {
    let a = Zeroizing::new(Scalar::from_bytes_mod_order(*a_bytes));
    let mut h1 = Sha512::new();
    h1.update([0xfe]);
    h1.update([0xff; 31]);
    h1.update(a_bytes);
    h1.update(msg);
    h1.update(z);
    let r = Zeroizing::new(scalar_from_hash(h1));
    let big_r = (&*r * ED25519_BASEPOINT_TABLE).compress().0;
    let mut h = Sha512::new();
    h.update(big_r);
    h.update(a_pub);
    h.update(msg);
    let h = scalar_from_hash(h);
    let s = h * *a + *r;
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&big_r);
    sig[32..].copy_from_slice(s.as_bytes());
    sig
}

/// The true Edwards public key `A = k·B` of an X25519 private key (sign bit as it falls).
pub fn ed25519_public(key: &PrivateKey) -> [u8; 32] {
    let a = Zeroizing::new(Scalar::from_bytes_mod_order(*key.as_bytes()));
    (&*a * ED25519_BASEPOINT_TABLE).compress().0
}

/// XEdDSA signature as the Signal paper defines it: `A` forced to sign bit 0 (negating the
/// scalar when needed), verifiable against the Montgomery key alone.
pub fn xeddsa_sign(key: &PrivateKey, msg: &[u8], z: &Nonce) -> [u8; 64] {
    let e = ed25519_public(key);
    if e[31] & 0x80 == 0 {
        return sign_core(key.as_bytes(), &e, msg, z);
    }
    let neg = Zeroizing::new(-Scalar::from_bytes_mod_order(*key.as_bytes()));
    let mut a_pub = e;
    a_pub[31] &= 0x7f;
    sign_core(neg.as_bytes(), &a_pub, msg, z)
}

/// Ed25519-compatible signature with the X25519 scalar and the true `A = k·B`, as python-x3dh
/// signs OMEMO 2 signed prekeys and device labels.
pub fn ed25519_sign(key: &PrivateKey, msg: &[u8], z: &Nonce) -> [u8; 64] {
    sign_core(key.as_bytes(), &ed25519_public(key), msg, z)
}

/// libsignal's flavour (OMEMO 0.3 `signedPreKeySignature`): an Ed25519 signature with the true
/// `A`, whose sign bit is stored in bit 7 of byte 63.
pub fn libsignal_sign(key: &PrivateKey, msg: &[u8], z: &Nonce) -> [u8; 64] {
    let a_pub = ed25519_public(key);
    let mut sig = sign_core(key.as_bytes(), &a_pub, msg, z);
    sig[63] = (sig[63] & 0x7f) | (a_pub[31] & 0x80);
    sig
}

/// Plain Ed25519 verification (RFC 8032, strict: rejects small-order keys and R, and s ≥ q).
pub fn ed25519_verify(ed_pub: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> Result<(), KeyError> {
    let vk = VerifyingKey::from_bytes(ed_pub).map_err(|_| KeyError::InvalidPoint)?;
    vk.verify_strict(msg, &Signature::from_bytes(sig))
        .map_err(|_| KeyError::InvalidSignature)
}

/// Verification of a signature by a Montgomery key, taking the Edwards sign bit from bit 7 of
/// byte 63 (libsignal's rule). Accepts both libsignal-flavour and strict XEdDSA signatures.
pub fn libsignal_verify(curve_pub: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> Result<(), KeyError> {
    let sign_bit = sig[63] >> 7;
    let mut sig = *sig;
    sig[63] &= 0x7f;
    if sig[63] & 0xe0 != 0 {
        return Err(KeyError::InvalidSignature);
    }
    let ed = curve25519_to_ed25519(curve_pub, sign_bit)?;
    ed25519_verify(&ed, msg, &sig)
}

/// Strict XEdDSA verification (the paper's rule: `A` with sign bit 0, bit 63.7 must be 0).
pub fn xeddsa_verify(curve_pub: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> Result<(), KeyError> {
    if sig[63] & 0xe0 != 0 {
        return Err(KeyError::InvalidSignature);
    }
    let ed = curve25519_to_ed25519(curve_pub, 0)?;
    ed25519_verify(&ed, msg, sig)
}
