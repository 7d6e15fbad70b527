//! Secrets sealed at rest (issue 24): every column that would let a reader of the file decrypt
//! or impersonate holds `XChaCha20-Poly1305(data key, value)` instead of the value, bound to its
//! row by the associated data (table, column, the row's key columns), so a sealed value copied
//! to another row, table or database does not open. Everything else stays readable to `sqlite3`.
//!
//! The data key is random, made once per database, kept in memory by a [`Sealer`] (one
//! AEAD key schedule for the daemon's life, no KDF per value), and stored in the `sealing` table
//! wrapped by a key-encryption key from the installation's key source.
//!
//! - [`columns`]: the one list of sealed columns and their associated data, and the passes over
//!   every sealed value (sealing a plaintext database, re-sealing under a new data key).
//! - [`keys`]: the key sources (systemd credential, Secret Service, passphrase, key file), the
//!   `sealing` record, wrapping and unwrapping the data key.
//! - [`secret_service`]: the desktop keyring's side of the Secret Service source.
//! - [`envelope`]: a passphrase-sealed file (account exports for another machine).
//!
//! A sealed value is `0x01 ‖ nonce (24 bytes) ‖ ciphertext ‖ tag (16 bytes)`.

// The bench baseline builds the same module with seal/open as copies.
#![cfg_attr(
    feature = "bench-baseline-no-sealing",
    allow(unused_imports, dead_code)
)]

pub mod columns;
pub mod envelope;
pub mod keys;
pub mod secret_service;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::Zeroizing;

pub use columns::SealedColumn;

/// The format byte of a sealed value.
const FORMAT: u8 = 1;
/// Nonce length (XChaCha20).
const NONCE: usize = 24;
/// Tag length (Poly1305).
const TAG: usize = 16;
/// Bytes a sealed value adds to its plaintext.
pub const OVERHEAD: usize = 1 + NONCE + TAG;
/// Prefix of every associated data: the format, so a later format cannot be confused with it.
const AD_PREFIX: &[u8] = b"omemod sealed value v1\0";

/// Why a sealed value could not be opened. Never carries the value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The tag did not verify: the value was changed, moved from another row, or sealed under
    /// another data key.
    #[error(
        "a sealed value of {table}.{column} does not open: it was changed, copied from another \
         row, or sealed under another database's key"
    )]
    Open {
        /// Table.
        table: &'static str,
        /// Column.
        column: &'static str,
    },
    /// The value is not a sealed value of a format this omemod knows (too short, or another
    /// format byte).
    #[error("{table}.{column} holds a value that is not sealed ({len} bytes)")]
    NotSealed {
        /// Table.
        table: &'static str,
        /// Column.
        column: &'static str,
        /// Its length.
        len: usize,
    },
}

/// One part of a row's key, as bound into the associated data.
#[derive(Debug, Clone, Copy)]
pub enum KeyPart<'a> {
    /// An INTEGER column.
    Int(i64),
    /// A TEXT column.
    Text(&'a str),
    /// A BLOB column.
    Blob(&'a [u8]),
}

/// The associated data of `column` in the row whose key columns hold `key` (in the order of
/// [`SealedColumn::key`]): self-delimiting, so no two rows share one.
fn associated_data(column: &SealedColumn, key: &[KeyPart<'_>]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(AD_PREFIX.len() + 64);
    ad.extend_from_slice(AD_PREFIX);
    for name in [column.table, column.column] {
        ad.extend_from_slice(&u32::try_from(name.len()).unwrap_or(u32::MAX).to_be_bytes());
        ad.extend_from_slice(name.as_bytes());
    }
    for part in key {
        match part {
            KeyPart::Int(i) => {
                ad.push(b'i');
                ad.extend_from_slice(&i.to_be_bytes());
            }
            KeyPart::Text(t) => {
                ad.push(b't');
                ad.extend_from_slice(&u32::try_from(t.len()).unwrap_or(u32::MAX).to_be_bytes());
                ad.extend_from_slice(t.as_bytes());
            }
            KeyPart::Blob(b) => {
                ad.push(b'b');
                ad.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
                ad.extend_from_slice(b);
            }
        }
    }
    ad
}

/// The database's data key: 32 random bytes, zeroed on drop, never printed.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    /// A new random key.
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut k[..]);
        Self(k)
    }

    pub(crate) fn from_bytes(bytes: Zeroizing<[u8; 32]>) -> Self {
        Self(bytes)
    }

    pub(crate) fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// A public name of the key (the first 8 bytes of a hash of it, in hex), which tells two
    /// databases' keys apart without revealing either.
    pub fn id(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"omemod data key id\0");
        h.update(&self.0[..]);
        hex::encode(&h.finalize()[..8])
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self(_) = self;
        f.write_str("DataKey(<redacted>)")
    }
}

/// Seals and opens values under one data key. Cheap to share (`Arc`); the key schedule is
/// made once.
pub struct Sealer {
    aead: XChaCha20Poly1305,
    key_id: String,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self { aead: _, key_id } = self;
        f.debug_struct("Sealer")
            .field("key_id", key_id)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer for `key`.
    pub fn new(key: &DataKey) -> Self {
        Self {
            aead: XChaCha20Poly1305::new(key.expose().into()),
            key_id: key.id(),
        }
    }

