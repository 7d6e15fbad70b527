//! Bounds on what unconfirmed remote input can make us store (issue 11): sessions (with their
//! trust rows and skipped keys) built from key exchanges of devices a contact never listed, and
//! the periodic expiry of old skipped keys and long-dropped devices.

use super::account::Account;
use super::{Manager, StorageError};
use crate::storage::{devices, sessions as session_store, skipped_keys, DeviceAddr, SecretBlob};
use protocol_core::session::Session;

/// Sessions whose expired skipped keys one transaction deletes (their locks are held meanwhile).
const EXPIRY_BATCH: usize = 64;
/// Rows of the devices table a prune step walks (a few milliseconds of the writer). At 10^6
/// sessions, steps of 10,000 rows held one request 135 ms; of 1,000, 28 ms at most (scale bench).
const DEVICE_PRUNE_SPAN: i64 = 1_000;

/// Most sessions per contact JID with devices that are not in its device list. A key exchange
/// from yet another unlisted device evicts the one of them used least recently.
pub const MAX_UNLISTED_SESSIONS_PER_JID: usize = 32;

/// What one maintenance pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Skipped message keys past their age.
    pub skipped_keys: usize,
    /// Devices dropped from their list longer ago than the retention.
    pub devices: usize,
}

impl Manager {
    /// After a new session with `jid` was committed: keeps the sessions with devices `jid` has
    /// not listed at [`MAX_UNLISTED_SESSIONS_PER_JID`], deleting the least recently used ones
    /// (their skipped keys go with them, and their trust rows unless the user decided or another
    /// session or bundle still uses the key). Failures are logged: this is cleanup.
    /// The session of `new` itself is never the one evicted.
    pub async fn bound_unlisted_sessions(&self, acct: &Account, new: &DeviceAddr) {
        if let Err(e) = self.evict_unlisted(acct, new).await {
            tracing::warn!(account = %acct.jid, peer = %new.jid, error = %e, "cannot evict sessions of unlisted devices");
        }
    }

    async fn evict_unlisted(&self, acct: &Account, new: &DeviceAddr) -> Result<(), StorageError> {
        let jid = new.jid.as_str();
        let (account_id, j) = (acct.id, jid.to_owned());
        let rows = self
            .store
            .read(move |conn| session_store::list_for_jid(conn, account_id, &j))
            .await?;
        let mut unlisted: Vec<_> = self.with_directory(acct.id, |d| {
            rows.into_iter()
                .filter(|r| !d.active(jid, r.namespace).contains(&r.device_id))
                .collect()
        })?;
        if unlisted.len() <= MAX_UNLISTED_SESSIONS_PER_JID {
            return Ok(());
        }
        unlisted.sort_by_key(|r| (r.updated_at, r.created_at));
        let excess = unlisted.len() - MAX_UNLISTED_SESSIONS_PER_JID;
        let victims: Vec<DeviceAddr> = unlisted
            .iter()
            .map(|r| r.addr())
            .filter(|a| a != new)
            .take(excess)
            .collect();
        // Hold the victims' locks: no request may use a session while it is deleted.
        let mut guards = self.sessions.lock_many(&self.store, &victims).await?;
        let addrs = victims.clone();
        let forgotten_keys = self
            .store
            .write(move |tx| {
                let mut keys = Vec::new();
                for a in &addrs {
                    if let Some((key, true)) = session_store::delete_unlisted(tx, a)? {
                        keys.push(key);
                    }
                }
                Ok(keys)
            })
            .await?;
        // Committed: memory follows.
        for g in guards.iter_mut() {
            g.session = None;
            g.loaded = true;
        }
        drop(guards);
        self.mirror_directory(acct.id, |d| {
            for k in &forgotten_keys {
                d.trust.remove(&(jid.to_owned(), *k));
            }
            if let Some(rows) = d.devices.get_mut(jid) {
                rows.retain(|r| {
                    r.active
                        || !victims
                            .iter()
                            .any(|v| v.namespace == r.namespace && v.device_id == r.device_id)
                });
            }
        });
        tracing::info!(account = %acct.jid, peer = jid, evicted = victims.len(), trust_rows = forgotten_keys.len(),
            max = MAX_UNLISTED_SESSIONS_PER_JID, "evicted sessions of devices the contact does not list");
        Ok(())
    }

