//! Starts the real `omemod` binary on a private socket, and talks to it through omemod-client
//! ([`Daemon::client`]) or, for the tests of the transport itself, line by line ([`Wire`]).

#![allow(dead_code)] // Each test file uses a different part of this helper.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use omemod_client::blocking::Client;
use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_omemod");

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("omemod-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running daemon, killed on drop.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    pub dir: TempDir,
    /// `XDG_CONFIG_HOME`: the key file must not be in the database's directory.
    pub config: TempDir,
}

impl Daemon {
    /// Starts `omemod serve --enable-debug-methods` with extra args and waits until it answers.
    pub fn start(extra: &[&str]) -> Self {
        let dir = TempDir::new();
        let config = TempDir::new();
        // A sub-directory that the daemon creates itself (to check its mode).
        let socket = dir.0.join("run").join("omemod.sock");
        let log = std::fs::File::create(dir.0.join("daemon.log")).expect("log file");
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .arg("--db")
            .arg(dir.0.join("omemod.db"))
            .arg("--enable-debug-methods")
            .args(extra)
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("NOTIFY_SOCKET")
            // The user's own config file must not leak into a test.
            .env("XDG_CONFIG_HOME", &config.0)
            // Nor the desktop's keyring (a running Secret Service would be the key source).
            .env(
                "DBUS_SESSION_BUS_ADDRESS",
                "unix:path=/nonexistent/omemod-tests-no-bus",
            )
            .env_remove("OMEMOD_CONFIG")
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn omemod");
        let mut d = Daemon {
            child,
            socket,
            dir,
            config,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&d.socket).is_err() {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("omemod exited early with {status}: {}", d.log());
            }
            assert!(
                Instant::now() < deadline,
                "omemod did not start: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("daemon.log")).unwrap_or_default()
    }

    /// A connection through omemod-client (answers within 10 s).
    pub fn client(&self) -> Client {
        let mut c = Client::connect(&self.socket).expect("connect");
        c.set_timeout(Some(Duration::from_secs(10)));
        c
    }

    /// A raw connection, for the tests of the framing.
    pub fn wire(&self) -> Wire {
        Wire::connect(&self.socket)
    }

    /// Sends SIGTERM and waits (at most 10 s) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(st.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "omemod did not exit after SIGTERM: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw connection for the tests of the transport itself: the test writes the bytes and
/// reads the lines, so that it sees exactly what is on the wire (order, ids, notifications).
pub struct Wire {
    pub writer: UnixStream,
    pub reader: BufReader<UnixStream>,
    next_id: u64,
}

impl Wire {
    pub fn connect(path: &Path) -> Self {
        let s = UnixStream::connect(path).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let reader = BufReader::new(s.try_clone().expect("clone"));
        Wire {
            writer: s,
            reader,
            next_id: 1000,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write");
    }

    pub fn send_line(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes());
    }

    pub fn send(&mut self, v: &Value) {
        self.send_line(&v.to_string());
    }

    /// Reads one line as JSON; `None` at end of stream or on timeout.
    pub fn recv_opt(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}")),
            ),
        }
    }

    pub fn recv(&mut self) -> Value {
        self.recv_opt().expect("expected a line from the daemon")
    }

    /// Nothing arrives within `wait`.
    pub fn expect_silence(&mut self, wait: Duration) {
        self.writer.set_read_timeout(Some(wait)).expect("timeout");
        let got = self.recv_opt();
        self.writer
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        assert_eq!(got, None, "expected no line");
    }

    /// Writes a request line with a fresh numeric id; returns the id.
    pub fn request(&mut self, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    /// Writes a request; the next line on the wire must be its answer (nothing before it).
    pub fn next_answer(&mut self, method: &str, params: Value) -> Value {
        let id = self.request(method, params);
        let v = self.recv();
        assert_eq!(v["id"], json!(id), "the next line is not the answer: {v}");
        v
    }
}

/// The daemon's error answer to a call through omemod-client.
pub fn rpc_error(r: Result<Value, omemod_client::Error>) -> omemod_client::RpcError {
    match r {
        Err(omemod_client::Error::Rpc(e)) => e,
        other => panic!("expected an error answer, got {other:?}"),
    }
}

/// `error.data.kind` of an answer.
pub fn kind(v: &Value) -> &str {
    v["error"]["data"]["kind"].as_str().unwrap_or("")
}
