//! What we know about other devices: device lists and trust decisions, per account, kept in
//! memory (they are small) and written through to SQLite.

use crate::storage::accounts::TrustMode;
use crate::storage::device_state::IdentityChangeRow;
use crate::storage::DeviceAddr;

/// Resolution of `devices.last_seen`.
pub const LAST_SEEN_GRANULARITY_SECS: i64 = 60;
use crate::storage::devices::DeviceRow;
use crate::storage::trust::{TrustLevel, TrustRow, TrustSource};
use protocol_core::Version;
use std::collections::HashMap;

/// Devices and trust of one account.
#[derive(Debug, Default)]
pub struct Directory {
    /// Device rows by peer JID.
    pub devices: HashMap<String, Vec<DeviceRow>>,
    /// Trust rows by (peer JID, Curve25519 identity key).
    pub trust: HashMap<(String, [u8; 32]), TrustRow>,
    /// Identity changes waiting for `identity.accept`, by device (a bundle with another
    /// identity was set aside): nothing is encrypted for these devices meanwhile.
    pending_identities: HashMap<(String, Version, u32), PendingIdentity>,
}

/// A device's identity change that waits for the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingIdentity {
    /// The identity held for the device (Curve25519 u), if any.
    pub old: Option<[u8; 32]>,
    /// The identity its new bundle carries.
    pub new: [u8; 32],
}

impl Directory {
    /// Builds the directory from stored rows.
    pub fn from_rows(
        devices: Vec<DeviceRow>,
        trust: Vec<TrustRow>,
        pending: Vec<IdentityChangeRow>,
    ) -> Self {
        let mut d = Directory::default();
        for row in devices {
            d.devices.entry(row.jid.clone()).or_default().push(row);
        }
        for row in trust {
            d.trust.insert((row.jid.clone(), row.identity_key), row);
        }
        for row in pending {
            d.set_pending_identity(&row.addr, row.old_identity, row.new_identity);
        }
        d
    }

    /// Rows it holds (for [`super::resident`]).
    pub fn rows(&self) -> usize {
        self.devices.values().map(Vec::len).sum::<usize>()
            + self.trust.len()
            + self.pending_identities.len()
    }

    /// The identity change of `addr` waiting for the user, if any.
    pub fn pending_identity(&self, addr: &DeviceAddr) -> Option<PendingIdentity> {
        // Asked once per device of every encryption: almost always there is none.
        if self.pending_identities.is_empty() {
            return None;
        }
        let key = (addr.jid.clone(), addr.namespace, addr.device_id);
        self.pending_identities.get(&key).copied()
    }

    /// Mirrors a committed identity change set aside for `addr`.
    pub fn set_pending_identity(
        &mut self,
        addr: &DeviceAddr,
        old: Option<[u8; 32]>,
        new: [u8; 32],
    ) {
        let key = (addr.jid.clone(), addr.namespace, addr.device_id);
        self.pending_identities
            .insert(key, PendingIdentity { old, new });
    }

    /// Mirrors a committed `identity.accept` of `addr`.
    pub fn clear_pending_identity(&mut self, addr: &DeviceAddr) {
        let key = (addr.jid.clone(), addr.namespace, addr.device_id);
        self.pending_identities.remove(&key);
    }

