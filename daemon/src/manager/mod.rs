//! The session manager: the bookkeeping around protocol-core. Every operation follows one
//! path — resolve the account, lock what it touches, advance state in protocol-core on copies,
//! commit one transaction (through named storage functions), then update memory and reply.
//!
//! - [`account`]: our own device per account: identity, prekeys, creation.
//! - [`resident`]: which accounts have their keys and directory in memory (loaded on first
//!   use, the idlest dropped past a bound).
//! - [`lifecycle`]: deleting an account.
//! - [`device_id`]: taking a new device id after a collision.
//! - [`own_bundle`]: what we publish: our bundles and device lists.
//! - [`devicelist`]: device lists received from PEP.
//! - [`labels`]: device labels: ours, signed; others', checked before they are shown.
//! - [`peer_bundle`]: bundles of other devices handed to us.
//! - [`bundle_cache`]: peer bundles parsed and verified, in memory.
//! - [`directory`]: device lists and trust decisions per account, in memory.
//! - [`sessions`]: the session table, one lock per remote device.
//! - [`encrypt`]: encryption to every device of a set of JIDs.
//! - [`plan`]: `encrypt.plan`: what an `encrypt` would cover.
//! - [`decrypt`]: decryption of an element addressed to our device.
//! - [`redelivery`]: answering the same element again without touching the ratchet.
//! - [`own_messages`]: reading back the elements this device sent.
//! - [`hygiene`]: stale devices, left out of fan-out until heard from again.
//! - [`rebuild`]: sessions to rebuild after a rollback.
//! - [`pinning`]: identity pinning and the session rebuild rate limit.
//! - [`trust`]: trust decisions, device overviews, fingerprints, catch-up mode.
//! - [`links`]: verification links (QR codes): ours, and applying a scanned one.
//! - [`limits`]: bounds on what unconfirmed remote input can make us store.
//! - [`retention`]: erased means gone: WAL truncation after erasures, restore copies' lifetime.
//! - [`error`]: what the manager can refuse: the shared pieces of the per-operation error
//!   enums, and where each enum is.

pub mod account;
pub mod bundle_cache;
pub mod decrypt;
pub mod device_id;
pub mod devicelist;
pub mod directory;
pub mod encrypt;
pub mod error;
pub mod hygiene;
pub mod labels;
pub mod lifecycle;
pub mod limits;
pub mod links;
pub mod own_bundle;
pub mod own_messages;
pub mod peer_bundle;
pub mod pinning;
pub mod plan;
pub mod rebuild;
pub mod redelivery;
pub mod resident;
pub mod retention;
pub mod sessions;
pub mod trust;

use crate::events::{Action, Cause, Event, EventBus};
use crate::storage::trust::{TrustLevel, TrustRow};
use crate::storage::{self, devices, trust as trust_store, DeviceAddr, Store};
use account::CreateAccountError;
use account::{Account, TrustMode};
use directory::Directory;
pub use error::{AccountLookupError, ErrorCause, InvalidJid, StorageError};
use protocol_core::keys::fingerprint;
use protocol_core::Version;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

/// The trust row of a key, and whether it is new (seen for the first time: to be stored).
#[derive(Debug, Clone)]
pub(crate) struct KeyTrust {
    pub(crate) row: TrustRow,
    pub(crate) new: bool,
}

/// The trust level of a key, or the row of a key seen for the first time (to be stored).
#[derive(Debug)]
pub(crate) enum KeyLevel {
    Known(TrustLevel),
    New(TrustRow),
}

/// The session manager.
#[derive(Debug)]
pub struct Manager {
    pub(crate) store: Arc<Store>,
    pub(crate) events: EventBus,
    /// Where accounts' keys are loaded from, and which accounts are in memory.
    pub(crate) key_source: account::KeySource,
    accounts: RwLock<HashMap<String, Arc<Account>>>,
    directories: Mutex<HashMap<i64, Directory>>,
    pub(crate) sessions: sessions::SessionTable,
    pub(crate) redelivery: redelivery::State,
    /// Counts the records that read our own messages back (inline prunes).
    pub(crate) own_messages: own_messages::State,
    /// The staleness thresholds.
    pub(crate) hygiene: hygiene::State,
    rebuilds: pinning::Rebuilds,
    /// Devices whose next message starts a new session (after a rollback).
    pub(crate) pending_rebuilds: rebuild::Pending,
    /// Peer bundles parsed and verified, as committed.
    pub(crate) bundles: bundle_cache::BundleCache,
    /// Whether erased key material may still be in the WAL.
    erasure: retention::Erasure,
}

/// Parses `jid` as a bare JID `local@domain` (no resource; a domain alone is no account, contact
/// or room) and returns its normalised form (RFC 7622: the local part through nodeprep, the
/// domain through IDNA and nameprep, so `Alice@Example.ORG` is `alice@example.org`). Everything
/// omemod stores and compares is in this form.
pub fn check_bare_jid(jid: &str) -> Result<String, InvalidJid> {
    storage::jids::normalise(jid)
        .filter(|n| n.contains('@'))
        .ok_or_else(|| InvalidJid::diagnose(jid))
}

