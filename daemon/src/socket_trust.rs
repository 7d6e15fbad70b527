//! Local trust in the daemon's own paths (issue 11): whoever can put a file where we look could
//! impersonate the daemon or redirect our writes.
//!
//! The checks a client runs before it talks to the socket (its directory private to us, the
//! socket ours, the daemon's uid ours) are omemod-client's [`omemod_client::trust`], used by
//! `omemod call` and every client command; the primitives shared with them are re-exported here.
//! What only the daemon does stays here:
//! - [`prepare_private_dir`]: the socket's and the database's directory, created 0700 when
//!   missing; only a directory we create gets its mode set, an existing one is never chmod-ed.
//! - [`check_database_path`]: the database and its `-wal` / `-shm` files are not symlinks.
//! - [`current_uid`]: our real uid, the only one trusted.

use std::fs::{DirBuilder, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

pub use omemod_client::trust::{open_private_dir, parent_of, stat_in, FileType, TrustError};

/// Our real uid.
pub fn current_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// Creates `dir` (mode 0700, parents as needed) unless it exists, then opens and checks it
/// like [`open_private_dir`]. Only a directory created here has its mode set; an existing one
/// keeps its mode (and is refused when it is open to others).
pub fn prepare_private_dir(dir: &Path) -> Result<File, TrustError> {
    let created = match std::fs::symlink_metadata(dir) {
        Ok(_) => false,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)
                    .map_err(TrustError::io("cannot create directory", parent))?;
            }
            match DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => true,
                // Someone else made it in between: check it like any existing one.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(TrustError::io("cannot create directory", dir)(e)),
            }
        }
        Err(e) => return Err(TrustError::io("cannot inspect", dir)(e)),
    };
    // The umask can only take bits away from 0700, so a directory made here passes the check.
    let file = open_private_dir(dir)?;
    if created {
        let meta = file
            .metadata()
            .map_err(TrustError::io("cannot inspect directory", dir))?;
        if meta.mode() & 0o777 != 0o700 {
            // fchmod on the descriptor: the directory we made, not whatever the name points to now.
            file.set_permissions(std::fs::Permissions::from_mode(0o700))
                .map_err(TrustError::io("cannot make directory private", dir))?;
        }
    }
    Ok(file)
}

/// Checks the database path before SQLite opens it: its directory is private to us (created
/// 0700 if missing) and the database and its `-wal` / `-shm` files are not symlinks.
pub fn check_database_path(path: &Path) -> Result<(), TrustError> {
    let dir_path = parent_of(path);
    let dir = prepare_private_dir(&dir_path)?;
    let name = path
        .file_name()
        .ok_or_else(|| TrustError::NoFileName(path.to_path_buf()))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut n = name.to_os_string();
        n.push(suffix);
        let full = dir_path.join(&n);
        match stat_in(&dir, Path::new(&n), &full)? {
            None => {}
            Some((FileType::Symlink, _)) => return Err(TrustError::Symlink(full)),
            Some((FileType::RegularFile, owner)) if owner == current_uid() => {}
            Some((FileType::RegularFile, owner)) => {
                return Err(TrustError::ForeignOwner {
                    path: full,
                    owner,
                    us: current_uid(),
                })
            }
            Some(_) => {
                return Err(TrustError::WrongType {
                    path: full,
                    expected: "regular file",
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinked_and_open_directories_are_refused_and_never_chmod_ed() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = t.path().join("link");
        symlink(&real, &link).unwrap();
        assert!(matches!(
            open_private_dir(&link),
            Err(TrustError::Symlink(_))
        ));
        assert!(matches!(
            prepare_private_dir(&link),
            Err(TrustError::Symlink(_))
        ));
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            prepare_private_dir(&open),
            Err(TrustError::OpenToOthers { .. })
        ));
        // Not changed by the check.
        let mode = std::fs::metadata(&open).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o777);
        // An existing private-enough directory (0755, like $HOME) keeps its mode.
        let home = t.path().join("home");
        std::fs::create_dir(&home).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare_private_dir(&home).unwrap();
        let mode = std::fs::metadata(&home).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        // A new one is 0700.
        let new = t.path().join("a/b");
        prepare_private_dir(&new).unwrap();
        let mode = std::fs::metadata(&new).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn database_symlinks_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let target = t.path().join("elsewhere.db");
        std::fs::write(&target, b"").unwrap();
        symlink(&target, dir.join("omemod.db")).unwrap();
        assert!(matches!(
            check_database_path(&dir.join("omemod.db")),
            Err(TrustError::Symlink(_))
        ));
        symlink(&target, dir.join("other.db-wal")).unwrap();
        assert!(matches!(
            check_database_path(&dir.join("other.db")),
            Err(TrustError::Symlink(_))
        ));
        check_database_path(&dir.join("fine.db")).unwrap();
    }
}
