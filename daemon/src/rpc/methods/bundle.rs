//! `bundle.get`, `bundle.update`, `devicelist.get`, `devicelist.update`.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;

use super::params::Namespace;
use crate::manager::devicelist::{DevicelistError, DevicelistUpdate};
use crate::manager::own_bundle::{OwnBundleError, OwnDevicelistError, Publication};
use crate::manager::peer_bundle::{BundleUpdate as BundleUpdated, BundleUpdateError};
use crate::rpc::ctx::{Conn, Ctx};
use crate::rpc::error::CallError;
use crate::rpc::registry::Method;

/// Params naming an account and a namespace.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnParams {
    /// Our bare JID; may be left out when the daemon has one account.
    #[serde(default)]
    pub account: Option<String>,
    /// Namespace.
    pub namespace: Namespace,
}

/// `bundle.get`.
pub struct BundleGet;

impl Method for BundleGet {
    const NAME: &'static str = "bundle.get";
    const SUMMARY: &'static str = "Our bundle in a namespace, with the PubSub node, item id and publish options to publish it with.";
    type Params = OwnParams;
    type Result = Publication;
    type Error = OwnBundleError;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        p: OwnParams,
    ) -> Result<Publication, CallError<OwnBundleError>> {
        Ok(ctx
            .manager()?
            .own_bundle(p.account.as_deref(), p.namespace.0)
            .await?)
    }
}

/// `devicelist.get`.
pub struct DevicelistGet;

/// Params of `devicelist.get`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicelistGetParams {
    /// Our bare JID; may be left out when the daemon has one account.
    #[serde(default)]
    pub account: Option<String>,
    /// Namespace.
    pub namespace: Namespace,
    /// Our own devices to leave out (the user chose to remove them, e.g. after an
    /// `offer_device_removal`); never this device.
    #[serde(default)]
    pub remove: Vec<u32>,
}

impl Method for DevicelistGet {
    const NAME: &'static str = "devicelist.get";
    const SUMMARY: &'static str = "Our device list in a namespace (as last received, with our device added, without the devices in `remove`), ready to publish.";
    type Params = DevicelistGetParams;
    type Result = Publication;
    type Error = OwnDevicelistError;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        p: DevicelistGetParams,
    ) -> Result<Publication, CallError<OwnDevicelistError>> {
        let manager = ctx.manager()?;
        let acct = manager
            .account(p.account.as_deref())
            .map_err(OwnDevicelistError::from)?;
        if p.remove.contains(&acct.device_id) {
            return Err(CallError::InvalidParams(format!(
                "`remove` names this very device ({}): it is always on its own list",
                acct.device_id
            )));
        }
        Ok(manager
            .own_devicelist(p.account.as_deref(), p.namespace.0, &p.remove)
            .await?)
    }
}

/// `bundle.update`.
pub struct BundleUpdate;

/// Params of `bundle.update`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleUpdateParams {
    /// Our bare JID; may be left out when the daemon has one account.
    #[serde(default)]
    pub account: Option<String>,
    /// Owner of the bundle.
    pub jid: String,
    /// Its device id.
    pub device_id: u32,
    /// Namespace it was fetched from.
    pub namespace: Namespace,
    /// The `<bundle>` element as fetched.
    pub xml: String,
}

impl Method for BundleUpdate {
    const NAME: &'static str = "bundle.update";
    const SUMMARY: &'static str =
        "Stores a bundle the client fetched (validated: keys and signed prekey signature).";
    type Params = BundleUpdateParams;
    type Result = BundleUpdated;
    type Error = BundleUpdateError;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        p: BundleUpdateParams,
    ) -> Result<BundleUpdated, CallError<BundleUpdateError>> {
        Ok(ctx
            .manager()?
            .update_bundle(
                p.account.as_deref(),
                &p.jid,
                p.namespace.0,
                p.device_id,
                &p.xml,
            )
            .await?)
    }
}

/// `devicelist.update`.
pub struct DevicelistUpdateMethod;

/// Params of `devicelist.update`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicelistUpdateParams {
    /// Our bare JID; may be left out when the daemon has one account.
    #[serde(default)]
    pub account: Option<String>,
    /// Whose list it is (ours included).
    pub jid: String,
    /// Namespace.
    pub namespace: Namespace,
    /// The `<list>` / `<devices>` element as received.
    pub xml: String,
}

impl Method for DevicelistUpdateMethod {
    const NAME: &'static str = "devicelist.update";
    const SUMMARY: &'static str = "Ingests a device list received from PEP; says when our own device is missing from our own list.";
    type Params = DevicelistUpdateParams;
    type Result = DevicelistUpdate;
    type Error = DevicelistError;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        p: DevicelistUpdateParams,
    ) -> Result<DevicelistUpdate, CallError<DevicelistError>> {
        Ok(ctx
            .manager()?
            .update_devicelist(p.account.as_deref(), &p.jid, p.namespace.0, &p.xml)
            .await?)
    }
}
