//! The session table: one lock per (account, peer JID, namespace, device), so operations on
//! one session run one at a time while different sessions proceed in parallel. Sessions are
//! loaded lazily from SQLite and kept in memory; the cached copy is replaced only after the
//! transaction holding its new state has committed, so memory never runs ahead of the disk.

use crate::storage::{self, sessions, skipped_keys, DeviceAddr, SecretBlob, Store};
use protocol_core::double_ratchet::skipped_keys::SkippedKey;
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
    /// Messages encrypted since the last one decrypted from the device (device hygiene).
    pub unanswered: u64,
    /// Found in a restored copy of the database: a message that decrypts on it may be a replay
    /// (refused), and the next message to the device starts a new session.
    pub suspect: bool,
}

/// Most idle slots kept in memory. Above it, idle slots are dropped oldest first (their
/// sessions are reloaded from the database on next use); slots in use are never dropped.
pub const MAX_CACHED_SESSIONS: usize = 10_000;

type SharedSlot = Arc<tokio::sync::Mutex<Slot>>;

#[derive(Debug, Default)]
struct Slots {
    map: HashMap<DeviceAddr, (SharedSlot, u64)>,
    /// Counts uses; each entry remembers the tick of its last use (for eviction order).
    tick: u64,
}

/// A locked slot. Dropping it unlocks the slot and, when the slot holds no session and nobody
/// else waits for it, removes it from the table: a decrypt that finds no session leaves nothing.
#[derive(Debug)]
pub struct SlotGuard {
    guard: OwnedMutexGuard<Slot>,
    addr: DeviceAddr,
    table: Arc<Mutex<Slots>>,
}

impl SlotGuard {
    /// The device whose slot this is.
    pub fn addr(&self) -> &DeviceAddr {
        &self.addr
    }
}

impl std::ops::Deref for SlotGuard {
    type Target = Slot;
    fn deref(&self) -> &Slot {
        &self.guard
    }
}

impl std::ops::DerefMut for SlotGuard {
    fn deref_mut(&mut self) -> &mut Slot {
        &mut self.guard
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if self.guard.session.is_some() {
            return;
        }
        let mut slots = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let ours = OwnedMutexGuard::mutex(&self.guard);
        // Others clone the Arc only under the table lock, so a count of 2 (the table's and our
        // guard's) means nobody waits for this slot: removing it cannot split one lock in two.
        if let Some((entry, _)) = slots.map.get(&self.addr) {
            if Arc::ptr_eq(entry, ours) && Arc::strong_count(ours) == 2 {
                slots.map.remove(&self.addr);
            }
        }
    }
}

/// The table of slots.
#[derive(Debug, Default)]
pub struct SessionTable {
    slots: Arc<Mutex<Slots>>,
}

