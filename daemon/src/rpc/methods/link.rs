//! `link.get`, `link.verify`: verification links (the QR codes of Conversations and Gajim).

use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;

use super::account::AccountParams;
use crate::manager::links::{LinkError, LinkVerified, OwnLink, OwnLinkError};
use crate::rpc::ctx::{Conn, Ctx};
use crate::rpc::error::CallError;
use crate::rpc::registry::Method;

/// `link.get`.
pub struct LinkGet;

impl Method for LinkGet {
    const NAME: &'static str = "link.get";
    const SUMMARY: &'static str = "Our verification link (xmpp:<jid>?omemo-sid-<id>=<key>;…, the form Conversations and Gajim scan), and our fingerprint as those clients display it.";
    const DESCRIPTION: &'static str = "Show it as a QR code (`omemod link` prints one) or send it: a contact \
        who scans it verifies our device, and our other devices we verified. One pair names our device \
        in both namespaces (one identity key, one fingerprint).";
    type Params = AccountParams;
    type Result = OwnLink;
    type Error = OwnLinkError;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        p: AccountParams,
    ) -> Result<OwnLink, CallError<OwnLinkError>> {
        Ok(ctx.manager()?.own_link(p.account.as_deref()).await?)
    }
}

/// `link.verify`.
pub struct LinkVerify;

/// Params of `link.verify`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkVerifyParams {
    /// Our bare JID; may be left out when the daemon has one account.
    #[serde(default)]
    pub account: Option<String>,
    /// The scanned link: `xmpp:<jid>?omemo-sid-<id>=<key>;…` in any client's form (Gajim's
    /// `?message;…`, Conversations' `https://conversations.im/i/…`).
    pub link: String,
}

impl Method for LinkVerify {
    const NAME: &'static str = "link.verify";
    const SUMMARY: &'static str = "Applies a scanned verification link: if every key it names is the key held for its device, each becomes trusted by the user; otherwise nothing changes.";
    const DESCRIPTION: &'static str = "All or nothing: a key that differs is `link_mismatch`, a device \
        not known yet (fetch the contact's device lists and bundles first) is `link_unknown_device`; \
        both report every key in `data.keys` and trust nothing.";
    type Params = LinkVerifyParams;
    type Result = LinkVerified;
    type Error = LinkError;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        p: LinkVerifyParams,
    ) -> Result<LinkVerified, CallError<LinkError>> {
        Ok(ctx
            .manager()?
            .verify_link(p.account.as_deref(), &p.link)
            .await?)
    }
}
