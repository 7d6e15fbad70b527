//! The Double Ratchet (Signal spec), with each version's KDF constants.
//!
//! Decryption is two-phase so that a failure changes nothing: [`DoubleRatchet::prepare_decrypt`]
//! derives the message key and the would-be next state without touching `self`; the caller
//! authenticates and decrypts the message with that key and only then calls
//! [`DoubleRatchet::commit`].
//!
//! * [`root_key`]: the root chain (`KDF_RK`).
//! * [`chain_key`]: sending and receiving chains (`KDF_CK`).
//! * [`message_key`]: message keys and the encryption of the key material they carry.
//! * [`skipped_keys`]: the bounded store of skipped message keys.

pub mod chain_key;
pub mod message_key;
pub mod root_key;
pub mod skipped_keys;

use crate::consts::{MAX_PREVIOUS_RATCHET_KEYS, MAX_PREVIOUS_RECEIVING_CHAINS, MAX_SKIP};
use crate::error::ErrorCause;
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
pub enum RatchetError {
    /// The message's key was already used: a replay or a duplicate. Only said when certain.
    #[error("duplicate message (chain index {0} already used)")]
    DuplicateMessage(u32),
    /// The message's key is no longer kept and it cannot be told whether it was ever used: it
    /// was skipped and then dropped to stay within [`crate::consts::MAX_SKIPPED_KEYS_PER_SESSION`],
    /// or its chain is older than those kept (or than a snapshot from before chains were kept).
    #[error("message key no longer kept (chain index {0})")]
    MessageKeyDropped(u32),
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

impl RatchetError {
    /// Whom the error is due to.
    pub fn cause(&self) -> ErrorCause {
        match self {
            RatchetError::DuplicateMessage(_)
            | RatchetError::TooManySkipped(_)
            | RatchetError::NoReceivingChain => ErrorCause::PeerMisbehaved,
            RatchetError::MessageKeyDropped(_) | RatchetError::NoSendingChain => {
                ErrorCause::LocalState
            }
            RatchetError::InvalidKey(e) => e.cause(),
        }
    }
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
    /// Keys below this index of the current receiving chain may have been dropped from the
    /// skipped-key store (so a miss there is not proof of a duplicate).
    pub(crate) receiving_dropped_below: u32,
    /// The peer's earlier receiving chains, newest last, so that their late messages decrypt
    /// whatever `pn` the sender wrote (libsignal writes the last index, not the count).
    pub(crate) previous_receiving: VecDeque<PreviousChain>,
}

/// A receiving chain that is no longer the current one.
#[derive(Clone, Debug)]
pub(crate) struct PreviousChain {
    pub(crate) ratchet_key: PublicKey,
    pub(crate) chain: ChainKey,
    /// As [`Chains::receiving_dropped_below`].
    pub(crate) dropped_below: u32,
}

impl Chains {
    /// The DH ratchet step for a message on a new chain of the peer's (ratchet key
    /// `header.ratchet_key`): the current receiving chain becomes a previous one (with its keys
    /// up to `header.pn` skipped), new receiving and sending chains are derived, and the new
    /// receiving chain is advanced to the message, whose key is returned.
    fn ratchet_step(
        &mut self,
        version: Version,
        header: &Header,
        rng: &mut impl CryptoRngCore,
        added: &mut Vec<SkippedKey>,
    ) -> Result<MessageKey, RatchetError> {
        let dh = header.ratchet_key;
        if self.previous_remote.contains(&dh) {
            // An earlier chain we no longer hold: a replay cannot be told from a late message.
            return Err(RatchetError::MessageKeyDropped(header.n));
        }
        if header.n > MAX_SKIP {
            return Err(RatchetError::TooManySkipped(u64::from(header.n)));
        }
        // Keys left in the old receiving chain up to `pn`; like python-doubleratchet, a
        // previous chain too far behind is not expanded. The chain itself is kept (bounded),
        // so messages past `pn` (libsignal's convention) still decrypt later.
        if let (Some(mut chain), Some(old)) = (self.receiving.take(), self.remote_ratchet) {
            if header.pn > chain.index() && header.pn - chain.index() <= MAX_SKIP {
                skip_keys(&mut chain, header.pn, &old, added);
            }
            self.previous_receiving.push_back(PreviousChain {
                ratchet_key: old,
                chain,
                dropped_below: self.receiving_dropped_below,
            });
            while self.previous_receiving.len() > MAX_PREVIOUS_RECEIVING_CHAINS {
                self.previous_receiving.pop_front();
            }
        }
        let dh_recv = self.own_ratchet.private.diffie_hellman(&dh)?;
        let (rk, mut receiving) = self.root_key.advance(version, &dh_recv);
        let own = KeyPair::from_private(PrivateKey::generate(rng));
        let dh_send = own.private.diffie_hellman(&dh)?;
        let (rk, sending) = rk.advance(version, &dh_send);
        self.previous_sending_length = self.sending.as_ref().map_or(0, ChainKey::index);
        if let Some(old) = self.remote_ratchet.replace(dh) {
            self.previous_remote.push_back(old);
            while self.previous_remote.len() > MAX_PREVIOUS_RATCHET_KEYS {
                self.previous_remote.pop_front();
            }
        }
        self.root_key = rk;
        self.own_ratchet = own;
        self.sending = Some(sending);
        self.receiving_dropped_below = 0;
        let message_key = advance_to(&mut receiving, header.n, 0, &dh, added)?;
        self.receiving = Some(receiving);
        Ok(message_key)
    }

