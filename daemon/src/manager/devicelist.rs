//! Device lists received from PEP (any JID, our own included).

use super::labels::OwnLabel;
use super::{check_bare_jid, AccountLookupError, ErrorCause, InvalidJid, Manager, StorageError};
use crate::bounds::MAX_DEVICES_PER_LIST;
use crate::events::{Action, Cause, Event};
use crate::storage::{self, devices};
use protocol_core::xml::{self, DeviceListEntry, XmlError};
use protocol_core::Version;
use serde::Serialize;

/// The outcome of a device-list update.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct DevicelistUpdate {
    /// Devices now active.
    pub device_ids: Vec<u32>,
    /// Devices seen for the first time.
    pub added: Vec<u32>,
    /// Devices that came back.
    pub reactivated: Vec<u32>,
    /// Devices that dropped out (kept, marked inactive).
    pub deactivated: Vec<u32>,
    /// For our own JID: our device is missing from the list, which must be republished.
    pub own_device_missing: bool,
    /// Follow-up actions.
    pub actions: Vec<Action>,
}

/// Why `devicelist.update` failed.
#[derive(Debug, thiserror::Error)]
pub enum DevicelistError {
    /// The owner is not a bare JID.
    #[error(transparent)]
    Jid(#[from] InvalidJid),
    /// No account to store it for.
    #[error(transparent)]
    Account(#[from] AccountLookupError),
    /// Not a well-formed device list of the namespace.
    #[error("invalid device list: {0}")]
    Malformed(#[source] XmlError),
    /// The parser's thread failed.
    #[error("invalid device list: the parser failed")]
    ParserFailed,
    /// The list names more devices than a contact may have.
    #[error("device list names {count} devices; at most {max} are accepted")]
    TooManyDevices {
        /// Devices in the list.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

impl DevicelistError {
    /// Whom the error is due to.
    pub fn cause(&self) -> ErrorCause {
        match self {
            DevicelistError::Jid(e) => e.cause(),
            DevicelistError::Account(e) => e.cause(),
            DevicelistError::Malformed(e) => e.cause(),
            DevicelistError::ParserFailed => ErrorCause::LocalState,
            DevicelistError::TooManyDevices { .. } => ErrorCause::PeerMisbehaved,
            DevicelistError::Storage(e) => e.cause(),
        }
    }
}

impl Manager {
    /// Ingests the device list of `jid` in `namespace` (as received from PEP).
    pub async fn update_devicelist(
        &self,
        account: Option<&str>,
        jid: &str,
        namespace: Version,
        list_xml: &str,
    ) -> Result<DevicelistUpdate, DevicelistError> {
        let jid = check_bare_jid(jid)?;
        let jid = jid.as_str();
        let acct = self.account(account)?;
        let entries = parse_devicelist(namespace, list_xml).await?;
        let own = jid == acct.jid;
        let stored = entries_to_store(&entries);
        let account_id = acct.id;
        let jid_owned = jid.to_owned();
        let now = storage::now();
        let (change, rows) = self
            .store
            .write(move |tx| {
                let change =
                    devices::replace_list(tx, account_id, &jid_owned, namespace, &stored, now)?;
                let rows = devices::list(tx, account_id, &jid_owned, namespace)?;
                Ok((change, rows))
            })
            .await?;
        self.mirror_directory(acct.id, |d| d.set_devices(jid, namespace, rows));
        let device_ids: Vec<u32> = self.with_directory(acct.id, |d| d.active(jid, namespace))?;
        let own_device_missing = own && !device_ids.contains(&acct.device_id);
        let mut actions = Vec::new();
        if own_device_missing {
            let a = Action::PublishDevicelist { namespace };
            self.push_action(&acct, &mut actions, Cause::OwnDeviceMissing, a);
        } else if own && namespace == Version::Twomemo {
            let label = acct.keys.lock().await?.label.clone();
            if own_label_differs(label.as_ref(), acct.device_id, &entries) {
                let a = Action::PublishDevicelist { namespace };
                self.push_action(&acct, &mut actions, Cause::LabelChanged, a);
            }
        }
        // New devices need their bundles before anything can be encrypted to them.
        for &device_id in change.added.iter().chain(&change.reactivated) {
            if own && device_id == acct.device_id {
                continue;
            }
            let a = Action::fetch_bundle(jid, namespace, device_id);
            self.push_action(&acct, &mut actions, Cause::NewDevice, a);
        }
        let changed = !(change.added.is_empty()
            && change.reactivated.is_empty()
            && change.deactivated.is_empty());
        if changed {
            self.emit(Event::DevicelistChanged {
                account: acct.jid.clone(),
                cause: Cause::DevicelistUpdated,
                peer: jid.to_owned(),
                namespace,
                device_ids: device_ids.clone(),
            });
        }
        tracing::debug!(account = %acct.jid, peer = jid, %namespace, devices = device_ids.len(), "device list updated");
        Ok(DevicelistUpdate {
            device_ids,
            added: change.added,
            reactivated: change.reactivated,
            deactivated: change.deactivated,
            own_device_missing,
            actions,
        })
    }
}

/// Parses a device list (a large one off the runtime thread) and refuses one longer than
/// [`MAX_DEVICES_PER_LIST`].
async fn parse_devicelist(
    namespace: Version,
    list_xml: &str,
) -> Result<Vec<DeviceListEntry>, DevicelistError> {
    let owned = list_xml.to_owned();
    let entries = crate::bounds::parse_off_thread(owned.len(), move || {
        xml::devicelist_from_xml(namespace, &owned)
    })
    .await
    .ok_or(DevicelistError::ParserFailed)?
    .map_err(DevicelistError::Malformed)?;
    check_devicelist_len(entries.len())?;
    Ok(entries)
}

/// The entries as stored: labels and their signatures as listed (OMEMO 2 only; they are checked
/// whenever they are shown, `manager::labels`).
fn entries_to_store(entries: &[DeviceListEntry]) -> Vec<devices::DeviceListEntry> {
    entries
        .iter()
        .map(|e| devices::DeviceListEntry {
            device_id: e.id,
            label: e.label.clone(),
            labelsig: e.labelsig.clone(),
        })
        .collect()
}

/// Whether our own OMEMO 2 list shows our device with another label than ours (or one we
/// removed): the list is to be published again.
fn own_label_differs(
    own: Option<&OwnLabel>,
    acct_device: u32,
    entries: &[DeviceListEntry],
) -> bool {
    entries
        .iter()
        .find(|e| e.id == acct_device)
        .is_some_and(|e| e.label.as_deref() != own.map(|l| l.text.as_str()))
}

/// Refuses a device list longer than [`MAX_DEVICES_PER_LIST`].
fn check_devicelist_len(count: usize) -> Result<(), DevicelistError> {
    if count > MAX_DEVICES_PER_LIST {
        return Err(DevicelistError::TooManyDevices {
            count,
            max: MAX_DEVICES_PER_LIST,
        });
    }
    Ok(())
}
