//! `redelivery`, `seen_messages`, `encrypt_results`: what lets a message be decrypted again and
//! an `encrypt` be retried (issue 8). All three are bounded by age and by row count
//! ([`prune`]).

use rusqlite::{params, Connection, OptionalExtension};
use zeroize::Zeroizing;

use super::error::{Result, StorageError};

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

/// Stores a decrypted message: always its digest, and its key material when `keep_key` is set.
pub fn record(conn: &Connection, row: &RedeliveryRow, keep_key: bool) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO seen_messages (account_id, digest, created_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT DO NOTHING",
    )?
    .execute(params![row.account_id, &row.digest[..], row.created_at])?;
    if keep_key {
        conn.prepare_cached(
            "INSERT INTO redelivery (account_id, digest, payload_digest, key_material, identity_key, \
             key_exchange, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            row.account_id,
            &row.digest[..],
            &row.payload_digest[..],
            row.key_material.as_ref().map(|k| &k[..]),
            &row.identity_key[..],
            row.key_exchange,
            row.created_at
        ])?;
    }
    Ok(())
}

fn blob32(table: &'static str, column: &'static str, b: &[u8]) -> Result<[u8; 32]> {
    b.try_into().map_err(|_| StorageError::BadData {
        table,
        column,
        reason: format!("expected 32 bytes, found {}", b.len()),
    })
}

/// Looks a digest up.
pub fn lookup(conn: &Connection, account_id: i64, digest: &[u8; 32]) -> Result<Seen> {
    let row = conn
        .prepare_cached(
            "SELECT payload_digest, key_material, identity_key, key_exchange, created_at \
             FROM redelivery WHERE account_id = ?1 AND digest = ?2",
        )?
        .query_row(params![account_id, &digest[..]], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Option<Vec<u8>>>(1)?.map(Zeroizing::new),
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, bool>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })
        .optional()?;
    if let Some((pd, km, ik, kex, at)) = row {
        return Ok(Seen::Redeliverable(Box::new(RedeliveryRow {
            account_id,
            digest: *digest,
            payload_digest: blob32("redelivery", "payload_digest", &pd)?,
            key_material: km,
            identity_key: blob32("redelivery", "identity_key", &ik)?,
            key_exchange: kex,
            created_at: at,
        })));
    }
    let seen: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM seen_messages WHERE account_id = ?1 AND digest = ?2")?
        .query_row(params![account_id, &digest[..]], |r| r.get(0))
        .optional()?;
    Ok(if seen.is_some() {
        Seen::DigestOnly
    } else {
        Seen::No
    })
}

/// The first 8 bytes of every remembered digest (both tables), to fill the in-memory filter.
pub fn digest_prefixes(conn: &Connection) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for sql in [
        "SELECT digest FROM seen_messages",
        "SELECT digest FROM redelivery",
    ] {
        let mut st = conn.prepare(sql)?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let b: Vec<u8> = r.get(0)?;
            out.push(prefix(&blob32("seen_messages", "digest", &b)?));
        }
    }
    Ok(out)
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

/// Stores an `encrypt` answer (keeps an existing one).
pub fn put_encrypt_result(conn: &Connection, row: &EncryptResultRow) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO encrypt_results (account_id, idempotency_key, request_digest, result, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
    )?
    .execute(params![
        row.account_id,
        row.idempotency_key,
        &row.request_digest[..],
        row.result,
        row.created_at
    ])?;
    Ok(())
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
    /// At most this many key-material rows, and as many encrypt answers.
    pub max_rows: i64,
    /// Keep digests this many seconds.
    pub digest_retention_secs: i64,
    /// At most this many digests.
    pub max_digests: i64,
}

/// What [`prune`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Key-material rows.
    pub redelivery: usize,
    /// Digests.
    pub digests: usize,
    /// Encrypt answers.
    pub encrypt_results: usize,
}

impl Pruned {
    /// Whether anything was deleted.
    pub fn any(&self) -> bool {
        self.redelivery + self.digests + self.encrypt_results > 0
    }
}

fn prune_table(conn: &Connection, table: &str, cutoff: i64, cap: i64) -> Result<usize> {
    let by_age = conn
        .prepare_cached(&format!("DELETE FROM {table} WHERE created_at < ?1"))?
        .execute([cutoff])?;
    // Ids only grow (AUTOINCREMENT), so the newest `cap` rows are those above max - cap.
    let by_count = conn
        .prepare_cached(&format!(
            "DELETE FROM {table} WHERE id <= (SELECT max(id) FROM {table}) - ?1"
        ))?
        .execute([cap.max(0)])?;
    Ok(by_age + by_count)
}

