//! The typed requests and results of [`crate::Client`]'s methods (docs/rpc.md names every
//! field). Fields a daemon may add later are ignored; those older daemons lack have defaults.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::event::Event;

/// `status`.
#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub socket: String,
    pub uptime_secs: u64,
}

/// One of our accounts (`account.list`, `fingerprint.get`).
#[derive(Debug, Clone, Deserialize)]
pub struct Account {
    pub jid: String,
    pub device_id: u32,
    pub fingerprint: String,
}

/// Something to publish to PEP: the item's XML, its node and id, and the publish options.
#[derive(Debug, Clone, Deserialize)]
pub struct Publishable {
    pub namespace: String,
    pub xml: String,
    pub node: String,
    pub item_id: String,
    pub publish_options: BTreeMap<String, String>,
}

/// `encrypt`'s result.
#[derive(Debug, Clone, Deserialize)]
pub struct EncryptOutcome {
    /// One `<encrypted>` element per namespace used.
    pub messages: Vec<EncryptedMessage>,
    /// What happened for each device.
    pub devices: Vec<DeviceReport>,
    pub actions: Vec<Event>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EncryptedMessage {
    pub namespace: String,
    pub xml: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DeviceReport {
    pub jid: String,
    pub device_id: u32,
    pub namespace: String,
    /// `encrypted`, `untrusted`, `no_bundle`, `identity_changed`, `stale`, …
    pub status: String,
    #[serde(default)]
    pub kex: bool,
    #[serde(default)]
    pub reason: Option<String>,
    /// What to do about it: `fetch_bundle`, or for our own stale device
    /// `offer_device_removal`.
    #[serde(default)]
    pub action: Option<Event>,
    /// `identity_changed`: the fingerprint held for the device.
    #[serde(default)]
    pub old_fingerprint: Option<String>,
    /// `identity_changed`: the fingerprint of the bundle waiting for `identity.accept`.
    #[serde(default)]
    pub new_fingerprint: Option<String>,
}

/// One device of `encrypt.plan`.
#[derive(Debug, Clone, Deserialize)]
pub struct PlannedDevice {
    pub jid: String,
    pub device_id: u32,
    pub namespace: String,
    /// `session`, `bundle` (a key exchange), `no_bundle` (fetch it first), `identity_changed`
    /// (left out until `identity.accept`), `stale` (left out).
    pub status: String,
    /// Trust of its key when known.
    #[serde(default)]
    pub trust: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub action: Option<Event>,
    /// `identity_changed`: the fingerprint held for the device.
    #[serde(default)]
    pub old_fingerprint: Option<String>,
    /// `identity_changed`: the fingerprint of the bundle waiting for `identity.accept`.
    #[serde(default)]
    pub new_fingerprint: Option<String>,
}

/// `encrypt.plan`'s result: what an `encrypt` would cover now, and what to fetch first.
#[derive(Debug, Clone, Deserialize)]
pub struct Plan {
    pub devices: Vec<PlannedDevice>,
    pub actions: Vec<Event>,
    /// Nothing needs fetching.
    pub ready: bool,
}

/// One known device (`devices.list`).
#[derive(Debug, Clone, Deserialize)]
pub struct Device {
    pub jid: String,
    pub namespace: String,
    pub device_id: u32,
    /// The device's label (OMEMO 2), only when its signature verifies.
    #[serde(default)]
    pub label: Option<String>,
    /// What became of the listed label: `verified` (shown as `label`), `unsigned`,
    /// `bad_signature`, `unknown_key`; `None` when the list gives none.
    #[serde(default)]
    pub label_status: Option<String>,
    /// On its owner's current device list.
    pub active: bool,
    /// Unix seconds of the last message from it.
    #[serde(default)]
    pub last_seen: Option<u64>,
    /// Fingerprint of its identity key, when known (older daemons: never).
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// `trusted`, `undecided`, `distrusted`, when a key is known.
    #[serde(default)]
    pub trust: Option<String>,
    /// What made it so: `blind`, `tofu`, `manual`, `policy`.
    #[serde(default)]
    pub trust_source: Option<String>,
    /// Messages sent to it since it was last heard from.
    #[serde(default)]
    pub unanswered: u64,
    /// Left out of messages until it writes again (ours: offered for removal).
    #[serde(default)]
    pub stale: bool,
    /// This very device.
    #[serde(default)]
    pub this_device: bool,
}

/// A device that uses a key (`trust.list`).
#[derive(Debug, Clone, Deserialize)]
pub struct KeyDevice {
    pub namespace: String,
    pub device_id: u32,
}

/// One trust decision (`trust.list`).
#[derive(Debug, Clone, Deserialize)]
pub struct TrustEntry {
    pub jid: String,
    pub fingerprint: String,
    /// `trusted`, `undecided`, `distrusted`.
    pub level: String,
    /// What made it so: `blind`, `tofu`, `manual`, `policy`.
    pub source: String,
    pub decided_at: i64,
    /// The contact's devices that use this key (older daemons: none listed).
    #[serde(default)]
    pub devices: Vec<KeyDevice>,
}

/// What to encrypt.
#[derive(Debug, Clone)]
pub struct EncryptRequest<'a> {
    /// Recipients' bare JIDs (in a group chat: every member's real JID).
    pub to: &'a [&'a str],
    pub body: &'a str,
    /// Limits and orders the namespaces (default: OMEMO 2, then 0.3).
    pub namespaces: Option<&'a [&'a str]>,
    /// The SCE `<to>`: the room's bare JID in a group chat.
    pub sce_to: Option<&'a str>,
}

