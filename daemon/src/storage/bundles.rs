//! `bundles`: the latest bundle fetched for each remote device.

use rusqlite::{params, Connection, Row};

use super::error::{Result, StorageError};
use super::types::{blob, blob32, id_param, int, namespace, text, u32_col, DeviceAddr, Namespace};

const T: &str = "bundles";

/// One row of `bundles`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleRow {
    /// Owning account.
    pub account_id: i64,
    /// Bare JID of the device's owner.
    pub jid: String,
    /// Namespace the bundle was published under.
    pub namespace: Namespace,
    /// Device id.
    pub device_id: u32,
    /// Identity key in the namespace's form: Curve25519 u (0.3) or Ed25519 (OMEMO 2).
    pub identity_key: [u8; 32],
    /// The same identity key as Curve25519 u (what `sessions` and `trust` use).
    pub identity_curve25519: [u8; 32],
    /// Serialized bundle value.
    pub bundle: Vec<u8>,
    /// One-time prekeys the bundle offered.
    pub prekey_count: u32,
    /// Unix seconds.
    pub fetched_at: i64,
}

const COLUMNS: &str =
    "account_id, jid, namespace, device_id, identity_key, identity_curve25519, bundle, prekey_count, fetched_at";

fn from_row(r: &Row<'_>) -> Result<BundleRow> {
    Ok(BundleRow {
        account_id: int(r, T, "account_id")?,
        jid: text(r, T, "jid")?,
        namespace: namespace(r, T, "namespace")?,
        device_id: u32_col(r, T, "device_id")?,
        identity_key: blob32(r, T, "identity_key")?,
        identity_curve25519: blob32(r, T, "identity_curve25519")?,
        bundle: blob(r, T, "bundle")?.to_vec(),
        prekey_count: u32_col(r, T, "prekey_count")?,
        fetched_at: int(r, T, "fetched_at")?,
    })
}

/// Stores (or replaces) the bundle of a device.
pub fn upsert(conn: &Connection, row: &BundleRow) -> Result<()> {
    if row.bundle.is_empty() {
        return Err(StorageError::InvalidInput {
            what: "bundle",
            reason: "empty".into(),
        });
    }
    conn.prepare_cached(&format!(
        "INSERT INTO bundles ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
         ON CONFLICT (account_id, jid, namespace, device_id) DO UPDATE SET \
           identity_key = excluded.identity_key, identity_curve25519 = excluded.identity_curve25519, \
           bundle = excluded.bundle, prekey_count = excluded.prekey_count, fetched_at = excluded.fetched_at"
    ))?
    .execute(params![
        row.account_id,
        row.jid,
        row.namespace.namespace(),
        id_param(row.device_id),
        &row.identity_key[..],
        &row.identity_curve25519[..],
        row.bundle,
        id_param(row.prekey_count),
        row.fetched_at
    ])?;
    Ok(())
}

/// The stored bundle of a device.
pub fn get(conn: &Connection, addr: &DeviceAddr) -> Result<Option<BundleRow>> {
    super::types::get_by_addr(conn, T, COLUMNS, addr, from_row)
}

/// Forgets the bundle of a device. Returns whether there was one.
pub fn delete(conn: &Connection, addr: &DeviceAddr) -> Result<bool> {
    let n = conn
        .prepare_cached("DELETE FROM bundles WHERE account_id = ?1 AND jid = ?2 AND namespace = ?3 AND device_id = ?4")?
        .execute(params![addr.account_id, addr.jid, addr.namespace.namespace(), id_param(addr.device_id)])?;
    Ok(n > 0)
}
