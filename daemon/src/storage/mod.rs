//! omemod's persistent state: one SQLite file per user. Every SQL statement of omemod is in
//! this module; it imports nothing of the crate above it.
//!
//! [`Store`] opens the file (creating it 0600 in a 0700 directory), applies the embedded
//! migrations, and shares the only write connection through a group commit ([`Store::write`]:
//! led by a waiting caller, or by the **writer** thread), a few **readers** with read-only WAL
//! connections ([`Store::read`]), and a **checkpointer** that keeps the WAL short off the
//! request path. The table modules are typed access functions taking a `&rusqlite::Connection`
//! (a transaction derefs to one), meant to be called inside `write`/`read` closures.
//!
//! - [`accounts`]: the local accounts, one own device each.
//! - [`identity`]: our identity key pair per account.
//! - [`prekeys`]: our one-time prekeys, and refilling their pools.
//! - [`signed_prekeys`]: our signed prekeys.
//! - [`devices`]: device lists of contacts and of our own account.
//! - [`device_keys`]: each remote device's identity key and unanswered count, for listings.
//! - [`bundles`]: the latest bundle fetched for each remote device.
//! - [`sessions`]: Double Ratchet sessions, one per remote device and namespace.
//! - [`skipped_keys`]: message keys of skipped messages, per session.
//! - [`device_state`]: identity changes, previous session states, deferred heartbeats.
//! - [`trust`]: trust decisions per contact JID and identity key.
//! - [`rebuilds`]: sessions to rebuild after a rollback.
//! - [`redelivery`]: what lets a message be decrypted again and an `encrypt` be retried.
//! - [`own_messages`]: what lets this device read back the elements it sent.
//! - [`generation`]: noticing a restored or copied database: the counters, the record beside
//!   the file, the stamp of copies.
//! - [`marks`]: the marks the writer gives session rows, and its side of the record.
//! - [`jids`]: normalised JIDs, and bringing stored ones to that form.
//! - [`migrations`]: the numbered schema migrations.
//! - [`sealing`]: secrets sealed at rest, the sealed columns, the key sources.
//! - `db`: [`Db`], a connection with its database's sealer.
//! - [`transfer`]: account deletion, backups, restores and exports.
//! - [`side_files`]: the copies `restore` moves aside, found and deleted.
//! - [`writer`]: the group commit on the one write connection.
//! - `reader`: the read-only connection pool.
//! - [`checkpoint`]: background WAL checkpoints.
//! - `error`: [`StorageError`].
//! - `types`: secret wrappers, device addresses, column decoding.
//!
//! The schema is documented for humans in `docs/schema.md`.

pub mod accounts;
pub mod bundles;
pub mod checkpoint;
mod db;
pub mod device_keys;
pub mod device_state;
pub mod devices;
mod error;
pub mod generation;
pub mod identity;
pub mod jids;
pub mod marks;
pub mod migrations;
pub mod own_messages;
pub mod prekeys;
mod reader;
pub mod rebuilds;
pub mod redelivery;
pub mod sealing;
pub mod sessions;
pub mod side_files;
pub mod signed_prekeys;
pub mod skipped_keys;
pub mod transfer;
pub mod trust;
mod types;
pub mod writer;

use std::fs::{OpenOptions, Permissions};
use std::future::Future;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

pub use checkpoint::{CheckpointMode, CheckpointResult, CheckpointStats};
pub use db::Db;
pub use error::{Result, StorageError};
pub use sealing::keys::{KeySettings, SourceKind};
pub use types::{
    advance_clock, format_fingerprint, now, DeviceAddr, Namespace, SecretBlob, SecretKey,
};
pub use writer::WriterStats;

use reader::{ReadJob, TypedRead};
use writer::{CheckpointSignal, Reply, TypedJob};

/// How hard a commit tries to reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=FULL`: every commit is fsynced before it is reported; a committed
    /// transaction survives a power loss / kernel crash.
    #[default]
    Full,
    /// `synchronous=NORMAL`: the WAL is fsynced only at checkpoints. A committed transaction
    /// survives a crash of omemod itself, but the last transactions before a power loss or OS
    /// crash may be lost (the database stays consistent). Losing ratchet state can break
    /// sessions, so prefer `Full` unless the disk is slow.
    Normal,
}

