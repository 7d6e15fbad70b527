//! Decryption of an `<encrypted>` element addressed to our device, in named steps read top to
//! bottom by [`Manager::decrypt`] (an element this very device sent is read back instead, from
//! what `encrypt` kept: `own_messages`):
//!
//! 1. **check** the element (the same rules for XML and JSON input) and **locate** every
//!    `<key>` for our device;
//! 2. **authenticate**: try each of those keys on the session candidates — the current session,
//!    the previous ones (protocol-core's [`SessionRecord`]), or a new one built from a key exchange
//!    (after identity pinning, the rebuild rate limit and the prekey rules) — on copies; a
//!    message that decrypts on a state found in a restored copy of the database is refused
//!    there as a possible replay;
//! 3. **judge**: trust of the sender's key, then the payload and its OMEMO 2 SCE envelope;
//! 4. **commit** everything in one transaction;
//! 5. let memory follow, and list the **follow-ups** (heartbeat, bundle, device list).
//!
//! Nothing is stored unless every step succeeds: a refused message changes nothing.

use super::account::{refill_prekey_pools, Account, OwnKeys};
use super::error::{ChangedIdentity, RateLimited};
use super::sessions::{session_row, SessionMeta, SlotGuard};
use super::{
    check_bare_jid, AccountLookupError, ErrorCause, InvalidJid, KeyTrust, Manager, StorageError,
};
use crate::events::{Action, Cause, Event};
use crate::storage::trust::{TrustLevel, TrustRow};
use crate::storage::{
    self, accounts, device_state, devices, prekeys, sessions as session_store, skipped_keys,
    trust as trust_store, DeviceAddr,
};
use protocol_core::consts::{HEARTBEAT_COUNTER, MAX_DEVICE_ID, MAX_PREVIOUS_SESSIONS};
use protocol_core::double_ratchet::skipped_keys::SkippedKeyChanges;
use protocol_core::double_ratchet::RatchetError;
use protocol_core::keys::fingerprint;
use protocol_core::payload::{self, PayloadError};
use protocol_core::sce::{parse_envelope, SceError};
use protocol_core::session::{
    Decrypted, KeyExchange, RecordDecrypted, Session, SessionError, SessionRecord, StateIndex,
};
use protocol_core::xml::{Encrypted, KeyElement, XmlError};
use protocol_core::{Plaintext, Version};
use rand::rngs::OsRng;
use serde::Serialize;
use zeroize::Zeroizing;

/// The sender of a decrypted message.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Sender {
    /// Bare JID.
    pub jid: String,
    /// Device id.
    pub device_id: u32,
    /// Fingerprint of its identity key.
    pub fingerprint: String,
    /// What to show: `trusted`; `undecided` (decrypted, but warn); or `unlisted` — the device
    /// is not on the sender's device list, so it is never `trusted` whatever its key's level
    /// (`key_trust`). Distrusted senders are refused.
    pub trust: String,
    /// Whether the device is on the sender's latest device list (in this namespace).
    pub listed: bool,
    /// The trust level of the key itself (`trusted` or `undecided`), listed or not.
    pub key_trust: String,
}

impl Sender {
    /// The sender `from`'s device `device_id`, whose key has `trust`.
    fn new(from: &str, device_id: u32, trust: &TrustRow, listed: bool) -> Self {
        let key_trust = trust.level.as_str();
        Self {
            jid: from.to_owned(),
            device_id,
            fingerprint: trust.fingerprint.clone(),
            trust: if listed { key_trust } else { UNLISTED }.to_owned(),
            listed,
            key_trust: key_trust.to_owned(),
        }
    }
}

/// `sender.trust` of a device that is not on its owner's device list.
pub const UNLISTED: &str = "unlisted";

/// The result of a decryption.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct DecryptOutcome {
    /// Namespace of the element.
    pub namespace: String,
    /// Who sent it.
    pub sender: Sender,
    /// The body text; absent for an empty (key transport / heartbeat) message.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub body: Option<Plaintext>,
    /// OMEMO 2: the decrypted SCE `<content>` (inner XML), for elements other than the body.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub content_xml: Option<Plaintext>,
    /// OMEMO 2: the envelope's `<from>`, `<to>` and `<time>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envelope: Option<EnvelopeInfo>,
    /// Whether it carried no payload.
    pub empty: bool,
    /// Whether it was a key exchange (a new session was built, or the same one confirmed).
    pub key_exchange: bool,
    /// Follow-up actions.
    pub actions: Vec<Action>,
    /// Whether this element was decrypted before (by any client): the same result again, with
    /// no follow-up actions and no ratchet change.
    pub redelivered: bool,
    /// When `redelivered`: unix seconds of the first decryption.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_decrypted_at: Option<i64>,
    /// Sent by this very device (a sent carbon, a room's reflection, an archived copy): what
    /// was sent, read back; `sender` is us.
    pub own: bool,
    /// When `own`: unix seconds it was sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<i64>,
}

impl DecryptOutcome {
    /// The answer for `element` from `from` (whose device is `listed` or not), opened, with no
    /// actions and not a redelivery.
    pub(super) fn new(
        (element, from, listed): (&Encrypted, &str, bool),
        trust: &TrustRow,
        opened: Opened,
        key_exchange: bool,
    ) -> Self {
        Self {
            namespace: element.version.namespace().to_owned(),
            sender: Sender::new(from, element.sid, trust, listed),
            body: opened.body,
            content_xml: opened.content_xml,
            envelope: opened.envelope,
            empty: opened.empty,
            key_exchange,
            actions: Vec::new(),
            redelivered: false,
            first_decrypted_at: None,
            own: false,
            sent_at: None,
        }
    }
}

/// SCE affix elements of an OMEMO 2 message.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct EnvelopeInfo {
    /// `<from jid>`.
    pub from: Option<String>,
    /// `<to jid>`.
    pub to: Option<String>,
    /// `<time stamp>`.
    pub time: Option<String>,
}

/// Where a message was received, to check the OMEMO 2 SCE envelope against.
#[derive(Debug, Clone, Default)]
pub struct Conversation {
    /// The stanza's bare `to`: our own JID in a 1:1 chat, the room's bare JID in a group chat.
    /// `None`: not checked (clients that cannot tell; see docs/rpc.md).
    pub to: Option<String>,
    /// A group chat message: it must carry `<to>`.
    pub group_chat: bool,
    /// When the stanza was sent (unix seconds: its XEP-0203 delay stamp, else when it
    /// arrived). OMEMO 2: an envelope `<time>` must lie within [`SCE_TIME_MARGIN_SECS`] of it.
    /// `None`: not checked.
    pub sent_at: Option<i64>,
}

/// How far an SCE `<time>` may lie from the stanza's sending time (XEP-0420 0.5 asks for "a
/// reasonable margin" and names none): clocks of devices without time sync drift by minutes,
/// and a server's delay stamp is the time it stored the message, not the sender's.
pub const SCE_TIME_MARGIN_SECS: i64 = 15 * 60;

