//! OMEMO (XEP-0384) protocol core for both versions spoken on the network today:
//! OMEMO 0.3 (`eu.siacs.conversations.axolotl`, libsignal's v3 wire format) and
//! OMEMO 2 (`urn:xmpp:omemo:2`).
//!
//! Sans-I/O: every operation is a pure function or a method on a plain state value. The caller
//! (the `omemod` daemon) loads state, advances it here, and persists the result.
#![forbid(unsafe_code)]
// Untrusted input must never panic the protocol or the daemon: no unwrap/expect/panic outside tests.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![deny(missing_debug_implementations)]

pub mod bundle;
pub mod consts;
pub mod double_ratchet;
pub mod error;
pub mod kdf;
pub mod keys;
pub mod payload;
pub mod plaintext;
pub mod sce;
pub mod session;
pub mod version;
pub mod wire;
pub mod x3dh;
pub mod xml;

pub use plaintext::Plaintext;
pub use version::Version;
