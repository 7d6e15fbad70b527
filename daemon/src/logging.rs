//! Where logs go: journald (with its priorities) when stderr is connected to the journal, else
//! stderr as text, with colours only on a terminal. Secrets never reach a log at any level: no
//! dependency logs request contents, and omemod logs no params or results.

use std::io::IsTerminal;
use std::os::fd::AsFd;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

/// Whether stderr is the journal stream systemd connected us to (`$JOURNAL_STREAM` is
/// `device:inode` of that stream; a child inheriting the variable but not the stream must not
/// use the journal).
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match rustix::fs::fstat(std::io::stderr().as_fd()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// Installs the global subscriber; `default` is the filter when `RUST_LOG` is unset.
pub fn init(default: &str) {
    if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(layer) => {
                let _ = tracing_subscriber::registry()
                    .with(filter(default))
                    .with(layer.with_syslog_identifier("omemod".into()))
                    .try_init();
                return;
            }
            Err(e) => eprintln!("omemod: journald unavailable ({e}); logging to stderr"),
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(default))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