/// Why `decrypt` failed. A refused message changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum DecryptError {
    /// The sender or the conversation is not a bare JID.
    #[error(transparent)]
    Jid(#[from] InvalidJid),
    /// No account to decrypt for.
    #[error(transparent)]
    Account(#[from] AccountLookupError),
    /// The element given as XML is not a well-formed `<encrypted>` of its namespace.
    #[error("invalid <encrypted>: {0}")]
    Unreadable(#[source] XmlError),
    /// The element breaks a rule of XEP-0384 (as the XML parser enforces it for elements given
    /// as JSON), or claims to come from this very device.
    #[error("invalid message: {0}")]
    InvalidElement(String),
    /// No `<key>` of the element is for our device.
    #[error("message is not encrypted for this device (it is for {})", device_list(.recipients))]
    NotForThisDevice {
        /// The device ids it was encrypted for.
        recipients: Vec<u32>,
    },
    /// Our key is not a message of its version, or a key or the key agreement in it is
    /// invalid (protocol-core says whose fault).
    #[error("invalid message: {0}")]
    Malformed(#[source] SessionError),
    /// The payload is not valid UTF-8 where text is due.
    #[error("invalid message: the {0} is not UTF-8")]
    NotUtf8(&'static str),
    /// The decrypted OMEMO 2 SCE envelope is malformed.
    #[error("invalid message: SCE envelope: {0}")]
    InvalidEnvelope(#[source] SceError),
    /// The key's MAC does not verify.
    #[error("message authentication failed")]
    AuthenticationFailed,
    /// The payload does not authenticate (or is malformed).
    #[error("message authentication failed: {0}")]
    Payload(#[source] PayloadError),
    /// Already decrypted once: a replay, or a duplicate that cannot be answered again.
    #[error("duplicate message: already decrypted")]
    DuplicateMessage,
    /// The message is too far ahead of its chain, or its key is no longer kept.
    #[error("{0}")]
    TooManySkipped(#[source] RatchetError),
    /// A normal message from a device we have no session with.
    #[error("no session with device {device_id} of {jid} in {namespace}")]
    NoSession {
        /// Owner.
        jid: String,
        /// Namespace.
        namespace: Version,
        /// Device id.
        device_id: u32,
    },
    /// A key exchange for a signed prekey we do not have (any longer).
    #[error("broken session: key exchange uses unknown signed prekey {id}")]
    UnknownSignedPreKey {
        /// The signed prekey id.
        id: u32,
        /// What starts a new session with the device when it needs one from us (no session, or
        /// one found in a restored copy): empty otherwise.
        actions: Vec<Action>,
    },
    /// A key exchange for a one-time prekey that is used or that we do not have.
    #[error(
        "broken session: key exchange uses one-time prekey {id} which is already used or unknown"
    )]
    PreKeyUnavailable {
        /// The one-time prekey id.
        id: u32,
        /// As for [`DecryptError::UnknownSignedPreKey`].
        actions: Vec<Action>,
    },
    /// The message decrypts on a session state found in a restored (older) copy of the
    /// database: it may be a replay of a message read after the copy was taken, so it is
    /// refused and nothing changes. `actions` start a new session with the device.
    #[error(
        "possible replay: the message decrypts on a session of device {device_id} of {jid} in \
         {namespace} that was restored from an older copy of the database; a new session is due"
    )]
    PossibleReplay {
        /// Owner.
        jid: String,
        /// Namespace.
        namespace: Version,
        /// Device id.
        device_id: u32,
        /// What restores the conversation: fetch a fresh bundle if none is stored, then send a
        /// heartbeat (a key exchange on a new session).
        actions: Vec<Action>,
    },
    /// The message does not decrypt on a session restored from an older copy of the database:
    /// the peer's side moved on after the copy. The session cannot continue; `actions` start a
    /// new one.
    #[error(
        "broken session: the session with device {device_id} of {jid} in {namespace} was \
         restored from an older copy of the database and cannot read this message ({source}); \
         a new session is due"
    )]
    RestoredSession {
        /// Owner.
        jid: String,
        /// Namespace.
        namespace: Version,
        /// Device id.
        device_id: u32,
        /// Why the message did not decrypt.
        source: Box<DecryptError>,
        /// As for [`DecryptError::PossibleReplay`].
        actions: Vec<Action>,
    },
    /// Our own state went missing in the middle of the decryption (not reached).
    #[error("broken session: {0}")]
    LostState(&'static str),
    /// The sender's identity key is distrusted.
    #[error("sender's identity key is distrusted")]
    Distrusted,
    /// A key exchange carries another identity than the one held for the device.
    #[error(transparent)]
    IdentityChanged(#[from] ChangedIdentity),
    /// The key exchange would replace the session once too often.
    #[error(transparent)]
    RateLimited(#[from] RateLimited),
    /// The OMEMO 2 SCE envelope does not match where the message came from or arrived (or,
    /// for our own message, it is read in another conversation than it was sent in).
    #[error("SCE envelope mismatch: {0}")]
    SceMismatch(String),
    /// The message comes from a device of another JID than `from` says (a client passing the
    /// wrong sender, or a message passed on by someone else).
    #[error("the message comes from device {device_id} of {owner}, not from {from}: pass the stanza's bare sender JID as `from`")]
    SenderMismatch {
        /// The request's `from`.
        from: String,
        /// The JID that lists the device (and holds its identity key).
        owner: String,
        /// Namespace.
        namespace: Version,
        /// The sender's device id.
        device_id: u32,
    },
    /// A group chat message from a device that is not on its sender's device list: refused
    /// (nothing changed) until the list names it.
    #[error("device {device_id} of {jid} is not on its {namespace} device list: a group chat message from it is refused until the list names it (fetch it, then decrypt again)")]
    UnlistedDevice {
        /// The sender.
        jid: String,
        /// Namespace.
        namespace: Version,
        /// Device id.
        device_id: u32,
        /// `fetch_devicelist` of the sender's list.
        actions: Vec<Action>,
    },
    /// From this very device, but no record of sending it is kept: sent before the retention
    /// window, with redelivery off, by another device that uses our device id, or altered.
    #[error("our own message, but not one this device keeps: sent longer ago than the redelivery window, or by another device with our device id, or altered")]
    UnknownOwnMessage,
    /// Our own message, with another payload than the one we sent.
    #[error("message authentication failed: our own message was altered")]
    OwnMessageAltered,
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

impl DecryptError {
    /// Whom the error is due to.
    pub fn cause(&self) -> ErrorCause {
        use DecryptError as E;
        match self {
            E::Jid(e) => e.cause(),
            E::Account(e) => e.cause(),
            E::Unreadable(e) => e.cause(),
            E::Malformed(e) => e.cause(),
            E::InvalidEnvelope(e) => e.cause(),
            E::Payload(e) => e.cause(),
            E::TooManySkipped(e) => e.cause(),
            E::RateLimited(e) => e.cause(),
            E::IdentityChanged(e) => e.cause(),
            E::Storage(e) => e.cause(),
            E::InvalidElement(_)
            | E::NotUtf8(_)
            | E::AuthenticationFailed
            | E::DuplicateMessage
            | E::SceMismatch(_)
            | E::OwnMessageAltered => ErrorCause::PeerMisbehaved,
            E::UnknownOwnMessage => ErrorCause::LocalState,
            // The sender did not know our device: our device list has not reached it.
            E::NotForThisDevice { .. } => ErrorCause::LocalState,
            E::NoSession { .. }
            | E::UnknownSignedPreKey { .. }
            | E::PreKeyUnavailable { .. }
            | E::PossibleReplay { .. }
            | E::RestoredSession { .. }
            | E::LostState(_) => ErrorCause::LocalState,
            E::Distrusted | E::UnlistedDevice { .. } => ErrorCause::Policy,
            E::SenderMismatch { .. } => ErrorCause::Request,
        }
    }
}

/// `1, 2, 3` as "devices 1, 2, 3"; none as "no device".
fn device_list(ids: &[u32]) -> String {
    if ids.is_empty() {
        return "no device".to_owned();
    }
    let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
    format!("devices {}", ids.join(", "))
}

/// What a session refusing a message from `addr` means for the decryption: every
/// protocol-core failure by name, its cause kept.
fn refused(e: SessionError, addr: &DeviceAddr) -> DecryptError {
    match e {
        SessionError::AuthenticationFailed => DecryptError::AuthenticationFailed,
        SessionError::Ratchet(RatchetError::DuplicateMessage(_)) => DecryptError::DuplicateMessage,
        SessionError::Ratchet(
            r @ (RatchetError::TooManySkipped(_) | RatchetError::MessageKeyDropped(_)),
        ) => DecryptError::TooManySkipped(r),
        SessionError::NoSession => DecryptError::NoSession {
            jid: addr.jid.clone(),
            namespace: addr.namespace,
            device_id: addr.device_id,
        },
        e @ (SessionError::Malformed(_)
        | SessionError::X3dh(_)
        | SessionError::InvalidKey(_)
        | SessionError::MissingPreKey
        | SessionError::Ratchet(
            RatchetError::NoSendingChain
            | RatchetError::NoReceivingChain
            | RatchetError::InvalidKey(_),
        )) => DecryptError::Malformed(e),
    }
}

/// The attempt a session record's lookup made on `slot`'s session: `previous` describes its
/// previous states.
fn attempt(
    record: SessionRecord,
    found: RecordDecrypted,
    slot: &SlotGuard,
    previous: &Previous,
    key_exchange: bool,
) -> Result<Attempt, DecryptError> {
    let lost = || DecryptError::LostState("the session record lost its state");
    let (origin, suspect) = match found.from {
        StateIndex::Current => (Origin::Current, slot.meta.suspect),
        StateIndex::Previous(i) => (
            Origin::Previous(previous.ids.get(i).copied().ok_or_else(lost)?),
            previous.suspect.get(i).copied().ok_or_else(lost)?,
        ),
    };
    Ok(Attempt {
        session: record.into_current().ok_or_else(lost)?,
        decrypted: found.decrypted,
        origin,
        key_exchange,
        suspect,
    })
}

/// The previous session states given to a record, in its order: their row ids and whether
/// each was archived from a suspect session.
#[derive(Default)]
struct Previous {
    ids: Vec<i64>,
    suspect: Vec<bool>,
}

/// What a key exchange did to our prekeys.
#[derive(Clone)]
struct PreKeyUse {
    id: u32,
    /// Kept hidden (catch-up) instead of deleted.
    catchup: bool,
    /// The key exchange's ephemeral key (a hidden prekey answers only it again).
    ephemeral: [u8; 32],
    /// The pool it came from.
    namespace: Option<Version>,
}

/// Which session state decrypted the message.
enum Origin {
    /// The current session.
    Current,
    /// A previous state (row id): it is promoted, the current one archived.
    Previous(i64),
    /// A new session from a key exchange; the current one (if any) is archived.
    New {
        prekey: PreKeyUse,
        /// It replaces a session (counted by the rebuild rate limit).
        replaces: bool,
        /// It consumes an identity the user accepted (`identity.accept`).
        accepted_pin: bool,
    },
}

/// A successful decryption of the ratchet layer, not yet committed.
pub(super) struct Attempt {
    pub(super) session: Session,
    pub(super) decrypted: Decrypted,
    origin: Origin,
    pub(super) key_exchange: bool,
    /// It decrypted on a state found in a restored copy (refused: a possible replay).
    suspect: bool,
}

/// The account settings a decryption depends on.
#[derive(Clone, Copy)]
struct Mode {
    trust: super::account::TrustMode,
    catchup: bool,
}

/// The decrypted payload.
pub(super) struct Opened {
    pub(super) body: Option<Plaintext>,
    pub(super) content_xml: Option<Plaintext>,
    pub(super) envelope: Option<EnvelopeInfo>,
    pub(super) empty: bool,
}

/// What a decryption's transaction writes, owned (it runs on the writer thread).
struct DecryptWrite {
    account_id: i64,
    addr: DeviceAddr,
    now: i64,
    row: session_store::SessionRow,
    skipped: SkippedWrite,
    /// The session moved away from, kept as a previous state (and whether it was suspect).
    archive: Option<(Zeroizing<Vec<u8>>, bool)>,
    /// The previous state (row id) that decrypted, promoted to current.
    promoted: Option<i64>,
    /// The prekey a new session consumed.
    prekey: Option<PreKeyUse>,
    /// The identity change the user accepted is used up.
    accepted_pin: bool,
    /// A new session from the peer's key exchange replaces one due for a rebuild after a
    /// restore: the rebuild is done.
    rebuilt: bool,
    trust: Option<TrustRow>,
    /// `last_seen` is due an update.
    touch: bool,
    defer_heartbeat: bool,
    redelivery: Option<crate::storage::redelivery::Record>,
}

/// How the session's skipped keys change.
enum SkippedWrite {
    /// The current session: the keys it used and added.
    Apply(SkippedKeyChanges),
    /// A promoted or new session: its keys replace the stored ones.
    Replace(Box<Session>),
}

/// What the transaction made: prekeys refilled, the bundle version, the redelivery row (and
/// whether its prune erased key material).
struct Written {
    refill: Vec<(prekeys::PreKeyRow, protocol_core::keys::KeyPair)>,
    bundle_version: Option<i64>,
    redelivery_id: Option<i64>,
    erased: bool,
}

impl DecryptWrite {
    /// The session's part of the transaction (the rest is set by the caller).
    fn of(account_id: i64, slot: &SlotGuard, attempt: &Attempt, now: i64) -> Self {
        let current = matches!(attempt.origin, Origin::Current);
        let mut meta = if current {
            slot.meta.clone()
        } else {
            SessionMeta::default()
        };
        meta.messages_received += 1;
        meta.unanswered = 0;
        let (prekey, accepted_pin) = match &attempt.origin {
            Origin::New {
                prekey,
                accepted_pin,
                ..
            } => (Some(prekey.clone()), *accepted_pin),
            _ => (None, false),
        };
        DecryptWrite {
            account_id,
            addr: slot.addr().clone(),
            now,
            row: session_row(slot.addr(), &attempt.session, &meta, now),
            skipped: if current {
                SkippedWrite::Apply(attempt.decrypted.skipped.clone())
            } else {
                SkippedWrite::Replace(Box::new(attempt.session.clone()))
            },
            archive: (!current)
                .then(|| {
                    let suspect = slot.meta.suspect;
                    slot.session.as_ref().map(|s| (s.to_bytes(true), suspect))
                })
                .flatten(),
            promoted: match attempt.origin {
                Origin::Previous(id) => Some(id),
                _ => None,
            },
            prekey,
            accepted_pin,
            rebuilt: false,
            trust: None,
            touch: false,
            defer_heartbeat: false,
            redelivery: None,
        }
    }

    /// Runs in the transaction.
    fn run(self, tx: &crate::storage::Db) -> Result<Written, StorageError> {
        let (a, now) = (&self.addr, self.now);
        // As the record promotes: the promoted state leaves the previous ones before the
        // current one joins them, the oldest beyond the bound dropped.
        if let Some(id) = self.promoted {
            device_state::delete_previous_session(tx, id)?;
        }
        if let Some((state, suspect)) = &self.archive {
            let archived = device_state::Archived {
                state,
                suspect: *suspect,
            };
            device_state::push_previous_session(tx, a, archived, now, MAX_PREVIOUS_SESSIONS)?;
        }
        session_store::upsert(tx, &self.row)?;
        match &self.skipped {
            SkippedWrite::Replace(s) => {
                skipped_keys::replace_for_session(tx, a, s.skipped_keys(), now)?
            }
            SkippedWrite::Apply(changes) => skipped_keys::apply_changes(tx, a, changes, now)?,
        }
        if self.accepted_pin {
            device_state::delete_identity_change(tx, a)?;
        }
        if self.rebuilt {
            crate::storage::rebuilds::clear(tx, a)?;
        }
        if let Some(t) = &self.trust {
            trust_store::set(tx, t)?;
        }
        if self.touch {
            devices::touch_last_seen(tx, a, now)?;
        }
        if self.defer_heartbeat {
            device_state::defer_heartbeat(tx, a, now)?;
        }
        // What a redelivery will need.
        let redelivery = self.redelivery.as_ref().map(|r| r.write(tx)).transpose()?;
        let mut written = Written {
            refill: Vec::new(),
            bundle_version: None,
            redelivery_id: redelivery.map(|(id, _)| id),
            erased: redelivery.and_then(|(_, p)| p).is_some_and(|p| p.erased()),
        };
        if let Some(p) = &self.prekey {
            if p.catchup {
                prekeys::mark_used(tx, self.account_id, p.id, now, &p.ephemeral)?;
            } else {
                prekeys::delete(tx, self.account_id, p.id)?;
            }
            written.refill = refill_prekey_pools(tx, self.account_id, now)?;
            written.bundle_version = Some(accounts::bump_bundle_version(tx, self.account_id)?);
        }
        Ok(written)
    }
}

/// The element being decrypted, where it came from and where it arrived.
struct Received<'a> {
    from: &'a str,
    element: &'a Encrypted,
    conv: &'a Conversation,
}

/// What step 3 found: the account's mode, the trust of the sender's key, the opened payload,
/// and whether a heartbeat is due.
struct Verdict {
    mode: Mode,
    trust: KeyTrust,
    opened: Opened,
    heartbeat: bool,
}

/// What the commit changed, for memory and follow-ups.
struct Committed {
    refill: Vec<(prekeys::PreKeyRow, protocol_core::keys::KeyPair)>,
    bundle_version: Option<i64>,
    /// Namespaces whose published bundle changed.
    bundles_changed: Vec<Version>,
    heartbeat_deferred: bool,
    /// The redelivery row written for the element.
    redelivery_id: Option<i64>,
}

impl Manager {
    /// Decrypts an element received from `from` (bare JID) in conversation `conv`.
    pub async fn decrypt(
        &self,
        account: Option<&str>,
        from: &str,
        element: Encrypted,
        conv: &Conversation,
    ) -> Result<DecryptOutcome, DecryptError> {
        check_bare_jid(from)?;
        // Normalised, as the redelivery store keeps it.
        let conv = &Conversation {
            to: conv.to.as_deref().map(check_bare_jid).transpose()?,
            group_chat: conv.group_chat,
            sent_at: conv.sent_at,
        };
        let acct = self.account(account)?;
        check_element(&element)?;
        // Sent by this very device: read back from what `encrypt` kept (`own_messages.rs`).
        if from == acct.jid && element.sid == acct.device_id {
            return self.read_own_message(&acct, &element, conv).await;
        }
        let ours = our_keys(&acct, from, &element)?;
        let addr = Self::addr(&acct, from, element.version, element.sid);
        // A device its sender does not list is never trusted; in a group chat (where a member
        // relays what others hand it) it is refused before anything changes.
        let listed = self.with_directory(acct.id, |d| {
            d.lists(&addr.jid, addr.namespace, addr.device_id)
        })?;
        if conv.group_chat && !listed {
            return Err(self.unlisted(&acct, &addr));
        }
        let mut slot = self.sessions.lock(&self.store, &addr).await?;
        // An element decrypted before (under this session lock, so a
        // concurrent first decryption has committed) is answered again without touching the
        // ratchet, after the same trust and SCE checks (`redelivery.rs`).
        let probe = match ours.first() {
            Some(key) => super::redelivery::Probe::new(from, &element, key),
            None => {
                return Err(DecryptError::NotForThisDevice {
                    recipients: Vec::new(),
                })
            }
        };
        let sender = (&element, from, listed);
        if let Some(again) = self.redeliver(&acct, sender, &probe, conv).await? {
            return Ok(again);
        }
        // A new session consumes one of our prekeys: hold the account's keys from the lookup
        // until memory reflects the commit, so no two key exchanges get the same prekey.
        let mut own_keys = None;
        let attempt = match self
            .authenticate(&acct, &addr, &slot, &ours, &mut own_keys)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                drop(own_keys);
                return Err(self.with_new_session_actions(&acct, &slot, e).await);
            }
        };
        self.refuse_restored(&acct, &addr, &attempt).await?;
        let received = Received {
            from,
            element: &element,
            conv,
        };
        let verdict = self
            .judge(&acct, &received, &attempt, own_keys.as_deref())
            .await?;
        let mut committed = self
            .commit(&acct, &slot, &attempt, &verdict, (&probe, conv))
            .await?;
        self.redelivery_committed(&probe, committed.redelivery_id);
        self.remember(&mut slot, own_keys.as_deref_mut(), &attempt, &mut committed);
        drop(slot);
        drop(own_keys);
        let actions = self
            .after_commit(&acct, &addr, &attempt, &verdict, &committed)
            .await;
        tracing::debug!(account = %acct.jid, peer = from, device = element.sid, ns = %addr.namespace, kex = attempt.key_exchange, "decrypted");
        let trust = &verdict.trust.row;
        Ok(DecryptOutcome {
            actions,
            ..DecryptOutcome::new(sender, trust, verdict.opened, attempt.key_exchange)
        })
    }

    /// Refuses a group chat message from `addr`, a device its owner does not list, and asks
    /// for the list (as an action of the error, announced as an event).
    fn unlisted(&self, acct: &Account, addr: &DeviceAddr) -> DecryptError {
        tracing::debug!(account = %acct.jid, peer = %addr.jid, device = addr.device_id, ns = %addr.namespace, "group chat message from an unlisted device refused");
        let mut actions = Vec::new();
        let fetch = Action::fetch_devicelist(&addr.jid, addr.namespace);
        self.push_action(acct, &mut actions, Cause::UnknownDevice, fetch);
        DecryptError::UnlistedDevice {
            jid: addr.jid.clone(),
            namespace: addr.namespace,
            device_id: addr.device_id,
            actions,
        }
    }

    /// Step 3: the sender's key must not be distrusted, the payload must open, and its OMEMO 2
    /// SCE envelope must match the conversation.
    async fn judge(
        &self,
        acct: &Account,
        received: &Received<'_>,
        attempt: &Attempt,
        held: Option<&OwnKeys>,
    ) -> Result<Verdict, DecryptError> {
        let mode = self.mode(acct, held).await?;
        let curve = *attempt.session.remote_curve25519();
        let trust = self.trust_for_key(acct, mode.trust, received.from, &curve)?;
        if trust.row.level == TrustLevel::Distrusted {
            return Err(DecryptError::Distrusted);
        }
        let element = received.element;
        let opened = open_payload(element.version, element, &attempt.decrypted)?;
        check_envelope(&opened, received.from, received.conv)?;
        Ok(Verdict {
            mode,
            trust,
            opened,
            heartbeat: attempt.key_exchange || attempt.decrypted.n >= HEARTBEAT_COUNTER,
        })
    }

    /// Step 5b, once the session is unlocked: new trust rows, the bound on sessions with
    /// unlisted devices, and the follow-ups.
    async fn after_commit(
        &self,
        acct: &Account,
        addr: &DeviceAddr,
        attempt: &Attempt,
        verdict: &Verdict,
        committed: &Committed,
    ) -> Vec<Action> {
        if verdict.trust.new {
            let row = vec![verdict.trust.row.clone()];
            self.remember_trust(acct, row, addr.namespace, addr.device_id);
        }
        if matches!(attempt.origin, Origin::New { .. }) {
            // Key exchanges from devices the contact never listed must not pile up.
            self.bound_unlisted_sessions(acct, addr).await;
        }
        self.follow_ups(
            acct,
            addr,
            committed,
            verdict.heartbeat,
            attempt.key_exchange,
        )
    }

    /// Step 2: tries every key for our device (0.3 may carry several: device ids of different
    /// JIDs collide in group chats) until one decrypts. Errors of the first key win.
    async fn authenticate<'k>(
        &self,
        acct: &'k Account,
        addr: &DeviceAddr,
        slot: &SlotGuard,
        ours: &[&KeyElement],
        own_keys: &mut Option<super::account::KeysGuard<'k>>,
    ) -> Result<Attempt, DecryptError> {
        let mut first_error = None;
        for key in ours {
            let tried = if key.kex {
                self.try_key_exchange(acct, addr, slot, &key.data, own_keys)
                    .await
            } else {
                self.try_message(addr, slot, &key.data).await
            };
            match tried {
                Ok(a) => return Ok(a),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or(DecryptError::NotForThisDevice {
            recipients: Vec::new(),
        }))
    }

    /// A normal message: the session record's lookup (the current state, then the previous
    /// ones), the previous states read only when the current one cannot decrypt.
    async fn try_message(
        &self,
        addr: &DeviceAddr,
        slot: &SlotGuard,
        data: &[u8],
    ) -> Result<Attempt, DecryptError> {
        let mut record = SessionRecord::new(slot.session.clone());
        let mut previous = Previous::default();
        let found = match record.decrypt(data, &mut OsRng) {
            Err(e) if SessionRecord::previous_may_decrypt(&e) => {
                previous = self.load_previous(addr, &mut record).await?;
                record.decrypt_previous(data, &mut OsRng).ok_or(e)
            }
            found => found,
        };
        match found {
            Ok(found) => attempt(record, found, slot, &previous, false),
            Err(SessionError::NoSession) if slot.session.is_none() => Err(self
                .sender_mismatch(addr, None)
                .unwrap_or_else(|| refused(SessionError::NoSession, addr))),
            Err(e) => Err(refused(e, addr)),
        }
    }

    /// A message claimed for `addr` that comes from a device of another JID (see
    /// [`Directory::owner_elsewhere`](super::directory::Directory::owner_elsewhere)).
    fn sender_mismatch(
        &self,
        addr: &DeviceAddr,
        identity: Option<&[u8; 32]>,
    ) -> Option<DecryptError> {
        let owner = match self.with_directory(addr.account_id, |d| {
            d.owner_elsewhere(&addr.jid, addr.namespace, addr.device_id, identity)
                .map(str::to_owned)
        }) {
            Ok(owner) => owner?,
            Err(e) => return Some(e.into()),
        };
        Some(DecryptError::SenderMismatch {
            from: addr.jid.clone(),
            owner,
            namespace: addr.namespace,
            device_id: addr.device_id,
        })
    }

    /// A key exchange: the session it built (current or previous), else a new session after
    /// identity pinning and the rebuild rate limit.
    async fn try_key_exchange<'k>(
        &self,
        acct: &'k Account,
        addr: &DeviceAddr,
        slot: &SlotGuard,
        data: &[u8],
        own_keys: &mut Option<super::account::KeysGuard<'k>>,
    ) -> Result<Attempt, DecryptError> {
        let kex = KeyExchange::parse(addr.namespace, data).map_err(|e| refused(e, addr))?;
        let mut record = SessionRecord::new(slot.session.clone());
        let mut previous = Previous::default();
        let mut found = record.decrypt_key_exchange(&kex, &mut OsRng);
        if found.is_none() {
            previous = self.load_previous(addr, &mut record).await?;
            found = record.decrypt_key_exchange(&kex, &mut OsRng);
        }
        if let Some(found) = found {
            let found = found.map_err(|e| refused(e, addr))?;
            return attempt(record, found, slot, &previous, true);
        }
        let new_identity = kex
            .identity
            .curve25519()
            .map_err(|e| refused(SessionError::InvalidKey(e), addr))?;
        // OMEMO 0.3 has no envelope naming the sender: before a prekey is used up, a key
        // exchange from a device another JID owns is not `from`'s. (OMEMO 2's is checked
        // against its envelope once decrypted.)
        if slot.session.is_none() && addr.namespace == Version::Oldmemo {
            if let Some(e) = self.sender_mismatch(addr, Some(&new_identity)) {
                return Err(e);
            }
        }
        let pin = self.pinned_identity(addr, slot.session.as_ref()).await?;
        if let Some(pinned) = pin.identity.filter(|k| *k != new_identity) {
            return Err(self.identity_changed(acct, addr, &pinned, &new_identity));
        }
        let replaces = slot.session.is_some();
        if replaces {
            self.check_rebuild_allowed(addr)?;
        }
        if own_keys.is_none() {
            *own_keys = Some(acct.keys.lock().await?);
        }
        let keys = own_keys
            .as_deref()
            .ok_or(DecryptError::LostState("account keys unavailable"))?;
        let responded = respond(acct, keys, &kex, slot).map_err(|e| match e {
            // Its prekey went to the device's real owner: the wrong `from`, not a broken session.
            DecryptError::UnknownSignedPreKey { .. } | DecryptError::PreKeyUnavailable { .. }
                if slot.session.is_none() =>
            {
                self.sender_mismatch(addr, Some(&new_identity)).unwrap_or(e)
            }
            e => e,
        })?;
        Ok(Attempt {
            session: responded.session,
            decrypted: responded.decrypted,
            origin: Origin::New {
                prekey: responded.prekey,
                replaces,
                accepted_pin: pin.accepted,
            },
            key_exchange: true,
            suspect: false,
        })
    }

    /// Gives `record` the previous session states of a device, newest first (unreadable ones
    /// skipped); returns their row ids and suspicion in the same order.
    async fn load_previous(
        &self,
        addr: &DeviceAddr,
        record: &mut SessionRecord,
    ) -> Result<Previous, StorageError> {
        let a = addr.clone();
        let rows = self
            .store
            .read(move |conn| device_state::previous_sessions(conn, &a))
            .await?;
        let mut previous = Previous::default();
        let mut states = Vec::with_capacity(rows.len());
        for r in rows {
            if let Ok(s) = Session::from_bytes(r.state.expose(), Vec::new()) {
                previous.ids.push(r.id);
                previous.suspect.push(r.suspect);
                states.push(s);
            }
        }
        record.set_previous(states);
        Ok(previous)
    }

    /// What starts a new session with the device now: a fresh bundle when none is stored, and
    /// a heartbeat (a key exchange on a new session when one is due). Each is announced too.
    async fn new_session_actions(&self, acct: &Account, addr: &DeviceAddr) -> Vec<Action> {
        let mut actions = Vec::new();
        if !matches!(
            self.stored_bundle(addr).await,
            Ok(super::peer_bundle::StoredBundle::Usable(_))
        ) {
            let a = Action::fetch_bundle(&addr.jid, addr.namespace, addr.device_id);
            self.push_action(acct, &mut actions, Cause::Rollback, a);
        }
        let a = Action::SendHeartbeat {
            jid: addr.jid.clone(),
            namespace: addr.namespace,
            device_id: addr.device_id,
        };
        self.push_action(acct, &mut actions, Cause::Rollback, a);
        actions
    }

    /// Step 2b: a message that decrypts on a state restored from an older copy may be a replay
    /// of one read after the copy was taken: refused (nothing changes), and a new session is
    /// started instead.
    async fn refuse_restored(
        &self,
        acct: &Account,
        addr: &DeviceAddr,
        attempt: &Attempt,
    ) -> Result<(), DecryptError> {
        if !attempt.suspect {
            return Ok(());
        }
        tracing::warn!(account = %acct.jid, peer = %addr.jid, device = addr.device_id, ns = %addr.namespace, "message on a session restored from an older copy refused as a possible replay");
        Err(DecryptError::PossibleReplay {
            jid: addr.jid.clone(),
            namespace: addr.namespace,
            device_id: addr.device_id,
            actions: self.new_session_actions(acct, addr).await,
        })
    }

    /// A message that fails from a device that needs a new session from us: a key exchange for
    /// a prekey we do not have when we have no session (or one restored from an older copy),
    /// or a message the restored session cannot read. The error says how to start one.
    async fn with_new_session_actions(
        &self,
        acct: &Account,
        slot: &SlotGuard,
        e: DecryptError,
    ) -> DecryptError {
        let addr = slot.addr();
        let restored = slot.meta.suspect || self.pending_rebuilds.contains(addr);
        let due = restored || slot.session.is_none();
        match e {
            DecryptError::PreKeyUnavailable { id, .. } if due => DecryptError::PreKeyUnavailable {
                id,
                actions: self.new_session_actions(acct, addr).await,
            },
            DecryptError::UnknownSignedPreKey { id, .. } if due => {
                DecryptError::UnknownSignedPreKey {
                    id,
                    actions: self.new_session_actions(acct, addr).await,
                }
            }
            // Not a duplicate: that one is certain, and a new session does not change it.
            e @ (DecryptError::AuthenticationFailed | DecryptError::TooManySkipped(_))
                if restored && slot.session.is_some() =>
            {
                DecryptError::RestoredSession {
                    jid: addr.jid.clone(),
                    namespace: addr.namespace,
                    device_id: addr.device_id,
                    source: Box::new(e),
                    actions: self.new_session_actions(acct, addr).await,
                }
            }
            e => e,
        }
    }

    /// The account's trust mode and whether catch-up is on (it ends by itself after
    /// [`super::trust::CATCHUP_TIMEOUT_SECS`]).
    async fn mode(&self, acct: &Account, held: Option<&OwnKeys>) -> Result<Mode, StorageError> {
        let read = |k: &OwnKeys| Mode {
            trust: k.trust_mode,
            catchup: k.catchup_active(storage::now()),
        };
        Ok(match held {
            Some(k) => read(k),
            None => read(&*acct.keys.lock().await?),
        })
    }

    /// Step 4: one transaction with every change.
    async fn commit(
        &self,
        acct: &Account,
        slot: &SlotGuard,
        attempt: &Attempt,
        verdict: &Verdict,
        (probe, conv): (&super::redelivery::Probe, &Conversation),
    ) -> Result<Committed, DecryptError> {
        let now = storage::now();
        let addr = slot.addr();
        let touch = self.with_directory(acct.id, |d| d.needs_touch(addr, now))?;
        let write = DecryptWrite {
            redelivery: self.redelivery_record(acct, probe, conv, attempt, now),
            defer_heartbeat: verdict.heartbeat && verdict.mode.catchup,
            trust: verdict.trust.new.then(|| verdict.trust.row.clone()),
            touch,
            rebuilt: matches!(attempt.origin, Origin::New { .. })
                && self.pending_rebuilds.contains(addr),
            ..DecryptWrite::of(acct.id, slot, attempt, now)
        };
        let rebuilt = write.rebuilt;
        let defer = write.defer_heartbeat;
        let prekey_ns = write.prekey.as_ref().and_then(|p| p.namespace);
        let written = self.store.write(move |tx| write.run(tx)).await?;
        if written.erased {
            self.key_material_erased();
        }
        if touch {
            self.mirror_directory(acct.id, |d| d.touched(addr, now));
        }
        if rebuilt {
            // The peer's new session replaced the restored one: nothing left to rebuild.
            self.pending_rebuilds.done(addr);
        }
        let mut bundles_changed: Vec<Version> = written
            .refill
            .iter()
            .filter_map(|(r, _)| r.namespace)
            .chain(prekey_ns)
            .collect();
        bundles_changed.sort();
        bundles_changed.dedup();
        Ok(Committed {
            refill: written.refill,
            bundle_version: written.bundle_version,
            bundles_changed,
            heartbeat_deferred: defer,
            redelivery_id: written.redelivery_id,
        })
    }

    /// Step 5a: memory follows the commit.
    fn remember(
        &self,
        slot: &mut SlotGuard,
        own_keys: Option<&mut OwnKeys>,
        attempt: &Attempt,
        committed: &mut Committed,
    ) {
        slot.session = Some(attempt.session.clone());
        slot.meta = match attempt.origin {
            Origin::Current => {
                let mut m = slot.meta.clone();
                m.messages_received += 1;
                m.unanswered = 0;
                m
            }
            _ => SessionMeta {
                created_at: storage::now(),
                messages_sent: 0,
                messages_received: 1,
                unanswered: 0,
                suspect: false,
            },
        };
        if let Origin::New {
            prekey, replaces, ..
        } = &attempt.origin
        {
            if *replaces {
                self.record_rebuild(slot.addr());
            }
            if let Some(keys) = own_keys {
                if prekey.catchup {
                    if let Some(p) = keys.prekeys.get_mut(&prekey.id) {
                        p.used = true;
                        p.used_by = Some(prekey.ephemeral);
                    }
                } else {
                    keys.prekeys.remove(&prekey.id);
                }
                keys.add_prekeys(std::mem::take(&mut committed.refill));
                if let Some(v) = committed.bundle_version {
                    keys.bundle_version = v;
                }
            }
        }
    }

    /// Step 5b: what the client should do now (each also announced as an event).
    fn follow_ups(
        &self,
        acct: &Account,
        addr: &DeviceAddr,
        committed: &Committed,
        heartbeat: bool,
        key_exchange: bool,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        for namespace in &committed.bundles_changed {
            let a = Action::PublishBundle {
                namespace: *namespace,
            };
            self.push_action(acct, &mut actions, Cause::PrekeyUsed, a);
        }
        // Every key exchange is answered (the peer keeps sending them until it hears from
        // us, and an answer may be lost); a long one-sided chain gets a heartbeat. During
        // catch-up they wait (persisted) until it ends.
        if heartbeat && !committed.heartbeat_deferred {
            let a = Action::SendHeartbeat {
                jid: addr.jid.clone(),
                namespace: addr.namespace,
                device_id: addr.device_id,
            };
            let cause = if key_exchange {
                Cause::NewSession
            } else {
                Cause::LongChain
            };
            self.push_action(acct, &mut actions, cause, a);
        }
        // Read in this decryption already (`listed`): in memory.
        if !self
            .with_directory(acct.id, |d| {
                d.lists(&addr.jid, addr.namespace, addr.device_id)
            })
            .unwrap_or(true)
        {
            let a = Action::fetch_devicelist(&addr.jid, addr.namespace);
            self.push_action(acct, &mut actions, Cause::UnknownDevice, a);
        }
        actions
    }

    /// Raises `identity_changed` and builds the refusal.
    fn identity_changed(
        &self,
        acct: &Account,
        addr: &DeviceAddr,
        old: &[u8; 32],
        new: &[u8; 32],
    ) -> DecryptError {
        let (old_fingerprint, new_fingerprint) = (fingerprint(old), fingerprint(new));
        tracing::warn!(account = %acct.jid, peer = %addr.jid, device = addr.device_id, ns = %addr.namespace, "key exchange with a changed identity refused");
        self.emit(Event::IdentityChanged {
            account: acct.jid.clone(),
            cause: Cause::KeyExchange,
            peer: addr.jid.clone(),
            namespace: addr.namespace,
            device_id: addr.device_id,
            old_fingerprint: old_fingerprint.clone(),
            new_fingerprint: new_fingerprint.clone(),
        });
        DecryptError::IdentityChanged(ChangedIdentity {
            jid: addr.jid.clone(),
            namespace: addr.namespace,
            device_id: addr.device_id,
            old_fingerprint,
            new_fingerprint,
        })
    }
}

/// Step 1a: the rules the XML parser enforces, for elements given as JSON too.
fn check_element(element: &Encrypted) -> Result<(), DecryptError> {
    let bad = |why: String| Err(DecryptError::InvalidElement(why));
    if element.sid == 0 || element.sid > MAX_DEVICE_ID {
        return bad(format!("sender device id {} out of range", element.sid));
    }
    if element.keys.is_empty() {
        return bad("<header> has no <key> (the message is encrypted for no device)".into());
    }
    if element.keys.len() > protocol_core::xml::MAX_KEYS {
        return bad("too many <key> elements".into());
    }
    for k in &element.keys {
        if k.rid == 0 || k.rid > MAX_DEVICE_ID {
            return bad(format!("recipient device id {} out of range", k.rid));
        }
        if element.version == Version::Twomemo
            && k.jid.as_deref().is_none_or(|j| j.trim().is_empty())
        {
            return bad("OMEMO 2 <key> without the JID of its <keys>".into());
        }
    }
    if element.version == Version::Oldmemo && element.payload.is_some() && element.iv.is_none() {
        return bad("OMEMO 0.3 message without <iv>".into());
    }
    Ok(())
}

/// Step 1b: every `<key>` addressed to our device.
fn our_keys<'e>(
    acct: &Account,
    from: &str,
    element: &'e Encrypted,
) -> Result<Vec<&'e KeyElement>, DecryptError> {
    let ours: Vec<&KeyElement> = element
        .keys
        .iter()
        .filter(|k| {
            k.rid == acct.device_id
                && (element.version == Version::Oldmemo || k.jid.as_deref() == Some(&acct.jid))
        })
        .collect();
    if ours.is_empty() {
        let mut recipients: Vec<u32> = element.keys.iter().map(|k| k.rid).collect();
        recipients.sort_unstable();
        recipients.dedup();
        return Err(DecryptError::NotForThisDevice { recipients });
    }
    if from == acct.jid && element.sid == acct.device_id {
        return Err(DecryptError::InvalidElement(
            "message claims to come from this very device".into(),
        ));
    }
    Ok(ours)
}

