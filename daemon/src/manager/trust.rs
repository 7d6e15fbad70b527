//! Trust decisions, device overviews, fingerprints, and catch-up mode.

use super::{check_bare_jid, Action, Manager, ManagerError, Result};
use crate::storage::trust::{TrustLevel, TrustRow, TrustSource};
use crate::storage::{self, accounts, prekeys, trust as trust_store, DeviceAddr};
use protocol_core::keys::fingerprint;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};

/// One trust decision.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct TrustEntry {
    /// Contact's bare JID.
    pub jid: String,
    /// Fingerprint (8 groups of 8 hex digits of the Curve25519 key, same in both namespaces).
    pub fingerprint: String,
    /// trusted, distrusted or undecided.
    pub level: String,
    /// blind, tofu or manual.
    pub source: String,
    /// Unix seconds.
    pub decided_at: i64,
}

impl From<&TrustRow> for TrustEntry {
    fn from(r: &TrustRow) -> Self {
        TrustEntry {
            jid: r.jid.clone(),
            fingerprint: r.fingerprint.clone(),
            level: r.level.as_str().to_owned(),
            source: r.source.as_str().to_owned(),
            decided_at: r.decided_at,
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
    /// Label (OMEMO 2), if known.
    pub label: Option<String>,
    /// On the owner's current device list.
    pub active: bool,
    /// Unix seconds of the last message from it.
    pub last_seen: Option<i64>,
}

/// A session whose heartbeat waits: (peer JID, namespace, device id).
type DeferredHeartbeat = (String, String, u32);

/// Heartbeats deferred while catching up, per account.
#[derive(Debug, Default)]
pub struct Deferred(Mutex<HashMap<i64, BTreeSet<DeferredHeartbeat>>>);

impl Deferred {
    /// Drops what was deferred for a deleted account.
    pub fn forget_account(&self, account_id: i64) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&account_id);
    }
}

fn parse_fingerprint(s: &str) -> Result<[u8; 32]> {
    let hex: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let bytes = hex::decode(&hex)
        .map_err(|_| ManagerError::InvalidParams("fingerprint must be 64 hex digits".into()))?;
    let bytes = match bytes.len() {
        33 if bytes[0] == 0x05 => bytes[1..].to_vec(),
        _ => bytes,
    };
    bytes
        .try_into()
        .map_err(|_| ManagerError::InvalidParams("fingerprint must be 64 hex digits".into()))
}

impl Manager {
    /// Our own fingerprint.
    pub fn fingerprint(&self, account: Option<&str>) -> Result<(String, u32, String)> {
        let acct = self.account(account)?;
        Ok((
            acct.jid.clone(),
            acct.device_id,
            acct.identity.fingerprint(),
        ))
    }

    /// Trust decisions, of one contact or all.
    pub fn trust_list(&self, account: Option<&str>, jid: Option<&str>) -> Result<Vec<TrustEntry>> {
        let jid = jid.map(check_bare_jid).transpose()?;
        let jid = jid.as_deref();
        let acct = self.account(account)?;
        let mut v: Vec<TrustEntry> = self.with_directory(acct.id, |d| {
            d.trust
                .values()
                .filter(|t| jid.is_none_or(|j| t.jid == j))
                .map(TrustEntry::from)
                .collect()
        });
        v.sort_by(|a, b| (&a.jid, &a.fingerprint).cmp(&(&b.jid, &b.fingerprint)));
        Ok(v)
    }

    /// Records a manual trust decision about `jid`'s key with this fingerprint.
    pub async fn trust_set(
        &self,
        account: Option<&str>,
        jid: &str,
        fp: &str,
        level: TrustLevel,
    ) -> Result<TrustEntry> {
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
        self.with_directory(acct.id, |d| {
            d.trust.insert((row.jid.clone(), row.identity_key), row);
        });
        Ok(entry)
    }

    /// Known devices, of one contact or all.
    pub fn devices_list(
        &self,
        account: Option<&str>,
        jid: Option<&str>,
    ) -> Result<Vec<DeviceEntry>> {
        let jid = jid.map(check_bare_jid).transpose()?;
        let jid = jid.as_deref();
        let acct = self.account(account)?;
        let mut v: Vec<DeviceEntry> = self.with_directory(acct.id, |d| {
            d.devices
                .iter()
                .filter(|(j, _)| jid.is_none_or(|x| x == j.as_str()))
                .flat_map(|(_, rows)| rows.iter())
                .map(|r| DeviceEntry {
                    jid: r.jid.clone(),
                    namespace: r.namespace.namespace().to_owned(),
                    device_id: r.device_id,
                    label: r.label.clone(),
                    active: r.active,
                    last_seen: r.last_seen,
                })
                .collect()
        });
        v.sort_by(|a, b| {
            (&a.jid, &a.namespace, a.device_id).cmp(&(&b.jid, &b.namespace, b.device_id))
        });
        Ok(v)
    }

    pub(crate) fn defer_heartbeat(&self, acct: &super::account::Account, addr: DeviceAddr) {
        let mut map = self
            .deferred
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.entry(acct.id).or_default().insert((
            addr.jid,
            addr.namespace.namespace().to_owned(),
            addr.device_id,
        ));
    }

    /// Enters catch-up mode (the client replays its archive): used prekeys are kept until it
    /// ends, and heartbeats wait.
    pub async fn catchup_begin(&self, account: Option<&str>) -> Result<()> {
        let acct = self.account(account)?;
        let mut keys = acct.keys.lock().await;
        let id = acct.id;
        self.store
            .write(move |tx| accounts::set_catchup(tx, id, true))
            .await?;
        keys.catchup = true;
        Ok(())
    }

    /// Leaves catch-up mode: deletes the prekeys used meanwhile and returns the heartbeats to
    /// send now (one per session).
    pub async fn catchup_end(&self, account: Option<&str>) -> Result<Vec<Action>> {
        let acct = self.account(account)?;
        let mut keys = acct.keys.lock().await;
        let id = acct.id;
        self.store
            .write(move |tx| {
                accounts::set_catchup(tx, id, false)?;
                prekeys::delete_used(tx, id)?;
                Ok(())
            })
            .await?;
        keys.catchup = false;
        keys.prekeys.retain(|_, p| !p.used);
        drop(keys);
        let pending = self
            .deferred
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&acct.id)
            .unwrap_or_default();
        Ok(pending
            .into_iter()
            .filter_map(|(jid, ns, device_id)| {
                protocol_core::Version::from_namespace(&ns).map(|namespace| Action::SendHeartbeat {
                    jid,
                    namespace,
                    device_id,
                })
            })
            .collect())
    }
}