    /// Active devices of `jid` in `namespace`.
    pub fn active(&self, jid: &str, namespace: Version) -> Vec<u32> {
        self.devices
            .get(jid)
            .map(|rows| {
                rows.iter()
                    .filter(|r| r.active && r.namespace == namespace)
                    .map(|r| r.device_id)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether `device_id` is on `jid`'s device list in `namespace` (the latest one received).
    pub fn lists(&self, jid: &str, namespace: Version, device_id: u32) -> bool {
        self.devices.get(jid).is_some_and(|rows| {
            rows.iter()
                .any(|r| r.active && r.namespace == namespace && r.device_id == device_id)
        })
    }

    /// Replaces the rows of `jid` in `namespace`.
    pub fn set_devices(&mut self, jid: &str, namespace: Version, rows: Vec<DeviceRow>) {
        let entry = self.devices.entry(jid.to_owned()).or_default();
        entry.retain(|r| r.namespace != namespace);
        entry.extend(rows);
    }

    /// Whether a message from this device should update its `last_seen` (at most once a
    /// minute: it is for people, and skipping the write keeps decrypts cheap).
    pub fn needs_touch(&self, addr: &DeviceAddr, now: i64) -> bool {
        let row = self.devices.get(&addr.jid).and_then(|rows| {
            rows.iter()
                .find(|r| r.namespace == addr.namespace && r.device_id == addr.device_id)
        });
        row.and_then(|r| r.last_seen)
            .is_none_or(|t| now.saturating_sub(t) >= LAST_SEEN_GRANULARITY_SECS)
    }

    /// Mirrors a committed `devices::touch_last_seen`.
    pub fn touched(&mut self, addr: &DeviceAddr, now: i64) {
        let rows = self.devices.entry(addr.jid.clone()).or_default();
        match rows
            .iter_mut()
            .find(|r| r.namespace == addr.namespace && r.device_id == addr.device_id)
        {
            Some(r) => r.last_seen = Some(now.max(r.last_seen.unwrap_or(now))),
            None => rows.push(DeviceRow {
                account_id: addr.account_id,
                jid: addr.jid.clone(),
                namespace: addr.namespace,
                device_id: addr.device_id,
                label: None,
                labelsig: None,
                active: false,
                first_seen: now,
                last_seen: Some(now),
                list_updated_at: now,
            }),
        }
    }

    /// The trust decision about `key` of `jid`, if any.
    pub fn trust_of(&self, jid: &str, key: &[u8; 32]) -> Option<&TrustRow> {
        self.trust.get(&(jid.to_owned(), *key))
    }

    /// The JID that really owns device `device_id` of `namespace` when a message claims it for
    /// `from`: another JID that lists the device and holds the message's `identity` key, which
    /// `from` never showed (without a key: `from` does not list the device). `None` when
    /// nothing points elsewhere.
    pub fn owner_elsewhere(
        &self,
        from: &str,
        namespace: Version,
        device_id: u32,
        identity: Option<&[u8; 32]>,
    ) -> Option<&str> {
        let lists = |jid: &str| {
            self.devices.get(jid).is_some_and(|rows| {
                rows.iter()
                    .any(|r| r.namespace == namespace && r.device_id == device_id)
            })
        };
        let holds = |jid: &str| identity.is_none_or(|k| self.trust_of(jid, k).is_some());
        let from_known = match identity {
            Some(k) => self.trust_of(from, k).is_some(),
            None => lists(from),
        };
        if from_known {
            return None;
        }
        self.devices
            .keys()
            .map(String::as_str)
            .find(|jid| *jid != from && lists(jid) && holds(jid))
    }

    /// What the policy says about a key of `jid` seen for the first time.
    pub fn decide_new(&self, mode: TrustMode, jid: &str) -> (TrustLevel, TrustSource) {
        let known: Vec<&TrustRow> = self.trust.values().filter(|t| t.jid == jid).collect();
        match mode {
            TrustMode::Btbv => {
                let verified = known
                    .iter()
                    .any(|t| t.source == TrustSource::Manual && t.level == TrustLevel::Trusted);
                if verified {
                    (TrustLevel::Undecided, TrustSource::Policy)
                } else {
                    (TrustLevel::Trusted, TrustSource::Blind)
                }
            }
            TrustMode::Tofu => {
                if known.is_empty() {
                    (TrustLevel::Trusted, TrustSource::Tofu)
                } else {
                    (TrustLevel::Undecided, TrustSource::Policy)
                }
            }
            TrustMode::Manual => (TrustLevel::Undecided, TrustSource::Policy),
        }
    }
}
