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

/// Whether the X25519 public key `u` has small order (on the curve or its twist): a
/// Diffie-Hellman with it gives a predictable (all-zero) result. `8·P` is the identity for
/// exactly these points; the Montgomery ladder maps the identity to u = 0.
pub fn is_low_order_u(u: &[u8; 32]) -> bool {
    let eight = curve25519_dalek::Scalar::from(8u8);
    (MontgomeryPoint(*u) * eight).0 == [0u8; 32]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_u(s: &str) -> [u8; 32] {
        let v: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        v.try_into().unwrap()
    }

    #[test]
    fn low_order_points_are_recognised() {
        // u = 0 (order 2), u = 1 (order 4, twist), the two order-8 points and p − 1 (twist).
        let mut p_minus_1 = [0xffu8; 32];
        p_minus_1[0] = 0xec;
        p_minus_1[31] = 0x7f;
        let mut one = [0u8; 32];
        one[0] = 1;
        let order8a = hex_u("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800");
        let order8b = hex_u("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157");
        for u in [[0u8; 32], one, order8a, order8b, p_minus_1] {
            assert!(is_low_order_u(&u), "{u:02x?}");
        }
        assert!(!is_low_order_u(&x25519_dalek::X25519_BASEPOINT_BYTES));
        let random = x25519_dalek::x25519([7u8; 32], x25519_dalek::X25519_BASEPOINT_BYTES);
        assert!(!is_low_order_u(&random));
    }
}
