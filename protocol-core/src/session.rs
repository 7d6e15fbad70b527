//! A session with one remote device in one version: X3DH + Double Ratchet + that version's
//! wire format and MAC.
//!
//! The key material a session carries is small (the payload key and tag); the payload itself
//! is encrypted separately (see [`crate::payload`]).
//!
//! * `record`: [`SessionRecord`], a device's current session state and its previous ones.
//! * `snapshot`: the storage form ([`SessionSnapshot`]) and its encoding.

use crate::bundle::{Bundle, VerifiedBundle};
use crate::double_ratchet::chain_key::ChainKey;
use crate::double_ratchet::message_key::MessageKey;
use crate::double_ratchet::skipped_keys::{SkippedKey, SkippedKeyChanges};
use crate::double_ratchet::{DoubleRatchet, Header, RatchetError};
use crate::error::ErrorCause;
use crate::keys::{IdentityKeyPair, KeyError, KeyPair, PrivateKey, PublicKey, RemoteIdentity};
use crate::wire::{oldmemo, twomemo, WireError};
use crate::x3dh::{self, X3dhError};
use crate::{kdf, Version};
use rand_core::CryptoRngCore;
use thiserror::Error;
use zeroize::Zeroizing;

mod record;
mod snapshot;
pub use crate::error::SnapshotError;
pub use record::{RecordDecrypted, SessionRecord, StateIndex};
pub use snapshot::{PreviousChainSnapshot, SessionSnapshot, SESSION_SNAPSHOT_FORMAT};

