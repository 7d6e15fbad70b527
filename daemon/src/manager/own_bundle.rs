//! What we publish: our bundle and our device list per namespace, with the exact PubSub node,
//! item id and publish options each version needs; signed prekey rotation.

use super::account::{
    signed_prekey_row, OwnSignedPreKey, SIGNED_PREKEY_GRACE_SECS, SIGNED_PREKEY_ROTATION_SECS,
};
use super::{AccountLookupError, ErrorCause, Manager, StorageError};
use crate::storage::{accounts, signed_prekeys};
use protocol_core::keys::identity::SignedPreKey;
use protocol_core::xml::{self, DeviceListEntry};
use protocol_core::Version;
use rand::rngs::OsRng;
use serde::Serialize;
use std::collections::BTreeMap;

/// Something to publish with PEP.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Publication {
    /// Namespace.
    pub namespace: String,
    /// PubSub node.
    pub node: String,
    /// Item id.
    pub item_id: String,
    /// Publish options (XEP-0060 `publish-options` fields).
    pub publish_options: BTreeMap<String, String>,
    /// The item payload.
    pub xml: String,
    /// Our device id.
    pub device_id: u32,
    /// Change counter of our bundle (bundle publications only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle_version: Option<i64>,
}

/// Why `bundle.get` failed.
#[derive(Debug, thiserror::Error)]
pub enum OwnBundleError {
    /// No account to publish for.
    #[error(transparent)]
    Account(#[from] AccountLookupError),
    /// The account has no current signed prekey (not reached: creation and rotation keep one).
    #[error("broken session: account has no signed prekey")]
    NoSignedPreKey,
    /// The account's keys could not be read.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl OwnBundleError {
    /// Whom the error is due to.
    pub fn cause(&self) -> ErrorCause {
        match self {
            OwnBundleError::Account(e) => e.cause(),
            OwnBundleError::NoSignedPreKey => ErrorCause::LocalState,
            OwnBundleError::Storage(e) => e.cause(),
        }
    }
}

/// Why `devicelist.get` failed.
#[derive(Debug, thiserror::Error)]
pub enum OwnDevicelistError {
    /// No account to publish for.
    #[error(transparent)]
    Account(#[from] AccountLookupError),
    /// The account's label or directory could not be read.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl OwnDevicelistError {
    /// Whom the error is due to.
    pub fn cause(&self) -> ErrorCause {
        match self {
            OwnDevicelistError::Account(e) => e.cause(),
            OwnDevicelistError::Storage(e) => e.cause(),
        }
    }
}

fn options(namespace: Version, bundle: bool) -> BTreeMap<String, String> {
    let mut o = BTreeMap::new();
    o.insert("pubsub#access_model".to_owned(), "open".to_owned());
    if bundle && namespace == Version::Twomemo {
        // One node holds every device's bundle (item id = device id).
        o.insert("pubsub#max_items".to_owned(), "max".to_owned());
    }
    o
}

impl Manager {
    /// Our bundle in `namespace`, ready to publish.
    pub async fn own_bundle(
        &self,
        account: Option<&str>,
        namespace: Version,
    ) -> Result<Publication, OwnBundleError> {
        let acct = self.account(account)?;
        let keys = acct.keys.lock().await?;
        let bundle = keys
            .bundle(namespace, &acct.identity)
            .ok_or(OwnBundleError::NoSignedPreKey)?;
        let (node, item_id) = namespace.bundle_node(acct.device_id);
        Ok(Publication {
            namespace: namespace.namespace().to_owned(),
            node,
            item_id,
            publish_options: options(namespace, true),
            xml: xml::bundle_to_xml(&bundle),
            device_id: acct.device_id,
            bundle_version: Some(keys.bundle_version),
        })
    }

