//! Noticing a database that is older than the last state this machine saw (a restored backup, a
//! copy put back, a file-system snapshot), before it serves anything.
//!
//! Three things are kept:
//! - in the database: `meta.generation` (bumped at every start), `meta.session_deletions`
//!   (bumped by a trigger on every deleted session row) and, in every session row, the `mark`
//!   of the writer batch that last wrote it ([`super::marks`]);
//! - beside it, in `<db>.generation` (the *record*): after every commit that wrote or deleted
//!   session rows and before its answers are delivered, the generation, the deletion count and
//!   the mark and key of one session row that commit wrote ([`RecordFile`]);
//! - in a copy made by `omemod backup` (and the database `omemod restore` puts in place, and an
//!   account `account import` adds): `accounts.restored_copy`, set on every account ([`stamp`]).
//!
//! At start ([`inspect`]) the database is older than the record when its generation is lower,
//! or (same generation) it has seen fewer deletions, or the named row is missing or carries an
//! older mark. A database *ahead* of the record is not older: the process died between a
//! commit and the record's write, and that commit was never answered. A stamped account is
//! treated as restored whatever the record says.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use super::error::Result;
use super::io_err;

/// What showed that the database is an older copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Evidence {
    /// Its generation is below the recorded one.
    Generation,
    /// It has seen fewer session deletions than recorded.
    Deletions,
    /// The session row the record names is missing or older than recorded.
    SessionMark,
    /// Accounts carry the stamp of a backup, a restore or an import.
    RestoredCopy,
}

/// A database found older than the last state this machine saw, and what was done about it
/// (`status.rollback`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Rollback {
    /// The generation stored in the database.
    pub database_generation: u64,
    /// The generation recorded beside it (the database's own when nothing was recorded, e.g. a
    /// stamped copy on a new machine).
    pub expected_generation: u64,
    /// What showed it.
    pub found_by: Vec<Evidence>,
    /// When it was found (unix seconds).
    pub detected_at: i64,
    /// The accounts treated as restored.
    pub accounts: Vec<String>,
    /// Sessions marked for a rebuild (and suspect): the next message to each device starts a
    /// new session, and what decrypts on the old one is refused as a possible replay.
    pub sessions_to_rebuild: u64,
    /// One-time prekeys retired (private keys deleted) and replaced by a fresh pool.
    pub prekeys_retired: u64,
}

/// What [`inspect`] found: the generation the next one must exceed, and whether (and which
/// accounts) the database must be treated as restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The higher of the database's and the record's generations.
    pub floor: u64,
    /// The database's generation.
    pub database_generation: u64,
    /// The record's generation, if any.
    pub recorded_generation: Option<u64>,
    /// Why the database (or some of its accounts) is an older copy; empty if it is not.
    pub found_by: Vec<Evidence>,
    /// Whether every account is affected (the record says the whole file is older); else only
    /// `stamped`.
    pub all_accounts: bool,
    /// Accounts carrying the restored-copy stamp.
    pub stamped: Vec<i64>,
}

impl Inspection {
    /// Whether anything must be treated.
    pub fn found(&self) -> bool {
        self.all_accounts || !self.stamped.is_empty()
    }
}

/// `<db>.generation`.
pub fn file_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".generation");
    PathBuf::from(p)
}

/// A session row named by the record: its mark, and its key (the JID and namespace only as a
/// digest, so that the record has a fixed size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamedRow {
    /// The row's mark when it was recorded.
    pub mark: u64,
    /// `account_id`.
    pub account_id: i64,
    /// `device_id`.
    pub device_id: u32,
    /// [`key_digest`] of its namespace and JID.
    pub key: [u8; 16],
}

/// One state of the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Counts the writes: of the two slots, the valid one with the higher count is current.
    pub seq: u64,
    /// `meta.generation`.
    pub generation: u64,
    /// `meta.session_deletions`.
    pub deletions: u64,
    /// A session row written by the last recorded commit, if it wrote one that still exists.
    pub row: Option<NamedRow>,
}

/// What the file beside the database holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// No file.
    Nothing,
    /// The file of schema 3 and 4: the generation as text.
    Generation(u64),
    /// A record.
    Record(Record),
    /// A file with neither a valid slot nor a number.
    Unreadable,
}

