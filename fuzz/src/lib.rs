//! Decoder entry points shared by the fuzz targets and by
//! `protocol-core/tests/fuzz_corpus.rs` (which includes this file with `#[path]`), so the
//! corpus replay test runs exactly what the fuzzer runs.
//!
//! Every function must return normally for any input; the only assertions are round-trip
//! properties that hold for every input the parser accepts.

use protocol_core::media::AesgcmLink;
use protocol_core::payload;
use protocol_core::wire::{oldmemo, twomemo};
use protocol_core::{sce, xml, Version};

/// A fuzz entry point.
pub type Target = fn(&[u8]);

/// Every target: (name = directory under `fuzz/corpus/`, entry point).
pub const TARGETS: &[(&str, Target)] = &[
    ("wire_oldmemo_signal", wire_oldmemo_signal),
    ("wire_oldmemo_prekey", wire_oldmemo_prekey),
    ("wire_twomemo_message", wire_twomemo_message),
    ("wire_twomemo_authenticated", wire_twomemo_authenticated),
    ("wire_twomemo_kex", wire_twomemo_kex),
    ("payload_oldmemo", payload_oldmemo),
    ("payload_twomemo", payload_twomemo),
    ("xml_encrypted", xml_encrypted),
    ("xml_bundle", xml_bundle),
    ("xml_devicelist", xml_devicelist),
    ("sce_envelope", sce_envelope),
    ("media_link", media_link),
];

/// The first byte selects the version (even = 0.3, odd = OMEMO 2); the rest is the document.
fn version_and_text(data: &[u8]) -> Option<(Version, &str)> {
    let (&selector, rest) = data.split_first()?;
    let version = if selector % 2 == 0 {
        Version::Oldmemo
    } else {
        Version::Twomemo
    };
    Some((version, std::str::from_utf8(rest).ok()?))
}

/// `parse_signal_message`; accepted messages must survive encode → parse unchanged.
pub fn wire_oldmemo_signal(data: &[u8]) {
    if let Ok(parsed) = oldmemo::parse_signal_message(data) {
        let again = oldmemo::parse_signal_message(&parsed.message.encode_with_mac(&parsed.mac));
        assert_eq!(again.map(|p| p.message).ok(), Some(parsed.message));
    }
}

/// `PreKeySignalMessage::parse`; accepted messages must survive encode → parse unchanged.
pub fn wire_oldmemo_prekey(data: &[u8]) {
    if let Ok(msg) = oldmemo::PreKeySignalMessage::parse(data) {
        assert_eq!(
            oldmemo::PreKeySignalMessage::parse(&msg.encode()).ok(),
            Some(msg)
        );
    }
}

/// `OMEMOMessage::parse` with round trip.
pub fn wire_twomemo_message(data: &[u8]) {
    if let Ok(msg) = twomemo::OMEMOMessage::parse(data) {
        assert_eq!(twomemo::OMEMOMessage::parse(&msg.encode()).ok(), Some(msg));
    }
}

/// `OMEMOAuthenticatedMessage::parse` with round trip.
pub fn wire_twomemo_authenticated(data: &[u8]) {
    if let Ok(msg) = twomemo::OMEMOAuthenticatedMessage::parse(data) {
        assert_eq!(
            twomemo::OMEMOAuthenticatedMessage::parse(&msg.encode()).ok(),
            Some(msg)
        );
    }
}

/// `OMEMOKeyExchange::parse` with round trip.
pub fn wire_twomemo_kex(data: &[u8]) {
    if let Ok(msg) = twomemo::OMEMOKeyExchange::parse(data) {
        assert_eq!(
            twomemo::OMEMOKeyExchange::parse(&msg.encode()).ok(),
            Some(msg)
        );
    }
}

/// 0.3 payload decryption. Layout: `[km_len, iv_len] ‖ km ‖ iv ‖ ciphertext`
/// (lengths taken modulo 64 / 32 so every split is reachable).
pub fn payload_oldmemo(data: &[u8]) {
    let Some((&[km_len, iv_len], rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let (km_len, iv_len) = (usize::from(km_len % 64), usize::from(iv_len % 32));
    if rest.len() < km_len + iv_len {
        return;
    }
    let (km, rest) = rest.split_at(km_len);
    let (iv, ciphertext) = rest.split_at(iv_len);
    let _ = payload::oldmemo::decrypt(km, iv, ciphertext);
}

/// OMEMO 2 payload decryption. Layout: `[km_len] ‖ km ‖ ciphertext` (km_len modulo 64).
pub fn payload_twomemo(data: &[u8]) {
    let Some((&km_len, rest)) = data.split_first() else {
        return;
    };
    let km_len = usize::from(km_len % 64);
    if rest.len() < km_len {
        return;
    }
    let (km, ciphertext) = rest.split_at(km_len);
    let _ = payload::twomemo::decrypt(km, ciphertext);
}

/// `Encrypted::from_xml`; accepted documents must re-serialize into an equivalent document.
pub fn xml_encrypted(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(enc) = xml::Encrypted::from_xml(text) {
        let again = xml::Encrypted::from_xml(&enc.to_xml());
        let again = again.ok();
        assert_eq!(again.as_ref().map(|a| a.sid), Some(enc.sid));
        assert_eq!(again.as_ref().map(|a| a.keys.len()), Some(enc.keys.len()));
        assert_eq!(again.as_ref().map(|a| &a.payload), Some(&enc.payload));
    }
}

/// `bundle_from_xml` (first byte picks the version) with exact round trip.
pub fn xml_bundle(data: &[u8]) {
    let Some((version, text)) = version_and_text(data) else {
        return;
    };
    if let Ok(bundle) = xml::bundle_from_xml(version, text) {
        assert_eq!(
            xml::bundle_from_xml(version, &xml::bundle_to_xml(&bundle)).ok(),
            Some(bundle)
        );
    }
}

/// `devicelist_from_xml` (first byte picks the version); ids must survive a round trip.
pub fn xml_devicelist(data: &[u8]) {
    let Some((version, text)) = version_and_text(data) else {
        return;
    };
    if let Ok(list) = xml::devicelist_from_xml(version, text) {
        let again = xml::devicelist_from_xml(version, &xml::devicelist_to_xml(version, &list));
        let ids = |l: &[xml::DeviceListEntry]| l.iter().map(|d| d.id).collect::<Vec<_>>();
        assert_eq!(again.ok().map(|l| ids(&l)), Some(ids(&list)));
    }
}

/// `parse_envelope`.
pub fn sce_envelope(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = sce::parse_envelope(text);
    }
}

/// An `aesgcm://` link (XEP-0454) as received in a message body: what it accepts, it writes back
/// in the form it reads again unchanged.
pub fn media_link(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(link) = AesgcmLink::parse(text) {
        let written = link.to_link();
        let again = AesgcmLink::parse(&written).map(|l| l.to_link());
        assert_eq!(again.as_deref().map(String::as_str), Ok(written.as_str()));
    }
}
