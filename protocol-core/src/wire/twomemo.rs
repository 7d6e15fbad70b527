//! OMEMO 2 wire format (`urn:xmpp:omemo:2`, OMEMO.md §3.5): `OMEMOMessage`,
//! `OMEMOAuthenticatedMessage`, `OMEMOKeyExchange`. No version byte; the MAC lives inside
//! `OMEMOAuthenticatedMessage`.
#![allow(clippy::upper_case_acronyms)] // keep the protocol's message names

use super::{check_ciphertext, check_input_len, fixed, required, WireError};
use prost::Message as _;

/// Length of the truncated HMAC in an `OMEMOAuthenticatedMessage`.
pub const MAC_LEN: usize = 16;

const OMEMO_MESSAGE: &str = "OMEMOMessage";
const OMEMO_AUTHENTICATED_MESSAGE: &str = "OMEMOAuthenticatedMessage";
const OMEMO_KEY_EXCHANGE: &str = "OMEMOKeyExchange";

#[derive(Clone, PartialEq, prost::Message)]
struct OMEMOMessageProto {
    #[prost(uint32, optional, tag = "1")]
    n: Option<u32>,
    #[prost(uint32, optional, tag = "2")]
    pn: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "3")]
    dh_pub: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "4")]
    ciphertext: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct OMEMOAuthenticatedMessageProto {
    #[prost(bytes = "vec", optional, tag = "1")]
    mac: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    message: Option<Vec<u8>>,
}

/// `message` is an embedded `OMEMOAuthenticatedMessage`; declared as bytes (same wire form,
/// as libomemo-c does) so the exact received bytes are kept.
#[derive(Clone, PartialEq, prost::Message)]
struct OMEMOKeyExchangeProto {
    #[prost(uint32, optional, tag = "1")]
    pk_id: Option<u32>,
    #[prost(uint32, optional, tag = "2")]
    spk_id: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "3")]
    ik: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "4")]
    ek: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "5")]
    message: Option<Vec<u8>>,
}

fn decode<M: prost::Message + Default>(
    bytes: &[u8],
    message: &'static str,
) -> Result<M, WireError> {
    check_input_len(bytes)?;
    M::decode(bytes).map_err(|source| WireError::Protobuf { message, source })
}

/// The ratchet header plus ciphertext; its serialized bytes are what the MAC covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OMEMOMessage {
    /// Message number in the sending chain.
    pub n: u32,
    /// Length of the previous sending chain.
    pub pn: u32,
    /// Sender's ratchet public key (raw X25519).
    pub dh_pub: [u8; 32],
    /// AES-256-CBC ciphertext of the key material.
    pub ciphertext: Vec<u8>,
}

impl OMEMOMessage {
    /// protobuf, all fields, in field-number order.
    pub fn encode(&self) -> Vec<u8> {
        OMEMOMessageProto {
            n: Some(self.n),
            pn: Some(self.pn),
            dh_pub: Some(self.dh_pub.to_vec()),
            ciphertext: Some(self.ciphertext.clone()),
        }
        .encode_to_vec()
    }

    /// Parses an `OMEMOMessage`. `ciphertext` is `optional` in the schema but a message
    /// without it cannot carry key material, so it is required here.
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        let m = OMEMO_MESSAGE;
        let proto: OMEMOMessageProto = decode(bytes, m)?;
        let n = required(proto.n, m, "n")?;
        let pn = required(proto.pn, m, "pn")?;
        let dh_pub = required(proto.dh_pub, m, "dh_pub")?;
        let ciphertext = required(proto.ciphertext, m, "ciphertext")?;
        let dh_pub = fixed(&dh_pub, m, "dh_pub")?;
        check_ciphertext(&ciphertext, m, "ciphertext")?;
        Ok(OMEMOMessage {
            n,
            pn,
            dh_pub,
            ciphertext,
        })
    }
}

/// An `OMEMOMessage` with its truncated MAC (content of a non-KEX `<key>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OMEMOAuthenticatedMessage {
    /// `HMAC(auth_key, AD ‖ message)[0..16]`.
    pub mac: [u8; MAC_LEN],
    /// The exact serialized `OMEMOMessage` bytes (verify the MAC over these, never a re-encoding).
    pub message: Vec<u8>,
}

impl OMEMOAuthenticatedMessage {
    /// protobuf, `mac` then `message`.
    pub fn encode(&self) -> Vec<u8> {
        OMEMOAuthenticatedMessageProto {
            mac: Some(self.mac.to_vec()),
            message: Some(self.message.clone()),
        }
        .encode_to_vec()
    }

    /// Parses an `OMEMOAuthenticatedMessage`; the inner `OMEMOMessage` is validated with
    /// [`OMEMOMessage::parse`] (its errors are returned as they are).
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        let m = OMEMO_AUTHENTICATED_MESSAGE;
        let proto: OMEMOAuthenticatedMessageProto = decode(bytes, m)?;
        let mac = required(proto.mac, m, "mac")?;
        let message = required(proto.message, m, "message")?;
        let mac = fixed(&mac, m, "mac")?;
        OMEMOMessage::parse(&message)?;
        Ok(OMEMOAuthenticatedMessage { mac, message })
    }

    /// Parses the inner `OMEMOMessage` (already validated by [`Self::parse`]).
    pub fn parse_message(&self) -> Result<OMEMOMessage, WireError> {
        OMEMOMessage::parse(&self.message)
    }
}

/// OMEMO 2 key exchange (content of a `<key kex='true'>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OMEMOKeyExchange {
    /// Id of the responder's one-time prekey.
    pub pk_id: u32,
    /// Id of the responder's signed prekey.
    pub spk_id: u32,
    /// Initiator's Ed25519 identity public key, exactly as published in its `<ik>`.
    pub ik: [u8; 32],
    /// Initiator's ephemeral X25519 public key.
    pub ek: [u8; 32],
    /// The first authenticated message of the session.
    pub message: OMEMOAuthenticatedMessage,
}

impl OMEMOKeyExchange {
    /// protobuf, all fields, in field-number order.
    pub fn encode(&self) -> Vec<u8> {
        OMEMOKeyExchangeProto {
            pk_id: Some(self.pk_id),
            spk_id: Some(self.spk_id),
            ik: Some(self.ik.to_vec()),
            ek: Some(self.ek.to_vec()),
            message: Some(self.message.encode()),
        }
        .encode_to_vec()
    }

    /// Parses an `OMEMOKeyExchange` including the embedded authenticated message.
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        let m = OMEMO_KEY_EXCHANGE;
        let proto: OMEMOKeyExchangeProto = decode(bytes, m)?;
        let pk_id = required(proto.pk_id, m, "pk_id")?;
        let spk_id = required(proto.spk_id, m, "spk_id")?;
        let ik = required(proto.ik, m, "ik")?;
        let ek = required(proto.ek, m, "ek")?;
        let message = required(proto.message, m, "message")?;
        let ik = fixed(&ik, m, "ik")?;
        let ek = fixed(&ek, m, "ek")?;
        let message = OMEMOAuthenticatedMessage::parse(&message)?;
        Ok(OMEMOKeyExchange {
            pk_id,
            spk_id,
            ik,
            ek,
            message,
        })
    }
}
