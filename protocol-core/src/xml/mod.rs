//! XML forms of both OMEMO versions: `<encrypted>` messages, bundles and device lists
//! (OMEMO.md §2.1, §3.1).
//!
//! Parsing goes through a bounded element tree with namespace resolution (default namespaces
//! and prefixes both work); serialization writes escaped XML with single-quoted attributes.
//! The structs also derive serde (bytes as standard base64 strings) for the daemon's JSON form.
//!
//! * [`encrypted`]: the `<encrypted>` message element.
//! * [`bundle`]: bundles of both versions.
//! * [`devicelist`]: device lists of both versions.
//! * `tree`: the bounded element tree every parser reads into.

pub mod bundle;
pub mod devicelist;
pub mod encrypted;
pub(crate) mod tree;

pub use tree::MAX_ATTRIBUTES;

pub use bundle::{bundle_from_xml, bundle_to_xml};
pub use devicelist::{devicelist_from_xml, devicelist_to_xml, DeviceListEntry};
pub use encrypted::{Encrypted, KeyElement};

use crate::error::ErrorCause;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;

/// Largest XML document accepted (256 KiB).
pub const MAX_XML_LEN: usize = 256 * 1024;
/// Most `<key>` elements in one `<encrypted>`, and most prekeys / devices in a bundle / list.
pub const MAX_KEYS: usize = 10_000;

/// Why an XML document was rejected. Messages name elements and attributes only; they never
/// contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum XmlError {
    /// The document exceeds the size limit.
    #[error("XML document of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Length of the document.
        len: usize,
        /// Largest accepted length.
        max: usize,
    },
    /// Elements are nested deeper than any OMEMO document needs.
    #[error("XML elements nested deeper than {max} levels")]
    TooDeep {
        /// Deepest accepted nesting.
        max: usize,
    },
    /// An element carries more attributes than any OMEMO element needs.
    #[error("XML element with more than {max} attributes")]
    TooManyAttributes {
        /// Most attributes accepted on one element.
        max: usize,
    },
    /// The document is not well-formed XML.
    #[error("malformed XML at byte {position}: {reason}")]
    Syntax {
        /// Byte offset where the problem was detected.
        position: u64,
        /// What kind of problem it is (never quoting the document).
        reason: &'static str,
    },
    /// The document uses an XML feature that is refused (e.g. a DTD).
    #[error("unsupported XML construct: {what}")]
    Unsupported {
        /// The refused construct.
        what: &'static str,
    },
    /// The root element has the wrong name.
    #[error("wrong root element <{found}> (expected <{expected}>)")]
    WrongRoot {
        /// Expected local name.
        expected: &'static str,
        /// Local name found (truncated).
        found: String,
    },
    /// The root element is in the wrong namespace.
    #[error(
        "root element in {} (expected {expected})",
        found.as_deref().map_or_else(|| "no namespace".to_owned(), |ns| format!("namespace {ns}"))
    )]
    WrongNamespace {
        /// Expected namespace(s).
        expected: &'static str,
        /// Namespace found (truncated), `None` if unbound.
        found: Option<String>,
    },
    /// A required element is absent.
    #[error("required element <{element}> is missing")]
    MissingElement {
        /// Name of the element.
        element: &'static str,
    },
    /// An element that may appear once appears more than once.
    #[error("element <{element}> appears more than once")]
    DuplicateElement {
        /// Name of the element.
        element: &'static str,
    },
    /// A required attribute is absent.
    #[error("element <{element}> lacks required attribute '{attribute}'")]
    MissingAttribute {
        /// Name of the element.
        element: &'static str,
        /// Name of the attribute.
        attribute: &'static str,
    },
    /// An attribute has an invalid value.
    #[error("attribute '{attribute}' of <{element}> is invalid: {reason}")]
    BadAttribute {
        /// Name of the element.
        element: &'static str,
        /// Name of the attribute.
        attribute: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A device / key id is not a decimal number in 1 … 2^31−1.
    #[error("id attribute '{attribute}' of <{element}> is invalid: {reason}")]
    BadId {
        /// Name of the element.
        element: &'static str,
        /// Name of the attribute.
        attribute: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The same id appears twice where ids must be unique.
    #[error("duplicate id {id} in <{element}>")]
    DuplicateId {
        /// Name of the element.
        element: &'static str,
        /// The repeated id.
        id: u32,
    },
    /// Element text is not valid standard base64.
    #[error("content of <{element}> is not valid base64")]
    BadBase64 {
        /// Name of the element (or attribute).
        element: &'static str,
    },
    /// A decoded key or signature has the wrong length.
    #[error("content of <{element}> has {len} bytes, expected {expected}")]
    BadKeyLength {
        /// Name of the element.
        element: &'static str,
        /// Length found.
        len: usize,
        /// Length required.
        expected: usize,
    },
    /// OMEMO 0.3: a public key does not start with the type byte 0x05.
    #[error("content of <{element}> has key type byte 0x{found:02x} (expected 0x05)")]
    BadKeyType {
        /// Name of the element.
        element: &'static str,
        /// Type byte found.
        found: u8,
    },
    /// More repeated elements than the limit allows.
    #[error("more than {max} <{element}> elements")]
    TooMany {
        /// Name of the element.
        element: &'static str,
        /// Largest accepted count.
        max: usize,
    },
}

impl XmlError {
    /// Whom the error is due to: a namespace we do not speak (another version, an unknown
    /// SCE version), else a malformed document.
    pub fn cause(&self) -> ErrorCause {
        match self {
            XmlError::WrongNamespace { .. } => ErrorCause::Incompatible,
            _ => ErrorCause::PeerMisbehaved,
        }
    }
}

/// Standard alphabet; padding optional on input (some senders strip it).
const B64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Standard base64 with padding, as every OMEMO implementation sends it.
pub(crate) fn encode_b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes base64 text, ignoring whitespace and line breaks anywhere in it.
pub(crate) fn decode_b64(text: &str, element: &'static str) -> Result<Vec<u8>, XmlError> {
    let bytes = text.as_bytes();
    // Senders rarely wrap base64; only then is a compacted copy needed.
    let decoded = if bytes.iter().any(u8::is_ascii_whitespace) {
        let compact: Vec<u8> = bytes
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        B64_LENIENT.decode(compact)
    } else {
        B64_LENIENT.decode(bytes)
    };
    decoded.map_err(|_| XmlError::BadBase64 { element })
}

/// Cuts untrusted names to a short, printable length before they go into an error.
pub(crate) fn truncate_for_error(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Checks root name and namespace.
pub(crate) fn expect_root(
    root: &tree::Element,
    ns: &'static str,
    name: &'static str,
) -> Result<(), XmlError> {
    if root.name != name {
        return Err(XmlError::WrongRoot {
            expected: name,
            found: truncate_for_error(&root.name),
        });
    }
    if root.ns.as_deref() != Some(ns) {
        return Err(XmlError::WrongNamespace {
            expected: ns,
            found: root.ns.as_deref().map(truncate_for_error),
        });
    }
    Ok(())
}

/// Parses a required device/key id attribute: decimal, 1 … 2^31−1.
pub(crate) fn parse_id(
    element: &tree::Element,
    label: &'static str,
    attribute: &'static str,
) -> Result<u32, XmlError> {
    let value = element
        .attr(attribute)
        .ok_or(XmlError::MissingAttribute {
            element: label,
            attribute,
        })?
        .trim();
    let bad = |reason| XmlError::BadId {
        element: label,
        attribute,
        reason,
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("not a decimal number"));
    }
    let id: u64 = value.parse().map_err(|_| bad("out of range"))?;
    if id == 0 {
        return Err(bad("zero"));
    }
    if id > u64::from(crate::consts::MAX_DEVICE_ID) {
        return Err(bad("out of range"));
    }
    u32::try_from(id).map_err(|_| bad("out of range"))
}

/// Parses an optional xs:boolean attribute (`true`/`1`/`false`/`0`), default `false`.
pub(crate) fn parse_bool(
    element: &tree::Element,
    label: &'static str,
    attribute: &'static str,
) -> Result<bool, XmlError> {
    match element.attr(attribute).map(str::trim) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(_) => Err(XmlError::BadAttribute {
            element: label,
            attribute,
            reason: "expected true, false, 1 or 0",
        }),
    }
}

