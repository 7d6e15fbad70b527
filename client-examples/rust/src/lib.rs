//! omemod's Rust client: JSON-RPC 2.0 over its Unix socket, one JSON value per line
//! (docs/rpc.md). omemod's own command line, its tests and its benchmark use it too.
//!
//! ```no_run
//! # async fn demo() -> Result<(), omemod_client::Error> {
//! use omemod_client::{Client, DecryptRequest, EncryptRequest, OMEMO2};
//! let mut client = Client::connect(&omemod_client::default_socket_path()).await?;
//! client.set_account(Some("me@example.org".into())); // never leave the choice to luck
//! let bundle = client.bundle(OMEMO2).await?;
//! println!("publish to {} item {}: {}", bundle.node, bundle.item_id, bundle.xml);
//! let sent = client
//!     .encrypt(&EncryptRequest {
//!         to: &["you@example.org"],
//!         body: "hello",
//!         namespaces: None,
//!         sce_to: None,
//!     })
//!     .await?;
//! for m in &sent.messages {
//!     println!("send in a <message>: {}", m.xml);
//! }
//! # let xml = "";
//! let got = client
//!     .decrypt(&DecryptRequest {
//!         from: "you@example.org",
//!         xml,
//!         to: "me@example.org",
//!         group_chat: false,
//!     })
//!     .await?;
//! println!("{}", got.body.unwrap_or_default());
//! # Ok(()) }
//! ```
//!
//! Modules:
//! - [`client`]: [`Client`], one connection (async, tokio): typed methods, any method by name
//!   ([`Client::call`]), batches, events.
//! - [`blocking`]: the same connection for code without an async runtime.
//! - [`methods`]: the typed requests and results of the calls.
//! - [`event`]: events pushed to subscribers, and the actions in results.
//! - [`files`]: files of XEP-0454 media sharing: the `file.*` calls, and whole files encrypted
//!   for upload or decrypted after download.
//! - [`error`]: [`Error`], and the daemon's error answers, [`RpcError`].
//! - [`trust`]: the checks that the socket is the daemon's and ours, run before connecting.
//! - `connection` (private): the line protocol of one connection.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod blocking;
pub mod client;
mod connection;
pub mod error;
pub mod event;
pub mod files;
pub mod methods;
pub mod trust;

use std::path::PathBuf;

pub use client::Client;
pub use error::{Error, RpcError};
pub use event::{Event, Pushed};
pub use methods::{
    Account, DecryptOutcome, DecryptRequest, DeviceReport, EncryptOutcome, EncryptRequest,
    EncryptedMessage, Envelope, Fingerprints, LabelSet, LinkKey, LinkVerified, LinkedDevice,
    OwnLink, Publishable, Sender, Status,
};
pub use trust::current_uid;

/// OMEMO 2.
pub const OMEMO2: &str = "urn:xmpp:omemo:2";
/// OMEMO 0.3 (what Conversations, Dino, Gajim … speak).
pub const OLDMEMO: &str = "eu.siacs.conversations.axolotl";
/// Both namespaces, OMEMO 2 first.
pub const NAMESPACES: [&str; 2] = [OMEMO2, OLDMEMO];

/// The socket path: `$OMEMOD_SOCKET`, else `$XDG_RUNTIME_DIR/omemod/omemod.sock`, else
/// `/run/user/<uid>/omemod/omemod.sock` (`/tmp/omemod-<uid>/omemod.sock` without `/run/user/<uid>`).
pub fn default_socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os("OMEMOD_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("omemod/omemod.sock");
    }
    let uid = current_uid();
    let run_user = PathBuf::from(format!("/run/user/{uid}"));
    if run_user.is_dir() {
        run_user.join("omemod/omemod.sock")
    } else {
        PathBuf::from(format!("/tmp/omemod-{uid}/omemod.sock"))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    /// A fresh directory of ours, mode 0700, for a socket.
    pub(crate) fn private_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("omemod-client-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }
}
