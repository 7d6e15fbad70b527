//! Maps session-manager errors onto the stable RPC error kinds.

use crate::manager::ManagerError;
use crate::rpc::error::{ErrorKind, RpcError};
use serde_json::json;

impl From<ManagerError> for RpcError {
    fn from(e: ManagerError) -> Self {
        let message = e.to_string();
        match e {
            ManagerError::UnknownAccount(_) => RpcError::new(ErrorKind::UnknownAccount, message),
            ManagerError::AccountExists(_) => RpcError::new(ErrorKind::AccountExists, message),
            ManagerError::AccountRequired(_) => RpcError::new(ErrorKind::AccountRequired, message),
            ManagerError::InvalidJid(_) => RpcError::new(ErrorKind::InvalidJid, message),
            ManagerError::UnknownDevice {
                jid,
                namespace,
                device_id,
            } => RpcError::new(ErrorKind::UnknownDevice, message).with_data(
                json!({"jid": jid, "namespace": namespace.namespace(), "device_id": device_id}),
            ),
            ManagerError::NoBundle {
                jid,
                namespace,
                device_id,
            } => {
                let (node, item_id) = namespace.bundle_node(device_id);
                RpcError::new(ErrorKind::NoBundle, message).with_data(json!({
                    "jid": jid, "namespace": namespace.namespace(), "device_id": device_id,
                    "node": node, "item_id": item_id,
                }))
            }
            ManagerError::InvalidBundle(_) => RpcError::new(ErrorKind::InvalidBundle, message),
            ManagerError::InvalidSignature(_) => {
                RpcError::new(ErrorKind::InvalidSignature, message)
            }
            ManagerError::InvalidMessage(_) => RpcError::new(ErrorKind::InvalidMessage, message),
            ManagerError::NotForThisDevice { recipients } => {
                RpcError::new(ErrorKind::NotForThisDevice, message)
                    .with_data(json!({"recipients": recipients}))
            }
            ManagerError::DuplicateMessage => RpcError::new(ErrorKind::DuplicateMessage, message),
            ManagerError::NoSession {
                jid,
                namespace,
                device_id,
            } => RpcError::new(ErrorKind::NoSession, message).with_data(
                json!({"jid": jid, "namespace": namespace.namespace(), "device_id": device_id}),
            ),
            ManagerError::AuthenticationFailed => {
                RpcError::new(ErrorKind::AuthenticationFailed, message)
            }
            ManagerError::TooManySkipped => RpcError::new(ErrorKind::TooManySkipped, message),
            ManagerError::BrokenSession(_) => RpcError::new(ErrorKind::BrokenSession, message),
            ManagerError::Untrusted => RpcError::new(ErrorKind::Untrusted, message),
            ManagerError::Distrusted => RpcError::new(ErrorKind::Distrusted, message),
            ManagerError::IdempotencyKeyReused(_) => {
                RpcError::new(ErrorKind::IdempotencyKeyReused, message)
            }
            ManagerError::IdentityChanged {
                jid,
                namespace,
                device_id,
                old_fingerprint,
                new_fingerprint,
            } => RpcError::new(ErrorKind::IdentityChanged, message).with_data(json!({
                "jid": jid, "namespace": namespace.namespace(), "device_id": device_id,
                "old_fingerprint": old_fingerprint, "new_fingerprint": new_fingerprint,
            })),
            ManagerError::RateLimited { retry_after_secs } => {
                RpcError::new(ErrorKind::RateLimited, message)
                    .with_data(json!({"retry_after_secs": retry_after_secs}))
            }
            ManagerError::SceMismatch(_) => RpcError::new(ErrorKind::SceMismatch, message),
            ManagerError::InvalidParams(_) => RpcError::invalid_params(message),
            ManagerError::TooManyDevices { count, max } => {
                RpcError::new(ErrorKind::TooManyDevices, message)
                    .with_data(json!({"count": count, "max": max}))
            }
            ManagerError::Storage(ref s) => {
                tracing::error!(error = %s, "storage failure");
                RpcError::new(ErrorKind::StorageError, message)
            }
        }
    }
}
