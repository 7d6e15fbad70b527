//! What the session manager can refuse. Each operation family has its own error enum beside
//! the operation, as vodozemac does:
//!
//! - `account`: [`CreateAccountError`](super::account::CreateAccountError);
//!   `lifecycle`: [`DeleteAccountError`](super::lifecycle::DeleteAccountError);
//!   `device_id`: [`RenewDeviceIdError`](super::device_id::RenewDeviceIdError);
//! - `own_bundle`: [`OwnBundleError`](super::own_bundle::OwnBundleError);
//!   `peer_bundle`: [`BundleUpdateError`](super::peer_bundle::BundleUpdateError),
//!   [`StoredBundleError`](super::peer_bundle::StoredBundleError);
//!   `devicelist`: [`DevicelistError`](super::devicelist::DevicelistError);
//! - `encrypt`: [`EncryptError`](super::encrypt::EncryptError),
//!   [`HeartbeatError`](super::encrypt::HeartbeatError),
//!   [`ReplaceSessionError`](super::encrypt::ReplaceSessionError);
//!   `plan`: [`PlanError`](super::plan::PlanError);
//!   `decrypt`: [`DecryptError`](super::decrypt::DecryptError);
//! - `trust`: [`ListError`](super::trust::ListError), [`TrustError`](super::trust::TrustError),
//!   [`CatchupError`](super::trust::CatchupError);
//!   `pinning`: [`IdentityError`](super::pinning::IdentityError).
//!
//! They nest the pieces this module holds, which several operations share: [`InvalidJid`],
//! [`AccountLookupError`], [`RecipientsError`], [`DeviceIdError`], [`InvalidFingerprint`],
//! [`RateLimited`], [`ChangedIdentity`], and storage's [`StorageError`]. Operations that only touch the database
//! (maintenance, loading) return a [`StorageError`] as it is.
//!
//! Every error answers `cause()` with protocol-core's [`ErrorCause`]: the peer misbehaved, is
//! incompatible, our local state failed or is missing, the client's request is invalid, or a
//! policy (a trust decision, a limit) refuses it. Errors of protocol-core keep their own cause.
//! Each variant's doc comment sits next to the message a client reads; messages never carry
//! key material or plaintext. The RPC layer turns each variant into a stable error kind
//! (`rpc::methods::convert`).

pub use crate::storage::StorageError;
pub use protocol_core::error::ErrorCause;

/// A JID the request gives is not a bare JID.
#[derive(Debug, thiserror::Error)]
#[error("not a valid bare JID: {0}")]
pub struct InvalidJid(pub String);

impl InvalidJid {
    /// Always the request's.
    pub fn cause(&self) -> ErrorCause {
        ErrorCause::Request
    }
}

/// No account to act for.
#[derive(Debug, thiserror::Error)]
pub enum AccountLookupError {
    /// The request names an account this daemon does not have.
    #[error("no account {0}")]
    Unknown(String),
    /// The request names no account, and there is none.
    #[error("no account yet: create one with account.create (or `omemod init --jid JID`)")]
    NoneYet,
    /// The request names no account, and there are several.
    #[error("several accounts: name one with the `account` param")]
    Several,
}

impl AccountLookupError {
    /// Always the request's.
    pub fn cause(&self) -> ErrorCause {
        ErrorCause::Request
    }
}

/// The recipients of an `encrypt` (or its plan) are not usable.
#[derive(Debug, thiserror::Error)]
pub enum RecipientsError {
    /// A recipient is not a bare JID.
    #[error(transparent)]
    Jid(#[from] InvalidJid),
    /// `to` is empty.
    #[error("`to` names no recipient")]
    NoRecipient,
    /// `namespaces` is empty.
    #[error("`namespaces` is empty")]
    NoNamespace,
}

impl RecipientsError {
    /// Always the request's.
    pub fn cause(&self) -> ErrorCause {
        ErrorCause::Request
    }
}

/// The device ids a new device id must avoid leave none, or are not device ids.
#[derive(Debug, thiserror::Error)]
pub enum DeviceIdError {
    /// `avoid` is longer than allowed.
    #[error("`avoid` lists more than {max} ids")]
    TooManyAvoided {
        /// The most `avoid` may list.
        max: usize,
    },
    /// An id in `avoid` is not a device id (1 to 2³¹−1).
    #[error("device id {0} in `avoid` is out of range")]
    AvoidedOutOfRange(u32),
    /// No random draw found an id outside `avoid`.
    #[error("no free device id found")]
    NoneFree,
}

impl DeviceIdError {
    /// Always the request's.
    pub fn cause(&self) -> ErrorCause {
        ErrorCause::Request
    }
}

/// A fingerprint the request gives cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("fingerprint must be 64 hex digits")]
pub struct InvalidFingerprint;

impl InvalidFingerprint {
    /// Always the request's.
    pub fn cause(&self) -> ErrorCause {
        ErrorCause::Request
    }
}

/// A session replacement beyond the rate limit (`pinning`).
#[derive(Debug, thiserror::Error)]
#[error("session of this device was replaced too often; retry in {retry_after_secs} s")]
pub struct RateLimited {
    /// Seconds until a replacement is allowed again.
    pub retry_after_secs: i64,
}

impl RateLimited {
    /// A limit of ours.
    pub fn cause(&self) -> ErrorCause {
        ErrorCause::Policy
    }
}

/// A device shows another identity than the one held for it (`pinning`): a key exchange that
/// carries it is refused, and nothing is sent to the device while a bundle with it waits.
#[derive(Debug, thiserror::Error)]
#[error("identity of device {device_id} of {jid} in {namespace} changed from {old_fingerprint} to {new_fingerprint}: refused until accepted with identity.accept")]
pub struct ChangedIdentity {
    /// Owner.
    pub jid: String,
    /// Namespace.
    pub namespace: protocol_core::Version,
    /// Device id.
    pub device_id: u32,
    /// Fingerprint held for the device.
    pub old_fingerprint: String,
    /// Fingerprint of the new identity.
    pub new_fingerprint: String,
}

impl ChangedIdentity {
    /// The user decides.
    pub fn cause(&self) -> ErrorCause {
        ErrorCause::Policy
    }
}
