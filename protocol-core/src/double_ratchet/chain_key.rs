//! Sending and receiving chains: `mk = HMAC(ck, 0x01)`, `ck' = HMAC(ck, 0x02)`.

use super::message_key::MessageKey;
use crate::kdf;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A chain key and the index of the next message key it yields.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ChainKey {
    key: [u8; 32],
    index: u32,
}

impl ChainKey {
    pub(crate) fn new(key: [u8; 32], index: u32) -> Self {
        Self { key, index }
    }

    /// Index of the next message key.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The raw key (for vector tests and snapshots).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.key
    }

    /// The message key at [`Self::index`].
    pub fn message_key(&self) -> MessageKey {
        MessageKey::new(kdf::hmac_sha256(&self.key, &[&[0x01]]), self.index)
    }

    /// The chain key one step on.
    pub fn next(&self) -> ChainKey {
        // Indices never wrap: callers refuse to go past MAX_SKIP ahead, far below u32::MAX.
        ChainKey::new(
            kdf::hmac_sha256(&self.key, &[&[0x02]]),
            self.index.saturating_add(1),
        )
    }
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChainKey {{ index: {}, key: <redacted> }}", self.index)
    }
}
