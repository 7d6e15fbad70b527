//! `prekeys`: our one-time prekeys.
//!
//! A prekey consumed by a key exchange is deleted at once, except during catch-up: then it is
//! only marked used (hidden from the bundle) because older archived messages may still need
//! it; [`delete_used`] removes those when catch-up ends.

use rusqlite::{params, Connection, Row};

use super::error::Result;
use super::sealing::columns::PREKEY_PRIVATE_KEY;
use super::sealing::KeyPart;
use super::types::{blob32, id_param, int, opt_int, u32_col, Namespace, SecretKey};
use super::Db;

const T: &str = "prekeys";

/// One row of `prekeys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreKeyRow {
    /// Owning account.
    pub account_id: i64,
    /// Prekey id.
    pub id: u32,
    /// X25519 private key.
    pub private_key: SecretKey,
    /// X25519 public key.
    pub public_key: [u8; 32],
    /// Unix seconds.
    pub created_at: i64,
    /// When a key exchange used it (during catch-up); `None` = live.
    pub used_at: Option<i64>,
    /// The pool (namespace) it belongs to; `None` for keys made before pools were split.
    pub namespace: Option<Namespace>,
    /// The initiator's ephemeral key of the key exchange that used it during catch-up.
    pub used_by: Option<[u8; 32]>,
}

/// The public half of a live prekey, for the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicPreKey {
    /// Prekey id.
    pub id: u32,
    /// X25519 public key.
    pub public_key: [u8; 32],
}

fn from_row(db: &Db, r: &Row<'_>) -> Result<PreKeyRow> {
    let account_id = int(r, T, "account_id")?;
    let id = u32_col(r, T, "id")?;
    Ok(PreKeyRow {
        account_id,
        id,
        private_key: db.secret32(
            r,
            &PREKEY_PRIVATE_KEY,
            &[KeyPart::Int(account_id), KeyPart::Int(id_param(id))],
        )?,
        public_key: blob32(r, T, "public_key")?,
        created_at: int(r, T, "created_at")?,
        used_at: opt_int(r, T, "used_at")?,
        namespace: r
            .get::<_, Option<String>>("namespace")?
            .and_then(|n| Namespace::from_namespace(&n)),
        used_by: r
            .get::<_, Option<Vec<u8>>>("used_by")?
            .and_then(|v| v.try_into().ok()),
    })
}

/// Stores prekeys (ids must be new).
pub fn insert_many(db: &Db, rows: &[PreKeyRow]) -> Result<()> {
    let mut st = db.prepare_cached(
        "INSERT INTO prekeys (account_id, id, private_key, public_key, created_at, used_at, namespace) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for row in rows {
        let private_key = db.seal(
            &PREKEY_PRIVATE_KEY,
            &[KeyPart::Int(row.account_id), KeyPart::Int(id_param(row.id))],
            row.private_key.expose(),
        );
        st.execute(params![
            row.account_id,
            id_param(row.id),
            private_key,
            &row.public_key[..],
            row.created_at,
            row.used_at,
            row.namespace.map(|n| n.namespace())
        ])?;
    }
    Ok(())
}

/// Tops up each namespace's pool of live one-time prekeys to `size` (each namespace has its own
/// keys, so a peer building sessions in both never gets the same one twice): `make` turns fresh
/// ids into rows (and whatever goes with them), which are stored and returned.
pub fn refill_pools<K>(
    conn: &Db,
    account_id: i64,
    size: u32,
    mut make: impl FnMut(std::ops::Range<u32>, Namespace) -> Vec<(PreKeyRow, K)>,
) -> Result<Vec<(PreKeyRow, K)>> {
    let mut out = Vec::new();
    for ns in Namespace::ALL {
        let live = count_live_in(conn, account_id, ns)?;
        if live < size {
            let ids = super::accounts::take_prekey_ids(conn, account_id, size - live)?;
            let rows = make(ids, ns);
            insert_many(
                conn,
                &rows.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>(),
            )?;
            out.extend(rows);
        }
    }
    Ok(out)
}

