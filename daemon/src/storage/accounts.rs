//! `accounts`: the local XMPP accounts, one own OMEMO device each.

use std::ops::Range;

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::error::{Result, StorageError};
use super::types::{bool_col, enum_col, expect_one, id_param, int, text, u32_col};

const T: &str = "accounts";

/// How identity keys we have not decided on are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustMode {
    /// Blind Trust Before Verification.
    Btbv,
    /// Every new key needs a manual decision.
    Manual,
    /// Trust on first use.
    Tofu,
}

impl TrustMode {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            TrustMode::Btbv => "btbv",
            TrustMode::Manual => "manual",
            TrustMode::Tofu => "tofu",
        }
    }

    /// Parses the stored text.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "btbv" => Some(TrustMode::Btbv),
            "manual" => Some(TrustMode::Manual),
            "tofu" => Some(TrustMode::Tofu),
            _ => None,
        }
    }
}

/// One row of `accounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRow {
    /// Row id, referenced by every other table as `account_id`.
    pub id: i64,
    /// Bare JID.
    pub jid: String,
    /// Own device id.
    pub device_id: u32,
    /// Unix seconds.
    pub created_at: i64,
    /// Trust policy.
    pub trust_mode: TrustMode,
    /// Change counter of the published bundle.
    pub bundle_version: i64,
    /// Next unused one-time prekey id.
    pub next_prekey_id: u32,
    /// Next unused signed prekey id.
    pub next_signed_prekey_id: u32,
    /// True while the client replays its archive.
    pub catchup: bool,
}

fn from_row(r: &Row<'_>) -> Result<AccountRow> {
    Ok(AccountRow {
        id: int(r, T, "id")?,
        jid: text(r, T, "jid")?,
        device_id: u32_col(r, T, "device_id")?,
        created_at: int(r, T, "created_at")?,
        trust_mode: enum_col(r, T, "trust_mode", TrustMode::parse)?,
        bundle_version: int(r, T, "bundle_version")?,
        next_prekey_id: u32_col(r, T, "next_prekey_id")?,
        next_signed_prekey_id: u32_col(r, T, "next_signed_prekey_id")?,
        catchup: bool_col(r, T, "catchup")?,
    })
}

const COLUMNS: &str = "id, jid, device_id, created_at, trust_mode, bundle_version, \
                       next_prekey_id, next_signed_prekey_id, catchup";

/// Adds an account; returns its id.
pub fn insert(
    conn: &Connection,
    jid: &str,
    device_id: u32,
    trust_mode: TrustMode,
    now: i64,
) -> Result<i64> {
    conn.prepare_cached(
        "INSERT INTO accounts (jid, device_id, trust_mode, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![jid, id_param(device_id), trust_mode.as_str(), now])?;
    Ok(conn.last_insert_rowid())
}

/// The account with this id.
pub fn get(conn: &Connection, id: i64) -> Result<Option<AccountRow>> {
    let mut st = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM accounts WHERE id = ?1"))?;
    let mut rows = st.query([id])?;
    rows.next()?.map(from_row).transpose()
}

/// The account with this bare JID.
pub fn get_by_jid(conn: &Connection, jid: &str) -> Result<Option<AccountRow>> {
    let mut st = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM accounts WHERE jid = ?1"))?;
    let mut rows = st.query([jid])?;
    rows.next()?.map(from_row).transpose()
}

/// All accounts, by id.
pub fn list(conn: &Connection) -> Result<Vec<AccountRow>> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM accounts ORDER BY id"))?
        .query_and_then([], from_row)?
        .collect()
}

/// The accounts in catch-up mode.
pub fn in_catchup(conn: &Connection) -> Result<Vec<i64>> {
    conn.prepare_cached("SELECT id FROM accounts WHERE catchup = 1 ORDER BY id")?
        .query_and_then([], |r| -> Result<i64> { Ok(r.get(0)?) })?
        .collect()
}

/// Starts or ends catch-up mode.
pub fn set_catchup(conn: &Connection, id: i64, catchup: bool) -> Result<()> {
    let n = conn
        .prepare_cached("UPDATE accounts SET catchup = ?2 WHERE id = ?1")?
        .execute(params![id, catchup])?;
    expect_one(n, "account")
}

