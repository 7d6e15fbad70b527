//! Group commit on the one write connection, led by whoever is waiting.
//!
//! Jobs go into one queue in call order. A *leader* takes every queued job (up to
//! [`MAX_BATCH`]) and runs them in ONE transaction, each inside its own SAVEPOINT. A job that
//! fails (or panics) rolls back only its savepoint and gets its own error. After COMMIT
//! succeeded every job gets its result; if COMMIT fails every job gets the batch error.
//! Concurrent requests therefore share one commit.
//!
//! Who leads depends on the durability:
//! * `NORMAL` (a commit is a WAL append, ~10 µs, no fsync): the first waiting request leads on
//!   its own thread. An async request first yields once, so every request the runtime can
//!   already run joins the batch; there is no hand-off to another thread and back.
//! * `FULL` (a commit waits for an fsync): async requests hand the batch to the writer thread,
//!   so the single runtime thread keeps reading and preparing the next batch during the fsync.
//! * Blocking callers (CLI, tests) lead on their own thread under both.
//!
//! The writer thread also leads whenever jobs are queued and nobody else will: a leader hands
//! over after one batch if more arrived meanwhile, a dropped future never leaves its job
//! behind, and `close` waits for the queue to drain.
//!
//! Once the daemon attached the record beside the database ([`super::marks`]), a batch that
//! wrote or deleted session rows writes it after COMMIT and before any job learns its outcome.

use std::mem;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use rusqlite::Connection;

use super::Db;

use super::error::{Result, StorageError};
use super::marks::{Guard, Sealed, Tracker};

/// Most jobs committed together.
pub const MAX_BATCH: usize = 256;

/// Where a job's result goes.
pub(crate) enum Reply<T> {
    /// An awaiting future.
    Async(tokio::sync::oneshot::Sender<Result<T>>),
    /// A blocked thread.
    Blocking(std::sync::mpsc::SyncSender<Result<T>>),
}

impl<T> Reply<T> {
    pub(crate) fn send(self, r: Result<T>) {
        // The receiver may have given up (dropped future); the work is done either way.
        match self {
            Reply::Async(tx) => {
                let _ = tx.send(r);
            }
            Reply::Blocking(tx) => {
                let _ = tx.send(r);
            }
        }
    }
}

/// Why a batch's jobs get an error instead of their results.
#[derive(Debug, Clone)]
pub(crate) enum BatchFailure {
    /// The batch was not committed.
    NotCommitted(Arc<rusqlite::Error>),
    /// It was committed, but the record beside the database could not be written: the outcome
    /// is not given out, as the record would not protect it.
    Unrecorded(Arc<std::io::Error>),
}

/// A type-erased write job.
pub(crate) trait WriteJob: Send {
    /// Runs the closure inside the open transaction; `true` if it succeeded.
    fn run(&mut self, conn: &Db) -> bool;
    /// Delivers the result. `batch_error` is set if the batch as a whole failed.
    fn finish(self: Box<Self>, batch_error: Option<&BatchFailure>);
}

pub(crate) struct TypedJob<T, F> {
    f: Option<F>,
    result: Option<Result<T>>,
    reply: Reply<T>,
}

impl<T, F> TypedJob<T, F> {
    pub(crate) fn new(f: F, reply: Reply<T>) -> Self {
        Self {
            f: Some(f),
            result: None,
            reply,
        }
    }
}

impl<T, F> WriteJob for TypedJob<T, F>
where
    T: Send,
    F: FnOnce(&Db) -> Result<T> + Send,
{
    fn run(&mut self, conn: &Db) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        let r =
            catch_unwind(AssertUnwindSafe(|| f(conn))).unwrap_or(Err(StorageError::JobPanicked));
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn finish(self: Box<Self>, batch_error: Option<&BatchFailure>) {
        let r = match (self.result, batch_error) {
            // A job's own failure is the more useful error.
            (Some(Err(e)), _) => Err(e),
            (_, Some(BatchFailure::NotCommitted(e))) => Err(StorageError::Batch(Arc::clone(e))),
            (_, Some(BatchFailure::Unrecorded(e))) => Err(StorageError::Unrecorded(Arc::clone(e))),
            (Some(Ok(v)), None) => Ok(v),
            (None, None) => Err(StorageError::Closed),
        };
        self.reply.send(r);
    }
}

