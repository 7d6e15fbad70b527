//! Numbered schema migrations, embedded in the binary and tracked by `PRAGMA user_version`.
//!
//! Migration `n` brings a database from version `n - 1` to `n`. Each runs in its own
//! `BEGIN IMMEDIATE` transaction together with the `user_version` bump, so a crash leaves the
//! file at the previous version, never half-way. Files live in the top-level `migrations/`
//! directory; add a new one by appending to [`MIGRATIONS`]. Migrations must not depend on
//! `PRAGMA foreign_keys` being off (it cannot be changed inside a transaction).

use rusqlite::{Connection, TransactionBehavior};

use super::error::{Result, StorageError};

/// One migration: its version number and SQL.
pub type Migration = (u32, &'static str);

/// Every migration this binary knows, in order.
pub const MIGRATIONS: &[Migration] = &[
    (1, include_str!("../../../migrations/0001_init.sql")),
    (2, include_str!("../../../migrations/0002_trust.sql")),
    (3, include_str!("../../../migrations/0003_generation.sql")),
    (4, include_str!("../../../migrations/0004_redelivery.sql")),
    (5, include_str!("../../../migrations/0005_labels.sql")),
    (6, include_str!("../../../migrations/0006_integrity.sql")),
    (7, include_str!("../../../migrations/0007_restore.sql")),
    (8, include_str!("../../../migrations/0008_own_messages.sql")),
    (9, include_str!("../../../migrations/0009_sealing.sql")),
];

/// The schema version this binary writes.
pub fn supported_version() -> u32 {
    latest(MIGRATIONS)
}

fn latest(list: &[Migration]) -> u32 {
    list.last().map_or(0, |m| m.0)
}

/// Reads `PRAGMA user_version`.
pub fn current_version(conn: &Connection) -> Result<u32> {
    let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    u32::try_from(v).map_err(|_| StorageError::BadData {
        table: "PRAGMA",
        column: "user_version",
        reason: format!("{v} is negative"),
    })
}

fn check_list(list: &[Migration]) -> Result<()> {
    for (i, (version, _)) in list.iter().enumerate() {
        let expected = u32::try_from(i + 1).unwrap_or(u32::MAX);
        if *version != expected {
            return Err(StorageError::InvalidMigrationList(format!(
                "entry {i} has version {version}, expected {expected}"
            )));
        }
    }
    Ok(())
}

/// Applies every migration of `list` newer than the file's `user_version`, in order, one
/// transaction each. Returns the version the file is at afterwards.
///
/// A file at a version above the list's last is refused with [`StorageError::SchemaTooNew`].
pub fn migrate(conn: &mut Connection, list: &[Migration]) -> Result<u32> {
    check_list(list)?;
    let supported = latest(list);
    loop {
        // Read the version inside the write transaction so two processes opening the same
        // file at once cannot both apply the same migration.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found = current_version(&tx)?;
        if found > supported {
            return Err(StorageError::SchemaTooNew { found, supported });
        }
        if found == supported {
            tx.commit()?;
            return Ok(found);
        }
        let Some((version, sql)) = list.iter().find(|m| m.0 == found + 1) else {
            return Err(StorageError::InvalidMigrationList(format!(
                "no migration {}",
                found + 1
            )));
        };
        tx.execute_batch(sql)
            .and_then(|()| tx.pragma_update(None, "user_version", version))
            .map_err(|source| StorageError::Migration {
                version: *version,
                source,
            })?;
        tx.commit().map_err(|source| StorageError::Migration {
            version: *version,
            source,
        })?;
        tracing::info!(version, "applied database migration");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXTRA: &[Migration] = &[
        (1, "CREATE TABLE a (x INTEGER);"),
        (
            2,
            "ALTER TABLE a ADD COLUMN y TEXT; INSERT INTO a VALUES (1, 'one');",
        ),
    ];

    #[test]
    fn applies_in_order_and_is_idempotent() {
        let mut c = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut c, &EXTRA[..1]).unwrap(), 1);
        assert_eq!(migrate(&mut c, EXTRA).unwrap(), 2);
        assert_eq!(migrate(&mut c, EXTRA).unwrap(), 2);
        let n: i64 = c
            .query_row("SELECT count(*) FROM a", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn failing_migration_leaves_previous_version() {
        let mut c = Connection::open_in_memory().unwrap();
        let bad: &[Migration] = &[
            (1, "CREATE TABLE a (x);"),
            (2, "CREATE TABLE b (x); SELECT * FROM nope;"),
        ];
        let err = migrate(&mut c, bad).unwrap_err();
        assert!(
            matches!(err, StorageError::Migration { version: 2, .. }),
            "{err}"
        );
        assert_eq!(current_version(&c).unwrap(), 1);
        let b: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'b'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(b, 0, "half-applied migration must be rolled back");
    }

    #[test]
    fn refuses_newer_and_bad_lists() {
        let mut c = Connection::open_in_memory().unwrap();
        c.pragma_update(None, "user_version", 7).unwrap();
        let err = migrate(&mut c, EXTRA).unwrap_err();
        assert!(matches!(
            err,
            StorageError::SchemaTooNew {
                found: 7,
                supported: 2
            }
        ));
        let gap: &[Migration] = &[(1, ""), (3, "")];
        assert!(matches!(
            migrate(&mut c, gap),
            Err(StorageError::InvalidMigrationList(_))
        ));
    }

    #[test]
    fn embedded_schema_applies() {
        let mut c = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut c, MIGRATIONS).unwrap(), supported_version());
    }
}
