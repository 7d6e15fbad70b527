//! OMEMO 2 payload (OMEMO.md §3.6):
//!
//! ```text
//! enc_key ‖ auth_key ‖ iv = HKDF-SHA-256(ikm = key, salt = 0×32, info = "OMEMO Payload", 80)
//! ct   = AES-256-CBC(enc_key, iv, PKCS#7(plaintext))
//! hmac = HMAC-SHA-256(auth_key, ct)[0..16]
//! key material = key(32) ‖ hmac(16)
//! ```

use super::PayloadError;
use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use aes::Aes256;
use hmac::{Hmac, Mac};
use rand_core::{CryptoRng, RngCore};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// HKDF info of the payload key derivation.
pub const PAYLOAD_INFO: &[u8] = b"OMEMO Payload";
/// Length of the random payload key.
pub const KEY_LEN: usize = 32;
/// Length of the truncated HMAC.
pub const HMAC_LEN: usize = 16;
/// Length of the key material handed to the ratchet.
pub const KEY_MATERIAL_LEN: usize = KEY_LEN + HMAC_LEN;
/// Plaintext the ratchet encrypts for an empty OMEMO 2 message.
pub const EMPTY_KEY_MATERIAL: [u8; 32] = [0; 32];

const BLOCK: usize = 16;

/// Result of encrypting an SCE envelope.
pub struct EncryptedPayload {
    /// AES-256-CBC ciphertext (content of `<payload>`).
    pub ciphertext: Vec<u8>,
    /// `key32 ‖ hmac16`: what the ratchet encrypts for each recipient device.
    pub key_material: Zeroizing<[u8; 48]>,
}

impl std::fmt::Debug for EncryptedPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedPayload")
            .field("ciphertext_len", &self.ciphertext.len())
            .field("key_material", &"<redacted>")
            .finish()
    }
}

/// The three keys derived from the payload key.
struct DerivedKeys {
    enc_key: Zeroizing<[u8; 32]>,
    auth_key: Zeroizing<[u8; 32]>,
    iv: Zeroizing<[u8; 16]>,
}

fn derive(key: &[u8]) -> DerivedKeys {
    let mut okm = Zeroizing::new([0u8; 80]);
    let hk = hkdf::Hkdf::<Sha256>::new(Some(&[0u8; 32]), key);
    // 80 bytes is far below HKDF-SHA-256's 8160-byte limit, so expand cannot fail;
    // the fallback keeps this panic-free.
    if hk.expand(PAYLOAD_INFO, okm.as_mut()).is_err() {
        okm.as_mut().fill(0);
    }
    let mut out = DerivedKeys {
        enc_key: Zeroizing::new([0; 32]),
        auth_key: Zeroizing::new([0; 32]),
        iv: Zeroizing::new([0; 16]),
    };
    out.enc_key.copy_from_slice(&okm[0..32]);
    out.auth_key.copy_from_slice(&okm[32..64]);
    out.iv.copy_from_slice(&okm[64..80]);
    out
}

fn truncated_hmac(auth_key: &[u8; 32], data: &[u8]) -> [u8; HMAC_LEN] {
    let mut out = [0u8; HMAC_LEN];
    // HMAC accepts keys of any length, so this cannot fail.
    if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(auth_key) {
        mac.update(data);
        let full = mac.finalize().into_bytes();
        out.copy_from_slice(&full[..HMAC_LEN]);
    }
    out
}

/// Encrypts `plaintext` (the serialized SCE envelope) with a fresh random key.
pub fn encrypt(plaintext: &[u8], rng: &mut (impl RngCore + CryptoRng)) -> EncryptedPayload {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill_bytes(key.as_mut());
    encrypt_with_key(&key, plaintext)
}

/// Deterministic encryption with a given payload key (for tests and vectors).
pub fn encrypt_with_key(key: &[u8; 32], plaintext: &[u8]) -> EncryptedPayload {
    let keys = derive(key);
    let ciphertext =
        cbc::Encryptor::<Aes256>::new(keys.enc_key.as_ref().into(), keys.iv.as_ref().into())
            .encrypt_padded_vec_mut::<Pkcs7>(plaintext);
    let hmac = truncated_hmac(&keys.auth_key, &ciphertext);
    let mut key_material = Zeroizing::new([0u8; KEY_MATERIAL_LEN]);
    key_material[..KEY_LEN].copy_from_slice(key);
    key_material[KEY_LEN..].copy_from_slice(&hmac);
    EncryptedPayload {
        ciphertext,
        key_material,
    }
}

/// Decrypts an OMEMO 2 payload; `key_material` must be the 48-byte `key ‖ hmac`.
/// The HMAC is checked (in constant time) before any decryption.
pub fn decrypt(key_material: &[u8], ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, PayloadError> {
    if key_material.len() != KEY_MATERIAL_LEN {
        return Err(PayloadError::BadKeyMaterialLength {
            len: key_material.len(),
        });
    }
    let (key, received_hmac) = key_material.split_at(KEY_LEN);
    let keys = derive(key);
    let expected = truncated_hmac(&keys.auth_key, ciphertext);
    if !bool::from(expected.ct_eq(received_hmac)) {
        return Err(PayloadError::HmacMismatch);
    }
    // chunks_exact instead of is_multiple_of: keeps the crate building on its MSRV (1.80).
    if ciphertext.is_empty() || !ciphertext.chunks_exact(BLOCK).remainder().is_empty() {
        return Err(PayloadError::BadCiphertextLength {
            len: ciphertext.len(),
        });
    }
    // Decrypt in a zeroizing buffer so a padding failure leaves no plaintext behind.
    let mut buffer = Zeroizing::new(ciphertext.to_vec());
    let len = cbc::Decryptor::<Aes256>::new(keys.enc_key.as_ref().into(), keys.iv.as_ref().into())
        .decrypt_padded_mut::<Pkcs7>(&mut buffer)
        .map_err(|_| PayloadError::BadPadding)?
        .len();
    buffer.truncate(len);
    Ok(buffer)
}
