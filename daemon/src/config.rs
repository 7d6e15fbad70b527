//! Paths and settings of the daemon: where the socket and the database live, and the limits of the
//! RPC transport. Defaults follow the XDG base directory spec.

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Serialize, Deserialize, JsonSchema,
)]
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
    /// What is kept for redelivery and retries.
    pub redelivery: crate::manager::redelivery::RedeliveryConfig,
    /// Connection and resource bounds (`crate::bounds`).
    pub bounds: crate::bounds::BoundsArgs,
}

/// The config file: every `serve` setting, and the socket the other commands use. Command-line
/// flags (and `OMEMOD_SOCKET`) override it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `--socket`.
    pub socket: Option<PathBuf>,
    /// `--db`.
    pub db: Option<PathBuf>,
    /// `--durability`.
    pub durability: Option<Durability>,
    /// `--max-request-bytes`.
    pub max_request_bytes: Option<usize>,
    /// `--max-response-bytes`.
    pub max_response_bytes: Option<usize>,
    /// `--max-in-flight`.
    pub max_in_flight: Option<usize>,
    /// `--max-connections`.
    pub max_connections: Option<usize>,
    /// `--partial-line-timeout` (seconds).
    pub partial_line_timeout: Option<u64>,
    /// `--write-stall-timeout` (seconds).
    pub write_stall_timeout: Option<u64>,
    /// `--skipped-key-max-age` (days).
    pub skipped_key_max_age: Option<u64>,
    /// `--redelivery-retention`: seconds, or a string with a unit (`"7d"`).
    #[serde(
        default,
        deserialize_with = "crate::manager::redelivery::deserialize_duration"
    )]
    pub redelivery_retention: Option<u64>,
    /// `--redelivery-max-entries`.
    pub redelivery_max_entries: Option<u64>,
}

/// Why the config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// It exists but cannot be read (or a file named with `--config` does not exist).
    #[error("config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// It is not valid TOML or has unknown keys or wrong types.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said (line, column, key).
        message: String,
    },
}

/// `$XDG_CONFIG_HOME/omemod/config.toml`, default `~/.config/omemod/config.toml`.
pub fn default_config_path() -> PathBuf {
    let base = non_empty_env_path("XDG_CONFIG_HOME").unwrap_or_else(|| {
        non_empty_env_path("HOME")
            .unwrap_or_else(|| PathBuf::from("/"))
            .join(".config")
    });
    base.join("omemod").join("config.toml")
}

/// `~/x` is `$HOME/x`, as users write it in a config file.
fn expand_home(p: PathBuf) -> PathBuf {
    match (p.strip_prefix("~"), non_empty_env_path("HOME")) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => p,
    }
}

