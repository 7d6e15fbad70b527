//! omemod's benchmark harness (issue 5). `scripts/bench` runs it; by hand:
//! `cargo bench -p omemod --bench omemod` (the python-omemo part needs the venv: `scripts/setup-python`).
//!
//! One run measures, on this machine:
//! 1. omemod through its socket (release binary, real SQLite file in a temp dir, WAL), with
//!    `--durability normal` and `--durability full`, both namespaces: decrypt / encrypt on an
//!    established session (p50/p99), decrypt with a DH step, throughput with 1 and 8 concurrent
//!    clients, encrypt to 100 devices, session creation active (first encrypt from a stored bundle)
//!    and passive (decrypt of a key exchange);
//! 2. the same operations in-process with protocol-core (no socket, no database);
//! 3. the same operations with python-omemo in-process (`tests/interop/bench_python.py`);
//! 4. the floor: X25519, Ed25519 sign / verify, one small SQLite commit (NORMAL, FULL), one empty
//!    RPC round trip (`status`);
//! 5. memory and start-up with 10,000 sessions, database size per session.
//!
//! Every RPC figure is also given as a ratio to the same run's floor (empty RPC round trip + one
//! SQLite commit of the same durability, + N × X25519 for operations with DH steps), so figures
//! taken on a busy machine stay comparable; issue 13's targets are such ratios.
//!
//! Then prints the ratios and PASS/MISS against the targets, and a Markdown report (written to
//! `$OMEMOD_BENCH_MD` when set). Peers are simulated in-process with protocol-core: they build real
//! `<encrypted>` elements, device lists and bundles, so the daemon does exactly what it does with
//! real clients.
//!
//! Environment: `OMEMOD_BENCH_QUICK=1` (smoke run, ~1 min), `OMEMOD_BENCH_SCALE=F` (multiply the
//! iteration counts), `OMEMOD_BENCH_ONLY=floor,core,rpc,python,memory` (sections),
//! `OMEMOD_BENCH_NS=twomemo|oldmemo`, `OMEMOD_BENCH_DURABILITY=normal|full` (narrow the RPC part),
//! `OMEMOD_BENCH_OPS=decrypt,decrypt_dh,encrypt,throughput,fanout100,session_active,session_passive`
//! (operations of the RPC part; the same list may be given as arguments:
//! `cargo bench -p omemod --bench omemod -- decrypt encrypt throughput`),
//! `OMEMOD_BENCH_SESSIONS=N` (sessions of the memory test, default 10000), `OMEMOD_BENCH_BIN`
//! (the omemod binary), `OMEMOD_PYTHON` (python of the venv), `OMEMOD_BENCH_MD` (Markdown output).
//! No timed assertions: this is a benchmark; it fails only if an operation itself fails.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use protocol_core::bundle::{Bundle, PreKeyPublic};
use protocol_core::keys::identity::SignedPreKey;
use protocol_core::keys::{xeddsa, IdentityKeyPair, KeyPair};
use protocol_core::payload;
use protocol_core::sce::{build_envelope, parse_envelope, EnvelopeOptions};
use protocol_core::session::{KeyExchange, Session};
use protocol_core::xml::{
    bundle_from_xml, bundle_to_xml, devicelist_to_xml, DeviceListEntry, Encrypted, KeyElement,
};
use protocol_core::Version;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::{json, Value};

const BODY: &str = "Hello, this is a benchmark message of moderate length. \u{1F600}";
const ME: &str = "me@bench.example";
const NS_ALL: [Version; 2] = [Version::Twomemo, Version::Oldmemo];
const DURABILITIES: [&str; 2] = ["normal", "full"];

fn ns_tag(v: Version) -> &'static str {
    match v {
        Version::Twomemo => "twomemo",
        Version::Oldmemo => "oldmemo",
    }
}

// ------------------------------------------------------------------------------------------------
// Configuration and statistics
// ------------------------------------------------------------------------------------------------

struct Cfg {
    quick: bool,
    scale: f64,
    only: Option<Vec<String>>,
    ops: Option<Vec<String>>,
    sessions: usize,
    namespaces: Vec<Version>,
    durabilities: Vec<&'static str>,
    repo: PathBuf,
    bin: PathBuf,
    /// The same code built without redelivery (`bench-baseline-no-redelivery`), for issue 8's
    /// A/B comparison; scripts/bench builds it.
    baseline: Option<PathBuf>,
}

impl Cfg {
    fn from_env() -> Self {
        let quick = std::env::var("OMEMOD_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let scale = std::env::var("OMEMOD_BENCH_SCALE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1.0);
        let only = std::env::var("OMEMOD_BENCH_ONLY")
            .ok()
            .filter(|s| !s.is_empty())
            .map(|s| s.split(',').map(|x| x.trim().to_owned()).collect());
        // Operations: OMEMOD_BENCH_OPS, or the harness's free arguments (`cargo bench -- a b`).
        let args: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with('-'))
            .collect();
        let ops = std::env::var("OMEMOD_BENCH_OPS")
            .ok()
            .filter(|s| !s.is_empty())
            .map(|s| s.split(',').map(|x| x.trim().to_owned()).collect())
            .or_else(|| (!args.is_empty()).then_some(args));
        let sessions = std::env::var("OMEMOD_BENCH_SESSIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000);
        let pick = |var: &str| std::env::var(var).ok().filter(|s| !s.is_empty());
        let namespaces = match pick("OMEMOD_BENCH_NS") {
            Some(s) => NS_ALL
                .into_iter()
                .filter(|v| s.contains(ns_tag(*v)))
                .collect(),
            None => NS_ALL.to_vec(),
        };
        let durabilities = match pick("OMEMOD_BENCH_DURABILITY") {
            Some(s) => DURABILITIES.into_iter().filter(|d| s.contains(d)).collect(),
            None => DURABILITIES.to_vec(),
        };
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let bin = std::env::var_os("OMEMOD_BENCH_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_omemod")));
        let baseline = std::env::var_os("OMEMOD_BENCH_BASELINE_BIN")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        Cfg {
            quick,
            scale,
            only,
            ops,
            sessions,
            namespaces,
            durabilities,
            repo,
            bin,
            baseline,
        }
    }

    /// Iterations: `full` normally, `quick` with OMEMOD_BENCH_QUICK, times OMEMOD_BENCH_SCALE.
    fn n(&self, full: usize, quick: usize) -> usize {
        let base = if self.quick { quick } else { full };
        ((base as f64 * self.scale) as usize).max(3)
    }

    /// Whether an operation of the RPC part is measured.
    fn op(&self, name: &str) -> bool {
        self.ops
            .as_ref()
            .is_none_or(|o| o.iter().any(|x| x == name))
    }

    fn section(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|x| x == name))
    }
}

/// Latency figure in microseconds.
#[derive(Clone, Copy, Debug)]
struct Fig {
    p50: f64,
    p99: f64,
    n: usize,
}

fn fig(samples_ns: &[u64]) -> Fig {
    let mut s = samples_ns.to_vec();
    s.sort_unstable();
    let k = s.len().max(1);
    let pct = |p: f64| -> f64 {
        let i = ((p * (k - 1) as f64) + 0.5) as usize;
        s.get(i.min(k - 1)).copied().unwrap_or(0) as f64 / 1000.0
    };
    Fig {
        p50: pct(0.5),
        p99: pct(0.99),
        n: s.len(),
    }
}

/// Times `f` `iters` times (after `warm` untimed runs); each sample is one call.
fn time_each(warm: usize, iters: usize, mut f: impl FnMut()) -> Fig {
    for _ in 0..warm {
        f();
    }
    let mut v = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        f();
        v.push(t.elapsed().as_nanos() as u64);
    }
    fig(&v)
}

fn us(x: f64) -> String {
    if x >= 10_000.0 {
        format!("{:.1} ms", x / 1000.0)
    } else if x >= 100.0 {
        format!("{x:.0} µs")
    } else if x >= 10.0 {
        format!("{x:.1} µs")
    } else {
        format!("{x:.2} µs")
    }
}

/// Everything measured, by key.
#[derive(Default)]
struct Report {
    figs: BTreeMap<String, Fig>,
    rates: BTreeMap<String, f64>,
    values: BTreeMap<String, f64>,
    notes: Vec<String>,
    python_version: Option<String>,
}

impl Report {
    fn fig(&mut self, key: &str, f: Fig) {
        println!(
            "  {key:<44} p50 {:>10}  p99 {:>10}  (n={})",
            us(f.p50),
            us(f.p99),
            f.n
        );
        self.figs.insert(key.to_owned(), f);
    }
    fn rate(&mut self, key: &str, r: f64) {
        println!("  {key:<44} {r:>10.0} /s");
        self.rates.insert(key.to_owned(), r);
    }
    fn value(&mut self, key: &str, v: f64, unit: &str) {
        println!("  {key:<44} {v:>10.2} {unit}");
        self.values.insert(key.to_owned(), v);
    }
    fn p50(&self, key: &str) -> Option<f64> {
        self.figs.get(key).map(|f| f.p50)
    }
}

// ------------------------------------------------------------------------------------------------
// An in-process OMEMO device (protocol-core): the peers of the daemon, and the core benchmark
// ------------------------------------------------------------------------------------------------

