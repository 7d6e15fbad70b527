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

/// The u-coordinates of every point of small order on Curve25519 and its twist (0, 1, the two
/// order-8 points, p − 1), and the non-canonical encodings p and p + 1 of 0 and 1; bit 255 is
/// ignored, as X25519 ignores it.
const LOW_ORDER_U: [[u8; 32]; 7] = {
    let mut t = [[0u8; 32]; 7];
    t[1][0] = 1;
    t[2] = [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ];
    t[3] = [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ];
    let mut i = 4;
    while i < 7 {
        // p − 1, p, p + 1: 0xec / 0xed / 0xee, then 30 × 0xff, then 0x7f.
        let mut k = 1;
        while k < 31 {
            t[i][k] = 0xff;
            k += 1;
        }
        t[i][0] = 0xec + (i as u8 - 4);
        t[i][31] = 0x7f;
        i += 1;
    }
    t
};

/// Whether the X25519 public key `u` has small order (on the curve or its twist): a
/// Diffie-Hellman with it gives a predictable (all-zero) result. A table lookup: bundles carry
/// up to 100 prekeys and are checked on every session creation, so a ladder per key (`8·P`)
/// cost milliseconds there.
pub fn is_low_order_u(u: &[u8; 32]) -> bool {
    let mut masked = *u;
    masked[31] &= 0x7f;
    LOW_ORDER_U.contains(&masked)
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

    /// The table agrees with the definition: `8·P` is the identity (u = 0 after the ladder).
    #[test]
    fn low_order_table_matches_the_ladder() {
        let by_ladder =
            |u: &[u8; 32]| (MontgomeryPoint(*u) * curve25519_dalek::Scalar::from(8u8)).0 == [0; 32];
        let mut cases: Vec<[u8; 32]> = LOW_ORDER_U.to_vec();
        for t in LOW_ORDER_U {
            let mut high = t;
            high[31] |= 0x80;
            cases.push(high);
        }
        let mut seed = [0u8; 32];
        for i in 0..2000u32 {
            seed[..4].copy_from_slice(&i.to_le_bytes());
            // Random points (curve and twist alike) and raw random strings.
            cases.push(x25519_dalek::x25519(
                seed,
                x25519_dalek::X25519_BASEPOINT_BYTES,
            ));
            let mut raw = [0u8; 32];
            for (j, b) in raw.iter_mut().enumerate() {
                *b = (i as u8)
                    .wrapping_mul(31)
                    .wrapping_add(j as u8)
                    .wrapping_mul(197);
            }
            cases.push(raw);
        }
        for u in &cases {
            assert_eq!(is_low_order_u(u), by_ladder(u), "{u:02x?}");
        }
        assert_eq!(cases.iter().filter(|u| is_low_order_u(u)).count(), 14);
    }
}
