//! `signed_prekeys`: our signed prekeys. The current one is the newest not retired.

use rusqlite::{params, Connection, Row};

use super::error::Result;
use super::sealing::columns::SIGNED_PREKEY_PRIVATE_KEY;
use super::sealing::KeyPart;
use super::types::{blob32, blob64, expect_one, id_param, int, opt_int, u32_col, SecretKey};
use super::Db;

const T: &str = "signed_prekeys";

/// One row of `signed_prekeys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPreKeyRow {
    /// Owning account.
    pub account_id: i64,
    /// Signed prekey id.
    pub id: u32,
    /// X25519 private key.
    pub private_key: SecretKey,
    /// X25519 public key.
    pub public_key: [u8; 32],
    /// XEdDSA signature over `0x05 ‖ public_key` (OMEMO 0.3).
    pub signature_oldmemo: [u8; 64],
    /// Ed25519 signature over `public_key` (OMEMO 2).
    pub signature_twomemo: [u8; 64],
    /// Unix seconds.
    pub created_at: i64,
    /// When it was replaced; `None` for the current one.
    pub retired_at: Option<i64>,
}

const COLUMNS: &str =
    "account_id, id, private_key, public_key, signature_oldmemo, signature_twomemo, created_at, retired_at";

fn from_row(db: &Db, r: &Row<'_>) -> Result<SignedPreKeyRow> {
    let account_id = int(r, T, "account_id")?;
    let id = u32_col(r, T, "id")?;
    Ok(SignedPreKeyRow {
        account_id,
        id,
        private_key: db.secret32(
            r,
            &SIGNED_PREKEY_PRIVATE_KEY,
            &[KeyPart::Int(account_id), KeyPart::Int(id_param(id))],
        )?,
        public_key: blob32(r, T, "public_key")?,
        signature_oldmemo: blob64(r, T, "signature_oldmemo")?,
        signature_twomemo: blob64(r, T, "signature_twomemo")?,
        created_at: int(r, T, "created_at")?,
        retired_at: opt_int(r, T, "retired_at")?,
    })
}

/// Stores a signed prekey.
pub fn insert(db: &Db, row: &SignedPreKeyRow) -> Result<()> {
    let private_key = db.seal(
        &SIGNED_PREKEY_PRIVATE_KEY,
        &[KeyPart::Int(row.account_id), KeyPart::Int(id_param(row.id))],
        row.private_key.expose(),
    );
    db.prepare_cached(&format!(
        "INSERT INTO signed_prekeys ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
    ))?
    .execute(params![
        row.account_id,
        id_param(row.id),
        private_key,
        &row.public_key[..],
        &row.signature_oldmemo[..],
        &row.signature_twomemo[..],
        row.created_at,
        row.retired_at
    ])?;
    Ok(())
}

/// The current signed prekey: the newest one not retired.
pub fn current(db: &Db, account_id: i64) -> Result<Option<SignedPreKeyRow>> {
    let mut st = db.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM signed_prekeys WHERE account_id = ?1 AND retired_at IS NULL \
         ORDER BY created_at DESC, id DESC LIMIT 1"
    ))?;
    let mut rows = st.query([account_id])?;
    rows.next()?.map(|r| from_row(db, r)).transpose()
}

/// A signed prekey by id, retired or not (a key exchange may name a retired one).
pub fn get(db: &Db, account_id: i64, id: u32) -> Result<Option<SignedPreKeyRow>> {
    let mut st = db.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM signed_prekeys WHERE account_id = ?1 AND id = ?2"
    ))?;
    let mut rows = st.query(params![account_id, id_param(id)])?;
    rows.next()?.map(|r| from_row(db, r)).transpose()
}

/// All signed prekeys of the account, by id.
pub fn list(db: &Db, account_id: i64) -> Result<Vec<SignedPreKeyRow>> {
    db.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM signed_prekeys WHERE account_id = ?1 ORDER BY id"
    ))?
    .query_and_then([account_id], |r| from_row(db, r))?
    .collect()
}

/// Marks a signed prekey retired at `now` (keeps an earlier retirement time).
pub fn retire(conn: &Connection, account_id: i64, id: u32, now: i64) -> Result<()> {
    let n = conn
        .prepare_cached(
            "UPDATE signed_prekeys SET retired_at = coalesce(retired_at, ?3) WHERE account_id = ?1 AND id = ?2",
        )?
        .execute(params![account_id, id_param(id), now])?;
    expect_one(n, "signed prekey")
}

/// Accounts with work for the rotation: a current signed prekey made before `made_before`,
/// or one retired before `retired_before`.
pub fn accounts_due(conn: &Connection, made_before: i64, retired_before: i64) -> Result<Vec<i64>> {
    conn.prepare_cached(
        "SELECT DISTINCT account_id FROM signed_prekeys \
         WHERE (retired_at IS NULL AND created_at <= ?1) OR retired_at < ?2 ORDER BY account_id",
    )?
    .query_and_then(params![made_before, retired_before], |r| -> Result<i64> {
        Ok(r.get(0)?)
    })?
    .collect()
}

/// Deletes signed prekeys retired before `cutoff` (end of the grace period). Returns how many.
pub fn delete_retired_before(conn: &Connection, account_id: i64, cutoff: i64) -> Result<usize> {
    Ok(conn
        .prepare_cached("DELETE FROM signed_prekeys WHERE account_id = ?1 AND retired_at < ?2")?
        .execute(params![account_id, cutoff])?)
}
