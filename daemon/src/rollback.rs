//! Keeping the generation counter (see [`crate::storage::generation`]) while the daemon runs:
//! checked and bumped at start, bumped every few seconds while state changes, and at shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::storage::generation::{self, Rollback};
use crate::storage::{StorageError, Store};

/// How often the generation follows the database while it changes. A copy of the database taken
/// less than this before a crash may go undetected; a clean shutdown always bumps.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// The generation keeper of one store.
#[derive(Debug)]
pub struct Keeper {
    store: Arc<Store>,
    /// Writer batches at the last bump (the bump included).
    seen: std::sync::atomic::AtomicU64,
}

impl Keeper {
    /// Compares the database with the generation file, then starts a new generation above both.
    /// Returns the rollback found, if any.
    pub async fn start(store: Arc<Store>) -> Result<(Keeper, Option<Rollback>), StorageError> {
        let db_gen = store.read(|c| generation::read(c)).await?;
        let file_gen = generation::read_file(store.path());
        // Generation 0: a database never served (new, or from before this check existed).
        let found = if db_gen == 0 {
            None
        } else {
            generation::check(db_gen, file_gen, crate::storage::now())
        };
        let keeper = Keeper {
            store,
            seen: std::sync::atomic::AtomicU64::new(0),
        };
        let floor = file_gen.unwrap_or(0).max(db_gen);
        let Some(mut r) = found else {
            keeper.bump(floor).await?;
            return Ok((keeper, None));
        };
        // Every session may be behind its peer: each is rebuilt by key exchange on its next
        // message, in the transaction that starts the new generation.
        let now = crate::storage::now();
        let (g, marked) = keeper
            .store
            .write(move |tx| {
                let marked = crate::storage::rebuilds::request_all(tx, now)?;
                Ok((generation::bump(tx, floor)?, marked))
            })
            .await?;
        keeper.recorded(g)?;
        r.sessions_to_rebuild = u64::try_from(marked).unwrap_or(u64::MAX);
        tracing::warn!(
            database_generation = r.database_generation,
            expected_generation = r.expected_generation,
            sessions_to_rebuild = r.sessions_to_rebuild,
            "the database is older than the last state this machine saw (restored backup or \
             snapshot?): the next message to each device of its sessions starts a new session"
        );
        Ok((keeper, Some(r)))
    }

    async fn bump(&self, floor: u64) -> Result<(), StorageError> {
        let g = self
            .store
            .write(move |tx| generation::bump(tx, floor))
            .await?;
        self.recorded(g)
    }

    /// Writes the committed generation `g` beside the database.
    fn recorded(&self, g: u64) -> Result<(), StorageError> {
        generation::write_file(self.store.path(), g)?;
        self.seen.store(
            self.store.writer_stats().batches.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        Ok(())
    }

    /// Bumps if anything was committed since the last bump.
    pub async fn follow(&self) -> Result<(), StorageError> {
        let now = self.store.writer_stats().batches.load(Ordering::Relaxed);
        if now > self.seen.load(Ordering::Relaxed) {
            self.bump(0).await?;
        }
        Ok(())
    }
}