    /// The data key's public name ([`DataKey::id`]).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Seals `plain` for `column` of the row whose key is `key`.
    #[cfg(not(feature = "bench-baseline-no-sealing"))]
    pub fn seal(&self, column: &SealedColumn, key: &[KeyPart<'_>], plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        out.push(FORMAT);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let ad = associated_data(column, key);
        // Encrypting a buffer of this size cannot fail (the limit is 256 GiB).
        if let Ok(tag) = self.aead.encrypt_in_place_detached(
            XNonce::from_slice(&nonce),
            &ad,
            &mut out[1 + NONCE..],
        ) {
            out.extend_from_slice(&tag);
        } else {
            out.clear();
        }
        out
    }

    /// Opens a value sealed by [`Sealer::seal`] for the same column and row key.
    #[cfg(not(feature = "bench-baseline-no-sealing"))]
    pub fn open(
        &self,
        column: &SealedColumn,
        key: &[KeyPart<'_>],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let not_sealed = || SealError::NotSealed {
            table: column.table,
            column: column.column,
            len: sealed.len(),
        };
        if sealed.len() < OVERHEAD || sealed[0] != FORMAT {
            return Err(not_sealed());
        }
        let (nonce, rest) = sealed[1..].split_at(NONCE);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG);
        let mut plain = Zeroizing::new(ciphertext.to_vec());
        let ad = associated_data(column, key);
        self.aead
            .decrypt_in_place_detached(
                XNonce::from_slice(nonce),
                &ad,
                &mut plain[..],
                chacha20poly1305::Tag::from_slice(tag),
            )
            .map_err(|_| SealError::Open {
                table: column.table,
                column: column.column,
            })?;
        Ok(plain)
    }

    /// The bench baseline: the value as it is.
    #[cfg(feature = "bench-baseline-no-sealing")]
    pub fn seal(&self, _column: &SealedColumn, _key: &[KeyPart<'_>], plain: &[u8]) -> Vec<u8> {
        plain.to_vec()
    }

    /// The bench baseline: the value as it is.
    #[cfg(feature = "bench-baseline-no-sealing")]
    pub fn open(
        &self,
        _column: &SealedColumn,
        _key: &[KeyPart<'_>],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        Ok(Zeroizing::new(sealed.to_vec()))
    }

    /// [`Sealer::open`] of a 32-byte secret.
    pub fn open32(
        &self,
        column: &SealedColumn,
        key: &[KeyPart<'_>],
        sealed: &[u8],
    ) -> Result<super::SecretKey, super::StorageError> {
        let plain = self.open(column, key, sealed)?;
        super::SecretKey::from_slice(&plain).ok_or_else(|| super::StorageError::BadData {
            table: column.table,
            column: column.column,
            reason: format!("expected 32 bytes, found {}", plain.len()),
        })
    }
}

#[cfg(all(test, not(feature = "bench-baseline-no-sealing")))]
mod tests {
    use super::columns::{SESSION_STATE, SKIPPED_MESSAGE_KEY};
    use super::*;

    fn sealer() -> Sealer {
        Sealer::new(&DataKey::generate())
    }

    #[test]
    fn a_sealed_value_opens_only_in_its_own_row_column_and_database() {
        let s = sealer();
        let row = [
            KeyPart::Int(1),
            KeyPart::Text("bob@example.net"),
            KeyPart::Text("urn:xmpp:omemo:2"),
            KeyPart::Int(7),
        ];
        let sealed = s.seal(&SESSION_STATE, &row, b"ratchet state");
        assert_eq!(sealed.len(), 13 + OVERHEAD);
        assert!(!sealed.windows(7).any(|w| w == b"ratchet"));
        assert_eq!(
            &s.open(&SESSION_STATE, &row, &sealed).unwrap()[..],
            b"ratchet state"
        );
        let other_device = [row[0], row[1], row[2], KeyPart::Int(8)];
        assert!(matches!(
            s.open(&SESSION_STATE, &other_device, &sealed),
            Err(SealError::Open { .. })
        ));
        let other_account = [KeyPart::Int(2), row[1], row[2], row[3]];
        assert!(s.open(&SESSION_STATE, &other_account, &sealed).is_err());
        assert!(s.open(&SKIPPED_MESSAGE_KEY, &row, &sealed).is_err());
        assert!(sealer().open(&SESSION_STATE, &row, &sealed).is_err());
        let mut flipped = sealed.clone();
        flipped[30] ^= 1;
        assert!(s.open(&SESSION_STATE, &row, &flipped).is_err());
        assert!(matches!(
            s.open(&SESSION_STATE, &row, &[0u8; 32]),
            Err(SealError::NotSealed { len: 32, .. })
        ));
    }

    #[test]
    fn key_parts_are_delimited() {
        // ("ab", "c") and ("a", "bc") are different rows.
        let a = associated_data(&SESSION_STATE, &[KeyPart::Text("ab"), KeyPart::Text("c")]);
        let b = associated_data(&SESSION_STATE, &[KeyPart::Text("a"), KeyPart::Text("bc")]);
        assert_ne!(a, b);
        let c = associated_data(&SESSION_STATE, &[KeyPart::Int(1)]);
        let d = associated_data(&SESSION_STATE, &[KeyPart::Blob(&1i64.to_be_bytes())]);
        assert_ne!(c, d);
    }

    #[test]
    fn keys_never_show_in_debug() {
        let k = DataKey::generate();
        let shown = format!("{k:?} {:?}", Sealer::new(&k));
        assert!(!shown.contains(&hex::encode(k.expose())));
        assert!(shown.contains("redacted"));
    }
}