    /// Records that the skipped key (`ratchet_key`, `n`) was dropped from the store.
    fn note_dropped(&mut self, ratchet_key: &[u8; 32], n: u32) {
        let below = n.saturating_add(1);
        if self.remote_ratchet.is_some_and(|k| &k.0 == ratchet_key) {
            self.receiving_dropped_below = self.receiving_dropped_below.max(below);
        } else if let Some(p) = self
            .previous_receiving
            .iter_mut()
            .find(|p| &p.ratchet_key.0 == ratchet_key)
        {
            p.dropped_below = p.dropped_below.max(below);
        }
    }
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

/// Advances `chain` to message `n` (storing the keys skipped on the way) and returns its key.
fn advance_to(
    chain: &mut ChainKey,
    n: u32,
    dropped_below: u32,
    ratchet_key: &PublicKey,
    out: &mut Vec<SkippedKey>,
) -> Result<MessageKey, RatchetError> {
    if n < chain.index() {
        return Err(if n < dropped_below {
            RatchetError::MessageKeyDropped(n)
        } else {
            RatchetError::DuplicateMessage(n)
        });
    }
    let gap = u64::from(n - chain.index());
    if gap > u64::from(MAX_SKIP) {
        return Err(RatchetError::TooManySkipped(gap));
    }
    skip_keys(chain, n, ratchet_key, out);
    let message_key = chain.message_key();
    *chain = chain.next();
    Ok(message_key)
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
                receiving_dropped_below: 0,
                previous_receiving: VecDeque::new(),
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
                receiving_dropped_below: 0,
                previous_receiving: VecDeque::new(),
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
        let (header, mk, next) = self.prepare_encrypt()?;
        self.chains.sending = Some(next);
        Ok((header, mk))
    }

    /// The header and message key of the next message and the sending chain after it,
    /// without changing `self`.
    pub(crate) fn prepare_encrypt(&self) -> Result<(Header, MessageKey, ChainKey), RatchetError> {
        let chain = self
            .chains
            .sending
            .as_ref()
            .ok_or(RatchetError::NoSendingChain)?;
        let header = Header {
            ratchet_key: self.chains.own_ratchet.public,
            n: chain.index(),
            pn: self.chains.previous_sending_length,
        };
        Ok((header, chain.message_key(), chain.next()))
    }

    /// Sets the sending chain to `next` if it is the step after the current one.
    pub(crate) fn commit_encrypt(&mut self, next: ChainKey) -> bool {
        match &self.chains.sending {
            Some(c) if c.index().checked_add(1) == Some(next.index()) => {
                self.chains.sending = Some(next);
                true
            }
            _ => false,
        }
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
        let message_key = if next.remote_ratchet == Some(dh) {
            let dropped_below = next.receiving_dropped_below;
            let chain = next
                .receiving
                .as_mut()
                .ok_or(RatchetError::NoReceivingChain)?;
            advance_to(chain, header.n, dropped_below, &dh, &mut added)?
        } else if let Some(prev) = next
            .previous_receiving
            .iter_mut()
            .find(|p| p.ratchet_key == dh)
        {
            advance_to(
                &mut prev.chain,
                header.n,
                prev.dropped_below,
                &dh,
                &mut added,
            )?
        } else {
            next.ratchet_step(self.version, header, rng, &mut added)?
        };
        Ok(PendingDecrypt {
            message_key,
            next: Some(next),
            used: None,
            added,
        })
    }

