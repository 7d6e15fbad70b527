//! Device list XML: 0.3 `<list><device id/></list>`, OMEMO 2
//! `<devices><device id [label labelsig]/></devices>`.

use super::tree;
use super::{
    decode_b64, encode_b64, escape_attr, expect_root, parse_id, XmlError, MAX_KEYS, MAX_XML_LEN,
};
use crate::Version;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// One `<device>` of a device list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceListEntry {
    /// Device id (1 … 2^31−1).
    pub id: u32,
    /// OMEMO 2 only: human-readable label (must be verified against `labelsig` before use).
    pub label: Option<String>,
    /// OMEMO 2 only: Ed25519 signature of the identity key over the UTF-8 label.
    #[serde(with = "super::serde_b64::option")]
    pub labelsig: Option<Vec<u8>>,
}

fn root_name(version: Version) -> &'static str {
    match version {
        Version::Oldmemo => "list",
        Version::Twomemo => "devices",
    }
}

/// Serializes a device list; 0.3 drops labels (its schema has none).
pub fn devicelist_to_xml(version: Version, devices: &[DeviceListEntry]) -> String {
    let root = root_name(version);
    let mut out = format!("<{root} xmlns='{}'>", version.namespace());
    for d in devices {
        out.push_str(&format!("<device id='{}'", d.id));
        if version == Version::Twomemo {
            if let Some(label) = &d.label {
                out.push_str(&format!(" label='{}'", escape_attr(label)));
            }
            if let Some(sig) = &d.labelsig {
                out.push_str(&format!(" labelsig='{}'", encode_b64(sig)));
            }
        }
        out.push_str("/>");
    }
    out.push_str(&format!("</{root}>"));
    out
}

/// Parses a device list of the given version. Duplicate ids are rejected; 0.3 labels are
/// ignored. OMEMO 2 labels are returned unverified.
pub fn devicelist_from_xml(version: Version, xml: &str) -> Result<Vec<DeviceListEntry>, XmlError> {
    let root = tree::parse(xml, MAX_XML_LEN)?;
    let ns = version.namespace();
    expect_root(&root, ns, root_name(version))?;
    let elements: Vec<&tree::Element> = root.children_named(ns, "device").collect();
    if elements.len() > MAX_KEYS {
        return Err(XmlError::TooMany {
            element: "device",
            max: MAX_KEYS,
        });
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(elements.len());
    for e in elements {
        let id = parse_id(e, "device", "id")?;
        if !seen.insert(id) {
            return Err(XmlError::DuplicateId {
                element: "device",
                id,
            });
        }
        let (label, labelsig) = match version {
            Version::Oldmemo => (None, None),
            Version::Twomemo => (
                e.attr("label").map(str::to_owned),
                e.attr("labelsig")
                    .map(|s| decode_b64(s, "labelsig"))
                    .transpose()?,
            ),
        };
        out.push(DeviceListEntry {
            id,
            label,
            labelsig,
        });
    }
    Ok(out)
}