/// Why a message could not be decrypted (or a session not built). A failed call leaves the
/// session exactly as it was.
#[derive(Debug, Error)]
pub enum SessionError {
    /// The bytes are not a well-formed message of this version.
    #[error("malformed message: {0}")]
    Malformed(#[from] WireError),
    /// The MAC did not verify: forged, corrupted, or for another session.
    #[error("message authentication failed")]
    AuthenticationFailed,
    /// The ratchet refused the message (duplicate, too far ahead, …).
    #[error(transparent)]
    Ratchet(#[from] RatchetError),
    /// Key agreement failed.
    #[error(transparent)]
    X3dh(#[from] X3dhError),
    /// A key in the message is invalid.
    #[error("invalid key: {0}")]
    InvalidKey(#[from] KeyError),
    /// The key exchange carries no one-time prekey, which OMEMO requires.
    #[error("key exchange without a one-time prekey")]
    MissingPreKey,
    /// No session state decrypted the message and there is no current session to blame
    /// ([`SessionRecord::decrypt`] without any state).
    #[error("no session")]
    NoSession,
}

impl SessionError {
    /// Whom the error is due to.
    pub fn cause(&self) -> ErrorCause {
        match self {
            SessionError::Malformed(e) => e.cause(),
            SessionError::AuthenticationFailed | SessionError::MissingPreKey => {
                ErrorCause::PeerMisbehaved
            }
            SessionError::Ratchet(e) => e.cause(),
            SessionError::X3dh(e) => e.cause(),
            SessionError::InvalidKey(e) => e.cause(),
            SessionError::NoSession => ErrorCause::LocalState,
        }
    }
}

/// Who started the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We built it from the peer's bundle.
    Initiator,
    /// We built it from the peer's key exchange.
    Responder,
}

/// The key exchange header that built a session (its public parts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyExchangeInfo {
    /// The responder's one-time prekey id.
    pub pre_key_id: u32,
    /// The responder's signed prekey id.
    pub signed_pre_key_id: u32,
    /// The initiator's ephemeral key.
    pub ephemeral: PublicKey,
}

/// A received key exchange, parsed (either version).
#[derive(Debug, Clone)]
pub struct KeyExchange {
    /// Version it came in.
    pub version: Version,
    /// The header.
    pub info: KeyExchangeInfo,
    /// The initiator's identity, as transported.
    pub identity: RemoteIdentity,
    message: InnerMessage,
}

#[derive(Debug, Clone)]
enum InnerMessage {
    Oldmemo(Vec<u8>),
    Twomemo(twomemo::OMEMOAuthenticatedMessage),
}

/// Rejects X25519 keys with the (ignored) top bit set or u ≥ p: X25519 would treat them as
/// another key, which would make messages malleable outside the MAC.
fn canonical(key: [u8; 32]) -> Result<PublicKey, SessionError> {
    if crate::keys::conversion::is_canonical_u(&key) {
        Ok(PublicKey(key))
    } else {
        Err(SessionError::InvalidKey(KeyError::InvalidPoint))
    }
}

impl KeyExchange {
    /// Parses a key exchange (`<key prekey='true'>` / `<key kex='true'>` contents).
    pub fn parse(version: Version, bytes: &[u8]) -> Result<Self, SessionError> {
        let kex = Self::parse_fields(version, bytes)?;
        canonical(kex.info.ephemeral.0)?;
        if let RemoteIdentity::Curve25519(k) = kex.identity {
            canonical(k)?;
        }
        Ok(kex)
    }

    fn parse_fields(version: Version, bytes: &[u8]) -> Result<Self, SessionError> {
        match version {
            Version::Oldmemo => {
                let m = oldmemo::PreKeySignalMessage::parse(bytes)?;
                Ok(Self {
                    version,
                    info: KeyExchangeInfo {
                        pre_key_id: m.pre_key_id,
                        signed_pre_key_id: m.signed_pre_key_id,
                        ephemeral: PublicKey(m.base_key),
                    },
                    identity: RemoteIdentity::Curve25519(m.identity_key),
                    message: InnerMessage::Oldmemo(m.message),
                })
            }
            Version::Twomemo => {
                let m = twomemo::OMEMOKeyExchange::parse(bytes)?;
                Ok(Self {
                    version,
                    info: KeyExchangeInfo {
                        pre_key_id: m.pk_id,
                        signed_pre_key_id: m.spk_id,
                        ephemeral: PublicKey(m.ek),
                    },
                    identity: RemoteIdentity::Ed25519(m.ik),
                    message: InnerMessage::Twomemo(m.message),
                })
            }
        }
    }
}

/// The result of a successful decryption.
#[derive(Debug)]
pub struct Decrypted {
    /// The key material the message carried.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// Index of the message in the sender's chain (a heartbeat is due at
    /// [`crate::consts::HEARTBEAT_COUNTER`] and above).
    pub n: u32,
    /// How the skipped-key store changed.
    pub skipped: SkippedKeyChanges,
}

/// An encrypted key element for one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedKey {
    /// The `<key>` contents.
    pub data: Vec<u8>,
    /// Whether it is a key exchange (`prekey='true'` / `kex='true'`).
    pub kex: bool,
}

/// The chain step of an encryption prepared by [`Session::prepare_encrypt`], not yet applied.
pub struct PendingEncrypt {
    next_sending: ChainKey,
}

impl PendingEncrypt {
    pub(crate) fn next_sending(&self) -> &ChainKey {
        &self.next_sending
    }
}

impl std::fmt::Debug for PendingEncrypt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self { next_sending } = self;
        write!(
            f,
            "PendingEncrypt {{ index: {}, .. }}",
            next_sending.index()
        )
    }
}

/// A session with one remote device.
#[derive(Debug, Clone)]
pub struct Session {
    version: Version,
    ratchet: DoubleRatchet,
    role: Role,
    /// Our identity key as this version transports it.
    own_identity: [u8; 32],
    remote_identity: RemoteIdentity,
    /// Its Montgomery form, converted once (an Edwards→Montgomery map costs an inversion).
    remote_curve: [u8; 32],
    key_exchange: KeyExchangeInfo,
    /// The initiator keeps sending the key exchange until the peer answers.
    confirmed: bool,
}

fn own_transported(version: Version, own: &IdentityKeyPair) -> [u8; 32] {
    match version {
        Version::Oldmemo => *own.curve25519(),
        Version::Twomemo => *own.ed25519(),
    }
}

struct Parsed {
    header: Header,
    ciphertext: Vec<u8>,
    authenticated: Vec<u8>,
    mac: Vec<u8>,
}

