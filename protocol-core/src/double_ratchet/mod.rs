//! The Double Ratchet (Signal spec), with each version's KDF constants.
//!
//! Decryption is two-phase so that a failure changes nothing: [`DoubleRatchet::prepare_decrypt`]
//! derives the message key and the would-be next state without touching `self`; the caller
//! authenticates and decrypts the message with that key and only then calls
//! [`DoubleRatchet::commit`].

pub mod chain_key;
pub mod message_key;
pub mod root_key;
pub mod skipped_keys;

use crate::consts::{MAX_PREVIOUS_RATCHET_KEYS, MAX_SKIP};
use crate::keys::{KeyError, KeyPair, PrivateKey, PublicKey};
use crate::Version;
use chain_key::ChainKey;
use message_key::MessageKey;
use rand_core::CryptoRngCore;
use root_key::RootKey;
use skipped_keys::{SkippedKey, SkippedKeyChanges, SkippedKeys};
use std::collections::VecDeque;
use thiserror::Error;

/// Errors of the ratchet itself (the wire layer adds its own).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RatchetError {
    /// The message is older than the receiving chain and its key is not stored: a replay
    /// or a duplicate.
    #[error("duplicate message (chain index {0} already used)")]
    DuplicateMessage(u32),
    /// The message would make us skip more than [`MAX_SKIP`] message keys.
    #[error("message skips {0} message keys, more than the limit")]
    TooManySkipped(u64),
    /// We cannot send yet (a responder sends only after receiving).
    #[error("no sending chain yet")]
    NoSendingChain,
    /// The message refers to a receiving chain we do not have.
    #[error("message for an unknown receiving chain")]
    NoReceivingChain,
    /// The sender's ratchet key is invalid (e.g. of low order).
    #[error("invalid ratchet key: {0}")]
    InvalidKey(#[from] KeyError),
}

/// The header of a ratchet message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The sender's current ratchet public key.
    pub ratchet_key: PublicKey,
    /// Index in the sending chain.
    pub n: u32,
    /// Length of the sender's previous sending chain.
    pub pn: u32,
}

/// The chain state, small and cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Chains {
    pub(crate) root_key: RootKey,
    pub(crate) own_ratchet: KeyPair,
    pub(crate) remote_ratchet: Option<PublicKey>,
    pub(crate) sending: Option<ChainKey>,
    pub(crate) receiving: Option<ChainKey>,
    pub(crate) previous_sending_length: u32,
    /// Ratchet keys of the peer's earlier chains, to tell a replay from garbage.
    pub(crate) previous_remote: VecDeque<PublicKey>,
}

/// A Double Ratchet session state.
#[derive(Clone, Debug)]
pub struct DoubleRatchet {
    pub(crate) version: Version,
    pub(crate) chains: Chains,
    pub(crate) skipped: SkippedKeys,
}

/// A decryption ready to be committed.
#[derive(Debug)]
pub struct PendingDecrypt {
    /// The message key to authenticate and decrypt with.
    pub message_key: MessageKey,
    next: Option<Chains>,
    used: Option<([u8; 32], u32)>,
    added: Vec<SkippedKey>,
}

fn skip_keys(chain: &mut ChainKey, until: u32, ratchet_key: &PublicKey, out: &mut Vec<SkippedKey>) {
    while chain.index() < until {
        let mk = chain.message_key();
        out.push(SkippedKey {
            ratchet_key: ratchet_key.0,
            n: chain.index(),
            message_key: *mk.as_bytes(),
        });
        *chain = chain.next();
    }
}

impl DoubleRatchet {
    /// The initiator's state after X3DH: the responder's signed prekey is the first remote
    /// ratchet key, and one root step gives the first sending chain.
    pub fn initiate(
        version: Version,
        shared_secret: &[u8; 32],
        remote_signed_pre_key: PublicKey,
        own_ratchet: KeyPair,
    ) -> Result<Self, RatchetError> {
        let dh = own_ratchet.private.diffie_hellman(&remote_signed_pre_key)?;
        let (root_key, sending) = RootKey(*shared_secret).advance(version, &dh);
        Ok(Self {
            version,
            chains: Chains {
                root_key,
                own_ratchet,
                remote_ratchet: Some(remote_signed_pre_key),
                sending: Some(sending),
                receiving: None,
                previous_sending_length: 0,
                previous_remote: VecDeque::new(),
            },
            skipped: SkippedKeys::default(),
        })
    }

