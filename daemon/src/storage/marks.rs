//! The writer's side of [`super::generation`]: every session row a batch writes carries the
//! batch's *mark*, `(generation << 32) | batch`, a number that only grows (the generation is
//! bumped at every start, and when the batch count of one generation runs out); after a batch
//! that wrote or deleted session rows has committed, and before anyone learns its outcome, the
//! record beside the database names one of the rows it wrote.
//!
//! The rows are not told about by the code that writes them: SQLite's update hook reports every
//! row the write connection changes ([`Tracker`]), and the mark is a SQL function of that
//! connection ([`BATCH_MARK_SQL`]), so no write of a session row can miss either. No extra page
//! is written per commit: the mark rides in the row already written.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use rusqlite::functions::FunctionFlags;
use rusqlite::hooks::Action;
use rusqlite::{Connection, OptionalExtension};

use super::generation::{self, key_digest, NamedRow, Record, RecordFile};

/// What the session upsert stores as the row's mark.
pub const BATCH_MARK_SQL: &str = "omemod_batch_mark()";
const FUNCTION: &str = "omemod_batch_mark";
/// No row.
const NONE: i64 = i64::MIN;
/// Batches of one generation: the low half of a mark.
const BATCHES_PER_GENERATION: u64 = u32::MAX as u64;

/// What the write connection saw during the current batch, and the batch's mark. Shared with
/// the SQLite callbacks (which run on the writer's thread, inside the batch's statements).
#[derive(Debug)]
pub(crate) struct Tracker {
    /// [`BATCH_MARK_SQL`]'s value: the current batch's mark (0 until the record is attached).
    mark: AtomicI64,
    /// Row id of the session row written last, [`NONE`] if none (or it was deleted since).
    written: AtomicI64,
    /// A session row was deleted or `meta` changed: the counters must be read again.
    counters_changed: AtomicBool,
}

/// The tracker's state before a job, to go back to if the job is rolled back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Saved {
    written: i64,
    counters_changed: bool,
}

impl Tracker {
    /// Registers the mark function and the update hook on the write connection.
    pub(crate) fn install(conn: &Connection) -> rusqlite::Result<Arc<Tracker>> {
        let t = Arc::new(Tracker {
            mark: AtomicI64::new(0),
            written: AtomicI64::new(NONE),
            counters_changed: AtomicBool::new(false),
        });
        let f = Arc::clone(&t);
        conn.create_scalar_function(
            FUNCTION,
            0,
            FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DIRECTONLY,
            move |_| Ok(f.mark.load(Ordering::Relaxed)),
        )?;
        let h = Arc::clone(&t);
        conn.update_hook(Some(
            move |action: Action, _db: &str, table: &str, rowid: i64| {
                h.observe(action, table, rowid)
            },
        ));
        Ok(t)
    }

    fn observe(&self, action: Action, table: &str, rowid: i64) {
        match (table, action) {
            ("sessions", Action::SQLITE_DELETE) => {
                let _ = self.written.compare_exchange(
                    rowid,
                    NONE,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                self.counters_changed.store(true, Ordering::Relaxed);
            }
            ("sessions", _) => self.written.store(rowid, Ordering::Relaxed),
            ("meta", _) => self.counters_changed.store(true, Ordering::Relaxed),
            _ => {}
        }
    }

    /// A new batch with `mark`.
    fn start(&self, mark: i64) {
        self.mark.store(mark, Ordering::Relaxed);
        self.written.store(NONE, Ordering::Relaxed);
        self.counters_changed.store(false, Ordering::Relaxed);
    }

    /// Before a job.
    pub(crate) fn save(&self) -> Saved {
        Saved {
            written: self.written.load(Ordering::Relaxed),
            counters_changed: self.counters_changed.load(Ordering::Relaxed),
        }
    }

    /// After a job was rolled back: what it did is undone.
    pub(crate) fn restore(&self, s: Saved) {
        self.written.store(s.written, Ordering::Relaxed);
        self.counters_changed
            .store(s.counters_changed, Ordering::Relaxed);
    }
}

/// The record and the writer's place in it, once the daemon attached it.
#[derive(Debug)]
pub(crate) struct Guard {
    file: RecordFile,
    /// The record as last written.
    last: Record,
    /// Batches of `last.generation` so far.
    batches: u64,
    /// The record could not be written: no later batch is committed (what they would protect
    /// could not be noticed after a restore), until a restart writes the record afresh.
    broken: Option<Arc<std::io::Error>>,
}

/// What a batch will record, decided before its COMMIT.
#[derive(Debug)]
pub(crate) struct Sealed {
    record: Record,
    batches: u64,
}

impl Guard {
    /// Starts marking with `last`, the record just written at start.
    pub(crate) fn new(file: RecordFile, last: Record) -> Guard {
        Guard {
            file,
            last,
            batches: 0,
            broken: None,
        }
    }

