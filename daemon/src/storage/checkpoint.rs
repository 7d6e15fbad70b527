//! Background WAL checkpoints, off the request path.
//!
//! The writer runs with `wal_autocheckpoint=0`, so a commit never copies pages back into the
//! database file. This thread, with its own connection, runs `PRAGMA wal_checkpoint(PASSIVE)`
//! when the writer reports that the log grew past the threshold, or every `interval` if
//! anything was committed since the last checkpoint. Under a steady stream of commits such a
//! checkpoint never catches up (commits land while it copies), so the writer finishes it
//! itself once the log is half a threshold longer (`writer::Conn::finish_checkpoint`).
//! `Store::close` finishes with `wal_checkpoint(TRUNCATE)`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A blocked-checkpoint warning is repeated at most this often.
const STALL_WARNING_EVERY: Duration = Duration::from_secs(60);

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
    /// Warnings that checkpoints have been blocked (by another process's read transaction).
    pub stalled_warnings: AtomicU64,
}

/// When checkpoints keep failing to copy the whole WAL, how long before we warn, and how often
/// we repeat the warning.
#[derive(Debug, Clone)]
pub(crate) struct StallWatch {
    /// The `-wal` file.
    pub wal_path: std::path::PathBuf,
    /// Incomplete checkpoints for this long (with a WAL over `min_bytes`) → warning.
    pub after: Duration,
    /// WAL size under which an incomplete checkpoint is not worth a warning.
    pub min_bytes: u64,
}

pub(crate) fn run(
    conn: Connection,
    wake: Receiver<()>,
    dirty: Arc<AtomicBool>,
    interval: Duration,
    stats: Arc<CheckpointStats>,
    watch: StallWatch,
) -> Connection {
    let mut stalled_since: Option<Instant> = None;
    let mut last_warning: Option<Instant> = None;
    loop {
        let requested = match wake.recv_timeout(interval) {
            Ok(()) => true,
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if requested {
            stats.requested.fetch_add(1, Ordering::Relaxed);
        }
        // Clear before checkpointing: a commit racing with us sets it again. While stalled, keep
        // trying so that the WAL is copied back as soon as the reader lets go.
        if dirty.swap(false, Ordering::AcqRel) || requested || stalled_since.is_some() {
            match checkpoint(&conn, CheckpointMode::Passive) {
                Ok(r) => {
                    stats.runs.fetch_add(1, Ordering::Relaxed);
                    tracing::trace!(?r, "passive checkpoint");
                    let complete = r.log_frames <= 0 || r.checkpointed_frames >= r.log_frames;
                    if complete {
                        if stalled_since.take().is_some() && last_warning.take().is_some() {
                            tracing::info!(
                                "WAL checkpoints complete again; the WAL file will shrink"
                            );
                        }
                    } else {
                        let now = Instant::now();
                        let since = *stalled_since.get_or_insert(now);
                        let wal = std::fs::metadata(&watch.wal_path).map_or(0, |m| m.len());
                        let due = last_warning
                            .is_none_or(|t| now.duration_since(t) >= STALL_WARNING_EVERY);
                        if now.duration_since(since) >= watch.after && wal > watch.min_bytes && due
                        {
                            last_warning = Some(now);
                            stats.stalled_warnings.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(
                                wal_bytes = wal,
                                stalled_s = now.duration_since(since).as_secs(),
                                copied_frames = r.checkpointed_frames,
                                wal_frames = r.log_frames,
                                "WAL checkpoints cannot complete: another process keeps a read transaction open on the database (an open `sqlite3` shell or a backup tool?). The WAL grows until it ends"
                            );
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "passive checkpoint failed"),
            }
        }
    }
    conn
}
