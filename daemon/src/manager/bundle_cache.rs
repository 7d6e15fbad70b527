//! A bounded in-memory cache of peer bundles that were parsed and verified, so that starting a
//! session from a stored bundle needs no database read, no XML and no second signature check.
//!
//! Only [`VerifiedBundle`]s go in, and the type can only be made by verifying. The cache must
//! never hold a bundle other than the committed one, although a bundle changes in a write job
//! (ordered by commit) while it is loaded on a reader (in parallel). Hence tickets:
//!
//! * code that queues a job changing or deleting bundles first takes a [`WriteTicket`]
//!   ([`BundleCache::write_ticket`]); **inside the job** (so in commit order) it invalidates
//!   each device it changes, whose entry becomes *pending* (absent). After COMMIT it may
//!   [`BundleCache::publish`] the new bundle, which succeeds only if no later job invalidated
//!   the same device since. Then it drops the ticket.
//! * a reader takes a [`LoadTicket`] ([`BundleCache::load_ticket`]) **before** reading the row,
//!   then [`BundleCache::fill`]s the parsed bundle; that succeeds only if no write ticket was
//!   held when the load ticket was taken (so no change was uncommitted when the row was read),
//!   none was taken, nothing was invalidated or evicted since, and no bundle is cached for it.
//!
//! A refused `publish`/`fill` only costs a later cache miss. Memory is bounded by entries and
//! by the one-time prekeys they hold (a bundle may carry up to 1000); the least recently used
//! entries go first.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use protocol_core::bundle::BundleError;
use protocol_core::xml::{self, XmlError};
use protocol_core::Version;

use crate::storage::DeviceAddr;

pub use protocol_core::bundle::VerifiedBundle;

/// Why a bundle cannot be cached (or used).
#[derive(Debug, thiserror::Error)]
pub enum BundleCheckError {
    /// Not a well-formed bundle of the namespace.
    #[error("invalid bundle: {0}")]
    Xml(#[from] XmlError),
    /// Parsed, but ids, keys or the signature are wrong.
    #[error("invalid bundle: {0}")]
    Invalid(#[from] BundleError),
}

/// Parses a bundle element of `namespace` and verifies it.
pub fn parse(namespace: Version, bundle_xml: &str) -> Result<VerifiedBundle, BundleCheckError> {
    Ok(VerifiedBundle::verify(xml::bundle_from_xml(
        namespace, bundle_xml,
    )?)?)
}

/// What an entry counts against the prekey budget.
fn weight(b: &VerifiedBundle) -> usize {
    1 + b.bundle().prekeys.len()
}

/// Held by the code around a write job that changes or deletes bundles, from before the job is
/// queued until its outcome is known (see [`BundleCache::write_ticket`]). While any is held, no
/// load fills the cache. Dropping it ends it: not before the job's outcome is known (requests run
/// to completion on their own tasks), or a load could fill a row the job is about to replace.
#[must_use]
pub struct WriteTicket {
    inner: Arc<Mutex<Inner>>,
    id: u64,
}

impl std::fmt::Debug for WriteTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("WriteTicket").field(&self.id).finish()
    }
}

impl WriteTicket {
    /// What the job itself calls (it runs on the writer thread).
    pub fn invalidator(&self) -> Invalidator {
        Invalidator {
            inner: Arc::clone(&self.inner),
            id: self.id,
        }
    }
}

impl Drop for WriteTicket {
    fn drop(&mut self) {
        lock(&self.inner).outstanding -= 1;
    }
}

/// Invalidates entries from inside a write job, in commit order (see [`WriteTicket`]).
#[derive(Clone)]
pub struct Invalidator {
    inner: Arc<Mutex<Inner>>,
    id: u64,
}

impl std::fmt::Debug for Invalidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Invalidator").field(&self.id).finish()
    }
}

impl Invalidator {
    /// Call inside the job that changes or deletes `addr`'s bundle: drops what is cached for
    /// it until [`BundleCache::publish`] with the same ticket.
    pub fn invalidate(&self, addr: &DeviceAddr) {
        let mut g = lock(&self.inner);
        g.gen += 1;
        g.put(addr.clone(), Slot::Pending { ticket: self.id });
        g.evict();
    }

