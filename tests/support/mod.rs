//! Test harness shared by the end-to-end and interop tests: real `omemod` daemons (own
//! database and socket each) driven over their socket through omemod-client ([`Client`]), raw
//! sockets for the tests of the framing itself ([`Wire`]), and the python-omemo peer.
#![allow(dead_code)]

use omemod_client::blocking::Client as Connection;
use omemod_client::RpcError;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

pub const OMEMO2: &str = "urn:xmpp:omemo:2";
pub const OLDMEMO: &str = "eu.siacs.conversations.axolotl";
pub const BOTH: [&str; 2] = [OMEMO2, OLDMEMO];
/// A session bus address that reaches nothing: the daemons of the tests see no desktop keyring.
pub const NO_SESSION_BUS: &str = "unix:path=/nonexistent/omemod-tests-no-bus";

/// The blobs `sql` selects (its first column) from the database at `db`, opened read-only
/// and closed again (an open reader would hold back WAL truncation).
pub fn blobs(db: &Path, sql: &str) -> Vec<Vec<u8>> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open db");
    let mut stmt = conn.prepare(sql).expect("prepare");
    let rows = stmt
        .query_map([], |r| r.get(0))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    rows
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The seed of a randomized test: `OMEMOD_TEST_SEED` overrides `default`; printed so that a
/// failure can be replayed.
pub fn seed(default: u64) -> u64 {
    let s = std::env::var("OMEMOD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    eprintln!("seed = {s} (set OMEMOD_TEST_SEED to replay)");
    s
}

/// A running daemon with its own state directory.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub db: PathBuf,
    child: Option<Child>,
    /// Extra `serve` arguments (used by the next `spawn`).
    pub extra: Vec<String>,
    /// A command the daemon runs under (e.g. `prlimit --nofile=…`), empty for none.
    pub wrapper: Vec<String>,
}

impl Daemon {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("run/omemod.sock");
        let db = dir.path().join("state/omemod.db");
        let mut d = Daemon {
            dir,
            socket,
            db,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            wrapper: Vec::new(),
        };
        d.spawn();
        d
    }

    /// Starts the daemon under `wrapper` (a command that execs its arguments, like `prlimit`).
    pub fn start_wrapped(wrapper: &[&str], extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("run/omemod.sock");
        let db = dir.path().join("state/omemod.db");
        let mut d = Daemon {
            dir,
            socket,
            db,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
        };
        d.spawn();
        d
    }

    /// Starts the process (again) on the same database and socket.
    pub fn spawn(&mut self) {
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_omemod"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_omemod")),
        };
        cmd.arg("serve")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--db")
            .arg(&self.db)
            .args(&self.extra)
            // The user's own config file and systemd's directories must not leak into a test.
            // The key file goes under it: outside the database's directory, as it must.
            .env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            // Nor the desktop's keyring: a Secret Service there would be chosen as key source.
            .env("DBUS_SESSION_BUS_ADDRESS", NO_SESSION_BUS)
            .env_remove("OMEMOD_CONFIG")
            .env_remove("STATE_DIRECTORY")
            .env_remove("RUNTIME_DIRECTORY")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = cmd.spawn().expect("start omemod");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(c) = Connection::connect(&self.socket) {
                if c.call("status", json!({})).is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "omemod did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket)
    }

    /// A raw connection, for tests of the framing.
    pub fn wire(&self) -> Wire {
        Wire::connect(&self.socket)
    }

    /// SIGKILL, no cleanup.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        c.wait().ok()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A connection through omemod-client, with the tests' shorthands. Answers are the daemon's
/// JSON: `Ok(result)` or `Err(error object)`; anything else (the connection broke, no answer
/// within 60 s) fails the test.
pub struct Client {
    conn: Connection,
}

/// The JSON-RPC error object of an error answer.
pub fn error_object(e: &RpcError) -> Value {
    json!({"code": e.code, "message": e.message, "data": e.data})
}

impl Client {
    pub fn connect(socket: &Path) -> Self {
        let mut conn = Connection::connect(socket)
            .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
        conn.set_timeout(Some(Duration::from_secs(60)));
        Client { conn }
    }