/// Counters of the writer, for tests and diagnostics.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub batches: AtomicU64,
    /// Jobs run.
    pub jobs: AtomicU64,
    /// Largest batch so far.
    pub max_batch: AtomicU64,
    /// Batches led by a waiting caller on its own thread (the rest ran on the writer thread).
    pub inline_batches: AtomicU64,
    /// Checkpoints the writer ran itself (the log outgrew the threshold by half).
    pub checkpoints: AtomicU64,
}

/// What the writer tells the checkpointer.
pub(crate) struct CheckpointSignal {
    /// Set after every commit.
    pub dirty: Arc<AtomicBool>,
    /// Woken when the WAL file grew past the threshold.
    pub wake: SyncSender<()>,
    /// Path of the `-wal` file.
    pub wal_path: PathBuf,
    /// WAL size (bytes) that triggers a checkpoint request.
    pub threshold_bytes: u64,
}

/// The write connection and what goes with it; only the current leader locks it.
struct Conn {
    conn: Db,
    /// What the connection's callbacks saw of the current batch.
    tracker: Arc<Tracker>,
    /// The record beside the database, once attached.
    guard: Option<Guard>,
    signal: CheckpointSignal,
    /// WAL file size at the last look.
    last_len: u64,
    /// Commits so far (for [`STAT_EVERY`]).
    commits: u64,
}

/// Commits between two looks at the size of the WAL file.
const STAT_EVERY: u64 = 16;

#[derive(Default)]
struct Queue {
    jobs: Vec<Box<dyn WriteJob>>,
    /// Someone is running (or about to run) a batch; jobs queued now are theirs.
    leading: bool,
    /// No new jobs; the writer thread exits once the queue is empty and nobody leads.
    closed: bool,
    /// The writer thread is waiting on `Shared::wake`.
    writer_idle: bool,
    /// The writer thread should lead: queued jobs have nobody else to run them. Without it
    /// the writer leaves jobs alone, so it never takes one from a request about to lead.
    want_writer: bool,
}

