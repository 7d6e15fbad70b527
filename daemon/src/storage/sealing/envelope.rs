//! A document sealed under a passphrase, for carrying secrets to another machine (account
//! exports): Argon2id turns the passphrase into a key, XChaCha20-Poly1305 seals the bytes, and
//! the JSON envelope says how (parameters, salt, nonce) and holds nothing else readable.

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::keys::{KdfParams, KeyError};

/// The envelope's `format`.
pub const FORMAT: &str = "omemod-sealed";
/// Its version.
pub const VERSION: u64 = 1;

/// Why an envelope did not open.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Not an envelope of this format.
    #[error("not an {FORMAT} version {VERSION} document: {0}")]
    Malformed(&'static str),
    /// The passphrase is wrong (or the file was changed).
    #[error("the passphrase does not open this file (or the file was changed)")]
    WrongPassphrase,
    /// The key derivation failed.
    #[error(transparent)]
    Kdf(#[from] KeyError),
}

/// Whether `doc` is an envelope.
pub fn is_envelope(doc: &Value) -> bool {
    doc["format"] == FORMAT
}

/// Seals `content` (whose kind `what` names, e.g. `omemod-account-export`) under `passphrase`.
pub fn seal(what: &str, content: &[u8], passphrase: &str) -> Result<Value, EnvelopeError> {
    let kdf = KdfParams::fresh();
    let key = kdf.derive(passphrase)?;
    let mut nonce = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let aead = XChaCha20Poly1305::new((&*key).into());
    let ad = ad(what);
    let sealed = aead
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: content,
                aad: &ad,
            },
        )
        .map_err(|_| EnvelopeError::Malformed("content too large"))?;
    Ok(json!({
        "format": FORMAT,
        "version": VERSION,
        "content": what,
        "kdf": kdf,
        "nonce": hex::encode(nonce),
        "sealed": base64::engine::general_purpose::STANDARD.encode(sealed),
    }))
}

fn ad(what: &str) -> Vec<u8> {
    let mut ad = format!("{FORMAT} v{VERSION}\0").into_bytes();
    ad.extend_from_slice(what.as_bytes());
    ad
}

/// Opens an envelope made by [`seal`]: its content kind and bytes.
pub fn open(doc: &Value, passphrase: &str) -> Result<(String, Zeroizing<Vec<u8>>), EnvelopeError> {
    if doc["format"] != FORMAT || doc["version"] != VERSION {
        return Err(EnvelopeError::Malformed("format"));
    }
    let what = doc["content"]
        .as_str()
        .ok_or(EnvelopeError::Malformed("content"))?;
    let kdf: KdfParams =
        serde_json::from_value(doc["kdf"].clone()).map_err(|_| EnvelopeError::Malformed("kdf"))?;
    let nonce = doc["nonce"]
        .as_str()
        .and_then(|n| hex::decode(n).ok())
        .filter(|n| n.len() == 24)
        .ok_or(EnvelopeError::Malformed("nonce"))?;
    let sealed = doc["sealed"]
        .as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .ok_or(EnvelopeError::Malformed("sealed"))?;
    let key = kdf.derive(passphrase)?;
    let aead = XChaCha20Poly1305::new((&*key).into());
    let plain = aead
        .decrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &sealed,
                aad: &ad(what),
            },
        )
        .map_err(|_| EnvelopeError::WrongPassphrase)?;
    Ok((what.to_owned(), Zeroizing::new(plain)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_opens_with_its_passphrase_only() {
        let doc = seal("test", b"secret bytes", "pass phrase").unwrap();
        let text = doc.to_string();
        assert!(!text.contains("secret"));
        let (what, plain) = open(&doc, "pass phrase").unwrap();
        assert_eq!((what.as_str(), &plain[..]), ("test", &b"secret bytes"[..]));
        assert!(matches!(
            open(&doc, "other"),
            Err(EnvelopeError::WrongPassphrase)
        ));
        let mut renamed = doc.clone();
        renamed["content"] = json!("other");
        assert!(matches!(
            open(&renamed, "pass phrase"),
            Err(EnvelopeError::WrongPassphrase)
        ));
    }
}