/// Changes the trust policy.
pub fn set_trust_mode(conn: &Connection, id: i64, mode: TrustMode) -> Result<()> {
    let n = conn
        .prepare_cached("UPDATE accounts SET trust_mode = ?2 WHERE id = ?1")?
        .execute(params![id, mode.as_str()])?;
    expect_one(n, "account")
}

/// Our device's label and its signature (`labelsig`), if one is set.
pub fn label(conn: &Connection, id: i64) -> Result<Option<(String, [u8; 64])>> {
    let row: Option<(Option<String>, Option<Vec<u8>>)> = conn
        .prepare_cached("SELECT label, labelsig FROM accounts WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((Some(label), Some(sig))) = row else {
        return Ok(None);
    };
    let sig = <[u8; 64]>::try_from(sig).map_err(|s| StorageError::BadData {
        table: T,
        column: "labelsig",
        reason: format!("expected 64 bytes, found {}", s.len()),
    })?;
    Ok(Some((label, sig)))
}

/// Sets (or, with `None`, removes) our device's label and its signature.
pub fn set_label(conn: &Connection, id: i64, label: Option<(&str, &[u8; 64])>) -> Result<()> {
    let (text, sig) = label.map_or((None, None), |(t, s)| (Some(t), Some(&s[..])));
    let n = conn
        .prepare_cached("UPDATE accounts SET label = ?2, labelsig = ?3 WHERE id = ?1")?
        .execute(params![id, text, sig])?;
    expect_one(n, "account")
}

/// Bumps the bundle change counter; returns the new value.
pub fn bump_bundle_version(conn: &Connection, id: i64) -> Result<i64> {
    conn.prepare_cached("UPDATE accounts SET bundle_version = bundle_version + 1 WHERE id = ?1 RETURNING bundle_version")?
        .query_row([id], |r| r.get(0))
        .optional()?
        .ok_or(StorageError::NotFound { what: "account" })
}

/// Reserves `n` consecutive one-time prekey ids; returns them as a range.
pub fn take_prekey_ids(conn: &Connection, id: i64, n: u32) -> Result<Range<u32>> {
    take_ids(conn, id, n, "next_prekey_id")
}

/// Skips `prekeys` one-time prekey ids and `signed` signed prekey ids: ids an older copy of
/// the database may have handed out since are never given to other keys.
pub fn skip_ids(conn: &Connection, id: i64, prekeys: u32, signed: u32) -> Result<()> {
    take_ids(conn, id, prekeys, "next_prekey_id")?;
    take_ids(conn, id, signed, "next_signed_prekey_id")?;
    Ok(())
}

/// Reserves one signed prekey id.
pub fn take_signed_prekey_id(conn: &Connection, id: i64) -> Result<u32> {
    Ok(take_ids(conn, id, 1, "next_signed_prekey_id")?.start)
}

fn take_ids(conn: &Connection, id: i64, n: u32, column: &'static str) -> Result<Range<u32>> {
    let start: i64 = conn
        .prepare_cached(&format!("SELECT {column} FROM accounts WHERE id = ?1"))?
        .query_row([id], |r| r.get(0))
        .optional()?
        .ok_or(StorageError::NotFound { what: "account" })?;
    let bad = |reason: String| StorageError::BadData {
        table: T,
        column,
        reason,
    };
    let start = u32::try_from(start).map_err(|_| bad(format!("{start} is out of range")))?;
    let end = start
        .checked_add(n)
        .ok_or_else(|| bad(format!("id space exhausted ({start} + {n})")))?;
    conn.prepare_cached(&format!("UPDATE accounts SET {column} = ?2 WHERE id = ?1"))?
        .execute(params![id, i64::from(end)])?;
    Ok(start..end)
}

/// Deletes an account and, by cascade, everything stored for it. Returns whether it existed.
pub fn delete(conn: &Connection, id: i64) -> Result<bool> {
    Ok(conn
        .prepare_cached("DELETE FROM accounts WHERE id = ?1")?
        .execute([id])?
        > 0)
}
