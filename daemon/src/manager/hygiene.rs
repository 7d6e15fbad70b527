//! Device hygiene: a remote device that stays silent is **stale** and left out of fan-out until
//! it is heard from again; our own stale devices are offered for removal from our device lists.
//!
//! A device is stale when both thresholds are passed ([`StaleConfig`], `serve
//! --stale-after-unanswered`, `--stale-after-silence`): we encrypted at least that many messages
//! to it since the last one we decrypted from it (the session's `unanswered` count), and the last
//! we heard from it (`devices.last_seen`, else when it first appeared on a list) is at least that
//! long ago. A device that follows XEP-0384 answers a long one-sided chain with a heartbeat by
//! its 53rd message, so the default of 106 (twice that, QXmpp's number) is only reached by a
//! device that reads nothing; the default silence of 42 days (Conversations' expiry of its own
//! devices) keeps a phone that is merely switched off for a holiday. docs/rpc.md ("Device
//! hygiene") says why, and what the heartbeat policy is.

use std::sync::{PoisonError, RwLock};

use super::account::Account;
use super::Manager;
use crate::config::StaleConfig;
use crate::events::Action;
use crate::storage::{DeviceAddr, StorageError};

/// The manager's staleness thresholds.
#[derive(Debug, Default)]
pub struct State {
    config: RwLock<StaleConfig>,
}

/// Why a device is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stale {
    /// Messages encrypted to it since it was last heard from.
    pub unanswered: u64,
    /// Seconds since it was last heard from (or first listed).
    pub silent_secs: i64,
}

impl Stale {
    /// The `reason` of its report.
    pub fn reason(&self) -> String {
        format!(
            "stale: {} messages sent to it since it was last heard from (or listed), {} days ago",
            self.unanswered,
            self.silent_secs / 86_400
        )
    }
}

/// Whether a device with `unanswered` messages, last heard from at `heard_at`, is stale at
/// `now`.
pub fn judge(config: &StaleConfig, unanswered: u64, heard_at: i64, now: i64) -> Option<Stale> {
    let silent_secs = now.saturating_sub(heard_at);
    let silence = i64::try_from(config.silence_secs).unwrap_or(i64::MAX);
    let stale = config.enabled() && unanswered >= config.unanswered && silent_secs >= silence;
    stale.then_some(Stale {
        unanswered,
        silent_secs,
    })
}

impl Manager {
    /// Sets the thresholds (at start-up).
    pub fn set_stale_config(&self, config: StaleConfig) {
        *self
            .hygiene
            .config
            .write()
            .unwrap_or_else(PoisonError::into_inner) = config;
    }

    /// The thresholds.
    pub(crate) fn stale_config(&self) -> StaleConfig {
        *self
            .hygiene
            .config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// When we last heard from a device (else when it first appeared on a list); `None` for a
    /// device we know nothing of.
    pub(crate) fn heard_at(
        &self,
        acct: &Account,
        addr: &DeviceAddr,
    ) -> Result<Option<i64>, StorageError> {
        self.with_directory(acct.id, |d| {
            d.devices.get(&addr.jid).and_then(|rows| {
                rows.iter()
                    .find(|r| r.namespace == addr.namespace && r.device_id == addr.device_id)
                    .map(|r| r.last_seen.unwrap_or(r.first_seen))
            })
        })
    }

    /// Whether the device, sent `unanswered` messages since it was last heard from, is stale
    /// now. Cheap when it is not: the directory is read only past the count.
    pub(crate) fn staleness(
        &self,
        acct: &Account,
        addr: &DeviceAddr,
        unanswered: u64,
        now: i64,
    ) -> Result<Option<Stale>, StorageError> {
        let config = self.stale_config();
        if !config.enabled() || unanswered < config.unanswered {
            return Ok(None);
        }
        let heard_at = self.heard_at(acct, addr)?;
        Ok(heard_at.and_then(|t| judge(&config, unanswered, t, now)))
    }
}

/// What the client may do about a stale device: offer the user to remove our own from our
/// device list (never done without them); nothing for a contact's, which comes back when heard
/// from.
pub(crate) fn stale_action(acct: &Account, addr: &DeviceAddr) -> Option<Action> {
    (addr.jid == acct.jid).then_some(Action::OfferDeviceRemoval {
        namespace: addr.namespace,
        device_id: addr.device_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_thresholds_must_be_passed() {
        let c = StaleConfig {
            silence_secs: 100,
            unanswered: 3,
        };
        assert_eq!(judge(&c, 3, 0, 99), None, "not silent long enough");
        assert_eq!(judge(&c, 2, 0, 1000), None, "not enough unanswered");
        assert_eq!(
            judge(&c, 3, 0, 100),
            Some(Stale {
                unanswered: 3,
                silent_secs: 100
            })
        );
        let off = StaleConfig { unanswered: 0, ..c };
        assert_eq!(judge(&off, 1000, 0, 1 << 40), None, "0 turns it off");
        let count_only = StaleConfig {
            silence_secs: 0,
            ..c
        };
        assert!(judge(&count_only, 3, 50, 50).is_some());
        assert!(StaleConfig::default().enabled());
    }
}
