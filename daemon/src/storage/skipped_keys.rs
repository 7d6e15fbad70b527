//! `skipped_keys`: message keys of skipped messages, per session (deleted with it).

use protocol_core::double_ratchet::skipped_keys::{SkippedKey, SkippedKeyChanges};
use rusqlite::{params, Connection, OptionalExtension};

use super::error::Result;
use super::sealing::columns::SKIPPED_MESSAGE_KEY;
use super::sealing::KeyPart;
use super::types::{
    addr_columns, addr_params, blob32, id_param, u32_col, DeviceAddr, SecretKey, WHERE_ADDR,
};
use super::Db;

/// The key of a skipped message key's sealed value: its session's device, chain and number.
fn sealed_key<'a>(addr: &'a DeviceAddr, ratchet_key: &'a [u8; 32], n: u32) -> [KeyPart<'a>; 6] {
    let [a, j, ns, d] = super::types::device_key(addr);
    [
        a,
        j,
        ns,
        d,
        KeyPart::Blob(ratchet_key),
        KeyPart::Int(id_param(n)),
    ]
}

/// One skipped message key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKeyRow {
    /// The session's device.
    pub addr: DeviceAddr,
    /// Sender's ratchet public key (Curve25519 u).
    pub ratchet_key: [u8; 32],
    /// Message number in that chain.
    pub n: u32,
    /// The message key (secret).
    pub message_key: SecretKey,
    /// Unix seconds.
    pub created_at: i64,
}

/// Stores a skipped key; the session must exist. Returns false if the same
/// `(ratchet_key, n)` was already stored (the stored key is kept).
pub fn insert(conn: &Db, row: &SkippedKeyRow) -> Result<bool> {
    let a = &row.addr;
    let message_key = conn.seal(
        &SKIPPED_MESSAGE_KEY,
        &sealed_key(a, &row.ratchet_key, row.n),
        row.message_key.expose(),
    );
    let n = conn
        .prepare_cached(
            "INSERT INTO skipped_keys (account_id, jid, namespace, device_id, ratchet_key, n, message_key, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            a.account_id,
            a.jid,
            a.namespace.namespace(),
            id_param(a.device_id),
            &row.ratchet_key[..],
            id_param(row.n),
            message_key,
            row.created_at
        ])?;
    Ok(n > 0)
}

/// Mirrors a decryption's skipped-key changes (keys used, evicted and added).
pub fn apply_changes(
    conn: &Db,
    addr: &DeviceAddr,
    changes: &SkippedKeyChanges,
    now: i64,
) -> Result<()> {
    if let Some((rk, n)) = changes.used {
        take(conn, addr, &rk, n)?;
    }
    for (rk, n) in &changes.evicted {
        take(conn, addr, rk, *n)?;
    }
    for k in &changes.added {
        if changes
            .evicted
            .iter()
            .any(|(rk, n)| *n == k.n && *rk == k.ratchet_key)
        {
            continue;
        }
        insert_key(conn, addr, k, now)?;
    }
    Ok(())
}

fn insert_key(conn: &Db, addr: &DeviceAddr, k: &SkippedKey, now: i64) -> Result<bool> {
    insert(
        conn,
        &SkippedKeyRow {
            addr: addr.clone(),
            ratchet_key: k.ratchet_key,
            n: k.n,
            message_key: SecretKey::new(k.message_key),
            created_at: now,
        },
    )
}

/// Replaces every stored skipped key of a (new) session by `keys`.
pub fn replace_for_session<'k>(
    conn: &Db,
    addr: &DeviceAddr,
    keys: impl IntoIterator<Item = &'k SkippedKey>,
    now: i64,
) -> Result<()> {
    delete_for_session(conn, addr)?;
    for k in keys {
        insert_key(conn, addr, k, now)?;
    }
    Ok(())
}

/// Removes and returns the key of message `n` of the chain `ratchet_key` (a key is used once).
pub fn take(
    conn: &Db,
    addr: &DeviceAddr,
    ratchet_key: &[u8; 32],
    n: u32,
) -> Result<Option<SecretKey>> {
    let sealed: Option<Vec<u8>> = conn
        .prepare_cached(
            "DELETE FROM skipped_keys WHERE account_id = ?1 AND jid = ?2 AND namespace = ?3 AND device_id = ?4 \
             AND ratchet_key = ?5 AND n = ?6 RETURNING message_key",
        )?
        .query_row(
            params![
                addr.account_id,
                addr.jid,
                addr.namespace.namespace(),
                id_param(addr.device_id),
                &ratchet_key[..],
                id_param(n)
            ],
            |r| r.get(0),
        )
        .optional()?;
    sealed
        .map(|s| conn.open32(&SKIPPED_MESSAGE_KEY, &sealed_key(addr, ratchet_key, n), &s))
        .transpose()
}

