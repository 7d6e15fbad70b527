//! Binary wire formats of the per-device `<key>` element contents.
//!
//! * [`oldmemo`]: OMEMO 0.3, libsignal "version 3" (`0x33 ‖ protobuf [‖ MAC]`).
//! * [`twomemo`]: OMEMO 2 (`urn:xmpp:omemo:2`), plain protobuf with the MAC inside.
//!
//! Parsers are strict about what the session layer relies on (required fields, key lengths,
//! size limits) and lenient where protobuf itself is (field order, unknown fields).

pub mod oldmemo;
pub mod twomemo;

use crate::error::ErrorCause;

/// Why a binary key element could not be parsed.
///
/// Messages name fields and lengths only; they never contain key or ciphertext bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The input was empty.
    #[error("empty message")]
    Empty,
    /// The input is longer than the parser accepts.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLong {
        /// Length of the input.
        len: usize,
        /// Largest accepted length.
        max: usize,
    },
    /// The input is too short to hold the fixed parts (version byte, MAC).
    #[error("message of {len} bytes is shorter than the minimum of {min} bytes")]
    Truncated {
        /// Length of the input.
        len: usize,
        /// Smallest possible length.
        min: usize,
    },
    /// OMEMO 0.3: the leading version byte is not 0x33.
    #[error("unsupported version byte 0x{found:02x} (expected 0x33)")]
    BadVersion {
        /// The byte that was found.
        found: u8,
    },
    /// The protobuf encoding itself is malformed.
    #[error("malformed protobuf in {message}: {source}")]
    Protobuf {
        /// Which protobuf message was being decoded.
        message: &'static str,
        /// The decoder's error (describes the structure problem only).
        #[source]
        source: prost::DecodeError,
    },
    /// A field the protocol requires is absent.
    #[error("{message}: required field `{field}` is missing")]
    MissingField {
        /// Which protobuf message.
        message: &'static str,
        /// Name of the missing field.
        field: &'static str,
    },
    /// A fixed-length field (key, MAC) has the wrong length.
    #[error("{message}: field `{field}` has {len} bytes, expected {expected}")]
    BadLength {
        /// Which protobuf message.
        message: &'static str,
        /// Name of the field.
        field: &'static str,
        /// Length found.
        len: usize,
        /// Length required.
        expected: usize,
    },
    /// OMEMO 0.3: a public key does not start with the Curve25519 type byte 0x05.
    #[error("{message}: field `{field}` has key type byte 0x{found:02x} (expected 0x05)")]
    BadKeyType {
        /// Which protobuf message.
        message: &'static str,
        /// Name of the field.
        field: &'static str,
        /// Type byte found.
        found: u8,
    },
    /// A variable-length field exceeds its limit.
    #[error("{message}: field `{field}` has {len} bytes, more than the limit of {max}")]
    FieldTooLong {
        /// Which protobuf message.
        message: &'static str,
        /// Name of the field.
        field: &'static str,
        /// Length found.
        len: usize,
        /// Largest accepted length.
        max: usize,
    },
}

impl WireError {
    /// Whom the error is due to: a version byte we do not speak, else malformed input.
    pub fn cause(&self) -> ErrorCause {
        match self {
            WireError::BadVersion { .. } => ErrorCause::Incompatible,
            _ => ErrorCause::PeerMisbehaved,
        }
    }
}

/// Checks the overall input length shared by every parser.
pub(crate) fn check_input_len(bytes: &[u8]) -> Result<(), WireError> {
    if bytes.is_empty() {
        return Err(WireError::Empty);
    }
    if bytes.len() > crate::consts::MAX_KEY_ELEMENT {
        return Err(WireError::TooLong {
            len: bytes.len(),
            max: crate::consts::MAX_KEY_ELEMENT,
        });
    }
    Ok(())
}

/// Unwraps a required protobuf field.
pub(crate) fn required<T>(
    value: Option<T>,
    message: &'static str,
    field: &'static str,
) -> Result<T, WireError> {
    value.ok_or(WireError::MissingField { message, field })
}

/// Converts a field into a fixed-size array, reporting the length on mismatch.
pub(crate) fn fixed<const N: usize>(
    value: &[u8],
    message: &'static str,
    field: &'static str,
) -> Result<[u8; N], WireError> {
    value.try_into().map_err(|_| WireError::BadLength {
        message,
        field,
        len: value.len(),
        expected: N,
    })
}

/// Bounds the ratchet ciphertext (the key material is small; anything big is an attack).
pub(crate) fn check_ciphertext(
    value: &[u8],
    message: &'static str,
    field: &'static str,
) -> Result<(), WireError> {
    if value.len() > crate::consts::MAX_RATCHET_CIPHERTEXT {
        return Err(WireError::FieldTooLong {
            message,
            field,
            len: value.len(),
            max: crate::consts::MAX_RATCHET_CIPHERTEXT,
        });
    }
    Ok(())
}
