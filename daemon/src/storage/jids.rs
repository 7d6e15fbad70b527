//! JIDs in their normalised form (RFC 7622), and the start-up step that brings rows stored under
//! other spellings (written by versions that did not normalise) to it.
//!
//! The step runs at open, inside one transaction, and only touches the distinct JIDs that are not
//! normalised. Once it has run, `meta.jids_normalised` says so and later opens skip it (a
//! `SELECT DISTINCT` per table over a million rows took seconds): every version that can open
//! a file of this schema normalises what it writes, and an account import, whose rows may come
//! from an older file, clears the mark ([`forget_normalised`]). Two
//! accounts whose JIDs are one JID cannot be merged (two identities, two device ids): the open is
//! refused with [`StorageError::JidCollision`] naming them.
//!
//! Sealed values are bound to their row's JID ([`super::sealing::columns`]), and this step moves
//! rows without re-sealing them. It runs before a plaintext database is sealed, and every version
//! that seals also stores JIDs normalised, so on a sealed database it finds nothing to move; a
//! change of the normalisation itself would have to re-seal the rows it moves.

use std::collections::{BTreeMap, HashMap};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::error::{Result, StorageError};

/// Longest JID accepted (RFC 7622: three parts of at most 1023 bytes, plus separators).
pub const MAX_JID_BYTES: usize = 3071;

/// The normalised form of a bare JID (`local@domain` or `domain`): nodeprep on the local part,
/// IDNA and nameprep on the domain. `None` if `jid` is not a valid bare JID.
pub fn normalise(jid: &str) -> Option<String> {
    // The crate would accept a resource in other entry points; bare only, and no blanks at all.
    if jid.is_empty()
        || jid.len() > MAX_JID_BYTES
        || jid.contains('/')
        || jid.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return None;
    }
    jid::BareJid::new(jid).ok().map(jid::BareJid::into_inner)
}

/// Which of two rows under one key survives a merge: the column that says which one is newer.
fn newest_column(table: &str) -> Option<&'static str> {
    match table {
        "devices" => Some("list_updated_at"),
        "bundles" => Some("fetched_at"),
        "sessions" => Some("updated_at"),
        "trust" => Some("decided_at"),
        _ => None,
    }
}

/// What the normalisation changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NormaliseReport {
    /// Account JIDs rewritten.
    pub accounts: usize,
    /// Rows moved to the normalised spelling.
    pub rows_moved: usize,
    /// Rows dropped because the same key existed under the normalised spelling (older copy).
    pub rows_merged: usize,
    /// Distinct JIDs left alone because they are not valid JIDs.
    pub invalid: usize,
}

fn columns(conn: &Connection, table: &str) -> Result<Vec<(String, i64)>> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info(\"{table}\")"))?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, i64>(5)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// `meta` key: the normaliser version whose pass left every stored JID normalised.
const NORMALISED_KEY: &str = "jids_normalised";
/// Bumped when [`normalise`] changes what it returns, so that stored JIDs are checked again.
const NORMALISER_VERSION: i64 = 1;

/// Rows whose JIDs may be spelled otherwise were written (an import): the next open checks
/// every stored JID again.
pub fn forget_normalised(conn: &Connection) -> Result<()> {
    conn.execute("DELETE FROM meta WHERE key = ?1", [NORMALISED_KEY])?;
    Ok(())
}

/// Brings every stored JID to its normalised form, in one transaction (nothing to do when the
/// file says a pass of this normaliser already did it).
pub fn normalise_stored(conn: &mut Connection) -> Result<NormaliseReport> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let done: Option<i64> = tx
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [NORMALISED_KEY],
            |r| r.get(0),
        )
        .optional()?;
    if done.is_some_and(|v| v >= NORMALISER_VERSION) {
        return Ok(NormaliseReport::default());
    }
    // A session's skipped keys follow it by (account_id, jid, …): moving both within the
    // transaction briefly breaks the reference.
    tx.pragma_update(None, "defer_foreign_keys", "ON")?;
    let mut report = NormaliseReport::default();
    // Accounts first: a collision stops everything.
    normalise_accounts(&tx, &mut report)?;
    let tables: Vec<String> = tx
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
             AND name <> 'accounts' ORDER BY name",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for table in tables {
        normalise_table(&tx, &table, &mut report)?;
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![NORMALISED_KEY, NORMALISER_VERSION],
    )?;
    tx.commit()?;
    Ok(report)
}

