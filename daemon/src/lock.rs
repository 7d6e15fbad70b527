//! One daemon per database: an exclusive `flock` on `<db>.lock`, taken before the database is
//! opened and held for the life of the process. Two daemons on one file would each trust their
//! own cache (a message key used twice, a consumed prekey accepted again, forked sessions).
//!
//! The lock file records the holder's pid and socket so that a refused second start can say who
//! holds it. The kernel drops the lock when the process dies, even on SIGKILL, so a stale file
//! never blocks a start.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error(
        "database {db} is in use by another omemod (pid {pid}, socket {socket}); \
         stop it first, or use another --db",
        pid = holder.pid.map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
        socket = holder.socket.as_deref().map_or_else(|| "unknown".to_owned(), |s| s.display().to_string()),
    )]
    Held {
        /// The database.
        db: PathBuf,
        /// What the lock file says about its holder.
        holder: Holder,
    },
    /// The lock file could not be created or locked.
    #[error("{action} {path}: {source}")]
    Io {
        /// What we were doing.
        action: &'static str,
        /// On which file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// The holder of a lock, as recorded in the lock file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holder {
    /// Its process id.
    pub pid: Option<u32>,
    /// Its socket (`None` for a command that holds the lock without serving, e.g. `restore`).
    pub socket: Option<PathBuf>,
}

impl Holder {
    fn parse(text: &str) -> Holder {
        let mut h = Holder::default();
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("pid=") {
                h.pid = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("socket=") {
                h.socket = Some(PathBuf::from(v));
            }
        }
        h
    }
}

/// The held lock; dropping it (or exiting) releases it.
#[derive(Debug)]
pub struct DbLock {
    file: File,
    path: PathBuf,
}

/// `<db>.lock`.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LockError + 'a {
    move |source| LockError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

impl DbLock {
    /// Takes the lock of `db` without waiting, creating the directory (0700) and the lock file
    /// (0600) if needed, and records our pid and `socket` in it.
    pub fn acquire(db: &Path, socket: Option<&Path>) -> Result<DbLock, LockError> {
        let path = lock_path(db);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(io_err("creating directory", dir))?;
                std::fs::set_permissions(dir, Permissions::from_mode(0o700))
                    .map_err(io_err("setting permissions of", dir))?;
            }
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("opening lock file", &path))?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                let mut text = String::new();
                // The holder writes its record right after locking; a start racing with it may
                // read an empty file, hence "unknown" in the message.
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Held {
                    db: db.to_owned(),
                    holder: Holder::parse(&text),
                });
            }
            Err(e) => return Err(io_err("locking", &path)(e.into())),
        }
        let mut lock = DbLock { file, path };
        lock.record(socket)?;
        Ok(lock)
    }

    /// Rewrites the record (e.g. once the socket systemd handed us is known).
    pub fn record(&mut self, socket: Option<&Path>) -> Result<(), LockError> {
        let mut text = format!("pid={}\n", std::process::id());
        if let Some(s) = socket {
            text.push_str(&format!("socket={}\n", s.display()));
        }
        let path = self.path.clone();
        self.file
            .set_len(0)
            .and_then(|()| self.file.seek(SeekFrom::Start(0)))
            .and_then(|_| self.file.write_all(text.as_bytes()))
            .map_err(io_err("writing lock file", &path))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_one_database_is_refused_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("sub/omemod.db");
        let first = DbLock::acquire(&db, Some(Path::new("/run/x.sock"))).unwrap();
        match DbLock::acquire(&db, None) {
            Err(LockError::Held { holder, .. }) => {
                assert_eq!(holder.pid, Some(std::process::id()));
                assert_eq!(holder.socket.as_deref(), Some(Path::new("/run/x.sock")));
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        let again = DbLock::acquire(&db, None).unwrap();
        let text = std::fs::read_to_string(again.path()).unwrap();
        assert_eq!(text, format!("pid={}\n", std::process::id()));
    }

    #[test]
    fn holder_record_parses_missing_fields() {
        assert_eq!(Holder::parse(""), Holder::default());
        assert_eq!(
            Holder::parse("pid=12\nsocket=/a b/c.sock\n"),
            Holder {
                pid: Some(12),
                socket: Some(PathBuf::from("/a b/c.sock"))
            }
        );
    }
}
