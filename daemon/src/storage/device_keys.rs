//! Each remote device's identity key, as `devices.list` and `trust.list` show it: its session's,
//! else its stored bundle's (as the `device_overview` view), with the session's count of
//! unanswered messages.

use rusqlite::{params, Connection};

use super::error::Result;
use super::types::{addr_columns, blob32, u64_col, DeviceAddr};

const T: &str = "sessions";

/// The key of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKey {
    /// The device.
    pub addr: DeviceAddr,
    /// Curve25519 u of its identity key.
    pub identity_key: [u8; 32],
    /// Messages sent to it since it was last heard from (0 without a session).
    pub unanswered: u64,
}

/// The keys of every device of the account with a session or a stored bundle (of `jid` only,
/// when given).
pub fn list(conn: &Connection, account_id: i64, jid: Option<&str>) -> Result<Vec<DeviceKey>> {
    let mut st = conn.prepare_cached(
        "SELECT account_id, jid, namespace, device_id, identity_key, unanswered FROM sessions \
         WHERE account_id = ?1 AND (?2 IS NULL OR jid = ?2) \
         UNION ALL \
         SELECT b.account_id, b.jid, b.namespace, b.device_id, b.identity_curve25519, 0 FROM bundles b \
         WHERE b.account_id = ?1 AND (?2 IS NULL OR b.jid = ?2) AND NOT EXISTS ( \
           SELECT 1 FROM sessions s WHERE s.account_id = b.account_id AND s.jid = b.jid \
           AND s.namespace = b.namespace AND s.device_id = b.device_id)",
    )?;
    let rows = st.query_and_then(params![account_id, jid], |r| -> Result<Option<DeviceKey>> {
        let Some(addr) = addr_columns(r)? else {
            return Ok(None);
        };
        Ok(Some(DeviceKey {
            addr,
            identity_key: blob32(r, T, "identity_key")?,
            unanswered: u64_col(r, T, "unanswered")?,
        }))
    })?;
    let mut keys = Vec::new();
    for row in rows {
        if let Some(k) = row? {
            keys.push(k);
        }
    }
    Ok(keys)
}
