//! Message text in the clear: what OMEMO exists to protect, kept in a type that says so.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Message text in the clear (a body, an SCE envelope or its content). Wiped when dropped;
/// `Debug` shows its length only and there is no `Display`, so it reaches no log by accident.
/// Serializes as a plain string, so a JSON field keeps its form.
#[derive(Clone, Default, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Plaintext(String);

impl Plaintext {
    /// The text of UTF-8 `bytes` (decrypted payload); the error names a position only.
    pub fn from_utf8(bytes: &[u8]) -> Result<Self, std::str::Utf8Error> {
        std::str::from_utf8(bytes).map(Self::from)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for Plaintext {
    fn from(text: String) -> Self {
        Self(text)
    }
}

impl From<&str> for Plaintext {
    fn from(text: &str) -> Self {
        Self(text.to_owned())
    }
}

impl std::ops::Deref for Plaintext {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Plaintext {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Plaintext {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl std::fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self(text) = self;
        write!(f, "Plaintext({} bytes)", text.len())
    }
}

impl Serialize for Plaintext {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Plaintext {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_the_length_only() {
        let p = Plaintext::from("attack at dawn");
        assert_eq!(format!("{p:?}"), "Plaintext(14 bytes)");
        assert_eq!(
            format!("{:?}", Some(p.clone())),
            "Some(Plaintext(14 bytes))"
        );
        assert_eq!(p, "attack at dawn");
    }

    #[test]
    fn json_form_is_a_plain_string() {
        let p = Plaintext::from("é \"quoted\"\n");
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, serde_json::to_string("é \"quoted\"\n").unwrap());
        let back: Plaintext = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
        assert!(serde_json::from_str::<Plaintext>("7").is_err());
    }

    #[test]
    fn from_utf8_refuses_invalid_bytes() {
        assert_eq!(Plaintext::from_utf8(b"hi").unwrap(), "hi");
        let e = Plaintext::from_utf8(b"h\xffsecret").unwrap_err();
        assert!(!format!("{e} {e:?}").contains("secret"));
    }
}
