//! `redelivery`, `encrypt_results`: what lets a message be decrypted again and an `encrypt` be
//! retried (issue 8). Both are bounded by age and by row count ([`prune`]).

use rusqlite::{params, Connection, OptionalExtension};
use zeroize::Zeroizing;

use super::error::{Result, StorageError};
use super::sealing::columns::REDELIVERY_KEY_MATERIAL;
use super::types::digest_key;
use super::Db;

/// A decrypted message, as remembered for redelivery.
#[derive(Clone, PartialEq, Eq)]
pub struct RedeliveryRow {
    /// Our account.
    pub account_id: i64,
    /// Digest of (namespace, sender, sender device, our key element).
    pub digest: [u8; 32],
    /// Digest of (iv, payload).
    pub payload_digest: [u8; 32],
    /// The key material the ratchet gave for our key element; `None` for an empty message.
    pub key_material: Option<Zeroizing<Vec<u8>>>,
    /// The sender's Curve25519 identity key.
    pub identity_key: [u8; 32],
    /// Whether it was a key exchange.
    pub key_exchange: bool,
    /// Unix seconds of the first decryption.
    pub created_at: i64,
    /// The conversation of the first decryption (`None`: a row from before it was kept).
    pub conversation: Option<ConversationTag>,
}

/// The conversation a message was decrypted in, as a redelivered copy is checked against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationTag {
    /// SHA-256 of the stanza's bare `to`; `None`: the client did not say.
    pub to: Option<[u8; 32]>,
    /// Whether it was a group chat message.
    pub group_chat: bool,
}

