//! Local trust in the socket and the database paths (issue 11): whoever can put a file where we
//! look could impersonate the daemon (and read what a client sends it) or redirect our writes.
//!
//! - The directory of the socket and of the database must be owned by us, must not be writable
//!   by group or others, and must not be a symlink: it is opened with `O_DIRECTORY | O_NOFOLLOW`
//!   and checked on the open descriptor (`fstat`), so a lookalike cannot be swapped in between
//!   the check and the use. Once it is ours and closed to others, nobody else can replace what
//!   is inside it.
//! - The socket itself is checked with `fstatat(…, AT_SYMLINK_NOFOLLOW)` relative to that
//!   descriptor: a socket owned by us. After connecting, the client checks the daemon's uid
//!   (`SO_PEERCRED`) too.
//! - Only a directory we create gets its mode set (0700); an existing one is never chmod-ed.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, OFlags};

/// Why a path is not trusted.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The path is a symbolic link.
    #[error("{0} is a symbolic link; refusing to follow it")]
    Symlink(PathBuf),
    /// Owned by another user.
    #[error("{path} is owned by uid {owner}, not by us (uid {us}); refusing to use it")]
    ForeignOwner {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our uid.
        us: u32,
    },
    /// Writable by group or others.
    #[error("{path} is writable by other users (mode {mode:o}); refusing to use it (make it private: chmod go-w)")]
    OpenToOthers {
        /// The path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not a socket (or not a directory, or not a regular file) where one is expected.
    #[error("{path} is not a {expected}")]
    WrongType {
        /// The path.
        path: PathBuf,
        /// What it should be.
        expected: &'static str,
    },
    /// The path has no directory part.
    #[error("{0} has no directory")]
    NoDirectory(PathBuf),
    /// The process answering on the socket runs as another user.
    #[error("the process listening on {path} runs as uid {owner}, not as us (uid {us}); refusing to talk to it")]
    ForeignPeer {
        /// The socket.
        path: PathBuf,
        /// Its uid.
        owner: u32,
        /// Our uid.
        us: u32,
    },
    /// A system call failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_err<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> TrustError + 'p {
    move |source| TrustError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn us() -> u32 {
    crate::config::current_uid()
}

/// The directory part of `path` (`.` for a bare file name).
pub fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Opens `dir` without following a symlink at its last component.
fn open_dir_nofollow(dir: &Path) -> Result<File, TrustError> {
    let flags = (OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC).bits();
    match OpenOptions::new()
        .read(true)
        .custom_flags(flags as i32)
        .open(dir)
    {
        Ok(f) => Ok(f),
        // ELOOP: the last component is a symlink; ENOTDIR: it is something else.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            Err(TrustError::Symlink(dir.to_path_buf()))
        }
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) => {
            match std::fs::symlink_metadata(dir) {
                Ok(m) if m.file_type().is_symlink() => Err(TrustError::Symlink(dir.to_path_buf())),
                _ => Err(TrustError::WrongType {
                    path: dir.to_path_buf(),
                    expected: "directory",
                }),
            }
        }
        Err(e) => Err(io_err("cannot open directory", dir)(e)),
    }
}

/// A private directory: ours, not a symlink, not writable by group or others.
/// The open descriptor is returned so that names inside it can be checked with `*at()` calls.
pub fn open_private_dir(dir: &Path) -> Result<File, TrustError> {
    let file = open_dir_nofollow(dir)?;
    let meta = file
        .metadata()
        .map_err(io_err("cannot inspect directory", dir))?;
    check_owner_and_mode(dir, meta.uid(), meta.mode())?;
    Ok(file)
}

