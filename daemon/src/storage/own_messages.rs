//! `own_messages`: what lets this device read back the `<encrypted>` elements it sent (issue 20).
//! Bounded like redelivery, by age and by row count ([`prune`]).

use rusqlite::{params, Connection, OptionalExtension};
use zeroize::Zeroizing;

use super::error::Result;
use super::redelivery::prefix;
use super::sealing::columns::OWN_MESSAGE_KEY_MATERIAL;
use super::types::{blob32, digest_key, int, opt_text};
use super::Db;

const T: &str = "own_messages";

/// One element this device sent.
#[derive(Clone, PartialEq, Eq)]
pub struct OwnMessageRow {
    /// Our account.
    pub account_id: i64,
    /// Digest of (namespace, our device id, the element's key elements): the lookup key.
    pub digest: [u8; 32],
    /// Digest of (iv, payload).
    pub payload_digest: [u8; 32],
    /// The payload's key material; `None` for an empty message.
    pub key_material: Option<Zeroizing<Vec<u8>>>,
    /// The bare JID of the conversation it was sent in, when known.
    pub conversation: Option<String>,
    /// Unix seconds it was sent.
    pub created_at: i64,
}

impl std::fmt::Debug for OwnMessageRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnMessageRow")
            .field("account_id", &self.account_id)
            .field("digest", &hex::encode(self.digest))
            .field("key_material", &self.key_material.as_ref().map(|k| k.len()))
            .field("conversation", &self.conversation)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// Stores a sent element; returns its row id (the caller keeps digest → id: the table has no
/// index on the digest).
pub fn insert(conn: &Db, row: &OwnMessageRow) -> Result<i64> {
    let key_material = row.key_material.as_ref().map(|k| {
        conn.seal(
            &OWN_MESSAGE_KEY_MATERIAL,
            &digest_key(row.account_id, &row.digest),
            k,
        )
    });
    conn.prepare_cached(
        "INSERT INTO own_messages (account_id, digest, payload_digest, key_material, conversation, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        row.account_id,
        &row.digest[..],
        &row.payload_digest[..],
        key_material,
        row.conversation,
        row.created_at,
    ])?;
    Ok(conn.last_insert_rowid())
}

/// Row `id`, if it holds the sent element `digest` of the account.
pub fn get(
    conn: &Db,
    id: i64,
    account_id: i64,
    digest: &[u8; 32],
) -> Result<Option<OwnMessageRow>> {
    conn.prepare_cached(
        "SELECT payload_digest, key_material, conversation, created_at FROM own_messages \
         WHERE id = ?1 AND account_id = ?2 AND digest = ?3",
    )?
    .query_and_then(params![id, account_id, &digest[..]], |r| {
        Ok(OwnMessageRow {
            account_id,
            digest: *digest,
            payload_digest: blob32(r, T, "payload_digest")?,
            key_material: r
                .get::<_, Option<Vec<u8>>>("key_material")?
                .map(|sealed| {
                    conn.open(
                        &OWN_MESSAGE_KEY_MATERIAL,
                        &digest_key(account_id, digest),
                        &sealed,
                    )
                })
                .transpose()?,
            conversation: opt_text(r, T, "conversation")?,
            created_at: int(r, T, "created_at")?,
        })
    })?
    .next()
    .transpose()
}

/// (first 8 bytes of the digest, row id) of every kept element, to fill the in-memory index.
pub fn digest_ids(conn: &Connection) -> Result<Vec<(u64, i64)>> {
    conn.prepare("SELECT digest, id FROM own_messages")?
        .query_and_then([], |r| {
            Ok((prefix(&blob32(r, T, "digest")?), int(r, T, "id")?))
        })?
        .collect()
}

/// What [`prune`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Rows deleted.
    pub deleted: usize,
    /// Every row below this id is gone.
    pub below: i64,
}

/// Deletes the rows older than `retention_secs` (all of them when it is 0) and beyond the
/// `max_rows` newest. Ids grow with time, so both cuts are id ranges, found from the oldest row
/// on: a prune costs as many rows as it deletes.
pub fn prune(conn: &Connection, now: i64, retention_secs: i64, max_rows: i64) -> Result<Pruned> {
    let end: i64 = conn
        .prepare_cached("SELECT coalesce(max(id), 0) + 1 FROM own_messages")?
        .query_row([], |r| r.get(0))?;
    let below = if retention_secs <= 0 || max_rows <= 0 {
        end
    } else {
        let cutoff = now.saturating_sub(retention_secs);
        let first_kept: Option<i64> = conn
            .prepare_cached(
                "SELECT id FROM own_messages WHERE created_at >= ?1 ORDER BY id LIMIT 1",
            )?
            .query_row([cutoff], |r| r.get(0))
            .optional()?;
        first_kept.unwrap_or(end).max(end.saturating_sub(max_rows))
    };
    let deleted = conn
        .prepare_cached("DELETE FROM own_messages WHERE id < ?1")?
        .execute([below])?;
    Ok(Pruned { deleted, below })
}

/// Rows kept, of every account.
pub fn count(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("SELECT count(*) FROM own_messages", [], |r| r.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Db {
        super::super::test_sealed_db()
    }

    fn row(i: u8, at: i64) -> OwnMessageRow {
        OwnMessageRow {
            account_id: 1,
            digest: [i; 32],
            payload_digest: [i ^ 0xff; 32],
            key_material: i.is_multiple_of(2).then(|| Zeroizing::new(vec![i; 32])),
            conversation: Some("b@x".into()),
            created_at: at,
        }
    }

    #[test]
    fn insert_and_read_back() {
        let c = db();
        let id = insert(&c, &row(2, 10)).unwrap();
        assert_eq!(get(&c, id, 1, &[2; 32]).unwrap(), Some(row(2, 10)));
        assert_eq!(get(&c, id, 1, &[3; 32]).unwrap(), None, "another digest");
        assert_eq!(get(&c, id, 2, &[2; 32]).unwrap(), None, "another account's");
        assert_eq!(digest_ids(&c).unwrap(), [(prefix(&[2; 32]), id)]);
        let debug = format!("{:?}", row(2, 10));
        assert!(!debug.contains("2, 2, 2"), "{debug}");
    }

    #[test]
    fn prune_by_age_and_by_count() {
        let c = db();
        let ids: Vec<i64> = (0..8u8)
            .map(|i| insert(&c, &row(i, i64::from(i) * 100)).unwrap())
            .collect();
        // now = 800, retention 250: created_at >= 550 stays (rows 6, 7).
        let p = prune(&c, 800, 250, 10).unwrap();
        assert_eq!((p.deleted, p.below), (6, ids[6]));
        assert_eq!(count(&c).unwrap(), 2);
        for i in 10..20u8 {
            insert(&c, &row(i, 800)).unwrap();
        }
        // Everything fresh: the 3 newest stay.
        assert_eq!(prune(&c, 800, 250, 3).unwrap().deleted, 9);
        assert_eq!(digest_ids(&c).unwrap().len(), 3);
        // Retention 0 keeps nothing.
        prune(&c, 800, 0, 3).unwrap();
        assert_eq!(count(&c).unwrap(), 0);
    }
}
