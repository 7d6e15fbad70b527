//! The daemon's resource bounds (issue 11) that are not tied to one module: the fixed limits on
//! device lists, the open-file limit, off-thread parsing of large inputs, and the rate limit on
//! repeated log lines. The bounds set by flags are in `config.rs`; docs/rpc.md "Limits"
//! lists every bound with its default, its flag and what happens when it is reached.

use std::time::{Duration, Instant};

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
