//! OMEMO 0.3 wire format: libsignal v3 `SignalMessage` and `PreKeySignalMessage`
//! (OMEMO.md §2.5).
//!
//! ```text
//! SignalMessage       = 0x33 ‖ protobuf ‖ MAC(8)
//! PreKeySignalMessage = 0x33 ‖ protobuf            (its `message` is a complete SignalMessage)
//! ```

use super::{check_ciphertext, check_input_len, fixed, required, WireError};
use prost::Message as _;

/// `(3 << 4) | 3`: message version 3, current version 3. Covered by the MAC.
pub const VERSION_BYTE: u8 = 0x33;
/// Length of the truncated HMAC appended to a SignalMessage.
pub const MAC_LEN: usize = 8;
/// libsignal's type byte of a serialized Curve25519 public key.
pub const KEY_TYPE_DJB: u8 = 0x05;

const SIGNAL_MESSAGE: &str = "SignalMessage";
const PRE_KEY_SIGNAL_MESSAGE: &str = "PreKeySignalMessage";

/// protobuf `textsecure.SignalMessage` (proto2; every field is sent even when zero).
#[derive(Clone, PartialEq, prost::Message)]
struct SignalMessageProto {
    #[prost(bytes = "vec", optional, tag = "1")]
    ratchet_key: Option<Vec<u8>>,
    #[prost(uint32, optional, tag = "2")]
    counter: Option<u32>,
    #[prost(uint32, optional, tag = "3")]
    previous_counter: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "4")]
    ciphertext: Option<Vec<u8>>,
}

/// protobuf `textsecure.PreKeySignalMessage` (proto2).
#[derive(Clone, PartialEq, prost::Message)]
struct PreKeySignalMessageProto {
    #[prost(uint32, optional, tag = "1")]
    pre_key_id: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "2")]
    base_key: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "3")]
    identity_key: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "4")]
    message: Option<Vec<u8>>,
    #[prost(uint32, optional, tag = "5")]
    registration_id: Option<u32>,
    #[prost(uint32, optional, tag = "6")]
    signed_pre_key_id: Option<u32>,
}

/// Prepends the libsignal type byte to a raw Curve25519 public key.
fn serialize_key(key: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(33);
    out.push(KEY_TYPE_DJB);
    out.extend_from_slice(key);
    out
}

/// Accepts exactly `0x05 ‖ 32 bytes` and returns the 32 bytes.
fn parse_key(
    value: &[u8],
    message: &'static str,
    field: &'static str,
) -> Result<[u8; 32], WireError> {
    if value.len() != 33 {
        return Err(WireError::BadLength {
            message,
            field,
            len: value.len(),
            expected: 33,
        });
    }
    match value.split_first() {
        Some((&KEY_TYPE_DJB, rest)) => fixed(rest, message, field),
        Some((&found, _)) => Err(WireError::BadKeyType {
            message,
            field,
            found,
        }),
        None => Err(WireError::BadLength {
            message,
            field,
            len: 0,
            expected: 33,
        }),
    }
}

/// Checks the version byte and returns the bytes after it.
fn strip_version(bytes: &[u8]) -> Result<&[u8], WireError> {
    match bytes.split_first() {
        Some((&VERSION_BYTE, rest)) => Ok(rest),
        Some((&found, _)) => Err(WireError::BadVersion { found }),
        None => Err(WireError::Empty),
    }
}

/// A libsignal v3 SignalMessage without its MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalMessage {
    /// Sender's current ratchet public key (raw 32 bytes; `0x05` is added on the wire).
    pub ratchet_key: [u8; 32],
    /// Message number `n` in the sending chain.
    pub counter: u32,
    /// Length `pn` of the previous sending chain.
    pub previous_counter: u32,
    /// AES-256-CBC ciphertext of the key material.
    pub ciphertext: Vec<u8>,
}

impl SignalMessage {
    /// `0x33 ‖ protobuf`: exactly the bytes the MAC covers after the associated data.
    pub fn encode(&self) -> Vec<u8> {
        let proto = SignalMessageProto {
            ratchet_key: Some(serialize_key(&self.ratchet_key)),
            counter: Some(self.counter),
            previous_counter: Some(self.previous_counter),
            ciphertext: Some(self.ciphertext.clone()),
        };
        let mut out = Vec::with_capacity(1 + proto.encoded_len() + MAC_LEN);
        out.push(VERSION_BYTE);
        // Encoding into a Vec cannot run out of space.
        proto.encode_raw(&mut out);
        out
    }

    /// `0x33 ‖ protobuf ‖ mac`: the complete message as sent in a `<key>` element.
    pub fn encode_with_mac(&self, mac: &[u8; MAC_LEN]) -> Vec<u8> {
        let mut out = self.encode();
        out.extend_from_slice(mac);
        out
    }
}

