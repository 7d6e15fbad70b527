//! XEP-0420 Stanza Content Encryption envelope (version 0.5), as profiled by OMEMO 2
//! (OMEMO.md §3.7).
//!
//! ```xml
//! <envelope xmlns='urn:xmpp:sce:1'>
//!   <content><body xmlns='jabber:client'>…</body></content>
//!   <rpad>…</rpad><time stamp='…'/><from jid='…'/><to jid='…'/>
//! </envelope>
//! ```
//!
//! What we write: the envelope padded to [`MIN_PADDED_LEN`] first, then 0 to [`MAX_RPAD_LEN`]
//! random characters on top; `<time>` in XEP-0082 form ([`crate::datetime`]). What we accept:
//! any `<rpad>` (longer ones too, as 0.5 demands) and the affixes in any order; elements that
//! only servers process (hints, stanza ids, addresses, EME) are dropped from `<content>`.

use crate::error::ErrorCause;
use crate::plaintext::Plaintext;
use crate::xml::tree;
use crate::xml::{escape_attr, escape_text, XmlError};
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;
use rand_core::{CryptoRng, RngCore};

/// SCE namespace.
pub const SCE_NS: &str = "urn:xmpp:sce:1";
/// Namespace of the message `<body>` inside `<content>`.
pub const CLIENT_NS: &str = "jabber:client";
/// Largest envelope accepted by [`parse_envelope`].
pub const MAX_ENVELOPE_LEN: usize = 256 * 1024;
/// Most random characters [`build_envelope`] adds to `<rpad>` on top of the padding to
/// [`MIN_PADDED_LEN`] (XEP-0420 0.5: "between 0 and 200").
pub const MAX_RPAD_LEN: usize = 200;
/// Bytes every envelope [`build_envelope`] writes is first padded to, so that short messages
/// (most chat lines) all have one length; XEP-0420 0.5 asks for a fixed minimum and leaves the
/// number open. 512 hides texts up to about 300 characters at a cost of at most 712 bytes.
pub const MIN_PADDED_LEN: usize = 512;

/// Namespaces of elements that only servers process: found inside `<content>` they are
/// dropped (XEP-0420 0.5 §receiving): XEP-0334 hints, XEP-0359 stanza ids, XEP-0033
/// addresses, XEP-0380 EME.
pub const SERVER_PROCESSED: [&str; 4] = [
    "urn:xmpp:hints",
    "urn:xmpp:sid:0",
    "http://jabber.org/protocol/address",
    "urn:xmpp:eme:0",
];

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

impl SceError {
    /// Whom the error is due to: the sender's envelope.
    pub fn cause(&self) -> ErrorCause {
        match self {
            SceError::Xml(e) => e.cause(),
            _ => ErrorCause::PeerMisbehaved,
        }
    }
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

/// Builds the envelope around a plain-text body: padded to [`MIN_PADDED_LEN`] bytes, then a
/// random 0 … [`MAX_RPAD_LEN`] characters more.
pub fn build_envelope(
    body: &str,
    opts: &EnvelopeOptions<'_>,
    rng: &mut (impl RngCore + CryptoRng),
) -> Plaintext {
    let mut head = String::with_capacity(body.len() + 100);
    head.push_str("<envelope xmlns='urn:xmpp:sce:1'><content><body xmlns='jabber:client'>");
    head.push_str(&escape_text(body));
    head.push_str("</body></content><rpad>");
    let mut tail = String::from("</rpad>");
    if let Some(time) = opts.time {
        tail.push_str("<time stamp='");
        tail.push_str(&escape_attr(time));
        tail.push_str("'/>");
    }
    tail.push_str("<from jid='");
    tail.push_str(&escape_attr(opts.from));
    tail.push_str("'/>");
    if let Some(to) = opts.to {
        tail.push_str("<to jid='");
        tail.push_str(&escape_attr(to));
        tail.push_str("'/>");
    }
    tail.push_str("</envelope>");

    // Multiply-shift maps a u32 onto 0..=200; the tiny bias is irrelevant for padding length.
    let range = (MAX_RPAD_LEN as u64) + 1;
    let random_len = ((u64::from(rng.next_u32()) * range) >> 32) as usize;
    let len = MIN_PADDED_LEN.saturating_sub(head.len() + tail.len()) + random_len;
    let mut random = vec![0u8; len];
    rng.fill_bytes(&mut random);

    let mut out = head;
    out.reserve(len + tail.len());
    out.extend(
        random
            .iter()
            .map(|b| char::from(RPAD_ALPHABET[usize::from(b & 63)])),
    );
    out.push_str(&tail);
    Plaintext::from(out)
}

/// A parsed envelope. Affixes are returned unchecked: the caller compares `from`/`to` with the
/// stanza and judges `time`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Text of the first `<body>` in `<content>`, if any.
    pub body: Option<Plaintext>,
    /// The children of `<content>` as standalone XML: every top-level element declares its
    /// namespace (`xmlns='…'`), element prefixes are resolved away, so it parses on its own.
    pub content_xml: Plaintext,
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
        .map(|b| Plaintext::from(b.text.as_str()));
    let content_xml = Plaintext::from(standalone_content(xml)?);
    Ok(Envelope {
        body,
        content_xml,
        from: affix(&root, "from", "jid")?,
        to: affix(&root, "to", "jid")?,
        time: affix(&root, "time", "stamp")?,
    })
}

