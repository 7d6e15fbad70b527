//! The birational maps between Ed25519 (Edwards y) and X25519 (Montgomery u) public keys
//! (RFC 7748 §4.1). The u-coordinate does not carry the Edwards sign bit, so the
//! Montgomery → Edwards direction takes it as an argument.

use super::KeyError;
use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::montgomery::MontgomeryPoint;

/// Whether `u` is a canonical field element (< 2^255 − 19, top bit clear).
pub fn is_canonical_u(u: &[u8; 32]) -> bool {
    if u[31] & 0x80 != 0 {
        return false;
    }
    // u ≥ p only for 2^255−19 … 2^255−1: 0x7f ff … ff (ed…ff) in little-endian.
    let high_all_ones = u[31] == 0x7f && u[1..31].iter().all(|b| *b == 0xff);
    !(high_all_ones && u[0] >= 0xed)
}

/// Edwards → Montgomery: `u = (1 + y) / (1 − y)`. Rejects non-canonical encodings, points
/// off the curve and small-order points.
pub fn ed25519_to_curve25519(ed: &[u8; 32]) -> Result<[u8; 32], KeyError> {
    let point = CompressedEdwardsY(*ed)
        .decompress()
        .ok_or(KeyError::InvalidPoint)?;
    if point.compress().0 != *ed {
        return Err(KeyError::InvalidPoint);
    }
    if point.is_small_order() {
        return Err(KeyError::LowOrderPoint);
    }
    Ok(point.to_montgomery().0)
}

/// Montgomery → Edwards with the given sign bit: `y = (u − 1) / (u + 1)`.
pub fn curve25519_to_ed25519(u: &[u8; 32], sign_bit: u8) -> Result<[u8; 32], KeyError> {
    if !is_canonical_u(u) {
        return Err(KeyError::InvalidPoint);
    }
    let point = MontgomeryPoint(*u)
        .to_edwards(sign_bit & 1)
        .ok_or(KeyError::InvalidPoint)?;
    if point.is_small_order() {
        return Err(KeyError::LowOrderPoint);
    }
    Ok(point.compress().0)
}
