//! Loads the python-omemo vectors kept in `protocol-core/tests/vectors/` (or `$OMEMO_VECTORS_DIR`).
#![allow(dead_code)]

use serde_json::Value;
use std::path::PathBuf;

pub fn vectors_dir() -> PathBuf {
    // The repository's own copy (provenance in its README); `$OMEMO_VECTORS_DIR` points the
    // tests at another set, e.g. freshly regenerated vectors, without editing anything.
    match std::env::var_os("OMEMO_VECTORS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors"),
    }
}

pub fn load(name: &str) -> Value {
    let path = vectors_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn hexv(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))).unwrap()
}

pub fn hx(v: &Value) -> Vec<u8> {
    hexv(v)
}

pub fn h32(v: &Value) -> [u8; 32] {
    hex32(v)
}

pub fn num(v: &Value) -> u32 {
    u32::try_from(v.as_u64().expect("number")).expect("u32")
}

pub fn hex32(v: &Value) -> [u8; 32] {
    hexv(v).try_into().unwrap()
}

pub fn hex64(v: &Value) -> [u8; 64] {
    hexv(v).try_into().unwrap()
}

/// An RNG that hands out pre-announced values in order, like the generator's tape.
pub struct TapeRng {
    pub tape: Vec<Vec<u8>>,
}

impl TapeRng {
    pub fn new(tape: Vec<Vec<u8>>) -> Self {
        let mut tape = tape;
        tape.reverse();
        Self { tape }
    }
}

impl rand_core::RngCore for TapeRng {
    fn next_u32(&mut self) -> u32 {
        unimplemented!("tape rng only fills bytes")
    }
    fn next_u64(&mut self) -> u64 {
        unimplemented!("tape rng only fills bytes")
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let next = self.tape.pop().expect("tape exhausted");
        assert_eq!(next.len(), dest.len(), "tape value of the wrong size");
        dest.copy_from_slice(&next);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
impl rand_core::CryptoRng for TapeRng {}