/// Shared by the store, its futures and the writer thread.
pub(crate) struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    conn: Mutex<Option<Conn>>,
    stats: Arc<WriterStats>,
    /// Async callers lead on their own thread (NORMAL); otherwise the writer thread does.
    async_inline: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn new(
        (conn, tracker): (Db, Arc<Tracker>),
        signal: CheckpointSignal,
        stats: Arc<WriterStats>,
        async_inline: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            conn: Mutex::new(Some(Conn {
                conn,
                tracker,
                guard: None,
                signal,
                last_len: 0,
                commits: 0,
            })),
            stats,
            async_inline,
        })
    }

    /// From the next batch on, session rows carry marks and `guard`'s record follows them.
    pub(crate) fn attach(&self, guard: Guard) -> Result<()> {
        match lock(&self.conn).as_mut() {
            Some(c) => {
                c.guard = Some(guard);
                Ok(())
            }
            None => Err(StorageError::Closed),
        }
    }

    /// Hands queued jobs nobody leads to the writer thread (waking it if it sleeps); after
    /// `close` also wakes it to exit.
    fn kick(&self, q: &mut Queue) {
        if !q.leading && (!q.jobs.is_empty() || q.closed) {
            q.want_writer = true;
            if q.writer_idle {
                self.wake.notify_one();
            }
        }
    }

    /// Queues a job. With `lead`, returns whether the caller became the leader (and must
    /// then call [`Shared::lead_once`] or drop a [`Leadership`]).
    fn push(&self, job: Box<dyn WriteJob>, lead: bool) -> Result<bool> {
        let mut q = lock(&self.queue);
        if q.closed {
            return Err(StorageError::Closed);
        }
        q.jobs.push(job);
        if lead && !q.leading {
            q.leading = true;
            return Ok(true);
        }
        self.kick(&mut q);
        Ok(false)
    }

    /// Queues an async job: under FULL the writer thread takes it; under NORMAL the future
    /// leads when first polled.
    pub(crate) fn push_async(&self, job: Box<dyn WriteJob>) -> Result<()> {
        let mut q = lock(&self.queue);
        if q.closed {
            return Err(StorageError::Closed);
        }
        q.jobs.push(job);
        if !self.async_inline {
            self.kick(&mut q);
        }
        Ok(())
    }

    /// Becomes the leader if jobs are waiting and nobody leads.
    fn try_lead(self: &Arc<Self>) -> Option<Leadership> {
        let mut q = lock(&self.queue);
        if q.leading || q.jobs.is_empty() {
            return None;
        }
        q.leading = true;
        Some(Leadership {
            shared: Some(Arc::clone(self)),
        })
    }

    /// Runs one batch as the leader, then gives up leadership; if jobs arrived meanwhile the
    /// writer thread takes over, so this caller is not held up by later requests.
    fn lead_once(&self, inline: bool) {
        let batch = self.take_batch();
        if !batch.is_empty() {
            self.commit(batch, inline);
        }
        let mut q = lock(&self.queue);
        q.leading = false;
        self.kick(&mut q);
    }

    fn take_batch(&self) -> Vec<Box<dyn WriteJob>> {
        let mut q = lock(&self.queue);
        if q.jobs.len() <= MAX_BATCH {
            mem::take(&mut q.jobs)
        } else {
            q.jobs.drain(..MAX_BATCH).collect()
        }
    }

    /// Runs `batch` in one transaction and delivers every result after COMMIT returned.
    fn commit(&self, batch: Vec<Box<dyn WriteJob>>, inline: bool) {
        let n = batch.len() as u64;
        let mut guard = lock(&self.conn);
        let Some(c) = guard.as_mut() else {
            drop(guard);
            for job in batch {
                job.finish(None); // never ran: Closed
            }
            return;
        };
        if let Some(e) = c.guard.as_ref().and_then(Guard::broken) {
            let failure = BatchFailure::Unrecorded(Arc::clone(e));
            drop(guard);
            for job in batch {
                job.finish(Some(&failure)); // never ran
            }
            return;
        }
        let (batch, outcome) = run_batch(&mut c.conn, batch, &c.tracker, c.guard.as_ref());
        // Counters first, so they are current by the time a caller sees its result.
        self.stats.jobs.fetch_add(n, Ordering::Relaxed);
        self.stats.max_batch.fetch_max(n, Ordering::Relaxed);
        let mut checkpoint = false;
        let failure = match outcome {
            Err(e) => Some(BatchFailure::NotCommitted(e)),
            Ok(sealed) => {
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                if inline {
                    self.stats.inline_batches.fetch_add(1, Ordering::Relaxed);
                }
                checkpoint = c.after_commit();
                c.record(sealed).err().map(BatchFailure::Unrecorded)
            }
        };
        // The next batch waits for a checkpoint, this one's answers do not.
        let keep = checkpoint.then_some(guard);
        // Only now, after COMMIT returned, does anyone learn the outcome.
        for job in batch {
            job.finish(failure.as_ref());
        }
        if let Some(mut guard) = keep {
            if let Some(c) = guard.as_mut() {
                c.finish_checkpoint(&self.stats);
            }
        }
    }

    /// Stops accepting jobs and wakes the writer thread so it drains the queue and exits.
    pub(crate) fn close(&self) {
        let mut q = lock(&self.queue);
        q.closed = true;
        if q.writer_idle {
            self.wake.notify_one();
        }
    }
}

impl Conn {
    /// After COMMIT: writes what the batch sealed (see [`super::marks`]).
    fn record(&mut self, marked: Marked) -> std::result::Result<(), Arc<std::io::Error>> {
        let Some(guard) = self.guard.as_mut() else {
            return Ok(());
        };
        match marked {
            Marked::Unmarked => Ok(()),
            Marked::Nothing(mark) => {
                guard.skip(mark);
                Ok(())
            }
            Marked::Sealed(sealed) => guard.record(sealed).inspect_err(|e| {
                tracing::error!(error = %e, "cannot write the generation record: this batch's \
                                outcome is withheld and no later one is committed (restart \
                                omemod once the file system is writable again)");
            }),
        }
    }

