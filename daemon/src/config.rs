//! Paths and settings of the daemon: where the socket and the database live, the limits of the
//! RPC transport, and every `serve` flag with its config-file key (bounds, redelivery, file
//! transfers, device staleness). Defaults follow the XDG base directory spec. It imports nothing
//! of the crate, so every module may use it.

use std::path::{Path, PathBuf};
use std::time::Duration;

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
    pub redelivery: RedeliveryConfig,
    /// When a silent device is left out of fan-out.
    pub stale: StaleConfig,
    /// Connection and resource bounds.
    pub bounds: BoundsArgs,
    /// Bounds of file transfers (`file.*`).
    pub files: FileLimits,
    /// Where the database's data key comes from (issue 24).
    pub keys: crate::storage::KeySettings,
}

/// `--key-source`: where a database's data key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum KeySource {
    /// `$CREDENTIALS_DIRECTORY/omemod.key` (systemd's `LoadCredentialEncrypted=`).
    SystemdCredential,
    /// A passphrase: the daemon starts locked until `omemod unlock`.
    Passphrase,
    /// An item of the desktop's keyring (freedesktop Secret Service).
    SecretService,
    /// A key file outside the database's directory (`--key-file`).
    KeyFile,
}

impl From<KeySource> for crate::storage::SourceKind {
    fn from(k: KeySource) -> Self {
        match k {
            KeySource::SystemdCredential => Self::SystemdCredential,
            KeySource::Passphrase => Self::Passphrase,
            KeySource::SecretService => Self::SecretService,
            KeySource::KeyFile => Self::KeyFile,
        }
    }
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
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub redelivery_retention: Option<u64>,
    /// `--redelivery-max-entries`.
    pub redelivery_max_entries: Option<u64>,
    /// `--idempotency-max-bytes`.
    pub idempotency_max_bytes: Option<u64>,
    /// `--max-file-bytes`.
    pub max_file_bytes: Option<u64>,
    /// `--file-chunk-bytes`.
    pub file_chunk_bytes: Option<usize>,
    /// `--max-file-transfers`.
    pub max_file_transfers: Option<usize>,
    /// `--max-file-transfers-per-connection`.
    pub max_file_transfers_per_connection: Option<usize>,
    /// `--file-idle-timeout`: seconds, or a string with a unit (`"5m"`).
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub file_idle_timeout: Option<u64>,
    /// `--stale-after-silence`: seconds, or a string with a unit (`"42d"`).
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub stale_after_silence: Option<u64>,
    /// `--stale-after-unanswered`.
    pub stale_after_unanswered: Option<u64>,
    /// `--key-source`.
    pub key_source: Option<KeySource>,
    /// `--key-file`.
    pub key_file: Option<PathBuf>,
}

/// Default `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Default `--partial-line-timeout` (seconds): a request line must be complete this long after its
/// first byte arrived (slowloris).
pub const DEFAULT_PARTIAL_LINE_TIMEOUT_SECS: u64 = 30;
/// Default `--write-stall-timeout` (seconds): a client that reads nothing of a pending answer for
/// this long is disconnected.
pub const DEFAULT_WRITE_STALL_TIMEOUT_SECS: u64 = 60;
/// Default `--skipped-key-max-age` (days).
pub const DEFAULT_SKIPPED_KEY_MAX_AGE_DAYS: u64 = 30;

/// Bounds that `omemod serve` takes from the command line (each also a config-file key of the
/// same name, with `_` for `-`; a flag overrides the file). docs/rpc.md "Limits" lists every
/// bound with its default and what happens when it is reached.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct BoundsFlags {
    /// Most client connections at once; at the limit the longest-idle connection is closed to make
    /// room (or, when all are busy, the new one is refused with `too_many_connections`)
    /// [default: 256].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Seconds a started request line may take to complete before the connection is closed
    /// [default: 30].
    #[arg(long, value_name = "SECS")]
    pub partial_line_timeout: Option<u64>,
    /// Seconds a client may leave a pending answer unread before it is disconnected [default: 60].
    #[arg(long, value_name = "SECS")]
    pub write_stall_timeout: Option<u64>,
    /// Days after which a stored skipped message key (for a message that never arrived) is deleted
    /// [default: 30].
    #[arg(long, value_name = "DAYS")]
    pub skipped_key_max_age: Option<u64>,
}

