//! The bounded store of message keys skipped by out-of-order delivery, keyed by
//! (ratchet public key, message index). Oldest keys are dropped first.

use super::message_key::MessageKey;
use crate::consts::MAX_SKIPPED_KEYS_PER_SESSION;
use std::collections::VecDeque;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// One stored skipped message key.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SkippedKey {
    /// The sender's ratchet public key of the chain.
    pub ratchet_key: [u8; 32],
    /// Message index in that chain.
    pub n: u32,
    /// The message key.
    pub message_key: [u8; 32],
}

impl std::fmt::Debug for SkippedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SkippedKey {{ ratchet_key: {:02x}{:02x}…, n: {}, message_key: <redacted> }}",
            self.ratchet_key[0], self.ratchet_key[1], self.n
        )
    }
}

impl SkippedKey {
    pub(crate) fn message_key(&self) -> MessageKey {
        MessageKey::new(self.message_key, self.n)
    }
}

/// What a committed decryption changed in the skipped-key store, so a caller that mirrors
/// the store (in SQLite) can apply exactly the same change.
#[derive(Debug, Default, Clone)]
pub struct SkippedKeyChanges {
    /// The key that was used (and removed), if the message was a late one.
    pub used: Option<([u8; 32], u32)>,
    /// Keys added (messages skipped by this one).
    pub added: Vec<SkippedKey>,
    /// Oldest keys dropped to stay within the bound.
    pub evicted: Vec<([u8; 32], u32)>,
}

impl SkippedKeyChanges {
    /// Whether the store changed at all.
    pub fn is_empty(&self) -> bool {
        self.used.is_none() && self.added.is_empty() && self.evicted.is_empty()
    }
}

/// The store itself, oldest first.
#[derive(Clone, Debug, Default)]
pub struct SkippedKeys {
    keys: VecDeque<SkippedKey>,
}

impl SkippedKeys {
    /// A store holding `keys` (oldest first), trimmed to the bound.
    pub fn from_keys(keys: Vec<SkippedKey>) -> Self {
        let mut s = Self { keys: keys.into() };
        while s.keys.len() > MAX_SKIPPED_KEYS_PER_SESSION {
            s.keys.pop_front();
        }
        s
    }

    /// Number of stored keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The stored keys, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &SkippedKey> {
        self.keys.iter()
    }

    pub(crate) fn find(&self, ratchet_key: &[u8; 32], n: u32) -> Option<MessageKey> {
        self.keys
            .iter()
            .find(|k| k.n == n && &k.ratchet_key == ratchet_key)
            .map(SkippedKey::message_key)
    }

    /// Removes `keys` (ratchet key, index); returns how many were stored.
    pub(crate) fn remove(&mut self, keys: &[([u8; 32], u32)]) -> usize {
        let before = self.keys.len();
        self.keys
            .retain(|k| !keys.iter().any(|(rk, n)| k.n == *n && &k.ratchet_key == rk));
        before - self.keys.len()
    }

    pub(crate) fn apply(
        &mut self,
        used: Option<([u8; 32], u32)>,
        added: Vec<SkippedKey>,
    ) -> SkippedKeyChanges {
        if let Some((rk, n)) = used {
            self.keys.retain(|k| !(k.n == n && k.ratchet_key == rk));
        }
        self.keys.extend(added.iter().cloned());
        let mut evicted = Vec::new();
        while self.keys.len() > MAX_SKIPPED_KEYS_PER_SESSION {
            if let Some(k) = self.keys.pop_front() {
                evicted.push((k.ratchet_key, k.n));
            }
        }
        SkippedKeyChanges {
            used,
            added,
            evicted,
        }
    }
}