impl ConversationTag {
    /// Whether a copy arriving in `other` may be the same conversation: `group_chat` must be
    /// equal, `to` only when both are known.
    pub fn admits(&self, other: &ConversationTag) -> bool {
        self.group_chat == other.group_chat
            && match (self.to, other.to) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl std::fmt::Debug for RedeliveryRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedeliveryRow")
            .field("account_id", &self.account_id)
            .field("digest", &hex::encode(self.digest))
            .field("key_material", &self.key_material.as_ref().map(|k| k.len()))
            .field("key_exchange", &self.key_exchange)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// What is known about a digest.
#[derive(Debug)]
pub enum Seen {
    /// Never decrypted (or forgotten).
    No,
    /// Decrypted once; only its digest is left.
    DigestOnly,
    /// Decrypted recently; it can be opened again.
    Redeliverable(Box<RedeliveryRow>),
}

/// Stores a decrypted message: always its digest, and what reopens it when `keep_key` is set.
/// Returns the row id (the caller must not record the same digest twice).
pub fn record(conn: &Db, row: &RedeliveryRow, keep_key: bool) -> Result<i64> {
    fn keep(keep_key: bool, v: Option<&[u8]>) -> Option<&[u8]> {
        v.filter(|_| keep_key)
    }
    let conversation = row.conversation.filter(|_| keep_key);
    let key_material = row.key_material.as_ref().filter(|_| keep_key).map(|k| {
        conn.seal(
            &REDELIVERY_KEY_MATERIAL,
            &digest_key(row.account_id, &row.digest),
            k,
        )
    });
    conn.prepare_cached(
        "INSERT INTO redelivery (account_id, digest, created_at, payload_digest, key_material, \
         identity_key, key_exchange, conversation, group_chat) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        row.account_id,
        &row.digest[..],
        row.created_at,
        keep(keep_key, Some(&row.payload_digest[..])),
        key_material,
        keep(keep_key, Some(&row.identity_key[..])),
        keep_key.then_some(row.key_exchange),
        conversation.and_then(|c| c.to).as_ref().map(|t| &t[..]),
        conversation.map(|c| c.group_chat),
    ])?;
    Ok(conn.last_insert_rowid())
}

/// What a decryption's commit writes so that the element can be redelivered: its row, and
/// now and then a prune (every few hundred records, besides the hourly one).
#[derive(Debug)]
pub struct Record {
    /// The row.
    pub row: RedeliveryRow,
    /// Whether key material is kept (redelivery on), else only the digest.
    pub keep_key: bool,
    /// Bounds and key frontier of a prune to run in the same transaction.
    pub prune: Option<(Bounds, i64)>,
}

impl Record {
    /// Writes the row (and runs the prune); returns the row id and what the prune did.
    pub fn write(&self, conn: &Db) -> Result<(i64, Option<Pruned>)> {
        let id = record(conn, &self.row, self.keep_key)?;
        let pruned = self
            .prune
            .map(|(b, from)| prune(conn, self.row.created_at, b, from))
            .transpose()?;
        Ok((id, pruned))
    }
}

fn blob32(table: &'static str, column: &'static str, b: &[u8]) -> Result<[u8; 32]> {
    b.try_into().map_err(|_| StorageError::BadData {
        table,
        column,
        reason: format!("expected 32 bytes, found {}", b.len()),
    })
}

/// Looks a digest up in row `id` (found through the in-memory filter).
pub fn lookup(conn: &Db, id: i64, account_id: i64, digest: &[u8; 32]) -> Result<Seen> {
    type Cols = (
        (Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>),
        (Option<bool>, i64, Option<Vec<u8>>, Option<bool>),
    );
    let row: Option<Cols> = conn
        .prepare_cached(
            "SELECT payload_digest, key_material, identity_key, key_exchange, created_at, \
             conversation, group_chat \
             FROM redelivery WHERE id = ?1 AND account_id = ?2 AND digest = ?3",
        )?
        .query_row(params![id, account_id, &digest[..]], |r| {
            Ok((
                (r.get(0)?, r.get(1)?, r.get(2)?),
                (r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?),
            ))
        })
        .optional()?;
    Ok(match row {
        None => Seen::No,
        Some(((Some(pd), km, Some(ik)), (Some(kex), at, to, group_chat))) => {
            let to = to
                .map(|t| blob32("redelivery", "conversation", &t))
                .transpose()?;
            Seen::Redeliverable(Box::new(RedeliveryRow {
                account_id,
                digest: *digest,
                payload_digest: blob32("redelivery", "payload_digest", &pd)?,
                key_material: km
                    .map(|sealed| {
                        conn.open(
                            &REDELIVERY_KEY_MATERIAL,
                            &digest_key(account_id, digest),
                            &sealed,
                        )
                    })
                    .transpose()?,
                identity_key: blob32("redelivery", "identity_key", &ik)?,
                key_exchange: kex,
                created_at: at,
                conversation: group_chat.map(|group_chat| ConversationTag { to, group_chat }),
            }))
        }
        Some(_) => Seen::DigestOnly,
    })
}

/// (first 8 bytes of the digest, row id) of every remembered message, to fill the in-memory
/// filter.
pub fn digest_prefixes(conn: &Connection) -> Result<Vec<(u64, i64)>> {
    conn.prepare("SELECT digest, id FROM redelivery")?
        .query_and_then([], |r| {
            let b: Vec<u8> = r.get(0)?;
            Ok((prefix(&blob32("redelivery", "digest", &b)?), r.get(1)?))
        })?
        .collect()
}

/// The filter key of a digest.
pub fn prefix(digest: &[u8; 32]) -> u64 {
    let mut p = [0u8; 8];
    p.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(p)
}

/// A stored `encrypt` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptResultRow {
    /// Our account.
    pub account_id: i64,
    /// The client's key.
    pub idempotency_key: String,
    /// Digest of the request it answered.
    pub request_digest: [u8; 32],
    /// The answer, as JSON.
    pub result: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// Stores an `encrypt` answer in place of any kept for the same key (a retry that had to
/// encrypt again), then drops the oldest answers until all of them together are at most
/// `max_bytes`. An answer larger than that on its own is not kept: returns false.
pub fn put_encrypt_result(
    conn: &Connection,
    row: &EncryptResultRow,
    max_bytes: i64,
) -> Result<bool> {
    conn.prepare_cached(
        "DELETE FROM encrypt_results WHERE account_id = ?1 AND idempotency_key = ?2",
    )?
    .execute(params![row.account_id, row.idempotency_key])?;
    let bytes = i64::try_from(row.result.len()).unwrap_or(i64::MAX);
    if bytes > max_bytes {
        return Ok(false);
    }
    conn.prepare_cached(
        "INSERT INTO encrypt_results (account_id, idempotency_key, request_digest, result, created_at, bytes) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        row.account_id,
        row.idempotency_key,
        &row.request_digest[..],
        row.result,
        row.created_at,
        bytes
    ])?;
    trim_encrypt_results(conn, max_bytes)?;
    Ok(true)
}

