//! What people compare to verify a key: fingerprints as the other clients display them, and the
//! `xmpp:` URIs (shown as QR codes) that carry a JID's device ids and keys.
//!
//! No XEP defines these URIs; every client writes the same de-facto form, an RFC 5122 URI with
//! one `omemo-sid-<device id>=<key>` pair per device, the key being the 32-byte Curve25519
//! public identity key as 64 lowercase hex digits, without the 0x05 type byte:
//!
//! * Conversations: `xmpp:<jid>?omemo-sid-<id>=<hex>;omemo-sid-<id>=<hex>` (`XmppUri.java`
//!   `getFingerprintUri`, `Account.java` `getShareableUri`), and the web form
//!   `https://conversations.im/i/<jid>?…&…`;
//! * Gajim: `xmpp:<jid>?message;omemo-sid-<id>=<hex>;…` (`gajim/common/modules/omemo.py`
//!   `compose_trust_uri`, nbxmpp `JID.to_iri`);
//! * Dino, Profanity, Monal: Conversations' form, one device.
//!
//! One device id has one identity in both namespaces (XEP-0384 §security displays the
//! Curve25519 form in OMEMO 2 too), so one pair names the device in both. [`VerificationUri`]
//! writes Conversations' form and reads all of them, and Moxxy's `omemo2-sid-<id>` pairs.

use crate::error::ErrorCause;
use crate::keys::conversion::ed25519_to_curve25519;
use serde::Serialize;

/// The parameter naming a device in the URI (followed by its id).
pub const OMEMO_SID_PARAM: &str = "omemo-sid-";
/// Moxxy's parameter for OMEMO 2 devices.
pub const OMEMO2_SID_PARAM: &str = "omemo2-sid-";
/// Most keys a URI may name (Conversations reads at most this many too).
pub const MAX_URI_KEYS: usize = 100;
/// Conversations' web form of the URI.
const CONVERSATIONS_WEB: &str = "https://conversations.im/i/";

/// A Curve25519 identity key as the clients display it (the same bytes in both namespaces:
/// XEP-0384 §security; Dino, Gajim and Conversations drop libsignal's 0x05 type byte).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DisplayForms {
    /// 64 lowercase hex digits, the form the URIs carry.
    pub hex: String,
    /// Conversations: lowercase, a space after every 8 digits (`CryptoHelper.prettifyFingerprint`);
    /// also what omemod shows everywhere.
    pub conversations: String,
    /// Dino: lowercase, two lines of 32 digits, groups of 8 joined by a no-break space, a space,
    /// a no-break space (`plugins/omemo/src/ui/util.vala` `format_fingerprint`).
    pub dino: String,
    /// Gajim: UPPERCASE, groups of 8 joined by spaces, 4 groups a line
    /// (`gajim/common/util/text.py` `format_fingerprint`, wrapped at 36 columns).
    pub gajim: String,
}

/// The forms of `curve25519` the clients display.
pub fn display_forms(curve25519: &[u8; 32]) -> DisplayForms {
    let hex: String = curve25519.iter().map(|b| format!("{b:02x}")).collect();
    let groups: Vec<&str> = (0..8).map(|i| &hex[i * 8..i * 8 + 8]).collect();
    let dino_line = |g: &[&str]| format!("{}\u{a0}{} {}\u{a0}{}", g[0], g[1], g[2], g[3]);
    let gajim = |g: &[&str]| g.join(" ").to_uppercase();
    DisplayForms {
        conversations: groups.join(" "),
        dino: format!("{}\n{}", dino_line(&groups[..4]), dino_line(&groups[4..])),
        gajim: format!("{}\n{}", gajim(&groups[..4]), gajim(&groups[4..])),
        hex,
    }
}

/// One key a URI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UriKey {
    /// The device id (`None`: Conversations' bare `omemo=<key>`, which names none).
    pub device_id: Option<u32>,
    /// The 32 key bytes as written: the Curve25519 form (every client but, perhaps, Moxxy).
    pub key: [u8; 32],
}

