//! Whether the socket is omemod's: whoever can put a socket where a client looks could
//! impersonate the daemon and read every plaintext the client sends it.
//!
//! - The socket's directory must be owned by us, must not be writable by group or others, and
//!   must not be a symlink: it is opened with `O_DIRECTORY | O_NOFOLLOW` and checked on the open
//!   descriptor (`fstat`), so a lookalike cannot be swapped in between the check and the use.
//!   Once it is ours and closed to others, nobody else can replace what is inside it.
//! - The socket itself is checked with `fstatat(…, AT_SYMLINK_NOFOLLOW)` relative to that
//!   descriptor: a socket owned by us.
//! - After connecting, the process answering must run as us (`SO_PEERCRED`).
//!
//! [`crate::Client::connect`] runs all three. The daemon uses [`open_private_dir`] and
//! [`stat_in`] for its own directories too.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, OFlags};

pub use rustix::fs::FileType;

/// Why a path is not trusted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The path is a symbolic link.
    #[error("{} is a symbolic link; refusing to follow it", .0.display())]
    Symlink(PathBuf),
    /// Owned by another user.
    #[error("{} is owned by uid {owner}, not by us (uid {us}); refusing to use it", path.display())]
    ForeignOwner {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our uid.
        us: u32,
    },
    /// Writable by group or others.
    #[error("{} is writable by other users (mode {mode:o}); refusing to use it (make it private: chmod go-w)", path.display())]
    OpenToOthers {
        /// The path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not a socket (or not a directory, or not a regular file) where one is expected.
    #[error("{} is not a {expected}", path.display())]
    WrongType {
        /// The path.
        path: PathBuf,
        /// What it should be.
        expected: &'static str,
    },
    /// The path has no file name.
    #[error("{} has no file name", .0.display())]
    NoFileName(PathBuf),
    /// The process answering on the socket runs as another user.
    #[error("the process listening on {} runs as uid {owner}, not as us (uid {us}); refusing to talk to it", path.display())]
    ForeignPeer {
        /// The socket.
        path: PathBuf,
        /// Its uid.
        owner: u32,
        /// Our uid.
        us: u32,
    },
    /// A system call failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What we were doing.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

impl TrustError {
    /// `map_err` for a failed system call: `what` was being done to `path`.
    pub fn io<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> TrustError + 'p {
        move |source| TrustError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Our real uid.
pub fn current_uid() -> u32 {
    rustix::process::getuid().as_raw()
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
        Err(e) => Err(TrustError::io("cannot open directory", dir)(e)),
    }
}

/// A private directory: ours, not a symlink, not writable by group or others. The open
/// descriptor is returned so that names inside it can be checked with [`stat_in`].
pub fn open_private_dir(dir: &Path) -> Result<File, TrustError> {
    let file = open_dir_nofollow(dir)?;
    let meta = file
        .metadata()
        .map_err(TrustError::io("cannot inspect directory", dir))?;
    let us = current_uid();
    if meta.uid() != us {
        return Err(TrustError::ForeignOwner {
            path: dir.to_path_buf(),
            owner: meta.uid(),
            us,
        });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(TrustError::OpenToOthers {
            path: dir.to_path_buf(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(file)
}

/// What is at `name` inside the checked directory `dir` (not following symlinks): its type and
/// owner, `None` if absent. `full` is the whole path, for errors.
pub fn stat_in(
    dir: &File,
    name: &Path,
    full: &Path,
) -> Result<Option<(FileType, u32)>, TrustError> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some((FileType::from_raw_mode(st.st_mode), st.st_uid))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(TrustError::io("cannot inspect", full)(e.into())),
    }
}

/// Checks a socket path before connecting: its directory is private to us
/// ([`open_private_dir`]) and the socket is a socket of ours, not a symlink.
///
/// ```no_run
/// let path = omemod_client::default_socket_path();
/// if let Err(e) = omemod_client::trust::check_socket(&path) {
///     eprintln!("not talking to {}: {e}", path.display());
/// }
/// ```
pub fn check_socket(path: &Path) -> Result<(), TrustError> {
    let name = path
        .file_name()
        .ok_or_else(|| TrustError::NoFileName(path.to_path_buf()))?;
    let dir = open_private_dir(&parent_of(path))?;
    let us = current_uid();
    match stat_in(&dir, Path::new(name), path)? {
        None => Err(TrustError::io("cannot connect to", path)(
            io::ErrorKind::NotFound.into(),
        )),
        Some((FileType::Symlink, _)) => Err(TrustError::Symlink(path.to_path_buf())),
        Some((FileType::Socket, owner)) if owner == us => Ok(()),
        Some((FileType::Socket, owner)) => Err(TrustError::ForeignOwner {
            path: path.to_path_buf(),
            owner,
            us,
        }),
        Some(_) => Err(TrustError::WrongType {
            path: path.to_path_buf(),
            expected: "socket",
        }),
    }
}

/// Checks, on a connected socket, that the process at the other end (the daemon at `path`)
/// runs as us.
pub fn check_peer(path: &Path, socket: impl AsFd) -> Result<(), TrustError> {
    let cred = rustix::net::sockopt::socket_peercred(socket)
        .map_err(|e| TrustError::io("cannot check who listens on", path)(e.into()))?;
    let (owner, us) = (cred.uid.as_raw(), current_uid());
    if owner != us {
        return Err(TrustError::ForeignPeer {
            path: path.to_path_buf(),
            owner,
            us,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::private_dir;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn a_socket_of_ours_in_a_private_directory_passes() {
        let dir = private_dir("ok");
        let sock = dir.join("s.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        check_socket(&sock).unwrap();
        let stream = UnixStream::connect(&sock).unwrap();
        check_peer(&sock, &stream).unwrap();
        drop(listener);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn symlinks_open_directories_and_other_files_are_refused() {
        let dir = private_dir("refused");
        let sock = dir.join("s.sock");
        let _listener = UnixListener::bind(&sock).unwrap();
        // A symlink in place of the socket, and in place of its directory.
        symlink(&sock, dir.join("link.sock")).unwrap();
        assert!(matches!(
            check_socket(&dir.join("link.sock")),
            Err(TrustError::Symlink(_))
        ));
        let dir_link = dir.with_extension("link");
        let _ = std::fs::remove_file(&dir_link);
        symlink(&dir, &dir_link).unwrap();
        assert!(matches!(
            check_socket(&dir_link.join("s.sock")),
            Err(TrustError::Symlink(_))
        ));
        // Not a socket; absent.
        std::fs::write(dir.join("file"), b"").unwrap();
        assert!(matches!(
            check_socket(&dir.join("file")),
            Err(TrustError::WrongType { .. })
        ));
        assert!(matches!(
            check_socket(&dir.join("absent.sock")),
            Err(TrustError::Io { .. })
        ));
        // A directory others may write to: refused, and its mode left alone.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            check_socket(&sock),
            Err(TrustError::OpenToOthers { .. })
        ));
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o777);
        std::fs::remove_file(&dir_link).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