    /// Our device list in `namespace`: the list as last seen, with our own device added and
    /// the devices of `remove` left out (the user removes them). In OMEMO 2 our device carries
    /// our signed label, and our other devices keep theirs as listed (0.3 lists have no labels).
    pub async fn own_devicelist(
        &self,
        account: Option<&str>,
        namespace: Version,
        remove: &[u32],
    ) -> Result<Publication, OwnDevicelistError> {
        let acct = self.account(account)?;
        let own_label = acct.keys.lock().await?.label.clone();
        let mut entries: Vec<DeviceListEntry> = self.with_directory(acct.id, |d| {
            d.devices
                .get(&acct.jid)
                .into_iter()
                .flatten()
                .filter(|r| r.active && r.namespace == namespace && r.device_id != acct.device_id)
                .filter(|r| !remove.contains(&r.device_id))
                .map(|r| DeviceListEntry {
                    id: r.device_id,
                    label: r.label.clone(),
                    labelsig: r.labelsig.clone(),
                })
                .collect()
        })?;
        entries.push(DeviceListEntry {
            id: acct.device_id,
            label: own_label.as_ref().map(|l| l.text.clone()),
            labelsig: own_label.map(|l| l.signature.to_vec()),
        });
        entries.sort_unstable_by_key(|e| e.id);
        Ok(Publication {
            namespace: namespace.namespace().to_owned(),
            node: namespace.devicelist_node().to_owned(),
            item_id: "current".to_owned(),
            publish_options: options(namespace, false),
            xml: xml::devicelist_to_xml(namespace, &entries),
            device_id: acct.device_id,
            bundle_version: None,
        })
    }

    /// After the start found the database to be an older copy: the treated accounts' bundles
    /// changed (new prekeys, new signed prekey) and must be published again, a duty no call
    /// caused (held for the first subscriber if none is connected yet).
    pub fn announce_restored(&self, jids: &[String]) {
        for acct in self.accounts().iter().filter(|a| jids.contains(&a.jid)) {
            for namespace in Version::ALL {
                let a = super::Action::PublishBundle { namespace };
                self.announce_duty(acct, crate::events::Cause::Rollback, &a);
            }
        }
    }

    /// Rotates signed prekeys older than the rotation period and drops retired ones past their
    /// grace period. Returns the accounts whose bundle changed. Only accounts with work due
    /// are visited, and their keys are not read into memory for it.
    pub async fn rotate_signed_prekeys(&self, now: i64) -> Result<Vec<String>, StorageError> {
        let (made_before, retired_before) = (
            now - SIGNED_PREKEY_ROTATION_SECS,
            now - SIGNED_PREKEY_GRACE_SECS,
        );
        let due: std::collections::HashSet<i64> = self
            .store
            .read(move |c| signed_prekeys::accounts_due(c, made_before, retired_before))
            .await?
            .into_iter()
            .collect();
        let mut changed = Vec::new();
        for acct in self.accounts().into_iter().filter(|a| due.contains(&a.id)) {
            let mut slot = acct.keys.lock_loaded().await;
            let identity = acct.identity.clone();
            let account_id = acct.id;
            let (new_spk, version, old_id) = self
                .store
                .write(move |tx| {
                    signed_prekeys::delete_retired_before(tx, account_id, retired_before)?;
                    let Some(current) = signed_prekeys::current(tx, account_id)? else {
                        return Ok((None, None, None));
                    };
                    if current.created_at > made_before {
                        return Ok((None, None, None));
                    }
                    let id = accounts::take_signed_prekey_id(tx, account_id)?;
                    let spk = SignedPreKey::generate(id, &identity, &mut OsRng);
                    signed_prekeys::retire(tx, account_id, current.id, now)?;
                    signed_prekeys::insert(tx, &signed_prekey_row(account_id, &spk, now))?;
                    let v = accounts::bump_bundle_version(tx, account_id)?;
                    Ok((Some(spk), Some(v), Some(current.id)))
                })
                .await?;
            if let Some(keys) = slot.as_mut() {
                keys.signed_prekeys
                    .retain(|_, s| s.retired_at.is_none_or(|r| r >= retired_before));
            }
            let (Some(spk), Some(v), Some(old_id)) = (new_spk, version, old_id) else {
                continue;
            };
            tracing::info!(jid = %acct.jid, spk_id = spk.id, "signed prekey rotated");
            if let Some(keys) = slot.as_mut() {
                if let Some(old) = keys.signed_prekeys.get_mut(&old_id) {
                    old.retired_at = Some(now);
                }
                keys.signed_prekeys.insert(
                    spk.id,
                    OwnSignedPreKey {
                        key: spk,
                        created_at: now,
                        retired_at: None,
                    },
                );
                keys.bundle_version = v;
            }
            drop(slot);
            for namespace in Version::ALL {
                let a = super::Action::PublishBundle { namespace };
                self.announce_duty(&acct, crate::events::Cause::SignedPrekeyRotated, &a);
            }
            changed.push(acct.jid.clone());
        }
        Ok(changed)
    }
}
