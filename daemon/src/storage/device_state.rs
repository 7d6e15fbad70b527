//! Per-device state around a session (migration 2): pending or accepted identity changes,
//! previous session states, and heartbeats deferred during catch-up.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::error::Result;
use super::sealing::columns::PREVIOUS_SESSION_STATE;
use super::types::{
    addr_params, blob32, bool_col, device_key, id_param, int, namespace, opt_int, text, u32_col,
    WHERE_ADDR,
};
use super::{Db, DeviceAddr, SecretBlob};

/// One row of `identity_changes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityChangeRow {
    /// The device.
    pub addr: DeviceAddr,
    /// The identity we held (Curve25519 u), if any.
    pub old_identity: Option<[u8; 32]>,
    /// The new identity (Curve25519 u).
    pub new_identity: [u8; 32],
    /// The bundle XML that carried it, when it came from `bundle.update`.
    pub bundle: Option<Vec<u8>>,
    /// Unix seconds.
    pub seen_at: i64,
    /// When the user accepted it.
    pub accepted_at: Option<i64>,
}

fn change_from_row(r: &Row<'_>) -> Result<IdentityChangeRow> {
    const T: &str = "identity_changes";
    let old: Option<Vec<u8>> = r.get("old_identity")?;
    Ok(IdentityChangeRow {
        addr: DeviceAddr::new(
            int(r, T, "account_id")?,
            text(r, T, "jid")?,
            namespace(r, T, "namespace")?,
            u32_col(r, T, "device_id")?,
        ),
        old_identity: old.and_then(|v| v.try_into().ok()),
        new_identity: blob32(r, T, "new_identity")?,
        bundle: r.get("bundle")?,
        seen_at: int(r, T, "seen_at")?,
        accepted_at: opt_int(r, T, "accepted_at")?,
    })
}

/// The identity change recorded for a device.
pub fn identity_change(conn: &Connection, addr: &DeviceAddr) -> Result<Option<IdentityChangeRow>> {
    super::types::get_by_addr(
        conn,
        "identity_changes",
        "account_id, jid, namespace, device_id, old_identity, new_identity, bundle, seen_at, accepted_at",
        addr,
        change_from_row,
    )
}

/// The identity changes of an account that wait for the user (`identity.accept`): a bundle
/// with another identity was set aside.
pub fn pending_identity_changes(
    conn: &Connection,
    account_id: i64,
) -> Result<Vec<IdentityChangeRow>> {
    conn.prepare_cached(
        "SELECT account_id, jid, namespace, device_id, old_identity, new_identity, bundle, \
         seen_at, accepted_at FROM identity_changes WHERE account_id = ?1 AND accepted_at IS NULL",
    )?
    .query_and_then([account_id], change_from_row)?
    .collect()
}

/// Records (or replaces) the identity change of a device.
pub fn set_identity_change(conn: &Connection, row: &IdentityChangeRow) -> Result<()> {
    let (a, j, n, d) = addr_params(&row.addr);
    conn.prepare_cached(
        "INSERT OR REPLACE INTO identity_changes \
         (account_id, jid, namespace, device_id, old_identity, new_identity, bundle, seen_at, accepted_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        a,
        j,
        n,
        d,
        row.old_identity.as_ref().map(|k| &k[..]),
        &row.new_identity[..],
        row.bundle,
        row.seen_at,
        row.accepted_at
    ])?;
    Ok(())
}

/// Forgets the identity change of a device.
pub fn delete_identity_change(conn: &Connection, addr: &DeviceAddr) -> Result<bool> {
    let (a, j, n, d) = addr_params(addr);
    let changed = conn
        .prepare_cached(&format!("DELETE FROM identity_changes WHERE {WHERE_ADDR}"))?
        .execute(params![a, j, n, d])?;
    Ok(changed > 0)
}

/// A previous session state of a device.
#[derive(Debug, Clone)]
pub struct PreviousSessionRow {
    /// Row id.
    pub id: i64,
    /// Snapshot with its skipped keys (secret).
    pub state: SecretBlob,
    /// Archived from a suspect session (found in a restored copy): what decrypts on it may be a
    /// replay.
    pub suspect: bool,
}

/// A session state to archive.
#[derive(Debug, Clone, Copy)]
pub struct Archived<'a> {
    /// Snapshot with its skipped keys (secret).
    pub state: &'a [u8],
    /// It comes from a suspect session.
    pub suspect: bool,
}

/// The previous session states of a device, newest first.
pub fn previous_sessions(db: &Db, addr: &DeviceAddr) -> Result<Vec<PreviousSessionRow>> {
    let (a, j, n, d) = addr_params(addr);
    let key = device_key(addr);
    db.prepare_cached(&format!(
        "SELECT id, state, suspect FROM previous_sessions WHERE {WHERE_ADDR} ORDER BY id DESC"
    ))?
    .query_and_then(params![a, j, n, d], |r| -> Result<_> {
        Ok(PreviousSessionRow {
            id: int(r, "previous_sessions", "id")?,
            state: db.secret_blob(r, &PREVIOUS_SESSION_STATE, &key)?,
            suspect: bool_col(r, "previous_sessions", "suspect")?,
        })
    })?
    .collect()
}