/// Deletes the oldest `encrypt` answers until the rest hold at most `max_bytes` together.
/// Returns how many went. (The sum is read off the index on `bytes`, not the answers.)
fn trim_encrypt_results(conn: &Connection, max_bytes: i64) -> Result<usize> {
    let total: i64 = conn
        .prepare_cached("SELECT coalesce(sum(bytes), 0) FROM encrypt_results")?
        .query_row([], |r| r.get(0))?;
    if total <= max_bytes {
        return Ok(0);
    }
    Ok(conn
        .prepare_cached(
            "DELETE FROM encrypt_results WHERE id <= ( \
               SELECT id FROM (SELECT id, sum(bytes) OVER (ORDER BY id DESC) AS newer \
                               FROM encrypt_results) \
               WHERE newer > ?1 ORDER BY id DESC LIMIT 1)",
        )?
        .execute([max_bytes])?)
}

/// The stored answer for an idempotency key.
pub fn get_encrypt_result(
    conn: &Connection,
    account_id: i64,
    key: &str,
) -> Result<Option<EncryptResultRow>> {
    let row = conn
        .prepare_cached(
            "SELECT request_digest, result, created_at FROM encrypt_results \
             WHERE account_id = ?1 AND idempotency_key = ?2",
        )?
        .query_row(params![account_id, key], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .optional()?;
    row.map(|(d, result, created_at)| {
        Ok(EncryptResultRow {
            account_id,
            idempotency_key: key.to_owned(),
            request_digest: blob32("encrypt_results", "request_digest", &d)?,
            result,
            created_at,
        })
    })
    .transpose()
}

/// Limits of [`prune`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Keep key material and encrypt answers this many seconds (0: none at all).
    pub retention_secs: i64,
    /// At most this many messages with key material, and as many encrypt answers.
    pub max_rows: i64,
    /// Keep digests this many seconds.
    pub digest_retention_secs: i64,
    /// At most this many digests.
    pub max_digests: i64,
    /// Encrypt answers hold at most this many bytes together.
    pub max_result_bytes: i64,
}

/// What [`prune`] deleted or erased.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Messages whose key material was erased (their digest stays).
    pub redelivery: usize,
    /// Digests deleted.
    pub digests: usize,
    /// Encrypt answers deleted.
    pub encrypt_results: usize,
    /// Rows below this id hold no key material any more: where the next prune starts.
    pub key_frontier: i64,
}

impl Pruned {
    /// Whether anything was deleted.
    pub fn any(&self) -> bool {
        self.redelivery + self.digests + self.encrypt_results > 0
    }

    /// Whether key material (or a kept answer) was erased: the WAL still holds it.
    pub fn erased(&self) -> bool {
        self.redelivery + self.encrypt_results > 0
    }
}

/// The first `redelivery` id at or after `from` created at `cutoff` or later (or one past the
/// last). Walks from `from` in id order, so it costs as many rows as lie before the answer: the
/// rows about to be pruned. (Ids grow with time; a clock set back only makes a prune early or
/// late by the jump.)
fn first_since(conn: &Connection, from: i64, cutoff: i64) -> Result<i64> {
    let id: Option<i64> = conn
        .prepare_cached(
            "SELECT id FROM redelivery WHERE id >= ?1 AND created_at >= ?2 ORDER BY id LIMIT 1",
        )?
        .query_row([from, cutoff], |r| r.get(0))
        .optional()?;
    match id {
        Some(id) => Ok(id),
        None => Ok(conn
            .prepare_cached("SELECT coalesce(max(id), 0) + 1 FROM redelivery")?
            .query_row([], |r| r.get(0))?),
    }
}

/// Erases key material older than the window or beyond the cap, deletes digests older than
/// theirs or beyond their cap, and old encrypt answers. `key_frontier` is the previous
/// [`Pruned::key_frontier`] (0 when unknown: the first prune walks every row once).
pub fn prune(conn: &Connection, now: i64, b: Bounds, key_frontier: i64) -> Result<Pruned> {
    let mut cuts = prune_cuts(conn, now, b, key_frontier)?;
    let mut pruned = prune_step(conn, &mut cuts, i64::MAX)?;
    pruned.encrypt_results = prune_encrypt_results(conn, now, b)?;
    Ok(pruned)
}