impl BoundsFlags {
    /// The bounds in force: these flags, else the config file's keys, else the defaults.
    pub fn resolve(self, file: &FileConfig) -> BoundsArgs {
        let d = BoundsArgs::default();
        BoundsArgs {
            max_connections: self
                .max_connections
                .or(file.max_connections)
                .unwrap_or(d.max_connections),
            partial_line_timeout: self
                .partial_line_timeout
                .or(file.partial_line_timeout)
                .unwrap_or(d.partial_line_timeout),
            write_stall_timeout: self
                .write_stall_timeout
                .or(file.write_stall_timeout)
                .unwrap_or(d.write_stall_timeout),
            skipped_key_max_age: self
                .skipped_key_max_age
                .or(file.skipped_key_max_age)
                .unwrap_or(d.skipped_key_max_age),
        }
    }
}

/// The bounds `omemod serve` runs with.
#[derive(Debug, Clone, Copy)]
pub struct BoundsArgs {
    /// `--max-connections`.
    pub max_connections: usize,
    /// `--partial-line-timeout` (seconds).
    pub partial_line_timeout: u64,
    /// `--write-stall-timeout` (seconds).
    pub write_stall_timeout: u64,
    /// `--skipped-key-max-age` (days).
    pub skipped_key_max_age: u64,
}

impl Default for BoundsArgs {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            partial_line_timeout: DEFAULT_PARTIAL_LINE_TIMEOUT_SECS,
            write_stall_timeout: DEFAULT_WRITE_STALL_TIMEOUT_SECS,
            skipped_key_max_age: DEFAULT_SKIPPED_KEY_MAX_AGE_DAYS,
        }
    }
}

impl BoundsArgs {
    /// The partial-line timeout.
    pub fn partial_line(&self) -> Duration {
        Duration::from_secs(self.partial_line_timeout.max(1))
    }

    /// The skipped-key age limit, in seconds.
    pub fn skipped_key_max_age_secs(&self) -> i64 {
        i64::try_from(self.skipped_key_max_age.saturating_mul(86_400)).unwrap_or(i64::MAX)
    }

    /// The write-stall timeout.
    pub fn write_stall(&self) -> Duration {
        Duration::from_secs(self.write_stall_timeout.max(1))
    }
}

/// Default retention of redelivery key material: 7 days, Prosody's default archive (MAM)
/// expiry, so a client reading the server archive finds every archived message still readable.
pub const DEFAULT_REDELIVERY_RETENTION_SECS: u64 = 7 * 24 * 3600;
/// Default cap on messages remembered for redelivery (key material rows; as many `encrypt`
/// answers).
pub const DEFAULT_REDELIVERY_MAX_ENTRIES: u64 = 50_000;
/// Default cap on the bytes of the `encrypt` answers kept for idempotency keys, all together:
/// four answers at the largest response (`DEFAULT_MAX_RESPONSE_BYTES`).
pub const DEFAULT_IDEMPOTENCY_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Bounds of what is kept for redelivery and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedeliveryConfig {
    /// Seconds to keep key material and `encrypt` answers; 0 turns redelivery off.
    pub retention_secs: u64,
    /// Most messages kept (and most `encrypt` answers).
    pub max_entries: u64,
    /// Most bytes of `encrypt` answers kept, all together.
    pub idempotency_max_bytes: u64,
}

impl Default for RedeliveryConfig {
    fn default() -> Self {
        Self {
            retention_secs: DEFAULT_REDELIVERY_RETENTION_SECS,
            max_entries: DEFAULT_REDELIVERY_MAX_ENTRIES,
            idempotency_max_bytes: DEFAULT_IDEMPOTENCY_MAX_BYTES,
        }
    }
}