/// A received SignalMessage split into its fields, the MAC and the bytes the MAC covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedSignalMessage {
    /// The decoded fields.
    pub message: SignalMessage,
    /// The received bytes minus the MAC (`0x33 ‖ protobuf` as received, not re-encoded).
    pub authenticated: Vec<u8>,
    /// The received truncated MAC.
    pub mac: [u8; MAC_LEN],
}

/// Parses a complete SignalMessage (`0x33 ‖ protobuf ‖ mac`).
pub fn parse_signal_message(bytes: &[u8]) -> Result<ParsedSignalMessage, WireError> {
    check_input_len(bytes)?;
    // Check the version first so a misdirected PreKeySignalMessage/garbage says so.
    strip_version(bytes)?;
    let min = 1 + MAC_LEN;
    let split =
        bytes
            .len()
            .checked_sub(MAC_LEN)
            .filter(|&s| s >= 1)
            .ok_or(WireError::Truncated {
                len: bytes.len(),
                min,
            })?;
    let (authenticated, mac) = bytes.split_at(split);
    let mac: [u8; MAC_LEN] = fixed(mac, SIGNAL_MESSAGE, "mac")?;
    let body = strip_version(authenticated)?;
    let proto = SignalMessageProto::decode(body).map_err(|source| WireError::Protobuf {
        message: SIGNAL_MESSAGE,
        source,
    })?;
    let ratchet_key = required(proto.ratchet_key, SIGNAL_MESSAGE, "ratchetKey")?;
    let counter = required(proto.counter, SIGNAL_MESSAGE, "counter")?;
    let previous_counter = required(proto.previous_counter, SIGNAL_MESSAGE, "previousCounter")?;
    let ciphertext = required(proto.ciphertext, SIGNAL_MESSAGE, "ciphertext")?;
    let ratchet_key = parse_key(&ratchet_key, SIGNAL_MESSAGE, "ratchetKey")?;
    check_ciphertext(&ciphertext, SIGNAL_MESSAGE, "ciphertext")?;
    Ok(ParsedSignalMessage {
        message: SignalMessage {
            ratchet_key,
            counter,
            previous_counter,
            ciphertext,
        },
        authenticated: authenticated.to_vec(),
        mac,
    })
}

/// A libsignal v3 PreKeySignalMessage (OMEMO 0.3 key exchange).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreKeySignalMessage {
    /// libsignal registration id; python-oldmemo never sets it, OMEMO ignores it.
    pub registration_id: Option<u32>,
    /// Id of the responder's one-time prekey (required by OMEMO).
    pub pre_key_id: u32,
    /// Id of the responder's signed prekey.
    pub signed_pre_key_id: u32,
    /// Initiator's ephemeral public key (raw 32 bytes).
    pub base_key: [u8; 32],
    /// Initiator's Curve25519 identity public key (raw 32 bytes).
    pub identity_key: [u8; 32],
    /// The complete inner SignalMessage, including `0x33` and its MAC.
    pub message: Vec<u8>,
}

impl PreKeySignalMessage {
    /// `0x33 ‖ protobuf`, fields in field-number order.
    pub fn encode(&self) -> Vec<u8> {
        let proto = PreKeySignalMessageProto {
            pre_key_id: Some(self.pre_key_id),
            base_key: Some(serialize_key(&self.base_key)),
            identity_key: Some(serialize_key(&self.identity_key)),
            message: Some(self.message.clone()),
            registration_id: self.registration_id,
            signed_pre_key_id: Some(self.signed_pre_key_id),
        };
        let mut out = Vec::with_capacity(1 + proto.encoded_len());
        out.push(VERSION_BYTE);
        proto.encode_raw(&mut out);
        out
    }

    /// Parses `0x33 ‖ protobuf`; the inner message is validated with
    /// [`parse_signal_message`] (its errors are returned as they are).
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        check_input_len(bytes)?;
        let body = strip_version(bytes)?;
        let proto =
            PreKeySignalMessageProto::decode(body).map_err(|source| WireError::Protobuf {
                message: PRE_KEY_SIGNAL_MESSAGE,
                source,
            })?;
        let m = PRE_KEY_SIGNAL_MESSAGE;
        let pre_key_id = required(proto.pre_key_id, m, "preKeyId")?;
        let signed_pre_key_id = required(proto.signed_pre_key_id, m, "signedPreKeyId")?;
        let base_key = required(proto.base_key, m, "baseKey")?;
        let identity_key = required(proto.identity_key, m, "identityKey")?;
        let message = required(proto.message, m, "message")?;
        let base_key = parse_key(&base_key, m, "baseKey")?;
        let identity_key = parse_key(&identity_key, m, "identityKey")?;
        parse_signal_message(&message)?;
        Ok(PreKeySignalMessage {
            registration_id: proto.registration_id,
            pre_key_id,
            signed_pre_key_id,
            base_key,
            identity_key,
            message,
        })
    }
}
