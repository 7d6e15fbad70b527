//! OMEMO (XEP-0384) protocol core for both versions spoken on the network today:
//! OMEMO 0.3 (`eu.siacs.conversations.axolotl`, libsignal's v3 wire format) and
//! OMEMO 2 (`urn:xmpp:omemo:2`).
//!
//! Sans-I/O: every operation is a pure function or a method on a plain state value. The caller
//! (the `omemod` daemon) loads state, advances it here, and persists the result.
//!
//! Modules, each using only those listed before it:
//!
//! * [`consts`]: every limit of the protocol core.
//! * [`version`]: the two versions ([`Version`]) and the constants that tell them apart.
//! * [`error`]: [`error::ErrorCause`], and the storage-form error keys and sessions share.
//! * [`plaintext`]: [`Plaintext`], message text in the clear.
//! * [`kdf`]: HKDF and HMAC.
//! * [`keys`]: key pairs, identities, XEdDSA, their storage forms.
//! * [`bundle`]: published bundles and their verification.
//! * [`x3dh`]: the key agreement.
//! * [`double_ratchet`]: the Double Ratchet.
//! * [`wire`]: the binary forms of `<key>` contents.
//! * [`payload`]: encryption of the message body.
//! * [`session`]: sessions (X3DH, ratchet and wire together), session records, snapshots.
//! * [`xml`]: the XML forms of messages, bundles and device lists.
//! * [`datetime`]: XEP-0082 DateTime, the form of SCE's `<time>`.
//! * [`sce`]: the OMEMO 2 SCE envelope.
//! * [`verification`]: fingerprints as clients display them, and the `xmpp:` URIs (QR codes)
//!   that carry a JID's keys.
//! * [`media`]: XEP-0454 media sharing: `aesgcm://` links and AES-256-GCM over files in pieces.
//!
//! Errors, one enum per operation family, each with `cause()`: [`keys::KeyError`],
//! [`bundle::BundleError`], [`x3dh::X3dhError`], [`double_ratchet::RatchetError`],
//! [`session::SessionError`] (initiation and decryption), [`wire::WireError`],
//! [`payload::PayloadError`], [`xml::XmlError`], [`sce::SceError`],
//! [`verification::UriError`], [`media::AesgcmLinkError`], [`media::MediaError`],
//! [`error::SnapshotError`].
#![forbid(unsafe_code)]
// Untrusted input must never panic the protocol or the daemon: no unwrap/expect/panic outside tests.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![deny(missing_debug_implementations)]
// Every public item, error variant included, says what it is.
#![deny(missing_docs)]

pub mod bundle;
pub mod consts;
pub mod datetime;
pub mod double_ratchet;
pub mod error;
pub mod kdf;
pub mod keys;
pub mod media;
pub mod payload;
pub mod plaintext;
pub mod sce;
pub mod session;
pub mod verification;
pub mod version;
pub mod wire;
pub mod x3dh;
pub mod xml;

pub use plaintext::Plaintext;
pub use version::Version;