impl UriKey {
    /// Whether this names the identity whose Curve25519 form is `curve25519`: the bytes are
    /// that form, or an Ed25519 key that maps to it (the form OMEMO 2 transports, which an
    /// OMEMO 2 client may show instead).
    pub fn names(&self, curve25519: &[u8; 32]) -> bool {
        self.key == *curve25519 || ed25519_to_curve25519(&self.key).is_ok_and(|c| c == *curve25519)
    }
}

/// A verification URI: a bare JID and the keys of its devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerificationUri {
    /// The JID as written (the caller normalises it).
    pub jid: String,
    /// The keys, in the URI's order.
    pub keys: Vec<UriKey>,
}

/// Why a text is not a verification URI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UriError {
    /// It does not start with `xmpp:` (or Conversations' `https://conversations.im/i/`).
    #[error("not an xmpp: URI")]
    NotXmppUri,
    /// `xmpp://…` names an account to act from; verification URIs have none.
    #[error("xmpp:// URIs (with an authority) are not verification URIs")]
    Authority,
    /// The JID part is empty.
    #[error("the URI names no JID")]
    NoJid,
    /// A `%` escape is not two hex digits, or decodes to something that is not UTF-8.
    #[error("bad percent-encoding in the URI")]
    BadEscape,
    /// A device parameter's id is not a device id (1 to 2³¹−1).
    #[error("bad device id in parameter {0}")]
    BadDeviceId(String),
    /// A key is not 64 hex digits (or 66 with the 05 type byte).
    #[error("the key of {0} is not 64 hex digits")]
    BadKey(String),
    /// The URI names one device twice.
    #[error("the URI names device {0} twice")]
    DuplicateDevice(u32),
    /// The URI names no OMEMO key.
    #[error("the URI names no OMEMO key (no omemo-sid-<device id> parameter)")]
    NoKeys,
    /// The URI names more keys than accepted.
    #[error("the URI names more than {max} keys")]
    TooManyKeys {
        /// The most accepted.
        max: usize,
    },
}

impl UriError {
    /// Always the request's: the URI is what the user scanned or pasted.
    pub fn cause(&self) -> ErrorCause {
        ErrorCause::Request
    }
}

/// Percent-encodes what may not stand in an RFC 5122 path or query value as it is.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let plain = b.is_ascii_alphanumeric() || b"-._~!$'()*+,:@".contains(&b);
        if plain {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unescape(s: &str) -> Result<String, UriError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or(UriError::BadEscape)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| UriError::BadEscape)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UriError::BadEscape)
}

/// A key as written: 64 hex digits, or 66 starting with the 05 type byte; blanks ignored.
fn parse_key(param: &str, value: &str) -> Result<[u8; 32], UriError> {
    let bad = || UriError::BadKey(param.to_owned());
    let hex: String = value.chars().filter(|c| !c.is_whitespace()).collect();
    let hex = match hex.len() {
        66 if hex.starts_with("05") => &hex[2..],
        64 => hex.as_str(),
        _ => return Err(bad()),
    };
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = hex
            .get(i * 2..i * 2 + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(bad)?;
    }
    Ok(key)
}

/// The device id of a `omemo-sid-<id>` or `omemo2-sid-<id>` parameter name; `Ok(None)` for
/// other parameters.
fn device_param(name: &str) -> Result<Option<Option<u32>>, UriError> {
    if name == "omemo" {
        return Ok(Some(None));
    }
    let Some(id) = name
        .strip_prefix(OMEMO_SID_PARAM)
        .or_else(|| name.strip_prefix(OMEMO2_SID_PARAM))
    else {
        return Ok(None);
    };
    let bad = || UriError::BadDeviceId(name.to_owned());
    let id: u32 = id.parse().map_err(|_| bad())?;
    if id == 0 || id > crate::consts::MAX_DEVICE_ID {
        return Err(bad());
    }
    Ok(Some(Some(id)))
}