/// A session built from a key exchange, with the decryption of its message and the prekey
/// it used.
struct Responded {
    session: Session,
    decrypted: Decrypted,
    prekey: PreKeyUse,
}

/// Builds a session from a key exchange with our own prekeys. A prekey hidden during
/// catch-up answers only the key exchange that used it, and only while no newer session
/// exists (`slot` has none).
fn respond(
    acct: &Account,
    keys: &OwnKeys,
    kex: &KeyExchange,
    slot: &SlotGuard,
) -> Result<Responded, DecryptError> {
    let spk = keys
        .signed_prekeys
        .get(&kex.info.signed_pre_key_id)
        .map(|s| s.key.key_pair.clone())
        .ok_or(DecryptError::UnknownSignedPreKey {
            id: kex.info.signed_pre_key_id,
            actions: Vec::new(),
        })?;
    let ephemeral = kex.info.ephemeral.0;
    let no_session = slot.session.is_none();
    let prekey = keys
        .prekeys
        .get(&kex.info.pre_key_id)
        .filter(|p| !p.used || (p.used_by == Some(ephemeral) && no_session));
    let namespace = prekey.and_then(|p| p.namespace);
    let opk =
        prekey
            .map(|p| p.key_pair.private.clone())
            .ok_or(DecryptError::PreKeyUnavailable {
                id: kex.info.pre_key_id,
                actions: Vec::new(),
            })?;
    let catchup = keys.catchup_active(storage::now());
    let (session, decrypted) = Session::respond(&acct.identity, kex, &spk, &opk, &mut OsRng)
        .map_err(|e| refused(e, slot.addr()))?;
    Ok(Responded {
        session,
        decrypted,
        prekey: PreKeyUse {
            id: kex.info.pre_key_id,
            catchup,
            ephemeral,
            namespace,
        },
    })
}

