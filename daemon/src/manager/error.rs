//! What the session manager can refuse. Each operation family has its own error enum beside
//! the operation, as vodozemac does:
//!
//! - `account`: [`CreateAccountError`](super::account::CreateAccountError);
//!   `lifecycle`: [`DeleteAccountError`](super::lifecycle::DeleteAccountError);
//!   `device_id`: [`RenewDeviceIdError`](super::device_id::RenewDeviceIdError);
//! - `own_bundle`: [`OwnBundleError`](super::own_bundle::OwnBundleError),
//!   [`OwnDevicelistError`](super::own_bundle::OwnDevicelistError);
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
//!   `pinning`: [`IdentityError`](super::pinning::IdentityError);
//!   `links`: [`OwnLinkError`](super::links::OwnLinkError),
//!   [`LinkError`](super::links::LinkError); `labels`:
//!   [`LabelError`](super::labels::LabelError).
//!
//! They nest the pieces this module holds, which several operations share: [`InvalidJid`]
//! (what is wrong with the JID: [`JidProblem`]),
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

/// A JID the request gives is not a bare JID `local@domain`.
#[derive(Debug, thiserror::Error)]
#[error("not a bare JID: {problem}")]
pub struct InvalidJid {
    /// What is wrong with it, naming it.
    pub problem: JidProblem,
}

/// What is wrong with a JID, in the words of the message (which names the JID, or its start
/// when it is too long to repeat).
#[derive(Debug, thiserror::Error)]
pub enum JidProblem {
    /// An empty string.
    #[error("the JID is empty (give local@domain)")]
    Empty,
    /// Longer than RFC 7622 allows.
    #[error("a JID of {0} bytes is longer than {max} bytes", max = crate::storage::jids::MAX_JID_BYTES)]
    TooLong(usize),
    /// Blanks or control characters anywhere.
    #[error("{0} contains blanks or control characters")]
    Blank(String),
    /// A full JID: the bare JID with a resource.
    #[error("{jid} has the resource /{resource} (give the bare JID {bare})")]
    Resource {
        /// The JID as given.
        jid: String,
        /// The resource.
        resource: String,
        /// The bare part as given.
        bare: String,
    },
    /// A name without `@domain` (`bob`).
    #[error("{0} has no @domain (a bare JID is local@domain)")]
    NoDomain(String),
    /// Nothing before the `@`.
    #[error("{0} has an empty local part before the @")]
    EmptyLocal(String),
    /// Nothing after the `@`.
    #[error("{0} has an empty domain after the @")]
    EmptyDomain(String),
    /// More than one `@`.
    #[error("{0} has more than one @")]
    TwoAts(String),
    /// The local part or the domain has characters RFC 7622 forbids there.
    #[error("{jid} is refused by RFC 7622: {reason}")]
    Refused {
        /// The JID as given.
        jid: String,
        /// What the JID parser says.
        reason: String,
    },
}

impl InvalidJid {
    /// Says what is wrong with `jid`, which is not a valid bare JID with a local part.
    pub fn diagnose(jid: &str) -> Self {
        let owned = || jid.to_owned();
        let problem = if jid.is_empty() {
            JidProblem::Empty
        } else if jid.len() > crate::storage::jids::MAX_JID_BYTES {
            JidProblem::TooLong(jid.len())
        } else if jid.chars().any(|c| c.is_whitespace() || c.is_control()) {
            JidProblem::Blank(owned())
        } else if let Some((bare, resource)) = jid.split_once('/') {
            JidProblem::Resource {
                jid: owned(),
                resource: resource.to_owned(),
                bare: bare.to_owned(),
            }
        } else {
            match jid.split('@').collect::<Vec<_>>().as_slice() {
                [_] => JidProblem::NoDomain(owned()),
                ["", _] => JidProblem::EmptyLocal(owned()),
                [_, ""] => JidProblem::EmptyDomain(owned()),
                [_, _] => JidProblem::Refused {
                    jid: owned(),
                    reason: jid::BareJid::new(jid)
                        .err()
                        .map_or_else(|| "not a valid JID".to_owned(), |e| e.to_string()),
                },
                _ => JidProblem::TwoAts(owned()),
            }
        };
        Self { problem }
    }

    /// Always the request's.
    pub fn cause(&self) -> ErrorCause {
        ErrorCause::Request
    }
}

/// No account to act for.
#[derive(Debug, thiserror::Error)]
pub enum AccountLookupError {
    /// The request's `account` is not a bare JID.
    #[error(transparent)]
    Jid(#[from] InvalidJid),
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
