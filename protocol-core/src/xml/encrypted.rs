//! The `<encrypted>` message element of both versions.
//!
//! ```text
//! 0.3:     <encrypted xmlns='eu.siacs.conversations.axolotl'>
//!            <header sid='…'><key rid='…' [prekey='true']>B64</key>… <iv>B64</iv></header>
//!            [<payload>B64</payload>]
//!          </encrypted>
//! OMEMO 2: <encrypted xmlns='urn:xmpp:omemo:2'>
//!            <header sid='…'><keys jid='…'><key rid='…' [kex='true']>B64</key>…</keys>…</header>
//!            [<payload>B64</payload>]
//!          </encrypted>
//! ```

use super::tree::{self, Element};
use super::{
    decode_b64, encode_b64, escape_attr, parse_bool, parse_id, truncate_for_error, XmlError,
    MAX_KEYS, MAX_XML_LEN,
};
use crate::Version;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// One `<key>` element: the ratchet message for one recipient device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyElement {
    /// OMEMO 2: bare JID of the enclosing `<keys jid>`; `None` in 0.3 (no JID on the wire).
    pub jid: Option<String>,
    /// Recipient device id.
    pub rid: u32,
    /// Key exchange (0.3 `prekey`, OMEMO 2 `kex`).
    pub kex: bool,
    /// Decoded content (PreKeySignalMessage / SignalMessage, or OMEMOKeyExchange /
    /// OMEMOAuthenticatedMessage).
    #[serde(with = "super::serde_b64")]
    pub data: Vec<u8>,
}

/// An `<encrypted>` element of either version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encrypted {
    /// Version, from the root namespace.
    pub version: Version,
    /// Sender device id.
    pub sid: u32,
    /// One entry per recipient device.
    pub keys: Vec<KeyElement>,
    /// 0.3 only: the payload IV (`None` in OMEMO 2; ignored there when serializing).
    #[serde(with = "super::serde_b64::option")]
    pub iv: Option<Vec<u8>>,
    /// The encrypted body; `None` for empty / KeyTransport messages.
    #[serde(with = "super::serde_b64::option")]
    pub payload: Option<Vec<u8>>,
}

const ENCRYPTED: &str = "encrypted";
const BOTH_NAMESPACES: &str = "eu.siacs.conversations.axolotl or urn:xmpp:omemo:2";

impl Encrypted {
    /// Serializes to XML. In OMEMO 2 keys are grouped into `<keys jid>` in order of first
    /// appearance; a key without a JID there is a caller error and lands in `<keys jid=''>`
    /// (which [`Encrypted::from_xml`] rejects). In 0.3 key JIDs are not transmitted.
    pub fn to_xml(&self) -> String {
        let ns = self.version.namespace();
        let mut out = format!("<encrypted xmlns='{ns}'><header sid='{}'>", self.sid);
        match self.version {
            Version::Oldmemo => {
                for key in &self.keys {
                    write_key(&mut out, key, "prekey");
                }
                if let Some(iv) = &self.iv {
                    out.push_str("<iv>");
                    out.push_str(&encode_b64(iv));
                    out.push_str("</iv>");
                }
            }
            Version::Twomemo => {
                let mut jids: Vec<Option<&str>> = Vec::new();
                for key in &self.keys {
                    let jid = key.jid.as_deref();
                    if !jids.contains(&jid) {
                        jids.push(jid);
                    }
                }
                for jid in jids {
                    out.push_str("<keys jid='");
                    out.push_str(&escape_attr(jid.unwrap_or("")));
                    out.push_str("'>");
                    for key in self.keys.iter().filter(|k| k.jid.as_deref() == jid) {
                        write_key(&mut out, key, "kex");
                    }
                    out.push_str("</keys>");
                }
            }
        }
        out.push_str("</header>");
        if let Some(payload) = &self.payload {
            out.push_str("<payload>");
            out.push_str(&encode_b64(payload));
            out.push_str("</payload>");
        }
        out.push_str("</encrypted>");
        out
    }