impl FileConfig {
    /// Parses config text (`path` only names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        let mut c: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        c.socket = c.socket.map(expand_home);
        c.db = c.db.map(expand_home);
        Ok(c)
    }

    /// Loads `explicit` (which must exist) or the default file (which may be missing).
    pub fn load(explicit: Option<&Path>) -> Result<FileConfig, ConfigError> {
        let path = explicit.map_or_else(default_config_path, Path::to_path_buf);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => {
                Ok(FileConfig::default())
            }
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }
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
    fn config_file_names_every_serve_setting() {
        let c = FileConfig::parse(
            "socket = \"/run/x.sock\"\ndb = \"/var/x.db\"\ndurability = \"normal\"\n\
             max_request_bytes = 10\nmax_response_bytes = 20\nmax_in_flight = 3\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(c.socket.as_deref(), Some(Path::new("/run/x.sock")));
        assert_eq!(c.db.as_deref(), Some(Path::new("/var/x.db")));
        assert_eq!(c.durability, Some(Durability::Normal));
        assert_eq!(
            (c.max_request_bytes, c.max_response_bytes, c.max_in_flight),
            (Some(10), Some(20), Some(3))
        );
        assert_eq!(
            FileConfig::parse("", Path::new("c.toml")).unwrap(),
            FileConfig::default()
        );
    }

    #[test]
    fn config_file_sets_the_bounds_and_flags_override_it() {
        let c = FileConfig::parse(
            "max_connections = 7\npartial_line_timeout = 8\nwrite_stall_timeout = 9\n\
             skipped_key_max_age = 2\n",
            Path::new("c.toml"),
        )
        .unwrap();
        let b = crate::bounds::BoundsFlags::default().resolve(&c);
        assert_eq!(
            (
                b.max_connections,
                b.partial_line_timeout,
                b.write_stall_timeout,
                b.skipped_key_max_age
            ),
            (7, 8, 9, 2)
        );
        let flags = crate::bounds::BoundsFlags {
            max_connections: Some(70),
            ..Default::default()
        };
        let b = flags.resolve(&c);
        assert_eq!((b.max_connections, b.partial_line_timeout), (70, 8));
        let d = crate::bounds::BoundsFlags::default().resolve(&FileConfig::default());
        assert_eq!(
            d.max_connections,
            crate::bounds::DEFAULT_MAX_CONNECTIONS,
            "defaults apply without file or flag"
        );
    }

    #[test]
    fn config_file_sets_redelivery_and_flags_override_it() {
        use crate::manager::redelivery::{RedeliveryArgs, DEFAULT_MAX_ENTRIES};
        let c = FileConfig::parse(
            "redelivery_retention = \"2h\"\nredelivery_max_entries = 300\n",
            Path::new("c.toml"),
        )
        .unwrap();
        let r = RedeliveryArgs::default().resolve(&c);
        assert_eq!((r.retention_secs, r.max_entries), (7200, 300));
        let secs = FileConfig::parse("redelivery_retention = 90\n", Path::new("c.toml")).unwrap();
        assert_eq!(
            RedeliveryArgs::default().resolve(&secs).retention_secs,
            90,
            "a bare number is seconds"
        );
        let flags = RedeliveryArgs {
            redelivery_retention: Some(0),
            ..Default::default()
        };
        let r = flags.resolve(&c);
        assert_eq!((r.retention_secs, r.max_entries), (0, 300));
        let d = RedeliveryArgs::default().resolve(&FileConfig::default());
        assert_eq!(
            (d.retention_secs, d.max_entries),
            (7 * 24 * 3600, DEFAULT_MAX_ENTRIES),
            "defaults apply without file or flag"
        );
        for (text, needle) in [
            ("redelivery_retention = \"7w\"", "7w"),
            ("redelivery_retention = -1", "redelivery_retention"),
            (
                "redelivery_max_entries = \"many\"",
                "redelivery_max_entries",
            ),
        ] {
            match FileConfig::parse(text, Path::new("c.toml")) {
                Err(e @ ConfigError::Parse { .. }) => {
                    let m = e.to_string();
                    assert!(m.contains("c.toml") && m.contains(needle), "{text}: {m}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn every_serve_flag_is_a_config_key() {
        use clap::CommandFactory;
        let cli = crate::cli::Cli::command();
        let serve = cli
            .get_subcommands()
            .find(|c| c.get_name() == "serve")
            .expect("serve");
        let mut n = 0;
        for arg in serve.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            // Global flags, and the hidden test switch.
            if ["config", "help", "enable-debug-methods"].contains(&long) {
                continue;
            }
            let key = long.replace('-', "_");
            let value = match key.as_str() {
                "socket" | "db" => "\"/x\"",
                "durability" => "\"full\"",
                _ => "1",
            };
            let text = format!("{key} = {value}\n");
            assert!(
                FileConfig::parse(&text, Path::new("c.toml")).is_ok(),
                "--{long} has no config key {key}"
            );
            n += 1;
        }
        assert!(n >= 11, "only {n} serve flags found");
    }

    #[test]
    fn config_file_errors_name_the_file_and_the_problem() {
        for (text, needle) in [
            ("durabilty = \"full\"", "durabilty"),
            ("durability = \"fast\"", "fast"),
            ("max_in_flight = \"many\"", "max_in_flight"),
            ("max_in_flight = -1", "max_in_flight"),
            ("socket = ", "c.toml"),
        ] {
            match FileConfig::parse(text, Path::new("c.toml")) {
                Err(e @ ConfigError::Parse { .. }) => {
                    let m = e.to_string();
                    assert!(m.contains("c.toml") && m.contains(needle), "{text}: {m}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        let missing = Path::new("/nonexistent/omemod.toml");
        assert!(matches!(
            FileConfig::load(Some(missing)),
            Err(ConfigError::Read { .. })
        ));
    }

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
