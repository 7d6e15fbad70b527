//! The daemon's resource bounds (issue 11) that are not tied to one module: connection limits,
//! the open-file limit, and the rate limit on repeated log lines. docs/rpc.md "Limits" lists
//! every bound with its default, its flag and what happens when it is reached.

use std::time::{Duration, Instant};

use clap::Args;

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
/// File descriptors kept free for the database, its WAL and the listening socket.
const RESERVED_FDS: u64 = 64;
/// Smallest queue of answers per connection (bytes); larger when responses may be larger.
pub const MIN_QUEUED_ANSWER_BYTES: usize = 1024 * 1024;

/// Most devices one device list may name; a longer list is refused with `too_many_devices`.
pub const MAX_DEVICES_PER_LIST: usize = 500;
/// Most devices of one contact (and namespace) kept after they dropped out of its list; the ones
/// dropped longest ago are deleted first.
pub const MAX_INACTIVE_DEVICES_PER_LIST: usize = 500;
/// Devices that dropped out of a list are deleted after this long (90 days).
pub const DROPPED_DEVICE_RETENTION_SECS: i64 = 90 * 24 * 3600;

/// Refuses a device list longer than [`MAX_DEVICES_PER_LIST`].
pub fn check_devicelist_len(count: usize) -> Result<(), crate::manager::ManagerError> {
    if count > MAX_DEVICES_PER_LIST {
        return Err(crate::manager::ManagerError::TooManyDevices {
            count,
            max: MAX_DEVICES_PER_LIST,
        });
    }
    Ok(())
}

/// Inputs at least this large are parsed on the blocking pool rather than on the runtime thread
/// that reads and answers every connection (a small one parses in microseconds, less than the
/// hand-over would cost).
pub const OFF_THREAD_PARSE_BYTES: usize = 16 * 1024;

/// Runs `parse` on the blocking pool when the input is `len` bytes or more, else right here, so
/// that one client's large document does not hold up another client's `status`. `None` only if
/// the parser panicked (it must not).
pub async fn parse_off_thread<T: Send + 'static>(
    len: usize,
    parse: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    if len < OFF_THREAD_PARSE_BYTES {
        return Some(parse());
    }
    tokio::task::spawn_blocking(parse).await.ok()
}

/// Bounds that `omemod serve` takes from the command line (each also a config-file key of the
/// same name, with `_` for `-`; a flag overrides the file).
#[derive(Debug, Clone, Copy, Default, Args)]
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
    pub fn resolve(self, file: &crate::config::FileConfig) -> BoundsArgs {
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

/// Raises the soft open-file limit to the hard limit (systemd's default soft limit is 1,024) and
/// returns how many connections fit under it: `max_connections`, or fewer when the file limit
/// leaves no room for them and their [`eviction_slack`] (then a warning says so).
pub fn raise_nofile_limit(max_connections: usize) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        let raised = Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                tracing::debug!(from = ?lim.current, to = ?lim.maximum, "open-file limit raised");
                lim.current = lim.maximum;
            }
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
        }
    }
    let Some(soft) = lim.current else {
        return max_connections.max(1);
    };
    // Evicted connections take a moment to close: leave room for `eviction_slack` of them.
    let fds = usize::try_from(soft.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
    let room = fds / 5 * 4;
    if room < max_connections {
        tracing::warn!(
            open_files = soft,
            max_connections,
            effective = room.max(1),
            "the open-file limit leaves room for fewer connections than --max-connections"
        );
    }
    max_connections.min(room).max(1)
}

/// Connections that may be closing (evicted) beyond `max_connections` before the daemon stops
/// accepting until some are gone: a burst of new clients waits in the listen backlog instead of
/// running the process out of descriptors.
pub fn eviction_slack(max_connections: usize) -> usize {
    (max_connections / 4).max(1)
}

/// Logs a repeated warning at most once per `every`, counting the ones it held back.
#[derive(Debug)]
pub struct RateLimitedLog {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    /// A limiter that lets one line through per `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(number of lines held back since the last one)` when a line may be logged now.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_lines_are_held_back_and_counted() {
        let mut log = RateLimitedLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(log.allow(t0), Some(0));
        for i in 1..=600 {
            assert_eq!(log.allow(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(log.allow(t0 + Duration::from_secs(11)), Some(600));
    }
}