    /// Returns whether the writer should checkpoint ([`Conn::finish_checkpoint`]).
    fn after_commit(&mut self) -> bool {
        self.signal.dirty.store(true, Ordering::Release);
        // A stat() per commit was a visible share of a small commit: look every STAT_EVERY
        // commits (the log overshoots by at most that many commits' pages).
        self.commits = self.commits.wrapping_add(1);
        if !self.commits.is_multiple_of(STAT_EVERY) {
            return false;
        }
        let Ok(len) = std::fs::metadata(&self.signal.wal_path).map(|m| m.len()) else {
            return false;
        };
        let before = std::mem::replace(&mut self.last_len, len);
        // When the log starts over, SQLite cuts the file back to the threshold
        // (`journal_size_limit`) and rewrites it from the start; the file grows only once the
        // log is longer than the file, and then the log is as long as the file.
        let threshold = self.signal.threshold_bytes;
        if before <= threshold && len > threshold {
            // The checkpoint itself runs on the checkpointer's thread. Full: a request is
            // already pending. Disconnected: shutting down.
            let _ = self.signal.wake.try_send(());
        }
        // Half a threshold later the checkpointer has not got the log started over.
        len > before && len > threshold.saturating_add(threshold / 2)
    }

    /// SQLite starts the log over only when a transaction begins with every frame copied into
    /// the database. A checkpoint on another thread never sees that while commits keep coming
    /// (they land while it copies), so under a steady stream of commits the WAL grew for as
    /// long as the stream lasted, and every append walked a longer wal-index hash chain (one
    /// entry per earlier frame of the same page). The writer copies the rest itself, between
    /// two of its commits: what the checkpointer left, and, under NORMAL, two fsyncs.
    fn finish_checkpoint(&mut self, stats: &WriterStats) {
        match super::checkpoint::checkpoint(&self.conn, super::CheckpointMode::Passive) {
            Ok(r) => {
                stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(?r, "checkpoint by the writer");
            }
            Err(e) => tracing::warn!(error = %e, "checkpoint by the writer failed"),
        }
    }
}

/// The right to run the next batch. Dropping it unused (a cancelled future) hands the queue
/// to the writer thread.
struct Leadership {
    shared: Option<Arc<Shared>>,
}