impl VerificationUri {
    /// Conversations' form: `xmpp:<jid>?omemo-sid-<id>=<hex>;…` (Gajim writes `message;`
    /// after the `?`; both read either). Keys without a device id are left out.
    pub fn to_uri(&self) -> String {
        let pairs: Vec<String> = self
            .keys
            .iter()
            .filter_map(|k| {
                let id = k.device_id?;
                Some(format!(
                    "{OMEMO_SID_PARAM}{id}={}",
                    display_forms(&k.key).hex
                ))
            })
            .collect();
        let mut uri = format!("xmpp:{}", escape(&self.jid));
        if !pairs.is_empty() {
            uri.push('?');
            uri.push_str(&pairs.join(";"));
        }
        uri
    }

    /// Reads a URI in any client's form: `xmpp:` (any case) or Conversations' web form; an
    /// optional query type (`message`); pairs separated by `;` or `&`; names and hex in any
    /// case, percent-encoded or not. Parameters other than OMEMO keys are ignored.
    pub fn parse(text: &str) -> Result<Self, UriError> {
        let text = text.trim();
        let rest = match text.get(..5) {
            Some(s) if s.eq_ignore_ascii_case("xmpp:") => &text[5..],
            _ => text
                .strip_prefix(CONVERSATIONS_WEB)
                .ok_or(UriError::NotXmppUri)?,
        };
        if rest.starts_with("//") {
            return Err(UriError::Authority);
        }
        let rest = rest.split('#').next().unwrap_or_default();
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let jid = unescape(path)?;
        if jid.is_empty() {
            return Err(UriError::NoJid);
        }
        let mut keys: Vec<UriKey> = Vec::new();
        for pair in query.split([';', '&']) {
            let Some((name, value)) = pair.split_once('=') else {
                continue; // the query type, or an empty pair
            };
            let name = unescape(name)?.to_ascii_lowercase();
            let Some(device_id) = device_param(&name)? else {
                continue;
            };
            let key = parse_key(&name, &unescape(value)?)?;
            if let Some(id) = device_id {
                if keys.iter().any(|k| k.device_id == Some(id)) {
                    return Err(UriError::DuplicateDevice(id));
                }
            }
            if keys.len() == MAX_URI_KEYS {
                return Err(UriError::TooManyKeys { max: MAX_URI_KEYS });
            }
            keys.push(UriKey { device_id, key });
        }
        if keys.is_empty() {
            return Err(UriError::NoKeys);
        }
        Ok(Self { jid, keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "4a3807d064d077181cc070989e76891d20dca5559548dc2c77c1a50273882b38";

    fn key() -> [u8; 32] {
        parse_key("k", HEX).unwrap_or_default()
    }

    #[test]
    fn display_forms_of_each_client() {
        let f = display_forms(&key());
        assert_eq!(f.hex, HEX);
        assert_eq!(
            f.conversations,
            "4a3807d0 64d07718 1cc07098 9e76891d 20dca555 9548dc2c 77c1a502 73882b38"
        );
        assert_eq!(
            f.dino,
            "4a3807d0\u{a0}64d07718 1cc07098\u{a0}9e76891d\n20dca555\u{a0}9548dc2c 77c1a502\u{a0}73882b38"
        );
        assert_eq!(
            f.gajim,
            "4A3807D0 64D07718 1CC07098 9E76891D\n20DCA555 9548DC2C 77C1A502 73882B38"
        );
        assert_eq!(crate::keys::fingerprint(&key()), f.conversations);
    }

    #[test]
    fn reads_every_form_and_writes_conversations() {
        let one = VerificationUri {
            jid: "alice@example.org".into(),
            keys: vec![UriKey {
                device_id: Some(1234),
                key: key(),
            }],
        };
        let written = format!("xmpp:alice@example.org?omemo-sid-1234={HEX}");
        assert_eq!(one.to_uri(), written);
        for text in [
            written.clone(),
            format!("xmpp:alice@example.org?message;omemo-sid-1234={HEX}"),
            format!(
                "XMPP:alice%40example.org?OMEMO-SID-1234={}",
                HEX.to_uppercase()
            ),
            format!("https://conversations.im/i/alice@example.org?omemo-sid-1234=05{HEX}"),
            format!(" xmpp:alice@example.org?omemo2-sid-1234={HEX}#frag\n"),
        ] {
            assert_eq!(VerificationUri::parse(&text), Ok(one.clone()), "{text}");
        }
        let two =
            VerificationUri::parse(&format!("xmpp:a@b?omemo-sid-1={HEX}&preauth=x&omemo={HEX}"));
        assert_eq!(
            two.map(|u| u.keys.iter().map(|k| k.device_id).collect::<Vec<_>>()),
            Ok(vec![Some(1), None])
        );
    }

    #[test]
    fn refuses_what_names_no_key_properly() {
        let cases: [(&str, UriError); 8] = [
            ("mailto:a@b", UriError::NotXmppUri),
            ("xmpp://a@b/c@d", UriError::Authority),
            ("xmpp:?omemo-sid-1=00", UriError::NoJid),
            ("xmpp:a@b?message", UriError::NoKeys),
            (
                "xmpp:a@b?omemo-sid-0=x",
                UriError::BadDeviceId("omemo-sid-0".into()),
            ),
            (
                "xmpp:a@b?omemo-sid-x=x",
                UriError::BadDeviceId("omemo-sid-x".into()),
            ),
            (
                "xmpp:a@b?omemo-sid-1=abcd",
                UriError::BadKey("omemo-sid-1".into()),
            ),
            ("xmpp:a%4@b?omemo-sid-1=abcd", UriError::BadEscape),
        ];
        for (text, e) in cases {
            assert_eq!(VerificationUri::parse(text), Err(e), "{text}");
        }
        assert_eq!(
            VerificationUri::parse(&format!("xmpp:a@b?omemo-sid-7={HEX};omemo-sid-7={HEX}")),
            Err(UriError::DuplicateDevice(7))
        );
        let many: Vec<String> = (1..=101).map(|i| format!("omemo-sid-{i}={HEX}")).collect();
        assert_eq!(
            VerificationUri::parse(&format!("xmpp:a@b?{}", many.join(";"))),
            Err(UriError::TooManyKeys { max: 100 })
        );
    }

    #[test]
    fn a_key_is_named_by_either_form() {
        // research-net.md §2's worked example: this Ed25519 key (OMEMO 2's <ik>) is HEX in
        // Curve25519 form.
        let ed = "79b5562e8fe654f94078b112e8a98ba7901f853ae695bed7e0e3910bad049664";
        let by_ed = UriKey {
            device_id: Some(1),
            key: parse_key("k", ed).unwrap_or_default(),
        };
        let by_curve = UriKey {
            device_id: Some(1),
            key: key(),
        };
        assert!(by_curve.names(&key()));
        assert!(by_ed.names(&key()));
        assert!(!by_curve.names(&key().map(|b| b ^ 1)));
        assert!(!by_ed.names(&key().map(|b| b ^ 1)));
    }

    #[test]
    fn jids_are_escaped_where_needed() {
        let u = VerificationUri {
            jid: "a&b;c@example.org".into(),
            keys: vec![UriKey {
                device_id: Some(9),
                key: key(),
            }],
        };
        let text = u.to_uri();
        assert!(
            text.starts_with("xmpp:a%26b%3Bc@example.org?omemo-sid-9="),
            "{text}"
        );
        assert_eq!(VerificationUri::parse(&text), Ok(u));
    }
}
