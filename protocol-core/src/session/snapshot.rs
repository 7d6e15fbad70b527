//! The storage form of a session: a versioned protobuf message, so state written by one
//! release loads in the next (fields are only ever added, never renumbered).
//!
//! Skipped message keys are normally stored beside the snapshot (one row each, so a late
//! message touches one row, not the whole store) and handed back to [`Session::from_snapshot`].

use super::{KeyExchangeInfo, PendingEncrypt, Role, Session};
use crate::consts::MAX_PREVIOUS_RECEIVING_CHAINS;
use crate::double_ratchet::chain_key::ChainKey;
use crate::double_ratchet::root_key::RootKey;
use crate::double_ratchet::skipped_keys::{SkippedKey, SkippedKeys};
use crate::double_ratchet::{Chains, DoubleRatchet, PreviousChain};
use crate::error::SnapshotError;
use crate::keys::RemoteIdentity;
use crate::keys::{KeyPair, PrivateKey, PublicKey};
use crate::Version;
use prost::Message;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Current snapshot format number.
pub const SESSION_SNAPSHOT_FORMAT: u32 = 1;

/// The serialized form of a skipped message key.
#[derive(Clone, PartialEq, Message, Zeroize, ZeroizeOnDrop)]
#[prost(skip_debug)]
pub struct SkippedKeySnapshot {
    /// Sender ratchet key.
    #[prost(bytes = "vec", tag = "1")]
    pub ratchet_key: Vec<u8>,
    /// Index.
    #[prost(uint32, tag = "2")]
    pub n: u32,
    /// Message key.
    #[prost(bytes = "vec", tag = "3")]
    pub message_key: Vec<u8>,
}

/// The serialized form of an earlier receiving chain.
#[derive(Clone, PartialEq, Message, Zeroize, ZeroizeOnDrop)]
#[prost(skip_debug)]
pub struct PreviousChainSnapshot {
    /// The peer's ratchet key of that chain.
    #[prost(bytes = "vec", tag = "1")]
    pub ratchet_key: Vec<u8>,
    /// Chain key.
    #[prost(bytes = "vec", tag = "2")]
    pub chain_key: Vec<u8>,
    /// Index of the chain key.
    #[prost(uint32, tag = "3")]
    pub index: u32,
    /// Keys below this index may have been dropped from the skipped-key store.
    #[prost(uint32, tag = "4")]
    pub dropped_below: u32,
}

