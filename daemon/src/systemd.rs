//! systemd integration: socket activation (`LISTEN_FDS`) and readiness notification
//! (`READY=1`, `STOPPING=1`). Both are no-ops when not run by systemd.

use std::os::unix::net::UnixListener;

/// The first socket systemd passed us, if it is a Unix stream listener.
pub fn take_activated_listener() -> std::io::Result<Option<UnixListener>> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    if fds.len() > 1 {
        tracing::warn!(
            count = fds.len(),
            "systemd passed several sockets; using the first"
        );
    }
    fds.take_unix_listener(0)
}

/// Tells systemd we are listening.
pub fn notify_ready() {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "sd_notify READY=1 failed");
    }
}

/// Tells systemd we are shutting down.
pub fn notify_stopping() {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Stopping]) {
        tracing::warn!(error = %e, "sd_notify STOPPING=1 failed");
    }
}