/// Rewrites account JIDs; refuses two accounts whose JIDs are one.
fn normalise_accounts(tx: &Connection, report: &mut NormaliseReport) -> Result<()> {
    let accounts: Vec<(i64, String)> = tx
        .prepare("SELECT id, jid FROM accounts ORDER BY id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut by_norm: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, jid) in &accounts {
        let n = normalise(jid).unwrap_or_else(|| jid.clone());
        by_norm.entry(n).or_default().push(jid.clone());
    }
    if let Some((n, spellings)) = by_norm.into_iter().find(|(_, v)| v.len() > 1) {
        return Err(StorageError::JidCollision {
            normalised: n,
            spellings,
        });
    }
    for (id, jid) in &accounts {
        match normalise(jid) {
            Some(n) if n != *jid => {
                tx.execute("UPDATE accounts SET jid = ?1 WHERE id = ?2", params![n, id])?;
                report.accounts += 1;
            }
            Some(_) => {}
            None => report.invalid += 1,
        }
    }
    Ok(())
}

/// Moves the rows of one table with an `(account_id, jid)` to the normalised spellings.
fn normalise_table(tx: &Connection, table: &str, report: &mut NormaliseReport) -> Result<()> {
    let cols = columns(tx, table)?;
    if !cols.iter().any(|(c, _)| c == "jid") || !cols.iter().any(|(c, _)| c == "account_id") {
        return Ok(());
    }
    // skipped_keys move with their session (`merge_keyed`).
    if table == "skipped_keys" {
        return Ok(());
    }
    let key: Vec<&str> = cols
        .iter()
        .filter(|(c, pk)| *pk > 0 && c != "jid")
        .map(|(c, _)| c.as_str())
        .collect();
    let keyed = cols.iter().any(|(c, pk)| c == "jid" && *pk > 0);
    let distinct: Vec<String> = tx
        .prepare(&format!("SELECT DISTINCT jid FROM \"{table}\""))?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut renames: HashMap<String, String> = HashMap::new();
    for jid in distinct {
        match normalise(&jid) {
            Some(n) if n != jid => {
                renames.insert(jid, n);
            }
            Some(_) => {}
            None => report.invalid += 1,
        }
    }
    for (old, new) in renames {
        if keyed {
            merge_keyed(tx, table, &key, &old, &new, report)?;
        } else {
            report.rows_moved += tx.execute(
                &format!("UPDATE \"{table}\" SET jid = ?1 WHERE jid = ?2"),
                params![new, old],
            )?;
        }
    }
    Ok(())
}

/// A row of a keyed table: its rowid, its key (without `jid`) and its [`newest_column`].
type KeyedRow = (i64, Vec<rusqlite::types::Value>, Option<i64>);