    /// Call inside the job that deletes an account: drops every entry of it.
    pub fn invalidate_account(&self, account_id: i64) {
        let mut g = lock(&self.inner);
        g.gen += 1;
        let gone: Vec<DeviceAddr> = g
            .entries
            .keys()
            .filter(|a| a.account_id == account_id)
            .cloned()
            .collect();
        for a in &gone {
            g.remove(a);
        }
    }
}

/// The cache's state before a row was read (see [`BundleCache::fill`]); `None` when a write
/// job was under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct LoadTicket(Option<u64>);

/// Counters, for tests and diagnostics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// `get` calls answered from memory.
    pub hits: u64,
    /// `get` calls that were not.
    pub misses: u64,
    /// Entries dropped to stay within the bounds.
    pub evictions: u64,
    /// `publish` and `fill` calls refused because of a concurrent change.
    pub refused: u64,
}

enum Slot {
    /// Changed by a job whose result is not published (yet): counts as absent.
    Pending {
        ticket: u64,
    },
    Ready(Arc<VerifiedBundle>),
}

struct Entry {
    slot: Slot,
    /// Key in `Inner::lru`.
    used: u64,
}

struct Inner {
    entries: HashMap<DeviceAddr, Entry>,
    /// Least recently used first.
    lru: BTreeMap<u64, DeviceAddr>,
    /// Bumped by every ticket, invalidation and eviction; load tickets are taken from it.
    gen: u64,
    /// Write tickets held.
    outstanding: usize,
    /// Use counter for `lru`.
    clock: u64,
    /// Prekeys (plus one per entry) of the ready entries.
    weight: usize,
    max_entries: usize,
    max_weight: usize,
    stats: CacheStats,
}

fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    fn touch(&mut self, addr: &DeviceAddr) {
        self.clock += 1;
        let clock = self.clock;
        if let Some(e) = self.entries.get_mut(addr) {
            self.lru.remove(&e.used);
            e.used = clock;
            self.lru.insert(clock, addr.clone());
        }
    }

    fn remove(&mut self, addr: &DeviceAddr) -> Option<Entry> {
        let e = self.entries.remove(addr)?;
        self.lru.remove(&e.used);
        if let Slot::Ready(b) = &e.slot {
            self.weight -= weight(b);
        }
        Some(e)
    }

    fn put(&mut self, addr: DeviceAddr, slot: Slot) {
        self.remove(&addr);
        if let Slot::Ready(b) = &slot {
            self.weight += weight(b);
        }
        self.clock += 1;
        self.lru.insert(self.clock, addr.clone());
        self.entries.insert(
            addr,
            Entry {
                slot,
                used: self.clock,
            },
        );
    }

    /// Drops the least recently used entries until both bounds hold. Dropping a pending entry
    /// is safe: its job's `publish` is then refused, and loads are refused while it runs.
    fn evict(&mut self) {
        while self.entries.len() > self.max_entries || self.weight > self.max_weight {
            let Some((_, addr)) = self.lru.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&addr) {
                if let Slot::Ready(b) = &e.slot {
                    self.weight -= weight(b);
                }
            }
            self.gen += 1;
            self.stats.evictions += 1;
        }
    }
}

/// The cache. All methods take `&self` and never block for long.
pub struct BundleCache {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for BundleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.lock();
        f.debug_struct("BundleCache")
            .field("max_entries", &g.max_entries)
            .field("max_weight", &g.max_weight)
            .finish_non_exhaustive()
    }
}

/// Default bound on entries.
pub const DEFAULT_MAX_ENTRIES: usize = 1024;
/// Default bound on the one-time prekeys held (36 bytes each: about 2.3 MiB).
pub const DEFAULT_MAX_PREKEYS: usize = 64 * 1024;

impl Default for BundleCache {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ENTRIES, DEFAULT_MAX_PREKEYS)
    }
}

