//! What the session manager can refuse, by cause. The RPC layer maps each variant onto a
//! stable error kind; messages never contain key material.

use crate::storage::StorageError;
use protocol_core::Version;

/// A session-manager failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// No account with that JID.
    #[error("no account {0}")]
    UnknownAccount(String),
    /// `account.create` for a JID we already have.
    #[error("account {0} already exists")]
    AccountExists(String),
    /// The request left the account out and there is not exactly one.
    #[error("{0}")]
    AccountRequired(&'static str),
    /// Not a bare JID.
    #[error("invalid bare JID {0:?}")]
    InvalidJid(String),
    /// A device we know nothing about.
    #[error("unknown device {device_id} of {jid} in {namespace}")]
    UnknownDevice {
        /// Owner.
        jid: String,
        /// Namespace.
        namespace: Version,
        /// Device id.
        device_id: u32,
    },
    /// We need a bundle we do not have.
    #[error("no bundle of device {device_id} of {jid} in {namespace}: fetch it")]
    NoBundle {
        /// Owner.
        jid: String,
        /// Namespace.
        namespace: Version,
        /// Device id.
        device_id: u32,
    },
    /// A received bundle is unusable.
    #[error("invalid bundle: {0}")]
    InvalidBundle(String),
    /// A signature did not verify.
    #[error("invalid signature: {0}")]
    InvalidSignature(String),
    /// Malformed input (XML, protobuf, base64, …).
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// The message has no key for our device.
    #[error("message is not encrypted for this device (it is for devices {recipients:?})")]
    NotForThisDevice {
        /// The device ids it was encrypted for.
        recipients: Vec<u32>,
    },
    /// Already decrypted once (a replay or a duplicate delivery).
    #[error("duplicate message: already decrypted")]
    DuplicateMessage,
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
    /// The MAC (or the payload's tag) did not verify.
    #[error("message authentication failed")]
    AuthenticationFailed,
    /// The message is too far ahead of its chain.
    #[error("message skips too many message keys")]
    TooManySkipped,
    /// The session cannot continue (e.g. a key exchange for a prekey we no longer have).
    #[error("broken session: {0}")]
    BrokenSession(String),
    /// We refuse to encrypt content for a device the user has not trusted.
    #[error("device is not trusted")]
    Untrusted,
    /// The sender's identity key is distrusted.
    #[error("sender's identity key is distrusted")]
    Distrusted,
    /// An `encrypt` idempotency key reused for another request.
    #[error("idempotency key {0:?} was used for a different request")]
    IdempotencyKeyReused(String),
    /// A key exchange carries another identity than the one held for the device.
    #[error("identity of device {device_id} of {jid} in {namespace} changed from {old_fingerprint} to {new_fingerprint}: refused until accepted with identity.accept")]
    IdentityChanged {
        /// Owner.
        jid: String,
        /// Namespace.
        namespace: Version,
        /// Device id.
        device_id: u32,
        /// Fingerprint held for the device.
        old_fingerprint: String,
        /// Fingerprint in the key exchange.
        new_fingerprint: String,
    },
    /// Too many session replacements for one device.
    #[error("session of this device was replaced too often; retry in {retry_after_secs} s")]
    RateLimited {
        /// Seconds until a replacement is allowed again.
        retry_after_secs: i64,
    },
    /// The OMEMO 2 SCE envelope does not match where the message came from or arrived.
    #[error("SCE envelope mismatch: {0}")]
    SceMismatch(String),
    /// Bad parameters that the schema could not catch.
    #[error("invalid params: {0}")]
    InvalidParams(String),
    /// A device list names more devices than a contact may have.
    #[error("device list names {count} devices; at most {max} are accepted")]
    TooManyDevices {
        /// Devices in the list.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

/// Result of the manager.
pub type Result<T, E = ManagerError> = std::result::Result<T, E>;
