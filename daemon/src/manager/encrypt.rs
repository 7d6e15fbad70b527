//! Encryption to every active device of a set of JIDs (our own other devices included), in
//! the namespaces those devices support; sessions are built lazily from stored bundles.
//!
//! [`Manager::encrypt`] checks the request and **chooses the targets**; `encrypt_to` then, in
//! named steps, **prepares** one `DeviceStep` per device on copies (stale devices left out
//! (`hygiene`); its session, new or cached, the trust of its key, its key and the row to store),
//! builds the answer, **commits** every step in one transaction (with what reads our own copies
//! back, `own_messages`), and lets memory **remember** the commit. Nothing in memory changes
//! before COMMIT, so a failed transaction leaves every session as stored. An `encrypt` that
//! reaches no device of its recipients commits nothing but new trust rows and is refused
//! ([`EncryptError::NoDeviceReached`]).

use super::account::{Account, TrustMode};
use super::bundle_cache::{VerifiedBundle, WriteTicket};
use super::directory::PendingIdentity;
use super::error::{ChangedIdentity, RateLimited, RecipientsError};
use super::peer_bundle::StoredBundle;
use super::sessions::{session_row, session_row_with_state, SessionMeta, SlotGuard};
use super::{
    check_bare_jid, AccountLookupError, ErrorCause, InvalidJid, KeyLevel, Manager, StorageError,
};
use crate::events::Action;
use crate::storage::trust::{TrustLevel, TrustRow};
use crate::storage::{
    self, device_state, sessions as session_store, trust as trust_store, DeviceAddr,
};
use protocol_core::keys::fingerprint;
use protocol_core::payload;
use protocol_core::sce::{build_envelope, EnvelopeOptions};
use protocol_core::session::{PendingEncrypt, Session};
use protocol_core::xml::{Encrypted, KeyElement, MAX_KEYS, MAX_XML_LEN};
use protocol_core::{Plaintext, Version};
use rand::rngs::OsRng;
use rand::seq::SliceRandom;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use zeroize::Zeroizing;

/// What happened for one device.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// A key for it is in the message.
    Encrypted,
    /// No session and no bundle: fetch the bundle (see `action`).
    NoBundle,
    /// Its identity key is not trusted: nothing was encrypted for it.
    Untrusted,
    /// A bundle with another identity was set aside for it (`bundle.update` answered
    /// `identity_changed`): nothing is encrypted for it until `identity.accept` (see
    /// `old_fingerprint`, `new_fingerprint`).
    IdentityChanged,
    /// Silent past the staleness thresholds: left out until it is heard from again (see
    /// `reason`; our own stale devices come with an `offer_device_removal` action).
    Stale,
    /// Something else went wrong (see `reason`).
    Failed,
}

/// The per-device report.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema, serde::Deserialize)]
pub struct DeviceReport {
    /// Owner's bare JID.
    pub jid: String,
    /// Device id.
    pub device_id: u32,
    /// Namespace.
    pub namespace: String,
    /// Outcome.
    pub status: DeviceStatus,
    /// Whether its key is a key exchange.
    pub kex: bool,
    /// Why it failed or was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the client should do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// `identity_changed`: the fingerprint held for the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_fingerprint: Option<String>,
    /// `identity_changed`: the fingerprint of the bundle set aside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_fingerprint: Option<String>,
}

/// One `<encrypted>` element, in both forms unless the client asked for one (`forms`).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema, serde::Deserialize)]
pub struct EncryptedMessage {
    /// Its namespace.
    pub namespace: String,
    /// The element as XML (left out only when `forms` does not name `xml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xml: Option<String>,
    /// The same element as structured JSON (left out only when `forms` does not name
    /// `element`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Value>")]
    pub element: Option<Encrypted>,
}

/// Result of an encryption.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema, serde::Deserialize)]
pub struct EncryptOutcome {
    /// One element per namespace that has at least one key.
    pub messages: Vec<EncryptedMessage>,
    /// What happened per device.
    pub devices: Vec<DeviceReport>,
    /// Recipients with no known device in a requested namespace: fetch their device lists.
    pub actions: Vec<Action>,
}

/// Who to encrypt to.
#[derive(Debug, Clone)]
pub struct EncryptRequest {
    /// Recipient bare JIDs (our own other devices are always added).
    pub to: Vec<String>,
    /// The body; `None` builds an empty (key transport) message.
    pub body: Option<Plaintext>,
    /// Namespaces in order of preference.
    pub namespaces: Vec<Version>,
    /// Encrypt each device in its first supported namespace only (python-omemo's rule); when
    /// false, in every namespace it is listed in.
    pub one_namespace_per_device: bool,
    /// The SCE `<to>` (OMEMO 2); defaults to the recipient when there is exactly one.
    pub sce_to: Option<String>,
    /// A client-chosen key: a retry with the same key gets the same answer.
    pub idempotency_key: Option<String>,
    /// The forms of each `<encrypted>` element to answer with (not part of what a retry must
    /// repeat).
    pub forms: Forms,
}

/// The forms of each `<encrypted>` element an answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forms {
    /// `messages[].xml`.
    pub xml: bool,
    /// `messages[].element`.
    pub element: bool,
}

impl Default for Forms {
    fn default() -> Self {
        Self {
            xml: true,
            element: true,
        }
    }
}

impl Forms {
    /// Drops the forms not named.
    pub(crate) fn keep(self, out: &mut EncryptOutcome) {
        for m in &mut out.messages {
            if !self.xml {
                m.xml = None;
            }
            if !self.element {
                m.element = None;
            }
        }
    }

    /// The one form an answer is kept in for a retry, whatever was asked: the element, from
    /// which the XML is made again byte for byte.
    pub(crate) const KEPT: Forms = Forms {
        xml: false,
        element: true,
    };