pub(super) fn open_payload(
    ns: Version,
    element: &Encrypted,
    d: &Decrypted,
) -> Result<Opened, DecryptError> {
    let Some(ct) = element.payload.as_ref().filter(|p| !p.is_empty()) else {
        return Ok(Opened {
            body: None,
            content_xml: None,
            envelope: None,
            empty: true,
        });
    };
    match ns {
        Version::Oldmemo => {
            let iv = element.iv.as_deref().ok_or_else(|| {
                DecryptError::InvalidElement("OMEMO 0.3 message without <iv>".into())
            })?;
            let pt =
                payload::oldmemo::decrypt(&d.plaintext, iv, ct).map_err(DecryptError::Payload)?;
            let body = Plaintext::from_utf8(&pt).map_err(|_| DecryptError::NotUtf8("body"))?;
            Ok(Opened {
                body: Some(body),
                content_xml: None,
                envelope: None,
                empty: false,
            })
        }
        Version::Twomemo => {
            let pt = payload::twomemo::decrypt(&d.plaintext, ct).map_err(DecryptError::Payload)?;
            let text =
                std::str::from_utf8(&pt).map_err(|_| DecryptError::NotUtf8("SCE envelope"))?;
            let env = parse_envelope(text).map_err(DecryptError::InvalidEnvelope)?;
            Ok(Opened {
                body: env.body,
                content_xml: Some(env.content_xml),
                envelope: Some(EnvelopeInfo {
                    from: env.from,
                    to: env.to,
                    time: env.time,
                }),
                empty: false,
            })
        }
    }
}