impl Durability {
    fn pragma_value(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        }
    }

    fn pragma_number(self) -> i64 {
        match self {
            Durability::Full => 2,
            Durability::Normal => 1,
        }
    }
}

/// Tuning knobs of [`Store::open_with`]; [`Store::open`] uses the defaults.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Commit durability.
    pub durability: Durability,
    /// Read-only connections (and threads) in the read pool.
    pub readers: usize,
    /// Checkpoint at least this often when something was committed.
    pub checkpoint_interval: Duration,
    /// WAL size, in pages, above which the writer asks for an early checkpoint (and at one and
    /// a half times which it checkpoints itself); the WAL file is cut back to it on restart.
    pub checkpoint_pages: u64,
    /// How long a connection waits for a lock held by another process.
    pub busy_timeout: Duration,
    /// How long checkpoints may stay incomplete (an outside reader) before a warning is logged.
    pub checkpoint_stall_warning: Duration,
    /// Where the data key comes from.
    pub keys: KeySettings,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Full,
            readers: 2,
            checkpoint_interval: Duration::from_secs(5),
            checkpoint_pages: 1000,
            busy_timeout: Duration::from_secs(5),
            checkpoint_stall_warning: Duration::from_secs(30),
            keys: KeySettings::from_env(),
        }
    }
}

/// Most prepared statements cached per connection.
const STATEMENT_CACHE: usize = 128;

struct Threads {
    writer: Option<JoinHandle<()>>,
    readers: Vec<JoinHandle<()>>,
    checkpointer: Option<JoinHandle<Connection>>,
}

/// The open database. Share it with `Arc<Store>`; all methods take `&self`.
pub struct Store {
    path: PathBuf,
    config: StoreConfig,
    writer: Arc<writer::Shared>,
    readers: RwLock<Option<ReadQueue>>,
    threads: Mutex<Threads>,
    writer_stats: Arc<WriterStats>,
    checkpoint_stats: Arc<CheckpointStats>,
    /// What [`generation::inspect`] found at open, until the daemon takes it.
    inspection: Mutex<Option<generation::Inspection>>,
    sealing: SealingStatus,
}

/// How the database is sealed, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SealingStatus {
    /// The key source.
    pub key_source: SourceKind,
    /// The key file's path or the credential's name.
    pub key_source_ref: Option<String>,
    /// The data key's public name.
    pub key_id: String,
}

impl serde::Serialize for SourceKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Maps an I/O error on `path` to [`StorageError::Io`].
pub(crate) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Creates the directory (0700) and the database file (0600) if missing; tightens a database
/// file (and its -wal/-shm) readable by others; warns about a directory open to others.
fn prepare_files(path: &Path) -> Result<()> {
    // No symlink at the database, its -wal/-shm or its directory; the directory is ours and
    // closed to others (created 0700 when missing).
    crate::socket_trust::check_database_path(path).map_err(|e| StorageError::Io {
        action: "checking",
        path: path.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let dir = crate::socket_trust::parent_of(path);
    if let Ok(meta) = std::fs::metadata(&dir) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(dir = %dir.display(), mode = format!("{:o}", mode & 0o777),
                "database directory is readable by other users");
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(io_err("opening", path))?;
    let meta = file.metadata().map_err(io_err("inspecting", path))?;
    if !meta.is_file() {
        return Err(StorageError::Io {
            action: "opening",
            path: path.to_owned(),
            source: std::io::Error::other("not a regular file"),
        });
    }
    drop(file);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let mut shm = path.as_os_str().to_owned();
    shm.push("-shm");
    for p in [path.to_owned(), PathBuf::from(wal), PathBuf::from(shm)] {
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(file = %p.display(), mode = format!("{:o}", mode & 0o777),
                "database file was accessible to other users; setting it to 0600");
            std::fs::set_permissions(&p, Permissions::from_mode(0o600))
                .map_err(io_err("setting permissions of", &p))?;
        }
    }
    Ok(())
}

fn open_connection(path: &Path, flags: OpenFlags, config: &StoreConfig) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NOFOLLOW)?;
    conn.busy_timeout(config.busy_timeout)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

