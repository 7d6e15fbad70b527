//! The root chain: `KDF_RK(rk, dh) = HKDF(ikm = dh, salt = rk, info, 64)` → (rk', ck).
//! Note the root key is the HKDF *salt* (pitfall 11).

use super::chain_key::ChainKey;
use crate::{kdf, Version};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A root key.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct RootKey(pub(crate) [u8; 32]);

impl RootKey {
    /// One root chain step with a Diffie-Hellman output.
    pub fn advance(&self, version: Version, dh_out: &[u8; 32]) -> (RootKey, ChainKey) {
        let o = kdf::hkdf::<64>(&self.0, dh_out, version.root_chain_info());
        let mut rk = [0u8; 32];
        let mut ck = [0u8; 32];
        rk.copy_from_slice(&o[..32]);
        ck.copy_from_slice(&o[32..]);
        (RootKey(rk), ChainKey::new(ck, 0))
    }

    /// The raw key (for vector tests and snapshots).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootKey(<redacted>)")
    }
}
