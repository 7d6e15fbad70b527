//! Every limit of the protocol core, in one place.

/// Most message keys one incoming message may make us skip (and store) in one chain.
/// python-omemo's `max_num_per_message_skipped_keys`.
pub const MAX_SKIP: u32 = 1000;

/// Most skipped message keys kept per session; the oldest are dropped first.
/// python-omemo's `max_num_per_session_skipped_keys`.
pub const MAX_SKIPPED_KEYS_PER_SESSION: usize = 1000;

/// Size of the one-time prekey pool of a bundle (XEP-0384: SHOULD about 100).
pub const PREKEY_POOL_SIZE: u32 = 100;

/// Highest one-time / signed prekey id allowed in OMEMO 0.3 (0xFFFFFF means "no prekey").
pub const OLDMEMO_MAX_PREKEY_ID: u32 = 0x00FF_FFFE;

/// Highest device id (XEP-0384: 1 … 2^31 − 1).
pub const MAX_DEVICE_ID: u32 = 0x7FFF_FFFF;

/// A receiving chain message counter at or above this asks for a heartbeat (python-omemo's
/// STALENESS_MAGIC_NUMBER; XEP-0384: "counter of 53 or higher").
pub const HEARTBEAT_COUNTER: u32 = 53;

/// Largest ratchet ciphertext accepted (the key material is 16–48 bytes; leave room for others).
pub const MAX_RATCHET_CIPHERTEXT: usize = 1024;

/// Largest encoded key element accepted by the wire parsers.
pub const MAX_KEY_ELEMENT: usize = 4096;

/// Ratchet keys of the peer's earlier chains remembered to recognise replays from them.
pub const MAX_PREVIOUS_RATCHET_KEYS: usize = 5;

/// The peer's earlier receiving chains kept (chain key and index), so that their late messages
/// decrypt whatever previous-chain length the sender wrote; libsignal keeps 5 too.
pub const MAX_PREVIOUS_RECEIVING_CHAINS: usize = 5;

/// Previous session states kept per device beside the current one, tried in order when it
/// cannot decrypt (libsignal keeps 40; a handful covers simultaneous first contact and a late
/// message after a rebuild).
pub const MAX_PREVIOUS_SESSIONS: usize = 5;