/// The rows of `table` stored under `jid`.
fn keyed_rows(conn: &Connection, table: &str, key: &[&str], jid: &str) -> Result<Vec<KeyedRow>> {
    let newest = newest_column(table);
    let select = format!(
        "SELECT rowid, {}{} FROM \"{table}\" WHERE jid = ?1",
        key.join(", "),
        newest.map(|c| format!(", {c}")).unwrap_or_default()
    );
    let rows = conn
        .prepare(&select)?
        .query_map([jid], |r| {
            let k = (0..key.len())
                .map(|i| r.get::<_, rusqlite::types::Value>(i + 1))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let when = match newest {
                Some(_) => r.get::<_, Option<i64>>(key.len() + 1)?,
                None => None,
            };
            Ok((r.get(0)?, k, when))
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// Moves the rows of `table` stored under `old` to `new`, row by row; where `new` already has a
/// row with the same key, the newer of the two survives (a distrust decision always does).
fn merge_keyed(
    conn: &Connection,
    table: &str,
    key: &[&str],
    old: &str,
    new: &str,
    report: &mut NormaliseReport,
) -> Result<()> {
    let newest = newest_column(table);
    let cond: Vec<String> = key
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c} IS ?{}", i + 2))
        .collect();
    let find = format!(
        "SELECT rowid{} FROM \"{table}\" WHERE jid = ?1 AND {}",
        newest.map(|c| format!(", {c}")).unwrap_or_default(),
        cond.join(" AND ")
    );
    for (rowid, k, when) in keyed_rows(conn, table, key, old)? {
        let mut args: Vec<rusqlite::types::Value> = vec![new.to_owned().into()];
        args.extend(k);
        let existing: Option<(i64, Option<i64>)> = conn
            .query_row(&find, rusqlite::params_from_iter(args.iter()), |r| {
                Ok((r.get(0)?, newest.map(|_| r.get(1)).transpose()?.flatten()))
            })
            .optional()?;
        let old_wins = match existing {
            None => true,
            Some(other) => {
                let old_wins = survives(conn, table, (rowid, when), other)?;
                let loser = if old_wins { other.0 } else { rowid };
                // A deleted session's skipped keys go with it (cascades are never deferred).
                conn.execute(
                    &format!("DELETE FROM \"{table}\" WHERE rowid = ?1"),
                    [loser],
                )?;
                report.rows_merged += 1;
                old_wins
            }
        };
        if old_wins {
            if table == "sessions" {
                move_skipped(conn, rowid, old, new)?;
            }
            conn.execute(
                &format!("UPDATE \"{table}\" SET jid = ?1 WHERE rowid = ?2"),
                params![new, rowid],
            )?;
            report.rows_moved += 1;
        }
    }
    Ok(())
}

/// Whether row `a` survives over row `b` (both `(rowid, newest)`) holding the same key: the
/// newer one does, but a distrust decision always wins.
fn survives(
    conn: &Connection,
    table: &str,
    (a, a_when): (i64, Option<i64>),
    (b, b_when): (i64, Option<i64>),
) -> Result<bool> {
    if table != "trust" {
        return Ok(a_when > b_when);
    }
    let distrusted = |id: i64| -> rusqlite::Result<bool> {
        conn.query_row("SELECT level FROM trust WHERE rowid = ?1", [id], |r| {
            r.get::<_, String>(0)
        })
        .map(|level| level == "distrusted")
    };
    Ok(match (distrusted(a)?, distrusted(b)?) {
        (true, false) => true,
        (false, true) => false,
        _ => a_when > b_when,
    })
}

fn move_skipped(conn: &Connection, session_rowid: i64, old: &str, new: &str) -> Result<()> {
    let (account_id, namespace, device_id): (i64, String, i64) = conn.query_row(
        "SELECT account_id, namespace, device_id FROM sessions WHERE rowid = ?1",
        [session_rowid],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    conn.execute(
        "UPDATE skipped_keys SET jid = ?1 \
         WHERE account_id = ?2 AND jid = ?3 AND namespace = ?4 AND device_id = ?5",
        params![new, account_id, old, namespace, device_id],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_and_rejects_non_bare() {
        assert_eq!(
            normalise("Alice@Example.ORG").as_deref(),
            Some("alice@example.org")
        );
        assert_eq!(normalise("example.org.").as_deref(), Some("example.org"));
        assert_eq!(
            normalise("ÄLICE@exämple.org").as_deref(),
            Some("älice@exämple.org")
        );
        for bad in [
            "",
            "@example.org",
            "a@b@c",
            "a@b/c",
            "a b@c",
            "a@",
            "a\u{7}@b",
        ] {
            assert_eq!(normalise(bad), None, "{bad:?}");
        }
        assert_eq!(normalise(&"a".repeat(MAX_JID_BYTES + 1)), None);
    }

    fn db() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        crate::storage::migrations::migrate(&mut conn, crate::storage::migrations::MIGRATIONS)
            .unwrap();
        conn
    }

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn rows_under_other_spellings_are_merged_into_one_peer() {
        let mut conn = db();
        let k = [7u8; 32];
        conn.execute_batch(
            "INSERT INTO accounts (id, jid, device_id, created_at) VALUES (1, 'Alice@Example.ORG', 5, 0);",
        )
        .unwrap();
        let dev = "INSERT INTO devices (account_id, jid, namespace, device_id, active, first_seen, list_updated_at) \
                   VALUES (1, ?1, 'urn:xmpp:omemo:2', 9, ?2, 0, ?3)";
        conn.execute(dev, params!["Bob@Example.net", 0, 10])
            .unwrap();
        conn.execute(dev, params!["bob@example.net", 1, 20])
            .unwrap();
        conn.execute(dev, params!["BOB@EXAMPLE.NET", 1, 5]).unwrap();
        conn.execute(
            "INSERT INTO sessions (account_id, jid, namespace, device_id, state, state_format, identity_key, \
             initiated_by, confirmed, created_at, updated_at) \
             VALUES (1, 'BOB@example.net', 'urn:xmpp:omemo:2', 9, x'01', 1, ?1, 'us', 1, 0, 0)",
            [&k[..]],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO skipped_keys (account_id, jid, namespace, device_id, ratchet_key, n, message_key, created_at) \
             VALUES (1, 'BOB@example.net', 'urn:xmpp:omemo:2', 9, ?1, 3, ?1, 0)",
            [&k[..]],
        )
        .unwrap();
        let trust = "INSERT INTO trust (account_id, jid, identity_key, fingerprint, level, source, decided_at) \
                     VALUES (1, ?1, ?2, 'f', ?3, 'manual', ?4)";
        conn.execute(trust, params!["Bob@Example.net", &k[..], "distrusted", 1])
            .unwrap();
        conn.execute(trust, params!["bob@example.net", &k[..], "trusted", 2])
            .unwrap();

        let report = normalise_stored(&mut conn).unwrap();
        assert_eq!(report.accounts, 1);
        assert_eq!(
            count(
                &conn,
                "SELECT count(*) FROM accounts WHERE jid = 'alice@example.org'"
            ),
            1
        );
        // One device row: the newest list's.
        assert_eq!(count(&conn, "SELECT count(*) FROM devices"), 1);
        assert_eq!(
            count(
                &conn,
                "SELECT list_updated_at FROM devices WHERE jid = 'bob@example.net'"
            ),
            20
        );
        // The session moved with its skipped key.
        assert_eq!(
            count(
                &conn,
                "SELECT count(*) FROM sessions WHERE jid = 'bob@example.net'"
            ),
            1
        );
        assert_eq!(
            count(
                &conn,
                "SELECT count(*) FROM skipped_keys WHERE jid = 'bob@example.net'"
            ),
            1
        );
        // One trust decision, and a distrust wins over a later trust.
        assert_eq!(count(&conn, "SELECT count(*) FROM trust"), 1);
        let level: String = conn
            .query_row(
                "SELECT level FROM trust WHERE jid = 'bob@example.net'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(level, "distrusted");
        assert_eq!(
            count(&conn, "SELECT count(*) FROM pragma_foreign_key_check"),
            0
        );
        // Idempotent.
        assert_eq!(
            normalise_stored(&mut conn).unwrap(),
            NormaliseReport::default()
        );
        // Marked done: a row written under another spelling now stays until an import says
        // rows of unknown spelling came in.
        conn.execute(dev, params!["Carol@Example.net", 1, 30])
            .unwrap();
        assert_eq!(
            normalise_stored(&mut conn).unwrap(),
            NormaliseReport::default()
        );
        forget_normalised(&conn).unwrap();
        assert_eq!(normalise_stored(&mut conn).unwrap().rows_moved, 1);
        assert_eq!(
            count(
                &conn,
                "SELECT count(*) FROM devices WHERE jid = 'carol@example.net'"
            ),
            1
        );
    }

    #[test]
    fn two_accounts_under_one_jid_are_refused_and_nothing_changes() {
        let mut conn = db();
        conn.execute_batch(
            "INSERT INTO accounts (id, jid, device_id, created_at) VALUES (1, 'alice@example.org', 5, 0);
             INSERT INTO accounts (id, jid, device_id, created_at) VALUES (2, 'Alice@example.org', 6, 0);
             INSERT INTO devices (account_id, jid, namespace, device_id, active, first_seen, list_updated_at)
                 VALUES (1, 'Bob@example.net', 'urn:xmpp:omemo:2', 9, 1, 0, 0);",
        )
        .unwrap();
        match normalise_stored(&mut conn) {
            Err(StorageError::JidCollision {
                normalised,
                spellings,
            }) => {
                assert_eq!(normalised, "alice@example.org");
                assert_eq!(spellings.len(), 2);
            }
            other => panic!("expected a collision, got {other:?}"),
        }
        assert_eq!(
            count(
                &conn,
                "SELECT count(*) FROM devices WHERE jid = 'Bob@example.net'"
            ),
            1
        );
    }
}
