//! XEP-0454 media sharing: a file encrypted with AES-256-GCM under a fresh key, uploaded with
//! XEP-0363, and sent as an `aesgcm://` link that carries the key and IV in its fragment.
//!
//! * [`link`]: the link and its key ([`MediaKey`], [`AesgcmLink`]): parse and format.
//! * [`gcm`]: AES-256-GCM over a file in pieces, in bounded memory: [`MediaSealer`] encrypts;
//!   [`MediaVerifier`] checks the tag of a whole file and only then yields the [`MediaOpener`]
//!   that decrypts it, piece by piece, the same pieces again.

pub mod gcm;
pub mod link;

pub use gcm::{MediaError, MediaOpener, MediaSealer, MediaVerifier, Pieces, TAG_LEN};
pub use link::{AesgcmLink, AesgcmLinkError, MediaKey};