    /// The responder's state after X3DH: our signed prekey is our first ratchet key; the
    /// chains start with the initiator's first message.
    pub fn respond(
        version: Version,
        shared_secret: &[u8; 32],
        own_signed_pre_key: KeyPair,
    ) -> Self {
        Self {
            version,
            chains: Chains {
                root_key: RootKey(*shared_secret),
                own_ratchet: own_signed_pre_key,
                remote_ratchet: None,
                sending: None,
                receiving: None,
                previous_sending_length: 0,
                previous_remote: VecDeque::new(),
            },
            skipped: SkippedKeys::default(),
        }
    }

    /// The version whose constants this ratchet uses.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Our current ratchet public key.
    pub fn own_ratchet_key(&self) -> PublicKey {
        self.chains.own_ratchet.public
    }

    /// The skipped-key store.
    pub fn skipped_keys(&self) -> &SkippedKeys {
        &self.skipped
    }

    /// Whether we can send (a responder can only after the first message arrived).
    pub fn can_send(&self) -> bool {
        self.chains.sending.is_some()
    }

    /// Advances the sending chain: the header and message key of the next message.
    pub fn encrypt(&mut self) -> Result<(Header, MessageKey), RatchetError> {
        let chain = self
            .chains
            .sending
            .as_mut()
            .ok_or(RatchetError::NoSendingChain)?;
        let mk = chain.message_key();
        let header = Header {
            ratchet_key: self.chains.own_ratchet.public,
            n: chain.index(),
            pn: self.chains.previous_sending_length,
        };
        *chain = chain.next();
        Ok((header, mk))
    }

    /// Derives the key for a received message without changing `self`.
    pub fn prepare_decrypt(
        &self,
        header: &Header,
        rng: &mut impl CryptoRngCore,
    ) -> Result<PendingDecrypt, RatchetError> {
        let dh = header.ratchet_key;
        if let Some(message_key) = self.skipped.find(&dh.0, header.n) {
            return Ok(PendingDecrypt {
                message_key,
                next: None,
                used: Some((dh.0, header.n)),
                added: Vec::new(),
            });
        }
        let mut next = self.chains.clone();
        let mut added = Vec::new();
        if next.remote_ratchet == Some(dh) {
            let chain = next
                .receiving
                .as_mut()
                .ok_or(RatchetError::NoReceivingChain)?;
            if header.n < chain.index() {
                return Err(RatchetError::DuplicateMessage(header.n));
            }
            let gap = u64::from(header.n - chain.index());
            if gap > u64::from(MAX_SKIP) {
                return Err(RatchetError::TooManySkipped(gap));
            }
            skip_keys(chain, header.n, &dh, &mut added);
        } else {
            if next.previous_remote.contains(&dh) {
                return Err(RatchetError::DuplicateMessage(header.n));
            }
            if header.n > MAX_SKIP {
                return Err(RatchetError::TooManySkipped(u64::from(header.n)));
            }
            // Keys left in the old receiving chain; like python-doubleratchet, a previous
            // chain too far behind is abandoned rather than refused.
            if let (Some(chain), Some(old)) = (next.receiving.as_mut(), next.remote_ratchet) {
                if header.pn > chain.index() && header.pn - chain.index() <= MAX_SKIP {
                    skip_keys(chain, header.pn, &old, &mut added);
                }
            }
            let dh_recv = next.own_ratchet.private.diffie_hellman(&dh)?;
            let (rk, mut receiving) = next.root_key.advance(self.version, &dh_recv);
            let own = KeyPair::from_private(PrivateKey::generate(rng));
            let dh_send = own.private.diffie_hellman(&dh)?;
            let (rk, sending) = rk.advance(self.version, &dh_send);
            next.previous_sending_length = next.sending.as_ref().map_or(0, ChainKey::index);
            if let Some(old) = next.remote_ratchet.replace(dh) {
                next.previous_remote.push_back(old);
                while next.previous_remote.len() > MAX_PREVIOUS_RATCHET_KEYS {
                    next.previous_remote.pop_front();
                }
            }
            next.root_key = rk;
            next.own_ratchet = own;
            next.sending = Some(sending);
            skip_keys(&mut receiving, header.n, &dh, &mut added);
            next.receiving = Some(receiving);
        }
        let Some(chain) = next.receiving.as_mut() else {
            return Err(RatchetError::NoReceivingChain);
        };
        let message_key = chain.message_key();
        *chain = chain.next();
        Ok(PendingDecrypt {
            message_key,
            next: Some(next),
            used: None,
            added,
        })
    }

    /// Applies a decryption whose message authenticated and decrypted.
    pub fn commit(&mut self, pending: PendingDecrypt) -> SkippedKeyChanges {
        if let Some(next) = pending.next {
            self.chains = next;
        }
        self.skipped.apply(pending.used, pending.added)
    }
}