/// Archives a session state, keeping only the newest `keep` of the device.
pub fn push_previous_session(
    conn: &Db,
    addr: &DeviceAddr,
    archived: Archived<'_>,
    now: i64,
    keep: usize,
) -> Result<()> {
    let (a, j, n, d) = addr_params(addr);
    let state = conn.seal(&PREVIOUS_SESSION_STATE, &device_key(addr), archived.state);
    conn.prepare_cached(
        "INSERT INTO previous_sessions (account_id, jid, namespace, device_id, state, archived_at, \
         suspect) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![a, j, n, d, state, now, archived.suspect])?;
    let keep = i64::try_from(keep).unwrap_or(i64::MAX);
    conn.prepare_cached(&format!(
        "DELETE FROM previous_sessions WHERE {WHERE_ADDR} AND id NOT IN \
         (SELECT id FROM previous_sessions WHERE {WHERE_ADDR} ORDER BY id DESC LIMIT ?5)"
    ))?
    .execute(params![a, j, n, d, keep])?;
    Ok(())
}

/// Removes one previous session state (it was promoted).
pub fn delete_previous_session(conn: &Connection, id: i64) -> Result<bool> {
    Ok(conn
        .prepare_cached("DELETE FROM previous_sessions WHERE id = ?1")?
        .execute([id])?
        > 0)
}

/// Removes every previous session state of an account's devices; returns how many.
pub fn delete_previous_sessions_of_account(conn: &Connection, account_id: i64) -> Result<usize> {
    Ok(conn
        .prepare_cached("DELETE FROM previous_sessions WHERE account_id = ?1")?
        .execute([account_id])?)
}

/// Removes every previous session state of a device.
pub fn delete_previous_sessions(conn: &Connection, addr: &DeviceAddr) -> Result<usize> {
    let (a, j, n, d) = addr_params(addr);
    Ok(conn
        .prepare_cached(&format!("DELETE FROM previous_sessions WHERE {WHERE_ADDR}"))?
        .execute(params![a, j, n, d])?)
}

/// Remembers that a device waits for a heartbeat until catch-up ends.
pub fn defer_heartbeat(conn: &Connection, addr: &DeviceAddr, now: i64) -> Result<()> {
    let (a, j, n, d) = addr_params(addr);
    conn.prepare_cached(
        "INSERT OR IGNORE INTO deferred_heartbeats (account_id, jid, namespace, device_id, deferred_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![a, j, n, d, now])?;
    Ok(())
}

/// Takes (returns and deletes) every deferred heartbeat of an account.
pub fn take_deferred_heartbeats(conn: &Connection, account_id: i64) -> Result<Vec<DeviceAddr>> {
    let mut st = conn.prepare_cached(
        "SELECT account_id, jid, namespace, device_id FROM deferred_heartbeats \
         WHERE account_id = ?1 ORDER BY jid, namespace, device_id",
    )?;
    let out: Vec<_> = st
        .query_and_then([account_id], |r| -> Result<_> {
            const T: &str = "deferred_heartbeats";
            Ok(DeviceAddr::new(
                int(r, T, "account_id")?,
                text(r, T, "jid")?,
                namespace(r, T, "namespace")?,
                u32_col(r, T, "device_id")?,
            ))
        })?
        .collect::<Result<_>>()?;
    conn.prepare_cached("DELETE FROM deferred_heartbeats WHERE account_id = ?1")?
        .execute([account_id])?;
    Ok(out)
}

/// When catch-up began for an account (`None`: not catching up).
pub fn catchup_since(conn: &Connection, account_id: i64) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT catchup_since FROM accounts WHERE id = ?1")?
        .query_row([account_id], |r| r.get::<_, Option<i64>>(0))
        .optional()?
        .flatten())
}

/// Sets or clears the start of catch-up.
pub fn set_catchup_since(conn: &Connection, account_id: i64, since: Option<i64>) -> Result<()> {
    conn.prepare_cached("UPDATE accounts SET catchup_since = ?2 WHERE id = ?1")?
        .execute(params![account_id, since])?;
    Ok(())
}

/// Rewrites a stored bundle (a prekey we used was removed from it).
pub fn set_bundle_xml(
    conn: &Connection,
    addr: &DeviceAddr,
    xml: &[u8],
    prekey_count: u32,
) -> Result<bool> {
    let (a, j, n, d) = addr_params(addr);
    Ok(conn
        .prepare_cached(&format!(
            "UPDATE bundles SET bundle = ?5, prekey_count = ?6 WHERE {WHERE_ADDR}"
        ))?
        .execute(params![a, j, n, d, xml, prekey_count])?
        > 0)
}

/// Gives an account's device a new id (a collision with another of our devices).
pub fn set_device_id(conn: &Connection, account_id: i64, device_id: u32) -> Result<()> {
    let n = conn
        .prepare_cached("UPDATE accounts SET device_id = ?2 WHERE id = ?1")?
        .execute(params![account_id, id_param(device_id)])?;
    super::types::expect_one(n, "account")
}