    /// Deletes skipped message keys older than `skipped_key_max_age` seconds (their sessions
    /// learn that they are gone, so a late message for one is a dropped key, not a duplicate)
    /// and devices dropped from their lists longer than `DROPPED_DEVICE_RETENTION_SECS` ago.
    /// Runs off the request path (the maintenance pass).
    pub async fn prune_expired(
        &self,
        now: i64,
        skipped_key_max_age: i64,
    ) -> Result<Pruned, StorageError> {
        let key_cutoff = now.saturating_sub(skipped_key_max_age);
        let device_cutoff = now.saturating_sub(crate::bounds::DROPPED_DEVICE_RETENTION_SECS);
        let affected = self
            .store
            .read(move |c| skipped_keys::sessions_with_keys_before(c, key_cutoff))
            .await?;
        let mut skipped_keys = 0;
        for batch in affected.chunks(EXPIRY_BATCH) {
            skipped_keys += self.expire_skipped_keys(batch, key_cutoff).await?;
        }
        // The devices table has a row per contact device: walked in rowid steps, each its own
        // transaction (one statement scans the whole table, a million rows at 10^6 sessions,
        // while every request waits for the writer).
        let mut devices = 0;
        let mut from = Some(0);
        while let Some(start) = from {
            let (n, next) = self
                .store
                .write(move |tx| {
                    devices::prune_dropped_step(tx, device_cutoff, start, DEVICE_PRUNE_SPAN)
                })
                .await?;
            devices += n;
            from = next;
            tokio::task::yield_now().await;
        }
        let pruned = Pruned {
            skipped_keys,
            devices,
        };
        if pruned.devices > 0 {
            for acct in self.accounts() {
                self.mirror_directory(acct.id, |d| {
                    for rows in d.devices.values_mut() {
                        rows.retain(|r| r.active || r.list_updated_at >= device_cutoff);
                    }
                });
            }
        }
        if pruned != Pruned::default() {
            tracing::info!(
                skipped_keys = pruned.skipped_keys,
                devices = pruned.devices,
                "expired rows deleted"
            );
        }
        Ok(pruned)
    }

    /// Deletes the skipped keys of the sessions of `batch` created before `cutoff`, and makes
    /// each session forget them, in one transaction under the sessions' locks.
    async fn expire_skipped_keys(
        &self,
        batch: &[DeviceAddr],
        cutoff: i64,
    ) -> Result<usize, StorageError> {
        let mut slots = self.sessions.lock_many(&self.store, batch).await?;
        let addrs: Vec<DeviceAddr> = slots.iter().map(|s| s.addr().clone()).collect();
        let expired = self
            .store
            .read(move |c| {
                addrs
                    .iter()
                    .map(|a| skipped_keys::expired(c, a, cutoff))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        let sessions: Vec<Option<Session>> = slots
            .iter()
            .zip(&expired)
            .map(|(slot, keys)| {
                let mut s = slot.session.clone()?;
                s.forget_skipped_keys(keys);
                Some(s)
            })
            .collect();
        let writes: Vec<(DeviceAddr, Option<SecretBlob>)> = slots
            .iter()
            .zip(&sessions)
            .map(|(slot, s)| {
                let state = s
                    .as_ref()
                    .map(|s| SecretBlob::from_zeroizing(s.to_bytes(false)));
                (slot.addr().clone(), state)
            })
            .collect();
        let deleted = self
            .store
            .write(move |tx| {
                let mut n = 0;
                for (addr, state) in &writes {
                    if let Some(state) = state {
                        session_store::set_state(tx, addr, state.expose())?;
                    }
                    n += skipped_keys::delete_expired(tx, addr, cutoff)?;
                }
                Ok(n)
            })
            .await?;
        // Committed: memory follows.
        for (slot, s) in slots.iter_mut().zip(sessions) {
            if s.is_some() {
                slot.session = s;
            }
        }
        if deleted > 0 {
            self.key_material_erased();
        }
        Ok(deleted)
    }
}