fn check_pragma(conn: &Connection, pragma: &'static str, expected: &str) -> Result<()> {
    let actual: String = conn.query_row(&format!("PRAGMA {pragma}"), [], |r| {
        let v: rusqlite::types::Value = r.get(0)?;
        Ok(match v {
            rusqlite::types::Value::Integer(i) => i.to_string(),
            rusqlite::types::Value::Text(t) => t,
            other => format!("{other:?}"),
        })
    })?;
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(StorageError::Pragma {
            pragma,
            expected: expected.to_owned(),
            actual,
        })
    }
}

fn open_writer(path: &Path, config: &StoreConfig) -> Result<(Connection, Arc<marks::Tracker>)> {
    let conn = open_connection(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        config,
    )?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StorageError::Pragma {
            pragma: "journal_mode",
            expected: "wal".into(),
            actual: mode,
        });
    }
    conn.pragma_update(None, "synchronous", config.durability.pragma_value())?;
    check_pragma(
        &conn,
        "synchronous",
        &config.durability.pragma_number().to_string(),
    )?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    check_pragma(&conn, "foreign_keys", "1")?;
    // Checkpoints are the checkpointer thread's job.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // Overwrite deleted content (used prekeys, consumed message keys) instead of leaving it
    // in free pages.
    conn.pragma_update(None, "secure_delete", "ON")?;
    let tracker = marks::Tracker::install(&conn)?;
    Ok((conn, tracker))
}

/// Size of a WAL file holding `pages` frames: its header, then a 24-byte header and a page per
/// frame.
fn wal_bytes(pages: u64, page_size: u64) -> u64 {
    32 + pages.saturating_mul(page_size + 24)
}

/// Cuts the WAL file back to the checkpoint threshold whenever the log starts over, so that the
/// file's growth tells the writer how long the log is (`writer::Conn::after_commit`). Returns
/// the threshold in bytes.
fn limit_wal(conn: &Connection, config: &StoreConfig) -> Result<u64> {
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let page_size = u64::try_from(page_size).unwrap_or(4096);
    let threshold_bytes = wal_bytes(config.checkpoint_pages, page_size);
    conn.pragma_update(
        None,
        "journal_size_limit",
        i64::try_from(threshold_bytes).unwrap_or(i64::MAX),
    )?;
    Ok(threshold_bytes)
}

/// Starts a storage thread.
fn spawn<T: Send + 'static>(
    path: &Path,
    name: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(io_err("spawning storage thread for", path))
}

/// Where read jobs are queued for the reader threads.
type ReadQueue = Sender<Box<dyn ReadJob>>;

