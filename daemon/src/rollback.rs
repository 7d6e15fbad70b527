//! A database that is an older copy of itself (a restored backup, a copy put back, a snapshot)
//! is noticed and treated before it serves anything, and the record that notices it is kept
//! while the daemon runs (see [`crate::storage::generation`] and [`crate::storage::marks`]).
//!
//! The treatment, in one transaction with the start's generation bump: every session of the
//! affected accounts is marked for a rebuild and *suspect* (what decrypts on it may be a replay
//! of a message read after the copy, so it is refused), their previous states are dropped, every
//! stored peer bundle is dropped (it may offer a prekey consumed since), every one-time prekey
//! is retired and a fresh pool made with ids well past any the copy may have handed out, the
//! signed prekey is rotated, and the stamp of the copy is cleared. The bundles must then be
//! published again: `publish_bundle` duties for every account and namespace.

use std::sync::Arc;
use std::time::Duration;

use protocol_core::keys::identity::SignedPreKey;
use protocol_core::keys::{IdentityKeyPair, PrivateKey};
use rand::rngs::OsRng;

use crate::manager::account::{refill_prekey_pools, signed_prekey_row};
use crate::storage::generation::{self, Inspection, Record, RecordFile, RecordSync, Rollback};
use crate::storage::{
    accounts, device_state, identity, prekeys, rebuilds, sessions, signed_prekeys, StorageError,
    Store,
};

/// How often the record is flushed to the disk while it changes. A power loss can lose the
/// record of the last second (not a crash of the daemon: the page cache survives that), and
/// with it the means to notice a copy taken in that second.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// One-time prekey ids skipped after a restore: more key exchanges than this between a copy
/// and its restore would be needed for an id to be given twice.
pub const PREKEY_ID_JUMP: u32 = 1 << 20;
/// Signed prekey ids skipped after a restore (one is used per rotation, weekly).
pub const SIGNED_PREKEY_ID_JUMP: u32 = 1 << 10;

/// Keeps the record beside the database flushed.
#[derive(Debug)]
pub struct Keeper {
    sync: Arc<RecordSync>,
}

/// What [`Keeper::start`] found and did.
#[derive(Debug)]
pub struct Started {
    /// The keeper.
    pub keeper: Keeper,
    /// The older copy found, if any.
    pub rollback: Option<Rollback>,
    /// The accounts treated as restored (their bundles must be published again).
    pub restored: Vec<String>,
}

/// One account treated.
struct Treated {
    jid: String,
    sessions: usize,
    prekeys: usize,
}