    /// The omemod-client connection itself.
    pub fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Calls a method: `Ok(result)` or `Err(error object)`.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        match self.conn.call(method, params) {
            Ok(v) => Ok(v),
            Err(omemod_client::Error::Rpc(e)) => Err(error_object(&e)),
            Err(e) => panic!("{method}: {e}"),
        }
    }

    /// Calls in one JSON-RPC batch: each answer, in the order of `calls`.
    pub fn batch(&mut self, calls: &[(&str, Value)]) -> Vec<Result<Value, Value>> {
        let answers = self
            .conn
            .batch(calls)
            .unwrap_or_else(|e| panic!("batch: {e}"));
        answers
            .into_iter()
            .map(|a| a.map_err(|e| error_object(&e)))
            .collect()
    }

    /// The next event object pushed to this connection (after `subscribe`), waiting at most 60 s.
    pub fn event(&mut self) -> Option<Value> {
        self.conn
            .next_event(Duration::from_secs(60))
            .map(|pushed| pushed.raw)
    }

    /// Calls and expects success.
    pub fn ok(&mut self, method: &str, params: Value) -> Value {
        self.call(method, params)
            .unwrap_or_else(|e| panic!("{method} failed: {e}"))
    }

    /// Calls and expects an error of `kind`.
    pub fn err(&mut self, method: &str, params: Value, kind: &str) -> Value {
        match self.call(method, params) {
            Ok(v) => panic!("{method} succeeded, expected {kind}: {v}"),
            Err(e) => {
                assert_eq!(e["data"]["kind"], kind, "{method}: {e}");
                e
            }
        }
    }

    /// Creates the account; returns its device id.
    pub fn create_account(&mut self, jid: &str) -> u32 {
        let r = self.ok("account.create", json!({"jid": jid}));
        r["device_id"].as_u64().expect("device id") as u32
    }

    pub fn bundle(&mut self, ns: &str) -> Value {
        self.ok("bundle.get", json!({"namespace": ns}))
    }

    pub fn devicelist(&mut self, ns: &str) -> Value {
        self.ok("devicelist.get", json!({"namespace": ns}))
    }

    /// Feeds `other`'s published device list and bundle (as `jid`) into this daemon.
    pub fn learn(&mut self, jid: &str, other: &mut Client, namespaces: &[&str]) {
        for ns in namespaces {
            let list = other.devicelist(ns);
            self.ok(
                "devicelist.update",
                json!({"jid": jid, "namespace": ns, "xml": list["xml"]}),
            );
            let b = other.bundle(ns);
            self.ok(
                "bundle.update",
                json!({"jid": jid, "namespace": ns, "device_id": b["device_id"], "xml": b["xml"]}),
            );
        }
    }

    /// Encrypts `body` to `to` in exactly `ns`; returns the `<encrypted>` XML.
    pub fn encrypt_xml(&mut self, to: &[&str], body: Option<&str>, ns: &str) -> String {
        let mut p = json!({"to": to, "namespaces": [ns]});
        if let Some(b) = body {
            p["body"] = json!(b);
        }
        let r = self.ok("encrypt", p);
        let msgs = r["messages"].as_array().expect("messages");
        let m = msgs
            .iter()
            .find(|m| m["namespace"] == ns)
            .unwrap_or_else(|| panic!("no {ns} message: {r}"));
        m["xml"].as_str().expect("xml").to_owned()
    }

    pub fn decrypt(&mut self, from: &str, xml: &str) -> Result<Value, Value> {
        self.call("decrypt", json!({"from": from, "xml": xml}))
    }
}

/// A raw socket to a daemon, for the tests of the framing itself (bytes that are not JSON-RPC,
/// partial lines, pipelining by hand): what goes out is exactly what the test writes, and what
/// comes back is read line by line.
pub struct Wire {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Wire {
    pub fn connect(socket: &Path) -> Self {
        Self::from_stream(UnixStream::connect(socket).expect("connect"))
    }

    pub fn from_stream(s: UnixStream) -> Self {
        s.set_read_timeout(Some(Duration::from_secs(60))).ok();
        Wire {
            reader: BufReader::new(s.try_clone().expect("clone")),
            writer: s,
        }
    }

    /// Sends one raw line and reads one line back (`None` on EOF).
    pub fn raw(&mut self, line: &str) -> Option<Value> {
        self.send_raw(line);
        self.read()
    }

    /// Bytes without a newline (a partial line).
    pub fn send_raw_no_newline(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).expect("write");
    }

