//! What we know about other devices: device lists and trust decisions, per account, kept in
//! memory (they are small) and written through to SQLite.

use crate::storage::accounts::TrustMode;
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
}

impl Directory {
    /// Builds the directory from stored rows.
    pub fn from_rows(devices: Vec<DeviceRow>, trust: Vec<TrustRow>) -> Self {
        let mut d = Directory::default();
        for row in devices {
            d.devices.entry(row.jid.clone()).or_default().push(row);
        }
        for row in trust {
            d.trust.insert((row.jid.clone(), row.identity_key), row);
        }
        d
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