    /// Parses an `<encrypted>` element of either version (chosen by its namespace).
    pub fn from_xml(xml: &str) -> Result<Self, XmlError> {
        let root = tree::parse(xml, MAX_XML_LEN)?;
        if root.name != ENCRYPTED {
            return Err(XmlError::WrongRoot {
                expected: ENCRYPTED,
                found: truncate_for_error(&root.name),
            });
        }
        let version = root
            .ns
            .as_deref()
            .and_then(Version::from_namespace)
            .ok_or_else(|| XmlError::WrongNamespace {
                expected: BOTH_NAMESPACES,
                found: root.ns.as_deref().map(truncate_for_error),
            })?;
        let ns = version.namespace();
        let header = root.required_child(ns, "header", "header")?;
        let sid = parse_id(header, "header", "sid")?;
        let keys = match version {
            Version::Oldmemo => parse_oldmemo_keys(header, ns)?,
            Version::Twomemo => parse_twomemo_keys(header, ns)?,
        };
        let payload = root
            .unique_child(ns, "payload", "payload")?
            .map(|p| decode_b64(&p.text, "payload"))
            .transpose()?;
        let iv = match version {
            Version::Oldmemo => {
                let iv = header
                    .unique_child(ns, "iv", "iv")?
                    .map(|e| decode_b64(&e.text, "iv"))
                    .transpose()?;
                // A payload cannot be decrypted without its IV; KeyTransport may omit it.
                if payload.is_some() && iv.is_none() {
                    return Err(XmlError::MissingElement { element: "iv" });
                }
                iv
            }
            Version::Twomemo => None,
        };
        Ok(Encrypted {
            version,
            sid,
            keys,
            iv,
            payload,
        })
    }
}

fn write_key(out: &mut String, key: &KeyElement, kex_attr: &str) {
    out.push_str("<key rid='");
    out.push_str(&key.rid.to_string());
    out.push('\'');
    if key.kex {
        out.push(' ');
        out.push_str(kex_attr);
        out.push_str("='true'");
    }
    out.push('>');
    out.push_str(&encode_b64(&key.data));
    out.push_str("</key>");
}

fn parse_key(
    element: &Element,
    jid: Option<&str>,
    kex_attr: &'static str,
) -> Result<KeyElement, XmlError> {
    Ok(KeyElement {
        jid: jid.map(str::to_owned),
        rid: parse_id(element, "key", "rid")?,
        kex: parse_bool(element, "key", kex_attr)?,
        data: decode_b64(&element.text, "key")?,
    })
}

fn parse_oldmemo_keys(header: &Element, ns: &str) -> Result<Vec<KeyElement>, XmlError> {
    let elements: Vec<&Element> = header.children_named(ns, "key").collect();
    if elements.len() > MAX_KEYS {
        return Err(XmlError::TooMany {
            element: "key",
            max: MAX_KEYS,
        });
    }
    // Repeated rids are legal in 0.3: device ids of different JIDs may collide in a MUC.
    elements
        .into_iter()
        .map(|e| parse_key(e, None, "prekey"))
        .collect()
}

fn parse_twomemo_keys(header: &Element, ns: &str) -> Result<Vec<KeyElement>, XmlError> {
    let groups: Vec<&Element> = header.children_named(ns, "keys").collect();
    let total: usize = groups
        .iter()
        .map(|g| g.children_named(ns, "key").count())
        .sum();
    if total > MAX_KEYS {
        return Err(XmlError::TooMany {
            element: "key",
            max: MAX_KEYS,
        });
    }
    let mut seen: HashSet<(String, u32)> = HashSet::new();
    let mut keys = Vec::with_capacity(total);
    for group in groups {
        let jid = group.attr("jid").ok_or(XmlError::MissingAttribute {
            element: "keys",
            attribute: "jid",
        })?;
        let jid = jid.trim();
        if jid.is_empty() {
            return Err(XmlError::BadAttribute {
                element: "keys",
                attribute: "jid",
                reason: "empty",
            });
        }
        for element in group.children_named(ns, "key") {
            let key = parse_key(element, Some(jid), "kex")?;
            // Within one JID a device id names exactly one device.
            if !seen.insert((jid.to_owned(), key.rid)) {
                return Err(XmlError::DuplicateId {
                    element: "key",
                    id: key.rid,
                });
            }
            keys.push(key);
        }
    }
    Ok(keys)
}
