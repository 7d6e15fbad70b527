//! Bundles of other devices, fetched by the client and handed to us.

use super::{check_bare_jid, Manager, ManagerError, Result};
use crate::storage::{self, bundles, trust as trust_store};
use protocol_core::bundle::Bundle;
use protocol_core::x3dh::RemoteIdentity;
use protocol_core::xml;
use protocol_core::Version;
use serde::Serialize;

/// What we learnt from a bundle.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct BundleUpdate {
    /// Fingerprint of the device's identity key.
    pub fingerprint: String,
    /// Trust level of that key.
    pub trust: String,
    /// One-time prekeys it offers.
    pub prekey_count: u32,
    /// The bundle carries another identity than the one held for this device (a reinstall,
    /// or an attack): it was set aside, nothing changed, and an `identity_changed` event was
    /// raised. `identity.accept` with `fingerprint` takes it.
    pub identity_changed: bool,
    /// The fingerprint held for the device, when `identity_changed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_fingerprint: Option<String>,
}

impl Manager {
    /// Ingests (validates and stores) the bundle of `jid`'s device `device_id`.
    pub async fn update_bundle(
        &self,
        account: Option<&str>,
        jid: &str,
        namespace: Version,
        device_id: u32,
        bundle_xml: &str,
    ) -> Result<BundleUpdate> {
        let jid = check_bare_jid(jid)?;
        let jid = jid.as_str();
        let acct = self.account(account)?;
        if device_id == 0 || device_id > protocol_core::consts::MAX_DEVICE_ID {
            return Err(ManagerError::InvalidParams(format!(
                "device id {device_id} out of range"
            )));
        }
        let owned = bundle_xml.to_owned();
        let bundle: Bundle = crate::bounds::parse_off_thread(owned.len(), move || {
            let bundle = xml::bundle_from_xml(namespace, &owned)
                .map_err(|e| ManagerError::InvalidBundle(e.to_string()))?;
            bundle.verify().map_err(|e| match e {
                protocol_core::bundle::BundleError::InvalidSignature => {
                    ManagerError::InvalidSignature(e.to_string())
                }
                _ => ManagerError::InvalidBundle(e.to_string()),
            })?;
            Ok(bundle)
        })
        .await
        .unwrap_or_else(|| Err(ManagerError::InvalidBundle("the parser failed".into())))?;
        let curve = RemoteIdentity::from_transported(namespace, bundle.identity_key)
            .curve25519()
            .map_err(|e| ManagerError::InvalidBundle(e.to_string()))?;
        let mode = acct.keys.lock().await.trust_mode;
        let (trust, new_trust) = self.trust_for_key(&acct, mode, jid, &curve);
        let addr = Self::addr(&acct, jid, namespace, device_id);
        if let Some(old) = self
            .set_aside_changed_bundle(&addr, &acct.jid, curve, bundle_xml)
            .await?
        {
            return Ok(BundleUpdate {
                fingerprint: trust.fingerprint,
                trust: trust.level.as_str().to_owned(),
                prekey_count: u32::try_from(bundle.prekeys.len()).unwrap_or(u32::MAX),
                identity_changed: true,
                old_fingerprint: Some(protocol_core::keys::fingerprint(&old)),
            });
        }
        let row = bundles::BundleRow {
            account_id: acct.id,
            jid: jid.to_owned(),
            namespace,
            device_id,
            identity_key: bundle.identity_key,
            identity_curve25519: curve,
            bundle: bundle_xml.as_bytes().to_vec(),
            prekey_count: u32::try_from(bundle.prekeys.len()).unwrap_or(u32::MAX),
            fetched_at: storage::now(),
        };
        let trust_row = trust.clone();
        self.store
            .write(move |tx| {
                bundles::upsert(tx, &row)?;
                if new_trust {
                    trust_store::set(tx, &trust_row)?;
                }
                Ok(())
            })
            .await?;
        if new_trust {
            self.remember_trust(&acct, vec![trust.clone()], namespace, device_id);
        }
        Ok(BundleUpdate {
            fingerprint: trust.fingerprint,
            trust: trust.level.as_str().to_owned(),
            prekey_count: u32::try_from(bundle.prekeys.len()).unwrap_or(u32::MAX),
            identity_changed: false,
            old_fingerprint: None,
        })
    }

    /// The stored bundle of a device, parsed.
    pub(crate) async fn stored_bundle(&self, addr: &storage::DeviceAddr) -> Result<Option<Bundle>> {
        let a = addr.clone();
        let row = self.store.read(move |conn| bundles::get(conn, &a)).await?;
        row.map(|r| {
            let text = String::from_utf8(r.bundle)
                .map_err(|_| ManagerError::InvalidBundle("stored bundle is not UTF-8".into()))?;
            xml::bundle_from_xml(addr.namespace, &text)
                .map_err(|e| ManagerError::InvalidBundle(e.to_string()))
        })
        .transpose()
    }
}
