//! Sessions to rebuild after the database was found rolled back (see
//! [`crate::storage::generation`]): their ratchet state may be older than the peer's, so the next
//! message to each device starts a new session (a key exchange) instead. Once per device: the
//! pending row goes in the transaction that stores the new session.

use crate::storage::{self, DeviceAddr, Namespace};
use rusqlite::{params, Connection};
use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

/// The devices whose next message starts a new session.
#[derive(Debug, Default)]
pub struct Pending(Mutex<HashSet<DeviceAddr>>);

impl Pending {
    /// From the database.
    pub fn load(conn: &Connection) -> storage::Result<Pending> {
        let mut stmt =
            conn.prepare("SELECT account_id, jid, namespace, device_id FROM session_rebuilds")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut set = HashSet::new();
        for (account_id, jid, ns, device_id) in rows {
            let (Some(namespace), Ok(device_id)) =
                (Namespace::from_namespace(&ns), u32::try_from(device_id))
            else {
                continue;
            };
            set.insert(DeviceAddr::new(account_id, &jid, namespace, device_id));
        }
        Ok(Pending(Mutex::new(set)))
    }

    /// Whether the device's next message must start a new session.
    pub fn contains(&self, addr: &DeviceAddr) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(addr)
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

/// Marks every stored session for a rebuild; returns how many.
pub fn request_all(conn: &Connection, now: i64) -> storage::Result<usize> {
    Ok(conn.execute(
        "INSERT OR IGNORE INTO session_rebuilds (account_id, jid, namespace, device_id, requested_at) \
         SELECT account_id, jid, namespace, device_id, ?1 FROM sessions",
        [now],
    )?)
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
