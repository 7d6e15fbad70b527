//! Encryption of the message body ("payload") with a fresh per-message key.
//!
//! * [`oldmemo`]: OMEMO 0.3, AES-128-GCM; the tag travels in the key material (OMEMO.md §2.6).
//! * [`twomemo`]: OMEMO 2, HKDF → AES-256-CBC + truncated HMAC-SHA-256 (OMEMO.md §3.6).

pub mod oldmemo;
pub mod twomemo;

use crate::error::ErrorCause;

/// Why a payload could not be decrypted.
///
/// Messages carry lengths only, never key material or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// The decrypted key material has a length this version does not use.
    #[error("key material of {len} bytes has an unsupported length")]
    BadKeyMaterialLength {
        /// Length found.
        len: usize,
    },
    /// OMEMO 0.3: the IV is neither 12 nor 16 bytes.
    #[error("IV of {len} bytes has an unsupported length (expected 12 or 16)")]
    BadIvLength {
        /// Length found.
        len: usize,
    },
    /// The ciphertext is too short or not a whole number of blocks.
    #[error("ciphertext of {len} bytes has an invalid length")]
    BadCiphertextLength {
        /// Length found.
        len: usize,
    },
    /// OMEMO 0.3: the AES-GCM authentication tag does not match.
    #[error("AES-GCM authentication tag mismatch")]
    TagMismatch,
    /// OMEMO 2: the truncated HMAC over the ciphertext does not match.
    #[error("payload HMAC mismatch")]
    HmacMismatch,
    /// OMEMO 2: the PKCS#7 padding is invalid (only reachable after a valid HMAC).
    #[error("invalid PKCS#7 padding")]
    BadPadding,
}

impl PayloadError {
    /// Whom the error is due to: the sender's payload does not authenticate or is malformed.
    pub fn cause(&self) -> ErrorCause {
        ErrorCause::PeerMisbehaved
    }
}
