//! `session_rebuilds`: sessions whose next message starts a new session because the database
//! was found rolled back (see [`super::generation`]); a row goes in the transaction that stores
//! the device's new session.

use rusqlite::{params, Connection};

use super::error::Result;
use super::types::{id_param, DeviceAddr, Namespace};

/// Every pending rebuild, with the time it was requested (rows with an unknown namespace or a
/// device id out of range are skipped).
pub fn list(conn: &Connection) -> Result<Vec<(DeviceAddr, i64)>> {
    let mut st = conn.prepare_cached(
        "SELECT account_id, jid, namespace, device_id, requested_at FROM session_rebuilds",
    )?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (account_id, jid, ns, device_id, requested_at) = row?;
        let (Some(namespace), Ok(device_id)) =
            (Namespace::from_namespace(&ns), u32::try_from(device_id))
        else {
            continue;
        };
        out.push((
            DeviceAddr::new(account_id, &jid, namespace, device_id),
            requested_at,
        ));
    }
    Ok(out)
}

/// Marks every stored session for a rebuild and drops those devices' stored bundles (they may
/// offer a one-time prekey the peer already consumed); returns how many sessions.
pub fn request_all(conn: &Connection, now: i64) -> Result<usize> {
    let n = conn.execute(
        "INSERT OR IGNORE INTO session_rebuilds (account_id, jid, namespace, device_id, requested_at) \
         SELECT account_id, jid, namespace, device_id, ?1 FROM sessions",
        [now],
    )?;
    conn.execute(
        "DELETE FROM bundles WHERE (account_id, jid, namespace, device_id) IN \
         (SELECT account_id, jid, namespace, device_id FROM session_rebuilds)",
        [],
    )?;
    Ok(n)
}

/// Removes the device's pending rebuild (inside the transaction storing its new session).
pub fn clear(conn: &Connection, addr: &DeviceAddr) -> Result<()> {
    conn.prepare_cached(
        "DELETE FROM session_rebuilds \
         WHERE account_id = ?1 AND jid = ?2 AND namespace = ?3 AND device_id = ?4",
    )?
    .execute(params![
        addr.account_id,
        addr.jid,
        addr.namespace.namespace(),
        id_param(addr.device_id)
    ])?;
    Ok(())
}
