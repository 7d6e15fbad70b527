//! Bundles of other devices, fetched by the client and handed to us.

use super::bundle_cache::{self, BundleCheckError, VerifiedBundle};
use super::{check_bare_jid, Manager, ManagerError, Result};
use crate::storage::trust::TrustRow;
use crate::storage::{self, bundles, trust as trust_store};
use protocol_core::bundle::BundleError;
use protocol_core::Version;
use serde::Serialize;
use std::sync::Arc;

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
        let verified = parse_received(namespace, bundle_xml).await?;
        let bundle = verified.bundle();
        let curve = *verified.identity_curve25519();
        let mode = acct.keys.lock().await.trust_mode;
        let (trust, new_trust) = self.trust_for_key(&acct, mode, jid, &curve);
        let addr = Self::addr(&acct, jid, namespace, device_id);
        if let Some(old) = self
            .set_aside_changed_bundle(&addr, &acct.jid, curve, bundle_xml)
            .await?
        {
            let prekey_count = u32::try_from(bundle.prekeys.len()).unwrap_or(u32::MAX);
            return Ok(BundleUpdate::new(&trust, prekey_count, Some(&old)));
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
        let prekey_count = row.prekey_count;
        let ticket = self.bundles.write_ticket();
        let cache = ticket.invalidator();
        let a = addr.clone();
        self.store
            .write(move |tx| {
                cache.invalidate(&a);
                bundles::upsert(tx, &row)?;
                if new_trust {
                    trust_store::set(tx, &trust_row)?;
                }
                Ok(())
            })
            .await?;
        self.bundles.publish(&addr, verified, &ticket);
        drop(ticket);
        if new_trust {
            self.remember_trust(&acct, vec![trust.clone()], namespace, device_id);
        }
        Ok(BundleUpdate::new(&trust, prekey_count, None))
    }

    /// The stored bundle of a device, parsed and verified: from the cache, else from the
    /// database (then cached).
    pub(crate) async fn stored_bundle(&self, addr: &storage::DeviceAddr) -> Result<StoredBundle> {
        if let Some(b) = self.bundles.get(addr) {
            return Ok(StoredBundle::Usable(b));
        }
        // Taken before the read: a change committed meanwhile makes the fill a no-op.
        let ticket = self.bundles.load_ticket();
        let a = addr.clone();
        let Some(row) = self.store.read(move |conn| bundles::get(conn, &a)).await? else {
            return Ok(StoredBundle::Missing);
        };
        let text = String::from_utf8(row.bundle)
            .map_err(|_| ManagerError::InvalidBundle("stored bundle is not UTF-8".into()))?;
        let namespace = addr.namespace;
        let verified = crate::bounds::parse_off_thread(text.len(), move || {
            bundle_cache::parse(namespace, &text)
                .map_err(|e| ManagerError::InvalidBundle(e.to_string()))
        })
        .await
        .unwrap_or_else(|| Err(ManagerError::InvalidBundle("the parser failed".into())))?;
        if verified.bundle().prekeys.is_empty() {
            return Ok(StoredBundle::Spent);
        }
        let verified = Arc::new(verified);
        self.bundles.fill(addr, Arc::clone(&verified), ticket);
        Ok(StoredBundle::Usable(verified))
    }
}

/// Parses and verifies a bundle a client fetched (a large one off the runtime thread).
async fn parse_received(namespace: Version, bundle_xml: &str) -> Result<VerifiedBundle> {
    let owned = bundle_xml.to_owned();
    crate::bounds::parse_off_thread(owned.len(), move || {
        bundle_cache::parse(namespace, &owned).map_err(|e| match e {
            BundleCheckError::Xml(e) => ManagerError::InvalidBundle(e.to_string()),
            BundleCheckError::Invalid(e @ BundleError::InvalidSignature) => {
                ManagerError::InvalidSignature(e.to_string())
            }
            BundleCheckError::Invalid(e) => ManagerError::InvalidBundle(e.to_string()),
        })
    })
    .await
    .unwrap_or_else(|| Err(ManagerError::InvalidBundle("the parser failed".into())))
}

impl BundleUpdate {
    /// The answer for a bundle whose key has `trust`; `old` is the identity key held for the
    /// device when the bundle carried another one (and was set aside).
    fn new(trust: &TrustRow, prekey_count: u32, old: Option<&[u8; 32]>) -> Self {
        Self {
            fingerprint: trust.fingerprint.clone(),
            trust: trust.level.as_str().to_owned(),
            prekey_count,
            identity_changed: old.is_some(),
            old_fingerprint: old.map(protocol_core::keys::fingerprint),
        }
    }
}

/// What is stored for a device to start a session from.
#[derive(Debug)]
pub(crate) enum StoredBundle {
    /// No bundle.
    Missing,
    /// A bundle whose one-time prekeys we all used.
    Spent,
    /// A bundle (the cache's, or one just read).
    Usable(Arc<VerifiedBundle>),
}