impl Leadership {
    fn run(mut self, inline: bool) {
        if let Some(s) = self.shared.take() {
            s.lead_once(inline);
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if let Some(s) = self.shared.take() {
            let mut q = lock(&s.queue);
            q.leading = false;
            s.kick(&mut q);
        }
    }
}

/// Set while an async write has not got its result; if the future is dropped its job may still
/// be queued with nobody to lead, so the writer thread is woken.
pub(crate) struct Pending {
    shared: Arc<Shared>,
    done: bool,
}

impl Pending {
    /// Made when the job is queued, so that a future dropped before its first poll counts.
    pub(crate) fn new(shared: &Arc<Shared>) -> Self {
        Self {
            shared: Arc::clone(shared),
            done: false,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            let mut q = lock(&self.shared.queue);
            self.shared.kick(&mut q);
        }
    }
}

/// Waits for an async job queued with [`Shared::push_async`], leading its batch when that is
/// the cheaper path.
pub(crate) async fn wait_async<T>(
    mut pending: Pending,
    rx: tokio::sync::oneshot::Receiver<Result<T>>,
) -> Result<T> {
    let shared = Arc::clone(&pending.shared);
    if shared.async_inline {
        if let Some(leadership) = shared.try_lead() {
            // Let every task the runtime can already run (other requests, after an I/O poll)
            // queue its job first, so they share this commit.
            tokio::task::yield_now().await;
            leadership.run(true);
        }
    }
    let r = rx.await.map_err(|_| StorageError::Closed);
    pending.done = true;
    r?
}

/// Queues a job and waits for it on this thread, leading its batch if nobody else does.
pub(crate) fn write_blocking<T>(
    shared: &Arc<Shared>,
    job: Box<dyn WriteJob>,
    rx: std::sync::mpsc::Receiver<Result<T>>,
) -> Result<T> {
    if shared.push(job, true)? {
        Leadership {
            shared: Some(Arc::clone(shared)),
        }
        .run(true);
    }
    rx.recv().map_err(|_| StorageError::Closed)?
}

/// The writer thread: leads whenever jobs wait and nobody else leads; exits after `close`
/// once the queue is empty, dropping the connection.
pub(crate) fn run(shared: Arc<Shared>) {
    let mut q = lock(&shared.queue);
    loop {
        if !q.leading && !q.jobs.is_empty() && (q.want_writer || q.closed) {
            q.leading = true;
            q.want_writer = false;
            drop(q);
            let batch = shared.take_batch();
            shared.commit(batch, false);
            q = lock(&shared.queue);
            q.leading = false;
            // Jobs queued during the batch wait for a leader that already was busy: us.
            if !q.jobs.is_empty() {
                q.want_writer = true;
            }
            continue;
        }
        if q.closed && q.jobs.is_empty() && !q.leading {
            break;
        }
        q.writer_idle = true;
        q = shared.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
        q.writer_idle = false;
    }
    drop(q);
    if let Some(c) = lock(&shared.conn).take() {
        if let Some(g) = c.guard {
            g.close();
        }
    }
    tracing::debug!("storage writer stopped");
}
/// Runs a transaction-control statement through the statement cache: parsing `BEGIN`,
/// `SAVEPOINT`, `RELEASE` and `COMMIT` anew for every batch was a measurable share of a commit.
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Rolls back whatever is still open after a failure (SQLite may have rolled back already).
fn roll_back(conn: &Connection) {
    if !conn.is_autocommit() {
        if let Err(e) = control(conn, "ROLLBACK") {
            tracing::error!(error = %e, "rollback failed");
        }
    }
}

/// What a committed batch leaves for the record beside the database.
enum Marked {
    /// No record is attached.
    Unmarked,
    /// Nothing to record; the batch used this mark.
    Nothing((u64, u64)),
    /// Write this.
    Sealed(Sealed),
}

/// A batch's jobs (results not yet delivered) and, if it was committed, what it leaves for the
/// record, else why not.
type Ran = (
    Vec<Box<dyn WriteJob>>,
    std::result::Result<Marked, Arc<rusqlite::Error>>,
);

/// Runs one batch in one transaction.
fn run_batch(
    conn: &mut Db,
    mut batch: Vec<Box<dyn WriteJob>>,
    tracker: &Tracker,
    guard: Option<&Guard>,
) -> Ran {
    let conn = &*conn;
    let begun = control(conn, "BEGIN IMMEDIATE")
        .and_then(|()| guard.map(|g| g.begin(conn, tracker)).transpose());
    let mark = match begun {
        Ok(mark) => mark,
        Err(e) => {
            tracing::error!(error = %e, "cannot begin write transaction");
            roll_back(conn);
            return (batch, Err(Arc::new(e)));
        }
    };
    // A batch of one needs no savepoint: the transaction is the job's own.
    let ran = if let [job] = batch.as_mut_slice() {
        if job.run(conn) {
            Ok(())
        } else {
            roll_back(conn); // the job reports its own error
            return (batch, Ok(mark.map_or(Marked::Unmarked, Marked::Nothing)));
        }
    } else {
        run_jobs(conn, &mut batch, tracker)
    };
    let sealed = ran.and_then(|()| match (guard, mark) {
        (Some(g), Some(m)) => Ok(match g.seal(conn, tracker, m)? {
            Some(s) => Marked::Sealed(s),
            None => Marked::Nothing(m),
        }),
        _ => Ok(Marked::Unmarked),
    });
    match sealed.and_then(|marked| control(conn, "COMMIT").map(|()| marked)) {
        Ok(marked) => (batch, Ok(marked)),
        Err(e) => {
            roll_back(conn);
            tracing::error!(error = %e, "write batch failed");
            (batch, Err(Arc::new(e)))
        }
    }
}

/// Runs each job of a batch in its own savepoint; a job that fails is rolled back alone (and
/// what the tracker saw of it forgotten).
fn run_jobs(conn: &Db, batch: &mut [Box<dyn WriteJob>], tracker: &Tracker) -> rusqlite::Result<()> {
    for job in batch.iter_mut() {
        control(conn, "SAVEPOINT omemod_job")?;
        let saved = tracker.save();
        if job.run(conn) {
            control(conn, "RELEASE omemod_job")?;
        } else {
            // E.g. SQLite already rolled the whole transaction back (disk full): an error.
            control(conn, "ROLLBACK TO omemod_job")
                .and_then(|()| control(conn, "RELEASE omemod_job"))?;
            tracker.restore(saved);
        }
    }
    Ok(())
}