/// Whether `c` may appear in an XML 1.0 document.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Escapes text content. Characters XML 1.0 cannot carry become U+FFFD; `\r` is written as a
/// character reference so parsers do not normalize it away.
pub(crate) fn escape_text(s: &str) -> String {
    escape(s, false)
}

/// Escapes an attribute value (both quote kinds; tab/newline kept via character references).
pub(crate) fn escape_attr(s: &str) -> String {
    escape(s, true)
}

fn escape(s: &str, attribute: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\r' => out.push_str("&#13;"),
            '\n' if attribute => out.push_str("&#10;"),
            '\t' if attribute => out.push_str("&#9;"),
            c if is_xml_char(c) => out.push(c),
            _ => out.push('\u{FFFD}'),
        }
    }
    out
}

/// serde helpers: bytes as standard base64 strings in the JSON form.
pub(crate) mod serde_b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(|_| serde::de::Error::custom("invalid base64"))
    }

    /// The same for `Option<Vec<u8>>` (`null` = absent).
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(bytes) => s.serialize_some(&STANDARD.encode(bytes)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
            let text: Option<String> = Option::deserialize(d)?;
            text.map(|t| {
                STANDARD
                    .decode(t.as_bytes())
                    .map_err(|_| serde::de::Error::custom("invalid base64"))
            })
            .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_with_and_without_whitespace() {
        let bytes: Vec<u8> = (0u8..=200).collect();
        let text = encode_b64(&bytes);
        assert_eq!(decode_b64(&text, "key").unwrap(), bytes);
        // Wrapped, indented, and with the padding stripped: the same bytes.
        let wrapped: String = text
            .trim_end_matches('=')
            .as_bytes()
            .chunks(20)
            .map(|c| format!("\n\t {}", std::str::from_utf8(c).unwrap()))
            .collect();
        assert_eq!(decode_b64(&wrapped, "key").unwrap(), bytes);
        for bad in ["a b c !", "ab\u{a0}cd", "abc*"] {
            assert_eq!(
                decode_b64(bad, "payload"),
                Err(XmlError::BadBase64 { element: "payload" })
            );
        }
    }
}
