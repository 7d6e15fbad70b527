//! XEP-0420 Stanza Content Encryption envelope, as profiled by OMEMO 2 (OMEMO.md §3.7).
//!
//! ```xml
//! <envelope xmlns='urn:xmpp:sce:1'>
//!   <content><body xmlns='jabber:client'>…</body></content>
//!   <rpad>…</rpad><time stamp='…'/><from jid='…'/><to jid='…'/>
//! </envelope>
//! ```

use crate::xml::tree;
use crate::xml::{escape_attr, escape_text, XmlError};
use rand_core::{CryptoRng, RngCore};

/// SCE namespace.
pub const SCE_NS: &str = "urn:xmpp:sce:1";
/// Namespace of the message `<body>` inside `<content>`.
pub const CLIENT_NS: &str = "jabber:client";
/// Largest envelope accepted by [`parse_envelope`].
pub const MAX_ENVELOPE_LEN: usize = 256 * 1024;
/// Longest random `<rpad>` produced by [`build_envelope`].
pub const MAX_RPAD_LEN: usize = 200;

/// Characters used for `<rpad>`: need no escaping, 64 of them so a byte maps without bias.
const RPAD_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Why an SCE envelope was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SceError {
    /// Not well-formed, too large, or not `<envelope xmlns='urn:xmpp:sce:1'>`.
    #[error("invalid envelope: {0}")]
    Xml(#[from] XmlError),
    /// The envelope has no `<content>` element.
    #[error("envelope has no <content>")]
    MissingContent,
    /// An affix or `<content>` element that may appear once appears more than once.
    #[error("envelope element <{element}> appears more than once")]
    DuplicateElement {
        /// Name of the element.
        element: &'static str,
    },
    /// An affix element lacks its attribute.
    #[error("envelope element <{element}> lacks attribute '{attribute}'")]
    MissingAttribute {
        /// Name of the element.
        element: &'static str,
        /// Name of the attribute.
        attribute: &'static str,
    },
}

/// Affix values for [`build_envelope`].
#[derive(Debug, Clone, Copy)]
pub struct EnvelopeOptions<'a> {
    /// Sender's bare JID (`<from jid>`).
    pub from: &'a str,
    /// Recipient bare JID (`<to jid>`); required in group chats.
    pub to: Option<&'a str>,
    /// XEP-0082 timestamp (`<time stamp>`).
    pub time: Option<&'a str>,
}

/// Builds the envelope around a plain-text body, with a random `<rpad>` of 0 … 200 characters.
pub fn build_envelope(
    body: &str,
    opts: &EnvelopeOptions<'_>,
    rng: &mut (impl RngCore + CryptoRng),
) -> String {
    // Multiply-shift maps a u32 onto 0..=200; the tiny bias is irrelevant for padding length.
    let range = (MAX_RPAD_LEN as u64) + 1;
    let len = ((u64::from(rng.next_u32()) * range) >> 32) as usize;
    let mut random = vec![0u8; len];
    rng.fill_bytes(&mut random);
    let rpad: String = random
        .iter()
        .map(|b| char::from(RPAD_ALPHABET[usize::from(b & 63)]))
        .collect();

    let mut out = String::with_capacity(body.len() + len + 200);
    out.push_str("<envelope xmlns='urn:xmpp:sce:1'><content><body xmlns='jabber:client'>");
    out.push_str(&escape_text(body));
    out.push_str("</body></content><rpad>");
    out.push_str(&rpad);
    out.push_str("</rpad>");
    if let Some(time) = opts.time {
        out.push_str("<time stamp='");
        out.push_str(&escape_attr(time));
        out.push_str("'/>");
    }
    out.push_str("<from jid='");
    out.push_str(&escape_attr(opts.from));
    out.push_str("'/>");
    if let Some(to) = opts.to {
        out.push_str("<to jid='");
        out.push_str(&escape_attr(to));
        out.push_str("'/>");
    }
    out.push_str("</envelope>");
    out
}

/// A parsed envelope. Affixes are returned unchecked: the caller compares `from`/`to` with the
/// stanza and judges `time`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Text of the first `<body>` in `<content>`, if any.
    pub body: Option<String>,
    /// Raw inner XML of `<content>`, as received.
    pub content_xml: String,
    /// `<from jid>`.
    pub from: Option<String>,
    /// `<to jid>`.
    pub to: Option<String>,
    /// `<time stamp>`.
    pub time: Option<String>,
}

fn affix(
    root: &tree::Element,
    element: &'static str,
    attribute: &'static str,
) -> Result<Option<String>, SceError> {
    let mut found = None;
    for e in root.children_named(SCE_NS, element) {
        if found.is_some() {
            return Err(SceError::DuplicateElement { element });
        }
        let value = e
            .attr(attribute)
            .ok_or(SceError::MissingAttribute { element, attribute })?;
        found = Some(value.to_owned());
    }
    Ok(found)
}

/// Parses a decrypted OMEMO 2 payload.
pub fn parse_envelope(xml: &str) -> Result<Envelope, SceError> {
    let root = tree::parse(xml, MAX_ENVELOPE_LEN)?;
    crate::xml::expect_root(&root, SCE_NS, "envelope")?;
    let mut contents = root.children_named(SCE_NS, "content");
    let content = contents.next().ok_or(SceError::MissingContent)?;
    if contents.next().is_some() {
        return Err(SceError::DuplicateElement { element: "content" });
    }
    // An unqualified <body> inherits the SCE namespace; accept it as well as jabber:client.
    let body = content
        .children
        .iter()
        .find(|c| c.name == "body" && matches!(c.ns.as_deref(), Some(CLIENT_NS) | Some(SCE_NS)))
        .map(|b| b.text.clone());
    let content_xml = xml
        .get(content.inner.clone())
        .unwrap_or_default()
        .to_owned();
    Ok(Envelope {
        body,
        content_xml,
        from: affix(&root, "from", "jid")?,
        to: affix(&root, "to", "jid")?,
        time: affix(&root, "time", "stamp")?,
    })
}
