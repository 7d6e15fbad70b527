//! The `aesgcm://` link of XEP-0454 ("The AESGCM URI scheme"): the file's HTTPS URL with the
//! scheme `aesgcm`, and as its fragment the IV then the 32-byte key, in hex.
//!
//! We write a 12-byte IV and lowercase hex, as the XEP and every client do; we read 12- and
//! 16-byte IVs (88 or 96 hex digits, either case), since Conversations wrote 16-byte IVs until
//! 2020 and Conversations, Dino and Gajim still read them.
//!
//! A link holds the file's key: neither its `Debug` form nor an error message shows it.

use rand_core::{CryptoRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::ErrorCause;

/// AES-256 key length.
pub const KEY_LEN: usize = 32;
/// The IV length we write.
pub const IV_LEN: usize = 12;
/// The IV length Conversations wrote before 2020, still accepted.
pub const LEGACY_IV_LEN: usize = 16;
/// The link's scheme.
pub const SCHEME: &str = "aesgcm";

/// Why a link, a key fragment or an upload URL was refused. Messages never contain the link.
/// Exhaustive, like every error omemod maps variant by variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AesgcmLinkError {
    /// The link's scheme is not `aesgcm`.
    #[error("the link's scheme is not aesgcm")]
    WrongScheme,
    /// Not an absolute URL with a host (`scheme://host/…`), or it contains blanks or control
    /// characters.
    #[error("the link is not an absolute URL with a host")]
    Malformed,
    /// The link has no `#` fragment, so no key.
    #[error("the link carries no key (no #fragment)")]
    NoKey,
    /// The fragment is neither 88 (12-byte IV) nor 96 (16-byte IV) characters long.
    #[error("the key fragment has {len} characters; expected 88 (12-byte IV) or 96 (16-byte IV)")]
    KeyLength {
        /// Characters found.
        len: usize,
    },
    /// The fragment is not hexadecimal.
    #[error("the key fragment is not hexadecimal")]
    NotHex,
    /// An upload URL that is not `https://`: XEP-0454 turns only HTTPS URLs into links.
    #[error("only an https:// URL becomes an aesgcm link (XEP-0454)")]
    NotHttps,
    /// An upload URL that already has a fragment.
    #[error("the upload URL already has a #fragment")]
    UrlHasFragment,
}

impl AesgcmLinkError {
    /// Whom the error is due to: a received link is the sender's; an upload URL is the caller's.
    pub fn cause(&self) -> ErrorCause {
        match self {
            AesgcmLinkError::WrongScheme
            | AesgcmLinkError::Malformed
            | AesgcmLinkError::NoKey
            | AesgcmLinkError::KeyLength { .. }
            | AesgcmLinkError::NotHex => ErrorCause::PeerMisbehaved,
            AesgcmLinkError::NotHttps | AesgcmLinkError::UrlHasFragment => ErrorCause::Request,
        }
    }
}

/// The key and IV of one file. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MediaKey {
    key: [u8; KEY_LEN],
    iv: [u8; LEGACY_IV_LEN],
    iv_len: usize,
}

impl std::fmt::Debug for MediaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            key: _,
            iv: _,
            iv_len,
        } = self;
        f.debug_struct("MediaKey")
            .field("iv_len", iv_len)
            .finish_non_exhaustive()
    }
}

