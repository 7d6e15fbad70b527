//! Verification links: our own (`xmpp:<jid>?omemo-sid-<id>=<key>;…`, the form Conversations and
//! Gajim scan, shown as a QR code), and applying a scanned one.
//!
//! Applying is all or nothing: every key the link names must be the key omemod holds for that
//! device (its session's, else its bundle's, else one accepted with `identity.accept`), or
//! nothing is trusted and the answer says, key by key, what did not match. A partial match is
//! never a partial trust: a link with one wrong key is an old link at best and a forged one at
//! worst, and the user must not be left believing the contact is verified.

use super::{check_bare_jid, AccountLookupError, ErrorCause, InvalidJid, Manager, StorageError};
use crate::storage::trust::{TrustLevel, TrustRow, TrustSource};
use crate::storage::{self, devices, trust as trust_store, DeviceAddr};
use protocol_core::keys::fingerprint;
use protocol_core::verification::{display_forms, DisplayForms, UriError, UriKey, VerificationUri};
use serde::Serialize;

/// One device a link names.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct LinkedDevice {
    /// Device id.
    pub device_id: u32,
    /// Its fingerprint.
    pub fingerprint: String,
}

/// Result of `link.get`: our own verification link.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct OwnLink {
    /// Our bare JID.
    pub jid: String,
    /// The link (`xmpp:…`), to show as a QR code or to send.
    pub link: String,
    /// The devices it names: ours first, then our other devices the user verified.
    pub devices: Vec<LinkedDevice>,
    /// Our fingerprint as Conversations, Dino and Gajim display it.
    #[schemars(with = "std::collections::BTreeMap<String, String>")]
    pub fingerprints: DisplayForms,
}

/// How one key of a link compares with what omemod holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyMatch {
    /// The device holds this key.
    Matches,
    /// The device holds another key.
    Mismatch,
    /// No device of that id is known, or no key is known for it yet (fetch the contact's
    /// device list and bundles first).
    UnknownDevice,
}

/// One key of a link, compared.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct KeyReport {
    /// The device id the link names (`null`: Conversations' `omemo=` names none).
    pub device_id: Option<u32>,
    /// The key the link names.
    pub fingerprint: String,
    /// How it compares.
    pub status: KeyMatch,
    /// On a mismatch: the key omemod holds for the device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_fingerprint: Option<String>,
}

/// Result of `link.verify`: every key matched and is now trusted (verified by the user).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct LinkVerified {
    /// The contact.
    pub jid: String,
    /// Every key of the link, each `matches`.
    pub keys: Vec<KeyReport>,
    /// Keys newly recorded as verified (the others were already, or are our own).
    pub newly_verified: usize,
}

