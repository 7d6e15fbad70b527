//! Redelivery: the same `<encrypted>` element decrypted again — by another client process of
//! the user, or by a client retrying after a lost answer — gets the same answer, marked
//! `redelivered`, without touching the ratchet.
//!
//! The first decryption stores, in the transaction that advances the ratchet, the key material
//! the ratchet recovered for our key element (never the plaintext), keyed by a digest of
//! (namespace, sender, sender device, our key element). A second decryption finds it and opens
//! the payload again; a different payload under the same key element is refused. Only a digest
//! is kept longer, so an old replay is reported as a replay. Everything is bounded by
//! [`RedeliveryConfig`] (`--redelivery-retention`, `--redelivery-max-entries`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use protocol_core::session::Decrypted;
use protocol_core::xml::{Encrypted, KeyElement};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::account::Account;
use super::decrypt::DecryptError;
use super::decrypt::{check_envelope, open_payload, Attempt, Conversation, DecryptOutcome};
use super::encrypt::{DeviceStatus, EncryptError, EncryptOutcome, EncryptRequest, Forms, Kept};
use super::{Manager, StorageError};
use crate::config::RedeliveryConfig;
use crate::storage::redelivery::{
    self as store, Bounds, ConversationTag, EncryptResultRow, Pruned, Record, RedeliveryRow, Seen,
};
use crate::storage::trust::TrustLevel;
use crate::storage::{sessions as session_store, DeviceAddr};

/// Digests (no key material) are kept 90 days, for replay reports.
pub const DIGEST_RETENTION_SECS: i64 = 90 * 24 * 3600;
/// At most this many digests.
pub const MAX_DIGESTS: i64 = 200_000;
/// Records between two inline prunes (besides the hourly maintenance one).
const PRUNE_EVERY: u64 = 256;
/// Ids a maintenance prune deletes or erases per transaction (a millisecond or two of the
/// writer at most).
const PRUNE_BATCH: i64 = 500;

/// The storage bounds for `config`: digests outlive key material (replay reports).
pub(crate) fn store_bounds(config: &RedeliveryConfig) -> Bounds {
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    Bounds {
        retention_secs: if config.enabled() {
            clamp(config.retention_secs)
        } else {
            0
        },
        max_rows: clamp(config.max_entries),
        digest_retention_secs: DIGEST_RETENTION_SECS.max(clamp(config.retention_secs)),
        max_digests: MAX_DIGESTS.max(clamp(config.max_entries)),
        max_result_bytes: clamp(config.idempotency_max_bytes),
    }
}

/// The manager's redelivery state.
#[derive(Debug, Default)]
pub struct State {
    config: RwLock<RedeliveryConfig>,
    /// Where each remembered message is: a decrypt looks in the database only on a hit, so the
    /// common case costs no read. False hits are harmless (the row's digest is checked); there
    /// are no misses, since an entry is added after its commit and before the session lock is
    /// released.
    filter: Mutex<Filter>,
    records: AtomicU64,
    /// Where the next prune starts ([`Pruned::key_frontier`]); moved only after a committed
    /// maintenance prune, so a rolled-back one cannot skip rows.
    key_frontier: AtomicI64,
    /// Serializes `encrypt` calls that carry an idempotency key.
    pub(crate) encrypt_lock: tokio::sync::Mutex<()>,
    /// Tests only (`debug.kill_after_commit`): SIGKILL ourselves right after the next decrypt
    /// commit, before its answer.
    kill_after_commit: std::sync::atomic::AtomicBool,
}

/// Digest prefix → row id of every remembered message (the table has no index on the digest),
/// and while the filter is being rebuilt from the database, what was added meanwhile (so the
/// rebuild loses nothing).
#[derive(Debug, Default)]
struct Filter {
    set: HashMap<u64, i64>,
    during_rebuild: Option<Vec<(u64, i64)>>,
}

