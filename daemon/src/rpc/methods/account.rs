//! `account.create`, `account.list`, `account.delete`, `fingerprint.get`,
//! `account.renew_device_id`, `account.set_label`.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::manager::account::{CreateAccountError, TrustMode};
use crate::manager::device_id::RenewDeviceIdError;
use crate::manager::labels::{LabelError, LabelSet};
use crate::manager::lifecycle::DeleteAccountError;
use crate::manager::AccountLookupError;
use crate::rpc::ctx::{Conn, Ctx};
use crate::rpc::error::CallError;
use crate::rpc::registry::{Method, NoParams};
use std::convert::Infallible;

/// `account.create`.
pub struct AccountCreate;

/// Params of `account.create`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountCreateParams {
    /// Our bare JID.
    pub jid: String,
    /// Trust policy for new keys: `btbv` (blind trust before verification, default), `tofu`, `manual`.
    #[serde(default)]
    pub trust_mode: Option<String>,
    /// Device ids the new device must not take: those on our own device lists (fetch them
    /// first), so two of our devices never share an id.
    #[serde(default)]
    pub avoid: Vec<u32>,
}

/// An account.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AccountInfo {
    /// Bare JID.
    pub jid: String,
    /// Our device id (both namespaces).
    pub device_id: u32,
    /// Our fingerprint.
    pub fingerprint: String,
    /// `account.create` only: what to do first — fetch our own published device lists and hand
    /// them to `devicelist.update` (before publishing ours, or the user's other devices are
    /// wiped from it), then publish our bundles.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<crate::events::Action>,
}

impl Method for AccountCreate {
    const NAME: &'static str = "account.create";
    const SUMMARY: &'static str =
        "Creates an account: a new OMEMO device (id, identity key, prekeys) for our bare JID.";
    const DESCRIPTION: &'static str =
        "Then do its `actions`: fetch our own published device lists and pass them to devicelist.update \
         (which says whether to publish ours: publish_devicelist), then publish the bundles (bundle.get).";
    type Params = AccountCreateParams;
    type Result = AccountInfo;
    type Error = CreateAccountError;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        p: AccountCreateParams,
    ) -> Result<AccountInfo, CallError<CreateAccountError>> {
        let mode = match p.trust_mode.as_deref() {
            None => TrustMode::Btbv,
            Some(m) => TrustMode::parse(m).ok_or_else(|| {
                CallError::InvalidParams("trust_mode must be btbv, tofu or manual".to_owned())
            })?,
        };
        let m = ctx.manager()?;
        let a = m.create_account(&p.jid, mode, &p.avoid).await?;
        Ok(AccountInfo {
            jid: a.jid.clone(),
            device_id: a.device_id,
            fingerprint: a.identity.fingerprint(),
            actions: m.first_actions(&a),
        })
    }
}

/// `account.list`.
pub struct AccountList;

impl Method for AccountList {
    const NAME: &'static str = "account.list";
    const SUMMARY: &'static str = "Every account of this daemon.";
    type Params = NoParams;
    type Result = Vec<AccountInfo>;
    type Error = Infallible;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        _p: NoParams,
    ) -> Result<Vec<AccountInfo>, CallError<Infallible>> {
        Ok(ctx
            .manager()?
            .accounts()
            .iter()
            .map(|a| AccountInfo {
                jid: a.jid.clone(),
                device_id: a.device_id,
                fingerprint: a.identity.fingerprint(),
                actions: Vec::new(),
            })
            .collect())
    }
}

/// `account.delete`.
pub struct AccountDelete;

/// Params of `account.delete`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountDeleteParams {
    /// The account's bare JID (required: a deletion never picks the only account by default).
    pub jid: String,
}

