//! The session manager: the bookkeeping around protocol-core. Every operation follows one
//! path — resolve the account, lock what it touches, advance state in protocol-core on copies,
//! commit one transaction (through named storage functions), then update memory and reply.
//!
//! - [`account`]: our own device per account: identity, prekeys, creation.
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
pub mod labels;
pub mod lifecycle;
pub mod limits;
pub mod links;
pub mod own_bundle;
pub mod peer_bundle;
pub mod pinning;
pub mod plan;
pub mod rebuild;
pub mod redelivery;
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
    accounts: RwLock<HashMap<String, Arc<Account>>>,
    directories: Mutex<HashMap<i64, Directory>>,
    pub(crate) sessions: sessions::SessionTable,
    pub(crate) redelivery: redelivery::State,
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
    /// Loads every account, device list and trust decision.
    pub async fn open(store: Arc<Store>, events: EventBus) -> Result<Self, StorageError> {
        let (accounts, dirs, pending_rebuilds) = store
            .read(|conn| {
                let accounts = account::load_all(conn)?;
                let mut dirs = HashMap::new();
                for a in &accounts {
                    let devs = devices::list_all(conn, a.id)?;
                    let trust = trust_store::list(conn, a.id, None)?;
                    let pending = storage::device_state::pending_identity_changes(conn, a.id)?;
                    dirs.insert(a.id, Directory::from_rows(devs, trust, pending));
                }
                Ok((accounts, dirs, storage::rebuilds::list(conn)?))
            })
            .await?;
        let redelivery = redelivery::State::default();
        redelivery.load(
            store
                .read(crate::storage::redelivery::digest_prefixes)
                .await?,
        );
        // Databases from before the per-namespace pools get theirs filled once (and a new
        // bundle to publish).
        for a in &accounts {
            let id = a.id;
            let now = storage::now();
            let (fresh, version) = store
                .write(move |tx| {
                    let rows = account::refill_prekey_pools(tx, id, now)?;
                    let version = match rows.is_empty() {
                        true => None,
                        false => Some(storage::accounts::bump_bundle_version(tx, id)?),
                    };
                    Ok((rows, version))
                })
                .await?;
            if let Some(v) = version {
                let mut keys = a.keys.lock().await;
                keys.add_prekeys(fresh);
                keys.bundle_version = v;
            }
        }
        Ok(Self {
            store,
            events,
            accounts: RwLock::new(
                accounts
                    .into_iter()
                    .map(|a| (a.jid.clone(), Arc::new(a)))
                    .collect(),
            ),
            directories: Mutex::new(dirs),
            sessions: sessions::SessionTable::default(),
            redelivery,
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
        let acct = Arc::new(account::create(&self.store, jid, trust_mode, avoid).await?);
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

    /// Runs `f` on the account's directory.
    pub(crate) fn with_directory<T>(
        &self,
        account_id: i64,
        f: impl FnOnce(&mut Directory) -> T,
    ) -> T {
        let mut map = self
            .directories
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(map.entry(account_id).or_default())
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
    ) -> KeyTrust {
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
    ) -> KeyLevel {
        let known = self.with_directory(acct.id, |d| d.trust_of(jid, curve_key).map(|r| r.level));
        match known {
            Some(level) => KeyLevel::Known(level),
            None => KeyLevel::New(self.trust_for_key(acct, mode, jid, curve_key).row),
        }
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
            self.with_directory(acct.id, |d| {
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
