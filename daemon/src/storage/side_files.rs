//! Files beside the database that hold its secrets: the copies `omemod restore` moves aside
//! (`<db>.before-restore-<unix time>`). They hold every key the replaced database held, so they
//! get a lifetime (the daemon deletes them after it) and go with `account.delete`.

use std::path::{Path, PathBuf};

use super::error::{Result, StorageError};

/// What follows the database's file name in a copy `restore` moved aside, before its time.
pub const BEFORE_RESTORE_SUFFIX: &str = ".before-restore-";

/// `<db>.before-restore-<time>`.
pub fn before_restore_path(db: &Path, time: i64) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(format!("{BEFORE_RESTORE_SUFFIX}{time}"));
    PathBuf::from(p)
}

/// The copies moved aside for `db`, with the unix time each was made.
pub fn before_restore_copies(db: &Path) -> Result<Vec<(PathBuf, i64)>> {
    let (Some(dir), Some(name)) = (db.parent(), db.file_name().and_then(|n| n.to_str())) else {
        return Ok(Vec::new());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{name}{BEFORE_RESTORE_SUFFIX}");
    let io = |source| StorageError::Io {
        action: "listing",
        path: dir.to_owned(),
        source,
    };
    let mut copies = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let file_name = entry.file_name();
        let Some(time) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|t| t.parse::<i64>().ok())
        else {
            continue;
        };
        copies.push((entry.path(), time));
    }
    copies.sort_by_key(|(_, t)| *t);
    Ok(copies)
}

/// Deletes the copies of `db` made before `cutoff` (all of them with `i64::MAX`); returns the
/// paths deleted. A copy that cannot be deleted is an error (the others are still tried).
pub fn remove_before_restore_copies(db: &Path, cutoff: i64) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let mut failed = None;
    for (path, time) in before_restore_copies(db)? {
        if time >= cutoff {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                failed = Some(StorageError::Io {
                    action: "deleting",
                    path,
                    source,
                })
            }
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(removed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_found_by_name_and_removed_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("omemod.db");
        for t in [100, 200, 300] {
            std::fs::write(before_restore_path(&db, t), b"x").unwrap();
        }
        // Not copies: another database's, a bad time, the database itself.
        std::fs::write(dir.path().join("other.db.before-restore-50"), b"x").unwrap();
        std::fs::write(dir.path().join("omemod.db.before-restore-x"), b"x").unwrap();
        std::fs::write(&db, b"x").unwrap();
        let times: Vec<i64> = before_restore_copies(&db)
            .unwrap()
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        assert_eq!(times, [100, 200, 300]);
        assert_eq!(remove_before_restore_copies(&db, 250).unwrap().len(), 2);
        assert_eq!(before_restore_copies(&db).unwrap().len(), 1);
        assert_eq!(
            remove_before_restore_copies(&db, i64::MAX).unwrap().len(),
            1
        );
        assert!(before_restore_copies(&db).unwrap().is_empty());
        assert!(db.exists() && dir.path().join("other.db.before-restore-50").exists());
    }
}
