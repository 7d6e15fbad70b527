//! The session table: one lock per (account, peer JID, namespace, device), so operations on
//! one session run one at a time while different sessions proceed in parallel. Sessions are
//! loaded lazily from SQLite and kept in memory; the cached copy is replaced only after the
//! transaction holding its new state has committed, so memory never runs ahead of the disk.

use crate::storage::{self, sessions, skipped_keys, DeviceAddr, SecretBlob, SecretKey, Store};
use protocol_core::double_ratchet::skipped_keys::{SkippedKey, SkippedKeyChanges};
use protocol_core::session::{Role, Session, SESSION_SNAPSHOT_FORMAT};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::OwnedMutexGuard;

/// What the cache holds for one device.
#[derive(Debug, Default)]
pub struct Slot {
    /// Whether `session` reflects the database (false until first loaded).
    pub loaded: bool,
    /// The session, if any.
    pub session: Option<Session>,
    /// Its counters (kept for the row).
    pub meta: SessionMeta,
}

/// Row metadata kept next to the cached session.
#[derive(Debug, Default, Clone)]
pub struct SessionMeta {
    /// Unix seconds.
    pub created_at: i64,
    /// Messages encrypted with it.
    pub messages_sent: u64,
    /// Messages decrypted with it.
    pub messages_received: u64,
}

/// A locked slot.
pub type SlotGuard = OwnedMutexGuard<Slot>;

/// The table of slots.
#[derive(Debug, Default)]
pub struct SessionTable {
    slots: Mutex<HashMap<DeviceAddr, Arc<tokio::sync::Mutex<Slot>>>>,
}

impl SessionTable {
    /// Drops every cached session of an account (after it was deleted).
    pub fn forget_account(&self, account_id: i64) {
        let mut map = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|addr, _| addr.account_id != account_id);
    }

    fn slot(&self, addr: &DeviceAddr) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut map = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(addr.clone()).or_default().clone()
    }

    /// Locks one slot and makes sure it is loaded.
    pub async fn lock(
        &self,
        store: &Store,
        addr: &DeviceAddr,
    ) -> Result<SlotGuard, storage::StorageError> {
        let mut guard = self.slot(addr).lock_owned().await;
        if !guard.loaded {
            let a = addr.clone();
            let loaded = store
                .read(move |conn| {
                    let Some(row) = sessions::get(conn, &a)? else {
                        return Ok(None);
                    };
                    let skipped = skipped_keys::list(conn, &a)?;
                    Ok(Some((row, skipped)))
                })
                .await?;
            if let Some((row, skipped)) = loaded {
                let skipped = skipped
                    .into_iter()
                    .map(|k| SkippedKey {
                        ratchet_key: k.ratchet_key,
                        n: k.n,
                        message_key: *k.message_key.expose(),
                    })
                    .collect();
                match Session::from_bytes(row.state.expose(), skipped) {
                    Ok(s) => {
                        guard.session = Some(s);
                        guard.meta = SessionMeta {
                            created_at: row.created_at,
                            messages_sent: row.messages_sent,
                            messages_received: row.messages_received,
                        };
                    }
                    Err(e) => {
                        tracing::error!(jid = %addr.jid, device = addr.device_id, error = %e, "stored session unreadable; treating as absent");
                    }
                }
            }
            guard.loaded = true;
        }
        Ok(guard)
    }

    /// Locks several slots, always in the same (sorted) order so two callers never deadlock.
    pub async fn lock_many(
        &self,
        store: &Store,
        addrs: &[DeviceAddr],
    ) -> Result<Vec<(DeviceAddr, SlotGuard)>, storage::StorageError> {
        let mut sorted: Vec<DeviceAddr> = addrs.to_vec();
        sorted.sort_by(|a, b| {
            (a.account_id, &a.jid, a.namespace, a.device_id).cmp(&(
                b.account_id,
                &b.jid,
                b.namespace,
                b.device_id,
            ))
        });
        sorted.dedup();
        let mut out = Vec::with_capacity(sorted.len());
        for a in sorted {
            let g = self.lock(store, &a).await?;
            out.push((a, g));
        }
        Ok(out)
    }
}

/// The row that stores `session` for `addr`.
pub fn session_row(
    addr: &DeviceAddr,
    session: &Session,
    meta: &SessionMeta,
    now: i64,
) -> sessions::SessionRow {
    let identity = *session.remote_curve25519();
    sessions::SessionRow {
        account_id: addr.account_id,
        jid: addr.jid.clone(),
        namespace: addr.namespace,
        device_id: addr.device_id,
        state: SecretBlob::new(session.to_bytes(false).to_vec()),
        state_format: SESSION_SNAPSHOT_FORMAT,
        identity_key: identity,
        initiated_by: match session.role() {
            Role::Initiator => sessions::Initiator::Us,
            Role::Responder => sessions::Initiator::Them,
        },
        confirmed: session.confirmed(),
        created_at: if meta.created_at == 0 {
            now
        } else {
            meta.created_at
        },
        updated_at: now,
        messages_sent: meta.messages_sent,
        messages_received: meta.messages_received,
    }
}

/// Mirrors a decryption's skipped-key changes into `skipped_keys`.
pub fn apply_skipped_changes(
    conn: &rusqlite::Connection,
    addr: &DeviceAddr,
    changes: &SkippedKeyChanges,
    now: i64,
) -> Result<(), storage::StorageError> {
    if let Some((rk, n)) = changes.used {
        skipped_keys::take(conn, addr, &rk, n)?;
    }
    for (rk, n) in &changes.evicted {
        skipped_keys::take(conn, addr, rk, *n)?;
    }
    for k in &changes.added {
        if changes
            .evicted
            .iter()
            .any(|(rk, n)| *n == k.n && *rk == k.ratchet_key)
        {
            continue;
        }
        insert_skipped(conn, addr, k, now)?;
    }
    Ok(())
}

fn insert_skipped(
    conn: &rusqlite::Connection,
    addr: &DeviceAddr,
    k: &SkippedKey,
    now: i64,
) -> Result<bool, storage::StorageError> {
    skipped_keys::insert(
        conn,
        &skipped_keys::SkippedKeyRow {
            addr: addr.clone(),
            ratchet_key: k.ratchet_key,
            n: k.n,
            message_key: SecretKey::new(k.message_key),
            created_at: now,
        },
    )
}

/// Replaces every stored skipped key of a (new) session.
pub fn replace_skipped(
    conn: &rusqlite::Connection,
    addr: &DeviceAddr,
    session: &Session,
    now: i64,
) -> Result<(), storage::StorageError> {
    skipped_keys::delete_for_session(conn, addr)?;
    for k in session.skipped_keys() {
        insert_skipped(conn, addr, k, now)?;
    }
    Ok(())
}
