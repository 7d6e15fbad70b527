//! A device's session record: the current session state and up to
//! [`MAX_PREVIOUS_SESSIONS`] previous ones, newest first (libsignal's `SessionRecord`).
//!
//! A previous state is the session a rebuild replaced: the peer may still send on it (its
//! messages were under way, or both sides built a session at once). A message the current state
//! cannot decrypt is tried on the previous states in order, and the one that decrypts it
//! becomes current again, the current one moving to the front of the previous ones.
//!
//! The states may be stored apart (the current one read on every message, the previous ones
//! only when it fails): [`SessionRecord::decrypt`] on a record holding just the current state,
//! then, if [`SessionRecord::previous_may_decrypt`], [`SessionRecord::set_previous`] and
//! [`SessionRecord::decrypt_previous`] give the same answer as the whole lookup.

use super::{Decrypted, KeyExchange, Session, SessionError};
use crate::consts::MAX_PREVIOUS_SESSIONS;
use crate::double_ratchet::RatchetError;
use rand_core::CryptoRngCore;
use std::collections::VecDeque;

/// Which state of a record decrypted a message, as it was before the record changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateIndex {
    /// The current state: it moved on, the previous states are as they were.
    Current,
    /// The previous state at this index (0 = newest): it was taken out of the previous states
    /// and made current; the former current state, if any, is now the newest previous one.
    Previous(usize),
}

/// A message decrypted by one state of a record (which is already updated).
#[derive(Debug)]
pub struct RecordDecrypted {
    /// What the message carried.
    pub decrypted: Decrypted,
    /// The state that decrypted it.
    pub from: StateIndex,
}

/// The current session state of a device and its previous ones.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    current: Option<Session>,
    /// Newest first, at most [`MAX_PREVIOUS_SESSIONS`].
    previous: VecDeque<Session>,
}

impl SessionRecord {
    /// A record with `current` and no previous states.
    pub fn new(current: Option<Session>) -> Self {
        Self {
            current,
            previous: VecDeque::new(),
        }
    }

    /// Replaces the previous states with `previous`, newest first; beyond
    /// [`MAX_PREVIOUS_SESSIONS`] the oldest are left out.
    pub fn set_previous(&mut self, previous: impl IntoIterator<Item = Session>) {
        self.previous = previous.into_iter().take(MAX_PREVIOUS_SESSIONS).collect();
    }

    /// The current state.
    pub fn current(&self) -> Option<&Session> {
        self.current.as_ref()
    }

    /// The current state, giving the record up.
    pub fn into_current(self) -> Option<Session> {
        self.current
    }

    /// The previous states, newest first.
    pub fn previous(&self) -> impl ExactSizeIterator<Item = &Session> {
        self.previous.iter()
    }

    /// Whether the previous states may still decrypt a message the current state refused with
    /// `error`. Not after a duplicate: a replay is a replay, and no older state makes it new.
    pub fn previous_may_decrypt(error: &SessionError) -> bool {
        !matches!(
            error,
            SessionError::Ratchet(RatchetError::DuplicateMessage(_))
        )
    }

