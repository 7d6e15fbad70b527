//! What an error says about its cause, and the one error several modules share.
//!
//! Each operation family has its own error enum beside the operation (the crate docs list
//! them). Every one of them answers `cause()` with an [`ErrorCause`], so a caller can react to
//! an error without matching its variants. [`SnapshotError`] lives here because keys and
//! sessions both have a storage form.
//!
//! The error enums a caller maps variant by variant (the session's, the ratchet's and media
//! sharing's) and [`ErrorCause`] are exhaustive on purpose: omemod turns each variant into an error its
//! clients see, and a new variant must make it decide rather than fall into a wildcard arm.

use thiserror::Error;

/// Whom an error is due to.
///
/// protocol-core's own errors say one of the first three; the last two are for an application
/// built on it (omemod), whose requests and policies protocol-core never sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCause {
    /// The peer (or whoever produced the bytes) misbehaved: a bad MAC or signature, malformed
    /// or oversized input, a replayed message.
    PeerMisbehaved,
    /// The peer speaks something we do not: an unsupported version or feature.
    Incompatible,
    /// Our own state is missing or failed: no session, no such prekey, a message key no longer
    /// kept, a stored state that does not load.
    LocalState,
    /// The application's caller asked for something invalid: a malformed parameter, an
    /// account or key that does not exist, a request that contradicts an earlier one.
    Request,
    /// Refused by a decision of the user or a limit of the application until it changes: a
    /// distrusted key, a changed identity not yet accepted, a rate limit.
    Policy,
}

impl ErrorCause {
    /// The stable snake_case name (omemod sends it as `error.data.cause`).
    pub const fn name(self) -> &'static str {
        match self {
            ErrorCause::PeerMisbehaved => "peer_misbehaved",
            ErrorCause::Incompatible => "incompatible",
            ErrorCause::LocalState => "local_state",
            ErrorCause::Request => "request",
            ErrorCause::Policy => "policy",
        }
    }
}

impl std::fmt::Display for ErrorCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a stored snapshot (of a session or of one of our keys) could not be loaded. Always
/// [`ErrorCause::LocalState`]: the state is ours, whoever wrote it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Not a valid protobuf.
    #[error("snapshot is not valid protobuf")]
    Decode,
    /// Written by a newer release.
    #[error("snapshot format {0} is newer than this release understands")]
    UnknownFormat(u32),
    /// A field has an impossible value.
    #[error("snapshot field `{0}` is invalid")]
    Invalid(&'static str),
}

impl SnapshotError {
    /// Whom the error is due to.
    pub fn cause(&self) -> ErrorCause {
        ErrorCause::LocalState
    }
}
