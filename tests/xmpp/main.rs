//! End-to-end test on a real XMPP server: the example client `client-examples/xmpp-bot/`
//! (slixmpp with the `omemod` plugin of `client-examples/python`: OMEMO entirely by omemod over
//! its socket) chats with an independent stack (slixmpp-omemo / python-omemo from PyPI) through
//! a private prosody on 127.0.0.1.
//!
//! Each test runs one scenario of `tests/xmpp/driver.py` in one namespace; the driver starts its
//! own prosody (config and data in a temp dir), registers the accounts, starts the omemod daemons
//! (this crate's binary) and fails when a message does not arrive decrypted. The Python side runs
//! in `.venv-xmpp` (`scripts/setup-python-xmpp`, pinned in `tests/xmpp/requirements.txt`).
//!
//! The `poezio` scenarios run the console client poezio (its own venv, `scripts/setup-python-poezio`,
//! pinned in `tests/xmpp/poezio-requirements.txt`) with the omemod plugin in a tmux terminal.
//!
//! Needs `prosody` and `prosodyctl` on PATH (Debian package `prosody`), and for poezio `tmux`,
//! `openssl` and what building poezio needs (`gcc`, `pkg-config`, `python3-dev`);
//! `scripts/test-deps` installs them.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The scenarios share two CPU cores with everything else: run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());
static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
static POEZIO_PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();

const TIMEOUT: Duration = Duration::from_secs(420);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A venv's python: `$var`, else built (once) by `scripts/<setup>`, which prints it last.
fn venv_python(cell: &OnceLock<Result<PathBuf, String>>, var: &str, setup: &str) -> PathBuf {
    let r = cell.get_or_init(|| {
        if let Ok(p) = std::env::var(var) {
            return Ok(PathBuf::from(p));
        }
        let out = Command::new(repo().join("scripts").join(setup))
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("scripts/{setup}: {e}"))?;
        if !out.status.success() {
            return Err(format!("scripts/{setup} failed"));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().last().unwrap_or_default().trim().to_string();
        Ok(PathBuf::from(last))
    });
    match r {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// Fails with the package to install when `tool` is not on PATH.
fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} not found: the XMPP end-to-end test needs it (Debian package {package}; `scripts/test-deps` installs it)"
    );
}

fn run(scenario: &str, namespace: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require("prosody", "prosody");
    require("prosodyctl", "prosody");
    let mut driver = Command::new(venv_python(
        &PYTHON,
        "OMEMOD_XMPP_PYTHON",
        "setup-python-xmpp",
    ));
    if scenario == "poezio" {
        require("tmux", "tmux");
        require("openssl", "openssl");
        driver.env(
            "OMEMOD_POEZIO_PYTHON",
            venv_python(
                &POEZIO_PYTHON,
                "OMEMOD_POEZIO_PYTHON",
                "setup-python-poezio",
            ),
        );
    }
    let mut child = driver
        .arg(repo().join("tests/xmpp/driver.py"))
        .arg(scenario)
        .arg(namespace)
        .env("OMEMOD_BIN", env!("CARGO_BIN_EXE_omemod"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the XMPP test driver");
    // Drain both pipes in threads so that a chatty driver never blocks on a full pipe.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for the driver") {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = t_out.join().unwrap_or_default();
    let stderr = t_err.join().unwrap_or_default();
    match status {
        Some(s) if s.success() && stdout.contains(&format!("ok {scenario} {namespace}")) => {}
        Some(s) => panic!("{scenario} {namespace}: driver exited with {s}\n{stdout}\n{stderr}"),
        None => panic!("{scenario} {namespace}: timed out after {TIMEOUT:?}\n{stdout}\n{stderr}"),
    }
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        mod omemo2 {
            $( #[test] fn $name() { super::run(stringify!($name), "omemo2"); } )*
        }
        mod oldmemo {
            $( #[test] fn $name() { super::run(stringify!($name), "oldmemo"); } )*
        }
    };
}

// chat: first contact from the example client, several messages each way, empty messages.
// restart_archive: first contact from python-omemo, omemod restarted mid-chat, the archive (MAM)
//   read by the example client after it was offline.
// two_processes: two processes (resources) of the example client on one omemod.
// own_archive: a process of the example client reads from the archives (MAM: the account's,
//   a room's) what another process on its omemod sent while it was offline, as its own, once.
// group: a members-only, non-anonymous room: two example clients (two omemods) and python-omemo.
// carbons: the example client decrypts the carbons of what another device of its account
//   (python-omemo) receives and sends.
// files: encrypted files (XEP-0454) on the server's HTTP upload (XEP-0363), both ways: the
//   example client's upload opened by python-omemo's peer with `cryptography`, and the reverse.
// poezio: the console client poezio with the omemod plugin, driven in tmux, and python-omemo.
// unlisted_sender: a non-member's device relayed under a member's name (tests/xmpp/unlisted.py).
scenarios!(
    chat,
    restart_archive,
    two_processes,
    own_archive,
    group,
    carbons,
    files,
    poezio,
    unlisted_sender
);
