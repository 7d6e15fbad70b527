//! `trust.list`, `trust.set`, `devices.list`, `catchup.begin`, `catchup.end`.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::account::AccountParams;
use super::params::Namespace;
use crate::events::Action;
use crate::manager::pinning::{IdentityAccepted, IdentityError};
use crate::manager::trust::{CatchupError, DeviceEntry, ListError, TrustEntry, TrustError};
use crate::rpc::ctx::{Conn, Ctx};
use crate::rpc::error::CallError;
use crate::rpc::registry::Method;
use crate::storage::trust::TrustLevel;

/// Params filtering by contact.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Our bare JID; may be left out when the daemon has one account.
    #[serde(default)]
    pub account: Option<String>,
    /// Only this contact.
    #[serde(default)]
    pub jid: Option<String>,
}

/// `trust.list`.
pub struct TrustList;

impl Method for TrustList {
    const NAME: &'static str = "trust.list";
    const SUMMARY: &'static str =
        "Trust decisions per (contact, identity key), with the devices that use each key.";
    type Params = ListParams;
    type Result = Vec<TrustEntry>;
    type Error = ListError;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        p: ListParams,
    ) -> Result<Vec<TrustEntry>, CallError<ListError>> {
        Ok(ctx
            .manager()?
            .trust_list(p.account.as_deref(), p.jid.as_deref())
            .await?)
    }
}

/// `trust.set`.
pub struct TrustSet;

/// Params of `trust.set`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustSetParams {
    /// Our bare JID; may be left out when the daemon has one account.
    #[serde(default)]
    pub account: Option<String>,
    /// Contact's bare JID.
    pub jid: String,
    /// The key's fingerprint (64 hex digits, spaces allowed; a leading `05` is accepted).
    pub fingerprint: String,
    /// `trusted`, `distrusted` or `undecided`.
    pub level: String,
}

impl Method for TrustSet {
    const NAME: &'static str = "trust.set";
    const SUMMARY: &'static str =
        "Records a manual trust decision about one identity key of a contact.";
    type Params = TrustSetParams;
    type Result = TrustEntry;
    type Error = TrustError;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        p: TrustSetParams,
    ) -> Result<TrustEntry, CallError<TrustError>> {
        let level = TrustLevel::parse(&p.level).ok_or_else(|| {
            CallError::InvalidParams("level must be trusted, distrusted or undecided".to_owned())
        })?;
        Ok(ctx
            .manager()?
            .trust_set(p.account.as_deref(), &p.jid, &p.fingerprint, level)
            .await?)
    }
}

/// `devices.list`.
pub struct DevicesList;

impl Method for DevicesList {
    const NAME: &'static str = "devices.list";
    const SUMMARY: &'static str = "Known devices (from device lists), active or not, with the fingerprint, trust and staleness of each.";
    type Params = ListParams;
    type Result = Vec<DeviceEntry>;
    type Error = ListError;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        p: ListParams,
    ) -> Result<Vec<DeviceEntry>, CallError<ListError>> {
        Ok(ctx
            .manager()?
            .devices_list(p.account.as_deref(), p.jid.as_deref())
            .await?)
    }
}

/// Result of the catch-up methods.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CatchupResult {
    /// Whether catch-up mode is now on.
    pub catchup: bool,
    /// Deferred follow-ups to do now (heartbeats).
    pub actions: Vec<Action>,
}

/// `catchup.begin`.
pub struct CatchupBegin;

impl Method for CatchupBegin {
    const NAME: &'static str = "catchup.begin";
    const SUMMARY: &'static str = "Enters catch-up mode while the client replays its archive: used prekeys are kept, heartbeats deferred.";
    type Params = AccountParams;
    type Result = CatchupResult;
    type Error = CatchupError;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        p: AccountParams,
    ) -> Result<CatchupResult, CallError<CatchupError>> {
        ctx.manager()?.catchup_begin(p.account.as_deref()).await?;
        Ok(CatchupResult {
            catchup: true,
            actions: Vec::new(),
        })
    }
}

/// `catchup.end`.
pub struct CatchupEnd;

impl Method for CatchupEnd {
    const NAME: &'static str = "catchup.end";
    const SUMMARY: &'static str = "Leaves catch-up mode: deletes prekeys used meanwhile and returns the deferred heartbeats (one per session).";
    type Params = AccountParams;
    type Result = CatchupResult;
    type Error = CatchupError;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        p: AccountParams,
    ) -> Result<CatchupResult, CallError<CatchupError>> {
        let actions = ctx.manager()?.catchup_end(p.account.as_deref()).await?;
        Ok(CatchupResult {
            catchup: false,
            actions,
        })
    }
}

/// `identity.accept`.
pub struct IdentityAccept;

/// Params of `identity.accept`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityAcceptParams {
    /// Our bare JID; may be left out when the daemon has one account.
    #[serde(default)]
    pub account: Option<String>,
    /// Owner of the device.
    pub jid: String,
    /// Namespace.
    pub namespace: Namespace,
    /// Device id.
    pub device_id: u32,
    /// The new identity's fingerprint (from the `identity_changed` event or error).
    pub fingerprint: String,
}

impl Method for IdentityAccept {
    const NAME: &'static str = "identity.accept";
    const SUMMARY: &'static str = "Accepts a new identity key for a device after identity_changed: drops the old session and pins the new key, which then goes through trust like any new key.";
    type Params = IdentityAcceptParams;
    type Result = IdentityAccepted;
    type Error = IdentityError;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        p: IdentityAcceptParams,
    ) -> Result<IdentityAccepted, CallError<IdentityError>> {
        Ok(ctx
            .manager()?
            .identity_accept(
                p.account.as_deref(),
                &p.jid,
                p.namespace.0,
                p.device_id,
                &p.fingerprint,
            )
            .await?)
    }
}