impl BundleCache {
    /// A cache of at most `max_entries` bundles holding at most `max_prekeys` one-time prekeys
    /// in all (a bundle larger than that is simply not kept).
    pub fn new(max_entries: usize, max_prekeys: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                entries: HashMap::new(),
                lru: BTreeMap::new(),
                gen: 0,
                outstanding: 0,
                clock: 0,
                weight: 0,
                max_entries,
                max_weight: max_prekeys,
                stats: CacheStats::default(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// The verified bundle of `addr`, if cached.
    pub fn get(&self, addr: &DeviceAddr) -> Option<Arc<VerifiedBundle>> {
        let mut g = self.lock();
        let found = match g.entries.get(addr).map(|e| &e.slot) {
            Some(Slot::Ready(b)) => Some(Arc::clone(b)),
            _ => None,
        };
        if found.is_some() {
            g.stats.hits += 1;
            g.touch(addr);
        } else {
            g.stats.misses += 1;
        }
        found
    }

    /// Take before queuing a write job that changes or deletes bundles; the job invalidates
    /// through [`WriteTicket::invalidator`], the caller publishes with it after COMMIT, and
    /// drops it when done (committed or not).
    pub fn write_ticket(&self) -> WriteTicket {
        let mut g = self.lock();
        g.gen += 1;
        g.outstanding += 1;
        WriteTicket {
            inner: Arc::clone(&self.inner),
            id: g.gen,
        }
    }

    /// Caches the bundle a committed job stored for `addr`. Refused (returns false) if another
    /// job invalidated `addr` after that one, or its entry was evicted meanwhile.
    pub fn publish(
        &self,
        addr: &DeviceAddr,
        bundle: impl Into<Arc<VerifiedBundle>>,
        ticket: &WriteTicket,
    ) -> bool {
        let bundle = bundle.into();
        let mut g = self.lock();
        let ours = matches!(
            g.entries.get(addr).map(|e| &e.slot),
            Some(Slot::Pending { ticket: t }) if *t == ticket.id
        );
        if !ours || weight(&bundle) > g.max_weight {
            if ours {
                g.remove(addr);
            }
            g.stats.refused += 1;
            return false;
        }
        g.put(addr.clone(), Slot::Ready(bundle));
        g.evict();
        true
    }

    /// Take before reading a bundle row for [`Self::fill`].
    pub fn load_ticket(&self) -> LoadTicket {
        let g = self.lock();
        LoadTicket((g.outstanding == 0).then_some(g.gen))
    }

    /// Caches a bundle read from the database. Refused (returns false) if a write job was under
    /// way when `ticket` was taken, anything was invalidated, evicted or begun since, or `addr`
    /// has a bundle cached already. So the row read is the committed one, still current.
    pub fn fill(
        &self,
        addr: &DeviceAddr,
        bundle: impl Into<Arc<VerifiedBundle>>,
        ticket: LoadTicket,
    ) -> bool {
        let bundle = bundle.into();
        let mut g = self.lock();
        let ready = matches!(g.entries.get(addr).map(|e| &e.slot), Some(Slot::Ready(_)));
        if ticket.0 != Some(g.gen) || ready || weight(&bundle) > g.max_weight {
            g.stats.refused += 1;
            return false;
        }
        g.put(addr.clone(), Slot::Ready(bundle));
        g.evict();
        true
    }

    /// Bundles cached and usable.
    pub fn len(&self) -> usize {
        self.lock()
            .entries
            .values()
            .filter(|e| matches!(e.slot, Slot::Ready(_)))
            .count()
    }

    /// Whether nothing usable is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counters so far.
    pub fn stats(&self) -> CacheStats {
        self.lock().stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol_core::bundle::Bundle;
    use protocol_core::bundle::PreKeyPublic;
    use protocol_core::keys::identity::SignedPreKey;
    use protocol_core::keys::{IdentityKeyPair, KeyPair};
    use protocol_core::x3dh::RemoteIdentity;
    use protocol_core::xml::bundle_to_xml;
    use rand::rngs::OsRng;

    fn signed_bundle(version: Version, prekeys: u32) -> Bundle {
        let identity = IdentityKeyPair::generate(&mut OsRng);
        let spk = SignedPreKey::generate(1, &identity, &mut OsRng);
        Bundle::from_keys(
            version,
            &identity,
            &spk,
            (1..=prekeys)
                .map(|id| PreKeyPublic {
                    id,
                    key: KeyPair::generate(&mut OsRng).public.0,
                })
                .collect(),
        )
    }

    fn verified(prekeys: u32) -> VerifiedBundle {
        VerifiedBundle::verify(signed_bundle(Version::Twomemo, prekeys)).unwrap()
    }

    fn addr(device_id: u32) -> DeviceAddr {
        DeviceAddr::new(1, "bob@example.net", Version::Twomemo, device_id)
    }

    #[test]
    fn parse_verifies_both_namespaces_and_rejects_bad_input_typed() {
        for version in [Version::Twomemo, Version::Oldmemo] {
            let b = signed_bundle(version, 3);
            let v = parse(version, &bundle_to_xml(&b)).unwrap();
            assert_eq!(v.bundle(), &b);
            let expected = RemoteIdentity::from_transported(version, b.identity_key)
                .curve25519()
                .unwrap();
            assert_eq!(v.identity_curve25519(), &expected);

            let mut forged = b.clone();
            forged.signed_prekey_signature[5] ^= 1;
            assert!(matches!(
                parse(version, &bundle_to_xml(&forged)),
                Err(BundleCheckError::Invalid(BundleError::InvalidSignature))
            ));
            let mut empty = b.clone();
            empty.prekeys.clear();
            assert!(matches!(
                VerifiedBundle::verify(empty),
                Err(BundleError::NoPreKeys)
            ));
        }
        for bad in [
            "",
            "<bundle/>",
            "not xml at all <",
            "<bundle xmlns='urn:xmpp:omemo:2'>",
        ] {
            assert!(matches!(
                parse(Version::Twomemo, bad),
                Err(BundleCheckError::Xml(_))
            ));
        }
        // The other namespace's element is refused too.
        let b = signed_bundle(Version::Oldmemo, 2);
        assert!(parse(Version::Twomemo, &bundle_to_xml(&b)).is_err());
    }

    /// A committed write job of `c` storing `b` for `a`.
    fn store(c: &BundleCache, a: &DeviceAddr, b: VerifiedBundle) -> bool {
        let t = c.write_ticket();
        t.invalidator().invalidate(a);
        c.publish(a, b, &t)
    }

    #[test]
    fn publish_after_commit_then_hit() {
        let c = BundleCache::default();
        let a = addr(7);
        assert!(c.get(&a).is_none());
        let t = c.write_ticket();
        t.invalidator().invalidate(&a);
        assert!(c.get(&a).is_none(), "pending counts as absent");
        let v = verified(4);
        assert!(c.publish(&a, v.clone(), &t));
        drop(t);
        assert_eq!(c.get(&a).as_deref(), Some(&v));
        assert_eq!(c.len(), 1);
        let s = c.stats();
        assert_eq!((s.hits, s.misses), (1, 2));
    }

    #[test]
    fn a_later_job_wins_over_an_earlier_publish() {
        let c = BundleCache::default();
        let a = addr(7);
        // Tickets may be taken in any order; what counts is the order of the invalidations.
        let t2 = c.write_ticket();
        let t1 = c.write_ticket();
        t1.invalidator().invalidate(&a); // job 1 (older bundle)
        t2.invalidator().invalidate(&a); // job 2, committed after job 1
        let newer = verified(2);
        assert!(c.publish(&a, newer.clone(), &t2));
        assert!(
            !c.publish(&a, verified(3), &t1),
            "older job must not overwrite"
        );
        assert_eq!(c.get(&a).as_deref(), Some(&newer));
        // Published before the later job ran: the later job's invalidation removes it.
        let t3 = c.write_ticket();
        t3.invalidator().invalidate(&a);
        assert!(c.get(&a).is_none());
        let newest = verified(1);
        assert!(c.publish(&a, newest.clone(), &t3));
        assert_eq!(c.get(&a).as_deref(), Some(&newest));
    }

    #[test]
    fn a_load_racing_a_write_is_not_cached() {
        let c = BundleCache::default();
        let a = addr(7);
        // The reader takes its ticket, then a job changes the bundle before the fill.
        let lt = c.load_ticket();
        let wt = c.write_ticket();
        wt.invalidator().invalidate(&a);
        assert!(
            !c.fill(&a, verified(2), lt),
            "the row read may be the old one"
        );
        // The job ran but has not committed: the entry is pending.
        let lt = c.load_ticket();
        assert!(
            !c.fill(&a, verified(2), lt),
            "pending: the read may predate the commit"
        );
        let committed = verified(5);
        assert!(c.publish(&a, committed.clone(), &wt));
        drop(wt);
        // A late fill never replaces a published bundle.
        let lt = c.load_ticket();
        assert!(!c.fill(&a, verified(2), lt));
        assert_eq!(c.get(&a).as_deref(), Some(&committed));
        // A quiet load of another device is cached.
        let b = addr(8);
        let lt = c.load_ticket();
        let loaded = verified(1);
        assert!(c.fill(&b, loaded.clone(), lt));
        assert_eq!(c.get(&b).as_deref(), Some(&loaded));
        assert!(c.stats().refused >= 3);
    }

    #[test]
    fn no_fill_while_a_write_ticket_is_held_even_before_its_job_ran() {
        let c = BundleCache::default();
        let a = addr(1);
        let wt = c.write_ticket(); // queued, not run: the reader sees no pending entry
        let lt = c.load_ticket();
        assert!(!c.fill(&a, verified(1), lt));
        drop(wt);
        let lt = c.load_ticket();
        assert!(c.fill(&a, verified(1), lt));
    }

    #[test]
    fn an_eviction_of_a_pending_entry_refuses_its_publish_and_every_load() {
        let c = BundleCache::new(1, 1000);
        let (a, b) = (addr(1), addr(2));
        // A job changing a has run, not committed yet.
        let wt = c.write_ticket();
        wt.invalidator().invalidate(&a);
        // A job storing b evicts a's pending entry (1 entry max).
        assert!(store(&c, &b, verified(1)));
        // A reader of a now sees no entry at all, and may read a's old row: refused.
        let lt = c.load_ticket();
        assert!(!c.fill(&a, verified(1), lt));
        assert!(!c.publish(&a, verified(1), &wt), "evicted: publish refused");
        assert!(c.get(&a).is_none());
    }

    #[test]
    fn a_failed_job_leaves_the_device_uncached_then_loadable() {
        let c = BundleCache::default();
        let a = addr(3);
        assert!(store(&c, &a, verified(2)));
        let wt = c.write_ticket();
        wt.invalidator().invalidate(&a);
        drop(wt); // the job failed: nothing published
        assert!(
            c.get(&a).is_none(),
            "what was cached may not be the row now"
        );
        let lt = c.load_ticket();
        let row = verified(2);
        assert!(c.fill(&a, row.clone(), lt));
        assert_eq!(c.get(&a).as_deref(), Some(&row));
    }

    #[test]
    fn bounded_by_entries_and_prekeys_lru_first() {
        let c = BundleCache::new(3, 100);
        let put = |d: u32, n: u32| assert!(store(&c, &addr(d), verified(n)));
        put(1, 10);
        put(2, 10);
        put(3, 10);
        assert!(c.get(&addr(1)).is_some()); // 1 is now the most recent
        put(4, 10); // evicts 2, the least recently used
        assert!(c.get(&addr(2)).is_none());
        assert!(c.get(&addr(1)).is_some() && c.get(&addr(3)).is_some());
        assert_eq!(c.len(), 3);
        // 3 × 11 + 80 > 100: the least recently used go until it fits.
        put(5, 79);
        assert!(c.get(&addr(5)).is_some());
        let total: usize = [1, 3, 4, 5]
            .iter()
            .filter_map(|d| c.get(&addr(*d)))
            .map(|b| weight(&b))
            .sum();
        assert!(total <= 100, "{total}");
        assert!(c.stats().evictions >= 2);
        // A bundle larger than the whole budget is not kept.
        assert!(!store(&c, &addr(6), verified(150)));
        assert!(c.get(&addr(6)).is_none());
        // Many devices: never more than the bounds.
        for d in 10..200 {
            put(d, 1);
        }
        assert!(c.lock().entries.len() <= 3 && c.len() <= 3);
    }

    #[test]
    fn invalidate_account_drops_only_that_account() {
        let c = BundleCache::default();
        let mine = addr(1);
        let other = DeviceAddr::new(2, "bob@example.net", Version::Twomemo, 1);
        for a in [&mine, &other] {
            assert!(store(&c, a, verified(1)));
        }
        // A job of account 1 that ran before the deletion must not publish after it.
        let late = c.write_ticket();
        late.invalidator().invalidate(&mine);
        let lt = c.load_ticket();
        let del = c.write_ticket();
        del.invalidator().invalidate_account(1);
        assert!(c.get(&mine).is_none());
        assert!(c.get(&other).is_some());
        assert!(!c.publish(&mine, verified(1), &late));
        assert!(
            !c.fill(&mine, verified(1), lt),
            "a load racing the deletion"
        );
    }

    #[test]
    fn debug_shows_no_keys() {
        let c = BundleCache::default();
        assert!(store(&c, &addr(1), verified(1)));
        let s = format!("{c:?}");
        assert!(s.contains("BundleCache") && !s.contains("bob@"), "{s}");
    }
}