    /// Why no batch may be committed any more, if the record could not be written.
    pub(crate) fn broken(&self) -> Option<&Arc<std::io::Error>> {
        self.broken.as_ref()
    }

    /// In the batch's transaction, before its jobs: gives the batch its mark (a new generation
    /// when this one's batches ran out). Returns the generation and batch count it uses.
    pub(crate) fn begin(
        &self,
        conn: &Connection,
        tracker: &Tracker,
    ) -> rusqlite::Result<(u64, u64)> {
        let (mut generation, mut batches) = (self.last.generation, self.batches + 1);
        if batches > BATCHES_PER_GENERATION {
            generation = generation::bump(conn, 0).map_err(to_sqlite)?;
            batches = 1;
        }
        tracker.start(mark(generation, batches));
        Ok((generation, batches))
    }

    /// In the batch's transaction, after its jobs succeeded: what the record must say after
    /// COMMIT (`None`: nothing it names changed).
    pub(crate) fn seal(
        &self,
        conn: &Connection,
        tracker: &Tracker,
        (generation, batches): (u64, u64),
    ) -> rusqlite::Result<Option<Sealed>> {
        let mut record = Record {
            generation,
            ..self.last
        };
        let mut changed = generation != self.last.generation;
        if tracker.counters_changed.load(Ordering::Relaxed) {
            let deletions = generation::deletions(conn).map_err(to_sqlite)?;
            if deletions != record.deletions {
                // The row named so far may be the one deleted.
                record.deletions = deletions;
                record.row = None;
                changed = true;
            }
        }
        let written = tracker.written.load(Ordering::Relaxed);
        if written != NONE {
            let m = mark(generation, batches);
            if let Some(row) = named(conn, written, m)? {
                record.row = Some(row);
                changed = true;
            }
        }
        Ok(changed.then(|| Sealed {
            record: Record {
                seq: record.seq.wrapping_add(1),
                ..record
            },
            batches,
        }))
    }

    /// After COMMIT: writes what the batch sealed. Before this returns nobody learns the
    /// batch's outcome. If the write fails, the guard is broken: this batch's outcome and every
    /// later batch are refused.
    pub(crate) fn record(&mut self, sealed: Sealed) -> Result<(), Arc<std::io::Error>> {
        self.last = sealed.record;
        self.batches = sealed.batches;
        self.file.write(&self.last).map_err(|e| {
            let e = Arc::new(e);
            self.broken = Some(Arc::clone(&e));
            e
        })
    }

    /// When the writer stops: the record reaches the disk.
    pub(crate) fn close(self) {
        if let Err(e) = self.file.sync() {
            tracing::warn!(error = %e, "cannot flush the generation record");
        }
    }

    /// After a batch that recorded nothing committed: its mark is used up all the same (its
    /// rows may carry it).
    pub(crate) fn skip(&mut self, (generation, batches): (u64, u64)) {
        if generation == self.last.generation {
            self.batches = batches;
        }
    }
}

/// The mark of batch `batches` of `generation`.
fn mark(generation: u64, batches: u64) -> i64 {
    // Generations stay far below 2^31 (one per start); saturate rather than wrap.
    i64::try_from((generation << 32) | batches).unwrap_or(i64::MAX)
}

/// The session row `rowid` as the record names it, if it carries mark `m` (the batch wrote it
/// through the upsert).
fn named(conn: &Connection, rowid: i64, m: i64) -> rusqlite::Result<Option<NamedRow>> {
    let row = conn
        .prepare_cached(
            "SELECT account_id, device_id, namespace, jid, mark FROM sessions WHERE rowid = ?1",
        )?
        .query_row([rowid], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })
        .optional()?;
    Ok(
        row.and_then(|(account_id, device_id, namespace, jid, mark)| {
            (mark == m).then(|| NamedRow {
                mark: u64::try_from(m).unwrap_or(0),
                account_id,
                device_id: u32::try_from(device_id).unwrap_or(0),
                key: key_digest(&namespace, &jid),
            })
        }),
    )
}