/// Deletes what is older than the bounds allow, or beyond the row caps.
pub fn prune(conn: &Connection, now: i64, b: Bounds) -> Result<Pruned> {
    let cutoff = now.saturating_sub(b.retention_secs.max(0));
    let cap = if b.retention_secs <= 0 { 0 } else { b.max_rows };
    Ok(Pruned {
        redelivery: prune_table(conn, "redelivery", cutoff, cap)?,
        encrypt_results: prune_table(conn, "encrypt_results", cutoff, cap)?,
        digests: prune_table(
            conn,
            "seen_messages",
            now.saturating_sub(b.digest_retention_secs.max(0)),
            b.max_digests,
        )?,
    })
}

/// Row counts: (key-material rows, digests, encrypt answers).
pub fn counts(conn: &Connection) -> Result<(i64, i64, i64)> {
    let c = |t: &str| -> Result<i64> {
        Ok(conn.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))?)
    };
    Ok((c("redelivery")?, c("seen_messages")?, c("encrypt_results")?))
}

impl super::Store {
    /// Checkpoints with `TRUNCATE` on a connection of its own, so that deleted key material
    /// does not linger in the WAL file. Blocks (waits for readers up to the busy timeout).
    pub fn truncate_wal(&self) -> Result<super::CheckpointResult> {
        let conn = super::open_connection(
            self.path(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            self.config(),
        )?;
        super::checkpoint::checkpoint(&conn, super::CheckpointMode::Truncate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::migrations::migrate(&mut c, super::super::migrations::MIGRATIONS).unwrap();
        c.execute(
            "INSERT INTO accounts (id, jid, device_id, created_at) VALUES (1, 'a@x', 7, 0)",
            [],
        )
        .unwrap();
        c
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
        }
    }

    const B: Bounds = Bounds {
        retention_secs: 100,
        max_rows: 3,
        digest_retention_secs: 1000,
        max_digests: 5,
    };

    #[test]
    fn record_lookup_and_digest_only() {
        let c = db();
        record(&c, &row(1, 10), true).unwrap();
        record(&c, &row(2, 10), false).unwrap();
        match lookup(&c, 1, &[1; 32]).unwrap() {
            Seen::Redeliverable(r) => assert_eq!(*r, row(1, 10)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(lookup(&c, 1, &[2; 32]).unwrap(), Seen::DigestOnly));
        assert!(matches!(lookup(&c, 1, &[3; 32]).unwrap(), Seen::No));
        assert!(matches!(lookup(&c, 2, &[1; 32]).unwrap(), Seen::No));
        // A second record of the same digest keeps the first.
        let mut again = row(1, 99);
        again.payload_digest = [0; 32];
        record(&c, &again, true).unwrap();
        match lookup(&c, 1, &[1; 32]).unwrap() {
            Seen::Redeliverable(r) => assert_eq!(r.created_at, 10),
            other => panic!("{other:?}"),
        }
        let mut p = digest_prefixes(&c).unwrap();
        p.sort_unstable();
        p.dedup();
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn prune_by_age_and_by_count() {
        let c = db();
        for i in 0..8u8 {
            record(&c, &row(i, i64::from(i) * 100), true).unwrap();
        }
        // now = 800: retention 100 keeps created_at >= 700 (one row); digests: the 5 newest.
        let p = prune(&c, 800, B).unwrap();
        assert_eq!(counts(&c).unwrap(), (1, 5, 0));
        assert_eq!(p.redelivery, 7);
        assert_eq!(p.digests, 3);
        assert!(matches!(
            lookup(&c, 1, &[7; 32]).unwrap(),
            Seen::Redeliverable(_)
        ));
        assert!(matches!(lookup(&c, 1, &[6; 32]).unwrap(), Seen::DigestOnly));
        assert!(matches!(lookup(&c, 1, &[2; 32]).unwrap(), Seen::No));
        // Count cap with everything fresh.
        for i in 10..20u8 {
            record(&c, &row(i, 800), true).unwrap();
        }
        prune(&c, 800, B).unwrap();
        assert_eq!(counts(&c).unwrap(), (3, 5, 0));
        assert!(matches!(
            lookup(&c, 1, &[19; 32]).unwrap(),
            Seen::Redeliverable(_)
        ));
        // Retention 0 keeps no key material at all.
        let off = Bounds {
            retention_secs: 0,
            ..B
        };
        prune(&c, 800, off).unwrap();
        assert_eq!(counts(&c).unwrap().0, 0);
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
        put_encrypt_result(&c, &r).unwrap();
        put_encrypt_result(
            &c,
            &EncryptResultRow {
                result: "other".into(),
                ..r.clone()
            },
        )
        .unwrap();
        assert_eq!(get_encrypt_result(&c, 1, "k1").unwrap(), Some(r));
        assert_eq!(get_encrypt_result(&c, 1, "k2").unwrap(), None);
    }
}
