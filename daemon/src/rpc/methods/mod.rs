//! The RPC methods, one file per domain. To add a method: implement
//! [`Method`](crate::rpc::registry::Method) in `methods/<domain>.rs` and add one
//! `registry.register::<YourMethod>()?` line below.
//!
//! - [`status`], [`discover`]: the daemon itself and its OpenRPC document.
//! - [`unlock`]: the passphrase of a locked daemon.
//! - [`subscription`]: `subscribe` / `unsubscribe`.
//! - [`account`]: accounts and fingerprints.
//! - [`bundle`]: bundles and device lists.
//! - [`encrypt`], [`plan`], [`decrypt`]: messages.
//! - [`trust`]: trust, devices, catch-up, identity changes.
//! - [`link`]: verification links.
//! - [`file`]: files of XEP-0454 media sharing, encrypted and decrypted in chunks.
//! - [`debug`]: test-only methods.
//! - [`params`]: param fragments shared by several methods.
//! - `convert`: the errors methods answer (the session manager's, per operation) as RPC error
//!   kinds; the OpenRPC `errors` of each method come from there.

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
pub mod file;
pub mod link;
pub mod params;
pub mod plan;
pub mod status;
pub mod subscription;
pub mod trust;
pub mod unlock;

/// Registers every production method, and the `debug.*` methods when `debug` is true.
pub fn register_all(registry: &mut Registry, debug: bool) -> Result<(), RegistryError> {
    registry.register::<status::Status>()?;
    registry.register::<discover::Discover>()?;
    registry.register::<unlock::Unlock>()?;
    registry.register::<subscription::Subscribe>()?;
    registry.register::<subscription::Unsubscribe>()?;
    registry.register::<account::AccountCreate>()?;
    registry.register::<account::AccountList>()?;
    registry.register::<account::AccountDelete>()?;
    registry.register::<account::FingerprintGet>()?;
    registry.register::<account::AccountRenewDeviceId>()?;
    registry.register::<account::AccountSetLabel>()?;
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
    registry.register::<link::LinkGet>()?;
    registry.register::<link::LinkVerify>()?;
    registry.register::<file::FileLinkParse>()?;
    registry.register::<file::FileEncryptBegin>()?;
    registry.register::<file::FileEncryptChunk>()?;
    registry.register::<file::FileEncryptFinish>()?;
    registry.register::<file::FileDecryptBegin>()?;
    registry.register::<file::FileDecryptCheck>()?;
    registry.register::<file::FileDecryptRead>()?;
    registry.register::<file::FileCancel>()?;
    if debug {
        registry.register::<debug::Sleep>()?;
        registry.register::<debug::Emit>()?;
        registry.register::<debug::KillAfterCommit>()?;
        registry.register::<debug::Clock>()?;
        registry.register::<debug::Maintenance>()?;
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

    /// The OpenRPC document of the production methods.
    fn document() -> serde_json::Value {
        let ctx = test_ctx();
        assert!(build(Arc::clone(&ctx), false).is_ok());
        ctx.openrpc.get().cloned().unwrap_or_default()
    }

    /// Each method's error kinds in the document.
    fn listed(doc: &serde_json::Value) -> Vec<(String, Vec<String>)> {
        let kinds = |m: &serde_json::Value| -> Vec<String> {
            let errors = m["errors"].as_array().cloned().unwrap_or_default();
            errors
                .iter()
                .map(|e| e["data"]["kind"].as_str().unwrap_or("").to_owned())
                .collect()
        };
        doc["methods"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| (m["name"].as_str().unwrap_or("").to_owned(), kinds(m)))
            .collect()
    }

    /// docs/rpc.md's table of the errors of every method, as the document gives them.
    fn errors_table(doc: &serde_json::Value) -> String {
        let mut t = String::from("| method | errors |\n|---|---|\n");
        for (name, kinds) in listed(doc) {
            let kinds: Vec<String> = kinds.iter().map(|k| format!("`{k}`")).collect();
            let kinds = if kinds.is_empty() {
                "—".to_owned()
            } else {
                kinds.join(", ")
            };
            t.push_str(&format!("| `{name}` | {kinds} |\n"));
        }
        t
    }

    #[test]
    fn the_listed_errors_are_those_of_each_methods_error_type() {
        use crate::rpc::error::{ErrorKind, MethodError};
        use crate::rpc::registry::method_errors;
        fn kinds<E: MethodError>() -> Vec<String> {
            method_errors::<E>()
                .iter()
                .map(|k| k.kind().to_owned())
                .collect()
        }
        let doc = document();
        let listed: std::collections::BTreeMap<String, Vec<String>> =
            listed(&doc).into_iter().collect();
        let of = |name: &str| listed.get(name).cloned().unwrap_or_default();
        // What issue 18 found missing: heartbeat returns more than account lookups.
        assert_eq!(
            of("heartbeat"),
            kinds::<crate::manager::encrypt::HeartbeatError>()
        );
        for k in [
            "no_bundle",
            "broken_session",
            "unknown_device",
            "storage_error",
        ] {
            assert!(
                of("heartbeat").iter().any(|l| l == k),
                "heartbeat lacks {k}"
            );
        }
        assert_eq!(
            of("decrypt"),
            kinds::<crate::manager::decrypt::DecryptError>()
        );
        // Issue 20's methods: each lists exactly its type's kinds, the new ones included.
        use crate::manager::{encrypt::EncryptError, plan::PlanError, trust::ListError};
        assert_eq!(of("encrypt"), kinds::<EncryptError>());
        assert_eq!(of("encrypt.plan"), kinds::<PlanError>());
        assert_eq!(of("devices.list"), kinds::<ListError>());
        assert_eq!(of("trust.list"), kinds::<ListError>());
        assert_eq!(
            of("devicelist.get"),
            kinds::<crate::manager::own_bundle::OwnDevicelistError>()
        );
        for (method, k) in [
            ("decrypt", "unknown_own_message"),
            ("decrypt", "sce_mismatch"),
            ("decrypt", "authentication_failed"),
            ("encrypt", "no_device_reached"),
            ("devices.list", "storage_error"),
            ("trust.list", "storage_error"),
        ] {
            assert!(of(method).iter().any(|l| l == k), "{method} lacks {k}");
        }
        assert_eq!(of("status"), Vec::<String>::new());
        // Every method that resolves an optional `account` can say it found none.
        for m in doc["methods"].as_array().into_iter().flatten() {
            let name = m["name"].as_str().unwrap_or("");
            if m["x-params-schema"]["properties"].get("account").is_some() {
                for k in ["unknown_account", "account_required"] {
                    assert!(of(name).iter().any(|l| l == k), "{name} lacks {k}");
                }
            }
            for k in of(name) {
                assert!(ErrorKind::ALL.iter().any(|e| e.kind() == k), "{name}: {k}");
            }
        }
    }

    #[test]
    fn docs_list_the_errors_of_every_method() {
        let table = errors_table(&document());
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/rpc.md");
        let md = std::fs::read_to_string(path).unwrap_or_default();
        let start = "<!-- errors per method: generated from the OpenRPC document -->\n";
        let section = md
            .split_once(start)
            .and_then(|(_, rest)| rest.split_once("<!-- end -->"))
            .map(|(table, _)| table);
        assert_eq!(
            section,
            Some(table.as_str()),
            "docs/rpc.md's errors per method differ from the OpenRPC document; the table is:\n{table}"
        );
    }

    /// A document's retry table (the one whose header starts `header`): each method (`encrypt`
    /// with and without `idempotency_key` apart) and whether it is safe to retry.
    fn retry_verdicts(file: &str, header: &str) -> std::collections::BTreeMap<String, String> {
        let path = format!("{}/../docs/{file}", env!("CARGO_MANIFEST_DIR"));
        let md = std::fs::read_to_string(&path).unwrap_or_default();
        let table = md
            .split_once(header)
            .map(|(_, rest)| rest.split("\n\n").next().unwrap_or_default())
            .unwrap_or_else(|| panic!("no table `{header}` in {file}"));
        let mut verdicts = std::collections::BTreeMap::new();
        for row in table.lines().skip(2) {
            let cells: Vec<&str> = row.trim_matches('|').split(" | ").map(str::trim).collect();
            let [calls, verdict, ..] = cells.as_slice() else {
                panic!("{file}: {row}")
            };
            // "`encrypt` without `idempotency_key`, `heartbeat`": items start with a backtick.
            let mut items: Vec<String> = Vec::new();
            for piece in calls.split(", ") {
                match items.last_mut() {
                    Some(last) if !piece.starts_with('`') => last.push_str(piece),
                    _ => items.push(piece.to_owned()),
                }
            }
            for item in items {
                let key = item.replace('`', "");
                let before = verdicts.insert(key.clone(), (*verdict).to_owned());
                assert!(before.is_none(), "{file}: {key} twice");
            }
        }
        verdicts
    }

    #[test]
    fn both_retry_tables_agree_and_name_every_method() {
        let rpc = retry_verdicts("rpc.md", "| method | safe to retry |");
        let clients = retry_verdicts("clients.md", "| calls | retry? |");
        assert_eq!(
            rpc, clients,
            "docs/rpc.md and docs/clients.md disagree on retries"
        );
        let doc = document();
        let methods: Vec<&str> = doc["methods"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["name"].as_str())
            .collect();
        for m in &methods {
            let rows: Vec<&String> = rpc
                .keys()
                .filter(|k| k.as_str() == *m || k.starts_with(&format!("{m} ")))
                .collect();
            assert!(!rows.is_empty(), "{m} is in no retry table");
        }
        for key in rpc.keys() {
            let method = key.split(' ').next().unwrap_or_default();
            assert!(methods.contains(&method), "{key}: no such method");
        }
        assert_eq!(rpc["subscribe"], "yes");
        assert_eq!(rpc["encrypt without idempotency_key"], "no");
        assert_eq!(rpc["heartbeat"], "yes");
    }

    /// `devicelist.update` answers a `fetch_bundle` per new device (e2e_shared checks it), and
    /// "the caller does" the actions: the guide must not tell clients to leave them undone.
    #[test]
    fn clients_md_has_the_fetch_bundle_actions_of_devicelist_update_done() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/clients.md");
        let md = std::fs::read_to_string(path).unwrap_or_default();
        let row = md
            .lines()
            .find(|l| l.starts_with("| `fetch_bundle "))
            .unwrap_or_else(|| panic!("no fetch_bundle row in the action table"));
        let from = row.split(" | ").nth(1).unwrap_or_default();
        for method in [
            "devicelist.update",
            "encrypt",
            "encrypt.plan",
            "identity.accept",
        ] {
            assert!(
                from.contains(&format!("`{method}`")),
                "{method} missing: {row}"
            );
        }
        assert!(
            !md.contains("not** fetch"),
            "clients.md says not to fetch bundles"
        );
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
