//! A bounded in-memory cache of peer bundles that were parsed and verified, so that starting a
//! session from a stored bundle needs no database read, no XML and no second signature check
//! beyond the one X3DH itself does.
//!
//! Only [`VerifiedBundle`]s go in, and the type can only be made by parsing and verifying. The
//! cache must never hold a bundle other than the committed one, although a bundle changes in a
//! write job (ordered by commit) while it is loaded on a reader (in parallel). Hence tickets:
//!
//! * a writer that changes or deletes a device's bundle calls [`BundleCache::invalidate`]
//!   **inside its write job** (so in commit order); the entry becomes *pending* and the call
//!   returns a [`WriteTicket`]. After COMMIT it may [`BundleCache::publish`] the new bundle,
//!   which succeeds only if no later job invalidated the same device since.
//! * a reader takes a [`LoadTicket`] ([`BundleCache::load_ticket`]) **before** reading the row,
//!   then [`BundleCache::fill`]s the parsed bundle; that succeeds only if nothing at all was
//!   invalidated or evicted since and the device has no entry (pending or not).
//!
//! A refused `publish`/`fill` only costs a later cache miss. Memory is bounded by entries and
//! by the one-time prekeys they hold (a bundle may carry up to 1000); the least recently used
//! entries go first.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use protocol_core::bundle::{Bundle, BundleError};
use protocol_core::x3dh::RemoteIdentity;
use protocol_core::xml::{self, XmlError};
use protocol_core::Version;

use crate::storage::DeviceAddr;

/// Why a bundle cannot be cached (or used).
#[derive(Debug, thiserror::Error)]
pub enum BundleCheckError {
    /// Not a well-formed bundle of the namespace.
    #[error("invalid bundle: {0}")]
    Xml(#[from] XmlError),
    /// Parsed, but ids, keys or the signature are wrong.
    #[error("invalid bundle: {0}")]
    Invalid(#[from] BundleError),
    /// The identity key is not a usable curve point.
    #[error("invalid bundle: identity key: {0}")]
    IdentityKey(String),
}

/// A bundle whose ids, keys and signed-prekey signature were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBundle {
    bundle: Bundle,
    identity_curve25519: [u8; 32],
}

impl VerifiedBundle {
    /// Verifies a parsed bundle.
    pub fn verify(bundle: Bundle) -> Result<Self, BundleCheckError> {
        bundle.verify()?;
        let identity_curve25519 =
            RemoteIdentity::from_transported(bundle.version, bundle.identity_key)
                .curve25519()
                .map_err(|e| BundleCheckError::IdentityKey(e.to_string()))?;
        Ok(Self {
            bundle,
            identity_curve25519,
        })
    }

    /// Parses a bundle element of `namespace` and verifies it.
    pub fn parse(namespace: Version, bundle_xml: &str) -> Result<Self, BundleCheckError> {
        Self::verify(xml::bundle_from_xml(namespace, bundle_xml)?)
    }

    /// The bundle.
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// The identity key as a Curve25519 point (the form trust decisions use).
    pub fn identity_curve25519(&self) -> &[u8; 32] {
        &self.identity_curve25519
    }

    /// What the entry counts against the prekey budget.
    fn weight(&self) -> usize {
        1 + self.bundle.prekeys.len()
    }
}

/// Proof that a write job invalidated a device's entry (see [`BundleCache::publish`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct WriteTicket(u64);

/// The cache's state before a row was read (see [`BundleCache::fill`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct LoadTicket(u64);

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
        gen: u64,
    },
    Ready(Arc<VerifiedBundle>),
}

struct Entry {
    slot: Slot,
    /// Key in `Inner::lru`.
    used: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<DeviceAddr, Entry>,
    /// Least recently used first.
    lru: BTreeMap<u64, DeviceAddr>,
    /// Bumped by every invalidation and eviction; tickets are taken from it.
    gen: u64,
    /// Use counter for `lru`.
    clock: u64,
    /// Prekeys (plus one per entry) of the ready entries.
    weight: usize,
    stats: CacheStats,
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
            self.weight -= b.weight();
        }
        Some(e)
    }

    fn put(&mut self, addr: DeviceAddr, slot: Slot) {
        self.remove(&addr);
        if let Slot::Ready(b) = &slot {
            self.weight += b.weight();
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

    fn evict(&mut self, max_entries: usize, max_weight: usize) {
        while self.entries.len() > max_entries || self.weight > max_weight {
            let Some((_, addr)) = self.lru.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&addr) {
                if let Slot::Ready(b) = &e.slot {
                    self.weight -= b.weight();
                }
            }
            // A loader that read the row before a pending entry was evicted must not fill.
            self.gen += 1;
            self.stats.evictions += 1;
        }
    }
}

/// The cache. Share it (`Arc`); all methods take `&self` and never block for long.
pub struct BundleCache {
    inner: Mutex<Inner>,
    max_entries: usize,
    max_weight: usize,
}

