//! `decrypt`.

use std::sync::Arc;

use protocol_core::xml::Encrypted;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::manager::decrypt::DecryptOutcome;
use crate::rpc::ctx::{Conn, Ctx};
use crate::rpc::error::{ErrorKind, RpcError};
use crate::rpc::registry::Method;

/// `decrypt`.
pub struct Decrypt;

/// Params of `decrypt`: the element as XML or in its structured JSON form (one of the two).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecryptParams {
    /// Our bare JID; may be left out when the daemon has one account.
    #[serde(default)]
    pub account: Option<String>,
    /// Sender's bare JID (for a group chat: the occupant's real JID).
    pub from: String,
    /// The `<encrypted>` element as XML.
    #[serde(default)]
    pub xml: Option<String>,
    /// The `<encrypted>` element as returned in `encrypt`'s `element`.
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub element: Option<Encrypted>,
}

impl Method for Decrypt {
    const NAME: &'static str = "decrypt";
    const SUMMARY: &'static str = "Decrypts an <encrypted> element: body, sender device and its trust, and follow-up actions.";
    const ERRORS: &'static [ErrorKind] = &[
        ErrorKind::UnknownAccount,
        ErrorKind::AccountRequired,
        ErrorKind::InvalidJid,
        ErrorKind::InvalidMessage,
        ErrorKind::NotForThisDevice,
        ErrorKind::DuplicateMessage,
        ErrorKind::NoSession,
        ErrorKind::AuthenticationFailed,
        ErrorKind::TooManySkipped,
        ErrorKind::BrokenSession,
        ErrorKind::Distrusted,
    ];
    type Params = DecryptParams;
    type Result = DecryptOutcome;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        p: DecryptParams,
    ) -> Result<DecryptOutcome, RpcError> {
        let element = match (p.xml, p.element) {
            (Some(xml), None) => Encrypted::from_xml(&xml).map_err(|e| {
                RpcError::new(
                    ErrorKind::InvalidMessage,
                    format!("invalid <encrypted>: {e}"),
                )
            })?,
            (None, Some(e)) => e,
            _ => {
                return Err(RpcError::invalid_params(
                    "give exactly one of `xml` and `element`",
                ))
            }
        };
        // Normalised here so that sessions and trust are found whatever the spelling.
        let from = crate::manager::check_bare_jid(&p.from)?;
        Ok(ctx
            .manager()?
            .decrypt(p.account.as_deref(), &from, element)
            .await?)
    }
}
