//! The one error type of the storage layer.

use std::path::PathBuf;
use std::sync::Arc;

/// Everything that can go wrong in the storage layer.
///
/// No variant ever carries key material: blob contents are described by their length only.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A file system operation on the database or its directory failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),

    /// The database was written by a newer omemod than this one.
    #[error(
        "database schema version {found} is newer than this omemod supports ({supported}); \
         upgrade omemod or restore a backup"
    )]
    SchemaTooNew {
        /// `PRAGMA user_version` of the file.
        found: u32,
        /// Newest schema version this binary knows.
        supported: u32,
    },

    /// Applying a numbered migration failed (the file is left at the previous version).
    #[error("migration {version} failed: {source}")]
    Migration {
        /// The migration that failed.
        version: u32,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },

    /// The migration list is not numbered 1, 2, 3, … (a programming error).
    #[error("invalid migration list: {0}")]
    InvalidMigrationList(String),

    /// Two accounts are stored under spellings of one JID: they are two identities and cannot be
    /// merged automatically.
    #[error(
        "accounts {} are one JID ({normalised}) stored as two accounts with two \
         identities; omemod cannot merge them. Keep one: export the other \
         (`omemod account export`) if needed, then delete it with sqlite3 \
         (PRAGMA foreign_keys=ON; DELETE FROM accounts WHERE jid = '…') while omemod is stopped",
        spellings.join(" and ")
    )]
    JidCollision {
        /// The JID both spellings normalise to.
        normalised: String,
        /// The stored spellings.
        spellings: Vec<String>,
    },

    /// A pragma did not take the value we set (e.g. WAL refused by the file system).
    #[error("PRAGMA {pragma} is {actual}, expected {expected}")]
    Pragma {
        /// The pragma.
        pragma: &'static str,
        /// The value we asked for.
        expected: String,
        /// The value SQLite reports.
        actual: String,
    },

    /// A stored value does not have the shape its column promises.
    #[error("bad data in {table}.{column}: {reason}")]
    BadData {
        /// Table.
        table: &'static str,
        /// Column.
        column: &'static str,
        /// What is wrong (never the value itself).
        reason: String,
    },

    /// A value given to a write function is out of range for its column.
    #[error("invalid value for {what}: {reason}")]
    InvalidInput {
        /// Which argument.
        what: &'static str,
        /// Why.
        reason: String,
    },

    /// An update or delete addressed a row that does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for.
        what: &'static str,
    },

    /// COMMIT of a group-commit batch (or BEGIN, or a savepoint statement) failed; every job
    /// of the batch that had not failed on its own gets this error, and none of them is stored.
    #[error("write batch failed: {0}")]
    Batch(#[source] Arc<rusqlite::Error>),

    /// The generation record beside the database could not be written after a commit: that
    /// batch's outcome is withheld (a restore of an older copy could not be noticed, and the
    /// steps it took were never given out), and no later batch is committed until a restart.
    #[error("not recorded beside the database (restart omemod once it can write there): {0}")]
    Unrecorded(#[source] Arc<std::io::Error>),

    /// A job closure panicked; its savepoint was rolled back.
    #[error("storage job panicked")]
    JobPanicked,

    /// The store is closed (or its writer thread is gone).
    #[error("store is closed")]
    Closed,

    /// A sealed value did not open (issue 24). A value that is not sealed at all is
    /// [`StorageError::BadData`].
    #[error(transparent)]
    Sealing(super::sealing::SealError),

    /// The database's data key could not be had from its key source; nothing was written.
    #[error(transparent)]
    Key(#[from] super::sealing::keys::KeyError),
}

impl From<super::sealing::SealError> for StorageError {
    fn from(e: super::sealing::SealError) -> Self {
        match e {
            super::sealing::SealError::NotSealed { table, column, len } => StorageError::BadData {
                table,
                column,
                reason: format!("expected a sealed value, found {len} bytes"),
            },
            e => StorageError::Sealing(e),
        }
    }
}

impl StorageError {
    /// Whom the error is due to: the database is our own state, whatever failed in it.
    pub fn cause(&self) -> protocol_core::error::ErrorCause {
        protocol_core::error::ErrorCause::LocalState
    }
}

/// Result alias of the storage layer.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