impl Keeper {
    /// Treats what the comparison at open found, starts a new generation above both the
    /// database's and the record's, writes the record afresh and hands it to the writer. Run
    /// before the manager loads its state and before anything is served.
    pub async fn start(store: Arc<Store>) -> Result<Started, StorageError> {
        let inspection = match store.take_inspection() {
            Some(i) => i,
            // Already started once on this store: nothing new can have been found.
            None => Inspection {
                floor: 0,
                database_generation: 0,
                recorded_generation: None,
                found_by: Vec::new(),
                all_accounts: false,
                stamped: Vec::new(),
            },
        };
        let now = crate::storage::now();
        let i = inspection.clone();
        let (treated, generation, deletions) = store
            .write(move |tx| {
                let treated = if i.found() {
                    treat(tx, &i, now)?
                } else {
                    Vec::new()
                };
                let g = generation::bump(tx, i.floor)?;
                Ok((treated, g, generation::deletions(tx)?))
            })
            .await?;
        let record = Record::at_start(generation, deletions);
        let file = RecordFile::create(store.path(), &record)?;
        let sync = Arc::new(file.syncer()?);
        store.attach_record(file, record)?;
        let keeper = Keeper { sync };
        if !inspection.found() {
            return Ok(Started {
                keeper,
                rollback: None,
                restored: Vec::new(),
            });
        }
        let count = |f: fn(&Treated) -> usize| {
            u64::try_from(treated.iter().map(f).sum::<usize>()).unwrap_or(u64::MAX)
        };
        let rollback = Rollback {
            database_generation: inspection.database_generation,
            expected_generation: inspection
                .recorded_generation
                .unwrap_or(inspection.database_generation),
            found_by: inspection.found_by.clone(),
            detected_at: now,
            accounts: treated.iter().map(|t| t.jid.clone()).collect(),
            sessions_to_rebuild: count(|t| t.sessions),
            prekeys_retired: count(|t| t.prekeys),
        };
        tracing::warn!(
            found_by = ?rollback.found_by,
            database_generation = rollback.database_generation,
            expected_generation = rollback.expected_generation,
            accounts = ?rollback.accounts,
            sessions_to_rebuild = rollback.sessions_to_rebuild,
            prekeys_retired = rollback.prekeys_retired,
            "the database is an older copy (restored backup or snapshot?): its sessions are \
             rebuilt on their next message, messages on them are refused as possible replays, \
             and its prekeys and signed prekey were replaced"
        );
        // The retired prekeys' private keys must not linger in the log.
        let s = Arc::clone(&store);
        match tokio::task::spawn_blocking(move || s.checkpoint_truncate()).await {
            Ok(Ok(r)) if r.busy => tracing::warn!("WAL truncation after the treatment was blocked"),
            Ok(Err(e)) => tracing::warn!(error = %e, "WAL truncation after the treatment failed"),
            _ => {}
        }
        let restored = rollback.accounts.clone();
        Ok(Started {
            keeper,
            rollback: Some(rollback),
            restored,
        })
    }

    /// Flushes the record to the disk if it changed since the last flush (off the runtime
    /// thread).
    pub async fn sync(&self) -> Result<(), StorageError> {
        let s = Arc::clone(&self.sync);
        tokio::task::spawn_blocking(move || s.sync())
            .await
            .unwrap_or(Ok(()))
    }
}

/// The treatment of every affected account, in the start's transaction.
fn treat(
    tx: &crate::storage::Db,
    inspection: &Inspection,
    now: i64,
) -> Result<Vec<Treated>, StorageError> {
    let mut out = Vec::new();
    for a in accounts::list(tx)? {
        if inspection.all_accounts || inspection.stamped.contains(&a.id) {
            let (sessions, prekeys) = treat_account(tx, a.id, now)?;
            out.push(Treated {
                jid: a.jid,
                sessions,
                prekeys,
            });
        }
    }
    Ok(out)
}

/// Treats one account as restored; returns how many sessions were marked and prekeys retired.
fn treat_account(
    tx: &crate::storage::Db,
    id: i64,
    now: i64,
) -> Result<(usize, usize), StorageError> {
    let marked = rebuilds::request_all(tx, id, now)?;
    sessions::mark_all_suspect(tx, id)?;
    device_state::delete_previous_sessions_of_account(tx, id)?;
    let retired = prekeys::delete_all(tx, id)?;
    accounts::skip_ids(tx, id, PREKEY_ID_JUMP, SIGNED_PREKEY_ID_JUMP)?;
    refill_prekey_pools(tx, id, now)?;
    if let Some(row) = identity::get(tx, id)? {
        let identity =
            IdentityKeyPair::from_private(PrivateKey::from_bytes(*row.private_key.expose()));
        // The old one stays for its grace period, as after any rotation.
        if let Some(current) = signed_prekeys::current(tx, id)? {
            signed_prekeys::retire(tx, id, current.id, now)?;
        }
        let spk_id = accounts::take_signed_prekey_id(tx, id)?;
        let spk = SignedPreKey::generate(spk_id, &identity, &mut OsRng);
        signed_prekeys::insert(tx, &signed_prekey_row(id, &spk, now))?;
    }
    accounts::bump_bundle_version(tx, id)?;
    generation::clear_stamp(tx, id)?;
    Ok((marked, retired))
}