/// Re-serializes the children of the envelope's first `<content>` so that they carry their own
/// namespace declarations: the sender may have declared prefixes (`xmlns:ns1='jabber:client'`)
/// on `<envelope>`, which a bare copy of the inner XML would lose. Text, CDATA and element order
/// are kept; comments and processing instructions are dropped.
fn standalone_content(xml: &str) -> Result<String, XmlError> {
    let mut reader = NsReader::from_str(xml);
    reader.config_mut().expand_empty_elements = true;
    let mut out = String::new();
    let mut depth = 0usize;
    // While inside <content>: the namespace each open output element is in.
    let mut open: Vec<Option<String>> = Vec::new();
    let mut inside = false;
    let mut done = false;
    // Inside a dropped (server-processed) element: the depth it started at.
    let mut dropped: Option<usize> = None;
    loop {
        let (resolved, event) = reader.read_resolved_event().map_err(syntax)?;
        let ns = uri(resolved);
        match event {
            Event::Start(start) => {
                depth += 1;
                if dropped.is_some() {
                    continue;
                }
                if inside {
                    if open.is_empty()
                        && ns.as_deref().is_some_and(|n| SERVER_PROCESSED.contains(&n))
                    {
                        dropped = Some(depth);
                        continue;
                    }
                    write_start(&mut out, &reader, &start, &ns, open.last())?;
                    open.push(ns);
                } else if depth == 2
                    && !done
                    && ns.as_deref() == Some(SCE_NS)
                    && start.local_name().as_ref() == b"content"
                {
                    inside = true;
                }
            }
            Event::End(end) => {
                depth = depth.saturating_sub(1);
                if let Some(d) = dropped {
                    if depth < d {
                        dropped = None;
                    }
                    continue;
                }
                if !inside {
                    continue;
                }
                if open.pop().is_none() {
                    inside = false; // </content>
                    done = true;
                    continue;
                }
                out.push_str("</");
                out.push_str(&String::from_utf8_lossy(end.local_name().as_ref()));
                out.push('>');
            }
            Event::Text(t) if inside && dropped.is_none() => {
                out.push_str(&escape_text(&t.unescape().map_err(syntax)?));
            }
            Event::CData(c) if inside && dropped.is_none() => {
                out.push_str(&escape_text(&c.decode().map_err(syntax)?));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(out)
}

/// Writes the start tag of an element inside `<content>`: its namespace declared unless its
/// parent's (`parent`, `None` at the top) is the same, and its attributes with theirs.
fn write_start(
    out: &mut String,
    reader: &NsReader<&[u8]>,
    start: &BytesStart<'_>,
    ns: &Option<String>,
    parent: Option<&Option<String>>,
) -> Result<(), XmlError> {
    out.push('<');
    out.push_str(&String::from_utf8_lossy(start.local_name().as_ref()));
    if parent != Some(ns) {
        match ns {
            Some(u) => {
                out.push_str(" xmlns='");
                out.push_str(&escape_attr(u));
                out.push('\'');
            }
            // Undeclare an inherited default namespace.
            None if parent.is_some_and(Option::is_some) => out.push_str(" xmlns=''"),
            None => {}
        }
    }
    let mut extra = 0;
    for attr in start.attributes() {
        let attr = attr.map_err(syntax)?;
        if attr.key.as_namespace_binding().is_some() {
            continue;
        }
        let value = attr.unescape_value().map_err(syntax)?;
        let local = String::from_utf8_lossy(attr.key.local_name().as_ref()).into_owned();
        match attr.key.prefix().map(|p| p.as_ref().to_vec()).as_deref() {
            None => out.push_str(&format!(" {local}='{}'", escape_attr(&value))),
            Some(b"xml") => out.push_str(&format!(" xml:{local}='{}'", escape_attr(&value))),
            Some(_) => {
                let (r, _) = reader.resolve_attribute(attr.key);
                let Some(u) = uri(r) else { continue };
                extra += 1;
                out.push_str(&format!(
                    " xmlns:a{extra}='{}' a{extra}:{local}='{}'",
                    escape_attr(&u),
                    escape_attr(&value)
                ));
            }
        }
    }
    out.push('>');
    Ok(())
}

fn uri(r: ResolveResult<'_>) -> Option<String> {
    match r {
        ResolveResult::Bound(ns) => Some(String::from_utf8_lossy(ns.as_ref()).into_owned()),
        _ => None,
    }
}

/// A syntax error in the envelope (the tree parse before found none, so no position is kept).
fn syntax(e: impl Into<quick_xml::Error>) -> XmlError {
    XmlError::Syntax {
        position: 0,
        reason: tree::describe(e),
    }
}