impl Session {
    /// Builds a session from a peer's bundle (we are the initiator). `pre_key_id` picks the
    /// bundle's one-time prekey (choose it at random among the bundle's). The bundle is
    /// verified first.
    pub fn initiate(
        own: &IdentityKeyPair,
        bundle: &Bundle,
        pre_key_id: u32,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, SessionError> {
        let verified = VerifiedBundle::verify(bundle.clone()).map_err(X3dhError::from)?;
        Self::initiate_verified(own, &verified, pre_key_id, rng)
    }

    /// [`Self::initiate`] from a bundle verified before: no second signature check.
    pub fn initiate_verified(
        own: &IdentityKeyPair,
        bundle: &VerifiedBundle,
        pre_key_id: u32,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, SessionError> {
        let version = bundle.bundle().version;
        let ephemeral = KeyPair::generate(rng);
        let x = x3dh::active_verified(own, bundle, pre_key_id, &ephemeral)?;
        let ratchet = DoubleRatchet::initiate(
            version,
            &x.secret.sk,
            x.signed_pre_key,
            KeyPair::generate(rng),
        )?;
        Ok(Self {
            version,
            ratchet,
            role: Role::Initiator,
            own_identity: own_transported(version, own),
            remote_curve: *bundle.identity_curve25519(),
            remote_identity: RemoteIdentity::from_transported(
                version,
                bundle.bundle().identity_key,
            ),
            key_exchange: KeyExchangeInfo {
                pre_key_id: x.pre_key_id,
                signed_pre_key_id: x.signed_pre_key_id,
                ephemeral: x.ephemeral,
            },
            confirmed: false,
        })
    }

    /// Builds a session from a received key exchange (we are the responder) and decrypts the
    /// message it carries. `signed_pre_key` and `one_time_pre_key` are ours, looked up by the
    /// ids in `kex.info`. Nothing is built if the message does not authenticate.
    pub fn respond(
        own: &IdentityKeyPair,
        kex: &KeyExchange,
        signed_pre_key: &KeyPair,
        one_time_pre_key: &PrivateKey,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Self, Decrypted), SessionError> {
        let version = kex.version;
        let secret = x3dh::passive(
            version,
            own,
            &signed_pre_key.private,
            one_time_pre_key,
            &kex.identity,
            &kex.info.ephemeral,
        )?;
        let ratchet = DoubleRatchet::respond(version, &secret.sk, signed_pre_key.clone());
        let mut session = Self {
            version,
            ratchet,
            role: Role::Responder,
            own_identity: own_transported(version, own),
            remote_curve: kex.identity.curve25519()?,
            remote_identity: kex.identity,
            key_exchange: kex.info,
            confirmed: true,
        };
        let decrypted = session.decrypt_key_exchange(kex, rng)?;
        Ok((session, decrypted))
    }

    /// Whether `kex` is the key exchange this session was built from (the initiator resends
    /// it until we answer): then decrypt with [`Self::decrypt_key_exchange`] instead of
    /// building a new session.
    pub fn matches_key_exchange(&self, kex: &KeyExchange) -> bool {
        self.role == Role::Responder
            && self.version == kex.version
            && self.key_exchange == kex.info
            && self.remote_identity == kex.identity
    }

    /// Decrypts the message inside a key exchange with this session.
    pub fn decrypt_key_exchange(
        &mut self,
        kex: &KeyExchange,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Decrypted, SessionError> {
        let parsed = match &kex.message {
            InnerMessage::Oldmemo(bytes) => Self::parse_oldmemo(bytes)?,
            InnerMessage::Twomemo(am) => Self::parse_twomemo_inner(am)?,
        };
        self.decrypt_parsed(parsed, rng)
    }

    /// Decrypts a normal message (`<key>` contents without the key exchange flag).
    pub fn decrypt(
        &mut self,
        bytes: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<Decrypted, SessionError> {
        let parsed = match self.version {
            Version::Oldmemo => Self::parse_oldmemo(bytes)?,
            Version::Twomemo => {
                Self::parse_twomemo_inner(&twomemo::OMEMOAuthenticatedMessage::parse(bytes)?)?
            }
        };
        self.decrypt_parsed(parsed, rng)
    }

    /// Encrypts key material for the peer. While an initiated session is unconfirmed the
    /// result is wrapped in the key exchange.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<EncryptedKey, SessionError> {
        let (key, pending) = self.prepare_encrypt(plaintext)?;
        self.ratchet.commit_encrypt(pending.next_sending);
        Ok(key)
    }

    /// [`Self::encrypt`] without changing the session: the caller stores the state after it
    /// ([`Self::to_bytes_after`]) and then applies it with [`Self::commit_encrypt`], so a
    /// failed store leaves the session as stored without a copy of it to roll back to.
    /// Prepare at most one encryption at a time: a second one would reuse the message key.
    pub fn prepare_encrypt(
        &self,
        plaintext: &[u8],
    ) -> Result<(EncryptedKey, PendingEncrypt), SessionError> {
        let (header, mk, next_sending) = self.ratchet.prepare_encrypt()?;
        Ok((
            self.seal(&header, mk, plaintext),
            PendingEncrypt { next_sending },
        ))
    }

    /// Applies a prepared encryption. Returns false (and changes nothing) unless the session
    /// is still where it was when `pending` was prepared.
    pub fn commit_encrypt(&mut self, pending: PendingEncrypt) -> bool {
        self.ratchet.commit_encrypt(pending.next_sending)
    }

    fn seal(&self, header: &Header, mk: MessageKey, plaintext: &[u8]) -> EncryptedKey {
        let keys = mk.expand(self.version);
        let ciphertext = keys.encrypt(plaintext);
        let kex = self.role == Role::Initiator && !self.confirmed;
        let data = match self.version {
            Version::Oldmemo => {
                let msg = oldmemo::SignalMessage {
                    ratchet_key: header.ratchet_key.0,
                    counter: header.n,
                    previous_counter: header.pn,
                    ciphertext,
                }
                .encode();
                let mac = kdf::hmac_sha256(&keys.mac_key, &[&self.oldmemo_ad(true), &msg]);
                let mut signal = msg;
                signal.extend_from_slice(&mac[..oldmemo::MAC_LEN]);
                if kex {
                    oldmemo::PreKeySignalMessage {
                        registration_id: None,
                        pre_key_id: self.key_exchange.pre_key_id,
                        signed_pre_key_id: self.key_exchange.signed_pre_key_id,
                        base_key: self.key_exchange.ephemeral.0,
                        identity_key: self.own_identity,
                        message: signal,
                    }
                    .encode()
                } else {
                    signal
                }
            }
            Version::Twomemo => {
                let msg = twomemo::OMEMOMessage {
                    n: header.n,
                    pn: header.pn,
                    dh_pub: header.ratchet_key.0,
                    ciphertext,
                }
                .encode();
                let mac_full = kdf::hmac_sha256(&keys.mac_key, &[&self.twomemo_ad(), &msg]);
                let mut mac = [0u8; twomemo::MAC_LEN];
                mac.copy_from_slice(&mac_full[..twomemo::MAC_LEN]);
                let am = twomemo::OMEMOAuthenticatedMessage { mac, message: msg };
                if kex {
                    twomemo::OMEMOKeyExchange {
                        pk_id: self.key_exchange.pre_key_id,
                        spk_id: self.key_exchange.signed_pre_key_id,
                        ik: self.own_identity,
                        ek: self.key_exchange.ephemeral.0,
                        message: am,
                    }
                    .encode()
                } else {
                    am.encode()
                }
            }
        };
        EncryptedKey { data, kex }
    }

    fn parse_oldmemo(bytes: &[u8]) -> Result<Parsed, SessionError> {
        let p = oldmemo::parse_signal_message(bytes)?;
        Ok(Parsed {
            header: Header {
                ratchet_key: canonical(p.message.ratchet_key)?,
                n: p.message.counter,
                pn: p.message.previous_counter,
            },
            ciphertext: p.message.ciphertext,
            authenticated: p.authenticated,
            mac: p.mac.to_vec(),
        })
    }

    fn parse_twomemo_inner(
        am: &twomemo::OMEMOAuthenticatedMessage,
    ) -> Result<Parsed, SessionError> {
        let m = twomemo::OMEMOMessage::parse(&am.message)?;
        Ok(Parsed {
            header: Header {
                ratchet_key: canonical(m.dh_pub)?,
                n: m.n,
                pn: m.pn,
            },
            ciphertext: m.ciphertext,
            authenticated: am.message.clone(),
            mac: am.mac.to_vec(),
        })
    }

    fn decrypt_parsed(
        &mut self,
        parsed: Parsed,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Decrypted, SessionError> {
        let pending = self.ratchet.prepare_decrypt(&parsed.header, rng)?;
        let keys = pending.message_key.expand(self.version);
        let ad = match self.version {
            Version::Oldmemo => self.oldmemo_ad(false).to_vec(),
            Version::Twomemo => self.twomemo_ad().to_vec(),
        };
        // MAC first, in constant time; only then decrypt and unpad (pitfall 21).
        let mac_len = match self.version {
            Version::Oldmemo => oldmemo::MAC_LEN,
            Version::Twomemo => twomemo::MAC_LEN,
        };
        if !kdf::verify_truncated_hmac(
            &keys.mac_key,
            &[&ad, &parsed.authenticated],
            &parsed.mac,
            mac_len,
        ) {
            return Err(SessionError::AuthenticationFailed);
        }
        let plaintext = keys
            .decrypt(&parsed.ciphertext)
            .ok_or(SessionError::AuthenticationFailed)?;
        let skipped = self.ratchet.commit(pending);
        self.confirmed = true;
        Ok(Decrypted {
            plaintext,
            n: parsed.header.n,
            skipped,
        })
    }

    /// OMEMO 0.3 MAC associated data: sender ‖ receiver, each `0x05 ‖ u`.
    fn oldmemo_ad(&self, sending: bool) -> [u8; 66] {
        let own = PublicKey(self.own_identity).serialize_oldmemo();
        let remote = PublicKey(self.remote_identity.transported()).serialize_oldmemo();
        let (first, second) = if sending {
            (own, remote)
        } else {
            (remote, own)
        };
        let mut ad = [0u8; 66];
        ad[..33].copy_from_slice(&first);
        ad[33..].copy_from_slice(&second);
        ad
    }

    /// OMEMO 2 associated data: initiator ‖ responder Ed25519 keys, fixed for the session.
    fn twomemo_ad(&self) -> [u8; 64] {
        let remote = self.remote_identity.transported();
        let (first, second) = match self.role {
            Role::Initiator => (self.own_identity, remote),
            Role::Responder => (remote, self.own_identity),
        };
        let mut ad = [0u8; 64];
        ad[..32].copy_from_slice(&first);
        ad[32..].copy_from_slice(&second);
        ad
    }

    /// The version of this session.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Who started it.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the peer has answered (an initiator stops sending the key exchange then).
    pub fn confirmed(&self) -> bool {
        self.confirmed
    }

    /// The peer's identity key as transported.
    pub fn remote_identity(&self) -> &RemoteIdentity {
        &self.remote_identity
    }

    /// The peer's identity key in Montgomery form (for trust records and fingerprints).
    pub fn remote_curve25519(&self) -> &[u8; 32] {
        &self.remote_curve
    }

    /// The key exchange header that built the session.
    pub fn key_exchange(&self) -> &KeyExchangeInfo {
        &self.key_exchange
    }

    /// Whether we can encrypt on it now.
    pub fn can_send(&self) -> bool {
        self.ratchet.can_send()
    }

    /// The stored skipped message keys (oldest first), for persisting beside the snapshot.
    pub fn skipped_keys(&self) -> impl Iterator<Item = &SkippedKey> {
        self.ratchet.skipped_keys().iter()
    }

    /// Number of stored skipped message keys.
    pub fn skipped_key_count(&self) -> usize {
        self.ratchet.skipped_keys().len()
    }

    /// Forgets skipped message keys the caller deleted from its store (expired), so that
    /// their late messages fail as dropped keys rather than as duplicates. Returns how many
    /// of them this session held.
    pub fn forget_skipped_keys(&mut self, keys: &[([u8; 32], u32)]) -> usize {
        self.ratchet.forget_skipped_keys(keys)
    }
}