impl RedeliveryConfig {
    /// Whether key material is kept at all.
    pub fn enabled(&self) -> bool {
        self.retention_secs > 0 && self.max_entries > 0
    }
}

/// The redelivery flags of `omemod serve` (each also a config-file key of the same name, with
/// `_` for `-`; a flag overrides the file).
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct RedeliveryArgs {
    /// How long a decrypted message stays readable again by other processes and retries (its
    /// key material is kept that long): seconds, or a number with s, m, h or d. 0 turns
    /// redelivery off [default: 7d].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub redelivery_retention: Option<u64>,
    /// Most messages kept for redelivery (and most `encrypt` answers kept for retries)
    /// [default: 50000].
    #[arg(long, value_name = "N")]
    pub redelivery_max_entries: Option<u64>,
    /// Most bytes of `encrypt` answers kept for idempotency keys, all together (oldest dropped
    /// first; an answer larger than this is not kept) [default: 67108864].
    #[arg(long, value_name = "BYTES")]
    pub idempotency_max_bytes: Option<u64>,
}

impl RedeliveryArgs {
    /// The configuration in force: these flags, else the config file's keys, else the defaults.
    pub fn resolve(self, file: &FileConfig) -> RedeliveryConfig {
        let d = RedeliveryConfig::default();
        RedeliveryConfig {
            retention_secs: self
                .redelivery_retention
                .or(file.redelivery_retention)
                .unwrap_or(d.retention_secs),
            max_entries: self
                .redelivery_max_entries
                .or(file.redelivery_max_entries)
                .unwrap_or(d.max_entries),
            idempotency_max_bytes: self
                .idempotency_max_bytes
                .or(file.idempotency_max_bytes)
                .unwrap_or(d.idempotency_max_bytes),
        }
    }
}

/// Default `--max-file-bytes`: the largest file (its plaintext) a transfer takes, 4 GiB.
/// Decryption keeps 16 bytes per chunk of the file between its two passes (64 KiB per GiB at
/// the default chunk size); GCM itself stops at 64 GiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 4 << 30;
/// Default `--file-chunk-bytes`: 256 KiB, about 350 KB of base64 per request and answer line.
pub const DEFAULT_FILE_CHUNK_BYTES: usize = 256 * 1024;
/// The smallest chunk `--file-chunk-bytes` may set.
pub const MIN_FILE_CHUNK_BYTES: usize = 4096;
/// Room left beside a chunk's base64 in a request or answer line, for the rest of the JSON.
pub const FILE_CHUNK_LINE_OVERHEAD: usize = 1024;
/// Default `--max-file-transfers`: transfers open at once in the daemon.
pub const DEFAULT_MAX_FILE_TRANSFERS: usize = 16;
/// Default `--max-file-transfers-per-connection`.
pub const DEFAULT_MAX_FILE_TRANSFERS_PER_CONNECTION: usize = 4;
/// Default `--file-idle-timeout` (seconds): a transfer that gets no call for this long is
/// dropped. Long enough for a client that uploads each encrypted chunk over a slow link before
/// asking for the next.
pub const DEFAULT_FILE_IDLE_TIMEOUT_SECS: u64 = 300;

/// The bounds of file transfers (`file.*` methods).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimits {
    /// Largest plaintext a transfer takes, in bytes.
    pub max_file_bytes: u64,
    /// Bytes of the file per chunk call (the last chunk may be shorter).
    pub chunk_bytes: usize,
    /// Transfers open at once in the daemon.
    pub max_transfers: usize,
    /// Transfers open at once on one connection.
    pub max_transfers_per_connection: usize,
    /// Seconds after which a transfer without calls is dropped.
    pub idle_timeout_secs: u64,
}

