//! A tiny, bounded, namespace-resolving element tree over quick-xml.
//!
//! The OMEMO documents are small; reading them into a tree first keeps every schema check
//! a simple walk and makes the limits (size, depth) enforceable in one place.

use super::XmlError;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;
use std::ops::Range;

/// Deepest element nesting accepted (OMEMO documents use 4 levels).
const MAX_DEPTH: usize = 32;
/// Most attributes (namespace declarations included) on one element. OMEMO elements carry at
/// most four; the cap keeps quick-xml's duplicate-attribute check (quadratic in the count) cheap.
pub const MAX_ATTRIBUTES: usize = 64;

/// One element with resolved namespace.
#[derive(Debug, Clone)]
pub(crate) struct Element {
    /// Namespace URI (`None` when unbound).
    pub ns: Option<String>,
    /// Local name.
    pub name: String,
    /// Unprefixed attributes (namespace declarations and prefixed attributes are dropped),
    /// values unescaped.
    pub attrs: Vec<(String, String)>,
    /// Child elements in document order.
    pub children: Vec<Element>,
    /// Concatenated direct text and CDATA content, unescaped.
    pub text: String,
    /// Byte range of the raw inner XML in the source document.
    pub inner: Range<usize>,
}

impl Element {
    /// Whether this element has the given namespace and local name.
    pub fn is(&self, ns: &str, name: &str) -> bool {
        self.ns.as_deref() == Some(ns) && self.name == name
    }

    /// The value of an unprefixed attribute.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Children with the given namespace and local name.
    pub fn children_named<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.is(ns, name))
    }

    /// The single child with this name; `Ok(None)` if absent, error if repeated.
    pub fn unique_child(
        &self,
        ns: &str,
        name: &str,
        label: &'static str,
    ) -> Result<Option<&Element>, XmlError> {
        let mut found = None;
        for c in self.children.iter().filter(|c| c.is(ns, name)) {
            if found.is_some() {
                return Err(XmlError::DuplicateElement { element: label });
            }
            found = Some(c);
        }
        Ok(found)
    }

    /// The single required child with this name.
    pub fn required_child(
        &self,
        ns: &str,
        name: &str,
        label: &'static str,
    ) -> Result<&Element, XmlError> {
        self.unique_child(ns, name, label)?
            .ok_or(XmlError::MissingElement { element: label })
    }
}

fn syntax(reader: &NsReader<&[u8]>, reason: &'static str) -> XmlError {
    XmlError::Syntax {
        position: reader.error_position().max(reader.buffer_position()),
        reason,
    }
}

/// What kind of error quick-xml found, without its message: that quotes the document (names,
/// entity text), which in a decrypted SCE envelope is the plaintext.
pub(crate) fn describe(err: impl Into<quick_xml::Error>) -> &'static str {
    match err.into() {
        quick_xml::Error::Io(_) => "read error",
        quick_xml::Error::Syntax(_) => "syntax error",
        quick_xml::Error::IllFormed(_) => "ill-formed document",
        quick_xml::Error::InvalidAttr(_) => "invalid attribute",
        quick_xml::Error::Encoding(_) => "invalid encoding",
        quick_xml::Error::Escape(_) => "invalid character or entity reference",
        quick_xml::Error::Namespace(_) => "invalid namespace",
    }
}

fn pos(reader: &NsReader<&[u8]>) -> usize {
    usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX)
}

fn namespace(
    reader: &NsReader<&[u8]>,
    resolved: ResolveResult<'_>,
) -> Result<Option<String>, XmlError> {
    match resolved {
        ResolveResult::Unbound => Ok(None),
        ResolveResult::Bound(ns) => Ok(Some(String::from_utf8_lossy(ns.as_ref()).into_owned())),
        ResolveResult::Unknown(_) => Err(syntax(reader, "undeclared namespace prefix")),
    }
}

fn start_element(reader: &NsReader<&[u8]>, start: &BytesStart<'_>) -> Result<Element, XmlError> {
    let (resolved, _) = reader.resolve_element(start.name());
    let ns = namespace(reader, resolved)?;
    let name = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
    let mut attrs = Vec::new();
    for (i, attr) in start.attributes().enumerate() {
        if i >= MAX_ATTRIBUTES {
            return Err(XmlError::TooManyAttributes {
                max: MAX_ATTRIBUTES,
            });
        }
        let attr = attr.map_err(|e| syntax(reader, describe(e)))?;
        if attr.key.as_namespace_binding().is_some() || attr.key.prefix().is_some() {
            continue;
        }
        let key = String::from_utf8_lossy(attr.key.local_name().as_ref()).into_owned();
        let value = attr
            .unescape_value()
            .map_err(|e| syntax(reader, describe(e)))?
            .into_owned();
        attrs.push((key, value));
    }
    Ok(Element {
        ns,
        name,
        attrs,
        children: Vec::new(),
        text: String::new(),
        inner: 0..0,
    })
}

/// Parses `xml` into its root element. Rejects documents over `max_len` bytes, DTDs,
/// unbalanced tags, undeclared prefixes, more than one root and text outside the root.
pub(crate) fn parse(xml: &str, max_len: usize) -> Result<Element, XmlError> {
    if xml.len() > max_len {
        return Err(XmlError::TooLarge {
            len: xml.len(),
            max: max_len,
        });
    }
    let mut reader = NsReader::from_str(xml);
    {
        let config = reader.config_mut();
        config.expand_empty_elements = true;
        config.check_end_names = true;
        config.trim_text(false);
    }
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let before = pos(&reader);
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(e) => return Err(syntax(&reader, describe(e))),
        };
        match event {
            Event::Start(start) => {
                if root.is_some() {
                    return Err(syntax(&reader, "more than one root element"));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::TooDeep { max: MAX_DEPTH });
                }
                let mut element = start_element(&reader, &start)?;
                let after = pos(&reader);
                element.inner = after..after;
                stack.push(element);
            }
            Event::End(_) => {
                let mut element = stack
                    .pop()
                    .ok_or_else(|| syntax(&reader, "unexpected end tag"))?;
                element.inner.end = before.max(element.inner.start);
                match stack.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => root = Some(element),
                }
            }
            Event::Text(text) => {
                let text = text.unescape().map_err(|e| syntax(&reader, describe(e)))?;
                match stack.last_mut() {
                    Some(parent) => parent.text.push_str(&text),
                    None if text.trim().is_empty() => {}
                    None => return Err(syntax(&reader, "text outside the root element")),
                }
            }
            Event::CData(data) => {
                let data = data.decode().map_err(|e| syntax(&reader, describe(e)))?;
                match stack.last_mut() {
                    Some(parent) => parent.text.push_str(&data),
                    None => return Err(syntax(&reader, "CDATA outside the root element")),
                }
            }
            Event::DocType(_) => return Err(XmlError::Unsupported { what: "DTD" }),
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
            Event::Empty(_) => {
                // expand_empty_elements turns these into Start + End.
                return Err(syntax(&reader, "unexpected empty element event"));
            }
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(syntax(&reader, "unexpected end of document"));
    }
    root.ok_or(XmlError::MissingElement { element: "root" })
}
