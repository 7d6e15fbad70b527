//! `devices`: device lists of contacts and of our own account, per namespace.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::error::Result;
use super::types::{
    addr_params, bool_col, id_param, int, namespace, opt_blob, opt_int, opt_text, text, u32_col,
    DeviceAddr, Namespace, WHERE_ADDR,
};

const T: &str = "devices";

/// One row of `devices`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    /// Owning account.
    pub account_id: i64,
    /// Bare JID the device belongs to.
    pub jid: String,
    /// OMEMO version of the list it appeared in.
    pub namespace: Namespace,
    /// Device id.
    pub device_id: u32,
    /// Label (OMEMO 2) as listed, if any: not checked (see `manager::labels`).
    pub label: Option<String>,
    /// The label's signature as listed (`labelsig`).
    pub labelsig: Option<Vec<u8>>,
    /// In the latest device list.
    pub active: bool,
    /// Unix seconds.
    pub first_seen: i64,
    /// Last message received from it.
    pub last_seen: Option<i64>,
    /// When a device list last mentioned (or dropped) it.
    pub list_updated_at: i64,
}

impl DeviceRow {
    /// The row's address.
    pub fn addr(&self) -> DeviceAddr {
        DeviceAddr::new(
            self.account_id,
            self.jid.clone(),
            self.namespace,
            self.device_id,
        )
    }
}

/// One entry of a received device list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceListEntry {
    /// Device id.
    pub device_id: u32,
    /// Label, if the list carries one.
    pub label: Option<String>,
    /// Its signature, if the list carries one.
    pub labelsig: Option<Vec<u8>>,
}

/// What [`replace_list`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceListChange {
    /// Devices never seen before.
    pub added: Vec<u32>,
    /// Known inactive devices that are back in the list.
    pub reactivated: Vec<u32>,
    /// Devices that dropped out of the list (now inactive).
    pub deactivated: Vec<u32>,
}

const COLUMNS: &str =
    "account_id, jid, namespace, device_id, label, labelsig, active, first_seen, \
                       last_seen, list_updated_at";

fn from_row(r: &Row<'_>) -> Result<DeviceRow> {
    Ok(DeviceRow {
        account_id: int(r, T, "account_id")?,
        jid: text(r, T, "jid")?,
        namespace: namespace(r, T, "namespace")?,
        device_id: u32_col(r, T, "device_id")?,
        label: opt_text(r, T, "label")?,
        labelsig: opt_blob(r, T, "labelsig")?,
        active: bool_col(r, T, "active")?,
        first_seen: int(r, T, "first_seen")?,
        last_seen: opt_int(r, T, "last_seen")?,
        list_updated_at: int(r, T, "list_updated_at")?,
    })
}

/// Applies a freshly received device list of `jid` in `ns`: listed devices become active
/// (new ones are added, labels updated), known devices missing from it become inactive but
/// keep their rows. Duplicate ids in `entries`: the last one wins.
pub fn replace_list(
    conn: &Connection,
    account_id: i64,
    jid: &str,
    ns: Namespace,
    entries: &[DeviceListEntry],
    now: i64,
) -> Result<DeviceListChange> {
    let known: BTreeMap<u32, bool> = list(conn, account_id, jid, ns)?
        .into_iter()
        .map(|d| (d.device_id, d.active))
        .collect();
    let listed: BTreeMap<u32, &DeviceListEntry> =
        entries.iter().map(|e| (e.device_id, e)).collect();
    let mut change = DeviceListChange::default();
    let mut upsert = conn.prepare_cached(
        "INSERT INTO devices (account_id, jid, namespace, device_id, label, labelsig, active, first_seen, list_updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?7, 1, ?6, ?6) \
         ON CONFLICT (account_id, jid, namespace, device_id) DO UPDATE SET \
           label = excluded.label, labelsig = excluded.labelsig, active = 1, \
           list_updated_at = excluded.list_updated_at",
    )?;
    for (&device_id, entry) in &listed {
        upsert.execute(params![
            account_id,
            jid,
            ns.namespace(),
            id_param(device_id),
            entry.label,
            now,
            entry.labelsig
        ])?;
        match known.get(&device_id) {
            None => change.added.push(device_id),
            Some(false) => change.reactivated.push(device_id),
            Some(true) => {}
        }
    }
    let mut deactivate = conn.prepare_cached(
        "UPDATE devices SET active = 0, list_updated_at = ?5 \
         WHERE account_id = ?1 AND jid = ?2 AND namespace = ?3 AND device_id = ?4",
    )?;
    for (&device_id, &active) in &known {
        if active && !listed.contains_key(&device_id) {
            deactivate.execute(params![
                account_id,
                jid,
                ns.namespace(),
                id_param(device_id),
                now
            ])?;
            change.deactivated.push(device_id);
        }
    }
    prune_dropped(conn, account_id, jid, ns, now)?;
    Ok(change)
}

/// Deletes devices of `jid` in `ns` that dropped out of its list more than
/// `DROPPED_DEVICE_RETENTION_SECS` ago, and beyond the `MAX_INACTIVE_DEVICES_PER_LIST` dropped
/// most recently, so that the rows of a contact (and the work of each update) stay bounded
/// however often its list churns. Returns how many were deleted.
pub fn prune_dropped(
    conn: &Connection,
    account_id: i64,
    jid: &str,
    ns: Namespace,
    now: i64,
) -> Result<usize> {
    let cutoff = now.saturating_sub(crate::bounds::DROPPED_DEVICE_RETENTION_SECS);
    let keep = i64::try_from(crate::bounds::MAX_INACTIVE_DEVICES_PER_LIST).unwrap_or(i64::MAX);
    let n = conn
        .prepare_cached(
            "DELETE FROM devices WHERE account_id = ?1 AND jid = ?2 AND namespace = ?3 AND active = 0 \
             AND (list_updated_at < ?4 OR device_id IN ( \
               SELECT device_id FROM devices \
               WHERE account_id = ?1 AND jid = ?2 AND namespace = ?3 AND active = 0 \
               ORDER BY list_updated_at DESC, device_id DESC LIMIT -1 OFFSET ?5))",
        )?
        .execute(params![account_id, jid, ns.namespace(), cutoff, keep])?;
    Ok(n)
}