/// Digest of a session row's namespace and JID, as the record names it.
pub fn key_digest(namespace: &str, jid: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"omemod session key v1");
    for part in [namespace.as_bytes(), jid.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

const MAGIC: &[u8; 8] = b"omemodR1";
/// Bytes of one encoded slot.
const SLOT_LEN: usize = 88;
/// Slot `i` starts at `i * SLOT_STRIDE`: each in its own disk sector, so a torn write can spoil
/// only the slot being written.
const SLOT_STRIDE: u64 = 512;
/// Bytes of the file.
const FILE_LEN: usize = 2 * SLOT_STRIDE as usize;

fn checksum(bytes: &[u8]) -> [u8; 16] {
    let d = Sha256::digest(bytes);
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

impl Record {
    /// The record of a start: nothing named yet.
    pub fn at_start(generation: u64, deletions: u64) -> Record {
        Record {
            seq: 1,
            generation,
            deletions,
            row: None,
        }
    }

    fn encode(&self) -> [u8; SLOT_LEN] {
        let mut b = [0u8; SLOT_LEN];
        b[0..8].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.generation.to_le_bytes());
        b[24..32].copy_from_slice(&self.deletions.to_le_bytes());
        if let Some(r) = &self.row {
            b[32..40].copy_from_slice(&r.mark.to_le_bytes());
            b[40..48].copy_from_slice(&r.account_id.to_le_bytes());
            b[48..52].copy_from_slice(&r.device_id.to_le_bytes());
            b[52] = 1;
            b[56..72].copy_from_slice(&r.key);
        }
        let sum = checksum(&b[..72]);
        b[72..88].copy_from_slice(&sum);
        b
    }

    fn decode(b: &[u8]) -> Option<Record> {
        let b = b.get(..SLOT_LEN)?;
        if &b[0..8] != MAGIC || b[72..88] != checksum(&b[..72]) {
            return None;
        }
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let row = (b[52] == 1).then(|| {
            let mut key = [0u8; 16];
            key.copy_from_slice(&b[56..72]);
            let mut device = [0u8; 4];
            device.copy_from_slice(&b[48..52]);
            NamedRow {
                mark: u64_at(32),
                account_id: i64::from_le_bytes(u64_at(40).to_le_bytes()),
                device_id: u32::from_le_bytes(device),
                key,
            }
        });
        Some(Record {
            seq: u64_at(8),
            generation: u64_at(16),
            deletions: u64_at(24),
            row,
        })
    }
}

/// Reads the file beside the database.
pub fn read_record(db: &Path) -> Recorded {
    let Ok(bytes) = std::fs::read(file_path(db)) else {
        return Recorded::Nothing;
    };
    if let Some(g) = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return Recorded::Generation(g);
    }
    let slot = |i: u64| {
        let start = usize::try_from(i * SLOT_STRIDE).unwrap_or(usize::MAX);
        bytes.get(start..).and_then(Record::decode)
    };
    match (slot(0), slot(1)) {
        (Some(a), Some(b)) => Recorded::Record(if a.seq >= b.seq { a } else { b }),
        (Some(r), None) | (None, Some(r)) => Recorded::Record(r),
        (None, None) => Recorded::Unreadable,
    }
}

/// The record beside the database, open for the writer: each write goes to the slot not
/// holding the current record, with one `pwrite` (no rename, no fsync: it reaches the page cache,
/// which a crash of the process does not lose; [`RecordSync`] flushes it to the disk).
#[derive(Debug)]
pub struct RecordFile {
    file: File,
    path: PathBuf,
    /// The slot the next write goes to.
    next_slot: u64,
    /// Written since the last flush.
    dirty: Arc<AtomicBool>,
}

/// Flushes the record to the disk (from another thread than the writer's).
#[derive(Debug)]
pub struct RecordSync {
    file: File,
    path: PathBuf,
    dirty: Arc<AtomicBool>,
}

