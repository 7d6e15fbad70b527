//! The way out of a device id collision: our device takes a new id (same identity, keys,
//! sessions and trust), avoiding the ids on our own device lists.

use super::account::{check_avoided, pick_device_id, Account, AccountKeys, OwnKeys};
use super::error::DeviceIdError;
use super::{AccountLookupError, ErrorCause, Manager, StorageError};
use crate::events::Action;
use crate::events::Cause;
use crate::storage::{accounts, device_state};
use protocol_core::consts::MAX_DEVICE_ID;
use protocol_core::Version;
use rand::rngs::OsRng;
use std::sync::{Arc, PoisonError};

/// Why `account.renew_device_id` failed.
#[derive(Debug, thiserror::Error)]
pub enum RenewDeviceIdError {
    /// No account to renew.
    #[error(transparent)]
    Account(#[from] AccountLookupError),
    /// `avoid` is unusable.
    #[error(transparent)]
    DeviceId(#[from] DeviceIdError),
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

impl RenewDeviceIdError {
    /// Whom the error is due to.
    pub fn cause(&self) -> ErrorCause {
        match self {
            RenewDeviceIdError::Account(e) => e.cause(),
            RenewDeviceIdError::DeviceId(e) => e.cause(),
            RenewDeviceIdError::Storage(e) => e.cause(),
        }
    }
}

/// Our device with its new id, and what to publish now.
#[derive(Debug)]
pub struct RenewedDevice {
    /// The account, as it now is.
    pub account: Arc<Account>,
    /// Both device lists and bundles to publish.
    pub actions: Vec<Action>,
}

impl Manager {
    /// Gives our device a new id, none of `avoid`, of our current one, or of the ids on our own
    /// device lists. Returns the account and what to publish (both device lists and bundles).
    pub async fn renew_device_id(
        &self,
        account: Option<&str>,
        avoid: &[u32],
    ) -> Result<RenewedDevice, RenewDeviceIdError> {
        check_avoided(avoid)?;
        let old = self.account(account)?;
        let mut keys = old.keys.lock().await?;
        let mut taken: Vec<u32> = avoid.to_vec();
        taken.push(old.device_id);
        self.with_directory(old.id, |d| {
            for ns in Version::ALL {
                taken.extend(d.active(&old.jid, ns));
            }
        })?;
        let new_id =
            pick_device_id(&mut OsRng, &taken, MAX_DEVICE_ID).ok_or(DeviceIdError::NoneFree)?;
        let id = old.id;
        let version = self
            .store
            .write(move |tx| {
                device_state::set_device_id(tx, id, new_id)?;
                accounts::bump_bundle_version(tx, id)
            })
            .await?;
        // The old handle keeps no keys: an operation still holding it finds no prekey to
        // consume twice, and publishes nothing.
        self.key_source.resident().remove(id);
        let fresh = Arc::new(Account {
            id,
            jid: old.jid.clone(),
            device_id: new_id,
            identity: old.identity.clone(),
            keys: AccountKeys::loaded(
                id,
                &self.key_source,
                OwnKeys {
                    signed_prekeys: std::mem::take(&mut keys.signed_prekeys),
                    prekeys: std::mem::take(&mut keys.prekeys),
                    bundle_version: version,
                    catchup: keys.catchup,
                    catchup_since: keys.catchup_since,
                    trust_mode: keys.trust_mode,
                    label: keys.label.take(),
                },
            ),
        });
        self.replace_account(fresh.clone());
        drop(keys);
        tracing::warn!(jid = %fresh.jid, old = old.device_id, new = new_id, "device id renewed");
        let mut actions = Vec::new();
        for namespace in Version::ALL {
            for a in [
                Action::PublishDevicelist { namespace },
                Action::PublishBundle { namespace },
            ] {
                self.push_action(&fresh, &mut actions, Cause::DeviceIdRenewed, a);
            }
        }
        Ok(RenewedDevice {
            account: fresh,
            actions,
        })
    }

    fn replace_account(&self, acct: Arc<Account>) {
        self.accounts
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(acct.jid.clone(), acct);
    }
}
