//! Background WAL checkpoints, off the request path.
//!
//! The writer runs with `wal_autocheckpoint=0`, so it never stalls a batch copying pages back
//! into the database file. This thread, with its own connection, runs
//! `PRAGMA wal_checkpoint(PASSIVE)` when the writer reports that the WAL grew past the
//! threshold, or every `interval` if anything was committed since the last checkpoint.
//! `Store::close` finishes with `wal_checkpoint(TRUNCATE)`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use super::error::Result;

/// Result of one `PRAGMA wal_checkpoint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointResult {
    /// The checkpoint could not finish because of readers or the writer (PASSIVE never waits).
    pub busy: bool,
    /// Frames in the WAL.
    pub log_frames: i64,
    /// Frames copied into the database file.
    pub checkpointed_frames: i64,
}

/// Runs `PRAGMA wal_checkpoint(mode)`; `mode` is one of PASSIVE, FULL, RESTART, TRUNCATE.
pub fn checkpoint(conn: &Connection, mode: CheckpointMode) -> Result<CheckpointResult> {
    let sql = match mode {
        CheckpointMode::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
        CheckpointMode::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
    };
    let r = conn.query_row(sql, [], |r| {
        Ok(CheckpointResult {
            busy: r.get::<_, i64>(0)? != 0,
            log_frames: r.get(1)?,
            checkpointed_frames: r.get(2)?,
        })
    })?;
    Ok(r)
}

/// Checkpoint flavours we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointMode {
    /// Copy what can be copied without waiting for anyone.
    Passive,
    /// Copy everything, then truncate the WAL to zero bytes (waits for readers).
    Truncate,
}

/// Counters of the checkpointer.
#[derive(Debug, Default)]
pub struct CheckpointStats {
    /// Checkpoints run.
    pub runs: AtomicU64,
    /// Checkpoints requested early by the writer.
    pub requested: AtomicU64,
}

pub(crate) fn run(
    conn: Connection,
    wake: Receiver<()>,
    dirty: Arc<AtomicBool>,
    interval: Duration,
    stats: Arc<CheckpointStats>,
) -> Connection {
    loop {
        let requested = match wake.recv_timeout(interval) {
            Ok(()) => true,
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if requested {
            stats.requested.fetch_add(1, Ordering::Relaxed);
        }
        // Clear before checkpointing: a commit racing with us sets it again.
        if dirty.swap(false, Ordering::AcqRel) || requested {
            match checkpoint(&conn, CheckpointMode::Passive) {
                Ok(r) => {
                    stats.runs.fetch_add(1, Ordering::Relaxed);
                    tracing::trace!(?r, "passive checkpoint");
                }
                Err(e) => tracing::warn!(error = %e, "passive checkpoint failed"),
            }
        }
    }
    conn
}
