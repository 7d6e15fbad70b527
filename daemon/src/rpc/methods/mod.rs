//! The RPC methods, one file per domain. To add a method: implement
//! [`Method`](crate::rpc::registry::Method) in `methods/<domain>.rs` and add one
//! `registry.register::<YourMethod>()?` line below.
//!
//! - [`status`], [`discover`]: the daemon itself and its OpenRPC document.
//! - [`subscription`]: `subscribe` / `unsubscribe`.
//! - [`account`]: accounts and fingerprints.
//! - [`bundle`]: bundles and device lists.
//! - [`encrypt`], [`plan`], [`decrypt`]: messages.
//! - [`trust`]: trust, devices, catch-up, identity changes.
//! - [`debug`]: test-only methods.
//! - [`params`]: param fragments shared by several methods.
//! - `convert`: session-manager errors to RPC error kinds.

use std::sync::Arc;

use crate::rpc::ctx::Ctx;
use crate::rpc::registry::{MethodTable, Registry, RegistryError};

pub mod account;
pub mod bundle;
mod convert;
pub mod debug;
pub mod decrypt;
pub mod discover;
pub mod encrypt;
pub mod params;
pub mod plan;
pub mod status;
pub mod subscription;
pub mod trust;

/// Registers every production method, and the `debug.*` methods when `debug` is true.
pub fn register_all(registry: &mut Registry, debug: bool) -> Result<(), RegistryError> {
    registry.register::<status::Status>()?;
    registry.register::<discover::Discover>()?;
    registry.register::<subscription::Subscribe>()?;
    registry.register::<subscription::Unsubscribe>()?;
    registry.register::<account::AccountCreate>()?;
    registry.register::<account::AccountList>()?;
    registry.register::<account::AccountDelete>()?;
    registry.register::<account::FingerprintGet>()?;
    registry.register::<account::AccountRenewDeviceId>()?;
    registry.register::<bundle::BundleGet>()?;
    registry.register::<bundle::BundleUpdate>()?;
    registry.register::<bundle::DevicelistGet>()?;
    registry.register::<bundle::DevicelistUpdateMethod>()?;
    registry.register::<encrypt::Encrypt>()?;
    registry.register::<plan::EncryptPlanMethod>()?;
    registry.register::<encrypt::Heartbeat>()?;
    registry.register::<encrypt::SessionReplace>()?;
    registry.register::<decrypt::Decrypt>()?;
    registry.register::<trust::TrustList>()?;
    registry.register::<trust::TrustSet>()?;
    registry.register::<trust::DevicesList>()?;
    registry.register::<trust::CatchupBegin>()?;
    registry.register::<trust::CatchupEnd>()?;
    registry.register::<trust::IdentityAccept>()?;
    if debug {
        registry.register::<debug::Sleep>()?;
        registry.register::<debug::Emit>()?;
        registry.register::<debug::KillAfterCommit>()?;
    }
    Ok(())
}

/// Builds the method table and the OpenRPC document, and stores the document in `ctx`.
pub fn build(ctx: Arc<Ctx>, debug: bool) -> Result<MethodTable, RegistryError> {
    let mut registry = Registry::new(Arc::clone(&ctx));
    register_all(&mut registry, debug)?;
    let (table, doc) = registry.finish();
    let _ = ctx.openrpc.set(doc);
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::test_support::test_ctx;
    use std::collections::BTreeSet;

    #[test]
    fn every_registered_method_has_an_openrpc_entry() {
        for debug in [false, true] {
            let ctx = test_ctx();
            let module = build(Arc::clone(&ctx), debug).ok();
            let module = module.as_ref().map(|m| m.names().collect::<BTreeSet<_>>());
            let doc = ctx.openrpc.get().cloned().unwrap_or_default();
            let documented: BTreeSet<&str> = doc["methods"]
                .as_array()
                .map(|ms| ms.iter().filter_map(|m| m["name"].as_str()).collect())
                .unwrap_or_default();
            assert_eq!(module, Some(documented.clone()));
            assert!(documented.contains("rpc.discover"));
            assert_eq!(documented.contains("debug.sleep"), debug);
            for m in doc["methods"].as_array().into_iter().flatten() {
                assert!(m["summary"].as_str().is_some_and(|s| !s.is_empty()), "{m}");
                assert_eq!(m["x-params-schema"]["type"], "object", "{m}");
                assert!(m["result"]["schema"].is_object(), "{m}");
            }
        }
    }

    #[tokio::test]
    async fn status_can_be_called_without_a_connection() {
        let ctx = test_ctx();
        let module = build(ctx, false).ok();
        let Some(module) = module else {
            panic!("build failed")
        };
        let call = module.call("status", crate::rpc::ctx::Conn::detached(), None);
        let Some(call) = call else {
            panic!("no status method")
        };
        let v: serde_json::Value = call
            .await
            .ok()
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default();
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(v["clients"], 0);
    }
}