    /// Decrypts a normal message (`<key>` contents without the key exchange flag) with the
    /// current state, else with the first previous state that can; that one becomes current.
    /// On failure the record is unchanged and the error is the current state's
    /// ([`SessionError::NoSession`] without one): the previous states' errors say nothing
    /// about the message.
    pub fn decrypt(
        &mut self,
        bytes: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<RecordDecrypted, SessionError> {
        let current_error = match &mut self.current {
            // A failed decryption leaves the state as it was.
            Some(s) => match s.decrypt(bytes, rng) {
                Ok(decrypted) => {
                    return Ok(RecordDecrypted {
                        decrypted,
                        from: StateIndex::Current,
                    })
                }
                Err(e) if !Self::previous_may_decrypt(&e) => return Err(e),
                Err(e) => e,
            },
            None => SessionError::NoSession,
        };
        self.decrypt_previous(bytes, rng).ok_or(current_error)
    }

    /// The second half of [`Self::decrypt`]: the previous states only, newest first; the one
    /// that decrypts becomes current. `None` (and no change) if none can.
    pub fn decrypt_previous(
        &mut self,
        bytes: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Option<RecordDecrypted> {
        let (index, decrypted) = self
            .previous
            .iter_mut()
            .enumerate()
            .find_map(|(i, s)| s.decrypt(bytes, rng).ok().map(|d| (i, d)))?;
        self.promote(index);
        Some(RecordDecrypted {
            decrypted,
            from: StateIndex::Previous(index),
        })
    }

    /// Decrypts a key exchange with the state it built (the initiator resends it until we
    /// answer), current first; that state becomes current. `None` if no state was built from
    /// it (a new session is due); the state's error if it does not decrypt (record unchanged).
    pub fn decrypt_key_exchange(
        &mut self,
        kex: &KeyExchange,
        rng: &mut impl CryptoRngCore,
    ) -> Option<Result<RecordDecrypted, SessionError>> {
        let from = match &self.current {
            Some(s) if s.matches_key_exchange(kex) => StateIndex::Current,
            _ => StateIndex::Previous(
                self.previous
                    .iter()
                    .position(|s| s.matches_key_exchange(kex))?,
            ),
        };
        let state = match from {
            StateIndex::Current => self.current.as_mut(),
            StateIndex::Previous(i) => self.previous.get_mut(i),
        }?;
        Some(state.decrypt_key_exchange(kex, rng).map(|decrypted| {
            if let StateIndex::Previous(i) = from {
                self.promote(i);
            }
            RecordDecrypted { decrypted, from }
        }))
    }

    /// Makes `session` (a new one, built from a bundle or a key exchange) current; the current
    /// state becomes the newest previous one.
    pub fn replace_current(&mut self, session: Session) {
        self.archive_current();
        self.current = Some(session);
    }

    /// Makes the previous state `index` current, as libsignal does: it leaves the previous
    /// states first, then the current one is archived, so a full record keeps
    /// [`MAX_PREVIOUS_SESSIONS`] previous states.
    fn promote(&mut self, index: usize) {
        if let Some(state) = self.previous.remove(index) {
            self.replace_current(state);
        }
    }

    fn archive_current(&mut self) {
        if let Some(old) = self.current.take() {
            self.previous.push_front(old);
            self.previous.truncate(MAX_PREVIOUS_SESSIONS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{Bundle, PreKeyPublic};
    use crate::keys::identity::SignedPreKey;
    use crate::keys::{IdentityKeyPair, KeyPair};
    use crate::Version;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// Alice's and Bob's identities and Bob's signed prekey: sessions between them come from
    /// fresh one-time prekeys.
    struct Peers {
        alice: IdentityKeyPair,
        bob: IdentityKeyPair,
        spk: SignedPreKey,
        rng: StdRng,
    }

    impl Peers {
        fn new() -> Self {
            let mut rng = StdRng::seed_from_u64(18);
            let alice = IdentityKeyPair::generate(&mut rng);
            let bob = IdentityKeyPair::generate(&mut rng);
            let spk = SignedPreKey::generate(1, &bob, &mut rng);
            Self {
                alice,
                bob,
                spk,
                rng,
            }
        }

        /// A new session: Alice's side and Bob's side.
        fn session(&mut self, version: Version) -> (Session, Session) {
            let opk = KeyPair::generate(&mut self.rng);
            let prekeys = vec![PreKeyPublic {
                id: 3,
                key: opk.public.0,
            }];
            let bundle = Bundle::from_keys(version, &self.bob, &self.spk, prekeys);
            let mut alice = Session::initiate(&self.alice, &bundle, 3, &mut self.rng).unwrap();
            let first = alice.encrypt(&[1; 32]).unwrap().data;
            let kex = KeyExchange::parse(version, &first).unwrap();
            let (bob, _) = Session::respond(
                &self.bob,
                &kex,
                &self.spk.key_pair,
                &opk.private,
                &mut self.rng,
            )
            .unwrap();
            (alice, bob)
        }

        /// Alice's message on `alice` once Bob answered (no key exchange wrapper).
        fn message(&mut self, alice: &mut Session, bob: &mut Session) -> Vec<u8> {
            let answer = bob.encrypt(&[2; 32]).unwrap().data;
            alice.decrypt(&answer, &mut self.rng).unwrap();
            alice.encrypt(&[3; 32]).unwrap().data
        }
    }

    fn both() -> [Version; 2] {
        [Version::Oldmemo, Version::Twomemo]
    }

    fn state_bytes(record: &SessionRecord) -> Vec<Vec<u8>> {
        record
            .current()
            .into_iter()
            .chain(record.previous())
            .map(|s| s.to_bytes(true).to_vec())
            .collect()
    }

    #[test]
    fn current_state_decrypts_and_previous_states_stay() {
        for v in both() {
            let mut p = Peers::new();
            let (_, b_old) = p.session(v);
            let (mut a_new, mut b_new) = p.session(v);
            let msg = p.message(&mut a_new, &mut b_new);
            let mut record = SessionRecord::new(Some(b_new));
            record.set_previous([b_old]);
            let previous = state_bytes(&record)[1..].to_vec();
            let found = record.decrypt(&msg, &mut p.rng).unwrap();
            assert_eq!(found.from, StateIndex::Current);
            assert_eq!(*found.decrypted.plaintext, [3; 32]);
            assert_eq!(state_bytes(&record)[1..], previous);
        }
    }

    #[test]
    fn a_previous_state_decrypts_and_is_promoted() {
        for v in both() {
            let mut p = Peers::new();
            let (mut a1, mut b1) = p.session(v);
            let (_, b2) = p.session(v);
            let (_, b3) = p.session(v);
            let late = p.message(&mut a1, &mut b1);
            let b1_id = b1.key_exchange().ephemeral;
            let b3_id = b3.key_exchange().ephemeral;
            let mut record = SessionRecord::new(Some(b3));
            record.set_previous([b2, b1]);
            let found = record.decrypt(&late, &mut p.rng).unwrap();
            assert_eq!(found.from, StateIndex::Previous(1));
            assert_eq!(*found.decrypted.plaintext, [3; 32]);
            assert_eq!(record.current().unwrap().key_exchange().ephemeral, b1_id);
            let previous: Vec<_> = record
                .previous()
                .map(|s| s.key_exchange().ephemeral)
                .collect();
            assert_eq!(previous.len(), 2);
            assert_eq!(previous[0], b3_id, "the replaced current state comes first");
        }
    }

    #[test]
    fn a_duplicate_on_the_current_state_is_not_tried_on_older_ones() {
        for v in both() {
            let mut p = Peers::new();
            let (mut a, mut b) = p.session(v);
            let msg = p.message(&mut a, &mut b);
            // An older copy of the very same session could decrypt the message again.
            let before = b.clone();
            b.decrypt(&msg, &mut p.rng).unwrap();
            let mut record = SessionRecord::new(Some(b));
            record.set_previous([before]);
            let states = state_bytes(&record);
            let err = record.decrypt(&msg, &mut p.rng).unwrap_err();
            assert!(matches!(
                err,
                SessionError::Ratchet(RatchetError::DuplicateMessage(_))
            ));
            assert!(!SessionRecord::previous_may_decrypt(&err));
            assert_eq!(state_bytes(&record), states);
        }
    }

    #[test]
    fn a_failed_lookup_reports_the_current_state_and_changes_nothing() {
        for v in both() {
            let mut p = Peers::new();
            let (mut a, mut b) = p.session(v);
            let (_, other) = p.session(v);
            let mut forged = p.message(&mut a, &mut b);
            let last = forged.len() - 1;
            forged[last] ^= 1;
            let mut record = SessionRecord::new(Some(b));
            record.set_previous([other]);
            let states = state_bytes(&record);
            let err = record.decrypt(&forged, &mut p.rng).unwrap_err();
            assert!(matches!(err, SessionError::AuthenticationFailed), "{err}");
            assert_eq!(state_bytes(&record), states);

            let mut empty = SessionRecord::new(None);
            assert!(matches!(
                empty.decrypt(&forged, &mut p.rng),
                Err(SessionError::NoSession)
            ));
        }
    }

    #[test]
    fn the_split_lookup_answers_as_the_whole_one() {
        let mut p = Peers::new();
        let v = Version::Twomemo;
        let (mut a1, mut b1) = p.session(v);
        let (_, b2) = p.session(v);
        let late = p.message(&mut a1, &mut b1);
        // The previous states are given only once the current one failed.
        let mut record = SessionRecord::new(Some(b2));
        let err = record.decrypt(&late, &mut p.rng).unwrap_err();
        assert!(SessionRecord::previous_may_decrypt(&err));
        record.set_previous([b1]);
        let found = record.decrypt_previous(&late, &mut p.rng).unwrap();
        assert_eq!(found.from, StateIndex::Previous(0));
        assert!(record.decrypt_previous(&late, &mut p.rng).is_none());
    }

    #[test]
    fn the_bound_holds_when_archiving_and_promoting() {
        let mut p = Peers::new();
        let v = Version::Oldmemo;
        let mut sessions: Vec<(Session, Session)> = (0..MAX_PREVIOUS_SESSIONS + 3)
            .map(|_| p.session(v))
            .collect();
        let ids: Vec<_> = sessions
            .iter()
            .map(|(_, b)| b.key_exchange().ephemeral)
            .collect();
        let mut record = SessionRecord::new(None);
        record.set_previous(sessions.iter().map(|(_, b)| b.clone()));
        assert_eq!(record.previous().len(), MAX_PREVIOUS_SESSIONS);
        // Newest first: the first ones given are kept.
        let kept: Vec<_> = record
            .previous()
            .map(|s| s.key_exchange().ephemeral)
            .collect();
        assert_eq!(kept, ids[..MAX_PREVIOUS_SESSIONS]);

        for (_, b) in sessions.iter().skip(1) {
            record.replace_current(b.clone());
            assert!(record.previous().len() <= MAX_PREVIOUS_SESSIONS);
        }
        assert_eq!(record.previous().len(), MAX_PREVIOUS_SESSIONS);

        // Promoting from a full record keeps it full: the promoted state leaves first.
        let (a, b) = &mut sessions[MAX_PREVIOUS_SESSIONS + 1];
        let late = p.message(a, b);
        let found = record.decrypt(&late, &mut p.rng).unwrap();
        assert!(matches!(found.from, StateIndex::Previous(_)));
        assert_eq!(record.previous().len(), MAX_PREVIOUS_SESSIONS);
        assert_eq!(
            record.current().unwrap().key_exchange().ephemeral,
            ids[MAX_PREVIOUS_SESSIONS + 1]
        );
    }

    #[test]
    fn a_resent_key_exchange_goes_to_the_state_it_built() {
        for v in both() {
            let mut p = Peers::new();
            let (mut a1, b1) = p.session(v);
            let (_, b2) = p.session(v);
            // Alice is unconfirmed: her next message carries the key exchange again.
            let again = a1.encrypt(&[4; 32]).unwrap().data;
            let kex = KeyExchange::parse(v, &again).unwrap();
            let mut record = SessionRecord::new(Some(b2.clone()));
            assert!(record.decrypt_key_exchange(&kex, &mut p.rng).is_none());
            record.set_previous([b1]);
            let found = record
                .decrypt_key_exchange(&kex, &mut p.rng)
                .unwrap()
                .unwrap();
            assert_eq!(found.from, StateIndex::Previous(0));
            assert_eq!(*found.decrypted.plaintext, [4; 32]);
            let previous: Vec<_> = record
                .previous()
                .map(|s| s.key_exchange().ephemeral)
                .collect();
            assert_eq!(previous, [b2.key_exchange().ephemeral]);
            // Now the current state: decrypted again it is a duplicate, and nothing moves.
            let err = record
                .decrypt_key_exchange(&kex, &mut p.rng)
                .unwrap()
                .unwrap_err();
            assert!(matches!(
                err,
                SessionError::Ratchet(RatchetError::DuplicateMessage(_))
            ));
        }
    }
}
