//! `decrypt`.

use std::sync::Arc;

use protocol_core::xml::Encrypted;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::manager::check_bare_jid;
use crate::manager::decrypt::{Conversation, DecryptError, DecryptOutcome};
use crate::rpc::ctx::{Conn, Ctx};
use crate::rpc::error::CallError;
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
    /// The stanza's bare `to`: our own bare JID in a 1:1 chat, the room's bare JID in a group
    /// chat. OMEMO 2: the SCE `<to>` must equal it (`sce_mismatch` otherwise). Left out: not
    /// checked (0.3 has no envelope; see docs/rpc.md for clients that cannot know it).
    #[serde(default)]
    pub to: Option<String>,
    /// A group chat message (`type='groupchat'`): OMEMO 2 messages must then carry `<to>`.
    #[serde(default)]
    pub group_chat: bool,
    /// When the stanza was sent, as an XEP-0082 DateTime: its XEP-0203 `<delay stamp>`, else
    /// when it arrived. OMEMO 2: an envelope `<time>` more than 15 minutes away from it is
    /// refused (`sce_mismatch`). Left out: not checked.
    #[serde(default)]
    pub sent_at: Option<String>,
}

impl Method for Decrypt {
    const NAME: &'static str = "decrypt";
    const SUMMARY: &'static str = "Decrypts an <encrypted> element: body, sender device and its trust, and follow-up actions.";
    type Params = DecryptParams;
    type Result = DecryptOutcome;
    type Error = DecryptError;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        p: DecryptParams,
    ) -> Result<DecryptOutcome, CallError<DecryptError>> {
        let element = match (p.xml, p.element) {
            (Some(xml), None) => {
                crate::bounds::parse_off_thread(xml.len(), move || Encrypted::from_xml(&xml))
                    .await
                    .ok_or_else(|| CallError::Internal("the XML parser failed".to_owned()))?
                    .map_err(DecryptError::Unreadable)?
            }
            (None, Some(e)) => e,
            _ => {
                return Err(CallError::InvalidParams(
                    "give exactly one of `xml` and `element`".to_owned(),
                ))
            }
        };
        // Normalised here so that sessions and trust are found whatever the spelling.
        let from = check_bare_jid(&p.from).map_err(DecryptError::from)?;
        let to =
            p.to.as_deref()
                .map(check_bare_jid)
                .transpose()
                .map_err(DecryptError::from)?;
        let sent_at = match p.sent_at.as_deref() {
            None => None,
            Some(t) => Some(protocol_core::datetime::parse(t).ok_or_else(|| {
                CallError::InvalidParams(format!("sent_at {t} is not an XEP-0082 DateTime"))
            })?),
        };
        let conv = Conversation {
            to,
            group_chat: p.group_chat,
            sent_at,
        };
        Ok(ctx
            .manager()?
            .decrypt(p.account.as_deref(), &from, element, &conv)
            .await?)
    }
}
