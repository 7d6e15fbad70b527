//! omemod as a library: the pieces the `omemod` binary is built from.
//!
//! The modules, in layers: each imports only modules listed after it (no import cycles; storage
//! reaches neither the manager nor the RPC layer). [`lock`], [`logging`] and [`systemd`] import
//! nothing of the crate.
//!
//! - [`cli`]: the `omemod` command line.
//! - [`rpc`]: JSON-RPC 2.0 over a Unix socket, one method per file in `rpc/methods/`.
//! - [`media`]: file transfers of XEP-0454 media sharing (encrypt for upload, decrypt a
//!   download), their bounds.
//! - [`rollback`]: an older copy of the database noticed and treated at start; the record that
//!   notices it kept while the daemon runs.
//! - [`manager`]: the session manager (accounts, bundles, device lists, sessions, trust).
//! - [`events`]: the actions a client should take and the events pushed to subscribers.
//! - [`storage`]: the SQLite file (schema, migrations, group-commit writer); all SQL is here.
//! - [`socket_trust`]: who may own the socket and database paths, checked before use.
//! - [`bounds`]: fixed resource bounds and the open-file limit.
//! - [`config`]: paths, defaults, the config file and every `serve` flag.
//! - [`lock`]: one daemon per database.
//! - [`logging`]: journald or stderr.
//! - [`systemd`]: socket activation and readiness notification.
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
pub mod media;
pub mod rollback;
pub mod rpc;
pub mod socket_trust;
pub mod storage;
pub mod systemd;
