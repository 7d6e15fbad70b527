//! Identity pinning and the session rebuild rate limit.
//!
//! A remote device keeps the identity we hold for it — its session's, else its stored
//! bundle's, else one the user accepted — until the user accepts another with
//! `identity.accept`. A key exchange or a fetched bundle with another identity is refused
//! (key exchange) or set aside (bundle), and raises `identity_changed`; nothing else changes.
//!
//! Replacing an existing session (an incoming key exchange for a new session, or
//! `session.replace`) is limited per device to [`SESSION_REBUILD_LIMIT`] in
//! [`SESSION_REBUILD_WINDOW_SECS`], so neither a remote party nor a looping client can force
//! endless resets (each one also costs the peer a one-time prekey).

use super::account::Account;
use super::bundle_cache::{self, VerifiedBundle};
use super::error::{InvalidFingerprint, RateLimited};
use super::peer_bundle::StoredBundleError;
use super::sessions::SessionMeta;
use super::trust::parse_fingerprint;
use super::{
    check_bare_jid, AccountLookupError, ErrorCause, InvalidJid, KeyTrust, Manager, StorageError,
};
use crate::events::Action;
use crate::events::Event;
use crate::storage::trust::TrustRow;
use crate::storage::{
    self, bundles, device_state, sessions as session_store, trust as trust_store, DeviceAddr,
};
use protocol_core::keys::fingerprint;
use protocol_core::session::Session;
use protocol_core::Version;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

/// Session replacements allowed per device within [`SESSION_REBUILD_WINDOW_SECS`].
pub const SESSION_REBUILD_LIMIT: usize = 3;
/// The window of the rebuild rate limit (seconds).
pub const SESSION_REBUILD_WINDOW_SECS: i64 = 10 * 60;

/// Recent session replacements per device (in memory: a restart forgets them, which only a
/// local user can cause).
#[derive(Debug, Default)]
pub struct Rebuilds(Mutex<HashMap<DeviceAddr, VecDeque<i64>>>);

/// The identity a device is pinned to.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Pin {
    /// Curve25519 u; `None`: nothing held yet (first contact).
    pub identity: Option<[u8; 32]>,
    /// It is an identity the user accepted, with no session or bundle yet.
    pub accepted: bool,
}

/// Result of `identity.accept`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct IdentityAccepted {
    /// Fingerprint now pinned for the device.
    pub fingerprint: String,
    /// Trust level of that key (new keys go through the account's trust mode).
    pub trust: String,
    /// The old session was dropped: the next message to the device is a key exchange.
    pub session_dropped: bool,
    /// The bundle that carried the new identity (set aside by `bundle.update`) is now the
    /// device's bundle.
    pub bundle_installed: bool,
    /// Follow-ups (fetch the bundle when none with the new identity is known).
    pub actions: Vec<Action>,
}