/// The serialized form of a [`Session`].
#[derive(Clone, PartialEq, Message, Zeroize, ZeroizeOnDrop)]
#[prost(skip_debug)]
pub struct SessionSnapshot {
    /// [`SESSION_SNAPSHOT_FORMAT`] at the time of writing.
    #[prost(uint32, tag = "1")]
    pub format: u32,
    /// 0 = OMEMO 0.3, 1 = OMEMO 2.
    #[prost(uint32, tag = "2")]
    pub version: u32,
    /// 0 = initiator, 1 = responder.
    #[prost(uint32, tag = "3")]
    pub role: u32,
    /// Our identity key as this version transports it.
    #[prost(bytes = "vec", tag = "4")]
    pub own_identity: Vec<u8>,
    /// The peer's identity key as this version transports it.
    #[prost(bytes = "vec", tag = "5")]
    pub remote_identity: Vec<u8>,
    /// The key exchange's one-time prekey id.
    #[prost(uint32, tag = "6")]
    pub pre_key_id: u32,
    /// The key exchange's signed prekey id.
    #[prost(uint32, tag = "7")]
    pub signed_pre_key_id: u32,
    /// The key exchange's ephemeral key.
    #[prost(bytes = "vec", tag = "8")]
    pub ephemeral: Vec<u8>,
    /// Whether the peer has answered.
    #[prost(bool, tag = "9")]
    pub confirmed: bool,
    /// Root key.
    #[prost(bytes = "vec", tag = "10")]
    pub root_key: Vec<u8>,
    /// Our current ratchet private key.
    #[prost(bytes = "vec", tag = "11")]
    pub own_ratchet_private: Vec<u8>,
    /// The peer's current ratchet key, once known.
    #[prost(bytes = "vec", optional, tag = "12")]
    pub remote_ratchet: Option<Vec<u8>>,
    /// Sending chain key, once we can send.
    #[prost(bytes = "vec", optional, tag = "13")]
    pub sending_chain_key: Option<Vec<u8>>,
    /// Index of the sending chain key.
    #[prost(uint32, tag = "14")]
    pub sending_index: u32,
    /// Receiving chain key, once a message arrived.
    #[prost(bytes = "vec", optional, tag = "15")]
    pub receiving_chain_key: Option<Vec<u8>>,
    /// Index of the receiving chain key.
    #[prost(uint32, tag = "16")]
    pub receiving_index: u32,
    /// Length of our previous sending chain (`pn`).
    #[prost(uint32, tag = "17")]
    pub previous_sending_length: u32,
    /// Ratchet keys of the peer's earlier chains, oldest first.
    #[prost(bytes = "vec", repeated, tag = "18")]
    pub previous_remote: Vec<Vec<u8>>,
    /// Only when the caller asked for a self-contained snapshot.
    #[prost(message, repeated, tag = "19")]
    pub skipped: Vec<SkippedKeySnapshot>,
    /// Added after the first release (absent = 0): see `receiving_dropped_below` in the ratchet.
    #[prost(uint32, tag = "20")]
    pub receiving_dropped_below: u32,
    /// Added after the first release (absent = none kept), oldest first.
    #[prost(message, repeated, tag = "21")]
    pub previous_receiving: Vec<PreviousChainSnapshot>,
}

fn arr(v: &[u8], field: &'static str) -> Result<[u8; 32], SnapshotError> {
    v.try_into().map_err(|_| SnapshotError::Invalid(field))
}