/// Starts one reader thread per connection, all taking jobs from one queue.
fn spawn_readers(path: &Path, conns: Vec<Db>) -> Result<(ReadQueue, Vec<JoinHandle<()>>)> {
    let (read_tx, read_rx) = mpsc::channel::<Box<dyn ReadJob>>();
    let read_rx = Arc::new(Mutex::new(read_rx));
    let threads = conns
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let rx = Arc::clone(&read_rx);
            spawn(path, format!("omemod-reader-{i}"), move || {
                reader::run(c, rx)
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((read_tx, threads))
}

/// Seals a database that has no sealing record yet (new, or written before schema version 9):
/// a new data key wrapped for the chosen source, every secret value sealed, in one transaction.
/// An `existing` database then has its plaintext pages erased: the WAL is checkpointed and
/// truncated, the file vacuumed (every page rewritten, free pages dropped), and the WAL
/// truncated again.
fn seal_database(
    conn: &mut Connection,
    path: &Path,
    keys: &KeySettings,
    existing: bool,
) -> Result<(sealing::keys::Record, sealing::DataKey)> {
    let key = sealing::DataKey::generate();
    let record = sealing::keys::wrap_new(keys, path, &key)?;
    let sealer = sealing::Sealer::new(&key);
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    sealing::keys::write_record(&tx, &record, false)?;
    let sealed = sealing::columns::seal_plaintext(&tx, &sealer)?;
    tx.commit()?;
    if existing {
        erase_free_pages(conn)?;
        tracing::info!(path = %path.display(), sealed, key_source = %record.source,
            "database sealed: its secrets are now encrypted under a key from its key source");
    } else {
        tracing::info!(path = %path.display(), key_source = %record.source, "new database sealed");
    }
    Ok((record, key))
}

/// Leaves no page of older content in the file or its WAL: checkpoint and truncate the WAL,
/// vacuum (rewrites every page, drops free ones), checkpoint and truncate again. Needs the only
/// connection to the database.
pub(crate) fn erase_free_pages(conn: &Connection) -> Result<()> {
    checkpoint::checkpoint(conn, CheckpointMode::Truncate)?;
    conn.execute_batch("VACUUM")?;
    let r = checkpoint::checkpoint(conn, CheckpointMode::Truncate)?;
    if r.busy {
        return Err(StorageError::Io {
            action: "erasing old pages of",
            path: PathBuf::from(conn.path().unwrap_or_default()),
            source: std::io::Error::other("another process holds the database open"),
        });
    }
    Ok(())
}

/// What `omemod rekey` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RekeySummary {
    /// The key source now.
    pub key_source: SourceKind,
    /// The key file's path or the credential's name.
    pub key_source_ref: Option<String>,
    /// The new data key's public name.
    pub key_id: String,
    /// The old one's.
    pub previous_key_id: String,
    /// Sealed values re-sealed under the new data key.
    pub resealed: usize,
}

/// Gives the database at `path` a new data key, wrapped for the source `new` chooses, and seals
/// every value again under it; the old data key (and whatever wrapped it) then opens nothing in
/// the file. `old` must give the current key. The caller holds the database's lock (no daemon).
pub fn rekey(path: &Path, old: &KeySettings, new: &KeySettings) -> Result<RekeySummary> {
    let config = StoreConfig::default();
    let (mut conn, _tracker) = open_writer(path, &config)?;
    let record = sealing::keys::read_record(&conn)?.ok_or_else(|| StorageError::InvalidInput {
        what: "database",
        reason: "it is not sealed yet: start the daemon once (`omemod serve` seals it)".into(),
    })?;
    let old_key = sealing::keys::open(&record, old)?;
    migrations::migrate(&mut conn, migrations::MIGRATIONS)?;
    let new_key = sealing::DataKey::generate();
    let new_record = sealing::keys::wrap_new(new, path, &new_key)?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let resealed = sealing::columns::reseal(
        &tx,
        &sealing::Sealer::new(&old_key),
        &sealing::Sealer::new(&new_key),
    )?;
    sealing::keys::write_record(&tx, &new_record, true)?;
    tx.commit()?;
    erase_free_pages(&conn)?;
    tracing::info!(path = %path.display(), key_source = %new_record.source, resealed, "database rekeyed");
    Ok(RekeySummary {
        key_source: new_record.source,
        key_source_ref: new_record.source_ref,
        key_id: new_record.key_id,
        previous_key_id: record.key_id,
        resealed,
    })
}

/// The key source recorded in the database at `path` (`None`: not sealed yet), read without
/// changing anything.
pub fn recorded_key_source(path: &Path) -> Result<Option<sealing::keys::Record>> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )?;
    sealing::keys::read_record(&conn)
}

impl Store {
    /// Opens (or creates) the database at `path` with default tuning.
    pub fn open(path: &Path, durability: Durability) -> Result<Store> {
        Self::open_with(
            path,
            StoreConfig {
                durability,
                ..StoreConfig::default()
            },
        )
    }