/// Deletes, for every contact, devices that dropped out of their list before `cutoff`.
pub fn prune_dropped_before(conn: &Connection, cutoff: i64) -> Result<usize> {
    let n = conn
        .prepare_cached("DELETE FROM devices WHERE active = 0 AND list_updated_at < ?1")?
        .execute([cutoff])?;
    Ok(n)
}

/// [`prune_dropped_before`] over the rows `from..from + span` (by rowid), so that a large table
/// is pruned in short transactions. Returns how many went, and where the next step starts
/// (`None`: no row lies beyond).
pub fn prune_dropped_step(
    conn: &Connection,
    cutoff: i64,
    from: i64,
    span: i64,
) -> Result<(usize, Option<i64>)> {
    let to = from.saturating_add(span);
    let n = conn
        .prepare_cached(
            "DELETE FROM devices WHERE rowid >= ?1 AND rowid < ?2 AND active = 0 \
             AND list_updated_at < ?3",
        )?
        .execute([from, to, cutoff])?;
    let more: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM devices WHERE rowid >= ?1)")?
        .query_row([to], |r| r.get(0))?;
    Ok((n, more.then_some(to)))
}

/// Every known device of `jid` in `ns` (active or not), by device id.
pub fn list(
    conn: &Connection,
    account_id: i64,
    jid: &str,
    ns: Namespace,
) -> Result<Vec<DeviceRow>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM devices WHERE account_id = ?1 AND jid = ?2 AND namespace = ?3 ORDER BY device_id"
    ))?
        .query_and_then(params![account_id, jid, ns.namespace()], from_row)?
        .collect()
}

/// Every known device of the account, by jid, namespace and device id.
pub fn list_all(conn: &Connection, account_id: i64) -> Result<Vec<DeviceRow>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM devices WHERE account_id = ?1 ORDER BY jid, namespace, device_id"
    ))?
    .query_and_then([account_id], from_row)?
    .collect()
}

/// One device.
pub fn get(conn: &Connection, addr: &DeviceAddr) -> Result<Option<DeviceRow>> {
    super::types::get_by_addr(conn, T, COLUMNS, addr, from_row)
}

/// Records that a message arrived from the device at `now`. A device not in any list yet is
/// added as inactive (it sent us a message, so it exists). Returns whether it was new.
pub fn touch_last_seen(conn: &Connection, addr: &DeviceAddr, now: i64) -> Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE devices SET last_seen = max(coalesce(last_seen, ?5), ?5) \
             WHERE account_id = ?1 AND jid = ?2 AND namespace = ?3 AND device_id = ?4",
        )?
        .execute(params![
            addr.account_id,
            addr.jid,
            addr.namespace.namespace(),
            id_param(addr.device_id),
            now
        ])?;
    if n > 0 {
        return Ok(false);
    }
    conn.prepare_cached(
        "INSERT INTO devices (account_id, jid, namespace, device_id, active, first_seen, last_seen, list_updated_at) \
         VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5, ?5)",
    )?
    .execute(params![addr.account_id, addr.jid, addr.namespace.namespace(), id_param(addr.device_id), now])?;
    Ok(true)
}

/// Forgets a device entirely. Returns whether it existed.
pub fn delete(conn: &Connection, addr: &DeviceAddr) -> Result<bool> {
    let n = conn
        .prepare_cached("DELETE FROM devices WHERE account_id = ?1 AND jid = ?2 AND namespace = ?3 AND device_id = ?4")?
        .execute(params![addr.account_id, addr.jid, addr.namespace.namespace(), id_param(addr.device_id)])?;
    Ok(n > 0)
}

/// Forgets a device that is on no list (its messages created the row). Returns whether it was
/// deleted (a listed device is kept).
pub fn delete_inactive(conn: &Connection, addr: &DeviceAddr) -> Result<bool> {
    let (a, j, n, d) = addr_params(addr);
    let deleted = conn
        .prepare_cached(&format!(
            "DELETE FROM devices WHERE {WHERE_ADDR} AND active = 0"
        ))?
        .execute(params![a, j, n, d])?;
    Ok(deleted > 0)
}

/// The identity key (Curve25519) held for a device, in the order identity pinning uses: its
/// session's, else its stored bundle's, else one the user accepted with `identity.accept`.
pub fn known_identity(conn: &Connection, addr: &DeviceAddr) -> Result<Option<[u8; 32]>> {
    let (a, j, n, d) = addr_params(addr);
    for sql in [
        "SELECT identity_key FROM sessions WHERE {WHERE_ADDR}",
        "SELECT identity_curve25519 FROM bundles WHERE {WHERE_ADDR}",
        "SELECT new_identity FROM identity_changes WHERE {WHERE_ADDR} AND accepted_at IS NOT NULL",
    ] {
        let key: Option<Vec<u8>> = conn
            .prepare_cached(&sql.replace("{WHERE_ADDR}", WHERE_ADDR))?
            .query_row(params![a, j, n, d], |r| r.get(0))
            .optional()?;
        if let Some(k) = key.and_then(|k| <[u8; 32]>::try_from(k).ok()) {
            return Ok(Some(k));
        }
    }
    Ok(None)
}