/// One prekey, live or used.
pub fn get(db: &Db, account_id: i64, id: u32) -> Result<Option<PreKeyRow>> {
    let mut st = db.prepare_cached(
        "SELECT account_id, id, private_key, public_key, created_at, used_at, namespace, used_by \
         FROM prekeys WHERE account_id = ?1 AND id = ?2",
    )?;
    let mut rows = st.query(params![account_id, id_param(id)])?;
    rows.next()?.map(|r| from_row(db, r)).transpose()
}

/// Every prekey of the account, live and used, by id.
pub fn list(db: &Db, account_id: i64) -> Result<Vec<PreKeyRow>> {
    db.prepare_cached(
        "SELECT account_id, id, private_key, public_key, created_at, used_at, namespace, used_by \
         FROM prekeys WHERE account_id = ?1 ORDER BY id",
    )?
    .query_and_then([account_id], |r| from_row(db, r))?
    .collect()
}

/// Marks a live prekey used at `now` by the key exchange with ephemeral key `by`. Returns
/// false if it does not exist or was already used.
pub fn mark_used(
    conn: &Connection,
    account_id: i64,
    id: u32,
    now: i64,
    by: &[u8; 32],
) -> Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE prekeys SET used_at = ?3, used_by = ?4 \
             WHERE account_id = ?1 AND id = ?2 AND used_at IS NULL",
        )?
        .execute(params![account_id, id_param(id), now, &by[..]])?;
    Ok(n > 0)
}

/// Deletes a prekey. Returns whether it existed.
pub fn delete(conn: &Connection, account_id: i64, id: u32) -> Result<bool> {
    let n = conn
        .prepare_cached("DELETE FROM prekeys WHERE account_id = ?1 AND id = ?2")?
        .execute(params![account_id, id_param(id)])?;
    Ok(n > 0)
}

/// Deletes every used prekey of the account (end of catch-up). Returns how many.
pub fn delete_used(conn: &Connection, account_id: i64) -> Result<usize> {
    Ok(conn
        .prepare_cached("DELETE FROM prekeys WHERE account_id = ?1 AND used_at IS NOT NULL")?
        .execute([account_id])?)
}

/// Deletes every prekey of the account, live or used (after a restore: any may have been handed
/// out since the copy). Returns how many.
pub fn delete_all(conn: &Connection, account_id: i64) -> Result<usize> {
    Ok(conn
        .prepare_cached("DELETE FROM prekeys WHERE account_id = ?1")?
        .execute([account_id])?)
}

/// Public halves of the live prekeys, by id, for the bundle.
pub fn list_live_public(conn: &Connection, account_id: i64) -> Result<Vec<PublicPreKey>> {
    conn.prepare_cached(
        "SELECT id, public_key FROM prekeys WHERE account_id = ?1 AND used_at IS NULL ORDER BY id",
    )?
    .query_and_then([account_id], |r| -> Result<_> {
        Ok(PublicPreKey {
            id: u32_col(r, T, "id")?,
            public_key: blob32(r, T, "public_key")?,
        })
    })?
    .collect()
}

/// How many live prekeys the account has (both pools, and keys from before the split).
pub fn count_live(conn: &Connection, account_id: i64) -> Result<u32> {
    let n: i64 = conn
        .prepare_cached("SELECT count(*) FROM prekeys WHERE account_id = ?1 AND used_at IS NULL")?
        .query_row([account_id], |r| r.get(0))?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

/// How many live prekeys one namespace's pool has.
pub fn count_live_in(conn: &Connection, account_id: i64, namespace: Namespace) -> Result<u32> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM prekeys WHERE account_id = ?1 AND namespace = ?2 AND used_at IS NULL",
        )?
        .query_row(params![account_id, namespace.namespace()], |r| r.get(0))?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}
