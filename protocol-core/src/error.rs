//! What an error says about its cause, and the one error several modules share.
//!
//! Each operation family has its own error enum beside the operation (the crate docs list
//! them). Every one of them answers `cause()` with an [`ErrorCause`], so a caller can react to
//! an error without matching its variants. [`SnapshotError`] lives here because keys and
//! sessions both have a storage form.

use thiserror::Error;

/// Whom an error is due to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCause {
    /// The peer (or whoever produced the bytes) misbehaved: a bad MAC or signature, malformed
    /// or oversized input, a replayed message.
    PeerMisbehaved,
    /// The peer speaks something we do not: an unsupported version or feature.
    Incompatible,
    /// Our own state is missing or failed: no session, no such prekey, a message key no longer
    /// kept, a stored state that does not load.
    LocalState,
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