fn check_owner_and_mode(path: &Path, owner: u32, mode: u32) -> Result<(), TrustError> {
    let us = us();
    if owner != us {
        return Err(TrustError::ForeignOwner {
            path: path.to_path_buf(),
            owner,
            us,
        });
    }
    if mode & 0o022 != 0 {
        return Err(TrustError::OpenToOthers {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
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
                    .map_err(io_err("cannot create directory", parent))?;
            }
            match DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => true,
                // Someone else made it in between: check it like any existing one.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(io_err("cannot create directory", dir)(e)),
            }
        }
        Err(e) => return Err(io_err("cannot inspect", dir)(e)),
    };
    let file = open_dir_nofollow(dir)?;
    if created {
        let meta = file
            .metadata()
            .map_err(io_err("cannot inspect directory", dir))?;
        if meta.uid() == us() && meta.mode() & 0o777 != 0o700 {
            // fchmod on the descriptor: the directory we made, not whatever the name points to now.
            file.set_permissions(std::fs::Permissions::from_mode(0o700))
                .map_err(io_err("cannot make directory private", dir))?;
        }
    }
    let meta = file
        .metadata()
        .map_err(io_err("cannot inspect directory", dir))?;
    check_owner_and_mode(dir, meta.uid(), meta.mode())?;
    Ok(file)
}

/// What is at `name` inside the checked directory `dir` (not following symlinks); `None` if absent.
pub fn stat_in(
    dir: &File,
    name: &Path,
    full: &Path,
) -> Result<Option<(FileType, u32)>, TrustError> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some((FileType::from_raw_mode(st.st_mode), st.st_uid))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(io_err("cannot inspect", full)(e.into())),
    }
}

/// Checks a socket path for a client: its directory is private to us and the socket is ours.
pub fn check_socket(path: &Path) -> Result<(), TrustError> {
    let dir_path = parent_of(path);
    let name = path
        .file_name()
        .ok_or_else(|| TrustError::NoDirectory(path.to_path_buf()))?;
    let dir = open_private_dir(&dir_path)?;
    match stat_in(&dir, Path::new(name), path)? {
        None => Err(io_err("cannot connect to", path)(
            io::ErrorKind::NotFound.into(),
        )),
        Some((FileType::Symlink, _)) => Err(TrustError::Symlink(path.to_path_buf())),
        Some((FileType::Socket, owner)) if owner == us() => Ok(()),
        Some((FileType::Socket, owner)) => Err(TrustError::ForeignOwner {
            path: path.to_path_buf(),
            owner,
            us: us(),
        }),
        Some(_) => Err(TrustError::WrongType {
            path: path.to_path_buf(),
            expected: "socket",
        }),
    }
}

/// Connects to the daemon at `path` after [`check_socket`], then checks that the process
/// answering runs as us. Errors are sentences for the user.
pub fn connect(path: &Path) -> Result<UnixStream, String> {
    let refuse = |e: TrustError| format!("{e}; not connecting (is `omemod serve` running?)");
    check_socket(path).map_err(refuse)?;
    let stream = UnixStream::connect(path).map_err(|e| {
        format!(
            "cannot connect to {}: {e} (is `omemod serve` running?)",
            path.display()
        )
    })?;
    let cred = rustix::net::sockopt::socket_peercred(&stream)
        .map_err(|e| format!("cannot check who listens on {}: {e}", path.display()))?;
    let owner = cred.uid.as_raw();
    if owner != us() {
        return Err(TrustError::ForeignPeer {
            path: path.to_path_buf(),
            owner,
            us: us(),
        }
        .to_string());
    }
    Ok(stream)
}

/// Checks the database path before SQLite opens it: its directory is private to us (created
/// 0700 if missing) and the database and its `-wal` / `-shm` files are not symlinks.
pub fn check_database_path(path: &Path) -> Result<(), TrustError> {
    let dir_path = parent_of(path);
    let dir = prepare_private_dir(&dir_path)?;
    let name = path
        .file_name()
        .ok_or_else(|| TrustError::NoDirectory(path.to_path_buf()))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut n = name.to_os_string();
        n.push(suffix);
        let full = dir_path.join(&n);
        match stat_in(&dir, Path::new(&n), &full)? {
            None => {}
            Some((FileType::Symlink, _)) => return Err(TrustError::Symlink(full)),
            Some((FileType::RegularFile, owner)) if owner == us() => {}
            Some((FileType::RegularFile, owner)) => {
                return Err(TrustError::ForeignOwner {
                    path: full,
                    owner,
                    us: us(),
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
