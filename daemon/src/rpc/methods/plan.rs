//! `encrypt.plan`.

use std::sync::Arc;

use protocol_core::Version;
use schemars::JsonSchema;
use serde::Deserialize;

use super::params::Namespace;
use crate::manager::encrypt::EncryptRequest;
use crate::manager::plan::{EncryptPlan, PlanError};
use crate::rpc::ctx::{Conn, Ctx};
use crate::rpc::error::CallError;
use crate::rpc::registry::Method;

/// `encrypt.plan`.
pub struct EncryptPlanMethod;

/// Params of `encrypt.plan`: those of `encrypt` that choose the devices.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EncryptPlanParams {
    /// Our bare JID; may be left out when the daemon has one account.
    #[serde(default)]
    pub account: Option<String>,
    /// Recipient bare JIDs. Our own other devices are always included.
    pub to: Vec<String>,
    /// Namespaces in order of preference (default: OMEMO 2, then 0.3).
    #[serde(default)]
    pub namespaces: Option<Vec<Namespace>>,
    /// As in `encrypt`.
    #[serde(default)]
    pub all_namespaces: bool,
}

impl Method for EncryptPlanMethod {
    const NAME: &'static str = "encrypt.plan";
    const SUMMARY: &'static str = "Which devices an encrypt with these params would cover, which lack a session or bundle, and what to fetch first; changes nothing.";
    const DESCRIPTION: &'static str = "Read only: no ratchet moves, nothing is stored, no event is sent; safe to call any number of times.";
    type Params = EncryptPlanParams;
    type Result = EncryptPlan;
    type Error = PlanError;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        p: EncryptPlanParams,
    ) -> Result<EncryptPlan, CallError<PlanError>> {
        let req = EncryptRequest {
            to: p.to,
            body: None,
            namespaces: p
                .namespaces
                .map(|v| v.into_iter().map(|n| n.0).collect())
                .unwrap_or_else(|| Version::ALL.to_vec()),
            one_namespace_per_device: !p.all_namespaces,
            sce_to: None,
            idempotency_key: None,
            forms: Default::default(),
        };
        Ok(ctx
            .manager()?
            .encrypt_plan(p.account.as_deref(), &req)
            .await?)
    }
}