impl RecordFile {
    /// Replaces the file by one holding `record` in both slots (a new file, synced, renamed
    /// into place) and opens it.
    pub fn create(db: &Path, record: &Record) -> Result<RecordFile> {
        let path = file_path(db);
        let tmp = {
            let mut p = path.as_os_str().to_owned();
            p.push(".tmp");
            PathBuf::from(p)
        };
        let mut bytes = vec![0u8; FILE_LEN];
        let slot = record.encode();
        bytes[..SLOT_LEN].copy_from_slice(&slot);
        let second = SLOT_STRIDE as usize;
        bytes[second..second + SLOT_LEN].copy_from_slice(&slot);
        let open = |p: &Path, create: bool| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(create)
                .truncate(create)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(p)
        };
        let mut f = open(&tmp, true).map_err(io_err("writing", &tmp))?;
        f.write_all(&bytes).map_err(io_err("writing", &tmp))?;
        f.sync_all().map_err(io_err("syncing", &tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io_err("moving into place", &path))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("syncing", dir))?;
        }
        let file = open(&path, false).map_err(io_err("opening", &path))?;
        Ok(RecordFile {
            file,
            path,
            next_slot: 1,
            dirty: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The file opened read-only, so that every write fails (tests of that failure).
    #[cfg(test)]
    pub(crate) fn read_only(db: &Path) -> std::io::Result<RecordFile> {
        let path = file_path(db);
        Ok(RecordFile {
            file: File::open(&path)?,
            path,
            next_slot: 1,
            dirty: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Writes `record` over the older slot.
    pub fn write(&mut self, record: &Record) -> std::io::Result<()> {
        self.file
            .write_all_at(&record.encode(), self.next_slot * SLOT_STRIDE)?;
        self.next_slot ^= 1;
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Flushes the file to the disk.
    pub fn sync(&self) -> std::io::Result<()> {
        self.dirty.store(false, Ordering::Release);
        self.file.sync_data()
    }

    /// A handle that flushes this file to the disk.
    pub fn syncer(&self) -> Result<RecordSync> {
        Ok(RecordSync {
            file: self
                .file
                .try_clone()
                .map_err(io_err("opening", &self.path))?,
            path: self.path.clone(),
            dirty: Arc::clone(&self.dirty),
        })
    }
}

impl RecordSync {
    /// `fdatasync` if the record was written since the last call.
    pub fn sync(&self) -> Result<()> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        self.file.sync_data().map_err(|e| {
            self.dirty.store(true, Ordering::Release);
            io_err("syncing", &self.path)(e)
        })
    }
}

fn has_table(conn: &Connection, table: &str) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [table],
        |r| r.get(0),
    )?)
}

fn has_column(conn: &Connection, table: &str, column: &str) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
        [table, column],
        |r| r.get(0),
    )?)
}

/// A `meta` value (0 if the table or the key does not exist yet).
fn meta_value(conn: &Connection, key: &str) -> Result<u64> {
    if !has_table(conn, "meta")? {
        return Ok(0);
    }
    let v: Option<i64> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?;
    Ok(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(0))
}

/// The database's generation.
pub fn read(conn: &Connection) -> Result<u64> {
    meta_value(conn, "generation")
}

/// Session rows deleted so far (`meta.session_deletions`).
pub fn deletions(conn: &Connection) -> Result<u64> {
    meta_value(conn, "session_deletions")
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

/// The mark of the session row `row` names, if the row exists (schema-tolerant: a database from
/// before marks has none).
fn named_mark(conn: &Connection, row: &NamedRow) -> Result<Option<u64>> {
    if !has_column(conn, "sessions", "mark")? {
        return Ok(None);
    }
    let mut st = conn.prepare(
        "SELECT namespace, jid, mark FROM sessions WHERE account_id = ?1 AND device_id = ?2",
    )?;
    let rows = st.query_map(
        rusqlite::params![row.account_id, i64::from(row.device_id)],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        },
    )?;
    for r in rows {
        let (namespace, jid, mark) = r?;
        if key_digest(&namespace, &jid) == row.key {
            return Ok(Some(u64::try_from(mark).unwrap_or(0)));
        }
    }
    Ok(None)
}