fn to_sqlite(e: super::StorageError) -> rusqlite::Error {
    match e {
        super::StorageError::Sqlite(e) => e,
        other => rusqlite::Error::ToSqlConversionFailure(Box::new(std::io::Error::other(
            other.to_string(),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> (Connection, Arc<Tracker>) {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::storage::migrations::migrate(&mut conn, crate::storage::migrations::MIGRATIONS)
            .unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        conn.execute(
            "INSERT INTO accounts (jid, device_id, created_at) VALUES ('a@x', 1, 0)",
            [],
        )
        .unwrap();
        let t = Tracker::install(&conn).unwrap();
        (conn, t)
    }

    fn upsert(conn: &Connection, device: i64) {
        conn.execute(
            &format!(
                "INSERT INTO sessions (account_id, jid, namespace, device_id, state, state_format, \
                 identity_key, initiated_by, confirmed, created_at, updated_at, mark) \
                 VALUES (1, 'b@x', 'urn:xmpp:omemo:2', ?1, x'00', 1, zeroblob(32), 'us', 0, 0, 0, \
                 {BATCH_MARK_SQL}) ON CONFLICT DO UPDATE SET mark = excluded.mark"
            ),
            [device],
        )
        .unwrap();
    }

    #[test]
    fn the_hook_sees_writes_deletions_by_trigger_and_cascade_and_rollbacks() {
        let (conn, t) = conn();
        t.start(mark(3, 1));
        upsert(&conn, 7);
        assert_ne!(t.written.load(Ordering::Relaxed), NONE);
        assert!(!t.counters_changed.load(Ordering::Relaxed));
        let stored: i64 = conn
            .query_row("SELECT mark FROM sessions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, mark(3, 1));
        // A job rolled back takes its observations with it.
        let saved = t.save();
        conn.execute_batch("SAVEPOINT j").unwrap();
        conn.execute("DELETE FROM sessions WHERE device_id = 7", [])
            .unwrap();
        assert_eq!(t.written.load(Ordering::Relaxed), NONE);
        assert!(t.counters_changed.load(Ordering::Relaxed));
        conn.execute_batch("ROLLBACK TO j; RELEASE j").unwrap();
        t.restore(saved);
        assert_ne!(t.written.load(Ordering::Relaxed), NONE);
        // Deleting the account deletes the session by cascade: the trigger counts it and the
        // hook sees it.
        t.start(mark(3, 2));
        conn.execute("DELETE FROM accounts", []).unwrap();
        assert_eq!(generation::deletions(&conn).unwrap(), 1);
        assert!(t.counters_changed.load(Ordering::Relaxed));
        assert_eq!(t.written.load(Ordering::Relaxed), NONE);
    }

    #[test]
    fn a_batch_names_a_row_it_wrote_and_forgets_one_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        let (conn, t) = conn();
        let first = Record::at_start(3, 0);
        let mut g = Guard::new(RecordFile::create(&db, &first).unwrap(), first);
        // A batch that writes a session names it with its mark.
        let m = g.begin(&conn, &t).unwrap();
        upsert(&conn, 7);
        let sealed = g.seal(&conn, &t, m).unwrap().expect("a row to name");
        g.record(sealed).unwrap();
        let named = g.last.row.expect("named");
        assert_eq!((named.mark, named.device_id), ((3 << 32) | 1, 7));
        assert_eq!(
            generation::read_record(&db),
            generation::Recorded::Record(g.last)
        );
        // A batch that writes nothing records nothing, but uses its mark up.
        let m = g.begin(&conn, &t).unwrap();
        assert!(g.seal(&conn, &t, m).unwrap().is_none());
        g.skip(m);
        let m = g.begin(&conn, &t).unwrap();
        assert_eq!(m, (3, 3));
        // A batch that deletes the named row names none, with the new count.
        conn.execute("DELETE FROM sessions", []).unwrap();
        let sealed = g.seal(&conn, &t, m).unwrap().expect("deletion recorded");
        g.record(sealed).unwrap();
        assert_eq!((g.last.deletions, g.last.row), (1, None));
    }

    #[test]
    fn a_record_that_cannot_be_written_breaks_the_guard() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        let (conn, t) = conn();
        let first = Record::at_start(3, 0);
        drop(RecordFile::create(&db, &first).unwrap());
        let mut g = Guard::new(RecordFile::read_only(&db).unwrap(), first);
        assert!(g.broken().is_none());
        let m = g.begin(&conn, &t).unwrap();
        upsert(&conn, 7);
        let sealed = g.seal(&conn, &t, m).unwrap().expect("a row to name");
        assert!(g.record(sealed).is_err());
        assert!(g.broken().is_some());
        // The file still holds the start's record.
        assert_eq!(
            generation::read_record(&db),
            generation::Recorded::Record(first)
        );
    }

    #[test]
    fn a_generation_whose_batches_ran_out_gives_way_to_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        let (conn, t) = conn();
        let g0 = generation::bump(&conn, 0).unwrap();
        let first = Record::at_start(g0, 0);
        let mut g = Guard::new(RecordFile::create(&db, &first).unwrap(), first);
        g.batches = BATCHES_PER_GENERATION;
        let m = g.begin(&conn, &t).unwrap();
        assert_eq!(m, (g0 + 1, 1));
        let sealed = g
            .seal(&conn, &t, m)
            .unwrap()
            .expect("new generation recorded");
        g.record(sealed).unwrap();
        assert_eq!(g.last.generation, g0 + 1);
        assert_eq!(generation::read(&conn).unwrap(), g0 + 1);
        assert!(mark(g0 + 1, 1) > mark(g0, BATCHES_PER_GENERATION));
    }
}
