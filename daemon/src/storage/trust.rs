//! `trust`: trust decisions per contact JID and identity key.

use rusqlite::{params, Connection, Row};

use super::error::Result;
use super::types::{blob32, enum_col, int, text};

const T: &str = "trust";

/// How much an identity key is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustLevel {
    /// Encrypt to it and accept from it.
    Trusted,
    /// Never.
    Distrusted,
    /// Not decided yet.
    Undecided,
}

impl TrustLevel {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            TrustLevel::Trusted => "trusted",
            TrustLevel::Distrusted => "distrusted",
            TrustLevel::Undecided => "undecided",
        }
    }

    /// Parses the stored text.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "trusted" => Some(TrustLevel::Trusted),
            "distrusted" => Some(TrustLevel::Distrusted),
            "undecided" => Some(TrustLevel::Undecided),
            _ => None,
        }
    }
}

/// Who (or what rule) made the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustSource {
    /// Blind trust (BTBV) before verification.
    Blind,
    /// The user.
    Manual,
    /// Trust on first use: the contact's first key.
    Tofu,
    /// No one decided: the account's trust mode leaves a new key undecided (`manual`; `tofu`
    /// after the first key; `btbv` once a key of the contact was verified).
    Policy,
}

impl TrustSource {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            TrustSource::Blind => "blind",
            TrustSource::Manual => "manual",
            TrustSource::Tofu => "tofu",
            TrustSource::Policy => "policy",
        }
    }

    /// Parses the stored text.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "blind" => Some(TrustSource::Blind),
            "manual" => Some(TrustSource::Manual),
            "tofu" => Some(TrustSource::Tofu),
            "policy" => Some(TrustSource::Policy),
            _ => None,
        }
    }
}

/// One row of `trust`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRow {
    /// Owning account.
    pub account_id: i64,
    /// Contact's bare JID.
    pub jid: String,
    /// Curve25519 u of the identity key (the same for both namespaces).
    pub identity_key: [u8; 32],
    /// 8 groups of 8 hex digits.
    pub fingerprint: String,
    /// The decision.
    pub level: TrustLevel,
    /// Who made it.
    pub source: TrustSource,
    /// Unix seconds.
    pub decided_at: i64,
}

const COLUMNS: &str = "account_id, jid, identity_key, fingerprint, level, source, decided_at";

fn from_row(r: &Row<'_>) -> Result<TrustRow> {
    Ok(TrustRow {
        account_id: int(r, T, "account_id")?,
        jid: text(r, T, "jid")?,
        identity_key: blob32(r, T, "identity_key")?,
        fingerprint: text(r, T, "fingerprint")?,
        level: enum_col(r, T, "level", TrustLevel::parse)?,
        source: enum_col(r, T, "source", TrustSource::parse)?,
        decided_at: int(r, T, "decided_at")?,
    })
}

/// The decision about one identity key of a contact.
pub fn get(
    conn: &Connection,
    account_id: i64,
    jid: &str,
    identity_key: &[u8; 32],
) -> Result<Option<TrustRow>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM trust WHERE account_id = ?1 AND jid = ?2 AND identity_key = ?3"
    ))?;
    let mut rows = st.query(params![account_id, jid, &identity_key[..]])?;
    rows.next()?.map(from_row).transpose()
}

/// Records (or replaces) a decision.
pub fn set(conn: &Connection, row: &TrustRow) -> Result<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO trust ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (account_id, jid, identity_key) DO UPDATE SET \
           fingerprint = excluded.fingerprint, level = excluded.level, \
           source = excluded.source, decided_at = excluded.decided_at"
    ))?
    .execute(params![
        row.account_id,
        row.jid,
        &row.identity_key[..],
        row.fingerprint,
        row.level.as_str(),
        row.source.as_str(),
        row.decided_at
    ])?;
    Ok(())
}

/// Decisions of the account, for one JID or all, by jid then time.
pub fn list(conn: &Connection, account_id: i64, jid: Option<&str>) -> Result<Vec<TrustRow>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM trust WHERE account_id = ?1 AND (?2 IS NULL OR jid = ?2) \
         ORDER BY jid, decided_at, identity_key"
    ))?
    .query_and_then(params![account_id, jid], from_row)?
    .collect()
}

/// Forgets a decision. Returns whether there was one.
pub fn delete(
    conn: &Connection,
    account_id: i64,
    jid: &str,
    identity_key: &[u8; 32],
) -> Result<bool> {
    let n = conn
        .prepare_cached(
            "DELETE FROM trust WHERE account_id = ?1 AND jid = ?2 AND identity_key = ?3",
        )?
        .execute(params![account_id, jid, &identity_key[..]])?;
    Ok(n > 0)
}

/// Whether a session or a stored bundle of `jid` still uses `identity_key`.
pub fn key_in_use(
    conn: &Connection,
    account_id: i64,
    jid: &str,
    identity_key: &[u8; 32],
) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM sessions WHERE account_id = ?1 AND jid = ?2 AND identity_key = ?3) \
             OR EXISTS (SELECT 1 FROM bundles WHERE account_id = ?1 AND jid = ?2 AND identity_curve25519 = ?3)",
        )?
        .query_row(params![account_id, jid, &identity_key[..]], |r| r.get(0))?)
}