/// Where a prune ends: digests below `digests` go, key material below `keys` is erased, from
/// `key_from` on (advanced by each [`prune_step`]).
#[derive(Debug, Clone, Copy)]
pub struct PruneCuts {
    digests: i64,
    keys: i64,
    key_from: i64,
}

/// The cuts of a prune at `now` (reads only). Rows added later lie above them, so a prune
/// done in steps ends where it would have in one.
pub fn prune_cuts(conn: &Connection, now: i64, b: Bounds, key_frontier: i64) -> Result<PruneCuts> {
    let end: i64 = conn
        .prepare_cached("SELECT coalesce(max(id), 0) + 1 FROM redelivery")?
        .query_row([], |r| r.get(0))?;
    let cap_from = |cap: i64| end.saturating_sub(cap.max(0));
    let digests = first_since(conn, 0, now.saturating_sub(b.digest_retention_secs.max(0)))?
        .max(cap_from(b.max_digests));
    let keep_secs = b.retention_secs.max(0);
    let keys = if keep_secs == 0 {
        end
    } else {
        first_since(conn, key_frontier, now.saturating_sub(keep_secs))?.max(cap_from(b.max_rows))
    };
    Ok(PruneCuts {
        digests,
        keys,
        key_from: key_frontier.min(keys),
    })
}

/// Deletes at most `batch` ids' worth of digests towards `cuts`, or (once they are gone)
/// erases the key material of at most `batch` ids. [`Pruned::key_frontier`] is where the
/// next prune starts.
pub fn prune_step(conn: &Connection, cuts: &mut PruneCuts, batch: i64) -> Result<Pruned> {
    let lowest: i64 = conn
        .prepare_cached("SELECT coalesce(min(id), 0) FROM redelivery")?
        .query_row([], |r| r.get(0))?;
    let digests_to = cuts.digests.min(lowest.saturating_add(batch));
    let digests = conn
        .prepare_cached("DELETE FROM redelivery WHERE id < ?1")?
        .execute([digests_to])?;
    // Key material once the digests are gone: rows below the cut keep only their digest.
    let mut erased = 0;
    if digests_to >= cuts.digests {
        let from = cuts.key_from.max(cuts.digests.min(cuts.keys));
        let to = cuts.keys.min(from.saturating_add(batch));
        erased = conn
            .prepare_cached(
                "UPDATE redelivery SET payload_digest = NULL, key_material = NULL, identity_key = NULL, \
                 key_exchange = NULL, conversation = NULL, group_chat = NULL \
                 WHERE id >= ?1 AND id < ?2 AND payload_digest IS NOT NULL",
            )?
            .execute([from, to])?;
        cuts.key_from = cuts.key_from.max(to);
    }
    Ok(Pruned {
        redelivery: erased,
        digests,
        encrypt_results: 0,
        key_frontier: cuts.keys,
    })
}

impl PruneCuts {
    /// Whether every step is done (after one more, the digests' delete finds nothing).
    pub fn done(&self, conn: &Connection) -> Result<bool> {
        let lowest: Option<i64> = conn
            .prepare_cached("SELECT min(id) FROM redelivery")?
            .query_row([], |r| r.get(0))?;
        Ok(self.key_from >= self.keys && lowest.is_none_or(|l| l >= self.digests))
    }
}

/// Deletes encrypt answers older than the window, beyond the cap or the byte budget.
pub fn prune_encrypt_results(conn: &Connection, now: i64, b: Bounds) -> Result<usize> {
    // Rare; an index on created_at serves them.
    let keep_secs = b.retention_secs.max(0);
    let cutoff = now.saturating_sub(keep_secs);
    let cap = if keep_secs == 0 { 0 } else { b.max_rows.max(0) };
    let mut encrypt_results = conn
        .prepare_cached("DELETE FROM encrypt_results WHERE created_at < ?1")?
        .execute([cutoff])?;
    encrypt_results += conn
        .prepare_cached(
            "DELETE FROM encrypt_results WHERE id <= (SELECT max(id) FROM encrypt_results) - ?1",
        )?
        .execute([cap])?;
    encrypt_results += trim_encrypt_results(conn, b.max_result_bytes)?;
    Ok(encrypt_results)
}