impl Default for FileLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            chunk_bytes: DEFAULT_FILE_CHUNK_BYTES,
            max_transfers: DEFAULT_MAX_FILE_TRANSFERS,
            max_transfers_per_connection: DEFAULT_MAX_FILE_TRANSFERS_PER_CONNECTION,
            idle_timeout_secs: DEFAULT_FILE_IDLE_TIMEOUT_SECS,
        }
    }
}

impl FileLimits {
    /// The idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs.max(1))
    }

    /// The chunk size in force: `chunk_bytes`, but never more than fits, base64-encoded with
    /// room for the rest, in a request line of `max_request_bytes` and an answer of
    /// `max_response_bytes` (and at least 1 byte).
    pub fn chunk_len(&self, max_request_bytes: usize, max_response_bytes: usize) -> usize {
        let line = max_request_bytes.min(max_response_bytes);
        let fits = line.saturating_sub(FILE_CHUNK_LINE_OVERHEAD) / 4 * 3;
        self.chunk_bytes.min(fits).max(1)
    }
}

/// The file-transfer flags of `omemod serve` (each also a config-file key of the same name, with
/// `_` for `-`; a flag overrides the file).
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct FileFlags {
    /// Largest file (its plaintext) `file.encrypt.begin` and `file.decrypt.begin` accept, in
    /// bytes [default: 4294967296].
    #[arg(long, value_name = "BYTES")]
    pub max_file_bytes: Option<u64>,
    /// Bytes of a file per chunk call, at least 4096; lowered to what fits base64-encoded in
    /// --max-request-bytes and --max-response-bytes [default: 262144].
    #[arg(long, value_name = "BYTES")]
    pub file_chunk_bytes: Option<usize>,
    /// File transfers open at once in the daemon [default: 16].
    #[arg(long, value_name = "N")]
    pub max_file_transfers: Option<usize>,
    /// File transfers open at once on one connection [default: 4].
    #[arg(long, value_name = "N")]
    pub max_file_transfers_per_connection: Option<usize>,
    /// How long a file transfer may go without a call before it is dropped: seconds, or a number
    /// with s, m, h or d [default: 300].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub file_idle_timeout: Option<u64>,
}

impl FileFlags {
    /// The limits in force: these flags, else the config file's keys, else the defaults.
    pub fn resolve(self, file: &FileConfig) -> FileLimits {
        let d = FileLimits::default();
        FileLimits {
            max_file_bytes: self
                .max_file_bytes
                .or(file.max_file_bytes)
                .unwrap_or(d.max_file_bytes),
            chunk_bytes: self
                .file_chunk_bytes
                .or(file.file_chunk_bytes)
                .unwrap_or(d.chunk_bytes)
                .max(MIN_FILE_CHUNK_BYTES),
            max_transfers: self
                .max_file_transfers
                .or(file.max_file_transfers)
                .unwrap_or(d.max_transfers),
            max_transfers_per_connection: self
                .max_file_transfers_per_connection
                .or(file.max_file_transfers_per_connection)
                .unwrap_or(d.max_transfers_per_connection),
            idle_timeout_secs: self
                .file_idle_timeout
                .or(file.file_idle_timeout)
                .unwrap_or(d.idle_timeout_secs),
        }
    }
}

/// Default `--stale-after-silence`: 42 days, the time after which Conversations drops its own
/// devices that showed no activity from its device list (`Config.OMEMO_AUTO_EXPIRY`): a device
/// switched off for a holiday stays.
pub const DEFAULT_STALE_AFTER_SILENCE_SECS: u64 = 42 * 24 * 3600;
/// Default `--stale-after-unanswered`: 106, after which QXmpp stops encrypting to a device
/// (`UNRESPONDED_STANZAS_UNTIL_ENCRYPTION_IS_STOPPED`): twice the 53 messages by which a device
/// that follows XEP-0384 answers with a heartbeat, so only a device that reads nothing gets there.
pub const DEFAULT_STALE_AFTER_UNANSWERED: u64 = 106;

