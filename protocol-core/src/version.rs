//! The two OMEMO versions and the constants that tell them apart.

use serde::{Deserialize, Serialize};

/// An OMEMO version, named by its XML namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Version {
    /// OMEMO 0.3, `eu.siacs.conversations.axolotl` (libsignal v3 wire format).
    #[serde(rename = "eu.siacs.conversations.axolotl")]
    Oldmemo,
    /// OMEMO 2, `urn:xmpp:omemo:2`.
    #[serde(rename = "urn:xmpp:omemo:2")]
    Twomemo,
}

impl Version {
    /// Both versions, newest first.
    pub const ALL: [Version; 2] = [Version::Twomemo, Version::Oldmemo];

    /// The XML namespace of this version.
    pub const fn namespace(self) -> &'static str {
        match self {
            Version::Oldmemo => "eu.siacs.conversations.axolotl",
            Version::Twomemo => "urn:xmpp:omemo:2",
        }
    }

    /// Parses a namespace string.
    pub fn from_namespace(ns: &str) -> Option<Self> {
        match ns {
            "eu.siacs.conversations.axolotl" => Some(Version::Oldmemo),
            "urn:xmpp:omemo:2" => Some(Version::Twomemo),
            _ => None,
        }
    }

    /// HKDF info of X3DH.
    pub const fn x3dh_info(self) -> &'static [u8] {
        match self {
            Version::Oldmemo => b"WhisperText",
            Version::Twomemo => b"OMEMO X3DH",
        }
    }

    /// HKDF info of the root chain (KDF_RK).
    pub const fn root_chain_info(self) -> &'static [u8] {
        match self {
            Version::Oldmemo => b"WhisperRatchet",
            Version::Twomemo => b"OMEMO Root Chain",
        }
    }

    /// HKDF info turning a message key into cipher key, MAC key and IV.
    pub const fn message_key_info(self) -> &'static [u8] {
        match self {
            Version::Oldmemo => b"WhisperMessageKeys",
            Version::Twomemo => b"OMEMO Message Key Material",
        }
    }

    /// Length of the truncated HMAC that authenticates a ratchet message.
    pub const fn mac_len(self) -> usize {
        match self {
            Version::Oldmemo => 8,
            Version::Twomemo => 16,
        }
    }

    /// PEP node of the device list.
    pub const fn devicelist_node(self) -> &'static str {
        match self {
            Version::Oldmemo => "eu.siacs.conversations.axolotl.devicelist",
            Version::Twomemo => "urn:xmpp:omemo:2:devices",
        }
    }

    /// PEP node of the bundle of `device_id` and the item id to publish it under.
    pub fn bundle_node(self, device_id: u32) -> (String, String) {
        match self {
            Version::Oldmemo => (
                format!("eu.siacs.conversations.axolotl.bundles:{device_id}"),
                "current".to_owned(),
            ),
            Version::Twomemo => ("urn:xmpp:omemo:2:bundles".to_owned(), device_id.to_string()),
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.namespace())
    }
}
