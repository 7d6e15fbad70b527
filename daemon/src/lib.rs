//! omemod as a library: the pieces the `omemod` binary is built from.
//!
//! - [`storage`]: the SQLite file (schema, migrations, group-commit writer).
//! - [`manager`]: the session manager (accounts, bundles, device lists, sessions, trust).
//! - [`rpc`]: JSON-RPC 2.0 over a Unix socket, one method per file in `rpc/methods/`.
//! - [`cli`]: the `omemod` command line.
//! - [`lock`]: one daemon per database.
#![forbid(unsafe_code)]
// Untrusted input must never panic the protocol or the daemon: no unwrap/expect/panic outside tests.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod bounds;
pub mod cli;
pub mod config;
pub mod events;
pub mod lock;
pub mod logging;
pub mod manager;
pub mod rollback;
pub mod rpc;
pub mod socket_trust;
pub mod storage;
pub mod systemd;
