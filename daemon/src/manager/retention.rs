//! Retention means erased. Key material the bounds no longer allow — redelivery entries past
//! their window, skipped message keys past their age, a deleted account — is deleted with
//! `secure_delete`, but the WAL still holds the pages as they were before: every prune that
//! erased something owes a `TRUNCATE` checkpoint, which the maintenance pass pays (and pays again
//! while a reader blocks it). The copies `omemod restore` moved aside hold every key of their
//! time, so they live only as long as the redelivery window.
//!
//! The maintenance pass runs every [`maintenance_interval`]: expired key material is gone from
//! the database and its WAL at most two intervals after it expired.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{Manager, StorageError};
use crate::config::RedeliveryConfig;
use crate::storage::side_files;

/// The longest time between two maintenance passes.
pub const MAX_MAINTENANCE_INTERVAL: Duration = Duration::from_secs(3600);

/// Lifetime of a copy `restore` moved aside when redelivery is off (no key material of a
/// window to bound it by).
pub const BEFORE_RESTORE_LIFETIME_WITHOUT_REDELIVERY_SECS: i64 = 24 * 3600;

/// Time between two maintenance passes: a quarter of the redelivery window, at least a second
/// and at most [`MAX_MAINTENANCE_INTERVAL`].
pub fn maintenance_interval(config: &RedeliveryConfig) -> Duration {
    if !config.enabled() {
        return MAX_MAINTENANCE_INTERVAL;
    }
    Duration::from_secs(config.retention_secs / 4)
        .clamp(Duration::from_secs(1), MAX_MAINTENANCE_INTERVAL)
}

/// How long a copy `restore` moved aside is kept: the redelivery window (the key material in it
/// expires by then), or a day with redelivery off.
pub fn before_restore_lifetime_secs(config: &RedeliveryConfig) -> i64 {
    if config.enabled() {
        i64::try_from(config.retention_secs).unwrap_or(i64::MAX)
    } else {
        BEFORE_RESTORE_LIFETIME_WITHOUT_REDELIVERY_SECS
    }
}

/// Whether a `TRUNCATE` checkpoint is owed.
#[derive(Debug, Default)]
pub struct Erasure {
    owed: AtomicBool,
}

impl Manager {
    /// Key material was deleted in a committed transaction: the WAL still holds it until the
    /// next truncation (the maintenance pass's, or [`Self::truncate_wal_if_owed`]).
    pub(crate) fn key_material_erased(&self) {
        self.erasure.owed.store(true, Ordering::Release);
    }

    /// Checkpoints and truncates the WAL when key material was erased since the last time this
    /// succeeded. Returns whether the WAL is clean now (false: a reader kept it busy, it stays
    /// owed).
    pub async fn truncate_wal_if_owed(&self) -> Result<bool, StorageError> {
        if !self.erasure.owed.swap(false, Ordering::AcqRel) {
            return Ok(true);
        }
        let store = std::sync::Arc::clone(&self.store);
        let done = tokio::task::spawn_blocking(move || store.checkpoint_truncate())
            .await
            .map_err(|_| StorageError::Closed)
            .and_then(|r| r)
            .map(|r| !r.busy);
        if !matches!(done, Ok(true)) {
            self.erasure.owed.store(true, Ordering::Release);
        }
        done
    }

    /// Deletes the copies `restore` moved aside once older than their lifetime (`cutoff`:
    /// made before it); `i64::MAX` deletes them all. Returns how many went.
    pub async fn remove_restore_copies(&self, cutoff: i64) -> Result<usize, StorageError> {
        let db = self.store.path().to_owned();
        let removed = tokio::task::spawn_blocking(move || {
            side_files::remove_before_restore_copies(&db, cutoff)
        })
        .await
        .map_err(|_| StorageError::Closed)??;
        for path in &removed {
            tracing::info!(path = %path.display(), "copy moved aside by a restore deleted");
        }
        Ok(removed.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_follows_the_window() {
        let c = |retention_secs| RedeliveryConfig {
            retention_secs,
            max_entries: 10,
            ..Default::default()
        };
        assert_eq!(
            maintenance_interval(&RedeliveryConfig::default()),
            MAX_MAINTENANCE_INTERVAL
        );
        assert_eq!(maintenance_interval(&c(3600)), Duration::from_secs(900));
        assert_eq!(maintenance_interval(&c(2)), Duration::from_secs(1));
        assert_eq!(maintenance_interval(&c(0)), MAX_MAINTENANCE_INTERVAL);
        assert_eq!(before_restore_lifetime_secs(&c(60)), 60);
        assert_eq!(
            before_restore_lifetime_secs(&c(0)),
            BEFORE_RESTORE_LIFETIME_WITHOUT_REDELIVERY_SECS
        );
    }
}
