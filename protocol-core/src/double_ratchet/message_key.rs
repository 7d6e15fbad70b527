//! Message keys: `HKDF(mk, salt = 0×32, info, 80)` → cipher key ‖ MAC key ‖ IV, and the
//! ratchet's AES-256-CBC encryption of the (small) key material it carries.

use crate::{kdf, Version};
use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;
type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

/// One message key (the HMAC output, before expansion).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MessageKey {
    seed: [u8; 32],
    index: u32,
}

/// The expanded keys of one message.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MessageKeys {
    /// AES-256 key.
    pub cipher_key: [u8; 32],
    /// HMAC-SHA-256 key.
    pub mac_key: [u8; 32],
    /// CBC IV.
    pub iv: [u8; 16],
}

impl MessageKey {
    pub(crate) fn new(seed: [u8; 32], index: u32) -> Self {
        Self { seed, index }
    }

    /// Chain index of this key.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The raw key (for vector tests and the skipped-key store).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.seed
    }

    /// Expands into cipher key, MAC key and IV (never IV first: pitfall 13).
    pub fn expand(&self, version: Version) -> MessageKeys {
        let o = kdf::hkdf::<80>(&[0u8; 32], &self.seed, version.message_key_info());
        let mut k = MessageKeys {
            cipher_key: [0; 32],
            mac_key: [0; 32],
            iv: [0; 16],
        };
        k.cipher_key.copy_from_slice(&o[..32]);
        k.mac_key.copy_from_slice(&o[32..64]);
        k.iv.copy_from_slice(&o[64..80]);
        k
    }
}

impl MessageKeys {
    /// AES-256-CBC with PKCS#7 padding.
    pub fn encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        Aes256CbcEnc::new((&self.cipher_key).into(), (&self.iv).into())
            .encrypt_padded_vec_mut::<Pkcs7>(plaintext)
    }

    /// Inverse of [`Self::encrypt`]; `None` on bad length or padding.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        Aes256CbcDec::new((&self.cipher_key).into(), (&self.iv).into())
            .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
            .ok()
            .map(Zeroizing::new)
    }
}

impl std::fmt::Debug for MessageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MessageKey {{ index: {}, key: <redacted> }}", self.index)
    }
}

impl std::fmt::Debug for MessageKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MessageKeys(<redacted>)")
    }
}