impl Method for AccountDelete {
    const NAME: &'static str = "account.delete";
    const SUMMARY: &'static str =
        "Deletes an account and every secret and row stored for it, for good.";
    const DESCRIPTION: &'static str = "Identity, prekeys, sessions, skipped message keys, device \
        lists, bundles and trust decisions go in one transaction; freed space is zeroed \
        (secure_delete) and the WAL is checkpointed and truncated. Peers keep encrypting to the \
        device until the client removes it from the published device lists.";
    type Params = AccountDeleteParams;
    type Result = crate::manager::lifecycle::DeletedAccount;
    type Error = DeleteAccountError;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        p: AccountDeleteParams,
    ) -> Result<crate::manager::lifecycle::DeletedAccount, CallError<DeleteAccountError>> {
        Ok(ctx.manager()?.delete_account(&p.jid).await?)
    }
}

/// `fingerprint.get`.
pub struct FingerprintGet;

/// Params naming an account (optional when there is only one).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountParams {
    /// Our bare JID; may be left out when the daemon has one account.
    #[serde(default)]
    pub account: Option<String>,
}

impl Method for FingerprintGet {
    const NAME: &'static str = "fingerprint.get";
    const SUMMARY: &'static str = "Our own fingerprint (the same in both namespaces).";
    type Params = AccountParams;
    type Result = AccountInfo;
    type Error = AccountLookupError;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        p: AccountParams,
    ) -> Result<AccountInfo, CallError<AccountLookupError>> {
        let a = ctx.manager()?.account(p.account.as_deref())?;
        Ok(AccountInfo {
            jid: a.jid.clone(),
            device_id: a.device_id,
            fingerprint: a.identity.fingerprint(),
            actions: Vec::new(),
        })
    }
}

/// `account.renew_device_id`.
pub struct AccountRenewDeviceId;

/// Params of `account.renew_device_id`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewDeviceIdParams {
    /// Our bare JID; may be left out when the daemon has one account.
    #[serde(default)]
    pub account: Option<String>,
    /// Device ids not to take besides those already on our device lists.
    #[serde(default)]
    pub avoid: Vec<u32>,
}

/// Result of `account.renew_device_id`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RenewedDeviceId {
    /// Bare JID.
    pub jid: String,
    /// The new device id.
    pub device_id: u32,
    /// Our fingerprint (unchanged).
    pub fingerprint: String,
    /// Publish both device lists and bundles now.
    pub actions: Vec<crate::events::Action>,
}

impl Method for AccountRenewDeviceId {
    const NAME: &'static str = "account.renew_device_id";
    const SUMMARY: &'static str = "Gives our device a new id (the way out when another of our devices has the same id); identity, sessions and trust stay.";
    type Params = RenewDeviceIdParams;
    type Result = RenewedDeviceId;
    type Error = RenewDeviceIdError;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        p: RenewDeviceIdParams,
    ) -> Result<RenewedDeviceId, CallError<RenewDeviceIdError>> {
        let renewed = ctx
            .manager()?
            .renew_device_id(p.account.as_deref(), &p.avoid)
            .await?;
        let a = renewed.account;
        Ok(RenewedDeviceId {
            jid: a.jid.clone(),
            device_id: a.device_id,
            fingerprint: a.identity.fingerprint(),
            actions: renewed.actions,
        })
    }
}

/// `account.set_label`.
pub struct AccountSetLabel;

/// Params of `account.set_label`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetLabelParams {
    /// Our bare JID; may be left out when the daemon has one account.
    #[serde(default)]
    pub account: Option<String>,
    /// The label (at most 53 Unicode code points, no control characters); `null` or `""`
    /// removes it.
    pub label: Option<String>,
}

impl Method for AccountSetLabel {
    const NAME: &'static str = "account.set_label";
    const SUMMARY: &'static str = "Names our device (\"Laptop\", \"Work phone\"): the label is signed with our identity key and published in the OMEMO 2 device list.";
    const DESCRIPTION: &'static str =
        "Then publish the OMEMO 2 device list (`devicelist.get`), as the \
        `publish_devicelist` action says. OMEMO 0.3 lists carry no labels.";
    type Params = SetLabelParams;
    type Result = LabelSet;
    type Error = LabelError;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        p: SetLabelParams,
    ) -> Result<LabelSet, CallError<LabelError>> {
        Ok(ctx
            .manager()?
            .set_label(p.account.as_deref(), p.label.as_deref())
            .await?)
    }
}