struct Device {
    jid: String,
    device_id: u32,
    version: Version,
    identity: IdentityKeyPair,
    spk: SignedPreKey,
    /// One-time prekeys with private keys.
    opks: Vec<(u32, KeyPair)>,
    /// Public-only prekeys (random points) that make the bundle realistically large.
    fake_opks: Vec<(u32, [u8; 32])>,
    sessions: HashMap<(String, u32), Session>,
    rng: StdRng,
}

impl Device {
    fn new(jid: &str, device_id: u32, version: Version, real: usize, fake: usize) -> Self {
        let mut rng = StdRng::from_entropy();
        let identity = IdentityKeyPair::generate(&mut rng);
        let spk = SignedPreKey::generate(1, &identity, &mut rng);
        let opks = (1..=real as u32)
            .map(|i| (i, KeyPair::generate(&mut rng)))
            .collect();
        let fake_opks = (0..fake as u32)
            .map(|i| {
                let mut k = [0u8; 32];
                rng.fill_bytes(&mut k);
                k[31] &= 0x7f;
                (real as u32 + 1 + i, k)
            })
            .collect();
        Device {
            jid: jid.to_owned(),
            device_id,
            version,
            identity,
            spk,
            opks,
            fake_opks,
            sessions: HashMap::new(),
            rng,
        }
    }

    fn bundle(&self) -> Bundle {
        let mut prekeys: Vec<PreKeyPublic> = self
            .opks
            .iter()
            .map(|(id, k)| PreKeyPublic {
                id: *id,
                key: k.public.0,
            })
            .collect();
        prekeys.extend(
            self.fake_opks
                .iter()
                .map(|(id, k)| PreKeyPublic { id: *id, key: *k }),
        );
        Bundle::from_keys(self.version, &self.identity, &self.spk, prekeys)
    }

    fn bundle_xml(&self) -> String {
        bundle_to_xml(&self.bundle())
    }

    /// Builds a session from `bundle` (of `jid`/`dev`) with its prekey `pk`.
    fn initiate(&mut self, jid: &str, dev: u32, bundle: &Bundle, pk: u32) {
        let s = Session::initiate(&self.identity, bundle, pk, &mut self.rng).expect("initiate");
        self.sessions.insert((jid.to_owned(), dev), s);
    }

    /// One `<encrypted>` element with `body` for `targets` (each must have a session).
    fn encrypt_to(&mut self, targets: &[(String, u32)], body: &str, sce_to: &str) -> String {
        let (km, iv, pl): (Vec<u8>, Option<Vec<u8>>, Vec<u8>) = match self.version {
            Version::Oldmemo => {
                let p = payload::oldmemo::encrypt(body.as_bytes(), &mut self.rng);
                (p.key_material.to_vec(), Some(p.iv.to_vec()), p.ciphertext)
            }
            Version::Twomemo => {
                let env = build_envelope(
                    body,
                    &EnvelopeOptions {
                        from: &self.jid,
                        to: Some(sce_to),
                        time: None,
                    },
                    &mut self.rng,
                );
                let p = payload::twomemo::encrypt(env.as_bytes(), &mut self.rng);
                (p.key_material.to_vec(), None, p.ciphertext)
            }
        };
        let mut keys = Vec::with_capacity(targets.len());
        for t in targets {
            let s = self.sessions.get_mut(t).expect("session for target");
            let k = s.encrypt(&km).expect("encrypt");
            keys.push(KeyElement {
                jid: (self.version == Version::Twomemo).then(|| t.0.clone()),
                rid: t.1,
                kex: k.kex,
                data: k.data,
            });
        }
        Encrypted {
            version: self.version,
            sid: self.device_id,
            keys,
            iv,
            payload: Some(pl),
        }
        .to_xml()
    }