impl Manager {
    /// Loads every account (its keys and directory are read on first use, [`resident`]).
    pub async fn open(store: Arc<Store>, events: EventBus) -> Result<Self, StorageError> {
        let key_source = account::KeySource::new(store.clone());
        let source = key_source.clone();
        let (accounts, pending_rebuilds) = store
            .read(move |conn| {
                let accounts = account::load_all(conn, &source)?;
                Ok((accounts, storage::rebuilds::list(conn)?))
            })
            .await?;
        let redelivery = redelivery::State::default();
        redelivery.load(
            store
                .read(|c| crate::storage::redelivery::digest_prefixes(c))
                .await?,
        );
        let own_messages = own_messages::State::default();
        own_messages.load(
            store
                .read(|c| crate::storage::own_messages::digest_ids(c))
                .await?,
        );
        Ok(Self {
            store,
            events,
            key_source,
            accounts: RwLock::new(
                accounts
                    .into_iter()
                    .map(|a| (a.jid.clone(), Arc::new(a)))
                    .collect(),
            ),
            directories: Mutex::default(),
            sessions: sessions::SessionTable::default(),
            redelivery,
            own_messages,
            hygiene: hygiene::State::default(),
            rebuilds: pinning::Rebuilds::default(),
            pending_rebuilds: rebuild::Pending::new(pending_rebuilds),
            bundles: bundle_cache::BundleCache::default(),
            erasure: retention::Erasure::default(),
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Every account.
    pub fn accounts(&self) -> Vec<Arc<Account>> {
        let map = self.accounts.read().unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<_> = map.values().cloned().collect();
        v.sort_by(|a, b| a.jid.cmp(&b.jid));
        v
    }

    /// The named account, or the only one when `jid` is `None`.
    pub fn account(&self, jid: Option<&str>) -> Result<Arc<Account>, AccountLookupError> {
        let Some(j) = jid else {
            let map = self.accounts.read().unwrap_or_else(PoisonError::into_inner);
            let mut it = map.values();
            return match (it.next(), it.next()) {
                (Some(a), None) => Ok(a.clone()),
                (None, _) => Err(AccountLookupError::NoneYet),
                _ => Err(AccountLookupError::Several),
            };
        };
        let normalised = check_bare_jid(j)?;
        let map = self.accounts.read().unwrap_or_else(PoisonError::into_inner);
        map.get(&normalised)
            .cloned()
            .ok_or_else(|| AccountLookupError::Unknown(j.to_owned()))
    }

    /// The account of `jid` (in any spelling of it), if there is one.
    pub fn account_named(&self, jid: &str) -> Option<Arc<Account>> {
        let map = self.accounts.read().unwrap_or_else(PoisonError::into_inner);
        check_bare_jid(jid).ok().and_then(|n| map.get(&n).cloned())
    }

    /// Creates an account (own JID, new device id and identity).
    pub async fn create_account(
        &self,
        jid: &str,
        trust_mode: TrustMode,
        avoid: &[u32],
    ) -> Result<Arc<Account>, CreateAccountError> {
        let jid = check_bare_jid(jid)?;
        let jid = jid.as_str();
        if self
            .accounts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(jid)
        {
            return Err(CreateAccountError::Exists(jid.to_owned()));
        }
        let acct = Arc::new(account::create(&self.key_source, jid, trust_mode, avoid).await?);
        self.directories
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(acct.id, Directory::default());
        self.accounts
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(jid.to_owned(), acct.clone());
        tracing::info!(jid, device_id = acct.device_id, fingerprint = %acct.identity.fingerprint(), "account created");
        Ok(acct)
    }

    /// What a new account must do first (`account.create` answers with it): fetch its own
    /// published device lists (to keep the user's other devices on them) and publish its
    /// bundles. Announced as events too.
    pub fn first_actions(&self, acct: &Account) -> Vec<Action> {
        let mut actions = Vec::new();
        for namespace in Version::ALL {
            self.push_action(
                acct,
                &mut actions,
                Cause::AccountCreated,
                Action::FetchDevicelist {
                    jid: acct.jid.clone(),
                    namespace,
                    node: namespace.devicelist_node().to_owned(),
                },
            );
        }
        for namespace in Version::ALL {
            self.push_action(
                acct,
                &mut actions,
                Cause::AccountCreated,
                Action::PublishBundle { namespace },
            );
        }
        actions
    }

    /// Adds `action` to the answer being built and announces it to subscribers (as done by
    /// the caller).
    pub(crate) fn push_action(
        &self,
        acct: &Account,
        actions: &mut Vec<Action>,
        cause: Cause,
        action: Action,
    ) {
        self.emit(Event::for_action(
            &acct.jid,
            acct.device_id,
            cause,
            true,
            &action,
        ));
        actions.push(action);
    }

    /// Announces a duty that no answer carries: one subscriber performs it.
    pub(crate) fn announce_duty(&self, acct: &Account, cause: Cause, action: &Action) {
        self.emit(Event::for_action(
            &acct.jid,
            acct.device_id,
            cause,
            false,
            action,
        ));
    }

    /// Runs `f` on the account's directory, read from the database first if it is not in
    /// memory (the read blocks this thread for the account's rows: about a millisecond for a
    /// hundred contacts; it holds the directory lock so that no commit's mirror is lost).
    pub(crate) fn with_directory<T>(
        &self,
        account_id: i64,
        f: impl FnOnce(&mut Directory) -> T,
    ) -> Result<T, StorageError> {
        let mut map = self
            .directories
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let dir = match map.entry(account_id) {
            std::collections::hash_map::Entry::Occupied(e) => {
                self.key_source.resident().touch(account_id);
                e.into_mut()
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                let dir = self.store.read_blocking(move |conn| {
                    Ok(Directory::from_rows(
                        devices::list_all(conn, account_id)?,
                        trust_store::list(conn, account_id, None)?,
                        storage::device_state::pending_identity_changes(conn, account_id)?,
                    ))
                })?;
                let over = {
                    let mut resident = self.key_source.resident();
                    resident.add(account_id, dir.rows());
                    resident.over()
                };
                e.insert(dir);
                if over {
                    self.drop_idlest(&mut map, account_id);
                }
                map.entry(account_id).or_default()
            }
        };
        Ok(f(dir))
    }

    /// Mirrors a committed change in the account's directory if it is in memory (if it is
    /// not, it is read with the change on its next use).
    pub(crate) fn mirror_directory(&self, account_id: i64, f: impl FnOnce(&mut Directory)) {
        let mut map = self
            .directories
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(d) = map.get_mut(&account_id) {
            f(d);
        }
    }

    /// Drops the keys and directories of the least recently used accounts (not `keep`, not
    /// one whose keys are locked) down to [`resident::MAX_RESIDENT_ROWS`]' three quarters.
    fn drop_idlest(&self, directories: &mut HashMap<i64, Directory>, keep: i64) {
        let idlest = self.key_source.resident().idlest();
        let wanted: std::collections::HashSet<i64> = idlest.iter().copied().collect();
        let by_id: HashMap<i64, Arc<Account>> = {
            let map = self.accounts.read().unwrap_or_else(PoisonError::into_inner);
            map.values()
                .filter(|a| wanted.contains(&a.id))
                .map(|a| (a.id, a.clone()))
                .collect()
        };
        let mut dropped = 0;
        for id in idlest.into_iter().filter(|id| *id != keep) {
            if by_id.get(&id).is_some_and(|a| !a.keys.unload()) {
                continue;
            }
            directories.remove(&id);
            self.key_source.resident().remove(id);
            dropped += 1;
        }
        tracing::debug!(dropped, "idle accounts dropped from memory");
    }

    pub(crate) fn emit(&self, event: Event) {
        self.events.emit(event);
    }

    /// The trust row for a key seen now, new (to be stored) at first sight.
    pub(crate) fn trust_for_key(
        &self,
        acct: &Account,
        mode: TrustMode,
        jid: &str,
        curve_key: &[u8; 32],
    ) -> Result<KeyTrust, StorageError> {
        self.with_directory(acct.id, |d| {
            if let Some(row) = d.trust_of(jid, curve_key) {
                return KeyTrust {
                    row: row.clone(),
                    new: false,
                };
            }
            let (level, source) = d.decide_new(mode, jid);
            let row = TrustRow {
                account_id: acct.id,
                jid: jid.to_owned(),
                identity_key: *curve_key,
                fingerprint: fingerprint(curve_key),
                level,
                source,
                decided_at: storage::now(),
            };
            KeyTrust { row, new: true }
        })
    }

    /// The trust level of a key, and the row to store when the key is new (as
    /// [`Self::trust_for_key`], without copying the row of a known key: a fan-out asks for a
    /// hundred).
    pub(crate) fn trust_level_for_key(
        &self,
        acct: &Account,
        mode: TrustMode,
        jid: &str,
        curve_key: &[u8; 32],
    ) -> Result<KeyLevel, StorageError> {
        let known =
            self.with_directory(acct.id, |d| d.trust_of(jid, curve_key).map(|r| r.level))?;
        Ok(match known {
            Some(level) => KeyLevel::Known(level),
            None => KeyLevel::New(self.trust_for_key(acct, mode, jid, curve_key)?.row),
        })
    }

    /// Records trust rows that were just committed.
    pub(crate) fn remember_trust(
        &self,
        acct: &Account,
        rows: Vec<TrustRow>,
        namespace: Version,
        device_id: u32,
    ) {
        for row in rows {
            if row.level == TrustLevel::Undecided {
                self.emit(Event::TrustDecisionNeeded {
                    account: acct.jid.clone(),
                    cause: Cause::NewIdentity,
                    peer: row.jid.clone(),
                    namespace,
                    device_id,
                    fingerprint: row.fingerprint.clone(),
                });
            }
            self.mirror_directory(acct.id, |d| {
                d.trust.insert((row.jid.clone(), row.identity_key), row);
            });
        }
    }

    pub(crate) fn addr(
        acct: &Account,
        jid: &str,
        namespace: Version,
        device_id: u32,
    ) -> DeviceAddr {
        DeviceAddr::new(acct.id, jid, namespace, device_id)
    }
}
