//! The `omemod` process under test (release binary, its own temp dir, WAL database), and the
//! bench's calls on it through omemod-client's blocking client.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use omemod_client::blocking::Client as Connection;
use protocol_core::bundle::Bundle;
use protocol_core::xml::{bundle_from_xml, devicelist_to_xml, DeviceListEntry};
use protocol_core::Version;
use serde_json::{json, Value};

use crate::config::Cfg;
use crate::peer::Device;
use crate::BODY;

pub struct Daemon {
    dir: tempfile::TempDir,
    socket: PathBuf,
    db: PathBuf,
    durability: String,
    bin: PathBuf,
    /// More `serve` arguments.
    args: Vec<String>,
    child: Option<Child>,
}

impl Daemon {
    pub fn start(cfg: &Cfg, durability: &str) -> Self {
        Self::start_bin(&cfg.bin, durability)
    }

    pub fn start_bin(bin: &std::path::Path, durability: &str) -> Self {
        let mut d = Self::new(bin, None, durability, &[]);
        d.spawn();
        d
    }

    /// A daemon (not started) on the database `db` (in its own temp dir when `None`), served
    /// with `args` besides the socket, database and durability.
    pub fn new(
        bin: &std::path::Path,
        db: Option<PathBuf>,
        durability: &str,
        args: &[&str],
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("omemod-bench-")
            .tempdir()
            .expect("tempdir");
        Daemon {
            socket: dir.path().join("run/omemod.sock"),
            db: db.unwrap_or_else(|| dir.path().join("state/omemod.db")),
            dir,
            durability: durability.to_owned(),
            bin: bin.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
        }
    }

    /// Starts the process; returns the time until it answered `status`.
    pub fn spawn(&mut self) -> Duration {
        let t = Instant::now();
        let child = Command::new(&self.bin)
            .arg("serve")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--db")
            .arg(&self.db)
            .arg("--durability")
            .arg(&self.durability)
            .args(&self.args)
            .env("RUST_LOG", "warn")
            // The data key's file (issue 24) in the daemon's own directory, not the user's.
            .env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            // Nor in the desktop's keyring (a running Secret Service would be chosen).
            .env(
                "DBUS_SESSION_BUS_ADDRESS",
                "unix:path=/nonexistent/omemod-bench-no-bus",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start omemod");
        self.child = Some(child);
        let deadline = t + Duration::from_secs(60);
        loop {
            if let Ok(c) = Client::connect(&self.socket) {
                if c.conn.call("status", json!({})).is_ok() {
                    return t.elapsed();
                }
            }
            assert!(Instant::now() < deadline, "omemod did not come up");
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket).expect("connect")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// VmRSS in KiB.
    pub fn rss_kib(&self) -> f64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }

    /// Bytes in use by the database (pages not on the free list, WAL content included).
    pub fn db_used_bytes(&self) -> f64 {
        let c = rusqlite::Connection::open_with_flags(
            &self.db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open db");
        let q = |p: &str| -> i64 {
            c.query_row(&format!("PRAGMA {p}"), [], |r| r.get(0))
                .unwrap()
        };
        ((q("page_count") - q("freelist_count")) * q("page_size")) as f64
    }

    pub fn file_bytes(&self) -> f64 {
        let mut total = 0u64;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.db.as_os_str().to_owned();
            p.push(suffix);
            total += std::fs::metadata(PathBuf::from(p))
                .map(|m| m.len())
                .unwrap_or(0);
        }
        total as f64
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = &self.dir;
    }
}

/// A call made ready before it is timed: method and params.
pub type Call = (&'static str, Value);

/// One connection to the daemon through omemod-client, with the bench's shorthands. Any error
/// answer fails the run: the bench measures operations that succeed.
pub struct Client {
    conn: Connection,
}

impl Client {
    fn connect(socket: &std::path::Path) -> Result<Client, omemod_client::Error> {
        let mut conn = Connection::connect(socket)?;
        conn.set_timeout(Some(Duration::from_secs(120)));
        Ok(Client { conn })
    }

    /// Makes the call; its result, or the run fails.
    pub fn ok(&self, method: &str, params: Value) -> Value {
        self.conn
            .call(method, params)
            .unwrap_or_else(|e| panic!("{method} failed: {e}"))
    }

    /// Makes a prepared call; its result, or the run fails.
    pub fn ok_call(&self, (method, params): Call) -> Value {
        self.ok(method, params)
    }

    /// Makes a prepared call: (nanoseconds from the call to its result, the result).
    pub fn timed(&self, (method, params): Call) -> (u64, Value) {
        let t = Instant::now();
        let r = self.conn.call(method, params);
        let ns = t.elapsed().as_nanos() as u64;
        (ns, r.unwrap_or_else(|e| panic!("{method} failed: {e}")))
    }

    /// Runs many calls as JSON-RPC batches of 256 (they run concurrently in the daemon).
    pub fn batch(&self, calls: Vec<(&'static str, Value)>) {
        for chunk in calls.chunks(256) {
            for answer in self.conn.batch(chunk).expect("batch") {
                if let Err(e) = answer {
                    panic!("batched call failed: {e}");
                }
            }
        }
    }

    pub fn own_bundle(&self, ns: Version) -> Bundle {
        let r = self.ok("bundle.get", json!({"namespace": ns.namespace()}));
        bundle_from_xml(ns, r["xml"].as_str().expect("xml")).expect("our bundle parses")
    }

    /// Tells the daemon about `devs` (all of one JID): device list + bundles.
    pub fn learn(&self, devs: &[&Device]) {
        let ns = devs[0].version;
        let list: Vec<DeviceListEntry> = devs
            .iter()
            .map(|d| DeviceListEntry {
                id: d.device_id,
                label: None,
                labelsig: None,
            })
            .collect();
        self.ok(
            "devicelist.update",
            json!({"jid": devs[0].jid, "namespace": ns.namespace(), "xml": devicelist_to_xml(ns, &list)}),
        );
        let calls = devs
            .iter()
            .map(|d| {
                (
                    "bundle.update",
                    json!({"jid": d.jid, "device_id": d.device_id, "namespace": ns.namespace(), "xml": d.bundle_xml()}),
                )
            })
            .collect();
        self.batch(calls);
    }

    pub fn encrypt_call(to: &str, ns: Version) -> Call {
        (
            "encrypt",
            json!({"to": [to], "body": BODY, "namespaces": [ns.namespace()]}),
        )
    }

    pub fn encrypt_xml(&self, to: &str, ns: Version) -> String {
        let (method, params) = Self::encrypt_call(to, ns);
        let r = self.ok(method, params);
        r["messages"][0]["xml"].as_str().expect("xml").to_owned()
    }

    /// Our account's device id.
    pub fn own_device(&self) -> u32 {
        self.ok("account.list", json!({}))[0]["device_id"]
            .as_u64()
            .expect("device id") as u32
    }

    pub fn decrypt_call(from: &str, xml: &str) -> Call {
        ("decrypt", json!({"from": from, "xml": xml}))
    }
}