    /// Decrypts the key for this device in `xml` (responding to a key exchange) and the payload.
    fn receive(&mut self, from: &str, xml: &str) -> Option<String> {
        let e = Encrypted::from_xml(xml).expect("parse <encrypted>");
        let key = e
            .keys
            .iter()
            .find(|k| k.rid == self.device_id)
            .expect("a key for this device");
        let addr = (from.to_owned(), e.sid);
        let d = if key.kex {
            let kex = KeyExchange::parse(self.version, &key.data).expect("kex");
            match self.sessions.get_mut(&addr) {
                Some(s) if s.matches_key_exchange(&kex) => s
                    .decrypt_key_exchange(&kex, &mut self.rng)
                    .expect("decrypt"),
                _ => {
                    let opk = &self
                        .opks
                        .iter()
                        .find(|(id, _)| *id == kex.info.pre_key_id)
                        .expect("our prekey")
                        .1;
                    let (s, d) = Session::respond(
                        &self.identity,
                        &kex,
                        &self.spk.key_pair,
                        &opk.private,
                        &mut self.rng,
                    )
                    .expect("respond");
                    self.sessions.insert(addr, s);
                    d
                }
            }
        } else {
            self.sessions
                .get_mut(&addr)
                .expect("session")
                .decrypt(&key.data, &mut self.rng)
                .expect("decrypt")
        };
        let ct = e.payload.as_ref()?;
        match self.version {
            Version::Oldmemo => {
                let pt = payload::oldmemo::decrypt(&d.plaintext, e.iv.as_deref().expect("iv"), ct)
                    .expect("payload");
                Some(String::from_utf8(pt.to_vec()).expect("utf-8"))
            }
            Version::Twomemo => {
                let pt = payload::twomemo::decrypt(&d.plaintext, ct).expect("payload");
                let env = parse_envelope(std::str::from_utf8(&pt).expect("utf-8")).expect("sce");
                env.body.map(|b| b.as_str().to_owned())
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The daemon and a line-protocol client
// ------------------------------------------------------------------------------------------------

struct Daemon {
    dir: tempfile::TempDir,
    socket: PathBuf,
    db: PathBuf,
    durability: String,
    bin: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    fn start(cfg: &Cfg, durability: &str) -> Self {
        Self::start_bin(&cfg.bin, durability)
    }

    fn start_bin(bin: &std::path::Path, durability: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("omemod-bench-")
            .tempdir()
            .expect("tempdir");
        let mut d = Daemon {
            socket: dir.path().join("run/omemod.sock"),
            db: dir.path().join("state/omemod.db"),
            dir,
            durability: durability.to_owned(),
            bin: bin.to_owned(),
            child: None,
        };
        d.spawn();
        d
    }

    /// Starts the process; returns the time until it answered `status`.
    fn spawn(&mut self) -> Duration {
        let t = Instant::now();
        let child = Command::new(&self.bin)
            .arg("serve")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--db")
            .arg(&self.db)
            .arg("--durability")
            .arg(&self.durability)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start omemod");
        self.child = Some(child);
        let deadline = t + Duration::from_secs(60);
        loop {
            if let Ok(s) = UnixStream::connect(&self.socket) {
                let mut c = Client::from_stream(s);
                if c.call("status", json!({})).is_ok() {
                    return t.elapsed();
                }
            }
            assert!(Instant::now() < deadline, "omemod did not come up");
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    fn client(&self) -> Client {
        Client::from_stream(UnixStream::connect(&self.socket).expect("connect"))
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// VmRSS in KiB.
    fn rss_kib(&self) -> f64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// SIGTERM and wait.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }

    /// Bytes in use by the database (pages not on the free list, WAL content included).
    fn db_used_bytes(&self) -> f64 {
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

    fn file_bytes(&self) -> f64 {
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

struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    buf: String,
}

impl Client {
    fn from_stream(s: UnixStream) -> Self {
        s.set_read_timeout(Some(Duration::from_secs(120))).ok();
        Client {
            reader: BufReader::new(s.try_clone().expect("clone")),
            writer: s,
            next_id: 1,
            buf: String::new(),
        }
    }

    /// A request line (with a fresh id), ready to send.
    fn line(&mut self, method: &str, params: Value) -> String {
        let id = self.next_id;
        self.next_id += 1;
        let mut s =
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string();
        s.push('\n');
        s
    }

    /// Sends one line, reads one line; the reply line is left in `self.buf`.
    fn round_trip(&mut self, line: &str) {
        self.writer.write_all(line.as_bytes()).expect("write");
        self.buf.clear();
        let n = self.reader.read_line(&mut self.buf).expect("read");
        assert!(n > 0, "daemon closed the connection");
    }

    /// Sends a prepared line and returns (nanoseconds until the answer line arrived, result).
    fn timed(&mut self, line: &str) -> (u64, Value) {
        let t = Instant::now();
        self.round_trip(line);
        let ns = t.elapsed().as_nanos() as u64;
        (ns, self.result())
    }

    fn result(&self) -> Value {
        let v: Value = serde_json::from_str(&self.buf).expect("reply is JSON");
        if let Some(e) = v.get("error") {
            panic!("RPC error: {e}");
        }
        v["result"].clone()
    }

    fn call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        let l = self.line(method, params);
        self.round_trip(&l);
        let v: Value = serde_json::from_str(&self.buf).expect("reply is JSON");
        match v.get("error") {
            Some(e) => Err(e.clone()),
            None => Ok(v["result"].clone()),
        }
    }

    fn ok(&mut self, method: &str, params: Value) -> Value {
        self.call(method, params)
            .unwrap_or_else(|e| panic!("{method} failed: {e}"))
    }

    /// Runs many calls as JSON-RPC batches of 256 (they run concurrently in the daemon).
    fn batch(&mut self, calls: Vec<(&'static str, Value)>) {
        for chunk in calls.chunks(256) {
            let reqs: Vec<Value> = chunk
                .iter()
                .map(|(m, p)| {
                    let id = self.next_id;
                    self.next_id += 1;
                    json!({"jsonrpc": "2.0", "id": id, "method": m, "params": p})
                })
                .collect();
            let mut l = Value::Array(reqs).to_string();
            l.push('\n');
            self.round_trip(&l);
            let v: Value = serde_json::from_str(&self.buf).expect("reply is JSON");
            for r in v.as_array().expect("batch answer") {
                if let Some(e) = r.get("error") {
                    panic!("batched call failed: {e}");
                }
            }
        }
    }

    fn own_bundle(&mut self, ns: Version) -> Bundle {
        let r = self.ok("bundle.get", json!({"namespace": ns.namespace()}));
        bundle_from_xml(ns, r["xml"].as_str().expect("xml")).expect("our bundle parses")
    }

    /// Tells the daemon about `devs` (all of one JID): device list + bundles.
    fn learn(&mut self, devs: &[&Device]) {
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

    fn encrypt_line(&mut self, to: &str, ns: Version) -> String {
        self.line(
            "encrypt",
            json!({"to": [to], "body": BODY, "namespaces": [ns.namespace()]}),
        )
    }

    fn encrypt_xml(&mut self, to: &str, ns: Version) -> String {
        let r = self.ok(
            "encrypt",
            json!({"to": [to], "body": BODY, "namespaces": [ns.namespace()]}),
        );
        r["messages"][0]["xml"].as_str().expect("xml").to_owned()
    }

    /// Our account's device id.
    fn own_device(&mut self) -> u32 {
        self.ok("account.list", json!({}))[0]["device_id"]
            .as_u64()
            .expect("device id") as u32
    }

    fn decrypt_line(&mut self, from: &str, xml: &str) -> String {
        self.line("decrypt", json!({"from": from, "xml": xml}))
    }
}

fn check_body(r: &Value) {
    assert_eq!(r["body"].as_str(), Some(BODY), "decrypted body: {r}");
}

/// A peer device of the daemon's account with an established, confirmed session (it initiated,
/// the daemon answered).
fn established_peer(c: &mut Client, jid: &str, dev: u32, ns: Version) -> Device {
    let mut p = Device::new(jid, dev, ns, 1, 0);
    let mine = &c.own_bundle(ns); // current: earlier key exchanges used some prekeys
    c.learn(&[&p]);
    let me_dev = c.own_device();
    let pk = pick_prekey(mine, &mut p.rng);
    p.initiate(ME, me_dev, mine, pk);
    let first = p.encrypt_to(&[(ME.to_owned(), me_dev)], BODY, ME);
    let l = c.decrypt_line(jid, &first);
    c.round_trip(&l);
    check_body(&c.result());
    let back = c.encrypt_xml(jid, ns);
    assert_eq!(p.receive(ME, &back).as_deref(), Some(BODY));
    p
}

fn pick_prekey(b: &Bundle, rng: &mut StdRng) -> u32 {
    b.prekeys[rng.gen_range(0..b.prekeys.len())].id
}

// ------------------------------------------------------------------------------------------------
// 4. The floor
// ------------------------------------------------------------------------------------------------

fn bench_floor(cfg: &Cfg, r: &mut Report) {
    println!("\n== floor ==");
    let mut rng = StdRng::seed_from_u64(1);
    let k1 = KeyPair::generate(&mut rng);
    let k2 = KeyPair::generate(&mut rng);
    let n = cfg.n(3000, 300);
    r.fig(
        "floor.x25519",
        time_each(100, n, || {
            std::hint::black_box(k1.private.diffie_hellman(&k2.public).unwrap());
        }),
    );
    let id = IdentityKeyPair::generate(&mut rng);
    let z = [7u8; 64];
    let msg = b"32 bytes of a signed prekey....";
    r.fig(
        "floor.ed25519_sign",
        time_each(100, n, || {
            std::hint::black_box(id.sign_twomemo(msg, &z));
        }),
    );
    let sig = id.sign_twomemo(msg, &z);
    r.fig(
        "floor.ed25519_verify",
        time_each(100, n, || {
            xeddsa::ed25519_verify(id.ed25519(), msg, &sig).unwrap();
        }),
    );
    for &d in &cfg.durabilities {
        commit_floor(cfg, r, d);
    }
    commit_parts(cfg, r);
}

/// What a decrypt's commit costs in SQLite, part by part, through omemod's own store
/// (`--durability normal`, one commit per call, the variants in alternating blocks): the
/// session row alone; with the redelivery row beside it (issue 8); with a write to another
/// page instead (what a second WAL frame costs by itself); with the session row 1.2 KB larger
/// instead (what keeping eight redelivery records in the session's own row would cost).
fn commit_parts(cfg: &Cfg, r: &mut Report) {
    use omemod::storage::accounts::{self, TrustMode};
    use omemod::storage::redelivery::{self, RedeliveryRow};
    use omemod::storage::sessions::{self, Initiator, SessionRow};
    use omemod::storage::{now, Durability, Namespace, SecretBlob, Store, StoreConfig};

    const PARTS: [&str; 4] = [
        "session_row",
        "session_row+redelivery_row",
        "session_row+other_page",
        "session_row_1.2KB_larger",
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_with(
        &dir.path().join("parts.db"),
        StoreConfig {
            durability: Durability::Normal,
            ..StoreConfig::default()
        },
    )
    .expect("open store");
    let account = store
        .write_blocking(|tx| accounts::insert(tx, "alice@example.org", 1, TrustMode::Btbv, now()))
        .expect("account");
    store
        .write_blocking(|tx| {
            tx.execute_batch(
                "CREATE TABLE bench_other (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
                 INSERT INTO bench_other VALUES (1, 0);",
            )?;
            Ok(())
        })
        .expect("scratch table");
    // About an OMEMO 2 session's size; `n` changes it (an unchanged row writes no frame).
    let session = move |n: u32, larger: bool| SessionRow {
        account_id: account,
        jid: "bob@example.net".into(),
        namespace: Namespace::Twomemo,
        device_id: 7,
        state: SecretBlob::new(n.to_le_bytes().repeat(if larger { 418 } else { 110 })),
        state_format: 1,
        identity_key: [0xC0; 32],
        initiated_by: Initiator::Us,
        confirmed: true,
        created_at: 1,
        updated_at: i64::from(n),
        messages_sent: 0,
        messages_received: u64::from(n),
    };
    let record = move |n: u32| {
        let mut digest = [0u8; 32];
        digest[..4].copy_from_slice(&n.to_le_bytes());
        RedeliveryRow {
            account_id: account,
            digest,
            payload_digest: [0x11; 32],
            key_material: Some(zeroize::Zeroizing::new(vec![0x22; 48])),
            identity_key: [0x33; 32],
            key_exchange: false,
            created_at: now(),
        }
    };
    let mut times: [Vec<u64>; 4] = Default::default();
    let mut n = 0u32;
    let (rounds, per_block) = (cfg.n(20, 4), cfg.n(500, 100));
    for round in 0..rounds {
        for k in 0..PARTS.len() {
            let part = (k + round) % PARTS.len();
            for _ in 0..per_block {
                n += 1;
                let t = Instant::now();
                store
                    .write_blocking(move |tx| {
                        sessions::upsert(tx, &session(n, part == 3))?;
                        match part {
                            1 => {
                                redelivery::record(tx, &record(n), true)?;
                            }
                            2 => {
                                tx.prepare_cached("UPDATE bench_other SET n = ?1 WHERE id = 1")?
                                    .execute([n])?;
                            }
                            _ => {}
                        }
                        Ok(())
                    })
                    .expect("commit");
                times[part].push(t.elapsed().as_nanos() as u64);
            }
        }
    }
    for (part, t) in PARTS.iter().zip(&times) {
        r.fig(&format!("floor.decrypt_commit.{part}"), fig(t));
    }
    store.close().expect("close");
}

/// One small SQLite commit (WAL) with the given durability, through rusqlite.
fn commit_floor(cfg: &Cfg, r: &mut Report, d: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let c = rusqlite::Connection::open(dir.path().join(format!("floor-{d}.db"))).unwrap();
        c.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={d};
             CREATE TABLE kv (k INTEGER PRIMARY KEY, v BLOB NOT NULL);"
        ))
        .unwrap();
        let blob = vec![0x5au8; 200];
        let mut i = 0i64;
        let iters = if d == "full" {
            cfg.n(1000, 100)
        } else {
            cfg.n(3000, 300)
        };
        r.fig(
            &format!("floor.sqlite_commit.{d}"),
            time_each(20, iters, || {
                i += 1;
                c.execute_batch("BEGIN IMMEDIATE").unwrap();
                c.prepare_cached("INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)")
                    .unwrap()
                    .execute(rusqlite::params![i % 64, blob])
                    .unwrap();
                c.execute_batch("COMMIT").unwrap();
            }),
        );
    }
}

// ------------------------------------------------------------------------------------------------
// 2. protocol-core in-process
// ------------------------------------------------------------------------------------------------

fn bench_core(cfg: &Cfg, r: &mut Report) {
    println!(
        "\n== protocol-core, in-process (XML, payload and ratchet; no socket, no database) =="
    );
    for &ns in &cfg.namespaces {
        let t = ns_tag(ns);
        let mut alice = Device::new("alice@core.example", 1, ns, 1, 0);
        let mut bob = Device::new("bob@core.example", 2, ns, 1, 0);
        let a = (alice.jid.clone(), alice.device_id);
        let b = (bob.jid.clone(), bob.device_id);
        let bb = bob.bundle();
        alice.initiate(&b.0, b.1, &bb, 1);
        let m = alice.encrypt_to(std::slice::from_ref(&b), BODY, &b.0);
        bob.receive(&a.0, &m);
        let m = bob.encrypt_to(std::slice::from_ref(&a), BODY, &a.0);
        alice.receive(&b.0, &m);

        // decrypt, same chain: messages made beforehand, decrypted in order.
        let n = cfg.n(3000, 300);
        let msgs: Vec<String> = (0..n + 50)
            .map(|_| alice.encrypt_to(std::slice::from_ref(&b), BODY, &b.0))
            .collect();
        let mut it = msgs.iter();
        r.fig(
            &format!("core.{t}.decrypt"),
            time_each(50, n, || {
                let body = bob.receive(&a.0, it.next().unwrap());
                debug_assert!(body.is_some());
            }),
        );
        // decrypt with a DH step: ping-pong.
        let mut v = Vec::new();
        for _ in 0..cfg.n(1000, 100) {
            let back = bob.encrypt_to(std::slice::from_ref(&a), BODY, &a.0);
            alice.receive(&b.0, &back);
            let m = alice.encrypt_to(std::slice::from_ref(&b), BODY, &b.0);
            let t0 = Instant::now();
            bob.receive(&a.0, &m);
            v.push(t0.elapsed().as_nanos() as u64);
        }
        r.fig(&format!("core.{t}.decrypt_dh"), fig(&v));
        r.fig(
            &format!("core.{t}.encrypt"),
            time_each(50, cfg.n(3000, 300), || {
                std::hint::black_box(alice.encrypt_to(std::slice::from_ref(&b), BODY, &b.0));
            }),
        );
        // fan-out to 100 confirmed sessions.
        let mut fans: Vec<Device> = (0..100)
            .map(|i| Device::new("fan@core.example", 1000 + i, ns, 1, 0))
            .collect();
        let targets: Vec<(String, u32)> =
            fans.iter().map(|f| (f.jid.clone(), f.device_id)).collect();
        for f in &fans {
            alice.initiate(&f.jid, f.device_id, &f.bundle(), 1);
        }
        let first = alice.encrypt_to(&targets, BODY, "fan@core.example");
        for f in fans.iter_mut() {
            f.receive(&a.0, &first);
            let back = f.encrypt_to(std::slice::from_ref(&a), BODY, &a.0);
            alice.receive(&f.jid.clone(), &back);
        }
        r.fig(
            &format!("core.{t}.fanout100"),
            time_each(5, cfg.n(300, 30), || {
                std::hint::black_box(alice.encrypt_to(&targets, BODY, "fan@core.example"));
            }),
        );
        // session creation, active: X3DH from the bundle + first message.
        let mut k = 0u32;
        r.fig(
            &format!("core.{t}.session_active"),
            time_each(20, cfg.n(1000, 100), || {
                k += 1;
                let tgt = (format!("x{k}@core.example"), 7);
                alice.initiate(&tgt.0, tgt.1, &bb, 1);
                std::hint::black_box(alice.encrypt_to(std::slice::from_ref(&tgt), BODY, &tgt.0));
                alice.sessions.remove(&tgt);
            }),
        );
        // session creation, passive: key exchanges made beforehand by fresh sessions.
        let n = cfg.n(1000, 100);
        let kexes: Vec<String> = (0..n + 20)
            .map(|_| {
                alice.initiate(&b.0, b.1, &bb, 1);
                alice.encrypt_to(std::slice::from_ref(&b), BODY, &b.0)
            })
            .collect();
        let mut it = kexes.iter();
        r.fig(
            &format!("core.{t}.session_passive"),
            time_each(20, n, || {
                bob.sessions.clear();
                std::hint::black_box(bob.receive(&a.0, it.next().unwrap()));
            }),
        );
    }
}

// ------------------------------------------------------------------------------------------------
// 1. omemod through the socket
// ------------------------------------------------------------------------------------------------

fn bench_rpc(cfg: &Cfg, r: &mut Report, durability: &str) {
    println!("\n== omemod via socket, --durability {durability} ==");
    let d = Daemon::start(cfg, durability);
    let mut c = d.client();
    c.ok("account.create", json!({"jid": ME}));
    let me_dev = c.own_device();
    let me = (ME.to_owned(), me_dev);

    let status = c.line("status", json!({}));
    let mut v = Vec::new();
    for i in 0..cfg.n(5000, 500) + 100 {
        let (ns_, _) = c.timed(&status);
        if i >= 100 {
            v.push(ns_);
        }
    }
    r.fig(&format!("floor.rpc_status.{durability}"), fig(&v));
    // The ratios need this run's commit floor even when the floor section is skipped.
    if r.p50(&format!("floor.sqlite_commit.{durability}"))
        .is_none()
    {
        commit_floor(cfg, r, durability);
    }

    let mut dev_ids = 10u32;
    let mut next_dev = || {
        dev_ids += 1;
        dev_ids
    };

    for &ns in &cfg.namespaces {
        let t = ns_tag(ns);
        let key = |op: &str| format!("rpc.{durability}.{t}.{op}");
        let pj = format!("peer-{t}@bench.example");
        let mut p = established_peer(&mut c, &pj, next_dev(), ns);

        // decrypt, same chain.
        if cfg.op("decrypt") {
            let n = cfg.n(2000, 200);
            let lines: Vec<String> = (0..n + 50)
                .map(|_| {
                    let x = p.encrypt_to(std::slice::from_ref(&me), BODY, ME);
                    c.decrypt_line(&pj, &x)
                })
                .collect();
            let mut v = Vec::with_capacity(n);
            for (i, l) in lines.iter().enumerate() {
                let (dt, res) = c.timed(l);
                if i == 0 {
                    check_body(&res);
                }
                if i >= 50 {
                    v.push(dt);
                }
            }
            r.fig(&key("decrypt"), fig(&v));
        }

        // decrypt with a DH step (ping-pong; only the decrypt is timed).
        if cfg.op("decrypt_dh") {
            let mut v = Vec::new();
            for _ in 0..cfg.n(500, 60) {
                let back = c.encrypt_xml(&pj, ns);
                p.receive(ME, &back);
                let x = p.encrypt_to(std::slice::from_ref(&me), BODY, ME);
                let l = c.decrypt_line(&pj, &x);
                let (dt, res) = c.timed(&l);
                check_body(&res);
                v.push(dt);
            }
            r.fig(&key("decrypt_dh"), fig(&v));
        }

        // encrypt, one device (the peer does not read these; its chain just grows).
        if cfg.op("encrypt") {
            let n = cfg.n(2000, 200);
            let mut v = Vec::with_capacity(n);
            for i in 0..n + 50 {
                let l = c.encrypt_line(&pj, ns);
                let (dt, res) = c.timed(&l);
                if i == 0 {
                    assert_eq!(res["devices"][0]["status"], "encrypted", "{res}");
                }
                if i >= 50 {
                    v.push(dt);
                }
            }
            r.fig(&key("encrypt"), fig(&v));
        }

        // throughput: 1 and 8 clients, each decrypting messages of its own session.
        if cfg.op("throughput") {
            let per1 = cfg.n(3000, 300);
            let per8 = cfg.n(1500, 150);
            let mut peers: Vec<Device> = (0..8)
                .map(|i| {
                    established_peer(&mut c, &format!("tp{i}-{t}@bench.example"), next_dev(), ns)
                })
                .collect();
            let mut per_client: Vec<Vec<String>> = Vec::new();
            for (i, p) in peers.iter_mut().enumerate() {
                let k = if i == 0 { per1 + per8 } else { per8 };
                per_client.push(
                    (0..k)
                        .map(|_| {
                            let x = p.encrypt_to(std::slice::from_ref(&me), BODY, ME);
                            c.decrypt_line(&p.jid, &x)
                        })
                        .collect(),
                );
            }
            let first: Vec<String> = per_client[0].drain(..per1).collect();
            let (rate1, _) = run_clients(&d, vec![first]);
            r.rate(&key("throughput_1"), rate1);
            let (rate8, lat8) = run_clients(&d, per_client);
            r.rate(&key("throughput_8"), rate8);
            r.fig(&key("decrypt_under_8"), lat8);
        }

        // fan-out: one JID with 100 devices, sessions established and confirmed.
        if cfg.op("fanout100") {
            let fj = format!("fan-{t}@bench.example");
            let base = next_dev() * 1000;
            let mut fans: Vec<Device> = (0..100)
                .map(|i| Device::new(&fj, base + i, ns, 5, 0))
                .collect();
            c.learn(&fans.iter().collect::<Vec<_>>());
            let l = c.encrypt_line(&fj, ns);
            let (dt, res) = c.timed(&l);
            r.fig(&key("fanout100_first"), fig(&[dt]));
            let first = res["messages"][0]["xml"].as_str().expect("xml").to_owned();
            let mut answers = Vec::new();
            for f in fans.iter_mut() {
                assert_eq!(f.receive(ME, &first).as_deref(), Some(BODY));
                let back = f.encrypt_to(std::slice::from_ref(&me), BODY, ME);
                answers.push(("decrypt", json!({"from": fj, "xml": back})));
            }
            c.batch(answers);
            let n = cfg.n(300, 30);
            let mut v = Vec::with_capacity(n);
            for i in 0..n + 5 {
                let l = c.encrypt_line(&fj, ns);
                let (dt, res) = c.timed(&l);
                if i == 0 {
                    let keys = Encrypted::from_xml(res["messages"][0]["xml"].as_str().unwrap())
                        .unwrap()
                        .keys;
                    assert_eq!(keys.len(), 100);
                    assert!(
                        keys.iter().all(|k| !k.kex),
                        "fan-out sessions not confirmed"
                    );
                }
                if i >= 5 {
                    v.push(dt);
                }
            }
            r.fig(&key("fanout100"), fig(&v));
        }

        // session creation, active: first encrypt to a fresh device whose bundle is stored
        // (a 100-prekey bundle; device list and bundle ingested untimed).
        if cfg.op("session_active") {
            let n = cfg.n(400, 40);
            let mut v = Vec::with_capacity(n);
            for i in 0..n + 10 {
                let aj = format!("act{i}-{t}@bench.example");
                let fresh = Device::new(&aj, next_dev(), ns, 1, 99);
                c.learn(&[&fresh]);
                let l = c.encrypt_line(&aj, ns);
                let (dt, res) = c.timed(&l);
                assert_eq!(res["devices"][0]["kex"], true, "{res}");
                if i >= 10 {
                    v.push(dt);
                }
            }
            r.fig(&key("session_active"), fig(&v));
        }

        // session creation, passive: decrypt of a first message (key exchange). Each uses one of
        // our prekeys (which the daemon replaces), so messages are made in rounds of distinct
        // prekeys of the current bundle.
        if cfg.op("session_passive") {
            let n = cfg.n(400, 40);
            let mut v = Vec::with_capacity(n);
            let mut i = 0usize;
            while v.len() < n {
                let mine = c.own_bundle(ns);
                let round: Vec<(String, String)> = mine
                    .prekeys
                    .iter()
                    .take(50.min(n - v.len() + usize::from(i == 0) * 5))
                    .map(|pk| {
                        i += 1;
                        let pj = format!("pas{i}-{t}@bench.example");
                        let mut x = Device::new(&pj, 77, ns, 0, 0);
                        x.initiate(ME, me_dev, &mine, pk.id);
                        let m = x.encrypt_to(std::slice::from_ref(&me), BODY, ME);
                        let l = c.decrypt_line(&pj, &m);
                        (pj, l)
                    })
                    .collect();
                for (j, (_, l)) in round.iter().enumerate() {
                    let (dt, res) = c.timed(l);
                    check_body(&res);
                    assert_eq!(res["key_exchange"], true);
                    if !(i <= 55 && j < 5) {
                        v.push(dt);
                    }
                }
            }
            r.fig(&key("session_passive"), fig(&v));
        }
    }
}

/// Issue 8: decrypt p50 with redelivery against the same code built without it, in one run.
/// Both daemons run side by side and are measured in alternating blocks, so that the machine's
/// drift hits both alike.
fn bench_redelivery_ab(cfg: &Cfg, r: &mut Report, durability: &str) {
    let Some(base) = cfg.baseline.as_deref() else {
        return;
    };
    println!(
        "\n== redelivery A/B: this build vs {} ({durability}) ==",
        base.display()
    );
    let with = Daemon::start(cfg, durability);
    let without = Daemon::start_bin(base, durability);
    let mut clients = [with.client(), without.client()];
    let mut me = Vec::new();
    for c in clients.iter_mut() {
        c.ok("account.create", json!({"jid": ME}));
        me.push((ME.to_owned(), c.own_device()));
    }
    for &ns in &cfg.namespaces {
        let t = ns_tag(ns);
        let pj = format!("ab-{t}@bench.example");
        let blocks = cfg.n(10, 3);
        let per_block = cfg.n(200, 50);
        let mut queued: [Vec<String>; 2] = [Vec::new(), Vec::new()];
        for (i, c) in clients.iter_mut().enumerate() {
            let mut p = established_peer(c, &pj, 40 + i as u32, ns);
            let lines: Vec<String> = (0..blocks * per_block + 50)
                .map(|_| {
                    let x = p.encrypt_to(std::slice::from_ref(&me[i]), BODY, ME);
                    c.decrypt_line(&pj, &x)
                })
                .collect();
            // Warm-up, untimed.
            for l in &lines[..50] {
                c.round_trip(l);
            }
            queued[i] = lines[50..].to_vec();
        }
        let mut times: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
        for b in 0..blocks {
            for i in [b % 2, 1 - b % 2] {
                for l in &queued[i][b * per_block..(b + 1) * per_block] {
                    let (dt, res) = clients[i].timed(l);
                    if times[i].is_empty() {
                        check_body(&res);
                    }
                    times[i].push(dt);
                }
            }
        }
        let [on, off] = times;
        r.fig(
            &format!("ab.{durability}.{t}.decrypt_with_redelivery"),
            fig(&on),
        );
        r.fig(
            &format!("ab.{durability}.{t}.decrypt_without_redelivery"),
            fig(&off),
        );
    }
}

/// One thread per client, each with its own connection, sending its lines one after another.
/// Returns (decrypts per second over the wall time, latency of all calls).
fn run_clients(d: &Daemon, per_client: Vec<Vec<String>>) -> (f64, Fig) {
    let total: usize = per_client.iter().map(|v| v.len()).sum();
    let barrier = Arc::new(Barrier::new(per_client.len() + 1));
    let handles: Vec<_> = per_client
        .into_iter()
        .map(|lines| {
            let mut c = d.client();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let mut v = Vec::with_capacity(lines.len());
                for l in &lines {
                    let t = Instant::now();
                    c.round_trip(l);
                    v.push(t.elapsed().as_nanos() as u64);
                    assert!(c.buf.contains("\"result\""), "decrypt failed: {}", c.buf);
                }
                v
            })
        })
        .collect();
    barrier.wait();
    let t = Instant::now();
    let mut lat = Vec::with_capacity(total);
    for h in handles {
        lat.extend(h.join().expect("client thread"));
    }
    let el = t.elapsed().as_secs_f64();
    (total as f64 / el, fig(&lat))
}

// ------------------------------------------------------------------------------------------------
// 5. Memory, start-up, database size
// ------------------------------------------------------------------------------------------------

fn bench_memory(cfg: &Cfg, r: &mut Report) {
    let total = if cfg.quick {
        cfg.sessions.min(2000)
    } else {
        cfg.sessions
    };
    let per_jid = 100usize;
    let jids = total.div_ceil(per_jid);
    println!(
        "\n== memory and start-up: {total} sessions ({jids} JIDs x {per_jid} devices, OMEMO 2, --durability normal) =="
    );
    let mut d = Daemon::start(cfg, "normal");
    let mut c = d.client();
    c.ok("account.create", json!({"jid": ME}));
    let ns = Version::Twomemo;
    std::thread::sleep(Duration::from_millis(300));
    r.value("mem.rss_idle_mib", d.rss_kib() / 1024.0, "MiB");
    let db_empty = d.db_used_bytes();

    let t0 = Instant::now();
    let mut devs_total = 0usize;
    for j in 0..jids {
        let jid = format!("many{j}@bench.example");
        let k = per_jid.min(total - devs_total);
        let devs: Vec<Device> = (0..k)
            .map(|i| Device::new(&jid, 1 + i as u32, ns, 0, 100))
            .collect();
        c.learn(&devs.iter().collect::<Vec<_>>());
        devs_total += k;
    }
    let ingest = t0.elapsed();
    r.value(
        "mem.ingest_secs (device lists + bundles, incl. generation)",
        ingest.as_secs_f64(),
        "s",
    );
    let db_bundles = d.db_used_bytes();
    let t0 = Instant::now();
    for j in 0..jids {
        let jid = format!("many{j}@bench.example");
        let res = c.ok(
            "encrypt",
            json!({"to": [jid], "body": BODY, "namespaces": [ns.namespace()]}),
        );
        let ok = res["devices"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["status"] == "encrypted")
            .count();
        assert_eq!(ok, per_jid.min(total - j * per_jid), "{res}");
    }
    let create = t0.elapsed();
    r.value(
        "mem.session_creation_us_each (encrypt per JID, 100 new sessions each)",
        create.as_secs_f64() * 1e6 / total as f64,
        "µs",
    );
    std::thread::sleep(Duration::from_millis(300));
    r.value(
        "mem.rss_hot_mib (all sessions cached)",
        d.rss_kib() / 1024.0,
        "MiB",
    );
    let db_sessions = d.db_used_bytes();
    r.value(
        "mem.db_bytes_per_session (session + trust rows)",
        (db_sessions - db_bundles) / total as f64,
        "B",
    );
    r.value(
        "mem.db_bytes_per_peer_device (incl. 100-prekey bundle)",
        (db_sessions - db_empty) / total as f64,
        "B",
    );
    d.stop();
    r.value(
        "mem.db_file_mib (db+wal+shm after stop)",
        d.file_bytes() / 1048576.0,
        "MiB",
    );

    let restarts = if cfg.quick { 1 } else { 3 };
    let mut starts = Vec::new();
    for _ in 0..restarts {
        starts.push(d.spawn().as_nanos() as u64);
        std::thread::sleep(Duration::from_millis(300));
        if starts.len() < restarts {
            d.stop();
        }
    }
    r.fig("mem.startup", fig(&starts));
    r.value("mem.rss_after_restart_mib", d.rss_kib() / 1024.0, "MiB");
    let mut c = d.client();
    let t0 = Instant::now();
    for j in 0..jids {
        c.ok(
            "encrypt",
            json!({"to": [format!("many{j}@bench.example")], "body": BODY, "namespaces": [ns.namespace()]}),
        );
    }
    r.value(
        "mem.encrypt_all_after_restart_s (loads every session)",
        t0.elapsed().as_secs_f64(),
        "s",
    );
    std::thread::sleep(Duration::from_millis(300));
    r.value(
        "mem.rss_warm_mib (after restart, all loaded)",
        d.rss_kib() / 1024.0,
        "MiB",
    );
    r.value("mem.sessions", total as f64, "");
}

// ------------------------------------------------------------------------------------------------
// 3. python-omemo
// ------------------------------------------------------------------------------------------------

fn python_path(cfg: &Cfg) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OMEMOD_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let p = cfg.repo.join(".venv/bin/python");
    p.exists().then_some(p)
}

fn bench_python(cfg: &Cfg, r: &mut Report) {
    println!("\n== python-omemo, in-process (tests/interop/bench_python.py) ==");
    let Some(py) = python_path(cfg) else {
        let m = "python-omemo skipped: no venv (run scripts/setup-python or set OMEMOD_PYTHON)";
        println!("  {m}");
        r.notes.push(m.into());
        return;
    };
    let out = Command::new(&py)
        .arg(cfg.repo.join("tests/interop/bench_python.py"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run python");
    if !out.status.success() {
        let m = format!("python-omemo bench failed ({})", out.status);
        println!("  {m}");
        r.notes.push(m);
        return;
    }
    let v: Value = serde_json::from_slice(&out.stdout).expect("python JSON");
    r.python_version = v["python_omemo"].as_str().map(|s| {
        format!(
            "python-omemo {s} (Python {})",
            v["python"].as_str().unwrap_or("?")
        )
    });
    for (t, ops) in v["results"].as_object().expect("results") {
        for (op, f) in ops.as_object().unwrap() {
            r.fig(
                &format!("py.{t}.{op}"),
                Fig {
                    p50: f["median_us"].as_f64().unwrap(),
                    p99: f["p99_us"].as_f64().unwrap(),
                    n: f["n"].as_u64().unwrap() as usize,
                },
            );
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Summary: ratios, targets, Markdown
// ------------------------------------------------------------------------------------------------

const OPS: [(&str, &str); 6] = [
    ("decrypt", "decrypt, established session"),
    ("decrypt_dh", "decrypt with a DH step"),
    ("encrypt", "encrypt, 1 device"),
    ("fanout100", "encrypt to 100 devices"),
    ("session_active", "new session from a bundle (active)"),
    (
        "session_passive",
        "new session from a key exchange (passive)",
    ),
];

/// X25519-class operations of an operation (key generation counted as one): the crypto floor.
fn x25519_count(op: &str) -> f64 {
    match op {
        // receiving chain DH + new ratchet key + sending chain DH
        "decrypt_dh" => 3.0,
        // ephemeral key + 4 X3DH DH + ratchet key + its DH
        "session_active" => 7.0,
        // 4 X3DH DH + first ratchet step (DH, new key, DH) + replacement prekey
        "session_passive" => 8.0,
        _ => 0.0,
    }
}

/// python-omemo comparator: the persisted variant matching the durability when there is one.
fn py_key(op: &str, dur: &str) -> &'static str {
    match (op, dur) {
        ("decrypt", "normal") => "decrypt_persist_nosync",
        ("decrypt", _) => "decrypt_persist",
        ("decrypt_dh", _) => "decrypt_dh",
        ("encrypt", _) => "encrypt",
        ("fanout100", _) => "fanout100",
        ("session_active", _) => "session_active",
        ("session_passive", _) => "session_passive",
        _ => "?",
    }
}

fn floor_sum(r: &Report, op: &str, dur: &str) -> Option<f64> {
    let n = x25519_count(op);
    // X25519 is measured by the floor section only; operations without DH steps don't need it.
    let dh = if n > 0.0 {
        n * r.p50("floor.x25519")?
    } else {
        0.0
    };
    Some(rpc_floor(r, dur)? + dh)
}

/// This run's floor of one RPC round trip with a commit: empty RPC + one SQLite commit.
fn rpc_floor(r: &Report, dur: &str) -> Option<f64> {
    Some(
        r.p50(&format!("floor.rpc_status.{dur}"))?
            + r.p50(&format!("floor.sqlite_commit.{dur}"))?,
    )
}

/// The floor of an RPC figure `rpc.<durability>.<ns>.<op>` (see [`floor_sum`]); figures of
/// decrypts under load use the decrypt floor.
fn fig_floor(r: &Report, key: &str) -> Option<f64> {
    let mut parts = key.split('.');
    let (Some("rpc"), Some(d), Some(_), Some(op)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let op = if op == "decrypt_under_8" {
        "decrypt"
    } else {
        op
    };
    floor_sum(r, op, d)
}

/// Every RPC latency figure with its floor and both percentiles as ratios to it.
fn floor_rows(r: &Report) -> Vec<(String, Fig, f64)> {
    r.figs
        .iter()
        .filter(|(k, _)| k.starts_with("rpc."))
        .filter_map(|(k, f)| Some((k.clone(), *f, fig_floor(r, k)?)))
        .collect()
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    }
}

fn opt_us(x: Option<f64>) -> String {
    x.map(us).unwrap_or_else(|| "–".into())
}

fn machine() -> Vec<(String, String)> {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "?".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|x| x.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let cmd = |c: &str, a: &[&str]| -> String {
        Command::new(c)
            .args(a)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "?".into())
    };
    let kernel = cmd("uname", &["-sr"]);
    vec![
        ("nproc".into(), nproc),
        ("CPU".into(), cpu),
        ("kernel".into(), kernel),
        ("omemod".into(), env!("CARGO_PKG_VERSION").to_owned()),
        ("rustc".into(), cmd("rustc", &["--version"])),
        ("SQLite".into(), rusqlite::version().to_owned()),
    ]
}

struct Target {
    what: String,
    value: String,
    goal: String,
    pass: Option<bool>,
}

fn targets(r: &Report, cfg: &Cfg) -> Vec<Target> {
    let mut out = Vec::new();
    let mut lat = |what: String, v: Option<f64>, limit_us: f64| {
        out.push(Target {
            what,
            value: opt_us(v),
            goal: format!("≤ {}", us(limit_us)),
            pass: v.map(|v| v <= limit_us),
        });
    };
    for ns in NS_ALL {
        let t = ns_tag(ns);
        lat(
            format!("decrypt via RPC p50, normal, {t}"),
            r.p50(&format!("rpc.normal.{t}.decrypt")),
            100.0,
        );
        lat(
            format!("decrypt via RPC p50, full, {t}"),
            r.p50(&format!("rpc.full.{t}.decrypt")),
            400.0,
        );
        lat(
            format!("fan-out to 100 devices p50, normal, {t}"),
            r.p50(&format!("rpc.normal.{t}.fanout100")),
            1000.0,
        );
        for d in DURABILITIES {
            lat(
                format!("session from a bundle, committed, p50, {d}, {t}"),
                r.p50(&format!("rpc.{d}.{t}.session_active")),
                1000.0,
            );
        }
    }
    let mut speed = |what: String, ours: Option<f64>, theirs: Option<f64>, factor: f64| {
        let x = match (ours, theirs) {
            (Some(o), Some(p)) if o > 0.0 => Some(p / o),
            _ => None,
        };
        out.push(Target {
            what,
            value: x.map(|x| format!("{x:.1}×")).unwrap_or_else(|| "–".into()),
            goal: format!("≥ {factor}× faster"),
            pass: x.map(|x| x >= factor),
        });
    };
    for ns in NS_ALL {
        let t = ns_tag(ns);
        for d in DURABILITIES {
            let pk = py_key("decrypt", d);
            speed(
                format!("decrypt, {d}, {t} vs python-omemo {pk}"),
                r.p50(&format!("rpc.{d}.{t}.decrypt")),
                r.p50(&format!("py.{t}.{pk}")),
                3.0,
            );
        }
        speed(
            format!("fan-out 100, normal, {t} vs python-omemo"),
            r.p50(&format!("rpc.normal.{t}.fanout100")),
            r.p50(&format!("py.{t}.fanout100")),
            10.0,
        );
        for d in DURABILITIES {
            speed(
                format!("session from a bundle, {d}, {t} vs python-omemo"),
                r.p50(&format!("rpc.{d}.{t}.session_active")),
                r.p50(&format!("py.{t}.session_active")),
                10.0,
            );
        }
    }
    for ns in NS_ALL {
        let t = ns_tag(ns);
        for (d, goal) in [("normal", 15_000.0), ("full", 5_000.0)] {
            let v = r.rates.get(&format!("rpc.{d}.{t}.throughput_8")).copied();
            out.push(Target {
                what: format!("8 clients decrypting, {d}, {t}"),
                value: v.map(|v| format!("{v:.0}/s")).unwrap_or_else(|| "–".into()),
                goal: format!("≥ {goal:.0}/s"),
                pass: v.map(|v| v >= goal),
            });
        }
    }
    for ns in NS_ALL {
        let t = ns_tag(ns);
        for d in DURABILITIES {
            at_most(
                &mut out,
                format!("issue 8: decrypt p50 with ÷ without redelivery, {d}, {t}"),
                r.p50(&format!("ab.{d}.{t}.decrypt_with_redelivery")),
                r.p50(&format!("ab.{d}.{t}.decrypt_without_redelivery")),
                1.10,
            );
        }
    }
    let sessions = r.values.get("mem.sessions").copied();
    let full_size = sessions.is_some_and(|s| s >= 10_000.0);
    let rss = [
        "mem.rss_hot_mib (all sessions cached)",
        "mem.rss_warm_mib (after restart, all loaded)",
    ]
    .iter()
    .filter_map(|k| r.values.get(*k).copied())
    .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    let n = sessions
        .map(|s| format!("{s:.0}"))
        .unwrap_or_else(|| "–".into());
    out.push(Target {
        what: format!("RSS with {n} sessions loaded (max of hot / after restart)"),
        value: rss
            .map(|v| format!("{v:.1} MiB"))
            .unwrap_or_else(|| "–".into()),
        goal: "< 64 MiB".into(),
        pass: rss.filter(|_| full_size).map(|v| v < 64.0),
    });
    let st = r.p50("mem.startup");
    out.push(Target {
        what: format!("start-up with {n} sessions"),
        value: opt_us(st),
        goal: "< 1 s".into(),
        pass: st.filter(|_| full_size).map(|v| v < 1e6),
    });
    let _ = cfg;
    out
}

/// `a / b` must stay at most `limit`.
fn at_most(out: &mut Vec<Target>, what: String, a: Option<f64>, b: Option<f64>, limit: f64) {
    let x = match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    out.push(Target {
        what,
        value: x.map(|x| format!("{x:.2}×")).unwrap_or_else(|| "–".into()),
        goal: format!("≤ {limit}×"),
        pass: x.map(|x| x <= limit),
    });
}

/// `a / b` must reach at least `limit`.
fn at_least(out: &mut Vec<Target>, what: String, a: Option<f64>, b: Option<f64>, limit: f64) {
    let x = match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    out.push(Target {
        what,
        value: x.map(|x| format!("{x:.2}×")).unwrap_or_else(|| "–".into()),
        goal: format!("≥ {limit}×"),
        pass: x.map(|x| x >= limit),
    });
}

/// Issue 13's targets: ratios within this run, so that they hold on any machine.
fn targets_issue13(r: &Report) -> Vec<Target> {
    let mut out = Vec::new();
    for ns in NS_ALL {
        let t = ns_tag(ns);
        for (d, limit) in [("normal", 1.5), ("full", 1.15)] {
            for op in ["decrypt", "encrypt"] {
                at_most(
                    &mut out,
                    format!("{op} p50 ÷ floor, {d}, {t}"),
                    r.p50(&format!("rpc.{d}.{t}.{op}")),
                    floor_sum(r, op, d),
                    limit,
                );
            }
        }
    }
    for ns in NS_ALL {
        let t = ns_tag(ns);
        at_most(
            &mut out,
            format!("fan-out 100 p50 ÷ protocol-core fan-out, normal, {t}"),
            r.p50(&format!("rpc.normal.{t}.fanout100")),
            r.p50(&format!("core.{t}.fanout100")),
            2.5,
        );
        at_least(
            &mut out,
            format!("fan-out 100, normal, {t}: python-omemo ÷ omemod"),
            r.p50(&format!("py.{t}.fanout100")),
            r.p50(&format!("rpc.normal.{t}.fanout100")),
            50.0,
        );
        for (d, limit) in [("normal", 12.0), ("full", 10.0)] {
            at_least(
                &mut out,
                format!("session from a bundle, committed, {d}, {t}: python-omemo ÷ omemod"),
                r.p50(&format!("py.{t}.session_active")),
                r.p50(&format!("rpc.{d}.{t}.session_active")),
                limit,
            );
        }
    }
    for ns in NS_ALL {
        let t = ns_tag(ns);
        // Within one run "no regression under NORMAL" can only mean: 8 clients are not slower
        // than 1; the comparison with earlier builds is the report's before/after.
        for (d, limit) in [("full", 4.0), ("normal", 1.0)] {
            at_least(
                &mut out,
                format!("8 clients ÷ 1 client throughput, {d}, {t}"),
                r.rates.get(&format!("rpc.{d}.{t}.throughput_8")).copied(),
                r.rates.get(&format!("rpc.{d}.{t}.throughput_1")).copied(),
                limit,
            );
        }
    }
    let sessions = r.values.get("mem.sessions").copied();
    let full_size = sessions.is_some_and(|s| s >= 10_000.0);
    let rss = [
        "mem.rss_hot_mib (all sessions cached)",
        "mem.rss_warm_mib (after restart, all loaded)",
    ]
    .iter()
    .filter_map(|k| r.values.get(*k).copied())
    .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    out.push(Target {
        what: "RSS with 10,000 sessions loaded (max of hot / after restart)".into(),
        value: rss
            .map(|v| format!("{v:.1} MiB"))
            .unwrap_or_else(|| "–".into()),
        goal: "< 32 MiB".into(),
        pass: rss.filter(|_| full_size).map(|v| v < 32.0),
    });
    let st = r.p50("mem.startup");
    out.push(Target {
        what: "start-up with 10,000 sessions".into(),
        value: opt_us(st),
        goal: "< 100 ms".into(),
        pass: st.filter(|_| full_size).map(|v| v < 100_000.0),
    });
    out
}

fn pass_str(p: Option<bool>) -> &'static str {
    match p {
        Some(true) => "PASS",
        Some(false) => "MISS",
        None => "n/a",
    }
}

fn summarize(r: &Report, cfg: &Cfg) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# omemod performance\n");
    let _ = writeln!(
        md,
        "Generated by `scripts/bench` (`cargo bench -p omemod --bench omemod`){}. Latencies are \
         medians (p50) and 99th percentiles of many iterations; \"via RPC\" is one request on the Unix \
         socket of a running release daemon with its SQLite database (WAL) in a temp dir, from \
         sending the request line to receiving the answer line, committed before the answer. \
         Why the figures are what they are, and what each design choice costs: \
         [performance-notes.md](performance-notes.md).\n",
        if cfg.quick {
            " — **quick smoke run (OMEMOD_BENCH_QUICK=1): few iterations, not representative**"
        } else {
            ""
        }
    );
    let _ = writeln!(md, "## Machine\n\n| | |\n|---|---|");
    for (k, v) in machine() {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    if let Some(p) = &r.python_version {
        let _ = writeln!(md, "| python-omemo | {p} |");
    }
    let _ = writeln!(md);

    let _ = writeln!(md, "## Operations\n");
    let _ = writeln!(
        md,
        "| operation | ns | omemod normal p50 / p99 | omemod full p50 / p99 | protocol-core p50 | python-omemo p50 | normal ÷ core | normal ÷ python | full ÷ python | normal ÷ floor | full ÷ floor |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for (op, label) in OPS {
        for ns in NS_ALL {
            let t = ns_tag(ns);
            let fg = |d: &str| {
                r.figs
                    .get(&format!("rpc.{d}.{t}.{op}"))
                    .map(|f| format!("{} / {}", us(f.p50), us(f.p99)))
                    .unwrap_or_else(|| "–".into())
            };
            let on = r.p50(&format!("rpc.normal.{t}.{op}"));
            let of = r.p50(&format!("rpc.full.{t}.{op}"));
            let core = r.p50(&format!("core.{t}.{op}"));
            let pyn = r.p50(&format!("py.{t}.{}", py_key(op, "normal")));
            let pyf = r.p50(&format!("py.{t}.{}", py_key(op, "full")));
            let pycol = if py_key(op, "normal") != py_key(op, "full") {
                format!("{} / {}", opt_us(pyn), opt_us(pyf))
            } else {
                opt_us(pyn)
            };
            let _ = writeln!(
                md,
                "| {label} | {t} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                fg("normal"),
                fg("full"),
                opt_us(core),
                pycol,
                ratio(on, core),
                ratio(on, pyn),
                ratio(of, pyf),
                ratio(on, floor_sum(r, op, "normal")),
                ratio(of, floor_sum(r, op, "full")),
            );
        }
    }
    let _ = writeln!(
        md,
        "\npython-omemo: for decrypt, the comparator is decrypt + persisting its storage as JSON \
         (without fsync for normal / with fsync for full, shown as nosync / fsync); otherwise its plain \
         in-memory operation (no XML, no persistence: favours python-omemo). Floor of an operation = \
         empty RPC round trip + one small SQLite commit (same durability) + N × X25519 (N: decrypt \
         with DH step 3, active session 7, passive session 8, others 0). Ratios < 1 mean omemod is faster.\n"
    );

    let _ = writeln!(
        md,
        "## Throughput (decrypts/s, each client its own connection and session)\n"
    );
    let _ = writeln!(
        md,
        "| ns | normal, 1 client | normal, 8 clients | full, 1 client | full, 8 clients |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for ns in NS_ALL {
        let t = ns_tag(ns);
        let g = |d: &str, k: &str| {
            r.rates
                .get(&format!("rpc.{d}.{t}.throughput_{k}"))
                .map(|v| format!("{v:.0}"))
                .unwrap_or_else(|| "–".into())
        };
        let _ = writeln!(
            md,
            "| {t} | {} | {} | {} | {} |",
            g("normal", "1"),
            g("normal", "8"),
            g("full", "1"),
            g("full", "8")
        );
    }
    let _ = writeln!(md);

    let _ = writeln!(md, "## Floor\n\n| operation | p50 | p99 |\n|---|---|---|");
    for (k, label) in [
        ("floor.x25519", "X25519"),
        ("floor.ed25519_sign", "Ed25519 sign"),
        ("floor.ed25519_verify", "Ed25519 verify"),
        (
            "floor.sqlite_commit.normal",
            "SQLite commit (WAL, NORMAL), rusqlite",
        ),
        (
            "floor.sqlite_commit.full",
            "SQLite commit (WAL, FULL), rusqlite",
        ),
        ("floor.rpc_status.normal", "empty RPC round trip (`status`)"),
        (
            "floor.decrypt_commit.session_row",
            "decrypt commit (NORMAL): the session row",
        ),
        (
            "floor.decrypt_commit.session_row+redelivery_row",
            "… and the redelivery row",
        ),
        (
            "floor.decrypt_commit.session_row+other_page",
            "… and a write to another page instead",
        ),
        (
            "floor.decrypt_commit.session_row_1.2KB_larger",
            "… the session row 1.2 KB larger instead",
        ),
    ] {
        if let Some(f) = r.figs.get(k) {
            let _ = writeln!(md, "| {label} | {} | {} |", us(f.p50), us(f.p99));
        }
    }
    let _ = writeln!(md);

    if r.values.contains_key("mem.sessions") {
        let _ = writeln!(md, "## Memory, start-up, database size\n");
        let _ = writeln!(
            md,
            "Made with {:.0} peer devices (100 per JID, OMEMO 2, 100-prekey bundles generated \
             in-process) ingested via `devicelist.update` + batched `bundle.update`, then one \
             `encrypt` per JID (100 new sessions each). `--durability normal`.\n",
            r.values["mem.sessions"]
        );
        let _ = writeln!(md, "| figure | value |\n|---|---|");
        for (k, v) in &r.values {
            if let Some(name) = k.strip_prefix("mem.") {
                let _ = writeln!(md, "| {name} | {v:.2} |");
            }
        }
        if let Some(f) = r.figs.get("mem.startup") {
            let _ = writeln!(
                md,
                "| start-up (spawn → first `status` answer), p50 | {} |",
                us(f.p50)
            );
        }
        let _ = writeln!(md);
    }

    let rows = floor_rows(r);
    if !rows.is_empty() {
        let _ = writeln!(md, "## RPC figures ÷ this run's floor\n");
        let _ = writeln!(
            md,
            "Floor of a committed RPC = empty RPC round trip + one small SQLite commit of the same \
             durability (measured in this run), + N × X25519 for operations with DH steps (see \
             above). A ratio of 1.00 would be an answer as fast as an empty request plus a commit.\n"
        );
        for d in DURABILITIES {
            if let Some(f) = rpc_floor(r, d) {
                let _ = writeln!(
                    md,
                    "- {d}: empty RPC {} + commit {} = **{}**",
                    opt_us(r.p50(&format!("floor.rpc_status.{d}"))),
                    opt_us(r.p50(&format!("floor.sqlite_commit.{d}"))),
                    us(f)
                );
            }
        }
        let _ = writeln!(
            md,
            "\n| figure | p50 | p99 | floor | p50 ÷ floor | p99 ÷ floor |\n|---|---|---|---|---|---|"
        );
        for (k, f, floor) in &rows {
            let _ = writeln!(
                md,
                "| {k} | {} | {} | {} | {:.2} | {:.2} |",
                us(f.p50),
                us(f.p99),
                us(*floor),
                f.p50 / floor,
                f.p99 / floor
            );
        }
        let _ = writeln!(md);
    }

    let _ = writeln!(
        md,
        "## Targets of issue 13 (ratios within this run)\n\n| target | measured | goal | |\n|---|---|---|---|"
    );
    for t in targets_issue13(r) {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            t.what,
            t.value,
            t.goal,
            pass_str(t.pass)
        );
    }
    let _ = writeln!(md);

    let _ = writeln!(
        md,
        "## Targets of issue 5\n\n| target | measured | goal | |\n|---|---|---|---|"
    );
    for t in targets(r, cfg) {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            t.what,
            t.value,
            t.goal,
            pass_str(t.pass)
        );
    }
    for n in &r.notes {
        let _ = writeln!(md, "\nNote: {n}");
    }
    md
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: do nothing there.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "omemod benchmark: run with `cargo bench -p omemod --bench omemod` or scripts/bench"
        );
        return;
    }
    let cfg = Cfg::from_env();
    let mut r = Report::default();
    println!(
        "omemod benchmark{}",
        if cfg.quick {
            " (QUICK smoke run: numbers are rough)"
        } else {
            ""
        }
    );
    for (k, v) in machine() {
        println!("  {k:<8} {v}");
    }
    println!("  binary   {}", cfg.bin.display());
    let started = Instant::now();
    if cfg.section("floor") {
        bench_floor(&cfg, &mut r);
    }
    if cfg.section("core") {
        bench_core(&cfg, &mut r);
    }
    if cfg.section("rpc") {
        for &d in &cfg.durabilities {
            bench_rpc(&cfg, &mut r, d);
            if cfg.op("redelivery_ab") {
                bench_redelivery_ab(&cfg, &mut r, d);
            }
        }
    }
    if cfg.section("python") {
        bench_python(&cfg, &mut r);
    }
    if cfg.section("memory") {
        bench_memory(&cfg, &mut r);
    }
    let md = summarize(&r, &cfg);
    println!("\n== ratios ==");
    for (op, label) in OPS {
        for ns in NS_ALL {
            let t = ns_tag(ns);
            for d in DURABILITIES {
                let o = r.p50(&format!("rpc.{d}.{t}.{op}"));
                if o.is_none() {
                    continue;
                }
                println!(
                    "  {label:<42} {t} {d:<6}  ÷core {:>7}  ÷python {:>7}  ÷floor {:>7}",
                    ratio(o, r.p50(&format!("core.{t}.{op}"))),
                    ratio(o, r.p50(&format!("py.{t}.{}", py_key(op, d)))),
                    ratio(o, floor_sum(&r, op, d)),
                );
            }
        }
    }
    println!("\n== RPC figures ÷ this run's floor ==");
    for d in DURABILITIES {
        if let Some(f) = rpc_floor(&r, d) {
            println!(
                "  floor {d:<6} = empty RPC {} + commit {} = {}",
                opt_us(r.p50(&format!("floor.rpc_status.{d}"))),
                opt_us(r.p50(&format!("floor.sqlite_commit.{d}"))),
                us(f)
            );
        }
    }
    for (k, f, floor) in floor_rows(&r) {
        println!(
            "  {k:<44} p50 {:>10} ÷floor {:>6.2}   p99 {:>10} ÷floor {:>6.2}",
            us(f.p50),
            f.p50 / floor,
            us(f.p99),
            f.p99 / floor
        );
    }
    println!("\n== targets of issue 13 (ratios within this run) ==");
    for t in targets_issue13(&r) {
        println!(
            "  [{}] {:<62} {:>12}  (goal {})",
            pass_str(t.pass),
            t.what,
            t.value,
            t.goal
        );
    }
    println!("\n== targets of issue 5 ==");
    for t in targets(&r, &cfg) {
        println!(
            "  [{}] {:<62} {:>12}  (goal {})",
            pass_str(t.pass),
            t.what,
            t.value,
            t.goal
        );
    }
    println!("\n== Markdown ==\n\n{md}");
    if let Some(p) = std::env::var_os("OMEMOD_BENCH_MD").filter(|p| !p.is_empty()) {
        let p = Path::new(&p);
        std::fs::write(p, &md).expect("write Markdown report");
        println!("(written to {})", p.display());
    }
    println!("total time {:.0} s", started.elapsed().as_secs_f64());
}