impl State {
    /// The configuration.
    pub fn config(&self) -> RedeliveryConfig {
        *self.config.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The row that may hold `digest`.
    fn find(&self, digest: &[u8; 32]) -> Option<i64> {
        self.filter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set
            .get(&store::prefix(digest))
            .copied()
    }

    fn insert(&self, prefix: u64, id: i64) {
        let mut f = self.filter.lock().unwrap_or_else(PoisonError::into_inner);
        f.set.insert(prefix, id);
        if let Some(log) = f.during_rebuild.as_mut() {
            log.push((prefix, id));
        }
    }

    /// Fills the filter (from [`store::digest_prefixes`]).
    pub(crate) fn load(&self, prefixes: Vec<(u64, i64)>) {
        let mut f = self.filter.lock().unwrap_or_else(PoisonError::into_inner);
        f.set.extend(prefixes);
    }

    /// Call before reading the prefixes for [`State::finish_rebuild`].
    fn start_rebuild(&self) {
        self.filter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .during_rebuild = Some(Vec::new());
    }

    /// Replaces the filter by what the database holds now (pruned entries leave it), keeping
    /// whatever was committed while it was read.
    fn finish_rebuild(&self, prefixes: Option<Vec<(u64, i64)>>) {
        // The new map is built, and the old one dropped, outside the lock: every decrypt
        // asks the filter, and 200,000 entries take milliseconds either way.
        let mut fresh: Option<HashMap<u64, i64>> = prefixes.map(|p| p.into_iter().collect());
        let mut f = self.filter.lock().unwrap_or_else(PoisonError::into_inner);
        let added = f.during_rebuild.take().unwrap_or_default();
        if let Some(set) = fresh.as_mut() {
            set.extend(added);
            std::mem::swap(&mut f.set, set);
        }
        drop(f);
        drop(fresh);
    }
}

/// Identifies one received element for our device.
#[derive(Debug, Clone)]
pub struct Probe {
    digest: [u8; 32],
    payload_digest: [u8; 32],
    empty: bool,
}

/// Longest accepted `idempotency_key`, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 256;

/// Digest of everything that shapes an `encrypt` answer, so a key reused for another request
/// is noticed.
pub fn request_digest(req: &EncryptRequest) -> [u8; 32] {
    let mut h = Sha256::new();
    put(&mut h, b"omemod encrypt v1");
    h.update((req.to.len() as u64).to_be_bytes());
    for j in &req.to {
        put(&mut h, j.as_bytes());
    }
    match &req.body {
        Some(b) => {
            h.update([1]);
            put(&mut h, b.as_bytes());
        }
        None => h.update([0]),
    }
    h.update((req.namespaces.len() as u64).to_be_bytes());
    for ns in &req.namespaces {
        put(&mut h, ns.namespace().as_bytes());
    }
    h.update([u8::from(req.one_namespace_per_device)]);
    match &req.sce_to {
        Some(t) => {
            h.update([1]);
            put(&mut h, t.as_bytes());
        }
        None => h.update([0]),
    }
    h.finalize().into()
}

/// An `encrypt` answer to keep, and the byte cap of the whole store.
#[derive(Debug)]
pub(crate) struct KeptAnswer {
    row: EncryptResultRow,
    max_bytes: i64,
}

impl KeptAnswer {
    /// Runs in the encryption's transaction.
    pub(crate) fn write(&self, tx: &rusqlite::Connection) -> Result<(), StorageError> {
        if !store::put_encrypt_result(tx, &self.row, self.max_bytes)? {
            tracing::warn!(bytes = self.row.result.len(), max = self.max_bytes, "an encrypt answer larger than --idempotency-max-bytes is not kept: a retry encrypts again");
        }
        Ok(())
    }
}

/// What the redelivery store keeps of `conv` (its `to` normalised by the caller): a digest,
/// not the JID.
fn conversation_tag(conv: &Conversation) -> ConversationTag {
    ConversationTag {
        to: conv.to.as_deref().map(|to| {
            let mut h = Sha256::new();
            put(&mut h, b"omemod conversation v1");
            put(&mut h, to.as_bytes());
            h.finalize().into()
        }),
        group_chat: conv.group_chat,
    }
}

fn put(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

impl Probe {
    /// Digests of `element` as sent by `from`, with `key` our key element in it.
    pub fn new(from: &str, element: &Encrypted, key: &KeyElement) -> Self {
        if cfg!(feature = "bench-baseline-no-redelivery") {
            return Self {
                digest: [0; 32],
                payload_digest: [0; 32],
                empty: true,
            };
        }
        let mut h = Sha256::new();
        put(&mut h, b"omemod redelivery v1");
        put(&mut h, element.version.namespace().as_bytes());
        put(&mut h, from.as_bytes());
        h.update(element.sid.to_be_bytes());
        h.update([u8::from(key.kex)]);
        put(&mut h, &key.data);
        let digest = h.finalize().into();
        let mut p = Sha256::new();
        put(&mut p, b"omemod payload v1");
        for part in [&element.iv, &element.payload] {
            match part {
                Some(b) => {
                    p.update([1]);
                    put(&mut p, b);
                }
                None => p.update([0]),
            }
        }
        Self {
            digest,
            payload_digest: p.finalize().into(),
            empty: element.payload.as_ref().is_none_or(|p| p.is_empty()),
        }
    }
}

impl Manager {
    /// Sets the bounds (at start-up).
    pub fn set_redelivery_config(&self, config: RedeliveryConfig) {
        *self
            .redelivery
            .config
            .write()
            .unwrap_or_else(PoisonError::into_inner) = config;
    }

    /// Before decrypting (session lock held): the answer for `received` (element, sender, and
    /// whether the sender lists the device) when it was decrypted before,
    /// `Err(DuplicateMessage)` for a known element that cannot (or must not) be opened again,
    /// `Err(Distrusted)`/`Err(SceMismatch)` as for a first decryption (`conv` is this
    /// request's conversation), `None` for a new one.
    pub(crate) async fn redeliver(
        &self,
        acct: &Account,
        received: (&Encrypted, &str, bool),
        probe: &Probe,
        conv: &Conversation,
    ) -> Result<Option<DecryptOutcome>, DecryptError> {
        let (element, from, _) = received;
        if cfg!(feature = "bench-baseline-no-redelivery") {
            return Ok(None);
        }
        let Some(row_id) = self.redelivery.find(&probe.digest) else {
            return Ok(None);
        };
        let (id, digest) = (acct.id, probe.digest);
        let seen = self
            .store
            .read(move |c| store::lookup(c, row_id, id, &digest))
            .await?;
        let row = match seen {
            Seen::No => return Ok(None),
            Seen::DigestOnly => return Err(DecryptError::DuplicateMessage),
            Seen::Redeliverable(row) => row,
        };
        let config = self.redelivery.config();
        let window = i64::try_from(config.retention_secs).unwrap_or(i64::MAX);
        // Past the window (not pruned yet), or kept before redelivery was turned off.
        if !config.enabled() || row.created_at < crate::storage::now().saturating_sub(window) {
            return Err(DecryptError::DuplicateMessage);
        }
        // Same key element, another payload: a reused message key (tampering, or a replay
        // dressed as a new message). Never open it.
        if row.payload_digest != probe.payload_digest {
            return Err(DecryptError::DuplicateMessage);
        }
        let mode = acct.keys.lock().await?.trust_mode;
        let trust = self.trust_for_key(acct, mode, from, &row.identity_key)?.row;
        if trust.level == TrustLevel::Distrusted {
            return Err(DecryptError::Distrusted);
        }
        // A copy moved into another conversation than the first decryption's (0.3 has no
        // envelope that would say so).
        if row
            .conversation
            .is_some_and(|first| !first.admits(&conversation_tag(conv)))
        {
            return Err(DecryptError::SceMismatch(
                "the message was first decrypted in another conversation".into(),
            ));
        }
        let material = row
            .key_material
            .clone()
            .unwrap_or_else(|| Zeroizing::new(Vec::new()));
        let d = Decrypted {
            plaintext: material,
            n: 0,
            skipped: Default::default(),
        };
        // An empty message has no key material stored; its payload digest proves the element
        // is still empty.
        let opened = open_payload(element.version, element, &d)?;
        // The copy may have been moved into another conversation than the first one.
        check_envelope(&opened, from, conv)?;
        tracing::debug!(account = %acct.jid, peer = from, device = element.sid, "redelivered");
        Ok(Some(DecryptOutcome {
            // The duties were handed out with the first answer: no actions.
            redelivered: true,
            first_decrypted_at: Some(row.created_at),
            ..DecryptOutcome::new(received, &trust, opened, row.key_exchange)
        }))
    }

    /// What the decryption's commit must write so this element can be redelivered, in the
    /// conversation `conv` only (nothing in the benchmark baseline).
    pub(super) fn redelivery_record(
        &self,
        acct: &Account,
        probe: &Probe,
        conv: &Conversation,
        attempt: &Attempt,
        now: i64,
    ) -> Option<Record> {
        if cfg!(feature = "bench-baseline-no-redelivery") {
            return None;
        }
        let config = self.redelivery.config();
        let n = self.redelivery.records.fetch_add(1, Ordering::Relaxed);
        Some(Record {
            row: RedeliveryRow {
                account_id: acct.id,
                digest: probe.digest,
                payload_digest: probe.payload_digest,
                key_material: (!probe.empty).then(|| attempt.decrypted.plaintext.clone()),
                identity_key: *attempt.session.remote_curve25519(),
                key_exchange: attempt.key_exchange,
                created_at: now,
                conversation: Some(conversation_tag(conv)),
            },
            keep_key: config.enabled(),
            prune: (n % PRUNE_EVERY == PRUNE_EVERY - 1).then(|| {
                let from = self.redelivery.key_frontier.load(Ordering::Relaxed);
                (store_bounds(&config), from)
            }),
        })
    }

    /// The row that keeps `out` for its idempotency key, in one form ([`Forms::KEPT`]).
    pub(crate) fn encrypt_record(
        &self,
        acct: &Account,
        kept: Kept,
        out: &EncryptOutcome,
    ) -> Result<KeptAnswer, StorageError> {
        let mut one_form = out.clone();
        Forms::KEPT.keep(&mut one_form);
        let result = serde_json::to_string(&one_form).map_err(|e| StorageError::InvalidInput {
            what: "the encrypt answer to keep",
            reason: e.to_string(),
        })?;
        Ok(KeptAnswer {
            row: EncryptResultRow {
                account_id: acct.id,
                idempotency_key: kept.key,
                request_digest: kept.digest,
                result,
                created_at: crate::storage::now(),
            },
            max_bytes: store_bounds(&self.redelivery.config()).max_result_bytes,
        })
    }

    /// Whether a kept answer may be given again: every device it encrypted for still has the
    /// session it was made with (the same identity key), no identity change waits for the
    /// user there, and, when it carried a body, the key is still trusted.
    pub(crate) async fn kept_answer_holds(
        &self,
        acct: &Account,
        out: &EncryptOutcome,
        with_body: bool,
    ) -> Result<bool, StorageError> {
        let addrs: Vec<DeviceAddr> = out
            .devices
            .iter()
            .filter(|d| d.status == DeviceStatus::Encrypted)
            .filter_map(|d| {
                let ns = protocol_core::Version::from_namespace(&d.namespace)?;
                Some(Self::addr(acct, &d.jid, ns, d.device_id))
            })
            .collect();
        let lookup = addrs.clone();
        let keys: Vec<Option<[u8; 32]>> = self
            .store
            .read(move |c| {
                lookup
                    .iter()
                    .map(|a| Ok(session_store::get(c, a)?.map(|r| r.identity_key)))
                    .collect()
            })
            .await?;
        let mode = acct.keys.lock().await?.trust_mode;
        for (addr, key) in addrs.iter().zip(keys) {
            let Some(key) = key else {
                return Ok(false);
            };
            let pending = self
                .with_directory(acct.id, |d| d.pending_identity(addr))?
                .is_some_and(|p| p.new != key);
            if pending
                || (with_body
                    && self.trust_for_key(acct, mode, &addr.jid, &key)?.row.level
                        != TrustLevel::Trusted)
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The answer kept for an `encrypt` idempotency key, if any and still within the window;
    /// `Err(IdempotencyKeyReused)` if the key was used for another request.
    pub(crate) async fn stored_encrypt(
        &self,
        acct: &Account,
        key: &str,
        digest: &[u8; 32],
    ) -> Result<Option<EncryptOutcome>, EncryptError> {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
            return Err(EncryptError::IdempotencyKeyLength {
                max: MAX_IDEMPOTENCY_KEY,
            });
        }
        let config = self.redelivery.config();
        if !config.enabled() {
            return Ok(None);
        }
        let (id, k) = (acct.id, key.to_owned());
        let Some(row) = self
            .store
            .read(move |c| store::get_encrypt_result(c, id, &k))
            .await?
        else {
            return Ok(None);
        };
        let window = i64::try_from(config.retention_secs).unwrap_or(i64::MAX);
        if row.created_at < crate::storage::now().saturating_sub(window) {
            // Expired: as if never seen (the prune deletes it soon).
            return Ok(None);
        }
        if row.request_digest != *digest {
            return Err(EncryptError::IdempotencyKeyReused);
        }
        let out: EncryptOutcome =
            serde_json::from_str(&row.result).map_err(|e| StorageError::BadData {
                table: "encrypt_results",
                column: "result",
                reason: e.to_string(),
            })?;
        Ok(Some(out))
    }

    /// Tests only: the next decrypt dies right after its commit (see `debug.kill_after_commit`).
    pub fn kill_after_next_commit(&self) {
        self.redelivery
            .kill_after_commit
            .store(true, Ordering::SeqCst);
    }

    /// After the commit (which wrote row `id` for the element), before the session lock is
    /// released.
    pub(crate) fn redelivery_committed(&self, probe: &Probe, id: Option<i64>) {
        if self.redelivery.kill_after_commit.load(Ordering::Relaxed) {
            let me = rustix::process::getpid();
            let _ = rustix::process::kill_process(me, rustix::process::Signal::KILL);
        }
        if let Some(id) = id {
            self.redelivery.insert(store::prefix(&probe.digest), id);
        }
    }

    /// Deletes what the bounds no longer allow; the WAL truncation it owes when it erased key
    /// material is the maintenance pass's ([`Self::truncate_wal_if_owed`]). Run by every
    /// maintenance pass (the first at start-up).
    pub async fn prune_redelivery(&self, now: i64) -> Result<Pruned, StorageError> {
        let bounds = store_bounds(&self.redelivery.config());
        let from = self.redelivery.key_frontier.load(Ordering::Relaxed);
        // In steps of PRUNE_BATCH ids, each its own transaction, so that no request waits
        // behind the whole prune (200,000 digests at once took 130 ms of the writer).
        let mut cuts = self
            .store
            .read(move |c| store::prune_cuts(c, now, bounds, from))
            .await?;
        let mut pruned = Pruned::default();
        loop {
            let (step, next, done) = self
                .store
                .write(move |tx| {
                    let step = store::prune_step(tx, &mut cuts, PRUNE_BATCH)?;
                    Ok((step, cuts, cuts.done(tx)?))
                })
                .await?;
            cuts = next;
            pruned.redelivery += step.redelivery;
            pruned.digests += step.digests;
            pruned.key_frontier = step.key_frontier;
            if done {
                break;
            }
            tokio::task::yield_now().await;
        }
        pruned.encrypt_results = self
            .store
            .write(move |tx| store::prune_encrypt_results(tx, now, bounds))
            .await?;
        self.redelivery
            .key_frontier
            .store(pruned.key_frontier, Ordering::Relaxed);
        let own = self.prune_own_messages(now).await?;
        if pruned.erased() || own > 0 {
            self.key_material_erased();
        }
        // Forget pruned digests, so the filter stays as small as the tables.
        self.redelivery.start_rebuild();
        let prefixes = self.store.read(|c| store::digest_prefixes(c)).await;
        self.redelivery
            .finish_rebuild(prefixes.as_ref().ok().cloned());
        prefixes?;
        tracing::debug!(?pruned, "redelivery store pruned");
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_rebuild_keeps_what_was_added_meanwhile() {
        let s = State::default();
        s.load(vec![(1, 1), (2, 2), (3, 3)]);
        s.start_rebuild();
        s.insert(9, 9); // committed while the database was being read
        s.finish_rebuild(Some(vec![(3, 3), (4, 4)]));
        let mut v: Vec<(u64, i64)> = s.filter.lock().unwrap().set.clone().into_iter().collect();
        v.sort_unstable();
        assert_eq!(v, [(3, 3), (4, 4), (9, 9)]);
        // A failed read keeps the old filter.
        s.start_rebuild();
        s.finish_rebuild(None);
        assert!(s.filter.lock().unwrap().set.contains_key(&9));
    }

    #[test]
    fn zero_turns_key_material_off_but_keeps_digests() {
        let off = RedeliveryConfig {
            retention_secs: 0,
            max_entries: 10,
            ..Default::default()
        };
        assert!(!off.enabled());
        let b = store_bounds(&off);
        assert_eq!(b.retention_secs, 0);
        assert_eq!(b.digest_retention_secs, DIGEST_RETENTION_SECS);
        assert!(RedeliveryConfig::default().enabled());
    }

    #[test]
    fn probe_binds_sender_device_key_and_payload() {
        let el = |sid, data: &[u8], payload: Option<&[u8]>| Encrypted {
            version: protocol_core::Version::Twomemo,
            sid,
            keys: vec![KeyElement {
                jid: None,
                rid: 1,
                kex: false,
                data: data.to_vec(),
            }],
            iv: None,
            payload: payload.map(<[u8]>::to_vec),
        };
        let p = |from, e: &Encrypted| Probe::new(from, e, &e.keys[0]);
        let base = el(5, b"key", Some(b"ct"));
        let a = p("a@x", &base);
        assert_eq!(a.digest, p("a@x", &base).digest);
        assert_ne!(a.digest, p("b@x", &base).digest);
        assert_ne!(a.digest, p("a@x", &el(6, b"key", Some(b"ct"))).digest);
        assert_ne!(a.digest, p("a@x", &el(5, b"kez", Some(b"ct"))).digest);
        let other = p("a@x", &el(5, b"key", Some(b"cu")));
        assert_eq!(a.digest, other.digest);
        assert_ne!(a.payload_digest, other.payload_digest);
        assert_ne!(
            a.payload_digest,
            p("a@x", &el(5, b"key", None)).payload_digest
        );
    }
}
