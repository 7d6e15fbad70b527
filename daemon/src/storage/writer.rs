//! The group-commit writer: one OS thread owns the only write connection.
//!
//! The thread blocks for the first job, then drains every job already queued (up to
//! [`MAX_BATCH`]) and runs them in ONE transaction, each inside its own SAVEPOINT. A job that
//! fails (or panics) rolls back only its savepoint and gets its own error. After COMMIT
//! succeeded every job gets its result; if COMMIT fails every job gets the batch error.
//! Concurrent requests therefore share one fsync.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::error::{Result, StorageError};

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

/// A type-erased write job.
pub(crate) trait WriteJob: Send {
    /// Runs the closure inside the open transaction; `true` if it succeeded.
    fn run(&mut self, tx: &Transaction<'_>) -> bool;
    /// Delivers the result. `batch_error` is set if the batch as a whole was not committed.
    fn finish(self: Box<Self>, batch_error: Option<&Arc<rusqlite::Error>>);
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
    F: FnOnce(&Transaction<'_>) -> Result<T> + Send,
{
    fn run(&mut self, tx: &Transaction<'_>) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        let r = catch_unwind(AssertUnwindSafe(|| f(tx))).unwrap_or(Err(StorageError::JobPanicked));
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn finish(self: Box<Self>, batch_error: Option<&Arc<rusqlite::Error>>) {
        let r = match (self.result, batch_error) {
            // A job's own failure is the more useful error.
            (Some(Err(e)), _) => Err(e),
            (_, Some(e)) => Err(StorageError::Batch(Arc::clone(e))),
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

pub(crate) fn run(
    mut conn: Connection,
    jobs: Receiver<Box<dyn WriteJob>>,
    stats: Arc<WriterStats>,
    signal: CheckpointSignal,
) {
    let mut last_reported_len = 0u64;
    while let Ok(first) = jobs.recv() {
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let (batch, failure) = run_batch(&mut conn, batch);
        // Counters first, so they are current by the time a caller sees its result.
        stats.jobs.fetch_add(n, Ordering::Relaxed);
        stats.max_batch.fetch_max(n, Ordering::Relaxed);
        if failure.is_none() {
            stats.batches.fetch_add(1, Ordering::Relaxed);
            signal.dirty.store(true, Ordering::Release);
            // A stat() is cheap; the checkpoint itself runs on the checkpointer's thread.
            // The file only grows when the log outgrows every earlier log, so "grew past the
            // threshold since the last report" is what triggers an early checkpoint; the
            // periodic timer handles the rest.
            if let Ok(meta) = std::fs::metadata(&signal.wal_path) {
                let len = meta.len();
                if len > signal.threshold_bytes && len > last_reported_len {
                    last_reported_len = len;
                    // Full: a request is already pending. Disconnected: shutting down.
                    let _ = signal.wake.try_send(());
                }
            }
        }
        // Only now, after COMMIT returned, does anyone learn the outcome.
        for job in batch {
            job.finish(failure.as_ref());
        }
    }
    tracing::debug!("storage writer stopped");
}

/// Runs one batch in one transaction. Returns the jobs (results not yet delivered) and, if the
/// batch was not committed, why.
fn run_batch(
    conn: &mut Connection,
    mut batch: Vec<Box<dyn WriteJob>>,
) -> (Vec<Box<dyn WriteJob>>, Option<Arc<rusqlite::Error>>) {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            tracing::error!(error = %e, "cannot begin write transaction");
            return (batch, Some(Arc::new(e)));
        }
    };
    // A batch of one needs no savepoint: the transaction is the job's own.
    if let [job] = batch.as_mut_slice() {
        let outcome = if job.run(&tx) {
            tx.commit()
        } else {
            drop(tx); // rolls back; the job reports its own error
            Ok(())
        };
        return match outcome {
            Ok(()) => (batch, None),
            Err(e) => {
                tracing::error!(error = %e, "write batch failed");
                (batch, Some(Arc::new(e)))
            }
        };
    }
    let mut broken: Option<rusqlite::Error> = None;
    for job in batch.iter_mut() {
        if let Err(e) = tx.execute_batch("SAVEPOINT omemod_job") {
            broken = Some(e);
            break;
        }
        let ok = job.run(&tx);
        let end = if ok {
            tx.execute_batch("RELEASE omemod_job")
        } else {
            tx.execute_batch("ROLLBACK TO omemod_job; RELEASE omemod_job")
        };
        if let Err(e) = end {
            // E.g. SQLite already rolled the whole transaction back (disk full).
            broken = Some(e);
            break;
        }
    }
    let outcome = match broken {
        Some(e) => {
            drop(tx); // rolls back
            Err(e)
        }
        None => tx.commit(),
    };
    match outcome {
        Ok(()) => (batch, None),
        Err(e) => {
            tracing::error!(error = %e, "write batch failed");
            (batch, Some(Arc::new(e)))
        }
    }
}