    /// Makes the XML of a kept answer's elements again.
    pub(crate) fn complete(out: &mut EncryptOutcome) {
        for m in &mut out.messages {
            if let (None, Some(e)) = (&m.xml, &m.element) {
                m.xml = Some(e.to_xml());
            }
        }
    }
}

/// Why `encrypt` failed.
#[derive(Debug, thiserror::Error)]
pub enum EncryptError {
    /// No account to encrypt for.
    #[error(transparent)]
    Account(#[from] AccountLookupError),
    /// The recipients or namespaces are unusable.
    #[error(transparent)]
    Recipients(#[from] RecipientsError),
    /// `sce_to` is not a bare JID.
    #[error(transparent)]
    SceTo(#[from] InvalidJid),
    /// A body to several recipients in OMEMO 2 needs `sce_to`: the receivers check it.
    #[error("`sce_to` is required with several recipients (the room's bare JID in a group chat)")]
    SceToRequired,
    /// The idempotency key is empty or too long.
    #[error("idempotency_key must be 1 to {max} bytes")]
    IdempotencyKeyLength {
        /// The longest key accepted.
        max: usize,
    },
    /// The idempotency key was used before for another request.
    #[error("idempotency_key was used for a different request")]
    IdempotencyKeyReused,
    /// An element would be larger than any omemod decrypts.
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    /// No device of the recipients could be encrypted for: nothing was sent (new trust
    /// decisions were kept). `devices` says why for each of their devices, `actions` what to
    /// fetch first.
    #[error("{}", unreached_message(.devices))]
    NoDeviceReached {
        /// The report of each device of the recipients.
        devices: Vec<DeviceReport>,
        /// What to fetch first (device lists, bundles).
        actions: Vec<Action>,
    },
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

/// An `<encrypted>` element would exceed what `decrypt` accepts (the XML limits
/// [`MAX_XML_LEN`] and [`MAX_KEYS`]): no omemod, this one included, could read it.
#[derive(Debug, thiserror::Error)]
#[error("the {namespace} <encrypted> element would be {bytes} bytes with {keys} keys; omemod decrypts at most {max_bytes} bytes and {max_keys} keys: send a shorter body (or to fewer devices)")]
pub struct TooLarge {
    /// The element's namespace.
    pub namespace: Version,
    /// Its XML length.
    pub bytes: usize,
    /// Its `<key>` elements.
    pub keys: usize,
    /// The longest element `decrypt` reads.
    pub max_bytes: usize,
    /// The most keys `decrypt` reads.
    pub max_keys: usize,
}

impl TooLarge {
    /// The request's: a shorter body fits.
    pub fn cause(&self) -> ErrorCause {
        ErrorCause::Request
    }
}

/// Why an encryption failed once its devices were chosen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FanoutError {
    /// An element would be too large to decrypt.
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<FanoutError> for EncryptError {
    fn from(e: FanoutError) -> Self {
        match e {
            FanoutError::TooLarge(e) => EncryptError::TooLarge(e),
            FanoutError::Storage(e) => EncryptError::Storage(e),
        }
    }
}

impl From<FanoutError> for HeartbeatError {
    fn from(e: FanoutError) -> Self {
        match e {
            // Not reached: an empty message to one device is a few hundred bytes.
            FanoutError::TooLarge(e) => HeartbeatError::NotEncrypted(e.to_string()),
            FanoutError::Storage(e) => HeartbeatError::Storage(e),
        }
    }
}

/// Refuses an answer whose elements `decrypt` would refuse (XML length or key count).
fn check_decryptable(out: &EncryptOutcome) -> Result<(), TooLarge> {
    for (m, e) in out
        .messages
        .iter()
        .filter_map(|m| Some((m, m.element.as_ref()?)))
    {
        let bytes = m.xml.as_ref().map_or(0, String::len);
        let keys = e.keys.len();
        if bytes > MAX_XML_LEN || keys > MAX_KEYS {
            return Err(TooLarge {
                namespace: e.version,
                bytes,
                keys,
                max_bytes: MAX_XML_LEN,
                max_keys: MAX_KEYS,
            });
        }
    }
    Ok(())
}

impl EncryptError {
    /// Whom the error is due to.
    pub fn cause(&self) -> ErrorCause {
        match self {
            EncryptError::Account(e) => e.cause(),
            EncryptError::Recipients(e) => e.cause(),
            EncryptError::SceTo(e) => e.cause(),
            EncryptError::SceToRequired
            | EncryptError::IdempotencyKeyLength { .. }
            | EncryptError::IdempotencyKeyReused => ErrorCause::Request,
            EncryptError::TooLarge(e) => e.cause(),
            // A decision or a threshold keeps some device out, or only missing state does.
            EncryptError::NoDeviceReached { devices, .. } => {
                match devices.iter().any(|d| d.status.is_policy()) {
                    true => ErrorCause::Policy,
                    false => ErrorCause::LocalState,
                }
            }
            EncryptError::Storage(e) => e.cause(),
        }
    }
}

impl DeviceStatus {
    /// Whether a trust decision (made or awaited) or a threshold, not missing state, keeps the
    /// device out.
    fn is_policy(self) -> bool {
        match self {
            DeviceStatus::Untrusted | DeviceStatus::IdentityChanged | DeviceStatus::Stale => true,
            DeviceStatus::Encrypted | DeviceStatus::NoBundle | DeviceStatus::Failed => false,
        }
    }

    /// The snake_case name, as in the report.
    fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Encrypted => "encrypted",
            DeviceStatus::NoBundle => "no_bundle",
            DeviceStatus::Untrusted => "untrusted",
            DeviceStatus::IdentityChanged => "identity_changed",
            DeviceStatus::Stale => "stale",
            DeviceStatus::Failed => "failed",
        }
    }
}

/// "no device of the recipients can read it: b@x 5 untrusted, …" (no device known: say so).
fn unreached_message(devices: &[DeviceReport]) -> String {
    if devices.is_empty() {
        return "no device of the recipients is known: fetch their device lists (data.actions)"
            .to_owned();
    }
    let each: Vec<String> = devices
        .iter()
        .map(|d| format!("{} {} {}", d.jid, d.device_id, d.status.as_str()))
        .collect();
    format!(
        "no device of the recipients can be encrypted for: {}",
        each.join(", ")
    )
}

/// Why `heartbeat` (an empty message to one device) failed.
#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    /// The owner is not a bare JID.
    #[error(transparent)]
    Jid(#[from] InvalidJid),
    /// No account to send from.
    #[error(transparent)]
    Account(#[from] AccountLookupError),
    /// No session and no usable bundle: the bundle must be fetched.
    #[error("no bundle of device {device_id} of {jid} in {namespace}: fetch it")]
    NoBundle {
        /// Owner.
        jid: String,
        /// Namespace.
        namespace: Version,
        /// Device id.
        device_id: u32,
    },
    /// No message could be made for the device (the reason its report gave).
    #[error("broken session: {0}")]
    NotEncrypted(String),
    /// A bundle with another identity was set aside for the device: nothing is sent to it
    /// until the user decides (`identity.accept`).
    #[error(transparent)]
    IdentityChanged(#[from] ChangedIdentity),
    /// The device got no report at all (not reached: one target gives one report).
    #[error("unknown device {device_id} of {jid} in {namespace}")]
    UnknownDevice {
        /// Owner.
        jid: String,
        /// Namespace.
        namespace: Version,
        /// Device id.
        device_id: u32,
    },
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

impl HeartbeatError {
    /// Whom the error is due to.
    pub fn cause(&self) -> ErrorCause {
        match self {
            HeartbeatError::Jid(e) => e.cause(),
            HeartbeatError::Account(e) => e.cause(),
            HeartbeatError::NoBundle { .. }
            | HeartbeatError::NotEncrypted(_)
            | HeartbeatError::UnknownDevice { .. } => ErrorCause::LocalState,
            HeartbeatError::IdentityChanged(e) => e.cause(),
            HeartbeatError::Storage(e) => e.cause(),
        }
    }
}

/// Why `session.replace` failed: as a heartbeat, or the rebuild rate limit.
#[derive(Debug, thiserror::Error)]
pub enum ReplaceSessionError {
    /// The empty message that carries the new session failed.
    #[error(transparent)]
    Message(#[from] HeartbeatError),
    /// The device's session was replaced too often.
    #[error(transparent)]
    RateLimited(#[from] RateLimited),
}

impl ReplaceSessionError {
    /// Whom the error is due to.
    pub fn cause(&self) -> ErrorCause {
        match self {
            ReplaceSessionError::Message(e) => e.cause(),
            ReplaceSessionError::RateLimited(e) => e.cause(),
        }
    }
}

/// The devices an encryption covers, and the device lists to fetch first.
pub(crate) struct Targets {
    /// Active devices of the recipients (our own other devices included).
    pub(crate) devices: Vec<DeviceAddr>,
    /// `fetch_devicelist` for each recipient with no known device in a namespace.
    pub(crate) fetch: Vec<Action>,
}

/// An answer to keep for an idempotency key.
pub(crate) struct Kept {
    pub(crate) key: String,
    /// [`super::redelivery::request_digest`] of the request.
    pub(crate) digest: [u8; 32],
}

/// One encryption: the devices (each with whether its session must be new), the content,
/// and what the answer carries besides.
struct Job<'a> {
    devices: Vec<DeviceAddr>,
    /// Devices whose session is replaced by a new one (`session.replace`).
    forced: Vec<DeviceAddr>,
    body: Option<&'a str>,
    sce_to: Option<&'a str>,
    /// Device lists to fetch.
    actions: Vec<Action>,
    keep: Option<Kept>,
    /// `encrypt`: the recipients, one of whose devices must get a key (else nothing is
    /// committed but new trust rows), and stale devices are left out. `None`: one device named
    /// by the caller (heartbeat, session replacement).
    recipients: Option<Vec<String>>,
}

/// Payload and per-device key material of one namespace.
struct NsPayload {
    key_material: Zeroizing<Vec<u8>>,
    iv: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

/// What one encryption shares between its devices while they are prepared.
struct Fanout<'a> {
    acct: &'a Account,
    trust_mode: TrustMode,
    body: Option<&'a str>,
    sce_to: Option<&'a str>,
    /// Made for a namespace when its first device is prepared.
    payloads: BTreeMap<Version, NsPayload>,
    /// Trust rows of keys seen for the first time, once each, with the device that showed it.
    new_trust: Vec<(TrustRow, DeviceAddr)>,
    /// Leave stale devices out (a fan-out, not a call naming one device).
    skip_stale: bool,
    now: i64,
}

/// One device's part of an encryption: prepared on copies, written by the commit, applied to
/// memory after COMMIT by "remember".
struct DeviceStep {
    /// Index of the device's slot among the locked ones.
    slot: usize,
    addr: DeviceAddr,
    /// What the answer says about the device.
    report: DeviceReport,
    /// The key made for the device, when one was.
    sent: Option<Sent>,
}

/// A key made for a device and the session change it needs stored.
struct Sent {
    key: KeyElement,
    /// The session row after this encryption (its counters included).
    row: session_store::SessionRow,
    meta: SessionMeta,
    change: SessionChange,
}

/// How a device's session moves on.
enum SessionChange {
    /// The cached session, stepped only once the new state is committed.
    Existing(PendingEncrypt),
    /// A new session from a stored bundle.
    New(Box<NewSession>),
}

/// A new session from a stored bundle, and what it changes besides.
struct NewSession {
    session: Session,
    /// The stored bundle without the one-time prekey it used (stored, then cached).
    rest: Arc<VerifiedBundle>,
    /// The same as XML.
    rest_xml: String,
    /// The session it replaces, kept as a previous state (and whether it was suspect).
    archive: Option<(Zeroizing<Vec<u8>>, bool)>,
    /// It is the rebuild a rollback asked for.
    rebuilt: bool,
}

/// The session a device's key is made with.
enum Source<'s> {
    /// The cached one.
    Cached(&'s Session),
    /// A new one.
    New(Box<NewSession>),
}

impl Source<'_> {
    fn session(&self) -> &Session {
        match self {
            Source::Cached(s) => s,
            Source::New(n) => &n.session,
        }
    }
}

fn payload_for(
    acct: &Account,
    ns: Version,
    body: Option<&str>,
    sce_to: Option<&str>,
    now: i64,
) -> NsPayload {
    match (ns, body) {
        // 0.3 cannot carry an empty text: an empty <payload/> is unreadable to python-omemo
        // and the libsignal family, so it goes out as an empty (key transport) message.
        (Version::Oldmemo, Some(b)) if !b.is_empty() => {
            let p = payload::oldmemo::encrypt(b.as_bytes(), &mut OsRng);
            NsPayload {
                key_material: Zeroizing::new(p.key_material.to_vec()),
                iv: Some(p.iv.to_vec()),
                payload: Some(p.ciphertext),
            }
        }
        (Version::Oldmemo, _) => {
            let (km, iv) = payload::oldmemo::key_transport(&mut OsRng);
            NsPayload {
                key_material: Zeroizing::new(km.to_vec()),
                iv: Some(iv.to_vec()),
                payload: None,
            }
        }
        (Version::Twomemo, Some(b)) => {
            let envelope = build_envelope(
                b,
                &EnvelopeOptions {
                    from: &acct.jid,
                    to: sce_to,
                    time: Some(&protocol_core::datetime::format_utc(now)),
                },
                &mut OsRng,
            );
            let p = payload::twomemo::encrypt(envelope.as_bytes(), &mut OsRng);
            NsPayload {
                key_material: Zeroizing::new(p.key_material.to_vec()),
                iv: None,
                payload: Some(p.ciphertext),
            }
        }
        (Version::Twomemo, None) => NsPayload {
            key_material: Zeroizing::new(payload::twomemo::EMPTY_KEY_MATERIAL.to_vec()),
            iv: None,
            payload: None,
        },
    }
}

fn report(
    addr: &DeviceAddr,
    status: DeviceStatus,
    kex: bool,
    reason: Option<String>,
    action: Option<Action>,
) -> DeviceReport {
    DeviceReport {
        jid: addr.jid.clone(),
        device_id: addr.device_id,
        namespace: addr.namespace.namespace().to_owned(),
        status,
        kex,
        reason,
        action,
        old_fingerprint: None,
        new_fingerprint: None,
    }
}

/// A bundle with another identity waits for the user: nothing is encrypted for the device.
fn identity_changed(
    addr: &DeviceAddr,
    held: Option<&[u8; 32]>,
    pending: &PendingIdentity,
) -> DeviceReport {
    let why = "its new identity waits for identity.accept";
    DeviceReport {
        old_fingerprint: held.or(pending.old.as_ref()).map(fingerprint),
        new_fingerprint: Some(fingerprint(&pending.new)),
        ..report(
            addr,
            DeviceStatus::IdentityChanged,
            false,
            Some(why.to_owned()),
            None,
        )
    }
}

fn failed(addr: &DeviceAddr, reason: impl Into<String>) -> DeviceReport {
    report(addr, DeviceStatus::Failed, false, Some(reason.into()), None)
}

/// No usable bundle: the client fetches a fresh one.
fn no_bundle(addr: &DeviceAddr, why: &str) -> DeviceReport {
    let action = Action::fetch_bundle(&addr.jid, addr.namespace, addr.device_id);
    report(
        addr,
        DeviceStatus::NoBundle,
        false,
        Some(why.to_owned()),
        Some(action),
    )
}

/// The outcome of a one-device call, or the error that explains why there is no message.
fn single_device(out: EncryptOutcome, addr: &DeviceAddr) -> Result<EncryptOutcome, HeartbeatError> {
    let (jid, namespace, device_id) = (addr.jid.clone(), addr.namespace, addr.device_id);
    match out.devices.first() {
        Some(r) if r.status == DeviceStatus::Encrypted => Ok(out),
        Some(r) if r.status == DeviceStatus::NoBundle => Err(HeartbeatError::NoBundle {
            jid,
            namespace,
            device_id,
        }),
        Some(r) if r.status == DeviceStatus::IdentityChanged => {
            Err(HeartbeatError::IdentityChanged(ChangedIdentity {
                jid,
                namespace,
                device_id,
                old_fingerprint: r.old_fingerprint.clone().unwrap_or_default(),
                new_fingerprint: r.new_fingerprint.clone().unwrap_or_default(),
            }))
        }
        Some(r) => Err(HeartbeatError::NotEncrypted(
            r.reason.clone().unwrap_or_default(),
        )),
        None => Err(HeartbeatError::UnknownDevice {
            jid,
            namespace,
            device_id,
        }),
    }
}

/// `out`, when a device of `jids` got a key; else the error that says why none did.
fn reached(out: EncryptOutcome, jids: &[String]) -> Result<EncryptOutcome, EncryptError> {
    let ours = |d: &&DeviceReport| jids.contains(&d.jid);
    if out
        .devices
        .iter()
        .filter(ours)
        .any(|d| d.status == DeviceStatus::Encrypted)
    {
        return Ok(out);
    }
    Err(EncryptError::NoDeviceReached {
        devices: out.devices.iter().filter(ours).cloned().collect(),
        actions: out.actions,
    })
}

/// The recipients of `req`, normalised and without repeats, once they and its namespaces are
/// checked.
pub(crate) fn recipients(req: &EncryptRequest) -> Result<Vec<String>, RecipientsError> {
    let mut jids: Vec<String> = Vec::new();
    for j in &req.to {
        let j = check_bare_jid(j)?;
        if !jids.contains(&j) {
            jids.push(j);
        }
    }
    if jids.is_empty() {
        return Err(RecipientsError::NoRecipient);
    }
    if req.namespaces.is_empty() {
        return Err(RecipientsError::NoNamespace);
    }
    Ok(jids)
}

/// The OMEMO 2 SCE `<to>`: `sce_to`, else the only recipient. With several recipients the
/// conversation is ambiguous (the receivers check `<to>`), so a body needs `sce_to`.
fn sce_to(req: &EncryptRequest, jids: &[String]) -> Result<Option<String>, EncryptError> {
    if let Some(to) = &req.sce_to {
        check_bare_jid(to)?;
        return Ok(Some(to.clone()));
    }
    match jids {
        [only] => Ok(Some(only.clone())),
        _ if req.body.is_some() && req.namespaces.contains(&Version::Twomemo) => {
            Err(EncryptError::SceToRequired)
        }
        _ => Ok(None),
    }
}

impl Manager {
    /// Encrypts `req.body` (or an empty message) to every active device of `req.to`.
    pub async fn encrypt(
        &self,
        account: Option<&str>,
        req: EncryptRequest,
    ) -> Result<EncryptOutcome, EncryptError> {
        let acct = self.account(account)?;
        let jids = recipients(&req)?;
        let sce_to = sce_to(&req, &jids)?;
        let targets =
            self.select_targets(&acct, &jids, &req.namespaces, req.one_namespace_per_device)?;
        let mut job = Job {
            devices: targets.devices,
            forced: Vec::new(),
            body: req.body.as_deref(),
            sce_to: sce_to.as_deref(),
            actions: targets.fetch,
            keep: None,
            recipients: Some(jids.clone()),
        };
        let Some(key) = req.idempotency_key.as_deref() else {
            let mut out = reached(self.encrypt_to(&acct, job).await?, &jids)?;
            req.forms.keep(&mut out);
            return Ok(out);
        };
        // One idempotent encrypt at a time, so two copies of a request cannot both miss.
        let _serial = self.redelivery.encrypt_lock.lock().await;
        let digest = super::redelivery::request_digest(&req);
        if let Some(mut out) = self.stored_encrypt(&acct, key, &digest).await? {
            // A device that lost its trust since is not encrypted for again: the retry is a
            // new encryption (kept in place of the old answer).
            if self
                .kept_answer_holds(&acct, &out, req.body.is_some())
                .await?
            {
                Forms::complete(&mut out);
                req.forms.keep(&mut out);
                return Ok(out);
            }
            tracing::info!(account = %acct.jid, "a retried encrypt encrypts again: a device of its first answer lost its trust");
        }
        job.keep = self.redelivery.config().enabled().then(|| Kept {
            key: key.to_owned(),
            digest,
        });
        let mut out = reached(self.encrypt_to(&acct, job).await?, &jids)?;
        req.forms.keep(&mut out);
        Ok(out)
    }

    /// The devices an encryption to `jids` (and our own other devices) covers, and the device
    /// lists to fetch first (recipients with no known device in a namespace).
    pub(crate) fn select_targets(
        &self,
        acct: &Account,
        jids: &[String],
        namespaces: &[Version],
        one_namespace_per_device: bool,
    ) -> Result<Targets, StorageError> {
        let mut all = jids.to_vec();
        if !all.contains(&acct.jid) {
            all.push(acct.jid.clone());
        }
        let mut targets = Targets {
            devices: Vec::new(),
            fetch: Vec::new(),
        };
        self.with_directory(acct.id, |d| {
            for jid in &all {
                let mut seen: Vec<u32> = Vec::new();
                for ns in namespaces {
                    let active = d.active(jid, *ns);
                    if active.is_empty() && *jid != acct.jid {
                        targets.fetch.push(Action::FetchDevicelist {
                            jid: jid.clone(),
                            namespace: *ns,
                            node: ns.devicelist_node().to_owned(),
                        });
                    }
                    for id in active {
                        if *jid == acct.jid && id == acct.device_id {
                            continue;
                        }
                        if one_namespace_per_device && seen.contains(&id) {
                            continue;
                        }
                        seen.push(id);
                        targets.devices.push(Self::addr(acct, jid, *ns, id));
                    }
                }
            }
        })?;
        Ok(targets)
    }

    /// An empty message to one device (session completion, heartbeat).
    pub async fn heartbeat(
        &self,
        account: Option<&str>,
        jid: &str,
        namespace: Version,
        device_id: u32,
    ) -> Result<EncryptOutcome, HeartbeatError> {
        let jid = check_bare_jid(jid)?;
        let acct = self.account(account)?;
        let addr = Self::addr(&acct, &jid, namespace, device_id);
        self.empty_message(&acct, addr, false).await
    }

    /// Replaces the session with a device by a fresh key exchange from its stored bundle
    /// (keeping our identity) and returns the empty message that carries it.
    pub async fn replace_session(
        &self,
        account: Option<&str>,
        jid: &str,
        namespace: Version,
        device_id: u32,
    ) -> Result<EncryptOutcome, ReplaceSessionError> {
        let jid = check_bare_jid(jid).map_err(HeartbeatError::from)?;
        let acct = self.account(account).map_err(HeartbeatError::from)?;
        let addr = Self::addr(&acct, &jid, namespace, device_id);
        self.check_rebuild_allowed(&addr)?;
        let out = self.empty_message(&acct, addr.clone(), true).await?;
        self.record_rebuild(&addr);
        Ok(out)
    }

    /// An empty message to one device, on a new session if `force_new`.
    async fn empty_message(
        &self,
        acct: &Account,
        addr: DeviceAddr,
        force_new: bool,
    ) -> Result<EncryptOutcome, HeartbeatError> {
        let job = Job {
            forced: if force_new {
                vec![addr.clone()]
            } else {
                Vec::new()
            },
            devices: vec![addr.clone()],
            body: None,
            sce_to: None,
            actions: Vec::new(),
            keep: None,
            recipients: None,
        };
        let out = self.encrypt_to(acct, job).await?;
        single_device(out, &addr)
    }

    /// Encrypts to every device of `job`, in named steps: lock their sessions; **prepare** one
    /// [`DeviceStep`] per device (a new session when it needs one, its trust, its key) on
    /// copies; build the answer; **commit** every step in one transaction; **remember**: memory
    /// follows the commit. A failed transaction leaves every session as stored.
    async fn encrypt_to(
        &self,
        acct: &Account,
        job: Job<'_>,
    ) -> Result<EncryptOutcome, FanoutError> {
        let mut slots = self.sessions.lock_many(&self.store, &job.devices).await?;
        let mut fanout = Fanout {
            acct,
            trust_mode: acct.keys.lock().await?.trust_mode,
            body: job.body,
            sce_to: job.sce_to,
            payloads: BTreeMap::new(),
            new_trust: Vec::new(),
            skip_stale: job.recipients.is_some(),
            now: storage::now(),
        };
        let mut steps = Vec::with_capacity(slots.len());
        for (i, slot) in slots.iter().enumerate() {
            let forced = job.forced.contains(slot.addr());
            steps.push(self.prepare_device(&mut fanout, i, slot, forced).await);
        }
        // No recipient device got a key: nothing is sent, so no chain moves.
        let reached = job.recipients.as_ref().is_none_or(|to| {
            steps
                .iter()
                .any(|s| s.sent.is_some() && to.contains(&s.addr.jid))
        });
        if !reached {
            steps.iter_mut().for_each(|s| s.sent = None);
        }
        // What reads our own copies back (`own_messages`) needs each payload's key material.
        let materials: BTreeMap<Version, Zeroizing<Vec<u8>>> = fanout
            .payloads
            .iter()
            .map(|(ns, p)| (*ns, p.key_material.clone()))
            .collect();
        let out = outcome(
            acct,
            &steps,
            std::mem::take(&mut fanout.payloads),
            job.actions,
        );
        // Before anything is committed: an element no omemod could read is never sent.
        check_decryptable(&out)?;
        let stored = match job.keep.filter(|_| reached) {
            Some(k) => Some(self.encrypt_record(acct, k, &out)?),
            None => None,
        };
        let (new_trust, now) = (fanout.new_trust, fanout.now);
        let conversation = super::own_messages::conversation(job.sce_to, &acct.jid, &job.devices);
        let own = self.own_write(acct, &out, &materials, conversation, now);
        let rows: Vec<TrustRow> = new_trust.iter().map(|(row, _)| row.clone()).collect();
        let committed = self
            .commit_encryption(steps, &rows, stored, own, now)
            .await?;
        self.remember_encryption(&mut slots, committed);
        drop(slots);
        // Each new key is announced with the device that showed it.
        for (row, addr) in new_trust {
            self.remember_trust(acct, vec![row], addr.namespace, addr.device_id);
        }
        Ok(out)
    }

    /// Prepares one device: its session (a new one from the stored bundle when there is none,
    /// when `forced`, or after a rollback), the trust of its key, and its key, on copies.
    async fn prepare_device(
        &self,
        fanout: &mut Fanout<'_>,
        slot_index: usize,
        slot: &SlotGuard,
        forced: bool,
    ) -> DeviceStep {
        let addr = slot.addr();
        let skipped = |report| DeviceStep {
            slot: slot_index,
            addr: addr.clone(),
            report,
            sent: None,
        };
        // A new identity set aside for the device: the old session (or bundle) reaches a
        // device that is likely gone, and the new one is not accepted yet.
        let held = slot.session.as_ref().map(|s| *s.remote_curve25519());
        let pending = match self.with_directory(addr.account_id, |d| d.pending_identity(addr)) {
            Ok(p) => p,
            Err(e) => return skipped(failed(addr, e.to_string())),
        };
        if let Some(p) = pending.filter(|p| held != Some(p.new)) {
            return skipped(identity_changed(addr, held.as_ref(), &p));
        }
        if fanout.skip_stale {
            let stale = self.staleness(fanout.acct, addr, slot.meta.unanswered, fanout.now);
            let stale = match stale {
                Ok(s) => s,
                Err(e) => return skipped(failed(addr, e.to_string())),
            };
            if let Some(stale) = stale {
                let action = super::hygiene::stale_action(fanout.acct, addr);
                let why = Some(stale.reason());
                return skipped(report(addr, DeviceStatus::Stale, false, why, action));
            }
        }
        // A session found in an older copy of the database may be behind the peer's (and its
        // sending chain already used): start a new one.
        let rebuild =
            slot.session.is_some() && (slot.meta.suspect || self.pending_rebuilds.contains(addr));
        let source = match &slot.session {
            Some(s) if !forced && !rebuild => Source::Cached(s),
            _ => match self.new_session(fanout.acct, slot, rebuild).await {
                Ok(new) => Source::New(new),
                Err(report) => return skipped(report),
            },
        };
        let curve = *source.session().remote_curve25519();
        let level = match fanout.trust_level(self, addr, &curve) {
            Ok(level) => level,
            Err(e) => return skipped(failed(addr, e.to_string())),
        };
        // Empty messages are exempt: they carry no content.
        if fanout.body.is_some() && level != TrustLevel::Trusted {
            let why = format!("identity key is {}", level.as_str());
            return skipped(report(
                addr,
                DeviceStatus::Untrusted,
                false,
                Some(why),
                None,
            ));
        }
        let now = fanout.now;
        let p = fanout.payload(addr.namespace);
        match make_key(source, addr, &slot.meta, &p.key_material, now) {
            Ok(sent) => DeviceStep {
                slot: slot_index,
                addr: addr.clone(),
                report: report(addr, DeviceStatus::Encrypted, sent.key.kex, None, None),
                sent: Some(sent),
            },
            Err(e) => skipped(failed(addr, e.to_string())),
        }
    }

    /// A new session with the device from its stored bundle, or the report that says why
    /// there is none. The stored bundle forgets the prekey it takes, so no rebuild reuses it.
    async fn new_session(
        &self,
        acct: &Account,
        slot: &SlotGuard,
        after_rollback: bool,
    ) -> Result<Box<NewSession>, DeviceReport> {
        let addr = slot.addr();
        // Every prekey of the stored bundle was used (by us).
        const SPENT: &str = "every one-time prekey of the stored bundle is used";
        let bundle = match self.stored_bundle(addr).await {
            Ok(StoredBundle::Usable(b)) => b,
            Ok(StoredBundle::Spent) => return Err(no_bundle(addr, SPENT)),
            Ok(StoredBundle::Missing) if after_rollback => {
                return Err(no_bundle(
                    addr,
                    "the session must be rebuilt after a rollback: fetch a fresh bundle",
                ))
            }
            Ok(StoredBundle::Missing) => return Err(no_bundle(addr, "no session and no bundle")),
            Err(e) => return Err(failed(addr, e.to_string())),
        };
        let Some(pk) = bundle.bundle().prekeys.choose(&mut OsRng).map(|p| p.id) else {
            return Err(no_bundle(addr, SPENT));
        };
        let session = Session::initiate_verified(&acct.identity, &bundle, pk, &mut OsRng)
            .map_err(|e| failed(addr, e.to_string()))?;
        let rest = bundle.without_prekey(pk);
        Ok(Box::new(NewSession {
            session,
            rest_xml: protocol_core::xml::bundle_to_xml(rest.bundle()),
            rest: Arc::new(rest),
            archive: slot
                .session
                .as_ref()
                .map(|s| (s.to_bytes(true), slot.meta.suspect)),
            rebuilt: self.pending_rebuilds.contains(addr),
        }))
    }

    /// Commits every prepared step in one transaction (with the new trust rows and the answer
    /// kept for an idempotency key) at `now`, the time their rows carry, and hands the steps
    /// back for "remember".
    async fn commit_encryption(
        &self,
        steps: Vec<DeviceStep>,
        new_trust: &[TrustRow],
        stored: Option<super::redelivery::KeptAnswer>,
        own: Option<super::own_messages::OwnWrite>,
        now: i64,
    ) -> Result<Committed, StorageError> {
        let any_sent = steps.iter().any(|s| s.sent.is_some());
        if !any_sent && new_trust.is_empty() && stored.is_none() {
            return Ok(Committed {
                steps,
                bundle_ticket: None,
                own: None,
            });
        }
        let any_new = steps.iter().any(|s| s.new_session().is_some());
        // The stored bundles that lose a prekey are cached after COMMIT; the ticket is held
        // until then.
        let bundle_ticket = any_new.then(|| self.bundles.write_ticket());
        let cache = bundle_ticket.as_ref().map(|t| t.invalidator());
        let trust_rows = new_trust.to_vec();
        let steps = self
            .store
            .write(move |tx| {
                for step in &steps {
                    if let Some(new) = step.new_session() {
                        if let Some(c) = &cache {
                            c.invalidate(&step.addr);
                        }
                        new.store_bundle_and_archive(tx, &step.addr, now)?;
                    }
                }
                let rows: Vec<&session_store::SessionRow> = steps
                    .iter()
                    .filter_map(|s| s.sent.as_ref().map(|s| &s.row))
                    .collect();
                session_store::upsert_many(tx, &rows)?;
                // After the rows they belong to exist.
                for step in &steps {
                    if let Some(new) = step.new_session() {
                        new.store_skipped_keys(tx, &step.addr, now)?;
                    }
                }
                for t in &trust_rows {
                    trust_store::set(tx, t)?;
                }
                if let Some(k) = &stored {
                    k.write(tx)?;
                }
                let own = own.as_ref().map(|o| o.write(tx, now)).transpose()?;
                Ok((steps, own))
            })
            .await?;
        let (steps, own) = steps;
        Ok(Committed {
            steps,
            bundle_ticket,
            own,
        })
    }

    /// Memory follows the commit: the sessions step on (or become the new ones), the new
    /// bundles are cached, the rebuilds done are forgotten, and our own elements can be found.
    fn remember_encryption(&self, slots: &mut [SlotGuard], committed: Committed) {
        if let Some(own) = &committed.own {
            self.own_committed(own);
        }
        for step in committed.steps {
            let Some(sent) = step.sent else {
                continue;
            };
            let slot = &mut slots[step.slot];
            match sent.change {
                SessionChange::Existing(pending) => {
                    if !slot
                        .session
                        .as_mut()
                        .is_some_and(|s| s.commit_encrypt(pending))
                    {
                        // Not reached under the slot's lock; should it be, memory must not
                        // differ from the disk: reload from the database on next use.
                        slot.session = None;
                        slot.loaded = false;
                        continue;
                    }
                }
                SessionChange::New(new) => {
                    if let Some(t) = &committed.bundle_ticket {
                        self.bundles.publish(&step.addr, Arc::clone(&new.rest), t);
                    }
                    if new.rebuilt {
                        self.pending_rebuilds.done(&step.addr);
                    }
                    slot.session = Some(new.session);
                }
            }
            slot.meta = sent.meta;
        }
    }
}

/// The steps after COMMIT, with the bundle cache's ticket held until the new bundles are
/// cached, and where our own elements were stored.
struct Committed {
    steps: Vec<DeviceStep>,
    bundle_ticket: Option<WriteTicket>,
    own: Option<super::own_messages::OwnWritten>,
}

impl DeviceStep {
    /// The new session this step stores, if it makes one.
    fn new_session(&self) -> Option<&NewSession> {
        match &self.sent.as_ref()?.change {
            SessionChange::New(new) => Some(new),
            SessionChange::Existing(_) => None,
        }
    }
}

impl NewSession {
    /// In the transaction: the session it replaces joins the previous ones, and the stored
    /// bundle loses the prekey it used.
    fn store_bundle_and_archive(
        &self,
        tx: &crate::storage::Db,
        addr: &DeviceAddr,
        now: i64,
    ) -> Result<(), StorageError> {
        if let Some((state, suspect)) = &self.archive {
            let archived = device_state::Archived {
                state,
                suspect: *suspect,
            };
            device_state::push_previous_session(
                tx,
                addr,
                archived,
                now,
                protocol_core::consts::MAX_PREVIOUS_SESSIONS,
            )?;
        }
        let prekeys = u32::try_from(self.rest.bundle().prekeys.len()).unwrap_or(u32::MAX);
        device_state::set_bundle_xml(tx, addr, self.rest_xml.as_bytes(), prekeys)?;
        Ok(())
    }

    /// In the transaction, once its row exists: its skipped keys, and the end of the rebuild
    /// it is.
    fn store_skipped_keys(
        &self,
        tx: &crate::storage::Db,
        addr: &DeviceAddr,
        now: i64,
    ) -> Result<(), StorageError> {
        crate::storage::skipped_keys::replace_for_session(
            tx,
            addr,
            self.session.skipped_keys(),
            now,
        )?;
        if self.rebuilt {
            crate::storage::rebuilds::clear(tx, addr)?;
        }
        Ok(())
    }
}

impl Fanout<'_> {
    /// The trust level of a device's key; a key seen for the first time gets its row, with
    /// the first device that showed it.
    fn trust_level(
        &mut self,
        manager: &Manager,
        addr: &DeviceAddr,
        curve: &[u8; 32],
    ) -> Result<TrustLevel, StorageError> {
        let mode = self.trust_mode;
        let row = match manager.trust_level_for_key(self.acct, mode, &addr.jid, curve)? {
            KeyLevel::Known(level) => return Ok(level),
            KeyLevel::New(row) => row,
        };
        let level = row.level;
        if !self
            .new_trust
            .iter()
            .any(|(t, _)| t.jid == row.jid && t.identity_key == row.identity_key)
        {
            self.new_trust.push((row, addr.clone()));
        }
        Ok(level)
    }

    /// The payload of a namespace, made on first use.
    fn payload(&mut self, namespace: Version) -> &NsPayload {
        let (acct, body, sce_to, now) = (self.acct, self.body, self.sce_to, self.now);
        self.payloads
            .entry(namespace)
            .or_insert_with(|| payload_for(acct, namespace, body, sce_to, now))
    }
}

/// The key for a device from `source`, with the row its session needs stored. An existing
/// session is only stepped once its new state is committed; a new one is ours until then.
fn make_key(
    source: Source<'_>,
    addr: &DeviceAddr,
    cached_meta: &SessionMeta,
    key_material: &[u8],
    now: i64,
) -> Result<Sent, protocol_core::session::SessionError> {
    let (k, row, meta, change) = match source {
        Source::Cached(s) => {
            let (k, pending) = s.prepare_encrypt(key_material)?;
            let mut meta = cached_meta.clone();
            meta.messages_sent += 1;
            meta.unanswered += 1;
            let state = s.to_bytes_after(&pending, false);
            let row = session_row_with_state(addr, s, state, &meta, now);
            (k, row, meta, SessionChange::Existing(pending))
        }
        Source::New(mut new) => {
            let k = new.session.encrypt(key_material)?;
            // A replaced session's silence carries over: the device has not answered yet.
            let meta = SessionMeta {
                messages_sent: 1,
                unanswered: cached_meta.unanswered + 1,
                ..SessionMeta::default()
            };
            let row = session_row(addr, &new.session, &meta, now);
            (k, row, meta, SessionChange::New(new))
        }
    };
    Ok(Sent {
        key: KeyElement {
            jid: (addr.namespace == Version::Twomemo).then(|| addr.jid.clone()),
            rid: addr.device_id,
            kex: k.kex,
            data: k.data,
        },
        row,
        meta,
        change,
    })
}

/// The answer: one `<encrypted>` element per namespace that has a key, a report per device,
/// and the fetches to do (device lists, then bundles of devices without one).
fn outcome(
    acct: &Account,
    steps: &[DeviceStep],
    mut payloads: BTreeMap<Version, NsPayload>,
    mut actions: Vec<Action>,
) -> EncryptOutcome {
    let mut keys: BTreeMap<Version, Vec<KeyElement>> = BTreeMap::new();
    for step in steps {
        if let Some(sent) = &step.sent {
            let ns = step.addr.namespace;
            keys.entry(ns).or_default().push(sent.key.clone());
        }
    }
    let messages = keys
        .into_iter()
        .map(|(ns, keys)| {
            let p = payloads.remove(&ns);
            let element = Encrypted {
                version: ns,
                sid: acct.device_id,
                keys,
                iv: p.as_ref().and_then(|p| p.iv.clone()),
                payload: p.and_then(|p| p.payload),
            };
            EncryptedMessage {
                namespace: ns.namespace().to_owned(),
                xml: Some(element.to_xml()),
                element: Some(element),
            }
        })
        .collect();
    let devices: Vec<DeviceReport> = steps.iter().map(|s| s.report.clone()).collect();
    actions.extend(devices.iter().filter_map(|d| d.action.clone()));
    EncryptOutcome {
        messages,
        devices,
        actions,
    }
}