    /// Removes the skipped keys the caller's store deleted (they expired there): their late
    /// messages are then reported as [`RatchetError::MessageKeyDropped`], never as duplicates.
    /// Returns how many of them the store held.
    pub fn forget_skipped_keys(&mut self, keys: &[([u8; 32], u32)]) -> usize {
        let forgotten = self.skipped.remove(keys);
        for (ratchet_key, n) in keys {
            self.chains.note_dropped(ratchet_key, *n);
        }
        forgotten
    }

    /// Applies a decryption whose message authenticated and decrypted.
    pub fn commit(&mut self, pending: PendingDecrypt) -> SkippedKeyChanges {
        if let Some(next) = pending.next {
            self.chains = next;
        }
        let changes = self.skipped.apply(pending.used, pending.added);
        for (ratchet_key, n) in &changes.evicted {
            self.chains.note_dropped(ratchet_key, *n);
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::MAX_SKIPPED_KEYS_PER_SESSION;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// A sender and a receiver right after X3DH.
    fn pair(version: Version, rng: &mut StdRng) -> (DoubleRatchet, DoubleRatchet) {
        let sk = [7u8; 32];
        let bob_spk = KeyPair::generate(rng);
        let alice =
            DoubleRatchet::initiate(version, &sk, bob_spk.public, KeyPair::generate(rng)).unwrap();
        let bob = DoubleRatchet::respond(version, &sk, bob_spk);
        (alice, bob)
    }

    /// libsignal (libsignal-protocol-c/-java, libomemo-c) writes `pn` as the index of the last
    /// message of the previous chain (`max(count - 1, 0)`), python-omemo and omemod as the count.
    fn libsignal_pn(mut h: Header) -> Header {
        h.pn = h.pn.saturating_sub(1);
        h
    }

    /// The receiver decrypts `(h, mk)`: the key it derives must be the sender's.
    fn recv(
        r: &mut DoubleRatchet,
        h: &Header,
        mk: &MessageKey,
        rng: &mut StdRng,
    ) -> Result<(), RatchetError> {
        let p = r.prepare_decrypt(h, rng)?;
        assert_eq!(
            p.message_key.as_bytes(),
            mk.as_bytes(),
            "wrong key for n={}",
            h.n
        );
        r.commit(p);
        Ok(())
    }

    #[test]
    fn last_message_of_a_chain_arrives_after_the_next_chain_libsignal_pn() {
        for version in [Version::Oldmemo, Version::Twomemo] {
            for chain_len in [1u32, 2, 3, 7] {
                let mut rng = StdRng::seed_from_u64(u64::from(chain_len));
                let (mut alice, mut bob) = pair(version, &mut rng);
                // Chain 1 (alice): all delivered but the last.
                let c1: Vec<_> = (0..chain_len.max(2))
                    .map(|_| alice.encrypt().unwrap())
                    .collect();
                let (last, rest) = c1.split_last().unwrap();
                for (h, mk) in rest {
                    recv(&mut bob, &libsignal_pn(*h), mk, &mut rng).unwrap();
                }
                // The ratchet turns: bob answers, alice starts chain 2.
                let (h, mk) = bob.encrypt().unwrap();
                recv(&mut alice, &h, &mk, &mut rng).unwrap();
                let c2: Vec<_> = (0..chain_len).map(|_| alice.encrypt().unwrap()).collect();
                // The first message of chain 2, then the late last message of chain 1.
                recv(&mut bob, &libsignal_pn(c2[0].0), &c2[0].1, &mut rng).unwrap();
                recv(&mut bob, &libsignal_pn(last.0), &last.1, &mut rng).unwrap_or_else(|e| {
                    panic!(
                        "{version:?}, chain of {}: late last message refused: {e}",
                        c1.len()
                    )
                });
                for (h, mk) in &c2[1..] {
                    recv(&mut bob, &libsignal_pn(*h), mk, &mut rng).unwrap();
                }
                // Replays are duplicates, from either chain.
                for (h, mk) in [last, &c1[0], &c2[0]] {
                    assert_eq!(
                        recv(&mut bob, &libsignal_pn(*h), mk, &mut rng).err(),
                        Some(RatchetError::DuplicateMessage(h.n))
                    );
                }
            }
        }
    }

    /// Late messages of a previous chain beyond its `pn` (whatever the sender claimed) decrypt,
    /// and so do those of a chain several turns back.
    #[test]
    fn late_messages_of_older_chains_decrypt() {
        for version in [Version::Oldmemo, Version::Twomemo] {
            let mut rng = StdRng::seed_from_u64(11);
            let (mut alice, mut bob) = pair(version, &mut rng);
            let mut late = Vec::new();
            for _turn in 0..4 {
                let first = alice.encrypt().unwrap();
                recv(&mut bob, &libsignal_pn(first.0), &first.1, &mut rng).unwrap();
                late.push(alice.encrypt().unwrap());
                late.push(alice.encrypt().unwrap());
                let (h, mk) = bob.encrypt().unwrap();
                recv(&mut alice, &h, &mk, &mut rng).unwrap();
            }
            let (h, mk) = alice.encrypt().unwrap();
            recv(&mut bob, &libsignal_pn(h), &mk, &mut rng).unwrap();
            for (h, mk) in late.iter().rev() {
                recv(&mut bob, &libsignal_pn(*h), mk, &mut rng).unwrap();
            }
        }
    }

    /// A message whose skipped key was dropped to stay within the store's bound was never
    /// decrypted: it must not be called a duplicate.
    #[test]
    fn dropped_skipped_key_is_not_a_duplicate() {
        let mut rng = StdRng::seed_from_u64(12);
        let (mut alice, mut bob) = pair(Version::Twomemo, &mut rng);
        let per_chain = (MAX_SKIPPED_KEYS_PER_SESSION as u32) * 3 / 5;
        let mut chains = Vec::new();
        for _ in 0..2 {
            let c: Vec<_> = (0..=per_chain).map(|_| alice.encrypt().unwrap()).collect();
            let (h, mk) = c.last().unwrap();
            recv(&mut bob, h, mk, &mut rng).unwrap();
            let (h, mk) = bob.encrypt().unwrap();
            recv(&mut alice, &h, &mk, &mut rng).unwrap();
            chains.push(c);
        }
        assert_eq!(bob.skipped_keys().len(), MAX_SKIPPED_KEYS_PER_SESSION);
        // The oldest keys (chain 1, from n = 0) were dropped; later ones are kept.
        let (h, mk) = &chains[0][0];
        let err = recv(&mut bob, h, mk, &mut rng).unwrap_err();
        assert!(
            !matches!(err, RatchetError::DuplicateMessage(_)),
            "a message never decrypted was called a duplicate: {err}"
        );
        assert_eq!(err, RatchetError::MessageKeyDropped(0));
        let (h, mk) = &chains[0][per_chain as usize - 1];
        recv(&mut bob, h, mk, &mut rng).unwrap();
        assert_eq!(
            recv(&mut bob, h, mk, &mut rng).err(),
            Some(RatchetError::DuplicateMessage(h.n))
        );
    }

    /// A skipped key the caller's store expired: its message is a dropped key, not a
    /// duplicate, in the current receiving chain and in a previous one; the keys kept still
    /// decrypt.
    #[test]
    fn forgotten_skipped_key_is_not_a_duplicate() {
        let mut rng = StdRng::seed_from_u64(13);
        let (mut alice, mut bob) = pair(Version::Oldmemo, &mut rng);
        let first: Vec<_> = (0..3).map(|_| alice.encrypt().unwrap()).collect();
        recv(&mut bob, &first[2].0, &first[2].1, &mut rng).unwrap();
        let (h, mk) = bob.encrypt().unwrap();
        recv(&mut alice, &h, &mk, &mut rng).unwrap();
        let second: Vec<_> = (0..3).map(|_| alice.encrypt().unwrap()).collect();
        recv(&mut bob, &second[2].0, &second[2].1, &mut rng).unwrap();
        assert_eq!(bob.skipped_keys().len(), 4);
        let expired = [
            (first[0].0.ratchet_key.0, 0),
            (second[0].0.ratchet_key.0, 0),
            ([9; 32], 5),
        ];
        assert_eq!(bob.forget_skipped_keys(&expired), 2);
        for (h, mk) in [&first[0], &second[0]] {
            assert_eq!(
                recv(&mut bob, h, mk, &mut rng).err(),
                Some(RatchetError::MessageKeyDropped(0))
            );
        }
        recv(&mut bob, &first[1].0, &first[1].1, &mut rng).unwrap();
        recv(&mut bob, &second[1].0, &second[1].1, &mut rng).unwrap();
    }
}
