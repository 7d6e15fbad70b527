//! `account.create`, `account.list`, `fingerprint.get`.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::manager::account::TrustMode;
use crate::rpc::ctx::{Conn, Ctx};
use crate::rpc::error::{ErrorKind, RpcError};
use crate::rpc::registry::{Method, NoParams};

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
    pub actions: Vec<crate::manager::Action>,
}

impl Method for AccountCreate {
    const NAME: &'static str = "account.create";
    const SUMMARY: &'static str =
        "Creates an account: a new OMEMO device (id, identity key, prekeys) for our bare JID.";
    const DESCRIPTION: &'static str =
        "Then do its `actions`: fetch our own published device lists and pass them to devicelist.update \
         (which says whether to publish ours: publish_devicelist), then publish the bundles (bundle.get).";
    const ERRORS: &'static [ErrorKind] = &[ErrorKind::AccountExists, ErrorKind::InvalidJid];
    type Params = AccountCreateParams;
    type Result = AccountInfo;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        p: AccountCreateParams,
    ) -> Result<AccountInfo, RpcError> {
        let mode = match p.trust_mode.as_deref() {
            None => TrustMode::Btbv,
            Some(m) => TrustMode::parse(m).ok_or_else(|| {
                RpcError::invalid_params("trust_mode must be btbv, tofu or manual")
            })?,
        };
        let m = ctx.manager()?;
        let a = m.create_account(&p.jid, mode).await?;
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

    async fn call(ctx: Arc<Ctx>, _conn: Conn, _p: NoParams) -> Result<Vec<AccountInfo>, RpcError> {
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
    const ERRORS: &'static [ErrorKind] = &[ErrorKind::UnknownAccount, ErrorKind::AccountRequired];
    type Params = AccountParams;
    type Result = AccountInfo;

    async fn call(ctx: Arc<Ctx>, _conn: Conn, p: AccountParams) -> Result<AccountInfo, RpcError> {
        let (jid, device_id, fingerprint) = ctx.manager()?.fingerprint(p.account.as_deref())?;
        Ok(AccountInfo {
            jid,
            device_id,
            fingerprint,
            actions: Vec::new(),
        })
    }
}
