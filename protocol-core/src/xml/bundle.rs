//! Bundle XML of both versions (OMEMO.md §2.1 and §3.1).
//!
//! 0.3 keys are `0x05 ‖ u` on the wire and stored without the type byte; the 64-byte
//! signature is kept as-is (bit 7 of byte 63 may carry the Edwards sign bit). OMEMO 2 keys are
//! raw 32 bytes.

use super::tree::{self, Element};
use super::{decode_b64, encode_b64, expect_root, parse_id, XmlError, MAX_KEYS, MAX_XML_LEN};
use crate::bundle::{Bundle, PreKeyPublic};
use crate::Version;
use std::collections::HashSet;

/// Element and attribute names of one version's bundle schema.
struct Names {
    spk: &'static str,
    spk_id: &'static str,
    spks: &'static str,
    ik: &'static str,
    pk: &'static str,
    pk_id: &'static str,
    /// 0.3 prefixes keys with 0x05.
    typed_keys: bool,
}

const OLDMEMO: Names = Names {
    spk: "signedPreKeyPublic",
    spk_id: "signedPreKeyId",
    spks: "signedPreKeySignature",
    ik: "identityKey",
    pk: "preKeyPublic",
    pk_id: "preKeyId",
    typed_keys: true,
};

const TWOMEMO: Names = Names {
    spk: "spk",
    spk_id: "id",
    spks: "spks",
    ik: "ik",
    pk: "pk",
    pk_id: "id",
    typed_keys: false,
};

fn names(version: Version) -> &'static Names {
    match version {
        Version::Oldmemo => &OLDMEMO,
        Version::Twomemo => &TWOMEMO,
    }
}

fn key_b64(key: &[u8; 32], typed: bool) -> String {
    if typed {
        let mut v = Vec::with_capacity(33);
        v.push(crate::wire::oldmemo::KEY_TYPE_DJB);
        v.extend_from_slice(key);
        encode_b64(&v)
    } else {
        encode_b64(key)
    }
}

/// Serializes a bundle in the namespace of `bundle.version`.
pub fn bundle_to_xml(bundle: &Bundle) -> String {
    let n = names(bundle.version);
    let t = n.typed_keys;
    let mut out = format!("<bundle xmlns='{}'>", bundle.version.namespace());
    out.push_str(&format!(
        "<{spk} {id}='{}'>{}</{spk}>",
        bundle.signed_prekey_id,
        key_b64(&bundle.signed_prekey, t),
        spk = n.spk,
        id = n.spk_id
    ));
    out.push_str(&format!(
        "<{s}>{}</{s}>",
        encode_b64(&bundle.signed_prekey_signature),
        s = n.spks
    ));
    out.push_str(&format!(
        "<{ik}>{}</{ik}>",
        key_b64(&bundle.identity_key, t),
        ik = n.ik
    ));
    out.push_str("<prekeys>");
    for pk in &bundle.prekeys {
        out.push_str(&format!(
            "<{pk} {id}='{}'>{}</{pk}>",
            pk.id,
            key_b64(&pk.key, t),
            pk = n.pk,
            id = n.pk_id
        ));
    }
    out.push_str("</prekeys></bundle>");
    out
}

/// Decodes a public key: 0.3 requires `0x05 ‖ 32 bytes`, OMEMO 2 exactly 32 bytes.
fn parse_key(element: &Element, label: &'static str, typed: bool) -> Result<[u8; 32], XmlError> {
    let bytes = decode_b64(&element.text, label)?;
    let raw: &[u8] = if typed {
        if bytes.len() != 33 {
            return Err(XmlError::BadKeyLength {
                element: label,
                len: bytes.len(),
                expected: 33,
            });
        }
        match bytes.split_first() {
            Some((&crate::wire::oldmemo::KEY_TYPE_DJB, rest)) => rest,
            Some((&found, _)) => {
                return Err(XmlError::BadKeyType {
                    element: label,
                    found,
                })
            }
            None => &[],
        }
    } else {
        &bytes
    };
    raw.try_into().map_err(|_| XmlError::BadKeyLength {
        element: label,
        len: bytes.len(),
        expected: if typed { 33 } else { 32 },
    })
}

/// Parses a bundle of the given version (root `<bundle>` in that version's namespace).
pub fn bundle_from_xml(version: Version, xml: &str) -> Result<Bundle, XmlError> {
    let root = tree::parse(xml, MAX_XML_LEN)?;
    let ns = version.namespace();
    expect_root(&root, ns, "bundle")?;
    let n = names(version);
    let t = n.typed_keys;

    let spk = root.required_child(ns, n.spk, n.spk)?;
    let signed_prekey_id = parse_id(spk, n.spk, n.spk_id)?;
    let signed_prekey = parse_key(spk, n.spk, t)?;

    let spks = root.required_child(ns, n.spks, n.spks)?;
    let sig = decode_b64(&spks.text, n.spks)?;
    let signed_prekey_signature: [u8; 64] =
        sig.as_slice()
            .try_into()
            .map_err(|_| XmlError::BadKeyLength {
                element: n.spks,
                len: sig.len(),
                expected: 64,
            })?;

    let ik = root.required_child(ns, n.ik, n.ik)?;
    let identity_key = parse_key(ik, n.ik, t)?;

    let prekeys_el = root.required_child(ns, "prekeys", "prekeys")?;
    let pk_elements: Vec<&Element> = prekeys_el.children_named(ns, n.pk).collect();
    if pk_elements.len() > MAX_KEYS {
        return Err(XmlError::TooMany {
            element: n.pk,
            max: MAX_KEYS,
        });
    }
    let mut seen = HashSet::new();
    let mut prekeys = Vec::with_capacity(pk_elements.len());
    for e in pk_elements {
        let id = parse_id(e, n.pk, n.pk_id)?;
        if !seen.insert(id) {
            return Err(XmlError::DuplicateId { element: n.pk, id });
        }
        prekeys.push(PreKeyPublic {
            id,
            key: parse_key(e, n.pk, t)?,
        });
    }

    Ok(Bundle {
        version,
        identity_key,
        signed_prekey_id,
        signed_prekey,
        signed_prekey_signature,
        prekeys,
    })
}
