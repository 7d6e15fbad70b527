//! `encrypt`, `heartbeat`, `session.replace`.

use std::sync::Arc;

use protocol_core::{Plaintext, Version};
use schemars::JsonSchema;
use serde::Deserialize;

use super::params::Namespace;
use crate::manager::encrypt::{
    EncryptError, EncryptOutcome, EncryptRequest, Forms, HeartbeatError, ReplaceSessionError,
};
use crate::rpc::ctx::{Conn, Ctx};
use crate::rpc::error::CallError;
use crate::rpc::registry::Method;

/// `encrypt`.
pub struct Encrypt;

/// Params of `encrypt`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EncryptParams {
    /// Our bare JID; may be left out when the daemon has one account.
    #[serde(default)]
    pub account: Option<String>,
    /// Recipient bare JIDs. Our own other devices are always included.
    pub to: Vec<String>,
    /// The message body. Left out: an empty (key transport) message.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub body: Option<Plaintext>,
    /// Namespaces in order of preference (default: OMEMO 2, then 0.3).
    #[serde(default)]
    pub namespaces: Option<Vec<Namespace>>,
    /// Encrypt a device in every namespace it is listed in, not only its preferred one.
    #[serde(default)]
    pub all_namespaces: bool,
    /// OMEMO 2 SCE `<to>`; defaults to the recipient when there is one. Required with a body
    /// and several recipients (set it to the room's bare JID in group chats).
    #[serde(default)]
    pub sce_to: Option<String>,
    /// A key of the client's choosing (1 to 256 bytes, unique per message): a retry with the
    /// same key and the same params returns the first answer (the same ciphertext) instead of
    /// encrypting again. Kept as long as redelivery data (`--redelivery-retention`).
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// The forms of each `<encrypted>` element to return: `xml`, `element` or both (the
    /// default). A client that uses one form halves the answer to a large fan-out.
    #[serde(default)]
    pub forms: Option<Vec<MessageForm>>,
}

/// A form of an `<encrypted>` element in `encrypt`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageForm {
    /// `messages[].xml`.
    Xml,
    /// `messages[].element`.
    Element,
}

impl MessageForm {
    /// The forms `forms` names (all without `forms`).
    fn named(forms: Option<&[MessageForm]>) -> Forms {
        forms.map_or_else(Forms::default, |f| Forms {
            xml: f.contains(&MessageForm::Xml),
            element: f.contains(&MessageForm::Element),
        })
    }
}

impl Method for Encrypt {
    const NAME: &'static str = "encrypt";
    const SUMMARY: &'static str = "Encrypts a body to every active device of some JIDs; one <encrypted> element per namespace, and a report per device.";
    const DESCRIPTION: &'static str = "Devices without a session and without a stored bundle are reported with status no_bundle and a fetch_bundle action; content is only encrypted for trusted devices.";
    type Params = EncryptParams;
    type Result = EncryptOutcome;
    type Error = EncryptError;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        p: EncryptParams,
    ) -> Result<EncryptOutcome, CallError<EncryptError>> {
        let namespaces = p
            .namespaces
            .map(|v| v.into_iter().map(|n| n.0).collect())
            .unwrap_or_else(|| Version::ALL.to_vec());
        if p.forms.as_ref().is_some_and(Vec::is_empty) {
            return Err(CallError::InvalidParams(
                "`forms` names no form: give `xml`, `element` or both".to_owned(),
            ));
        }
        let req = EncryptRequest {
            to: p.to,
            body: p.body,
            namespaces,
            one_namespace_per_device: !p.all_namespaces,
            sce_to: p.sce_to,
            idempotency_key: p.idempotency_key,
            forms: MessageForm::named(p.forms.as_deref()),
        };
        Ok(ctx.manager()?.encrypt(p.account.as_deref(), req).await?)
    }
}

/// Params naming one remote device.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceParams {
    /// Our bare JID; may be left out when the daemon has one account.
    #[serde(default)]
    pub account: Option<String>,
    /// Owner of the device.
    pub jid: String,
    /// Namespace.
    pub namespace: Namespace,
    /// Device id.
    pub device_id: u32,
}

/// `heartbeat`.
pub struct Heartbeat;

impl Method for Heartbeat {
    const NAME: &'static str = "heartbeat";
    const SUMMARY: &'static str = "An empty OMEMO message to one device (completes a new session, or forwards a long one-sided ratchet).";
    type Params = DeviceParams;
    type Result = EncryptOutcome;
    type Error = HeartbeatError;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        p: DeviceParams,
    ) -> Result<EncryptOutcome, CallError<HeartbeatError>> {
        Ok(ctx
            .manager()?
            .heartbeat(p.account.as_deref(), &p.jid, p.namespace.0, p.device_id)
            .await?)
    }
}

/// `session.replace`.
pub struct SessionReplace;

impl Method for SessionReplace {
    const NAME: &'static str = "session.replace";
    const SUMMARY: &'static str = "Replaces a broken session with a fresh key exchange from the stored bundle; returns the empty message that carries it.";
    type Params = DeviceParams;
    type Result = EncryptOutcome;
    type Error = ReplaceSessionError;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        p: DeviceParams,
    ) -> Result<EncryptOutcome, CallError<ReplaceSessionError>> {
        Ok(ctx
            .manager()?
            .replace_session(p.account.as_deref(), &p.jid, p.namespace.0, p.device_id)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_stays_a_string_and_out_of_debug() {
        let json = serde_json::json!({"to": ["b@x"], "body": "attack at dawn"});
        let p: EncryptParams = serde_json::from_value(json).unwrap();
        assert_eq!(p.body.as_deref(), Some("attack at dawn"));
        let debug = format!("{p:?}");
        assert!(!debug.contains("attack"), "{debug}");
        let schema = serde_json::to_value(schemars::schema_for!(EncryptParams)).unwrap();
        assert_eq!(
            schema["properties"]["body"]["type"],
            serde_json::json!(["string", "null"])
        );
        let req = EncryptRequest {
            to: p.to,
            body: p.body,
            namespaces: Version::ALL.to_vec(),
            one_namespace_per_device: true,
            sce_to: None,
            idempotency_key: None,
            forms: Forms::default(),
        };
        let debug = format!("{req:?}");
        assert!(!debug.contains("attack"), "{debug}");
    }
}
