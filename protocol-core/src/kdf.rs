//! HKDF-SHA-256 and HMAC-SHA-256, the only KDFs OMEMO uses.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// RFC 5869 HKDF-SHA-256 with `salt`, producing `N` bytes.
pub fn hkdf<const N: usize>(salt: &[u8], ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; N]> {
    let mut out = Zeroizing::new([0u8; N]);
    // Expand only fails for N > 255 * 32, which no caller asks for.
    #[allow(clippy::expect_used)]
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, out.as_mut())
        .expect("HKDF output length is a small constant");
    out
}

/// HMAC-SHA-256 of the concatenation of `parts` under `key`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    #[allow(clippy::expect_used)]
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Constant-time check that `tag` is exactly `len` bytes (the version's MAC length: 8 in 0.3,
/// 16 in OMEMO 2) and equals the first `len` bytes of the HMAC of `parts`. An empty or short
/// tag never verifies.
pub fn verify_truncated_hmac(key: &[u8], parts: &[&[u8]], tag: &[u8], len: usize) -> bool {
    use subtle::ConstantTimeEq;
    let full = hmac_sha256(key, parts);
    if len == 0 || len > full.len() || tag.len() != len {
        return false;
    }
    full[..len].ct_eq(tag).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_hmac_needs_the_exact_length() {
        let key = [7u8; 32];
        let full = hmac_sha256(&key, &[b"ad", b"message"]);
        assert!(verify_truncated_hmac(
            &key,
            &[b"ad", b"message"],
            &full[..8],
            8
        ));
        assert!(verify_truncated_hmac(
            &key,
            &[b"ad", b"message"],
            &full[..16],
            16
        ));
        // Empty, short, long, or wrong.
        assert!(!verify_truncated_hmac(&key, &[b"ad", b"message"], &[], 8));
        assert!(!verify_truncated_hmac(&key, &[b"ad", b"message"], &[], 0));
        assert!(!verify_truncated_hmac(
            &key,
            &[b"ad", b"message"],
            &full[..4],
            8
        ));
        assert!(!verify_truncated_hmac(
            &key,
            &[b"ad", b"message"],
            &full[..16],
            8
        ));
        assert!(!verify_truncated_hmac(
            &key,
            &[b"ad", b"message"],
            &full[..],
            33
        ));
        let mut bad = full;
        bad[3] ^= 1;
        assert!(!verify_truncated_hmac(
            &key,
            &[b"ad", b"message"],
            &bad[..8],
            8
        ));
    }
}