impl Session {
    /// The snapshot of this session; `include_skipped` also embeds the skipped-key store.
    pub fn snapshot(&self, include_skipped: bool) -> SessionSnapshot {
        let c = &self.ratchet.chains;
        SessionSnapshot {
            format: SESSION_SNAPSHOT_FORMAT,
            version: match self.version {
                Version::Oldmemo => 0,
                Version::Twomemo => 1,
            },
            role: match self.role {
                Role::Initiator => 0,
                Role::Responder => 1,
            },
            own_identity: self.own_identity.to_vec(),
            remote_identity: self.remote_identity.transported().to_vec(),
            pre_key_id: self.key_exchange.pre_key_id,
            signed_pre_key_id: self.key_exchange.signed_pre_key_id,
            ephemeral: self.key_exchange.ephemeral.0.to_vec(),
            confirmed: self.confirmed,
            root_key: c.root_key.as_bytes().to_vec(),
            own_ratchet_private: c.own_ratchet.private.to_bytes().to_vec(),
            remote_ratchet: c.remote_ratchet.map(|k| k.0.to_vec()),
            sending_chain_key: c.sending.as_ref().map(|k| k.as_bytes().to_vec()),
            sending_index: c.sending.as_ref().map_or(0, ChainKey::index),
            receiving_chain_key: c.receiving.as_ref().map(|k| k.as_bytes().to_vec()),
            receiving_index: c.receiving.as_ref().map_or(0, ChainKey::index),
            previous_sending_length: c.previous_sending_length,
            previous_remote: c.previous_remote.iter().map(|k| k.0.to_vec()).collect(),
            receiving_dropped_below: c.receiving_dropped_below,
            previous_receiving: c
                .previous_receiving
                .iter()
                .map(|p| PreviousChainSnapshot {
                    ratchet_key: p.ratchet_key.0.to_vec(),
                    chain_key: p.chain.as_bytes().to_vec(),
                    index: p.chain.index(),
                    dropped_below: p.dropped_below,
                })
                .collect(),
            skipped: if include_skipped {
                self.ratchet
                    .skipped_keys()
                    .iter()
                    .map(|k| SkippedKeySnapshot {
                        ratchet_key: k.ratchet_key.to_vec(),
                        n: k.n,
                        message_key: k.message_key.to_vec(),
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    /// The snapshot as bytes: the encoding of [`Self::snapshot`], written straight from the
    /// session (a fan-out stores a hundred snapshots per message; building the message first
    /// cost an allocation per field). The buffer is sized up front, so no reallocation leaves
    /// a copy of the secrets behind.
    pub fn to_bytes(&self, include_skipped: bool) -> Zeroizing<Vec<u8>> {
        self.encode(include_skipped, self.ratchet.chains.sending.as_ref())
    }

    /// [`Self::to_bytes`] of the session as it will be once `pending` is committed.
    pub fn to_bytes_after(
        &self,
        pending: &PendingEncrypt,
        include_skipped: bool,
    ) -> Zeroizing<Vec<u8>> {
        self.encode(include_skipped, Some(pending.next_sending()))
    }

    /// The snapshot's protobuf, fields in number order: who and how (1–9), the chains (10–18),
    /// the skipped keys (19), and what is kept of earlier receiving chains (20–21).
    fn encode(&self, include_skipped: bool, sending: Option<&ChainKey>) -> Zeroizing<Vec<u8>> {
        let c = &self.ratchet.chains;
        let skipped = if include_skipped {
            self.ratchet.skipped_keys().len()
        } else {
            0
        };
        let mut w = Zeroizing::new(Vec::with_capacity(encoded_len_bound(
            c.previous_remote.len(),
            c.previous_receiving.len(),
            skipped,
        )));
        let out = &mut *w;
        self.encode_parties(out);
        encode_chains(out, c, sending);
        if include_skipped {
            for k in self.ratchet.skipped_keys().iter() {
                let body = field_len(32) + uint32_len(k.n) + field_len(32);
                key(out, 19, LENGTH_DELIMITED);
                varint(out, body as u64);
                bytes_field(out, 1, &k.ratchet_key);
                uint32(out, 2, k.n);
                bytes_field(out, 3, &k.message_key);
            }
        }
        uint32(out, 20, c.receiving_dropped_below);
        for p in &c.previous_receiving {
            let body = field_len(32)
                + field_len(32)
                + uint32_len(p.chain.index())
                + uint32_len(p.dropped_below);
            key(out, 21, LENGTH_DELIMITED);
            varint(out, body as u64);
            bytes_field(out, 1, &p.ratchet_key.0);
            bytes_field(out, 2, p.chain.as_bytes());
            uint32(out, 3, p.chain.index());
            uint32(out, 4, p.dropped_below);
        }
        w
    }

    /// Fields 1–9: format, version, role, both identities and the key exchange.
    fn encode_parties(&self, out: &mut Vec<u8>) {
        uint32(out, 1, SESSION_SNAPSHOT_FORMAT);
        uint32(
            out,
            2,
            match self.version {
                Version::Oldmemo => 0,
                Version::Twomemo => 1,
            },
        );
        uint32(
            out,
            3,
            match self.role {
                Role::Initiator => 0,
                Role::Responder => 1,
            },
        );
        bytes_field(out, 4, &self.own_identity);
        bytes_field(out, 5, &self.remote_identity.transported());
        uint32(out, 6, self.key_exchange.pre_key_id);
        uint32(out, 7, self.key_exchange.signed_pre_key_id);
        bytes_field(out, 8, &self.key_exchange.ephemeral.0);
        if self.confirmed {
            key(out, 9, VARINT);
            out.push(1);
        }
    }

    /// Loads a session from snapshot bytes plus any skipped keys stored beside it.
    pub fn from_bytes(bytes: &[u8], skipped: Vec<SkippedKey>) -> Result<Self, SnapshotError> {
        let s = SessionSnapshot::decode(bytes).map_err(|_| SnapshotError::Decode)?;
        Self::from_snapshot(&s, skipped)
    }

    /// Loads a session from a decoded snapshot plus any skipped keys stored beside it.
    pub fn from_snapshot(
        s: &SessionSnapshot,
        skipped: Vec<SkippedKey>,
    ) -> Result<Self, SnapshotError> {
        if s.format == 0 || s.format > SESSION_SNAPSHOT_FORMAT {
            return Err(SnapshotError::UnknownFormat(s.format));
        }
        let version = match s.version {
            0 => Version::Oldmemo,
            1 => Version::Twomemo,
            _ => return Err(SnapshotError::Invalid("version")),
        };
        let role = match s.role {
            0 => Role::Initiator,
            1 => Role::Responder,
            _ => return Err(SnapshotError::Invalid("role")),
        };
        let mut all_skipped = Vec::with_capacity(s.skipped.len() + skipped.len());
        for k in &s.skipped {
            all_skipped.push(SkippedKey {
                ratchet_key: arr(&k.ratchet_key, "skipped.ratchet_key")?,
                n: k.n,
                message_key: arr(&k.message_key, "skipped.message_key")?,
            });
        }
        all_skipped.extend(skipped);
        let chains = chains(s)?;
        let remote_identity =
            RemoteIdentity::from_transported(version, arr(&s.remote_identity, "remote_identity")?);
        Ok(Session {
            version,
            ratchet: DoubleRatchet {
                version,
                chains,
                skipped: SkippedKeys::from_keys(all_skipped),
            },
            role,
            own_identity: arr(&s.own_identity, "own_identity")?,
            remote_curve: remote_identity
                .curve25519()
                .map_err(|_| SnapshotError::Invalid("remote_identity"))?,
            remote_identity,
            key_exchange: KeyExchangeInfo {
                pre_key_id: s.pre_key_id,
                signed_pre_key_id: s.signed_pre_key_id,
                ephemeral: PublicKey(arr(&s.ephemeral, "ephemeral")?),
            },
            confirmed: s.confirmed,
        })
    }
}

/// The ratchet's chain state of a snapshot.
fn chains(s: &SessionSnapshot) -> Result<Chains, SnapshotError> {
    let chain = |k: &Option<Vec<u8>>, i: u32, f| -> Result<Option<ChainKey>, SnapshotError> {
        k.as_ref()
            .map(|k| Ok(ChainKey::new(arr(k, f)?, i)))
            .transpose()
    };
    // Only the newest are kept (a snapshot may come from a release that kept more).
    let older = s
        .previous_receiving
        .len()
        .saturating_sub(MAX_PREVIOUS_RECEIVING_CHAINS);
    Ok(Chains {
        root_key: RootKey(arr(&s.root_key, "root_key")?),
        own_ratchet: KeyPair::from_private(PrivateKey::from_bytes(arr(
            &s.own_ratchet_private,
            "own_ratchet_private",
        )?)),
        remote_ratchet: s
            .remote_ratchet
            .as_ref()
            .map(|k| arr(k, "remote_ratchet").map(PublicKey))
            .transpose()?,
        sending: chain(&s.sending_chain_key, s.sending_index, "sending_chain_key")?,
        receiving: chain(
            &s.receiving_chain_key,
            s.receiving_index,
            "receiving_chain_key",
        )?,
        previous_sending_length: s.previous_sending_length,
        previous_remote: s
            .previous_remote
            .iter()
            .map(|k| arr(k, "previous_remote").map(PublicKey))
            .collect::<Result<_, _>>()?,
        receiving_dropped_below: s.receiving_dropped_below,
        previous_receiving: s
            .previous_receiving
            .iter()
            .skip(older)
            .map(previous_chain)
            .collect::<Result<_, SnapshotError>>()?,
    })
}

fn previous_chain(p: &PreviousChainSnapshot) -> Result<PreviousChain, SnapshotError> {
    Ok(PreviousChain {
        ratchet_key: PublicKey(arr(&p.ratchet_key, "previous_receiving.ratchet_key")?),
        chain: ChainKey::new(arr(&p.chain_key, "previous_receiving.chain_key")?, p.index),
        dropped_below: p.dropped_below,
    })
}

// Protobuf encoding as prost writes it for `SessionSnapshot` (fields in tag order; a scalar
// or a plain `bytes` field equal to its default is left out), so `to_bytes` can skip the
// intermediate message.
const VARINT: u8 = 0;
const LENGTH_DELIMITED: u8 = 2;

/// Fields 10–18: the root key, our ratchet key, the peer's, the sending chain (`sending`, which
/// may be the one after a prepared encryption), the receiving chain, and the peer's earlier
/// ratchet keys.
fn encode_chains(out: &mut Vec<u8>, c: &Chains, sending: Option<&ChainKey>) {
    bytes_field(out, 10, c.root_key.as_bytes());
    bytes_field(out, 11, c.own_ratchet.private.as_bytes());
    // Optional fields go out when present, even if empty; ours never are.
    if let Some(k) = &c.remote_ratchet {
        bytes_field(out, 12, &k.0);
    }
    if let Some(k) = sending {
        bytes_field(out, 13, k.as_bytes());
    }
    uint32(out, 14, sending.map_or(0, ChainKey::index));
    if let Some(k) = &c.receiving {
        bytes_field(out, 15, k.as_bytes());
    }
    uint32(out, 16, c.receiving.as_ref().map_or(0, ChainKey::index));
    uint32(out, 17, c.previous_sending_length);
    for k in &c.previous_remote {
        bytes_field(out, 18, &k.0);
    }
}

fn key(out: &mut Vec<u8>, tag: u8, wire_type: u8) {
    // Fields from 16 on take a two-byte key.
    varint(out, u64::from(tag) << 3 | u64::from(wire_type));
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    // One byte per started 7 bits, at least one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn uint32(out: &mut Vec<u8>, tag: u8, v: u32) {
    if v != 0 {
        key(out, tag, VARINT);
        varint(out, u64::from(v));
    }
}

/// Length of a `uint32` field as [`uint32`] writes it.
fn uint32_len(v: u32) -> usize {
    if v == 0 {
        0
    } else {
        1 + varint_len(u64::from(v))
    }
}

fn bytes_field(out: &mut Vec<u8>, tag: u8, v: &[u8]) {
    key(out, tag, LENGTH_DELIMITED);
    varint(out, v.len() as u64);
    out.extend_from_slice(v);
}

/// Length of a non-empty `bytes` field of `n` bytes (n < 128) with a field number below 16,
/// as in the nested messages.
const fn field_len(n: usize) -> usize {
    2 + n
}

/// An upper bound of the encoded length: every key two bytes, every scalar at its longest (a
/// 5-byte varint), every key 32 bytes.
fn encoded_len_bound(previous_remote: usize, previous_receiving: usize, skipped: usize) -> usize {
    const SCALAR: usize = 2 + 5;
    const KEY: usize = 2 + 1 + 32;
    // format, version, role, prekey ids, confirmed, indexes, pn, dropped_below
    let scalars = 10 * SCALAR;
    // identities, ephemeral, root key, own ratchet, remote ratchet, chain keys
    let keys = 8 * KEY;
    let nested = |body: usize| 2 + 2 + body;
    scalars
        + keys
        + previous_remote * KEY
        + previous_receiving * nested(2 * KEY + 2 * SCALAR)
        + skipped * nested(2 * KEY + SCALAR)
}

impl std::fmt::Debug for SessionSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionSnapshot {{ format: {}, .. }}", self.format)
    }
}

impl std::fmt::Debug for PreviousChainSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PreviousChainSnapshot {{ index: {}, .. }}", self.index)
    }
}

impl std::fmt::Debug for SkippedKeySnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SkippedKeySnapshot {{ n: {}, .. }}", self.n)
    }
}