impl SessionTable {
    /// Drops every cached session of an account (after it was deleted).
    pub fn forget_account(&self, account_id: i64) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.map.retain(|addr, _| addr.account_id != account_id);
    }

    fn slot(&self, addr: &DeviceAddr) -> SharedSlot {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        Self::slot_in(&mut slots, addr)
    }

    /// The slots of `addrs`, under one lock of the table (a fan-out takes a hundred).
    fn slots_of(&self, addrs: &[DeviceAddr]) -> Vec<SharedSlot> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        addrs.iter().map(|a| Self::slot_in(&mut slots, a)).collect()
    }

    fn slot_in(slots: &mut Slots, addr: &DeviceAddr) -> SharedSlot {
        slots.tick += 1;
        let tick = slots.tick;
        if let Some((slot, used)) = slots.map.get_mut(addr) {
            *used = tick;
            return slot.clone();
        }
        // Slots already handed out in this call are held (count > 1): never evicted.
        if slots.map.len() >= MAX_CACHED_SESSIONS {
            evict_idle(&mut slots.map, MAX_CACHED_SESSIONS * 3 / 4);
        }
        let slot = SharedSlot::default();
        slots.map.insert(addr.clone(), (slot.clone(), tick));
        slot
    }

    /// Slots currently in memory.
    pub fn len(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .len()
    }

    /// Whether no slot is in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Locks one slot and makes sure it is loaded.
    pub async fn lock(
        &self,
        store: &Store,
        addr: &DeviceAddr,
    ) -> Result<SlotGuard, storage::StorageError> {
        self.lock_slot(store, addr.clone(), self.slot(addr)).await
    }

    /// Locks `slot` (the slot of `addr`) and makes sure it is loaded.
    async fn lock_slot(
        &self,
        store: &Store,
        addr: DeviceAddr,
        slot: SharedSlot,
    ) -> Result<SlotGuard, storage::StorageError> {
        let mut guard = SlotGuard {
            guard: slot.lock_owned().await,
            addr,
            table: Arc::clone(&self.slots),
        };
        if !guard.loaded {
            let addr = guard.addr.clone();
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
                            unanswered: row.unanswered,
                            suspect: row.suspect,
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

    /// Drops the cached copy of a session whose stored rows changed outside a request (expired
    /// skipped keys, an evicted session): waits for the slot's lock, so a request in progress
    /// finishes first, and the next one reloads from the database.
    pub async fn invalidate(&self, addr: &DeviceAddr) {
        let mut guard = SlotGuard {
            guard: self.slot(addr).lock_owned().await,
            addr: addr.clone(),
            table: Arc::clone(&self.slots),
        };
        guard.loaded = false;
        guard.session = None;
        guard.meta = SessionMeta::default();
    }

    /// Locks several slots, always in the same (sorted) order so two callers never deadlock;
    /// the guards come in that order, once per device.
    pub async fn lock_many(
        &self,
        store: &Store,
        addrs: &[DeviceAddr],
    ) -> Result<Vec<SlotGuard>, storage::StorageError> {
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
        let slots = self.slots_of(&sorted);
        let mut out = Vec::with_capacity(sorted.len());
        for (a, slot) in sorted.into_iter().zip(slots) {
            out.push(self.lock_slot(store, a, slot).await?);
        }
        Ok(out)
    }
}

/// Drops idle slots (nobody holds or waits for them), least recently used first, until at
/// most `keep` remain. Runs once per `MAX_CACHED_SESSIONS / 4` new slots at most.
fn evict_idle(map: &mut HashMap<DeviceAddr, (SharedSlot, u64)>, keep: usize) {
    let mut idle: Vec<(u64, DeviceAddr)> = map
        .iter()
        .filter(|(_, (slot, _))| Arc::strong_count(slot) == 1)
        .map(|(addr, (_, used))| (*used, addr.clone()))
        .collect();
    let excess = map.len().saturating_sub(keep);
    if idle.len() > excess {
        idle.select_nth_unstable_by_key(excess, |(used, _)| *used);
        idle.truncate(excess);
    }
    for (_, addr) in idle {
        map.remove(&addr);
    }
}

/// The row that stores `session` for `addr`.
pub fn session_row(
    addr: &DeviceAddr,
    session: &Session,
    meta: &SessionMeta,
    now: i64,
) -> sessions::SessionRow {
    session_row_with_state(addr, session, session.to_bytes(false), meta, now)
}

/// [`session_row`] with `state` as the snapshot: `session` after a prepared encryption
/// ([`Session::to_bytes_after`]), which changes no other column.
pub fn session_row_with_state(
    addr: &DeviceAddr,
    session: &Session,
    state: zeroize::Zeroizing<Vec<u8>>,
    meta: &SessionMeta,
    now: i64,
) -> sessions::SessionRow {
    let identity = *session.remote_curve25519();
    sessions::SessionRow {
        account_id: addr.account_id,
        jid: addr.jid.clone(),
        namespace: addr.namespace,
        device_id: addr.device_id,
        state: SecretBlob::from_zeroizing(state),
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
        unanswered: meta.unanswered,
        suspect: meta.suspect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Durability;
    use protocol_core::Version;
    use std::time::Duration;

    fn store(dir: &tempfile::TempDir) -> Store {
        // The key file beside the state directory, not in the user's ~/.config.
        let keys = crate::storage::KeySettings {
            source: Some(crate::storage::SourceKind::KeyFile),
            key_file: Some(dir.path().join("keys/omemod.key")),
            ..Default::default()
        };
        let config = crate::storage::StoreConfig {
            durability: Durability::Normal,
            keys,
            ..Default::default()
        };
        Store::open_with(&dir.path().join("state/t.db"), config).unwrap()
    }

    fn addr(device: u32) -> DeviceAddr {
        DeviceAddr::new(1, "bob@example.org", Version::Twomemo, device)
    }

    #[tokio::test]
    async fn slots_without_a_session_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let table = SessionTable::default();
        for device in 1..=1_000 {
            let g = table.lock(&store, &addr(device)).await.unwrap();
            assert!(g.session.is_none());
            assert_eq!(table.len(), 1);
        }
        assert!(table.is_empty());
        let many: Vec<DeviceAddr> = (1..=50).map(addr).collect();
        let guards = table.lock_many(&store, &many).await.unwrap();
        assert_eq!(table.len(), 50);
        drop(guards);
        assert!(table.is_empty());
    }

    #[tokio::test]
    async fn one_session_still_serialises_and_waiters_keep_the_slot() {
        use tokio::sync::oneshot;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(store(&dir));
        let table = Arc::new(SessionTable::default());
        let first = table.lock(&store, &addr(7)).await.unwrap();
        let (acquired_tx, acquired_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let (t, s) = (Arc::clone(&table), Arc::clone(&store));
        let second = tokio::spawn(async move {
            let g = t.lock(&s, &addr(7)).await.unwrap();
            let _ = acquired_tx.send(());
            let _ = release_rx.await;
            drop(g);
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!second.is_finished(), "second lock must wait for the first");
        // The waiter holds the slot: dropping the first guard must not remove it, or a third
        // caller would get a fresh, separate lock for the same session.
        drop(first);
        acquired_rx.await.unwrap();
        assert_eq!(table.len(), 1);
        let (t, s) = (Arc::clone(&table), Arc::clone(&store));
        let third = tokio::spawn(async move { drop(t.lock(&s, &addr(7)).await.unwrap()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!third.is_finished(), "third lock must wait for the second");
        release_tx.send(()).unwrap();
        second.await.unwrap();
        third.await.unwrap();
        assert!(table.is_empty());
    }

    #[test]
    fn eviction_drops_idle_slots_oldest_first_and_keeps_held_ones() {
        let mut map = HashMap::new();
        for d in 1..=10u32 {
            map.insert(addr(d), (SharedSlot::default(), u64::from(d)));
        }
        // Device 1 is the oldest but in use.
        let held = map[&addr(1)].0.clone();
        evict_idle(&mut map, 5);
        assert_eq!(map.len(), 5);
        assert!(map.contains_key(&addr(1)));
        for d in 7..=10 {
            assert!(map.contains_key(&addr(d)), "recent slot {d} evicted");
        }
        drop(held);
    }
}