/// Why `identity.accept` failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The owner is not a bare JID.
    #[error(transparent)]
    Jid(#[from] InvalidJid),
    /// No account to accept for.
    #[error(transparent)]
    Account(#[from] AccountLookupError),
    /// The fingerprint cannot be read.
    #[error(transparent)]
    Fingerprint(#[from] InvalidFingerprint),
    /// The bundle set aside with the new identity cannot be used.
    #[error(transparent)]
    SetAsideBundle(#[from] StoredBundleError),
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

impl IdentityError {
    /// Whom the error is due to.
    pub fn cause(&self) -> ErrorCause {
        match self {
            IdentityError::Jid(e) => e.cause(),
            IdentityError::Account(e) => e.cause(),
            IdentityError::Fingerprint(e) => e.cause(),
            IdentityError::SetAsideBundle(e) => e.cause(),
            IdentityError::Storage(e) => e.cause(),
        }
    }
}

/// A bundle set aside by `bundle.update` for carrying the identity now accepted.
struct SetAside {
    xml: String,
    bundle: VerifiedBundle,
}

impl IdentityAccepted {
    /// The answer for the key of `trust`, nothing else changed.
    fn unchanged(trust: &TrustRow) -> Self {
        Self {
            fingerprint: trust.fingerprint.clone(),
            trust: trust.level.as_str().to_owned(),
            session_dropped: false,
            bundle_installed: false,
            actions: Vec::new(),
        }
    }
}

impl Manager {
    /// The identity `addr` is pinned to; `session` is its current session, if any.
    pub(crate) async fn pinned_identity(
        &self,
        addr: &DeviceAddr,
        session: Option<&Session>,
    ) -> Result<Pin, StorageError> {
        if let Some(s) = session {
            return Ok(Pin {
                identity: Some(*s.remote_curve25519()),
                accepted: false,
            });
        }
        let a = addr.clone();
        let (bundle, change) = self
            .store
            .read(move |c| Ok((bundles::get(c, &a)?, device_state::identity_change(c, &a)?)))
            .await?;
        if let Some(b) = bundle {
            return Ok(Pin {
                identity: Some(b.identity_curve25519),
                accepted: false,
            });
        }
        Ok(match change.filter(|c| c.accepted_at.is_some()) {
            Some(c) => Pin {
                identity: Some(c.new_identity),
                accepted: true,
            },
            None => Pin::default(),
        })
    }

    /// Refuses a session replacement beyond the rate limit.
    pub(crate) fn check_rebuild_allowed(&self, addr: &DeviceAddr) -> Result<(), RateLimited> {
        let now = storage::now();
        let mut map = self
            .rebuilds
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(times) = map.get_mut(addr) else {
            return Ok(());
        };
        while times
            .front()
            .is_some_and(|t| now - t >= SESSION_REBUILD_WINDOW_SECS)
        {
            times.pop_front();
        }
        if times.len() >= SESSION_REBUILD_LIMIT {
            let retry_after = times.front().map_or(SESSION_REBUILD_WINDOW_SECS, |t| {
                SESSION_REBUILD_WINDOW_SECS - (now - t)
            });
            return Err(RateLimited {
                retry_after_secs: retry_after.max(1),
            });
        }
        Ok(())
    }

    /// Counts a session replacement (after it was committed).
    pub(crate) fn record_rebuild(&self, addr: &DeviceAddr) {
        let mut map = self
            .rebuilds
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let times = map.entry(addr.clone()).or_default();
        times.push_back(storage::now());
        while times.len() > SESSION_REBUILD_LIMIT {
            times.pop_front();
        }
    }

    /// `bundle.update` for a device pinned to another identity: the bundle is set aside until
    /// the user accepts it, and `identity_changed` is raised. Returns the old identity when
    /// that happened.
    pub(crate) async fn set_aside_changed_bundle(
        &self,
        addr: &DeviceAddr,
        account_jid: &str,
        new_identity: [u8; 32],
        bundle_xml: &str,
    ) -> Result<Option<[u8; 32]>, StorageError> {
        let slot = self.sessions.lock(&self.store, addr).await?;
        let pin = self.pinned_identity(addr, slot.session.as_ref()).await?;
        let Some(old) = pin.identity.filter(|k| *k != new_identity) else {
            return Ok(None);
        };
        let row = device_state::IdentityChangeRow {
            addr: addr.clone(),
            old_identity: Some(old),
            new_identity,
            bundle: Some(bundle_xml.as_bytes().to_vec()),
            seen_at: storage::now(),
            accepted_at: None,
        };
        self.store
            .write(move |tx| device_state::set_identity_change(tx, &row))
            .await?;
        self.mirror_directory(addr.account_id, |d| {
            d.set_pending_identity(addr, Some(old), new_identity)
        });
        drop(slot);
        tracing::warn!(account = account_jid, peer = %addr.jid, device = addr.device_id, ns = %addr.namespace, "bundle with a changed identity set aside");
        self.emit(Event::IdentityChanged {
            account: account_jid.to_owned(),
            cause: crate::events::Cause::BundleUpdate,
            peer: addr.jid.clone(),
            namespace: addr.namespace,
            device_id: addr.device_id,
            old_fingerprint: fingerprint(&old),
            new_fingerprint: fingerprint(&new_identity),
        });
        Ok(Some(old))
    }

    /// The user accepts `fp` as the new identity of a device: its old session, previous
    /// states and old bundle are dropped, and the device is pinned to the new identity. A
    /// bundle set aside with that identity becomes the device's bundle, so the next message
    /// to it is a key exchange.
    pub async fn identity_accept(
        &self,
        account: Option<&str>,
        jid: &str,
        namespace: Version,
        device_id: u32,
        fp: &str,
    ) -> Result<IdentityAccepted, IdentityError> {
        check_bare_jid(jid)?;
        let acct = self.account(account)?;
        let key = parse_fingerprint(fp)?;
        let addr = Self::addr(&acct, jid, namespace, device_id);
        let mut slot = self.sessions.lock(&self.store, &addr).await?;
        let pin = self.pinned_identity(&addr, slot.session.as_ref()).await?;
        let set_aside = self.set_aside_bundle(&addr, key).await?;
        let mode = acct.keys.lock().await?.trust_mode;
        let KeyTrust {
            row: trust,
            new: new_trust,
        } = self.trust_for_key(&acct, mode, jid, &key)?;
        if pin.identity == Some(key) {
            // The user keeps the identity held: a bundle set aside with another one goes.
            self.dismiss_pending_identity(&addr).await?;
            return Ok(IdentityAccepted::unchanged(&trust));
        }
        let bundle_installed = set_aside.is_some();
        let session_dropped = slot.session.is_some();
        // The device's bundle is replaced or dropped: the cache follows in commit order.
        let ticket = self.bundles.write_ticket();
        let pinned = Pinned {
            old: pin.identity,
            new: key,
            trust: new_trust.then(|| trust.clone()),
        };
        self.commit_accepted(&acct, &addr, pinned, set_aside.as_ref(), &ticket)
            .await?;
        self.mirror_directory(acct.id, |d| d.clear_pending_identity(&addr));
        if let Some(b) = set_aside {
            self.bundles.publish(&addr, b.bundle, &ticket);
        }
        drop(ticket);
        slot.session = None;
        slot.meta = SessionMeta::default();
        drop(slot);
        if new_trust {
            self.remember_trust(&acct, vec![trust.clone()], namespace, device_id);
        }
        tracing::info!(account = %acct.jid, peer = jid, device = device_id, ns = %namespace, "new identity accepted");
        Ok(IdentityAccepted {
            session_dropped,
            bundle_installed,
            actions: if bundle_installed {
                Vec::new()
            } else {
                vec![Action::fetch_bundle(jid, namespace, device_id)]
            },
            ..IdentityAccepted::unchanged(&trust)
        })
    }

    /// Forgets the identity change of `addr` that waits for the user, if any (the slot is
    /// locked by the caller).
    async fn dismiss_pending_identity(&self, addr: &DeviceAddr) -> Result<(), StorageError> {
        if self
            .with_directory(addr.account_id, |d| d.pending_identity(addr))?
            .is_none()
        {
            return Ok(());
        }
        let a = addr.clone();
        self.store
            .write(move |tx| device_state::delete_identity_change(tx, &a))
            .await?;
        self.mirror_directory(addr.account_id, |d| d.clear_pending_identity(addr));
        tracing::info!(peer = %addr.jid, device = addr.device_id, ns = %addr.namespace, "identity change dismissed: the identity held is kept");
        Ok(())
    }

    /// The bundle `bundle.update` set aside for `addr` if it carries `key`, parsed and verified.
    async fn set_aside_bundle(
        &self,
        addr: &DeviceAddr,
        key: [u8; 32],
    ) -> Result<Option<SetAside>, IdentityError> {
        let a = addr.clone();
        let change = self
            .store
            .read(move |c| device_state::identity_change(c, &a))
            .await?;
        let Some(bytes) = change.and_then(|c| c.bundle.filter(|_| c.new_identity == key)) else {
            return Ok(None);
        };
        let xml = String::from_utf8(bytes).map_err(|_| StoredBundleError::NotUtf8)?;
        let bundle = bundle_cache::parse(addr.namespace, &xml).map_err(StoredBundleError::from)?;
        Ok(Some(SetAside { xml, bundle }))
    }

    /// One transaction: the device's session and previous states go, and it is pinned to the
    /// new identity — through the set-aside bundle, which becomes its bundle, or else through
    /// an accepted identity change (an old bundle with another identity goes too).
    async fn commit_accepted(
        &self,
        acct: &Account,
        addr: &DeviceAddr,
        pinned: Pinned,
        set_aside: Option<&SetAside>,
        ticket: &super::bundle_cache::WriteTicket,
    ) -> Result<(), StorageError> {
        let now = storage::now();
        let bundle_row = set_aside.map(|b| bundles::BundleRow {
            account_id: acct.id,
            jid: addr.jid.clone(),
            namespace: addr.namespace,
            device_id: addr.device_id,
            identity_key: b.bundle.bundle().identity_key,
            identity_curve25519: *b.bundle.identity_curve25519(),
            bundle: b.xml.as_bytes().to_vec(),
            prekey_count: u32::try_from(b.bundle.bundle().prekeys.len()).unwrap_or(u32::MAX),
            fetched_at: now,
        });
        let a = addr.clone();
        let cache = ticket.invalidator();
        self.store
            .write(move |tx| {
                cache.invalidate(&a);
                session_store::delete(tx, &a)?;
                device_state::delete_previous_sessions(tx, &a)?;
                match &bundle_row {
                    Some(b) => {
                        bundles::upsert(tx, b)?;
                        device_state::delete_identity_change(tx, &a)?;
                    }
                    None => {
                        if bundles::get(tx, &a)?
                            .is_some_and(|b| b.identity_curve25519 != pinned.new)
                        {
                            bundles::delete(tx, &a)?;
                        }
                        device_state::set_identity_change(
                            tx,
                            &device_state::IdentityChangeRow {
                                addr: a.clone(),
                                old_identity: pinned.old,
                                new_identity: pinned.new,
                                bundle: None,
                                seen_at: now,
                                accepted_at: Some(now),
                            },
                        )?;
                    }
                }
                if let Some(t) = &pinned.trust {
                    trust_store::set(tx, t)?;
                }
                Ok(())
            })
            .await
    }
}

/// What `identity.accept` pins: the identity held before (if any), the accepted one, and its
/// trust row when the key is new.
struct Pinned {
    old: Option<[u8; 32]>,
    new: [u8; 32],
    trust: Option<TrustRow>,
}