    /// Opens (or creates) the database at `path`.
    pub fn open_with(path: &Path, config: StoreConfig) -> Result<Store> {
        prepare_files(path)?;
        let (mut conn, tracker) = open_writer(path, &config)?;
        // The key first: a database whose key cannot be had is left as it was.
        let unlocked = sealing::keys::read_record(&conn)?
            .map(|record| sealing::keys::open(&record, &config.keys).map(|key| (record, key)))
            .transpose()?;
        // Before anything (a migration, the JID normalisation) changes the file; what it finds
        // is stamped into the file at once (and again once the migrations made room for the
        // stamp), so that a daemon that dies before treating it finds it again.
        let inspection = generation::inspect(&conn, path)?;
        generation::remember(&conn, &inspection)?;
        let before = migrations::current_version(&conn)?;
        migrations::migrate(&mut conn, migrations::MIGRATIONS)?;
        generation::remember(&conn, &inspection)?;
        let report = jids::normalise_stored(&mut conn)?;
        if report != jids::NormaliseReport::default() {
            tracing::info!(?report, "stored JIDs normalised");
        }
        let (record, key) = match unlocked {
            Some(unlocked) => unlocked,
            None => seal_database(&mut conn, path, &config.keys, before > 0)?,
        };
        let sealer = Arc::new(sealing::Sealer::new(&key));
        drop(key);
        let sealing = SealingStatus {
            key_source: record.source,
            key_source_ref: record.source_ref,
            key_id: record.key_id,
        };
        let conn = Db::new(conn, Arc::clone(&sealer));
        let threshold_bytes = limit_wal(&conn, &config)?;
        let readers_conns = (0..config.readers.max(1))
            .map(|_| {
                open_connection(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    &config,
                )
                .map(|c| Db::new(c, Arc::clone(&sealer)))
            })
            .collect::<Result<Vec<_>>>()?;
        let ckpt_conn = open_connection(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            &config,
        )?;
        ckpt_conn.pragma_update(None, "synchronous", config.durability.pragma_value())?;
        ckpt_conn.pragma_update(None, "wal_autocheckpoint", 0)?;

        let writer_stats = Arc::new(WriterStats::default());
        let checkpoint_stats = Arc::new(CheckpointStats::default());
        let dirty = Arc::new(AtomicBool::new(false));
        let (wake_tx, wake_rx) = mpsc::sync_channel(1);
        let mut wal_path = path.as_os_str().to_owned();
        wal_path.push("-wal");
        let signal = CheckpointSignal {
            dirty: Arc::clone(&dirty),
            wake: wake_tx,
            wal_path: PathBuf::from(wal_path),
            threshold_bytes,
        };
        let interval = config.checkpoint_interval;
        let stats = Arc::clone(&checkpoint_stats);
        let watch = checkpoint::StallWatch {
            wal_path: signal.wal_path.clone(),
            after: config.checkpoint_stall_warning,
            min_bytes: signal.threshold_bytes,
        };
        let checkpointer = spawn(path, "omemod-checkpoint".into(), move || {
            checkpoint::run(ckpt_conn, wake_rx, dirty, interval, stats, watch)
        })?;

        // Under NORMAL a commit is cheaper than a hand-off to another thread and back, so a
        // waiting request leads it; under FULL the fsync is better spent off the runtime.
        let shared = writer::Shared::new(
            (conn, tracker),
            signal,
            Arc::clone(&writer_stats),
            config.durability == Durability::Normal,
        );
        let for_thread = Arc::clone(&shared);
        let writer = spawn(path, "omemod-writer".into(), move || {
            writer::run(for_thread)
        })?;
        let (read_tx, reader_threads) = spawn_readers(path, readers_conns)?;

        tracing::info!(path = %path.display(), durability = ?config.durability, "storage opened");
        Ok(Store {
            path: path.to_owned(),
            config,
            writer: shared,
            readers: RwLock::new(Some(read_tx)),
            threads: Mutex::new(Threads {
                writer: Some(writer),
                readers: reader_threads,
                checkpointer: Some(checkpointer),
            }),
            writer_stats,
            checkpoint_stats,
            inspection: Mutex::new(Some(inspection)),
            sealing,
        })
    }

    /// What the comparison with the record beside the database found at open (once; the
    /// daemon takes it before serving).
    pub fn take_inspection(&self) -> Option<generation::Inspection> {
        self.inspection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Starts marking session rows and following them in `file`, whose current content is
    /// `last` (see [`marks`]).
    pub fn attach_record(
        &self,
        file: generation::RecordFile,
        last: generation::Record,
    ) -> Result<()> {
        self.writer.attach(marks::Guard::new(file, last))
    }

    /// How the database is sealed.
    pub fn sealing(&self) -> &SealingStatus {
        &self.sealing
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Group-commit counters.
    pub fn writer_stats(&self) -> &WriterStats {
        &self.writer_stats
    }

    /// Checkpointer counters.
    pub fn checkpoint_stats(&self) -> &CheckpointStats {
        &self.checkpoint_stats
    }

    fn enqueue_read(&self, job: Box<dyn ReadJob>) -> Result<()> {
        let guard = self.readers.read().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref() {
            Some(tx) => tx.send(job).map_err(|_| StorageError::Closed),
            None => Err(StorageError::Closed),
        }
    }

    /// Runs `f` in the writer's transaction (inside its own SAVEPOINT) and resolves once the
    /// batch holding it is committed. If `f` fails only its own changes are rolled back.
    ///
    /// The job is queued when `write` is called, not when the future is first polled, so
    /// jobs run in call order. Dropping the future does not cancel the job. Under
    /// [`Durability::Normal`] the future may run the batch (its own job and those queued with
    /// it) on the polling thread, after yielding once so concurrent requests join it.
    pub fn write<T, F>(&self, f: F) -> impl Future<Output = Result<T>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let queued = self
            .writer
            .push_async(Box::new(TypedJob::new(f, Reply::Async(tx))));
        let pending = writer::Pending::new(&self.writer);
        async move {
            queued?;
            writer::wait_async(pending, rx).await
        }
    }

    /// [`Store::write`] for threads outside async code (CLI, tests). Blocks the thread, which
    /// runs the batch itself when no other batch is under way.
    pub fn write_blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        writer::write_blocking(
            &self.writer,
            Box::new(TypedJob::new(f, Reply::Blocking(tx))),
            rx,
        )
    }