/// Compares the database (read before its migrations, so that nothing has changed it yet) with
/// the record beside it and looks for stamped accounts.
pub fn inspect(conn: &Connection, db: &Path) -> Result<Inspection> {
    let database_generation = read(conn)?;
    let accounts = if has_table(conn, "accounts")? {
        conn.query_row("SELECT count(*) FROM accounts", [], |r| r.get::<_, i64>(0))?
    } else {
        0
    };
    let stamped: Vec<i64> = if accounts > 0 && has_column(conn, "accounts", "restored_copy")? {
        conn.prepare("SELECT id FROM accounts WHERE restored_copy = 1 ORDER BY id")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?
    } else {
        Vec::new()
    };
    let recorded = read_record(db);
    let (recorded_generation, older) = match &recorded {
        Recorded::Nothing => (None, None),
        Recorded::Unreadable => {
            tracing::warn!(file = %file_path(db).display(), "the generation record is unreadable; \
                           an older copy of the database cannot be noticed this time");
            (None, None)
        }
        Recorded::Generation(g) => (
            Some(*g),
            (*g > database_generation).then_some(Evidence::Generation),
        ),
        Recorded::Record(r) => (
            Some(r.generation),
            older_than(conn, database_generation, r)?,
        ),
    };
    // A database without accounts has nothing to protect (e.g. one deleted to start over).
    let older = older.filter(|_| accounts > 0);
    let mut found_by: Vec<Evidence> = older.into_iter().collect();
    if !stamped.is_empty() {
        found_by.push(Evidence::RestoredCopy);
    }
    Ok(Inspection {
        floor: database_generation.max(recorded_generation.unwrap_or(0)),
        database_generation,
        recorded_generation,
        found_by,
        all_accounts: older.is_some(),
        stamped,
    })
}

/// Whether the database is older than the record `r`, and what shows it.
fn older_than(conn: &Connection, generation: u64, r: &Record) -> Result<Option<Evidence>> {
    if generation != r.generation {
        return Ok((generation < r.generation).then_some(Evidence::Generation));
    }
    let deletions = deletions(conn)?;
    if deletions != r.deletions {
        return Ok((deletions < r.deletions).then_some(Evidence::Deletions));
    }
    let Some(row) = &r.row else {
        return Ok(None);
    };
    Ok(match named_mark(conn, row)? {
        Some(mark) if mark >= row.mark => None,
        _ => Some(Evidence::SessionMark),
    })
}

/// Stamps every account of the database as a restored copy (in a backup, or in the database a
/// restore puts in place).
pub fn stamp(conn: &Connection) -> Result<usize> {
    Ok(conn.execute("UPDATE accounts SET restored_copy = 1", [])?)
}

/// Stamps the accounts `inspection` found to be older copies, if the schema has the stamp yet:
/// until they are treated, every start finds them again (whatever changes the file meanwhile).
pub fn remember(conn: &Connection, inspection: &Inspection) -> Result<()> {
    if !inspection.found() || !has_column(conn, "accounts", "restored_copy")? {
        return Ok(());
    }
    if inspection.all_accounts {
        stamp(conn)?;
    }
    for id in &inspection.stamped {
        conn.execute("UPDATE accounts SET restored_copy = 1 WHERE id = ?1", [id])?;
    }
    Ok(())
}

