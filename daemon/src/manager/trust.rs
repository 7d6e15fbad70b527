//! Trust decisions, device overviews (fingerprint, trust and staleness of each device), and
//! catch-up mode.

use super::error::InvalidFingerprint;
use super::labels::{LabelStatus, Listed};
use super::{
    check_bare_jid, Account, AccountLookupError, ErrorCause, InvalidJid, Manager, StorageError,
};
use crate::events::Action;
use crate::storage::device_keys::{self, DeviceKey};
use crate::storage::devices::DeviceRow;
use crate::storage::trust::{TrustLevel, TrustRow, TrustSource};
use crate::storage::{self, accounts, device_state, prekeys, trust as trust_store};
use protocol_core::keys::fingerprint;
use serde::Serialize;
use std::collections::HashMap;

/// Catch-up ends by itself this long after `catchup.begin` (a client that crashes or forgets
/// `catchup.end` must not keep used prekeys and hold heartbeats forever).
pub const CATCHUP_TIMEOUT_SECS: i64 = 60 * 60;

/// One trust decision.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct TrustEntry {
    /// Contact's bare JID.
    pub jid: String,
    /// Fingerprint (8 groups of 8 hex digits of the Curve25519 key, same in both namespaces).
    pub fingerprint: String,
    /// trusted, distrusted or undecided.
    pub level: String,
    /// What made it so: `blind` (trusted blindly, `btbv`), `tofu` (the contact's first key),
    /// `manual` (the user), `policy` (no one decided: the trust mode leaves a new key undecided).
    pub source: String,
    /// Unix seconds.
    pub decided_at: i64,
    /// The devices of the contact that use this key (by their session, else their stored
    /// bundle).
    pub devices: Vec<KeyDevice>,
}

/// A device that uses a key.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct KeyDevice {
    /// Namespace.
    pub namespace: String,
    /// Device id.
    pub device_id: u32,
}

impl From<&TrustRow> for TrustEntry {
    fn from(r: &TrustRow) -> Self {
        TrustEntry {
            jid: r.jid.clone(),
            fingerprint: r.fingerprint.clone(),
            level: r.level.as_str().to_owned(),
            source: r.source.as_str().to_owned(),
            decided_at: r.decided_at,
            devices: Vec::new(),
        }
    }
}

/// One known device.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct DeviceEntry {
    /// Owner's bare JID.
    pub jid: String,
    /// Namespace.
    pub namespace: String,
    /// Device id.
    pub device_id: u32,
    /// Label (OMEMO 2): only one whose signature verifies against the device's identity key.
    pub label: Option<String>,
    /// What became of the listed label (`null`: the list gives none): `verified` (shown as
    /// `label`), `unsigned`, `bad_signature` or `unknown_key` (ignored, not shown).
    pub label_status: Option<LabelStatus>,
    /// On the owner's current device list.
    pub active: bool,
    /// Unix seconds of the last message from it.
    pub last_seen: Option<i64>,
    /// Unix seconds it first appeared (on a list, or by a message).
    pub first_seen: i64,
    /// Fingerprint of its identity key (its session's, else its stored bundle's; ours for this
    /// device); `null` while neither is known.
    pub fingerprint: Option<String>,
    /// Trust level of that key (trusted, undecided, distrusted); `null` when no key is known,
    /// and for this device.
    pub trust: Option<String>,
    /// What made it so (blind, tofu, manual, policy), as in `trust.list`.
    pub trust_source: Option<String>,
    /// Messages sent to it since it was last heard from.
    pub unanswered: u64,
    /// Silent past the staleness thresholds: left out of fan-out until heard from again (ours:
    /// offered for removal).
    pub stale: bool,
    /// This very device (our account's own device id).
    pub this_device: bool,
}