/// What to decrypt.
#[derive(Debug, Clone)]
pub struct DecryptRequest<'a> {
    /// The sender's bare JID (in a group chat: the occupant's real JID).
    pub from: &'a str,
    /// The `<encrypted>` element.
    pub xml: &'a str,
    /// Where the stanza was addressed: our bare JID, or the room's.
    pub to: &'a str,
    pub group_chat: bool,
}

/// `decrypt`'s result.
#[derive(Debug, Clone, Deserialize)]
pub struct DecryptOutcome {
    pub namespace: String,
    pub sender: Sender,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub envelope: Option<Envelope>,
    pub empty: bool,
    pub key_exchange: bool,
    /// Decrypted before (e.g. read again from the archive): show, but do not notify again.
    /// Older daemons do not say (false).
    #[serde(default)]
    pub redelivered: bool,
    #[serde(default)]
    pub first_decrypted_at: Option<u64>,
    pub actions: Vec<Event>,
    /// Sent by this very device (a sent carbon, a room's reflection, the archive): what we
    /// sent, read back. Show it as ours; older daemons refuse these (`not_for_this_device`).
    #[serde(default)]
    pub own: bool,
    /// When `own`: unix seconds it was sent.
    #[serde(default)]
    pub sent_at: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Sender {
    pub jid: String,
    pub device_id: u32,
    pub fingerprint: String,
    pub trust: String,
}

/// The OMEMO 2 SCE envelope's affixes.
#[derive(Debug, Clone, Deserialize)]
pub struct Envelope {
    pub from: Option<String>,
    pub to: Option<String>,
    pub time: Option<String>,
}

/// A fingerprint as the other clients display it (`link.get`).
#[derive(Debug, Clone, Deserialize)]
pub struct Fingerprints {
    /// 64 lowercase hex digits, as the links carry it.
    pub hex: String,
    /// Conversations (and omemod): lowercase, groups of 8.
    pub conversations: String,
    /// Dino: lowercase, two lines, groups of 8 joined by no-break spaces and a space.
    pub dino: String,
    /// Gajim: uppercase, groups of 8, 4 a line.
    pub gajim: String,
}

/// A device a verification link names.
#[derive(Debug, Clone, Deserialize)]
pub struct LinkedDevice {
    pub device_id: u32,
    pub fingerprint: String,
}

/// `link.get`: our verification link (`xmpp:<jid>?omemo-sid-<id>=<key>;…`), to show as a QR
/// code.
#[derive(Debug, Clone, Deserialize)]
pub struct OwnLink {
    pub jid: String,
    pub link: String,
    /// Ours first, then our other devices the user verified.
    pub devices: Vec<LinkedDevice>,
    pub fingerprints: Fingerprints,
}

/// One key of an applied link, compared with the key held for its device.
#[derive(Debug, Clone, Deserialize)]
pub struct LinkKey {
    /// `None`: the link names a key without a device (Conversations' `omemo=`).
    pub device_id: Option<u32>,
    pub fingerprint: String,
    /// `matches`, `mismatch` or `unknown_device`.
    pub status: String,
    /// On a mismatch: the key held for the device.
    #[serde(default)]
    pub held_fingerprint: Option<String>,
}

/// `link.verify`: every key of the link matched and is now verified. (Otherwise the call
/// fails with `link_mismatch` or `link_unknown_device`, its `data.keys` the same reports, and
/// nothing is trusted.)
#[derive(Debug, Clone, Deserialize)]
pub struct LinkVerified {
    pub jid: String,
    pub keys: Vec<LinkKey>,
    pub newly_verified: usize,
}

/// `account.set_label`: our device's label now; publish the OMEMO 2 device list as `actions`
/// say.
#[derive(Debug, Clone, Deserialize)]
pub struct LabelSet {
    pub label: Option<String>,
    pub actions: Vec<Event>,
}