/// When a remote device is stale: both thresholds passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleConfig {
    /// Seconds since it was last heard from (or first listed).
    pub silence_secs: u64,
    /// Messages sent to it since; 0 turns staleness off.
    pub unanswered: u64,
}

impl Default for StaleConfig {
    fn default() -> Self {
        Self {
            silence_secs: DEFAULT_STALE_AFTER_SILENCE_SECS,
            unanswered: DEFAULT_STALE_AFTER_UNANSWERED,
        }
    }
}

impl StaleConfig {
    /// Whether devices can become stale at all.
    pub fn enabled(&self) -> bool {
        self.unanswered > 0
    }
}

/// The staleness flags of `omemod serve` (each also a config-file key of the same name, with `_`
/// for `-`; a flag overrides the file).
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct StaleArgs {
    /// A device we sent `--stale-after-unanswered` messages without hearing from it is stale
    /// (left out of fan-out until it writes again) once it has also been silent this long:
    /// seconds, or a number with s, m, h or d [default: 42d].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub stale_after_silence: Option<u64>,
    /// Messages sent to a device without an answer before it may be stale; 0 turns staleness
    /// off [default: 106].
    #[arg(long, value_name = "N")]
    pub stale_after_unanswered: Option<u64>,
}

impl StaleArgs {
    /// The thresholds in force: these flags, else the config file's keys, else the defaults.
    pub fn resolve(self, file: &FileConfig) -> StaleConfig {
        let d = StaleConfig::default();
        StaleConfig {
            silence_secs: self
                .stale_after_silence
                .or(file.stale_after_silence)
                .unwrap_or(d.silence_secs),
            unanswered: self
                .stale_after_unanswered
                .or(file.stale_after_unanswered)
                .unwrap_or(d.unanswered),
        }
    }
}

/// A config-file duration: seconds as a number, or a string as the flag takes it (`"7d"`).
fn deserialize_duration<'de, D>(d: D) -> Result<Option<u64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Secs(u64),
        Text(String),
    }
    match Given::deserialize(d)? {
        Given::Secs(n) => Ok(Some(n)),
        Given::Text(t) => parse_duration(&t)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// Parses a duration into seconds: a bare number is seconds; otherwise numbers with the units
/// docs/rpc.md names, s, m, h and d (`7d`, `1h 30m`), read by humantime. Its other units are
/// refused: a month or a year is no whole number of days, and a retention below a second means
/// nothing.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| format!("`{s}`: too large"));
    }
    let unit = s
        .split(|c: char| c.is_ascii_digit() || c.is_whitespace())
        .find(|u| !u.is_empty() && !matches!(*u, "s" | "m" | "h" | "d"));
    if let Some(unit) = unit {
        return Err(format!("`{s}`: unknown unit `{unit}` (use s, m, h or d)"));
    }
    humantime::parse_duration(s)
        .map(|d| d.as_secs())
        .map_err(|e| format!("`{s}`: {e} (expected a number with an optional unit s, m, h or d)"))
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
        c.key_file = c.key_file.map(expand_home);
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