/// Why `trust.list` or `devices.list` failed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The contact is not a bare JID.
    #[error(transparent)]
    Jid(#[from] InvalidJid),
    /// No account to list for.
    #[error(transparent)]
    Account(#[from] AccountLookupError),
    /// The database failed (reading the devices' keys).
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

impl ListError {
    /// Whom the error is due to.
    pub fn cause(&self) -> ErrorCause {
        match self {
            ListError::Jid(e) => e.cause(),
            ListError::Account(e) => e.cause(),
            ListError::Storage(e) => e.cause(),
        }
    }
}

/// Why `trust.set` failed.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The contact is not a bare JID.
    #[error(transparent)]
    Jid(#[from] InvalidJid),
    /// No account to decide for.
    #[error(transparent)]
    Account(#[from] AccountLookupError),
    /// The fingerprint cannot be read.
    #[error(transparent)]
    Fingerprint(#[from] InvalidFingerprint),
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

impl TrustError {
    /// Whom the error is due to.
    pub fn cause(&self) -> ErrorCause {
        match self {
            TrustError::Jid(e) => e.cause(),
            TrustError::Account(e) => e.cause(),
            TrustError::Fingerprint(e) => e.cause(),
            TrustError::Storage(e) => e.cause(),
        }
    }
}

/// Why `catchup.begin` or `catchup.end` failed.
#[derive(Debug, thiserror::Error)]
pub enum CatchupError {
    /// No account to catch up.
    #[error(transparent)]
    Account(#[from] AccountLookupError),
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

impl CatchupError {
    /// Whom the error is due to.
    pub fn cause(&self) -> ErrorCause {
        match self {
            CatchupError::Account(e) => e.cause(),
            CatchupError::Storage(e) => e.cause(),
        }
    }
}

/// A fingerprint as the user gives it: 64 hex digits, spaces allowed, a leading `05` accepted.
pub(crate) fn parse_fingerprint(s: &str) -> Result<[u8; 32], InvalidFingerprint> {
    let hex: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let bytes = hex::decode(&hex).map_err(|_| InvalidFingerprint)?;
    let bytes = match bytes.len() {
        33 if bytes[0] == 0x05 => bytes[1..].to_vec(),
        _ => bytes,
    };
    bytes.try_into().map_err(|_| InvalidFingerprint)
}

impl Manager {
    /// Trust decisions, of one contact or all, each with the devices that use its key.
    pub async fn trust_list(
        &self,
        account: Option<&str>,
        jid: Option<&str>,
    ) -> Result<Vec<TrustEntry>, ListError> {
        let jid = jid.map(check_bare_jid).transpose()?;
        let acct = self.account(account)?;
        let keys = self.device_keys(&acct, jid.clone()).await?;
        let mut users: HashMap<(String, [u8; 32]), Vec<KeyDevice>> = HashMap::new();
        for k in keys {
            users
                .entry((k.addr.jid, k.identity_key))
                .or_default()
                .push(KeyDevice {
                    namespace: k.addr.namespace.namespace().to_owned(),
                    device_id: k.addr.device_id,
                });
        }
        let jid = jid.as_deref();
        let mut v: Vec<TrustEntry> = self.with_directory(acct.id, |d| {
            d.trust
                .values()
                .filter(|t| jid.is_none_or(|j| t.jid == j))
                .map(|t| TrustEntry {
                    devices: users
                        .remove(&(t.jid.clone(), t.identity_key))
                        .unwrap_or_default(),
                    ..TrustEntry::from(t)
                })
                .collect()
        })?;
        v.sort_by(|a, b| (&a.jid, &a.fingerprint).cmp(&(&b.jid, &b.fingerprint)));
        for e in &mut v {
            e.devices
                .sort_by(|a, b| (&a.namespace, a.device_id).cmp(&(&b.namespace, b.device_id)));
        }
        Ok(v)
    }

    /// The identity key and unanswered count of every device with a session or a stored
    /// bundle (of `jid` only, when given).
    async fn device_keys(
        &self,
        acct: &Account,
        jid: Option<String>,
    ) -> Result<Vec<DeviceKey>, StorageError> {
        let id = acct.id;
        self.store
            .read(move |c| device_keys::list(c, id, jid.as_deref()))
            .await
    }

    /// Records a manual trust decision about `jid`'s key with this fingerprint.
    pub async fn trust_set(
        &self,
        account: Option<&str>,
        jid: &str,
        fp: &str,
        level: TrustLevel,
    ) -> Result<TrustEntry, TrustError> {
        let jid = check_bare_jid(jid)?;
        let jid = jid.as_str();
        let acct = self.account(account)?;
        let key = parse_fingerprint(fp)?;
        let row = TrustRow {
            account_id: acct.id,
            jid: jid.to_owned(),
            identity_key: key,
            fingerprint: fingerprint(&key),
            level,
            source: TrustSource::Manual,
            decided_at: storage::now(),
        };
        let r = row.clone();
        self.store.write(move |tx| trust_store::set(tx, &r)).await?;
        let entry = TrustEntry::from(&row);
        self.mirror_directory(acct.id, |d| {
            d.trust.insert((row.jid.clone(), row.identity_key), row);
        });
        Ok(entry)
    }

    /// Known devices, of one contact or all: fingerprint, trust and staleness of each, and
    /// labels only where their signature verifies.
    pub async fn devices_list(
        &self,
        account: Option<&str>,
        jid: Option<&str>,
    ) -> Result<Vec<DeviceEntry>, ListError> {
        let jid = jid.map(check_bare_jid).transpose()?;
        let acct = self.account(account)?;
        let keys: HashMap<_, _> = self
            .device_keys(&acct, jid.clone())
            .await?
            .into_iter()
            .map(|k| (k.addr, (k.identity_key, k.unanswered)))
            .collect();
        let jid = jid.as_deref();
        let rows: Vec<DeviceRow> = self.with_directory(acct.id, |d| {
            d.devices
                .iter()
                .filter(|(j, _)| jid.is_none_or(|x| x == j.as_str()))
                .flat_map(|(_, rows)| rows.iter().cloned())
                .collect()
        })?;
        let (config, now) = (self.stale_config(), storage::now());
        // Listed labels, with the index of their entry, are checked in one read below.
        let mut listed = Vec::new();
        let mut v: Vec<DeviceEntry> = rows
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                if let Some(label) = &r.label {
                    let labelsig = r.labelsig.clone();
                    let (addr, label) = (r.addr(), label.clone());
                    listed.push((
                        i,
                        Listed {
                            addr,
                            label,
                            labelsig,
                        },
                    ));
                }
                let this_device = r.jid == acct.jid && r.device_id == acct.device_id;
                let (key, unanswered) = match keys.get(&r.addr()) {
                    _ if this_device => (Some(*acct.identity.curve25519()), 0),
                    Some((k, n)) => (Some(*k), *n),
                    None => (None, 0),
                };
                let trust = match key.filter(|_| !this_device) {
                    Some(k) => self.with_directory(acct.id, |d| d.trust_of(&r.jid, &k).cloned())?,
                    None => None,
                };
                let heard_at = r.last_seen.unwrap_or(r.first_seen);
                Ok(DeviceEntry {
                    jid: r.jid.clone(),
                    namespace: r.namespace.namespace().to_owned(),
                    device_id: r.device_id,
                    label: None,
                    label_status: None,
                    active: r.active,
                    last_seen: r.last_seen,
                    first_seen: r.first_seen,
                    fingerprint: key.as_ref().map(fingerprint),
                    trust: trust.as_ref().map(|t| t.level.as_str().to_owned()),
                    trust_source: trust.as_ref().map(|t| t.source.as_str().to_owned()),
                    unanswered,
                    stale: super::hygiene::judge(&config, unanswered, heard_at, now).is_some(),
                    this_device,
                })
            })
            .collect::<Result<_, StorageError>>()?;
        let own = (
            acct.jid.as_str(),
            acct.device_id,
            acct.identity.curve25519(),
        );
        let (at, listed): (Vec<usize>, Vec<Listed>) = listed.into_iter().unzip();
        let checked = self.check_labels(own, listed).await?;
        for (i, (label, status)) in at.into_iter().zip(checked) {
            if let Some(e) = v.get_mut(i) {
                e.label = label;
                e.label_status = Some(status);
            }
        }
        v.sort_by(|a, b| {
            (&a.jid, &a.namespace, a.device_id).cmp(&(&b.jid, &b.namespace, b.device_id))
        });
        Ok(v)
    }

    /// Enters catch-up mode (the client replays its archive): used prekeys are kept until it
    /// ends, and heartbeats wait (persisted). It ends after [`CATCHUP_TIMEOUT_SECS`] at most.
    pub async fn catchup_begin(&self, account: Option<&str>) -> Result<(), CatchupError> {
        let acct = self.account(account)?;
        let mut keys = acct.keys.lock().await?;
        let id = acct.id;
        let now = storage::now();
        self.store
            .write(move |tx| {
                accounts::set_catchup(tx, id, true)?;
                device_state::set_catchup_since(tx, id, Some(now))
            })
            .await?;
        keys.catchup = true;
        keys.catchup_since = Some(now);
        Ok(())
    }

    /// Leaves catch-up mode: deletes the prekeys used meanwhile and returns the heartbeats to
    /// send now (one per session).
    pub async fn catchup_end(&self, account: Option<&str>) -> Result<Vec<Action>, CatchupError> {
        let acct = self.account(account)?;
        let mut actions = Vec::new();
        for a in self.end_catchup(&acct).await? {
            self.push_action(&acct, &mut actions, crate::events::Cause::CatchupEnded, a);
        }
        Ok(actions)
    }

    /// [`Self::catchup_end`] without the events: the heartbeats due.
    async fn end_catchup(&self, acct: &Account) -> Result<Vec<Action>, StorageError> {
        let mut keys = acct.keys.lock().await?;
        let id = acct.id;
        let pending = self
            .store
            .write(move |tx| {
                accounts::set_catchup(tx, id, false)?;
                device_state::set_catchup_since(tx, id, None)?;
                prekeys::delete_used(tx, id)?;
                device_state::take_deferred_heartbeats(tx, id)
            })
            .await?;
        keys.catchup = false;
        keys.catchup_since = None;
        keys.prekeys.retain(|_, p| !p.used);
        drop(keys);
        Ok(pending
            .into_iter()
            .map(|a| Action::SendHeartbeat {
                jid: a.jid,
                namespace: a.namespace,
                device_id: a.device_id,
            })
            .collect())
    }

    /// Ends every catch-up older than [`CATCHUP_TIMEOUT_SECS`]; the heartbeats it held are
    /// announced as events. Run by the maintenance timer.
    pub async fn expire_catchups(&self, now: i64) -> Result<(), StorageError> {
        // Only the accounts in catch-up: no other account's keys are read for it.
        let on: std::collections::HashSet<i64> = self
            .store
            .read(|c| storage::accounts::in_catchup(c))
            .await?
            .into_iter()
            .collect();
        for acct in self.accounts().into_iter().filter(|a| on.contains(&a.id)) {
            let expired = {
                let keys = acct.keys.lock().await?;
                keys.catchup && !keys.catchup_active(now)
            };
            if !expired {
                continue;
            }
            tracing::info!(jid = %acct.jid, "catch-up timed out; ending it");
            // No call answers these: each goes to one subscriber as a duty.
            for a in self.end_catchup(&acct).await? {
                self.announce_duty(&acct, crate::events::Cause::CatchupEnded, &a);
            }
        }
        Ok(())
    }
}
