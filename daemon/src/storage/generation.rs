//! Rollback detection: a generation counter kept both in the database (`meta.generation`) and in
//! a file next to it (`<db>.generation`). The daemon bumps both while it runs; the file is
//! written only after the database commit, so after a crash the file is never ahead of an intact
//! database. A database found *behind* the file was replaced by an older copy.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::error::{Result, StorageError};

/// A database found older than the last state this machine saw.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Rollback {
    /// The generation stored in the database.
    pub database_generation: u64,
    /// The generation last written beside it: the database is this many bumps behind it.
    pub expected_generation: u64,
    /// When it was found (unix seconds).
    pub detected_at: i64,
    /// Sessions marked then for a rebuild: the next message to each device starts a new session
    /// (a key exchange) instead of continuing a ratchet the peer may have moved past.
    pub sessions_to_rebuild: u64,
}

/// `<db>.generation`.
pub fn file_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".generation");
    PathBuf::from(p)
}

/// The generation recorded beside the database, if any.
pub fn read_file(db: &Path) -> Option<u64> {
    std::fs::read_to_string(file_path(db))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Records `generation` beside the database (write to a temporary file, then rename).
pub fn write_file(db: &Path, generation: u64) -> Result<()> {
    let path = file_path(db);
    let tmp = {
        let mut p = path.as_os_str().to_owned();
        p.push(".tmp");
        PathBuf::from(p)
    };
    let io = |source| StorageError::Io {
        action: "writing",
        path: path.clone(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(format!("{generation}\n").as_bytes())
        .map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io)
}

/// The database's generation.
pub fn read(conn: &Connection) -> Result<u64> {
    let v: i64 = conn.query_row("SELECT value FROM meta WHERE key = 'generation'", [], |r| {
        r.get(0)
    })?;
    Ok(u64::try_from(v).unwrap_or(0))
}

/// Sets the database's generation to `max(current, floor) + 1` and returns it.
pub fn bump(conn: &Connection, floor: u64) -> Result<u64> {
    let floor = i64::try_from(floor).unwrap_or(i64::MAX - 1);
    let v: i64 = conn.query_row(
        "UPDATE meta SET value = max(value, ?1) + 1 WHERE key = 'generation' RETURNING value",
        [floor],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(v).unwrap_or(0))
}

/// Compares the database with the file beside it.
pub fn check(database_generation: u64, file_generation: Option<u64>, now: i64) -> Option<Rollback> {
    match file_generation {
        Some(expected) if expected > database_generation => Some(Rollback {
            database_generation,
            expected_generation: expected,
            detected_at: now,
            sessions_to_rebuild: 0,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_database_is_a_rollback_a_newer_one_is_not() {
        assert_eq!(check(5, None, 1), None);
        assert_eq!(check(5, Some(5), 1), None);
        // The file lags after a crash between commit and file write: not a rollback.
        assert_eq!(check(6, Some(5), 1), None);
        let r = check(3, Some(5), 7).unwrap();
        assert_eq!((r.database_generation, r.expected_generation), (3, 5));
    }

    #[test]
    fn bump_never_goes_below_the_floor_and_the_file_round_trips() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::storage::migrations::migrate(&mut conn, crate::storage::migrations::MIGRATIONS)
            .unwrap();
        assert_eq!(read(&conn).unwrap(), 0);
        assert_eq!(bump(&conn, 0).unwrap(), 1);
        assert_eq!(bump(&conn, 10).unwrap(), 11);
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        assert_eq!(read_file(&db), None);
        write_file(&db, 11).unwrap();
        assert_eq!(read_file(&db), Some(11));
    }
}
