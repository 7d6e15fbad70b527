//! Bundles of other devices, fetched by the client and handed to us.

use super::bundle_cache::{self, BundleCheckError, VerifiedBundle};
use super::{
    check_bare_jid, AccountLookupError, ErrorCause, InvalidJid, KeyTrust, Manager, StorageError,
};
use crate::storage::trust::TrustRow;
use crate::storage::{self, bundles, trust as trust_store};
use protocol_core::bundle::BundleError;
use protocol_core::xml::XmlError;
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

/// Why `bundle.update` failed.
#[derive(Debug, thiserror::Error)]
pub enum BundleUpdateError {
    /// The owner is not a bare JID.
    #[error(transparent)]
    Jid(#[from] InvalidJid),
    /// No account to store it for.
    #[error(transparent)]
    Account(#[from] AccountLookupError),
    /// The device id is not one (1 to 2³¹−1).
    #[error("device id {0} out of range")]
    DeviceIdOutOfRange(u32),
    /// Not a well-formed bundle of the namespace.
    #[error("invalid bundle: {0}")]
    Malformed(#[source] XmlError),
    /// The signed prekey's signature does not verify with the identity key.
    #[error("invalid signature: {0}")]
    InvalidSignature(#[source] BundleError),
    /// Parsed, but an id or a key is invalid.
    #[error("invalid bundle: {0}")]
    Invalid(#[source] BundleError),
    /// The parser's thread failed.
    #[error("invalid bundle: the parser failed")]
    ParserFailed,
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

impl BundleUpdateError {
    /// Whom the error is due to.
    pub fn cause(&self) -> ErrorCause {
        match self {
            BundleUpdateError::Jid(e) => e.cause(),
            BundleUpdateError::Account(e) => e.cause(),
            BundleUpdateError::DeviceIdOutOfRange(_) => ErrorCause::Request,
            BundleUpdateError::Malformed(e) => e.cause(),
            BundleUpdateError::InvalidSignature(e) | BundleUpdateError::Invalid(e) => e.cause(),
            BundleUpdateError::ParserFailed => ErrorCause::LocalState,
            BundleUpdateError::Storage(e) => e.cause(),
        }
    }
}

impl From<BundleCheckError> for BundleUpdateError {
    fn from(e: BundleCheckError) -> Self {
        match e {
            BundleCheckError::Xml(e) => BundleUpdateError::Malformed(e),
            BundleCheckError::Invalid(e @ BundleError::InvalidSignature) => {
                BundleUpdateError::InvalidSignature(e)
            }
            // Every other verification failure, kept as the source.
            BundleCheckError::Invalid(e) => BundleUpdateError::Invalid(e),
        }
    }
}

/// Why a stored bundle (a device's, or one set aside) cannot be used. The bundle was verified
/// when it was stored, so it is our state that fails.
#[derive(Debug, thiserror::Error)]
pub enum StoredBundleError {
    /// The stored bytes are not text.
    #[error("invalid bundle: stored bundle is not UTF-8")]
    NotUtf8,
    /// It no longer parses or verifies.
    #[error("stored {0}")]
    Invalid(#[from] BundleCheckError),
    /// The parser's thread failed.
    #[error("invalid bundle: the parser failed")]
    ParserFailed,
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

impl StoredBundleError {
    /// Our state, always.
    pub fn cause(&self) -> ErrorCause {
        ErrorCause::LocalState
    }
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
    ) -> Result<BundleUpdate, BundleUpdateError> {
        let jid = check_bare_jid(jid)?;
        let jid = jid.as_str();
        let acct = self.account(account)?;
        if device_id == 0 || device_id > protocol_core::consts::MAX_DEVICE_ID {
            return Err(BundleUpdateError::DeviceIdOutOfRange(device_id));
        }
        let verified = parse_received(namespace, bundle_xml).await?;
        let bundle = verified.bundle();
        let curve = *verified.identity_curve25519();
        let mode = acct.keys.lock().await?.trust_mode;
        let KeyTrust {
            row: trust,
            new: new_trust,
        } = self.trust_for_key(&acct, mode, jid, &curve)?;
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
    pub(crate) async fn stored_bundle(
        &self,
        addr: &storage::DeviceAddr,
    ) -> Result<StoredBundle, StoredBundleError> {
        if let Some(b) = self.bundles.get(addr) {
            return Ok(StoredBundle::Usable(b));
        }
        // Taken before the read: a change committed meanwhile makes the fill a no-op.
        let ticket = self.bundles.load_ticket();
        let a = addr.clone();
        let Some(row) = self.store.read(move |conn| bundles::get(conn, &a)).await? else {
            return Ok(StoredBundle::Missing);
        };
        let text = String::from_utf8(row.bundle).map_err(|_| StoredBundleError::NotUtf8)?;
        let namespace = addr.namespace;
        let verified = crate::bounds::parse_off_thread(text.len(), move || {
            bundle_cache::parse(namespace, &text)
        })
        .await
        .ok_or(StoredBundleError::ParserFailed)??;
        if verified.bundle().prekeys.is_empty() {
            return Ok(StoredBundle::Spent);
        }
        let verified = Arc::new(verified);
        self.bundles.fill(addr, Arc::clone(&verified), ticket);
        Ok(StoredBundle::Usable(verified))
    }
}

/// Parses and verifies a bundle a client fetched (a large one off the runtime thread).
async fn parse_received(
    namespace: Version,
    bundle_xml: &str,
) -> Result<VerifiedBundle, BundleUpdateError> {
    let owned = bundle_xml.to_owned();
    Ok(
        crate::bounds::parse_off_thread(owned.len(), move || {
            bundle_cache::parse(namespace, &owned)
        })
        .await
        .ok_or(BundleUpdateError::ParserFailed)??,
    )
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