    /// Runs `f` on a read-only connection of the pool; it sees the last committed state.
    pub fn read<T, F>(&self, f: F) -> impl Future<Output = Result<T>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let queued = self.enqueue_read(Box::new(TypedRead {
            f,
            reply: Reply::Async(tx),
        }));
        async move {
            queued?;
            rx.await.map_err(|_| StorageError::Closed)?
        }
    }

    /// [`Store::read`] for threads outside async code. Blocks the thread.
    pub fn read_blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        self.enqueue_read(Box::new(TypedRead {
            f,
            reply: Reply::Blocking(tx),
        }))?;
        rx.recv().map_err(|_| StorageError::Closed)?
    }

    /// Checkpoints the whole WAL into the database and truncates it to zero bytes, on a
    /// connection of its own (waits up to the busy timeout for readers). Used after deleting
    /// secrets, whose old pages the WAL would otherwise keep until it is overwritten.
    pub fn checkpoint_truncate(&self) -> Result<CheckpointResult> {
        let conn = open_connection(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            &self.config,
        )?;
        conn.pragma_update(None, "synchronous", self.config.durability.pragma_value())?;
        checkpoint::checkpoint(&conn, CheckpointMode::Truncate)
    }

    /// Clean shutdown: lets the writer finish every queued job, stops readers and the
    /// checkpointer, then checkpoints with `TRUNCATE` so the WAL is empty. Blocks (call it
    /// from `spawn_blocking` in async code). Later calls to `write`/`read` return
    /// [`StorageError::Closed`]; calling `close` again is a no-op.
    pub fn close(&self) -> Result<()> {
        self.writer.close();
        self.readers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let mut threads = self.threads.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(h) = threads.writer.take() {
            if h.join().is_err() {
                tracing::error!("storage writer thread panicked");
            }
        }
        for h in threads.readers.drain(..) {
            if h.join().is_err() {
                tracing::error!("storage reader thread panicked");
            }
        }
        let Some(h) = threads.checkpointer.take() else {
            return Ok(());
        };
        let conn = match h.join() {
            Ok(conn) => conn,
            Err(_) => {
                tracing::error!("storage checkpoint thread panicked");
                open_connection(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    &self.config,
                )?
            }
        };
        let r = checkpoint::checkpoint(&conn, CheckpointMode::Truncate)?;
        if r.busy {
            tracing::warn!(
                ?r,
                "final checkpoint could not complete (another process reading?)"
            );
        }
        drop(conn);
        tracing::info!(path = %self.path.display(), "storage closed");
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!(error = %e, "closing storage failed");
        }
    }
}

/// Tests: an in-memory database at today's schema holding account 1 (`a@x`, device 7).
#[cfg(test)]
pub(crate) fn test_db() -> Connection {
    let mut c = Connection::open_in_memory().unwrap();
    migrations::migrate(&mut c, migrations::MIGRATIONS).unwrap();
    c.execute(
        "INSERT INTO accounts (id, jid, device_id, created_at) VALUES (1, 'a@x', 7, 0)",
        [],
    )
    .unwrap();
    c
}

/// Tests: [`test_db`] with a sealer under a fresh data key.
#[cfg(test)]
pub(crate) fn test_sealed_db() -> Db {
    let key = sealing::DataKey::generate();
    Db::new(test_db(), Arc::new(sealing::Sealer::new(&key)))
}
