//! `encrypt.plan`: what an `encrypt` to some JIDs would cover, and what to fetch first —
//! read only: no ratchet moves, nothing is written, no event is sent.

use super::encrypt::EncryptRequest;
use super::error::RecipientsError;
use super::{AccountLookupError, ErrorCause, Manager, StorageError};
use crate::events::Action;
use crate::storage::{bundles, sessions as session_store, DeviceAddr};
use protocol_core::keys::fingerprint;
use serde::Serialize;

/// How a device would be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlanStatus {
    /// There is a session: a normal message.
    Session,
    /// No session, but a stored bundle: a key exchange.
    Bundle,
    /// Neither: fetch its bundle first (see `action`).
    NoBundle,
    /// A bundle with another identity was set aside for it: an `encrypt` would not cover it
    /// until `identity.accept` (see `old_fingerprint`, `new_fingerprint`).
    IdentityChanged,
    /// Silent past the staleness thresholds: left out until it is heard from again (see
    /// `reason`; our own stale devices come with an `offer_device_removal` action).
    Stale,
}

/// One device of the plan.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct PlannedDevice {
    /// Owner's bare JID.
    pub jid: String,
    /// Device id.
    pub device_id: u32,
    /// Namespace.
    pub namespace: String,
    /// How it would be reached.
    pub status: PlanStatus,
    /// Trust of its identity key when known (trusted, undecided, distrusted): a body is only
    /// encrypted for trusted devices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust: Option<String>,
    /// Why it is left out (`stale`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What to do first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// `identity_changed`: the fingerprint held for the device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_fingerprint: Option<String>,
    /// `identity_changed`: the fingerprint of the bundle set aside.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_fingerprint: Option<String>,
}

/// The plan.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct EncryptPlan {
    /// Every device an `encrypt` with these params would cover now.
    pub devices: Vec<PlannedDevice>,
    /// What to fetch first: device lists of recipients with no known device, bundles of
    /// devices with neither session nor bundle.
    pub actions: Vec<Action>,
    /// Whether nothing needs fetching.
    pub ready: bool,
}

/// Why `encrypt.plan` failed.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// No account to plan for.
    #[error(transparent)]
    Account(#[from] AccountLookupError),
    /// The recipients or namespaces are unusable.
    #[error(transparent)]
    Recipients(#[from] RecipientsError),
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

impl PlanError {
    /// Whom the error is due to.
    pub fn cause(&self) -> ErrorCause {
        match self {
            PlanError::Account(e) => e.cause(),
            PlanError::Recipients(e) => e.cause(),
            PlanError::Storage(e) => e.cause(),
        }
    }
}

/// The identity key and unanswered count of a device's session, else the identity key of its
/// stored bundle (none: neither exists).
type KnownKeys = (Option<([u8; 32], u64)>, Option<[u8; 32]>);

impl Manager {
    /// The plan of an `encrypt` with `req` (its body and idempotency key are ignored).
    pub async fn encrypt_plan(
        &self,
        account: Option<&str>,
        req: &EncryptRequest,
    ) -> Result<EncryptPlan, PlanError> {
        let acct = self.account(account)?;
        let jids = super::encrypt::recipients(req)?;
        let targets =
            self.select_targets(&acct, &jids, &req.namespaces, req.one_namespace_per_device)?;
        let (addrs, mut actions) = (targets.devices, targets.fetch);
        let lookup = addrs.clone();
        // (session identity key, bundle identity key) per device, in one read.
        let found: Vec<KnownKeys> = self
            .store
            .read(move |c| {
                lookup
                    .iter()
                    .map(|a: &DeviceAddr| {
                        // A suspect session (restored copy) is replaced by the next message.
                        let s = session_store::get(c, a)?
                            .filter(|r| !r.suspect)
                            .map(|r| (r.identity_key, r.unanswered));
                        let b = match s {
                            Some(_) => None,
                            None => bundles::get(c, a)?.map(|r| r.identity_curve25519),
                        };
                        Ok((s, b))
                    })
                    .collect()
            })
            .await?;
        let mode = acct.keys.lock().await?.trust_mode;
        let now = crate::storage::now();
        let mut devices = Vec::with_capacity(addrs.len());
        for (addr, (session, bundle)) in addrs.into_iter().zip(found) {
            let held = session.map(|(k, _)| k);
            // As `encrypt` decides: a new identity waiting for the user is not encrypted for
            // (whether or not the device is stale too).
            let pending = self
                .with_directory(acct.id, |d| d.pending_identity(&addr))?
                .filter(|p| held != Some(p.new));
            let stale = match (session, pending) {
                (Some((_, n)), None) => self.staleness(&acct, &addr, n, now)?,
                _ => None,
            };
            let (status, key) = match (held, bundle) {
                _ if pending.is_some() => (PlanStatus::IdentityChanged, held.or(bundle)),
                (Some(k), _) if stale.is_some() => (PlanStatus::Stale, Some(k)),
                (Some(k), _) => (PlanStatus::Session, Some(k)),
                (None, Some(k)) => (PlanStatus::Bundle, Some(k)),
                (None, None) => (PlanStatus::NoBundle, None),
            };
            let fingerprints = pending.map(|p| {
                let old = held.or(p.old).map(|k| fingerprint(&k));
                (old, Some(fingerprint(&p.new)))
            });
            let (old_fingerprint, new_fingerprint) = fingerprints.unwrap_or_default();
            // The level a first sight would get is reported, not stored.
            let trust = match key {
                Some(k) => Some(
                    self.trust_for_key(&acct, mode, &addr.jid, &k)?
                        .row
                        .level
                        .as_str()
                        .to_owned(),
                ),
                None => None,
            };
            let action = match status {
                PlanStatus::NoBundle => Some(Action::fetch_bundle(
                    &addr.jid,
                    addr.namespace,
                    addr.device_id,
                )),
                PlanStatus::Stale => super::hygiene::stale_action(&acct, &addr),
                PlanStatus::Session | PlanStatus::Bundle | PlanStatus::IdentityChanged => None,
            };
            if let Some(a) = &action {
                actions.push(a.clone());
            }
            devices.push(PlannedDevice {
                jid: addr.jid.clone(),
                device_id: addr.device_id,
                namespace: addr.namespace.namespace().to_owned(),
                status,
                trust,
                reason: stale.map(|s| s.reason()),
                action,
                old_fingerprint,
                new_fingerprint,
            });
        }
        Ok(EncryptPlan {
            // An offer to remove a stale device of ours is not something missing.
            ready: actions
                .iter()
                .all(|a| matches!(a, Action::OfferDeviceRemoval { .. })),
            devices,
            actions,
        })
    }
}
