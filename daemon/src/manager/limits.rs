//! Bounds on what unconfirmed remote input can make us store (issue 11): sessions (with their
//! trust rows and skipped keys) built from key exchanges of devices a contact never listed, and
//! the periodic expiry of old skipped keys and long-dropped devices.

use super::account::Account;
use super::Manager;
use crate::storage::trust::TrustSource;
use crate::storage::{
    self, device_state, devices, sessions as session_store, trust as trust_store, DeviceAddr,
};
use rusqlite::params;

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

    async fn evict_unlisted(&self, acct: &Account, new: &DeviceAddr) -> super::Result<()> {
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
        });
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
                    let Some(row) = session_store::get(tx, a)? else {
                        continue;
                    };
                    session_store::delete(tx, a)?;
                    // Its earlier states would let the same unlisted device come back.
                    device_state::delete_previous_sessions(tx, a)?;
                    // The device row its messages created (never listed): gone with it.
                    tx.prepare_cached(
                        "DELETE FROM devices WHERE account_id = ?1 AND jid = ?2 AND namespace = ?3 \
                         AND device_id = ?4 AND active = 0",
                    )?
                    .execute(params![
                        a.account_id,
                        a.jid,
                        a.namespace.namespace(),
                        i64::from(a.device_id)
                    ])?;
                    if key_unused(tx, a.account_id, &a.jid, &row.identity_key)? {
                        let manual = trust_store::get(tx, a.account_id, &a.jid, &row.identity_key)?
                            .is_some_and(|t| t.source == TrustSource::Manual);
                        if !manual
                            && trust_store::delete(tx, a.account_id, &a.jid, &row.identity_key)?
                        {
                            keys.push(row.identity_key);
                        }
                    }
                }
                Ok(keys)
            })
            .await?;
        // Committed: memory follows.
        for (_, g) in guards.iter_mut() {
            g.session = None;
            g.loaded = true;
        }
        drop(guards);
        self.with_directory(acct.id, |d| {
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

    /// Deletes skipped message keys older than `skipped_key_max_age` seconds and devices dropped
    /// from their lists longer than `DROPPED_DEVICE_RETENTION_SECS` ago; cached sessions that
    /// lost keys are reloaded on next use. Runs off the request path (hourly maintenance).
    pub async fn prune_expired(&self, now: i64, skipped_key_max_age: i64) -> super::Result<Pruned> {
        let key_cutoff = now.saturating_sub(skipped_key_max_age);
        let device_cutoff = now.saturating_sub(crate::bounds::DROPPED_DEVICE_RETENTION_SECS);
        let (affected, pruned) = self
            .store
            .write(move |tx| {
                let mut st = tx.prepare_cached(
                    "SELECT DISTINCT account_id, jid, namespace, device_id FROM skipped_keys WHERE created_at < ?1",
                )?;
                let mut rows = st.query(params![key_cutoff])?;
                let mut affected = Vec::new();
                while let Some(r) = rows.next()? {
                    let ns: String = r.get(2)?;
                    let Some(ns) = storage::Namespace::from_namespace(&ns) else {
                        continue;
                    };
                    let device: i64 = r.get(3)?;
                    affected.push(DeviceAddr::new(
                        r.get(0)?,
                        r.get::<_, String>(1)?,
                        ns,
                        u32::try_from(device).unwrap_or(0),
                    ));
                }
                drop(rows);
                drop(st);
                let skipped_keys = storage::skipped_keys::delete_older_than(tx, key_cutoff)?;
                let devices = devices::prune_dropped_before(tx, device_cutoff)?;
                Ok((affected, Pruned { skipped_keys, devices }))
            })
            .await?;
        for addr in &affected {
            self.sessions.invalidate(addr).await;
        }
        if pruned.devices > 0 {
            for acct in self.accounts() {
                self.with_directory(acct.id, |d| {
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
}

/// Whether no session or stored bundle of `jid` still uses `identity_key`.
fn key_unused(
    conn: &rusqlite::Connection,
    account_id: i64,
    jid: &str,
    identity_key: &[u8; 32],
) -> crate::storage::Result<bool> {
    let used: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM sessions WHERE account_id = ?1 AND jid = ?2 AND identity_key = ?3) \
             OR EXISTS (SELECT 1 FROM bundles WHERE account_id = ?1 AND jid = ?2 AND identity_curve25519 = ?3)",
        )?
        .query_row(params![account_id, jid, &identity_key[..]], |r| r.get(0))?;
    Ok(!used)
}