impl MediaKey {
    /// A fresh random key with a 12-byte IV.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> MediaKey {
        let mut k = MediaKey {
            key: [0; KEY_LEN],
            iv: [0; LEGACY_IV_LEN],
            iv_len: IV_LEN,
        };
        rng.fill_bytes(&mut k.key);
        rng.fill_bytes(&mut k.iv[..IV_LEN]);
        k
    }

    /// A key from its parts; the IV must be 12 or 16 bytes.
    pub fn from_parts(key: &[u8; KEY_LEN], iv: &[u8]) -> Result<MediaKey, AesgcmLinkError> {
        if iv.len() != IV_LEN && iv.len() != LEGACY_IV_LEN {
            return Err(AesgcmLinkError::KeyLength {
                len: 2 * (iv.len() + KEY_LEN),
            });
        }
        let mut k = MediaKey {
            key: *key,
            iv: [0; LEGACY_IV_LEN],
            iv_len: iv.len(),
        };
        k.iv[..iv.len()].copy_from_slice(iv);
        Ok(k)
    }

    /// Reads a link's fragment: the IV then the key, 88 or 96 hex digits in either case.
    pub fn from_fragment(fragment: &str) -> Result<MediaKey, AesgcmLinkError> {
        let len = fragment.len();
        let iv_len = match len.checked_sub(2 * KEY_LEN) {
            Some(n) if n == 2 * IV_LEN || n == 2 * LEGACY_IV_LEN => n / 2,
            _ => return Err(AesgcmLinkError::KeyLength { len }),
        };
        let mut bytes = Zeroizing::new([0u8; LEGACY_IV_LEN + KEY_LEN]);
        let bytes = &mut bytes[..iv_len + KEY_LEN];
        for (out, pair) in bytes.iter_mut().zip(fragment.as_bytes().chunks_exact(2)) {
            let (hi, lo) = (hex_value(pair[0]), hex_value(pair[1]));
            *out = (hi.ok_or(AesgcmLinkError::NotHex)? << 4) | lo.ok_or(AesgcmLinkError::NotHex)?;
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(&bytes[iv_len..]);
        MediaKey::from_parts(&key, &bytes[..iv_len])
    }

    /// The link's fragment: the IV then the key, lowercase hex.
    pub fn fragment(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(2 * (self.iv_len + KEY_LEN)));
        for b in self.iv().iter().chain(&self.key) {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        s
    }

    /// The IV: 12 bytes, or 16 for a legacy link.
    pub fn iv(&self) -> &[u8] {
        &self.iv[..self.iv_len]
    }

    /// The AES-256 key.
    pub(crate) fn key(&self) -> &[u8; KEY_LEN] {
        &self.key
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// An `aesgcm://` link: where the encrypted file is, and its key.
pub struct AesgcmLink {
    /// Everything between `scheme://` and `#`: host, path and query.
    location: String,
    key: MediaKey,
}

impl std::fmt::Debug for AesgcmLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The location can identify the file; the key decrypts it. Neither is shown.
        f.debug_struct("AesgcmLink")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Splits `scheme://location` after checking that it has no blank or control character and a
/// non-empty host; the scheme is compared without case (RFC 3986 §3.1).
fn split_url<'a>(url: &'a str, scheme: &str) -> Result<Option<&'a str>, AesgcmLinkError> {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(AesgcmLinkError::Malformed);
    }
    let Some((found, rest)) = url.split_once(':') else {
        return Err(AesgcmLinkError::Malformed);
    };
    let location = rest.strip_prefix("//").ok_or(AesgcmLinkError::Malformed)?;
    let host_end = location.find(['/', '?', '#']).unwrap_or(location.len());
    if found.is_empty() || host_end == 0 {
        return Err(AesgcmLinkError::Malformed);
    }
    Ok(found.eq_ignore_ascii_case(scheme).then_some(location))
}

impl AesgcmLink {
    /// Reads a link received in a message body.
    pub fn parse(link: &str) -> Result<AesgcmLink, AesgcmLinkError> {
        let rest = split_url(link, SCHEME)?.ok_or(AesgcmLinkError::WrongScheme)?;
        let (location, fragment) = rest.split_once('#').ok_or(AesgcmLinkError::NoKey)?;
        Ok(AesgcmLink {
            location: location.to_owned(),
            key: MediaKey::from_fragment(fragment)?,
        })
    }

    /// The link to send for a file uploaded to `https_url` (an XEP-0363 slot's GET URL).
    pub fn for_upload(https_url: &str, key: MediaKey) -> Result<AesgcmLink, AesgcmLinkError> {
        let location = split_url(https_url, "https")?.ok_or(AesgcmLinkError::NotHttps)?;
        if location.contains('#') {
            return Err(AesgcmLinkError::UrlHasFragment);
        }
        Ok(AesgcmLink {
            location: location.to_owned(),
            key,
        })
    }

