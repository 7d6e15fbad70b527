//! A small pool of read-only connections, each owned by its own thread.
//!
//! WAL lets these read concurrently with the writer; each read sees the last committed state
//! as of its start. Runs on dedicated threads (not tokio's blocking pool) so it works from
//! both async and blocking callers and every connection keeps its prepared-statement cache.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use super::Db;

use super::error::{Result, StorageError};
use super::writer::Reply;

/// A type-erased read job.
pub(crate) trait ReadJob: Send {
    fn run(self: Box<Self>, conn: &Db);
}

pub(crate) struct TypedRead<T, F> {
    pub(crate) f: F,
    pub(crate) reply: Reply<T>,
}

impl<T, F> ReadJob for TypedRead<T, F>
where
    T: Send,
    F: FnOnce(&Db) -> Result<T> + Send,
{
    fn run(self: Box<Self>, conn: &Db) {
        let TypedRead { f, reply } = *self;
        let r =
            catch_unwind(AssertUnwindSafe(|| f(conn))).unwrap_or(Err(StorageError::JobPanicked));
        // A read closure could have left a transaction open; never keep a stale snapshot.
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        reply.send(r);
    }
}

pub(crate) fn run(conn: Db, jobs: Arc<Mutex<Receiver<Box<dyn ReadJob>>>>) {
    loop {
        let job = {
            let guard = jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            guard.recv()
        };
        match job {
            Ok(job) => job.run(&conn),
            Err(_) => break,
        }
    }
}
