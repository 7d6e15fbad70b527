//! OMEMO 0.3 payload: AES-128-GCM with the 16-byte tag moved into the key material
//! (`key16 ‖ tag16`), ciphertext without tag in `<payload>` (OMEMO.md §2.6).

use super::PayloadError;
use aes::Aes128;
use aes_gcm::aead::consts::{U12, U16};
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::AesGcm;
use rand_core::{CryptoRng, RngCore};
use zeroize::{Zeroize, Zeroizing};

/// AES-128 key length.
pub const KEY_LEN: usize = 16;
/// GCM tag length.
pub const TAG_LEN: usize = 16;
/// IV length we send.
pub const IV_LEN: usize = 12;
/// Legacy IV length still accepted on receive (GHASH-derived J0).
pub const LEGACY_IV_LEN: usize = 16;

/// Result of encrypting a body.
pub struct EncryptedPayload {
    /// GCM ciphertext without the tag (content of `<payload>`).
    pub ciphertext: Vec<u8>,
    /// The IV (content of `<iv>`).
    pub iv: [u8; 12],
    /// `key16 ‖ tag16`: what the ratchet encrypts for each recipient device.
    pub key_material: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for EncryptedPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedPayload")
            .field("ciphertext_len", &self.ciphertext.len())
            .field("key_material", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Encrypts `plaintext` (the UTF-8 body) with a fresh random key and IV.
pub fn encrypt(plaintext: &[u8], rng: &mut (impl RngCore + CryptoRng)) -> EncryptedPayload {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill_bytes(key.as_mut());
    let mut iv = [0u8; IV_LEN];
    rng.fill_bytes(&mut iv);
    encrypt_with(&key, &iv, plaintext)
}

/// Deterministic encryption with a given key and IV (for tests and vectors).
pub fn encrypt_with(key: &[u8; 16], iv: &[u8; 12], plaintext: &[u8]) -> EncryptedPayload {
    let cipher = AesGcm::<Aes128, U12>::new(key.into());
    let mut ciphertext = plaintext.to_vec();
    let tag = match cipher.encrypt_in_place_detached(iv.into(), b"", &mut ciphertext) {
        Ok(tag) => tag,
        // Only fails beyond GCM's 64 GiB limit, which a Vec-held body cannot reach in
        // practice; fall back to an empty, undecryptable result instead of panicking.
        Err(_) => {
            ciphertext.zeroize();
            ciphertext.clear();
            Default::default()
        }
    };
    let mut key_material = Zeroizing::new([0u8; 32]);
    key_material[..KEY_LEN].copy_from_slice(key);
    key_material[KEY_LEN..].copy_from_slice(&tag);
    EncryptedPayload {
        ciphertext,
        iv: *iv,
        key_material,
    }
}

/// Decrypts a 0.3 payload.
///
/// `key_material` is what the ratchet gave us:
/// * 32 bytes (normal): `key ‖ tag`;
/// * more than 32: `key ‖ longer tag`, handled like Dino: everything after the key is appended
///   to the ciphertext and the last 16 bytes of the result are the tag;
/// * 16 bytes (legacy): key only, the tag is the last 16 bytes of `ciphertext`.
///
/// `iv` may be 12 bytes or (legacy) 16 bytes.
pub fn decrypt(
    key_material: &[u8],
    iv: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, PayloadError> {
    let len = key_material.len();
    if len != KEY_LEN && len < KEY_LEN + TAG_LEN {
        return Err(PayloadError::BadKeyMaterialLength { len });
    }
    if iv.len() != IV_LEN && iv.len() != LEGACY_IV_LEN {
        return Err(PayloadError::BadIvLength { len: iv.len() });
    }
    let (key, tag_part) = key_material.split_at(KEY_LEN);
    // One code path for all three layouts: ciphertext ‖ (km beyond the key) = ct ‖ tag.
    let mut buffer = Zeroizing::new(Vec::with_capacity(ciphertext.len() + tag_part.len()));
    buffer.extend_from_slice(ciphertext);
    buffer.extend_from_slice(tag_part);
    let ct_len = buffer
        .len()
        .checked_sub(TAG_LEN)
        .ok_or(PayloadError::BadCiphertextLength {
            len: ciphertext.len(),
        })?;
    let tag: [u8; TAG_LEN] = buffer.get(ct_len..).and_then(|t| t.try_into().ok()).ok_or(
        PayloadError::BadCiphertextLength {
            len: ciphertext.len(),
        },
    )?;
    buffer.truncate(ct_len);
    let result = if iv.len() == IV_LEN {
        AesGcm::<Aes128, U12>::new(key.into()).decrypt_in_place_detached(
            iv.into(),
            b"",
            &mut buffer,
            (&tag).into(),
        )
    } else {
        AesGcm::<Aes128, U16>::new(key.into()).decrypt_in_place_detached(
            iv.into(),
            b"",
            &mut buffer,
            (&tag).into(),
        )
    };
    result.map_err(|_| PayloadError::TagMismatch)?;
    Ok(buffer)
}

/// python-oldmemo's empty message / KeyTransport: 16 random bytes of key material (no tag)
/// and a random IV, with no `<payload>`.
pub fn key_transport(rng: &mut (impl RngCore + CryptoRng)) -> (Zeroizing<[u8; 16]>, [u8; 12]) {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill_bytes(key.as_mut());
    let mut iv = [0u8; IV_LEN];
    rng.fill_bytes(&mut iv);
    (key, iv)
}
