//! `identity`: our long-term identity key pair, one per account.

use rusqlite::{params, Row};

use super::error::Result;
use super::sealing::columns::IDENTITY_PRIVATE_KEY;
use super::sealing::KeyPart;
use super::types::{blob32, int, text, SecretKey};
use super::Db;

const T: &str = "identity";

/// One row of `identity`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRow {
    /// Owning account.
    pub account_id: i64,
    /// 32-byte clamped X25519 scalar.
    pub private_key: SecretKey,
    /// X25519 public key.
    pub curve25519_public: [u8; 32],
    /// The same key as an Ed25519 point.
    pub ed25519_public: [u8; 32],
    /// 8 groups of 8 hex digits (see [`super::format_fingerprint`]).
    pub fingerprint: String,
    /// Unix seconds.
    pub created_at: i64,
}

fn from_row(db: &Db, r: &Row<'_>) -> Result<IdentityRow> {
    let account_id = int(r, T, "account_id")?;
    Ok(IdentityRow {
        account_id,
        private_key: db.secret32(r, &IDENTITY_PRIVATE_KEY, &[KeyPart::Int(account_id)])?,
        curve25519_public: blob32(r, T, "curve25519_public")?,
        ed25519_public: blob32(r, T, "ed25519_public")?,
        fingerprint: text(r, T, "fingerprint")?,
        created_at: int(r, T, "created_at")?,
    })
}

/// Stores the identity of an account (fails if it already has one).
pub fn insert(db: &Db, row: &IdentityRow) -> Result<()> {
    let private_key = db.seal(
        &IDENTITY_PRIVATE_KEY,
        &[KeyPart::Int(row.account_id)],
        row.private_key.expose(),
    );
    db.prepare_cached(
        "INSERT INTO identity (account_id, private_key, curve25519_public, ed25519_public, fingerprint, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        row.account_id,
        private_key,
        &row.curve25519_public[..],
        &row.ed25519_public[..],
        row.fingerprint,
        row.created_at
    ])?;
    Ok(())
}

/// The identity of every account, by account id.
pub fn list(db: &Db) -> Result<Vec<IdentityRow>> {
    db.prepare_cached(
        "SELECT account_id, private_key, curve25519_public, ed25519_public, fingerprint, created_at \
         FROM identity ORDER BY account_id",
    )?
    .query_and_then([], |r| from_row(db, r))?
    .collect()
}

/// The identity of an account.
pub fn get(db: &Db, account_id: i64) -> Result<Option<IdentityRow>> {
    let mut st = db.prepare_cached(
        "SELECT account_id, private_key, curve25519_public, ed25519_public, fingerprint, created_at \
         FROM identity WHERE account_id = ?1",
    )?;
    let mut rows = st.query([account_id])?;
    rows.next()?.map(|r| from_row(db, r)).transpose()
}