/// `$XDG_RUNTIME_DIR`, else `/run/user/<uid>` when it exists, else `None`.
pub fn runtime_dir() -> Option<PathBuf> {
    if let Some(dir) = non_empty_env_path("XDG_RUNTIME_DIR") {
        return Some(dir);
    }
    let run_user = PathBuf::from(format!("/run/user/{}", crate::socket_trust::current_uid()));
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
        None => PathBuf::from(format!(
            "/tmp/omemod-{}",
            crate::socket_trust::current_uid()
        ))
        .join("omemod.sock"),
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
        let b = BoundsFlags::default().resolve(&c);
        assert_eq!(
            (
                b.max_connections,
                b.partial_line_timeout,
                b.write_stall_timeout,
                b.skipped_key_max_age
            ),
            (7, 8, 9, 2)
        );
        let flags = BoundsFlags {
            max_connections: Some(70),
            ..Default::default()
        };
        let b = flags.resolve(&c);
        assert_eq!((b.max_connections, b.partial_line_timeout), (70, 8));
        let d = BoundsFlags::default().resolve(&FileConfig::default());
        assert_eq!(
            d.max_connections, DEFAULT_MAX_CONNECTIONS,
            "defaults apply without file or flag"
        );
    }

    #[test]
    fn config_file_sets_redelivery_and_flags_override_it() {
        let c = FileConfig::parse(
            "redelivery_retention = \"2h\"\nredelivery_max_entries = 300\n\
             idempotency_max_bytes = 4096\n",
            Path::new("c.toml"),
        )
        .unwrap();
        let r = RedeliveryArgs::default().resolve(&c);
        assert_eq!(
            (r.retention_secs, r.max_entries, r.idempotency_max_bytes),
            (7200, 300, 4096)
        );
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
            (7 * 24 * 3600, DEFAULT_REDELIVERY_MAX_ENTRIES),
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
    fn config_file_sets_file_limits_and_flags_override_it() {
        let c = FileConfig::parse(
            "max_file_bytes = 1000\nfile_chunk_bytes = 8192\nmax_file_transfers = 3\n\
             max_file_transfers_per_connection = 2\nfile_idle_timeout = \"2m\"\n",
            Path::new("c.toml"),
        )
        .unwrap();
        let f = FileFlags::default().resolve(&c);
        assert_eq!(
            f,
            FileLimits {
                max_file_bytes: 1000,
                chunk_bytes: 8192,
                max_transfers: 3,
                max_transfers_per_connection: 2,
                idle_timeout_secs: 120,
            }
        );
        let flags = FileFlags {
            file_chunk_bytes: Some(10),
            max_file_transfers: Some(5),
            ..Default::default()
        };
        let f = flags.resolve(&c);
        assert_eq!((f.chunk_bytes, f.max_transfers), (MIN_FILE_CHUNK_BYTES, 5));
        let d = FileFlags::default().resolve(&FileConfig::default());
        assert_eq!(
            d,
            FileLimits::default(),
            "defaults apply without file or flag"
        );
        // The chunk's base64 and the JSON around it fit in a line.
        let chunk = d.chunk_len(DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_RESPONSE_BYTES);
        assert_eq!(chunk, DEFAULT_FILE_CHUNK_BYTES);
        let small = d.chunk_len(100_000, DEFAULT_MAX_RESPONSE_BYTES);
        assert!(
            small.div_ceil(3) * 4 + FILE_CHUNK_LINE_OVERHEAD <= 100_000,
            "{small}"
        );
        assert_eq!(d.chunk_len(10, 10), 1);
    }

    #[test]
    fn config_file_sets_staleness_and_flags_override_it() {
        let c = FileConfig::parse(
            "stale_after_silence = \"3d\"\nstale_after_unanswered = 20\n",
            Path::new("c.toml"),
        )
        .unwrap();
        let s = StaleArgs::default().resolve(&c);
        assert_eq!((s.silence_secs, s.unanswered), (3 * 86_400, 20));
        let flags = StaleArgs {
            stale_after_unanswered: Some(0),
            ..Default::default()
        };
        let s = flags.resolve(&c);
        assert!(!s.enabled(), "0 turns it off");
        assert_eq!(
            StaleArgs::default().resolve(&FileConfig::default()),
            StaleConfig {
                silence_secs: 42 * 86_400,
                unanswered: 106
            }
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(0));
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("12h"), Ok(43_200));
        assert_eq!(parse_duration("7d"), Ok(DEFAULT_REDELIVERY_RETENTION_SECS));
        assert_eq!(parse_duration("1h 30m"), Ok(5400));
        for bad in ["", "d", "7w", "5ms", "-1", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
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
                "socket" | "db" | "key_file" => "\"/x\"",
                "durability" => "\"full\"",
                "key_source" => "\"key-file\"",
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
