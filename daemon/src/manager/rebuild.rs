//! Sessions to rebuild after the database was found rolled back (see
//! [`crate::storage::generation`]): their ratchet state may be older than the peer's, so the next
//! message to each device starts a new session (a key exchange) instead. Once per device: the
//! pending row goes in the transaction that stores the new session.
//!
//! The new session needs a bundle fetched after the rollback was found: the stored one may offer
//! a one-time prekey the peer already consumed (for the session being replaced), which the peer
//! would refuse. So the stored bundles of those devices are dropped when the rebuilds are
//! requested (they are a cache of what the peer publishes), and until the client hands over a
//! fresh one the device is reported `no_bundle` with a `fetch_bundle` action.

use crate::storage::{self, DeviceAddr, Namespace};
use rusqlite::{params, Connection};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// The devices whose next message starts a new session.
#[derive(Debug, Default)]
pub struct Pending(Mutex<HashMap<DeviceAddr, i64>>);

impl Pending {
    /// From the database.
    pub fn load(conn: &Connection) -> storage::Result<Pending> {
        let mut stmt = conn.prepare(
            "SELECT account_id, jid, namespace, device_id, requested_at FROM session_rebuilds",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut set = HashMap::new();
        for (account_id, jid, ns, device_id, requested_at) in rows {
            let (Some(namespace), Ok(device_id)) =
                (Namespace::from_namespace(&ns), u32::try_from(device_id))
            else {
                continue;
            };
            set.insert(
                DeviceAddr::new(account_id, &jid, namespace, device_id),
                requested_at,
            );
        }
        Ok(Pending(Mutex::new(set)))
    }

    /// Whether the device's next message must start a new session.
    pub fn contains(&self, addr: &DeviceAddr) -> bool {
        self.requested_at(addr).is_some()
    }

    /// When the device's rebuild was requested: its bundle must be fetched after that.
    pub fn requested_at(&self, addr: &DeviceAddr) -> Option<i64> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(addr)
            .copied()
    }

    /// After the new session was committed.
    pub fn done(&self, addr: &DeviceAddr) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(addr);
    }

    /// How many are pending.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether none is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Marks every stored session for a rebuild and drops those devices' stored bundles; returns how
/// many sessions.
pub fn request_all(conn: &Connection, now: i64) -> storage::Result<usize> {
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
pub fn clear(conn: &Connection, addr: &DeviceAddr) -> storage::Result<()> {
    conn.execute(
        "DELETE FROM session_rebuilds \
         WHERE account_id = ?1 AND jid = ?2 AND namespace = ?3 AND device_id = ?4",
        params![
            addr.account_id,
            addr.jid,
            addr.namespace.namespace(),
            addr.device_id
        ],
    )?;
    Ok(())
}
