//! Paths and settings of the daemon: where the socket and the database live, and the limits of the
//! RPC transport. Defaults follow the XDG base directory spec.

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use schemars::JsonSchema;
use serde::Serialize;

/// Default limit on one request line (bytes, newline excluded).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Default limit on one response (bytes).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Requests one connection may have running at once; further lines are not read until one ends.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
/// Subscriptions one connection may hold.
pub const MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 32;
/// Elements one batch may contain.
pub const MAX_BATCH_LEN: usize = 256;
/// How long shutdown waits for in-flight requests.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How hard the database works to keep the last commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Survives a process crash; may lose the last commits on power loss (SQLite `synchronous=NORMAL`
    /// in WAL mode).
    Normal,
    /// Survives power loss (SQLite `synchronous=FULL`).
    #[default]
    Full,
}

/// Everything `omemod serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where to listen, unless systemd hands us a socket.
    pub socket: PathBuf,
    /// The SQLite database.
    pub db: PathBuf,
    /// Database durability.
    pub durability: Durability,
    /// Limit on one request line.
    pub max_request_bytes: usize,
    /// Limit on one response.
    pub max_response_bytes: usize,
    /// Concurrent requests per connection.
    pub max_in_flight: usize,
    /// Register the `debug.*` methods (tests only).
    pub enable_debug_methods: bool,
}

/// Our real uid.
pub fn current_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// `$XDG_RUNTIME_DIR`, else `/run/user/<uid>` when it exists, else `None`.
pub fn runtime_dir() -> Option<PathBuf> {
    if let Some(dir) = non_empty_env_path("XDG_RUNTIME_DIR") {
        return Some(dir);
    }
    let run_user = PathBuf::from(format!("/run/user/{}", current_uid()));
    run_user.is_dir().then_some(run_user)
}

/// The default socket path: `$RUNTIME_DIRECTORY/omemod.sock` under systemd (`RuntimeDirectory=`),
/// else `<runtime dir>/omemod/omemod.sock`, or `/tmp/omemod-<uid>/omemod.sock` when there is no
/// runtime directory.
pub fn default_socket_path() -> PathBuf {
    if let Some(dir) = systemd_directory("RUNTIME_DIRECTORY") {
        return dir.join("omemod.sock");
    }
    match runtime_dir() {
        Some(dir) => dir.join("omemod").join("omemod.sock"),
        None => PathBuf::from(format!("/tmp/omemod-{}", current_uid())).join("omemod.sock"),
    }
}

/// `$STATE_DIRECTORY` under systemd (`StateDirectory=`), else `$XDG_STATE_HOME/omemod`, default
/// `~/.local/state/omemod`.
pub fn state_dir() -> PathBuf {
    if let Some(dir) = systemd_directory("STATE_DIRECTORY") {
        return dir;
    }
    if let Some(dir) = non_empty_env_path("XDG_STATE_HOME") {
        return dir.join("omemod");
    }
    let home = non_empty_env_path("HOME").unwrap_or_else(|| PathBuf::from("/"));
    home.join(".local").join("state").join("omemod")
}

/// The default database path: `<state dir>/omemod.db`.
pub fn default_db_path() -> PathBuf {
    state_dir().join("omemod.db")
}

/// A directory systemd created for us: the first of the colon-separated absolute paths in `var`.
fn systemd_directory(var: &str) -> Option<PathBuf> {
    let v = std::env::var_os(var)?;
    let first = std::env::split_paths(&v).next()?;
    first.is_absolute().then_some(first)
}

/// The XDG spec ignores relative paths in these variables.
fn non_empty_env_path(var: &str) -> Option<PathBuf> {
    let v = std::env::var_os(var)?;
    let p = Path::new(&v);
    (p.is_absolute()).then(|| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_defaults_to_full() {
        assert_eq!(Durability::default(), Durability::Full);
    }

    #[test]
    fn socket_path_ends_in_omemod_sock() {
        let p = default_socket_path();
        assert!(p.ends_with("omemod/omemod.sock") || p.file_name().is_some());
        assert_eq!(p.file_name().and_then(|n| n.to_str()), Some("omemod.sock"));
    }
}
