//! `session_rebuilds`: sessions whose next message starts a new session because the database
//! was found rolled back (see [`super::generation`]); a row goes in the transaction that stores
//! the device's new session.

use rusqlite::{params, Connection};

use super::error::Result;
use super::types::{addr_columns, addr_params, DeviceAddr, WHERE_ADDR};

/// Every pending rebuild, with the time it was requested (rows with an unknown namespace or a
/// device id out of range are skipped).
pub fn list(conn: &Connection) -> Result<Vec<(DeviceAddr, i64)>> {
    let rows: Vec<_> = conn
        .prepare_cached(
            "SELECT account_id, jid, namespace, device_id, requested_at FROM session_rebuilds",
        )?
        .query_map([], |r| Ok((addr_columns(r)?, r.get::<_, i64>(4)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows
        .into_iter()
        .filter_map(|(addr, at)| Some((addr?, at)))
        .collect())
}

/// Marks every session of the account for a rebuild and drops every bundle stored for it (a
/// cache of what peers publish: any may offer a one-time prekey consumed since, by us or by
/// another); returns how many sessions.
pub fn request_all(conn: &Connection, account_id: i64, now: i64) -> Result<usize> {
    let n = conn.execute(
        "INSERT OR IGNORE INTO session_rebuilds (account_id, jid, namespace, device_id, requested_at) \
         SELECT account_id, jid, namespace, device_id, ?2 FROM sessions WHERE account_id = ?1",
        [account_id, now],
    )?;
    conn.execute("DELETE FROM bundles WHERE account_id = ?1", [account_id])?;
    Ok(n)
}

/// Removes the device's pending rebuild (inside the transaction storing its new session).
pub fn clear(conn: &Connection, addr: &DeviceAddr) -> Result<()> {
    let (a, j, n, d) = addr_params(addr);
    conn.prepare_cached(&format!("DELETE FROM session_rebuilds WHERE {WHERE_ADDR}"))?
        .execute(params![a, j, n, d])?;
    Ok(())
}
