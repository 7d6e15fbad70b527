//! `status`: is the daemon alive, and what is it.

use std::path::PathBuf;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::Serialize;

use crate::config::Durability;
use crate::rpc::ctx::{Conn, Ctx};
use crate::rpc::error::CallError;
use crate::rpc::registry::{Method, NoParams};
use std::convert::Infallible;

/// `status`.
pub struct Status;

/// The answer of `status`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StatusResult {
    /// omemod's version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// The daemon's process id.
    pub pid: u32,
    /// The socket the daemon listens on.
    pub socket: PathBuf,
    /// The database path.
    pub db: PathBuf,
    /// The database durability setting.
    pub durability: Durability,
    /// Connected clients, including the caller.
    pub clients: usize,
    /// Set when the database was found older than the last state this machine saw (a restored
    /// backup or snapshot): sessions may need a new key exchange (`session.replace`).
    pub rollback: Option<crate::storage::generation::Rollback>,
    /// The daemon waits for `unlock` (its database's key is a passphrase).
    pub locked: bool,
    /// Where the database's data key comes from: `systemd-credential`, `secret-service`,
    /// `passphrase` or `key-file` (`null` before the database is open).
    pub key_source: Option<String>,
    /// The key file's path, the credential's name, or the keyring item's id.
    pub key_source_ref: Option<String>,
}

impl Method for Status {
    const NAME: &'static str = "status";
    const SUMMARY: &'static str =
        "The daemon's version, uptime, pid, socket path and connected clients.";
    type Params = NoParams;
    type Result = StatusResult;
    type Error = Infallible;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        _params: NoParams,
    ) -> Result<StatusResult, CallError<Infallible>> {
        Ok(StatusResult {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: ctx.started.elapsed().as_secs(),
            pid: std::process::id(),
            socket: ctx.socket_path.clone(),
            db: ctx.config.db.clone(),
            durability: ctx.config.durability,
            clients: ctx.client_count(),
            rollback: ctx.rollback.get().cloned(),
            locked: ctx.manager.get().is_none() && ctx.unlock.get().is_some(),
            key_source: match ctx.sealing.get() {
                Some(s) => Some(s.key_source.as_str().to_owned()),
                None if ctx.unlock.get().is_some() => Some("passphrase".to_owned()),
                None => None,
            },
            key_source_ref: ctx.sealing.get().and_then(|s| s.key_source_ref.clone()),
        })
    }
}