    /// The underlying socket.
    pub fn stream(&self) -> &UnixStream {
        &self.writer
    }

    pub fn send_raw(&mut self, line: &str) {
        self.writer.write_all(line.as_bytes()).expect("write");
        self.writer.write_all(b"\n").expect("write");
    }

    pub fn read(&mut self) -> Option<Value> {
        let mut buf = String::new();
        match self.reader.read_line(&mut buf) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&buf).expect("reply is JSON")),
        }
    }
}

/// The python interpreter of the interop venv.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("OMEMOD_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = repo().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "the python-omemo venv is missing: run scripts/setup-python (or set OMEMOD_PYTHON)"
    );
    venv
}

/// A python-omemo peer process (tests/interop/peer.py).
pub struct PyPeer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub jid: String,
    pub device_id: u32,
    _dir: tempfile::TempDir,
}

impl PyPeer {
    pub fn start(jid: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(python())
            .arg(repo().join("tests/interop/peer.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python peer");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut p = PyPeer {
            child,
            stdin,
            stdout,
            jid: jid.to_owned(),
            device_id: 0,
            _dir: dir,
        };
        let storage = p._dir.path().join("state.json");
        let r = p.ok(json!({"cmd": "init", "jid": jid, "storage": storage}));
        p.device_id = r["device_id"].as_u64().expect("device id") as u32;
        p
    }

    /// Sends one command; returns the whole reply (check `ok` yourself).
    pub fn cmd(&mut self, c: Value) -> Value {
        writeln!(self.stdin, "{c}").expect("write to peer");
        self.stdin.flush().expect("flush");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read from peer");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("peer reply {line:?}: {e}"))
    }

    pub fn ok(&mut self, c: Value) -> Value {
        let r = self.cmd(c.clone());
        assert_eq!(r["ok"], true, "peer command {c} failed: {r}");
        r
    }

    pub fn devicelist(&mut self, ns: &str) -> String {
        self.ok(json!({"cmd": "devicelist", "ns": ns}))["xml"]
            .as_str()
            .expect("xml")
            .to_owned()
    }

    pub fn bundle(&mut self, ns: &str) -> String {
        self.ok(json!({"cmd": "bundle", "ns": ns}))["xml"]
            .as_str()
            .expect("xml")
            .to_owned()
    }
}

impl Drop for PyPeer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"cmd": "quit"}));
        let _ = self.child.wait();
    }
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Runs `run` while a thread samples `measure(pid)` every 2 ms; the highest sample.
pub fn peak_while(pid: u32, measure: fn(u32) -> u64, run: impl FnOnce()) -> u64 {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(measure(pid));
                std::thread::sleep(Duration::from_millis(2));
            }
            peak.max(measure(pid))
        })
    };
    run();
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler")
}

/// Prekey ids of a `<bundle>` (either namespace).
pub fn prekey_ids(xml: &str) -> std::collections::BTreeSet<u32> {
    let attr = if xml.contains("<pk ") {
        "<pk id="
    } else {
        "<preKeyPublic preKeyId="
    };
    xml.match_indices(attr)
        .map(|(i, _)| {
            let rest = &xml[i + attr.len() + 1..];
            rest[..rest.find(['\'', '"']).unwrap()]
                .parse()
                .expect("prekey id")
        })
        .collect()
}

/// Temp path helper.
pub fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Checks that `again` is the redelivery of the first answer `first`: same content and sender,
/// marked `redelivered` with the first decryption's time, and no follow-up actions.
pub fn assert_redelivery(first: &Value, again: &Value) {
    assert_eq!(again["redelivered"], true, "{again}");
    assert!(
        again["first_decrypted_at"].as_i64().is_some_and(|t| t > 0),
        "{again}"
    );
    assert_eq!(again["actions"], json!([]), "{again}");
    for k in [
        "namespace",
        "body",
        "content_xml",
        "envelope",
        "empty",
        "key_exchange",
    ] {
        assert_eq!(first[k], again[k], "{k}: {first} vs {again}");
    }
    assert_eq!(first["sender"]["jid"], again["sender"]["jid"]);
    assert_eq!(first["sender"]["device_id"], again["sender"]["device_id"]);
    assert_eq!(
        first["sender"]["fingerprint"],
        again["sender"]["fingerprint"]
    );
}
