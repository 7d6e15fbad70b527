//! systemd socket activation: a listening socket handed over in `LISTEN_FDS` is used as is,
//! and left in place on shutdown (it belongs to systemd).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn serves_a_socket_handed_over_by_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("activated.sock");
    let db = dir.path().join("state/omemod.db");
    // systemd-socket-activate listens, then starts omemod with LISTEN_FDS=1 on the first
    // connection, exactly as systemd does for omemod.socket.
    let mut activator = Command::new("systemd-socket-activate")
        .arg("--listen")
        .arg(&sock)
        .arg(env!("CARGO_BIN_EXE_omemod"))
        .arg("serve")
        .arg("--db")
        .arg(&db)
        .arg("--socket")
        .arg(dir.path().join("not-used.sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("systemd-socket-activate not found: install systemd (Debian package systemd; `scripts/test-deps` does)");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut client = loop {
        if let Ok(c) = omemod_client::blocking::Client::connect(&sock) {
            break c;
        }
        assert!(Instant::now() < deadline, "activator did not listen");
        std::thread::sleep(Duration::from_millis(20));
    };
    client.set_timeout(Some(Duration::from_secs(20)));
    let v = client
        .call("status", serde_json::json!({}))
        .expect("status");
    assert!(v["pid"].as_u64().is_some(), "{v}");
    // It did not create its own socket.
    assert!(!dir.path().join("not-used.sock").exists());
    // The database was created at the given path, private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(activator.id().to_string())
        .status();
    // systemd-socket-activate execs omemod in its own process: SIGTERM reaches omemod, which
    // exits cleanly and leaves systemd's socket file alone.
    let status = activator.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        sock.exists(),
        "a socket handed over by systemd is not removed"
    );
}