impl std::fmt::Debug for BundleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleCache")
            .field("max_entries", &self.max_entries)
            .field("max_weight", &self.max_weight)
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
            inner: Mutex::new(Inner::default()),
            max_entries,
            max_weight: max_prekeys,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
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

    /// Call inside the write job that changes or deletes `addr`'s bundle: drops what is cached
    /// for it. Pass the ticket to [`Self::publish`] after COMMIT.
    pub fn invalidate(&self, addr: &DeviceAddr) -> WriteTicket {
        let mut g = self.lock();
        g.gen += 1;
        let gen = g.gen;
        g.put(addr.clone(), Slot::Pending { gen });
        g.evict(self.max_entries, self.max_weight);
        WriteTicket(gen)
    }

    /// Caches the bundle a committed job stored for `addr`. Refused (returns false) if another
    /// job invalidated `addr` after that one, or its entry was evicted meanwhile.
    pub fn publish(&self, addr: &DeviceAddr, bundle: VerifiedBundle, ticket: WriteTicket) -> bool {
        let mut g = self.lock();
        let ours = matches!(
            g.entries.get(addr).map(|e| &e.slot),
            Some(Slot::Pending { gen }) if *gen == ticket.0
        );
        if !ours || bundle.weight() > self.max_weight {
            if ours {
                g.remove(addr);
            }
            g.stats.refused += 1;
            return false;
        }
        g.put(addr.clone(), Slot::Ready(Arc::new(bundle)));
        g.evict(self.max_entries, self.max_weight);
        true
    }

    /// Take before reading a bundle row for [`Self::fill`].
    pub fn load_ticket(&self) -> LoadTicket {
        LoadTicket(self.lock().gen)
    }

    /// Caches a bundle read from the database. Refused (returns false) if anything was
    /// invalidated or evicted since `ticket` was taken, or `addr` has an entry already.
    pub fn fill(&self, addr: &DeviceAddr, bundle: VerifiedBundle, ticket: LoadTicket) -> bool {
        let mut g = self.lock();
        if g.gen != ticket.0 || g.entries.contains_key(addr) || bundle.weight() > self.max_weight {
            g.stats.refused += 1;
            return false;
        }
        g.put(addr.clone(), Slot::Ready(Arc::new(bundle)));
        g.evict(self.max_entries, self.max_weight);
        true
    }

    /// Drops every entry of an account (e.g. after it was deleted). Call inside the deleting
    /// job, like [`Self::invalidate`].
    pub fn invalidate_account(&self, account_id: i64) {
        let mut g = self.lock();
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
    use protocol_core::bundle::PreKeyPublic;
    use protocol_core::keys::identity::SignedPreKey;
    use protocol_core::keys::{IdentityKeyPair, KeyPair};
    use protocol_core::xml::bundle_to_xml;
    use rand::rngs::OsRng;

    fn signed_bundle(version: Version, prekeys: u32) -> Bundle {
        let identity = IdentityKeyPair::generate(&mut OsRng);
        let spk = SignedPreKey::generate(1, &identity, &mut OsRng);
        Bundle {
            version,
            identity_key: match version {
                Version::Oldmemo => *identity.curve25519(),
                Version::Twomemo => *identity.ed25519(),
            },
            signed_prekey_id: spk.id,
            signed_prekey: spk.key_pair.public.0,
            signed_prekey_signature: match version {
                Version::Oldmemo => spk.signature_oldmemo,
                Version::Twomemo => spk.signature_twomemo,
            },
            prekeys: (1..=prekeys)
                .map(|id| PreKeyPublic {
                    id,
                    key: KeyPair::generate(&mut OsRng).public.0,
                })
                .collect(),
        }
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
            let v = VerifiedBundle::parse(version, &bundle_to_xml(&b)).unwrap();
            assert_eq!(v.bundle(), &b);
            let expected = RemoteIdentity::from_transported(version, b.identity_key)
                .curve25519()
                .unwrap();
            assert_eq!(v.identity_curve25519(), &expected);

            let mut forged = b.clone();
            forged.signed_prekey_signature[5] ^= 1;
            assert!(matches!(
                VerifiedBundle::parse(version, &bundle_to_xml(&forged)),
                Err(BundleCheckError::Invalid(BundleError::InvalidSignature))
            ));
            let mut empty = b.clone();
            empty.prekeys.clear();
            assert!(matches!(
                VerifiedBundle::verify(empty),
                Err(BundleCheckError::Invalid(BundleError::NoPreKeys))
            ));
        }
        for bad in [
            "",
            "<bundle/>",
            "not xml at all <",
            "<bundle xmlns='urn:xmpp:omemo:2'>",
        ] {
            assert!(matches!(
                VerifiedBundle::parse(Version::Twomemo, bad),
                Err(BundleCheckError::Xml(_))
            ));
        }
        // The other namespace's element is refused too.
        let b = signed_bundle(Version::Oldmemo, 2);
        assert!(VerifiedBundle::parse(Version::Twomemo, &bundle_to_xml(&b)).is_err());
    }

    #[test]
    fn publish_after_commit_then_hit() {
        let c = BundleCache::default();
        let a = addr(7);
        assert!(c.get(&a).is_none());
        let t = c.invalidate(&a);
        assert!(c.get(&a).is_none(), "pending counts as absent");
        let v = verified(4);
        assert!(c.publish(&a, v.clone(), t));
        assert_eq!(c.get(&a).as_deref(), Some(&v));
        assert_eq!(c.len(), 1);
        let s = c.stats();
        assert_eq!((s.hits, s.misses), (1, 2));
    }

    #[test]
    fn a_later_job_wins_over_an_earlier_publish() {
        let c = BundleCache::default();
        let a = addr(7);
        let t1 = c.invalidate(&a); // job 1 (older bundle)
        let t2 = c.invalidate(&a); // job 2, committed after job 1
        let newer = verified(2);
        assert!(c.publish(&a, newer.clone(), t2));
        assert!(
            !c.publish(&a, verified(3), t1),
            "older job must not overwrite"
        );
        assert_eq!(c.get(&a).as_deref(), Some(&newer));
        // Published before the later job ran: the later job's invalidation removes it.
        let t3 = c.invalidate(&a);
        assert!(c.get(&a).is_none());
        let newest = verified(1);
        assert!(c.publish(&a, newest.clone(), t3));
        assert_eq!(c.get(&a).as_deref(), Some(&newest));
    }

    #[test]
    fn a_load_racing_a_write_is_not_cached() {
        let c = BundleCache::default();
        let a = addr(7);
        // The reader takes its ticket, then a job changes the bundle before the fill.
        let lt = c.load_ticket();
        let wt = c.invalidate(&a);
        assert!(
            !c.fill(&a, verified(2), lt),
            "the row read may be the old one"
        );
        // The job ran before the ticket but has not committed: the entry is pending.
        let lt = c.load_ticket();
        assert!(
            !c.fill(&a, verified(2), lt),
            "pending: the read may predate the commit"
        );
        let committed = verified(5);
        assert!(c.publish(&a, committed.clone(), wt));
        // A late fill never replaces a published bundle.
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
    fn an_eviction_during_a_load_refuses_the_fill() {
        let c = BundleCache::new(1, 1000);
        let (a, b) = (addr(1), addr(2));
        // A job changing a has run, not committed yet; a reader of a may read a's old row.
        let wt = c.invalidate(&a);
        let lt = c.load_ticket();
        // A reader of b fills, which evicts a's pending entry (1 entry max).
        let ltb = c.load_ticket();
        assert!(c.fill(&b, verified(1), ltb));
        assert!(
            !c.fill(&a, verified(1), lt),
            "a's pending entry was evicted"
        );
        assert!(!c.publish(&a, verified(1), wt), "evicted: publish refused");
        assert!(c.get(&a).is_none());
    }

    #[test]
    fn bounded_by_entries_and_prekeys_lru_first() {
        let c = BundleCache::new(3, 100);
        let put = |d: u32, n: u32| {
            let t = c.invalidate(&addr(d));
            assert!(c.publish(&addr(d), verified(n), t));
        };
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
        let weight: usize = [1, 3, 4, 5]
            .iter()
            .filter_map(|d| c.get(&addr(*d)))
            .map(|b| b.weight())
            .sum();
        assert!(weight <= 100, "{weight}");
        assert!(c.stats().evictions >= 2);
        // A bundle larger than the whole budget is not kept.
        let t = c.invalidate(&addr(6));
        assert!(!c.publish(&addr(6), verified(150), t));
        assert!(c.get(&addr(6)).is_none());
    }

    #[test]
    fn invalidate_account_drops_only_that_account() {
        let c = BundleCache::default();
        let mine = addr(1);
        let other = DeviceAddr::new(2, "bob@example.net", Version::Twomemo, 1);
        for a in [&mine, &other] {
            let t = c.invalidate(a);
            assert!(c.publish(a, verified(1), t));
        }
        let lt = c.load_ticket();
        c.invalidate_account(1);
        assert!(c.get(&mine).is_none());
        assert!(c.get(&other).is_some());
        assert!(
            !c.fill(&mine, verified(1), lt),
            "a load racing the deletion"
        );
    }

    #[test]
    fn debug_shows_no_keys() {
        let c = BundleCache::default();
        let t = c.invalidate(&addr(1));
        assert!(c.publish(&addr(1), verified(1), t));
        let s = format!("{c:?}");
        assert!(s.contains("BundleCache") && !s.contains("bob@"), "{s}");
    }
}