pub(super) fn same_jid(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

/// Step 3b: the OMEMO 2 SCE envelope must name the sender the session authenticated and the
/// conversation the stanza arrived in; otherwise the server moved it (checked before the
/// commit, so the correctly delivered copy still decrypts). 0.3 has no envelope.
pub(super) fn check_envelope(
    opened: &Opened,
    from: &str,
    conv: &Conversation,
) -> Result<(), DecryptError> {
    let Some(env) = &opened.envelope else {
        return Ok(());
    };
    match env.from.as_deref() {
        Some(f) if same_jid(f, from) => {}
        Some(f) => {
            return Err(DecryptError::SceMismatch(format!(
                "<from> is {f}, the sender is {from}"
            )))
        }
        None => return Err(DecryptError::SceMismatch("no <from>".into())),
    }
    check_time(env.time.as_deref(), conv.sent_at)?;
    match (env.to.as_deref(), conv.to.as_deref()) {
        (Some(t), Some(expected)) if !same_jid(t, expected) => Err(DecryptError::SceMismatch(
            format!("<to> is {t}, the message arrived at {expected}"),
        )),
        (None, Some(expected)) if conv.group_chat => Err(DecryptError::SceMismatch(format!(
            "group chat message without <to> (arrived at {expected})"
        ))),
        (None, None) if conv.group_chat => Err(DecryptError::SceMismatch(
            "group chat message without <to>".into(),
        )),
        _ => Ok(()),
    }
}

/// The envelope's `<time>` against the stanza's sending time, when both are known.
fn check_time(time: Option<&str>, sent_at: Option<i64>) -> Result<(), DecryptError> {
    let (Some(time), Some(sent_at)) = (time, sent_at) else {
        return Ok(());
    };
    let Some(t) = protocol_core::datetime::parse(time) else {
        return Err(DecryptError::SceMismatch(format!(
            "<time> {time} is not an XEP-0082 DateTime"
        )));
    };
    if (t - sent_at).abs() > SCE_TIME_MARGIN_SECS {
        return Err(DecryptError::SceMismatch(format!(
            "<time> {time} is {} s away from when the stanza was sent (at most {SCE_TIME_MARGIN_SECS} s)",
            (t - sent_at).abs()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened(from: Option<&str>, to: Option<&str>) -> Opened {
        Opened {
            body: Some("hi".into()),
            content_xml: None,
            envelope: Some(EnvelopeInfo {
                from: from.map(str::to_owned),
                to: to.map(str::to_owned),
                time: None,
            }),
            empty: false,
        }
    }

    fn conv(to: Option<&str>, group_chat: bool) -> Conversation {
        Conversation {
            to: to.map(str::to_owned),
            group_chat,
            sent_at: None,
        }
    }

    fn refused(r: Result<(), DecryptError>) -> bool {
        matches!(r, Err(DecryptError::SceMismatch(_)))
    }

    #[test]
    fn envelope_checks() {
        let room = "room@muc.example";
        let ok = opened(Some("b@x"), Some(room));
        assert!(check_envelope(&ok, "b@x", &conv(Some(room), true)).is_ok());
        assert!(check_envelope(&ok, "B@X", &conv(Some("ROOM@muc.example"), true)).is_ok());
        assert!(check_envelope(&ok, "b@x", &conv(None, false)).is_ok());
        assert!(refused(check_envelope(&ok, "c@x", &conv(Some(room), true))));
        assert!(refused(check_envelope(
            &ok,
            "b@x",
            &conv(Some("other@muc.example"), true)
        )));
        // Group chat without <to>, with or without a known conversation.
        let no_to = opened(Some("b@x"), None);
        assert!(refused(check_envelope(
            &no_to,
            "b@x",
            &conv(Some(room), true)
        )));
        assert!(refused(check_envelope(&no_to, "b@x", &conv(None, true))));
        // 1:1 without <to>: nothing to compare (transition).
        assert!(check_envelope(&no_to, "b@x", &conv(Some("a@x"), false)).is_ok());
        // No <from>: refused.
        assert!(refused(check_envelope(
            &opened(None, Some(room)),
            "b@x",
            &conv(None, false)
        )));
        // 0.3 and empty messages carry no envelope.
        let none = Opened {
            body: None,
            content_xml: None,
            envelope: None,
            empty: true,
        };
        assert!(check_envelope(&none, "b@x", &conv(Some(room), true)).is_ok());
    }

    #[test]
    fn envelope_time_is_checked_against_the_sending_time() {
        let mut with_time = opened(Some("b@x"), Some("a@x"));
        if let Some(env) = with_time.envelope.as_mut() {
            env.time = Some("2026-07-01T14:34:56.789+02:00".to_owned());
        }
        let sent = |t: Option<i64>| Conversation {
            sent_at: t,
            ..conv(Some("a@x"), false)
        };
        let at = 1_782_909_296;
        for ok in [
            None,
            Some(at),
            Some(at - SCE_TIME_MARGIN_SECS),
            Some(at + SCE_TIME_MARGIN_SECS),
        ] {
            assert!(
                check_envelope(&with_time, "b@x", &sent(ok)).is_ok(),
                "{ok:?}"
            );
        }
        for off in [Some(at - SCE_TIME_MARGIN_SECS - 1), Some(at + 3600)] {
            assert!(
                refused(check_envelope(&with_time, "b@x", &sent(off))),
                "{off:?}"
            );
        }
        // No <time> (it is optional), or a stamp that is no DateTime.
        assert!(check_envelope(&opened(Some("b@x"), None), "b@x", &sent(Some(0))).is_ok());
        if let Some(env) = with_time.envelope.as_mut() {
            env.time = Some("yesterday".to_owned());
        }
        assert!(check_envelope(&with_time, "b@x", &sent(None)).is_ok());
        assert!(refused(check_envelope(&with_time, "b@x", &sent(Some(at)))));
    }

    #[test]
    fn the_outcome_keeps_its_json_and_shows_no_content_in_debug() {
        let content = "<body xmlns='jabber:client'>attack at dawn</body>";
        let outcome = DecryptOutcome {
            namespace: Version::Twomemo.namespace().to_owned(),
            sender: Sender {
                jid: "b@x".into(),
                device_id: 7,
                fingerprint: "f".into(),
                trust: "trusted".into(),
                listed: true,
                key_trust: "trusted".into(),
            },
            body: Some("attack at dawn".into()),
            content_xml: Some(content.into()),
            envelope: None,
            empty: false,
            key_exchange: false,
            actions: Vec::new(),
            redelivered: false,
            first_decrypted_at: None,
            own: false,
            sent_at: None,
        };
        let debug = format!("{outcome:?}");
        assert!(!debug.contains("attack"), "{debug}");
        let json = serde_json::to_value(&outcome).unwrap();
        assert_eq!(json["body"], "attack at dawn");
        assert_eq!(json["content_xml"], content);
        let schema = serde_json::to_value(schemars::schema_for!(DecryptOutcome)).unwrap();
        assert_eq!(
            schema["properties"]["body"]["type"],
            serde_json::json!(["string", "null"])
        );
    }

    fn element(version: Version, sid: u32, jid: Option<&str>, rid: u32) -> Encrypted {
        Encrypted {
            version,
            sid,
            keys: vec![KeyElement {
                jid: jid.map(str::to_owned),
                rid,
                kex: false,
                data: vec![1, 2, 3],
            }],
            iv: Some(vec![0; 12]),
            payload: None,
        }
    }

    #[test]
    fn element_checks_match_the_xml_parser() {
        let bad = |e: &Encrypted| matches!(check_element(e), Err(DecryptError::InvalidElement(_)));
        assert!(check_element(&element(Version::Twomemo, 5, Some("a@x"), 7)).is_ok());
        assert!(check_element(&element(Version::Oldmemo, 5, None, 7)).is_ok());
        assert!(bad(&element(Version::Twomemo, 0, Some("a@x"), 7)));
        assert!(bad(&element(Version::Oldmemo, 0, None, 7)));
        assert!(bad(&element(Version::Oldmemo, 1 << 31, None, 7)));
        assert!(bad(&element(Version::Oldmemo, 5, None, 0)));
        assert!(bad(&element(Version::Twomemo, 5, None, 7)));
        assert!(bad(&element(Version::Twomemo, 5, Some(" "), 7)));
        let mut no_iv = element(Version::Oldmemo, 5, None, 7);
        no_iv.iv = None;
        no_iv.payload = Some(vec![1]);
        assert!(bad(&no_iv));
    }
}