/// Every skipped key of a session, oldest first.
pub fn list(conn: &Db, addr: &DeviceAddr) -> Result<Vec<SkippedKeyRow>> {
    conn.prepare_cached(
        "SELECT ratchet_key, n, message_key, created_at FROM skipped_keys \
         WHERE account_id = ?1 AND jid = ?2 AND namespace = ?3 AND device_id = ?4 \
         ORDER BY created_at, rowid",
    )?
    .query_and_then(
        params![
            addr.account_id,
            addr.jid,
            addr.namespace.namespace(),
            id_param(addr.device_id)
        ],
        |r| -> Result<_> {
            let bad = |column: &'static str, len: usize| super::StorageError::BadData {
                table: "skipped_keys",
                column,
                reason: format!("expected 32 bytes, found {len}"),
            };
            let rk: Vec<u8> = r.get(0)?;
            let ratchet_key: [u8; 32] = rk
                .as_slice()
                .try_into()
                .map_err(|_| bad("ratchet_key", rk.len()))?;
            let n = u32::try_from(r.get::<_, i64>(1)?).map_err(|_| bad("n", 0))?;
            let sealed = super::types::blob(r, "skipped_keys", "message_key")?;
            Ok(SkippedKeyRow {
                addr: addr.clone(),
                ratchet_key,
                n,
                message_key: conn.open32(
                    &SKIPPED_MESSAGE_KEY,
                    &sealed_key(addr, &ratchet_key, n),
                    sealed,
                )?,
                created_at: r.get(3)?,
            })
        },
    )?
    .collect()
}

/// Deletes every skipped key of a session. Returns how many.
pub fn delete_for_session(conn: &Connection, addr: &DeviceAddr) -> Result<usize> {
    Ok(conn
        .prepare_cached(
            "DELETE FROM skipped_keys WHERE account_id = ?1 AND jid = ?2 AND namespace = ?3 AND device_id = ?4",
        )?
        .execute(params![addr.account_id, addr.jid, addr.namespace.namespace(), id_param(addr.device_id)])?)
}

/// How many skipped keys a session holds.
pub fn count(conn: &Connection, addr: &DeviceAddr) -> Result<u32> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM skipped_keys WHERE account_id = ?1 AND jid = ?2 AND namespace = ?3 AND device_id = ?4",
        )?
        .query_row(
            params![addr.account_id, addr.jid, addr.namespace.namespace(), id_param(addr.device_id)],
            |r| r.get(0),
        )?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

/// Keeps only the `keep` newest skipped keys of a session; returns how many were deleted.
pub fn trim(conn: &Connection, addr: &DeviceAddr, keep: u32) -> Result<usize> {
    Ok(conn
        .prepare_cached(
            "DELETE FROM skipped_keys WHERE rowid IN ( \
               SELECT rowid FROM skipped_keys \
               WHERE account_id = ?1 AND jid = ?2 AND namespace = ?3 AND device_id = ?4 \
               ORDER BY created_at DESC, rowid DESC LIMIT -1 OFFSET ?5)",
        )?
        .execute(params![
            addr.account_id,
            addr.jid,
            addr.namespace.namespace(),
            id_param(addr.device_id),
            i64::from(keep)
        ])?)
}

/// The (ratchet key, index) of a session's skipped keys created before `cutoff`.
pub fn expired(conn: &Connection, addr: &DeviceAddr, cutoff: i64) -> Result<Vec<([u8; 32], u32)>> {
    let (a, j, n, d) = addr_params(addr);
    conn.prepare_cached(&format!(
        "SELECT ratchet_key, n FROM skipped_keys WHERE {WHERE_ADDR} AND created_at < ?5"
    ))?
    .query_and_then(params![a, j, n, d, cutoff], |r| -> Result<_> {
        Ok((
            blob32(r, "skipped_keys", "ratchet_key")?,
            u32_col(r, "skipped_keys", "n")?,
        ))
    })?
    .collect()
}

/// Deletes a session's skipped keys created before `cutoff`. Returns how many.
pub fn delete_expired(conn: &Connection, addr: &DeviceAddr, cutoff: i64) -> Result<usize> {
    let (a, j, n, d) = addr_params(addr);
    Ok(conn
        .prepare_cached(&format!(
            "DELETE FROM skipped_keys WHERE {WHERE_ADDR} AND created_at < ?5"
        ))?
        .execute(params![a, j, n, d, cutoff])?)
}

/// The sessions that hold skipped keys created before `cutoff` (rows with an unknown namespace
/// or a device id out of range are skipped).
pub fn sessions_with_keys_before(conn: &Connection, cutoff: i64) -> Result<Vec<DeviceAddr>> {
    let rows: Vec<_> = conn
        .prepare_cached(
            "SELECT DISTINCT account_id, jid, namespace, device_id FROM skipped_keys WHERE created_at < ?1",
        )?
        .query_map(params![cutoff], addr_columns)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows.into_iter().flatten().collect())
}