/// Why `link.get` failed.
#[derive(Debug, thiserror::Error)]
pub enum OwnLinkError {
    /// No account to show the link of.
    #[error(transparent)]
    Account(#[from] AccountLookupError),
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

impl OwnLinkError {
    /// Whom the error is due to.
    pub fn cause(&self) -> ErrorCause {
        match self {
            OwnLinkError::Account(e) => e.cause(),
            OwnLinkError::Storage(e) => e.cause(),
        }
    }
}

/// Why `link.verify` trusted nothing.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No account to verify for.
    #[error(transparent)]
    Account(#[from] AccountLookupError),
    /// The text is not a verification link.
    #[error("not a verification link: {0}")]
    Invalid(#[from] UriError),
    /// The link's JID is not a bare JID.
    #[error(transparent)]
    Jid(#[from] InvalidJid),
    /// A key differs from the one held for its device: nothing was trusted.
    #[error("the link does not match: {} of its keys differ from the keys held for their devices; nothing was trusted", count(.keys, KeyMatch::Mismatch))]
    Mismatch {
        /// The contact.
        jid: String,
        /// Every key, compared.
        keys: Vec<KeyReport>,
    },
    /// A key names a device (or key) omemod does not know yet: nothing was trusted.
    #[error("the link names {} unknown devices of {jid}: fetch its device lists and bundles, then apply the link again; nothing was trusted", count(.keys, KeyMatch::UnknownDevice))]
    UnknownDevice {
        /// The contact.
        jid: String,
        /// Every key, compared.
        keys: Vec<KeyReport>,
    },
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

fn count(keys: &[KeyReport], status: KeyMatch) -> usize {
    keys.iter().filter(|k| k.status == status).count()
}

impl LinkError {
    /// Whom the error is due to.
    pub fn cause(&self) -> ErrorCause {
        match self {
            LinkError::Account(e) => e.cause(),
            LinkError::Invalid(e) => e.cause(),
            LinkError::Jid(e) => e.cause(),
            LinkError::Mismatch { .. } => ErrorCause::PeerMisbehaved,
            LinkError::UnknownDevice { .. } => ErrorCause::LocalState,
            LinkError::Storage(e) => e.cause(),
        }
    }
}

/// The identity keys held for each device of a JID: (device id, key), every namespace.
fn held_keys(
    conn: &crate::storage::Db,
    addrs: &[DeviceAddr],
) -> Result<Vec<(u32, [u8; 32])>, StorageError> {
    let mut out = Vec::new();
    for a in addrs {
        if let Some(k) = devices::known_identity(conn, a)? {
            out.push((a.device_id, k));
        }
    }
    Ok(out)
}

/// How `key` compares with the keys held (`held`: device id and key, per namespace).
fn compare(key: &UriKey, held: &[(u32, [u8; 32])]) -> (KeyMatch, Option<[u8; 32]>) {
    let of_device: Vec<&[u8; 32]> = held
        .iter()
        .filter(|(id, _)| key.device_id.is_none_or(|d| d == *id))
        .map(|(_, k)| k)
        .collect();
    match key.device_id {
        // No device named: any device of the JID with that key.
        None => match of_device.iter().find(|k| key.names(k)) {
            Some(k) => (KeyMatch::Matches, Some(**k)),
            None => (KeyMatch::UnknownDevice, None),
        },
        Some(_) => match of_device.iter().find(|k| !key.names(k)) {
            Some(other) => (KeyMatch::Mismatch, Some(**other)),
            None => match of_device.first() {
                Some(k) => (KeyMatch::Matches, Some(**k)),
                None => (KeyMatch::UnknownDevice, None),
            },
        },
    }
}

impl Manager {
    /// Our verification link: our device, then our other active devices the user verified (as
    /// Conversations and Gajim do, so that scanning it verifies those too).
    pub async fn own_link(&self, account: Option<&str>) -> Result<OwnLink, OwnLinkError> {
        let acct = self.account(account)?;
        let addrs: Vec<DeviceAddr> = self.with_directory(acct.id, |d| {
            d.devices
                .get(&acct.jid)
                .into_iter()
                .flatten()
                .filter(|r| r.active && r.device_id != acct.device_id)
                .map(|r| r.addr())
                .collect()
        })?;
        let held = self.store.read(move |c| held_keys(c, &addrs)).await?;
        let verified = |key: &[u8; 32]| {
            self.with_directory(acct.id, |d| {
                d.trust_of(&acct.jid, key).is_some_and(|t| {
                    t.level == TrustLevel::Trusted && t.source == TrustSource::Manual
                })
            })
        };
        let mut keys = vec![UriKey {
            device_id: Some(acct.device_id),
            key: *acct.identity.curve25519(),
        }];
        let mut others: Vec<(u32, [u8; 32])> = Vec::new();
        for (id, k) in held {
            if verified(&k)? {
                others.push((id, k));
            }
        }
        others.sort_unstable();
        others.dedup();
        for (id, key) in others {
            // A device whose namespaces disagree on its key is left out.
            if keys.iter().all(|k| k.device_id != Some(id)) {
                keys.push(UriKey {
                    device_id: Some(id),
                    key,
                });
            }
        }
        let uri = VerificationUri {
            jid: acct.jid.clone(),
            keys,
        };
        Ok(OwnLink {
            jid: acct.jid.clone(),
            link: uri.to_uri(),
            devices: uri
                .keys
                .iter()
                .filter_map(|k| {
                    Some(LinkedDevice {
                        device_id: k.device_id?,
                        fingerprint: fingerprint(&k.key),
                    })
                })
                .collect(),
            fingerprints: display_forms(acct.identity.curve25519()),
        })
    }

    /// Applies a scanned verification link: when every key it names is the key held for its
    /// device, each becomes trusted by the user (`manual`); otherwise nothing changes and the
    /// error reports every key.
    pub async fn verify_link(
        &self,
        account: Option<&str>,
        link: &str,
    ) -> Result<LinkVerified, LinkError> {
        let acct = self.account(account)?;
        let uri = VerificationUri::parse(link)?;
        let jid = check_bare_jid(&uri.jid)?;
        let addrs: Vec<DeviceAddr> = self.with_directory(acct.id, |d| {
            d.devices
                .get(&jid)
                .into_iter()
                .flatten()
                .map(|r| r.addr())
                .collect()
        })?;
        let mut held = self.store.read(move |c| held_keys(c, &addrs)).await?;
        if jid == acct.jid {
            held.push((acct.device_id, *acct.identity.curve25519()));
        }
        let mut reports = Vec::with_capacity(uri.keys.len());
        let mut matched: Vec<[u8; 32]> = Vec::new();
        for key in &uri.keys {
            let (status, held_key) = compare(key, &held);
            if let (KeyMatch::Matches, Some(k)) = (status, held_key) {
                matched.push(k);
            }
            reports.push(KeyReport {
                device_id: key.device_id,
                fingerprint: fingerprint(&key.key),
                status,
                held_fingerprint: match status {
                    KeyMatch::Mismatch => held_key.map(|k| fingerprint(&k)),
                    _ => None,
                },
            });
        }
        if count(&reports, KeyMatch::Mismatch) > 0 {
            return Err(LinkError::Mismatch { jid, keys: reports });
        }
        if count(&reports, KeyMatch::UnknownDevice) > 0 {
            return Err(LinkError::UnknownDevice { jid, keys: reports });
        }
        let newly_verified = self.record_verified(&acct, &jid, matched).await?;
        tracing::info!(account = %acct.jid, peer = %jid, keys = reports.len(), newly_verified, "verification link applied");
        Ok(LinkVerified {
            jid,
            keys: reports,
            newly_verified,
        })
    }

    /// Records `keys` of `jid` as trusted by the user, in one transaction (our own key is
    /// skipped); returns how many decisions changed.
    async fn record_verified(
        &self,
        acct: &super::account::Account,
        jid: &str,
        mut keys: Vec<[u8; 32]>,
    ) -> Result<usize, StorageError> {
        keys.sort_unstable();
        keys.dedup();
        let now = storage::now();
        let rows: Vec<TrustRow> = self.with_directory(acct.id, |d| {
            keys.iter()
                .filter(|k| !(jid == acct.jid && *k == acct.identity.curve25519()))
                .filter(|k| {
                    !d.trust_of(jid, k).is_some_and(|t| {
                        t.level == TrustLevel::Trusted && t.source == TrustSource::Manual
                    })
                })
                .map(|k| TrustRow {
                    account_id: acct.id,
                    jid: jid.to_owned(),
                    identity_key: *k,
                    fingerprint: fingerprint(k),
                    level: TrustLevel::Trusted,
                    source: TrustSource::Manual,
                    decided_at: now,
                })
                .collect()
        })?;
        if rows.is_empty() {
            return Ok(0);
        }
        let stored = rows.clone();
        self.store
            .write(move |tx| {
                for r in &stored {
                    trust_store::set(tx, r)?;
                }
                Ok(())
            })
            .await?;
        let n = rows.len();
        self.mirror_directory(acct.id, |d| {
            for r in rows {
                d.trust.insert((r.jid.clone(), r.identity_key), r);
            }
        });
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(device_id: Option<u32>, b: u8) -> UriKey {
        UriKey {
            device_id,
            key: [b; 32],
        }
    }

    #[test]
    fn keys_compare_with_every_namespace_of_their_device() {
        let held = [
            (1, [1; 32]),
            (1, [1; 32]),
            (2, [2; 32]),
            (3, [3; 32]),
            (3, [4; 32]),
        ];
        assert_eq!(compare(&key(Some(1), 1), &held).0, KeyMatch::Matches);
        assert_eq!(compare(&key(Some(2), 1), &held).0, KeyMatch::Mismatch);
        assert_eq!(compare(&key(Some(2), 1), &held).1, Some([2; 32]));
        // Device 3 holds two keys (one per namespace): no key matches both.
        assert_eq!(compare(&key(Some(3), 3), &held).0, KeyMatch::Mismatch);
        assert_eq!(compare(&key(Some(9), 1), &held).0, KeyMatch::UnknownDevice);
        assert_eq!(compare(&key(None, 2), &held).0, KeyMatch::Matches);
        assert_eq!(compare(&key(None, 9), &held).0, KeyMatch::UnknownDevice);
    }
}