/// Row counts: (messages with key material, digests, encrypt answers).
pub fn counts(conn: &Connection) -> Result<(i64, i64, i64)> {
    let c = |sql: &str| -> Result<i64> { Ok(conn.query_row(sql, [], |r| r.get(0))?) };
    Ok((
        c("SELECT count(*) FROM redelivery WHERE payload_digest IS NOT NULL")?,
        c("SELECT count(*) FROM redelivery")?,
        c("SELECT count(*) FROM encrypt_results")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Db {
        super::super::test_sealed_db()
    }

    fn row(i: u8, at: i64) -> RedeliveryRow {
        RedeliveryRow {
            account_id: 1,
            digest: [i; 32],
            payload_digest: [i ^ 0xff; 32],
            key_material: Some(Zeroizing::new(vec![i; 48])),
            identity_key: [9; 32],
            key_exchange: i.is_multiple_of(2),
            created_at: at,
            conversation: Some(ConversationTag {
                to: (!i.is_multiple_of(3)).then_some([i; 32]),
                group_chat: i % 3 == 1,
            }),
        }
    }

    const B: Bounds = Bounds {
        retention_secs: 100,
        max_rows: 3,
        digest_retention_secs: 1000,
        max_digests: 5,
        max_result_bytes: 1000,
    };

    #[test]
    fn record_lookup_and_digest_only() {
        let c = db();
        let id1 = record(&c, &row(1, 10), true).unwrap();
        let id2 = record(&c, &row(2, 10), false).unwrap();
        match lookup(&c, id1, 1, &[1; 32]).unwrap() {
            Seen::Redeliverable(r) => assert_eq!(*r, row(1, 10)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            lookup(&c, id2, 1, &[2; 32]).unwrap(),
            Seen::DigestOnly
        ));
        // The row must hold that very digest, of that account.
        assert!(matches!(lookup(&c, id1, 1, &[2; 32]).unwrap(), Seen::No));
        assert!(matches!(lookup(&c, id1, 2, &[1; 32]).unwrap(), Seen::No));
        assert!(matches!(lookup(&c, 99, 1, &[1; 32]).unwrap(), Seen::No));
        let mut p = digest_prefixes(&c).unwrap();
        p.sort_unstable();
        assert_eq!(p, [(prefix(&[1; 32]), id1), (prefix(&[2; 32]), id2)]);
    }

    #[test]
    fn a_prune_in_steps_ends_where_one_prune_does() {
        let (one, steps) = (db(), db());
        for c in [&one, &steps] {
            for i in 0..30u8 {
                record(c, &row(i, i64::from(i) * 30), true).unwrap();
            }
        }
        // Key material: the 6 rows of the last 100 s, capped to 4; digests: capped to 20.
        let b = Bounds {
            max_rows: 4,
            max_digests: 20,
            ..B
        };
        let whole = prune(&one, 800, b, 0).unwrap();
        let mut cuts = prune_cuts(&steps, 800, b, 0).unwrap();
        let mut sum = Pruned::default();
        let mut n = 0;
        while !cuts.done(&steps).unwrap() {
            let p = prune_step(&steps, &mut cuts, 2).unwrap();
            assert!(p.digests <= 2 && p.redelivery <= 2);
            sum.digests += p.digests;
            sum.redelivery += p.redelivery;
            sum.key_frontier = p.key_frontier;
            n += 1;
        }
        assert!(n > 5, "{n} steps");
        assert_eq!(
            (sum.digests, sum.redelivery),
            (whole.digests, whole.redelivery)
        );
        assert_eq!(sum.key_frontier, whole.key_frontier);
        assert_eq!(counts(&steps).unwrap(), counts(&one).unwrap());
        assert_eq!(counts(&one).unwrap(), (4, 20, 0));
    }

    #[test]
    fn prune_by_age_and_by_count() {
        let c = db();
        let mut ids = std::collections::HashMap::new();
        for i in 0..8u8 {
            ids.insert(i, record(&c, &row(i, i64::from(i) * 100), true).unwrap());
        }
        // now = 800: retention 100 keeps created_at >= 700 (one row); digests: the 5 newest.
        let p = prune(&c, 800, B, 0).unwrap();
        assert_eq!(counts(&c).unwrap(), (1, 5, 0));
        assert_eq!(p.redelivery, 4); // of the 5 digests left, 4 lose their key material
        assert_eq!(p.digests, 3);
        assert_eq!(p.key_frontier, 8);
        assert!(matches!(
            lookup(&c, ids[&7], 1, &[7; 32]).unwrap(),
            Seen::Redeliverable(_)
        ));
        assert!(matches!(
            lookup(&c, ids[&6], 1, &[6; 32]).unwrap(),
            Seen::DigestOnly
        ));
        assert!(matches!(
            lookup(&c, ids[&2], 1, &[2; 32]).unwrap(),
            Seen::No
        ));
        // Count cap with everything fresh.
        for i in 10..20u8 {
            ids.insert(i, record(&c, &row(i, 800), true).unwrap());
        }
        let p = prune(&c, 800, B, p.key_frontier).unwrap();
        assert_eq!(counts(&c).unwrap(), (3, 5, 0));
        assert!(matches!(
            lookup(&c, ids[&19], 1, &[19; 32]).unwrap(),
            Seen::Redeliverable(_)
        ));
        assert!(matches!(
            lookup(&c, ids[&16], 1, &[16; 32]).unwrap(),
            Seen::DigestOnly
        ));
        // Nothing new: nothing to do.
        assert_eq!(prune(&c, 800, B, p.key_frontier).unwrap().redelivery, 0);
        // Retention 0 keeps no key material at all.
        let off = Bounds {
            retention_secs: 0,
            ..B
        };
        prune(&c, 800, off, 0).unwrap();
        assert_eq!(counts(&c).unwrap(), (0, 5, 0));
    }

    #[test]
    fn encrypt_results_roundtrip() {
        let c = db();
        let r = EncryptResultRow {
            account_id: 1,
            idempotency_key: "k1".into(),
            request_digest: [4; 32],
            result: "{}".into(),
            created_at: 5,
        };
        assert!(put_encrypt_result(&c, &r, 1000).unwrap());
        assert_eq!(get_encrypt_result(&c, 1, "k1").unwrap(), Some(r.clone()));
        assert_eq!(get_encrypt_result(&c, 1, "k2").unwrap(), None);
        // A retry that encrypted again replaces the answer.
        let again = EncryptResultRow {
            result: "other".into(),
            ..r.clone()
        };
        assert!(put_encrypt_result(&c, &again, 1000).unwrap());
        assert_eq!(get_encrypt_result(&c, 1, "k1").unwrap(), Some(again));
    }

    #[test]
    fn encrypt_results_are_bounded_in_bytes() {
        let c = db();
        let row = |i: u8, len: usize| EncryptResultRow {
            account_id: 1,
            idempotency_key: format!("k{i}"),
            request_digest: [i; 32],
            result: "x".repeat(len),
            created_at: 5,
        };
        let total = |c: &Connection| -> i64 {
            c.query_row("SELECT sum(length(result)) FROM encrypt_results", [], |r| {
                r.get(0)
            })
            .unwrap()
        };
        for i in 0..10 {
            assert!(put_encrypt_result(&c, &row(i, 300), 1000).unwrap());
            assert!(total(&c) <= 1000);
        }
        // The newest three remain.
        for i in 0..7 {
            assert_eq!(get_encrypt_result(&c, 1, &format!("k{i}")).unwrap(), None);
        }
        for i in 7..10 {
            assert!(get_encrypt_result(&c, 1, &format!("k{i}"))
                .unwrap()
                .is_some());
        }
        // Larger than the cap on its own: not kept, the others stay.
        assert!(!put_encrypt_result(&c, &row(20, 1001), 1000).unwrap());
        assert_eq!(get_encrypt_result(&c, 1, "k20").unwrap(), None);
        assert_eq!(total(&c), 900);
        // The prune keeps to a smaller cap too.
        let p = prune(
            &c,
            5,
            Bounds {
                max_result_bytes: 300,
                ..B
            },
            0,
        )
        .unwrap();
        assert_eq!(p.encrypt_results, 2);
        assert_eq!(total(&c), 300);
    }
}
