//! `rpc.discover`: the OpenRPC document describing every method.

use std::borrow::Cow;
use std::sync::Arc;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::Serialize;
use serde_json::Value;

use crate::rpc::ctx::{Conn, Ctx};
use crate::rpc::error::CallError;
use crate::rpc::registry::{Method, NoParams};
use std::convert::Infallible;

/// `rpc.discover`.
pub struct Discover;

/// An OpenRPC document, as JSON.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct OpenRpcDocument(pub Value);

impl JsonSchema for OpenRpcDocument {
    fn schema_name() -> Cow<'static, str> {
        "OpenRpcDocument".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({
            "type": "object",
            "description": "An OpenRPC 1.x document (https://spec.open-rpc.org).",
            "required": ["openrpc", "info", "methods"],
        })
    }
}

impl Method for Discover {
    const NAME: &'static str = "rpc.discover";
    const SUMMARY: &'static str =
        "The OpenRPC 1.x document of this daemon's methods, errors and notifications.";
    type Params = NoParams;
    type Result = OpenRpcDocument;
    type Error = Infallible;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        _params: NoParams,
    ) -> Result<OpenRpcDocument, CallError<Infallible>> {
        ctx.openrpc
            .get()
            .cloned()
            .map(OpenRpcDocument)
            .ok_or_else(|| CallError::Internal("OpenRPC document not built".to_owned()))
    }
}