    /// Where to download the file: the link with the `https` scheme and no fragment.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.location)
    }

    /// The file's key.
    pub fn key(&self) -> &MediaKey {
        &self.key
    }

    /// The file's key, without the rest.
    pub fn into_key(self) -> MediaKey {
        self.key
    }

    /// The link as sent: `aesgcm://location#fragment`.
    pub fn to_link(&self) -> Zeroizing<String> {
        let fragment = self.key.fragment();
        let mut s = Zeroizing::new(String::with_capacity(
            SCHEME.len() + 4 + self.location.len() + fragment.len(),
        ));
        s.push_str(SCHEME);
        s.push_str("://");
        s.push_str(&self.location);
        s.push('#');
        s.push_str(&fragment);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// XEP-0454's own example link.
    const XEP_LINK: &str = "aesgcm://download.montague.tld/4a771ac1-f0b2-4a4a-9700-f2a26fa2bb67/tr%C3%A8s%20cool.jpg#8c3d050e9386ec173861778f68e9af38a97aaf82faa4063b4d0878a61261534410c8a84331eaac851759f587";

    #[test]
    fn reads_the_xeps_example_and_writes_it_back() {
        let link = AesgcmLink::parse(XEP_LINK).unwrap();
        assert_eq!(
            link.https_url(),
            "https://download.montague.tld/4a771ac1-f0b2-4a4a-9700-f2a26fa2bb67/tr%C3%A8s%20cool.jpg"
        );
        assert_eq!(hex::encode(link.key().iv()), "8c3d050e9386ec173861778f");
        assert_eq!(
            hex::encode(link.key().key()),
            "68e9af38a97aaf82faa4063b4d0878a61261534410c8a84331eaac851759f587"
        );
        assert_eq!(link.to_link().as_str(), XEP_LINK);
        let again = AesgcmLink::for_upload(&link.https_url(), link.key().clone()).unwrap();
        assert_eq!(again.to_link().as_str(), XEP_LINK);
    }

    #[test]
    fn reads_16_byte_ivs_and_upper_case_and_writes_lower_case() {
        let iv = "00112233445566778899AABBCCDDEEFF";
        let key = "A".repeat(64);
        let link = AesgcmLink::parse(&format!("AESGCM://h/f#{iv}{key}")).unwrap();
        assert_eq!(link.key().iv().len(), LEGACY_IV_LEN);
        assert_eq!(
            link.key().fragment().as_str(),
            format!("{iv}{key}").to_lowercase()
        );
        assert_eq!(link.https_url(), "https://h/f");
    }

    #[test]
    fn refuses_malformed_links_with_typed_errors() {
        let fragment = &XEP_LINK[XEP_LINK.len() - 88..];
        let cases: Vec<(String, AesgcmLinkError)> = vec![
            (
                format!("https://h/f#{fragment}"),
                AesgcmLinkError::WrongScheme,
            ),
            (
                format!("aesgcm-x://h/f#{fragment}"),
                AesgcmLinkError::WrongScheme,
            ),
            (format!("aesgcm:h/f#{fragment}"), AesgcmLinkError::Malformed),
            (
                format!("aesgcm:///f#{fragment}"),
                AesgcmLinkError::Malformed,
            ),
            (format!("aesgcm://#{fragment}"), AesgcmLinkError::Malformed),
            (
                format!("aesgcm://h/a b#{fragment}"),
                AesgcmLinkError::Malformed,
            ),
            (
                format!("aesgcm://h/f#{fragment}\n"),
                AesgcmLinkError::Malformed,
            ),
            (format!("//h/f#{fragment}"), AesgcmLinkError::Malformed),
            ("no link at all".into(), AesgcmLinkError::Malformed),
            ("aesgcm://h/f".into(), AesgcmLinkError::NoKey),
            (
                format!("aesgcm://h/f#{}", &fragment[..86]),
                AesgcmLinkError::KeyLength { len: 86 },
            ),
            (
                format!("aesgcm://h/f#{fragment}00"),
                AesgcmLinkError::KeyLength { len: 90 },
            ),
            (
                format!("aesgcm://h/f#{fragment}0000000g"),
                AesgcmLinkError::NotHex,
            ),
            (
                format!("aesgcm://h/f#{}x{}", &fragment[..40], &fragment[41..]),
                AesgcmLinkError::NotHex,
            ),
            (
                format!("aesgcm://h/f#{}é{}", &fragment[..40], &fragment[42..]),
                AesgcmLinkError::NotHex,
            ),
            (
                "aesgcm://h/f#".into(),
                AesgcmLinkError::KeyLength { len: 0 },
            ),
        ];
        for (link, want) in cases {
            let got = AesgcmLink::parse(&link).map(|_| ()).err();
            assert_eq!(got, Some(want.clone()), "{link}");
            assert!(!want.to_string().contains(fragment));
        }
    }

    #[test]
    fn only_https_urls_become_links() {
        let key = || MediaKey::from_parts(&[7; 32], &[1; 12]).unwrap();
        for (url, want) in [
            ("http://h/f", AesgcmLinkError::NotHttps),
            ("aesgcm://h/f", AesgcmLinkError::NotHttps),
            ("https://h/f#x", AesgcmLinkError::UrlHasFragment),
            ("https:///f", AesgcmLinkError::Malformed),
            ("https://h/a b", AesgcmLinkError::Malformed),
        ] {
            let got = AesgcmLink::for_upload(url, key()).map(|_| ()).err();
            assert_eq!(got, Some(want), "{url}");
        }
        let link = AesgcmLink::for_upload("HTTPS://h:8443/x/y.png?a=1", key()).unwrap();
        assert_eq!(
            link.to_link().as_str(),
            format!(
                "aesgcm://h:8443/x/y.png?a=1#{}{}",
                "01".repeat(12),
                "07".repeat(32)
            )
        );
    }

    #[test]
    fn generated_keys_have_12_byte_ivs_and_differ() {
        let mut rng = rand::rngs::OsRng;
        let (a, b) = (MediaKey::generate(&mut rng), MediaKey::generate(&mut rng));
        assert_eq!(a.iv().len(), IV_LEN);
        assert_eq!(a.fragment().len(), 88);
        assert_ne!(a.fragment(), b.fragment());
        assert_eq!(
            MediaKey::from_fragment(&a.fragment()).unwrap().fragment(),
            a.fragment()
        );
    }

    #[test]
    fn debug_shows_no_key_and_no_location() {
        let link = AesgcmLink::parse(XEP_LINK).unwrap();
        let shown = format!("{link:?} {:?}", link.key());
        assert!(
            !shown.contains("montague") && !shown.contains("8c3d"),
            "{shown}"
        );
        assert!(!shown.contains("140") && !shown.contains("104"), "{shown}");
    }
}