/// Clears the stamp of an account (in the transaction that treats it).
pub fn clear_stamp(conn: &Connection, account_id: i64) -> Result<()> {
    conn.prepare_cached("UPDATE accounts SET restored_copy = 0 WHERE id = ?1")?
        .execute([account_id])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::storage::migrations::migrate(&mut conn, crate::storage::migrations::MIGRATIONS)
            .unwrap();
        conn.execute(
            "INSERT INTO accounts (jid, device_id, created_at) VALUES ('a@x', 1, 0)",
            [],
        )
        .unwrap();
        conn
    }

    fn session(conn: &Connection, jid: &str, mark: i64) {
        conn.execute(
            "INSERT INTO sessions (account_id, jid, namespace, device_id, state, state_format, \
             identity_key, initiated_by, confirmed, created_at, updated_at, mark) \
             VALUES (1, ?1, 'urn:xmpp:omemo:2', 7, x'00', 1, zeroblob(32), 'us', 0, 0, 0, ?2) \
             ON CONFLICT DO UPDATE SET mark = excluded.mark",
            rusqlite::params![jid, mark],
        )
        .unwrap();
    }

    fn named(jid: &str, mark: u64) -> Option<NamedRow> {
        Some(NamedRow {
            mark,
            account_id: 1,
            device_id: 7,
            key: key_digest("urn:xmpp:omemo:2", jid),
        })
    }

    #[test]
    fn slots_round_trip_and_a_torn_one_is_ignored() {
        let r = Record {
            seq: 9,
            generation: 4,
            deletions: 2,
            row: named("b@x", (4 << 32) | 17),
        };
        assert_eq!(Record::decode(&r.encode()), Some(r));
        let mut torn = r.encode();
        torn[20] ^= 1;
        assert_eq!(Record::decode(&torn), None);
        let none = Record::at_start(5, 0);
        assert_eq!(Record::decode(&none.encode()), Some(none));
    }

    #[test]
    fn the_file_keeps_the_newest_valid_slot_and_reads_the_old_text_form() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        assert_eq!(read_record(&db), Recorded::Nothing);
        std::fs::write(file_path(&db), "11\n").unwrap();
        assert_eq!(read_record(&db), Recorded::Generation(11));
        let first = Record::at_start(12, 0);
        let mut f = RecordFile::create(&db, &first).unwrap();
        assert_eq!(read_record(&db), Recorded::Record(first));
        let second = Record {
            seq: 2,
            row: named("b@x", 3),
            ..first
        };
        f.write(&second).unwrap();
        assert_eq!(read_record(&db), Recorded::Record(second));
        let third = Record { seq: 3, ..second };
        f.write(&third).unwrap();
        assert_eq!(read_record(&db), Recorded::Record(third));
        // A torn write of the slot being written leaves the other one.
        let mut bytes = std::fs::read(file_path(&db)).unwrap();
        bytes[30] ^= 0xff; // slot 0 holds `third` (writes alternate, starting with slot 1)
        std::fs::write(file_path(&db), &bytes).unwrap();
        assert_eq!(read_record(&db), Recorded::Record(second));
        f.syncer().unwrap().sync().unwrap();
        std::fs::write(file_path(&db), b"\x01garbage").unwrap();
        assert_eq!(read_record(&db), Recorded::Unreadable);
    }

    fn verdict(conn: &Connection, db: &Path, r: Record) -> Vec<Evidence> {
        let _ = RecordFile::create(db, &r).unwrap();
        inspect(conn, db).unwrap().found_by
    }

    #[test]
    fn older_generation_deletions_or_row_is_a_copy_newer_is_a_lagging_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let conn = db();
        bump(&conn, 4).unwrap(); // generation 5
        session(&conn, "b@x", (5 << 32) | 3);
        let at = |generation, deletions, row| Record {
            seq: 1,
            generation,
            deletions,
            row,
        };
        assert!(verdict(&conn, &path, at(5, 0, named("b@x", (5 << 32) | 3))).is_empty());
        // The record lags the database (a commit whose record was never written).
        assert!(verdict(&conn, &path, at(4, 9, None)).is_empty());
        assert!(verdict(&conn, &path, at(5, 0, named("b@x", (5 << 32) | 2))).is_empty());
        // The database is older.
        assert_eq!(
            verdict(&conn, &path, at(6, 0, None)),
            [Evidence::Generation]
        );
        assert_eq!(verdict(&conn, &path, at(5, 1, None)), [Evidence::Deletions]);
        assert_eq!(
            verdict(&conn, &path, at(5, 0, named("b@x", (5 << 32) | 4))),
            [Evidence::SessionMark]
        );
        assert_eq!(
            verdict(&conn, &path, at(5, 0, named("c@x", 1))),
            [Evidence::SessionMark]
        );
        // A deletion counts (the trigger), so a deleted named row is no rollback.
        conn.execute("DELETE FROM sessions", []).unwrap();
        assert_eq!(deletions(&conn).unwrap(), 1);
        assert!(verdict(&conn, &path, at(5, 0, named("b@x", (5 << 32) | 3))).is_empty());
        // Stamps, and the old text form.
        stamp(&conn).unwrap();
        let i = inspect(&conn, &path).unwrap();
        assert_eq!(
            (i.found_by, i.all_accounts, i.stamped),
            (vec![Evidence::RestoredCopy], false, vec![1])
        );
        clear_stamp(&conn, 1).unwrap();
        std::fs::write(file_path(&path), "6\n").unwrap();
        let i = inspect(&conn, &path).unwrap();
        assert_eq!((i.found_by, i.floor), (vec![Evidence::Generation], 6));
    }

    #[test]
    fn a_database_without_accounts_or_tables_is_never_older() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        std::fs::write(file_path(&path), "6\n").unwrap();
        let empty = Connection::open_in_memory().unwrap();
        let i = inspect(&empty, &path).unwrap();
        assert!(!i.found() && i.found_by.is_empty());
        assert_eq!(i.floor, 6);
    }

    #[test]
    fn bump_never_goes_below_the_floor() {
        let conn = db();
        assert_eq!(read(&conn).unwrap(), 0);
        assert_eq!(bump(&conn, 0).unwrap(), 1);
        assert_eq!(bump(&conn, 10).unwrap(), 11);
    }
}
