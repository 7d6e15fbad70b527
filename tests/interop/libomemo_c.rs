//! Interop tests: omemod (through its JSON-RPC socket only) against libomemo-c, Dino's OMEMO
//! library (Debian `libomemo-c-dev`), a second independent implementation next to python-omemo.
//!
//! libomemo-c is libsignal-protocol-c's code: it writes the header's previous chain length `pn` as
//! the index of the last message of the previous chain, not the count, which python-omemo cannot
//! show. The peer is `libomemo-c/peer.c`, a small wrapper of ours doing what Dino does around the
//! library (keys, bundle, sessions, payload crypto); it is compiled here with `cc` and
//! `pkg-config --cflags --libs libomemo-c openssl` into Cargo's test temp dir. The harness turns
//! its fields into XEP-0384 XML and back, so omemod only ever sees network XML.

#[path = "../support/mod.rs"]
mod support;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use support::{Client, Daemon, OLDMEMO, OMEMO2};

/// The omemod account.
const OM_JID: &str = "alice@omemod.example";
/// The libomemo-c device's account.
const C_JID: &str = "dino@libomemo-c.example";
/// The libomemo-c device id (any valid one: each test has its own daemon).
const C_DEV: u32 = 1_234_567;

macro_rules! per_namespace {
    ($($scenario:ident),* $(,)?) => {
        mod omemo2 {
            $( #[test] fn $scenario() { crate::$scenario(crate::support::OMEMO2); } )*
        }
        mod oldmemo {
            $( #[test] fn $scenario() { crate::$scenario(crate::support::OLDMEMO); } )*
        }
    };
}

per_namespace!(
    session_initiated_by_omemod,
    session_initiated_by_libomemo_c,
    reordering_across_chains_libomemo_c_to_omemod,
    reordering_across_chains_omemod_to_libomemo_c,
    empty_messages_and_heartbeat,
    seeded_random_delays_both_ways,
);

// ------------------------------------------------------------------------------------------------
// The peer binary
// ------------------------------------------------------------------------------------------------

const MISSING: &str = "the libomemo-c interop tests need a C compiler, pkg-config, libomemo-c-dev \
     and libssl-dev (Debian/Ubuntu: apt-get install gcc pkg-config libomemo-c-dev libssl-dev; \
     scripts/test-deps installs them)";

/// Compiles `libomemo-c/peer.c` once per test process.
fn peer_binary() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(build_peer)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn build_peer() -> Result<PathBuf, String> {
    let flags = Command::new("pkg-config")
        .args(["--cflags", "--libs", "libomemo-c", "openssl"])
        .output()
        .map_err(|e| format!("pkg-config could not run ({e}): {MISSING}"))?;
    if !flags.status.success() {
        return Err(format!(
            "pkg-config does not find libomemo-c / openssl ({}): {MISSING}",
            String::from_utf8_lossy(&flags.stderr).trim()
        ));
    }
    let flags = String::from_utf8_lossy(&flags.stdout).into_owned();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("libomemo-c-peer");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Built under a name of this process, then renamed over `peer`: a concurrent run keeps
    // executing the file it opened, and nothing piles up.
    let tmp = dir.join(format!("peer.{}.tmp", std::process::id()));
    let bin = dir.join("peer");
    let src = support::repo().join("tests/interop/libomemo-c/peer.c");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-O1", "-o"])
        .arg(&tmp)
        .arg(&src)
        .args(flags.split_whitespace())
        .output()
        .map_err(|e| format!("{cc} could not run ({e}): {MISSING}"))?;
    if !out.status.success() {
        return Err(format!(
            "compiling {} failed:\n{}\n{MISSING}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::rename(&tmp, &bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    Ok(bin)
}

/// A libomemo-c device in one namespace (`tests/interop/libomemo-c/peer.c`).
struct CPeer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    ns: &'static str,
}

/// A peer reply: `Ok(fields)` or `Err("<code> <text>")`.
type Reply = Result<HashMap<String, String>, String>;

impl CPeer {
    fn start(ns: &'static str) -> CPeer {
        let mut child = Command::new(peer_binary())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the libomemo-c peer");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut p = CPeer {
            child,
            stdin,
            stdout,
            ns,
        };
        let version = if ns == OMEMO2 { 4 } else { 3 };
        p.ok(&format!("init {version} {C_JID} {C_DEV}"));
        p
    }

    fn cmd(&mut self, line: &str) -> Reply {
        writeln!(self.stdin, "{line}").expect("write to the libomemo-c peer");
        self.stdin.flush().expect("flush");
        let mut out = String::new();
        self.stdout
            .read_line(&mut out)
            .expect("read from the libomemo-c peer");
        let out = out.trim_end();
        if let Some(rest) = out.strip_prefix("err ") {
            return Err(rest.to_owned());
        }
        let rest = out
            .strip_prefix("ok")
            .unwrap_or_else(|| panic!("libomemo-c peer: bad reply {out:?} to {line:?}"));
        Ok(rest
            .split_whitespace()
            .filter_map(|t| t.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    fn ok(&mut self, line: &str) -> HashMap<String, String> {
        self.cmd(line)
            .unwrap_or_else(|e| panic!("libomemo-c peer: {line:?} failed: {e}"))
    }

    /// The device list this device would publish.
    fn devicelist_xml(&self) -> String {
        match self.ns {
            OMEMO2 => format!("<devices xmlns='{OMEMO2}'><device id='{C_DEV}'/></devices>"),
            _ => format!("<list xmlns='{OLDMEMO}'><device id='{C_DEV}'/></list>"),
        }
    }

    /// The pre key ids of the current bundle.
    fn prekey_ids(&mut self) -> Vec<u32> {
        let b = self.ok("bundle");
        b["pks"]
            .split(',')
            .map(|p| p.split_once(':').expect("id:key").0.parse().expect("id"))
            .collect()
    }

    /// The bundle this device would publish, as XEP-0384 XML.
    fn bundle_xml(&mut self) -> String {
        let b = self.ok("bundle");
        let pks: Vec<(&str, &str)> = b["pks"]
            .split(',')
            .map(|p| p.split_once(':').expect("id:key"))
            .collect();
        match self.ns {
            OMEMO2 => {
                let mut x = format!(
                    "<bundle xmlns='{OMEMO2}'><spk id='{}'>{}</spk><spks>{}</spks><ik>{}</ik><prekeys>",
                    b["spk_id"], b["spk"], b["spks"], b["ik"]
                );
                for (id, k) in pks {
                    x += &format!("<pk id='{id}'>{k}</pk>");
                }
                x + "</prekeys></bundle>"
            }
            _ => {
                let mut x = format!(
                    "<bundle xmlns='{OLDMEMO}'><signedPreKeyPublic signedPreKeyId='{}'>{}</signedPreKeyPublic><signedPreKeySignature>{}</signedPreKeySignature><identityKey>{}</identityKey><prekeys>",
                    b["spk_id"], b["spk"], b["spks"], b["ik"]
                );
                for (id, k) in pks {
                    x += &format!("<preKeyPublic preKeyId='{id}'>{k}</preKeyPublic>");
                }
                x + "</prekeys></bundle>"
            }
        }
    }

    /// Builds a session with omemod's device from omemod's bundle XML (the last pre key, as a
    /// client picks one of them).
    fn build_from(&mut self, om: &Om, bundle_xml: &str) {
        let (ik, spk_tag, spk_attr, spks, pk_tag, pk_attr) = match self.ns {
            OMEMO2 => ("ik", "spk", "id", "spks", "pk", "id"),
            _ => (
                "identityKey",
                "signedPreKeyPublic",
                "signedPreKeyId",
                "signedPreKeySignature",
                "preKeyPublic",
                "preKeyId",
            ),
        };
        let ik = &elements(bundle_xml, ik)[0].1;
        let (spk_attrs, spk) = &elements(bundle_xml, spk_tag)[0];
        let spks = &elements(bundle_xml, spks)[0].1;
        let pks = elements(bundle_xml, pk_tag);
        let (pk_attrs, pk) = pks.last().expect("omemod's bundle has pre keys");
        self.ok(&format!(
            "build {} {} {ik} {} {spk} {spks} {} {pk}",
            om.jid,
            om.dev,
            attr(spk_attrs, spk_attr),
            attr(pk_attrs, pk_attr),
        ));
    }

    /// Encrypts `body` (`None`: an empty message) to omemod's device; returns the `<encrypted>`
    /// XML and whether the key is a key exchange.
    fn encrypt(&mut self, om: &Om, body: Option<&str>) -> (String, bool) {
        let b = body.map_or("-".to_owned(), |b| B64.encode(b));
        let r = self.ok(&format!("encrypt {} {} {b}", om.jid, om.dev));
        let kex = r["kex"] == "1";
        let payload = match r["payload"].as_str() {
            "-" => String::new(),
            p => format!("<payload>{p}</payload>"),
        };
        let xml = match self.ns {
            OMEMO2 => format!(
                "<encrypted xmlns='{OMEMO2}'><header sid='{C_DEV}'><keys jid='{}'><key rid='{}'{}>{}</key></keys></header>{payload}</encrypted>",
                om.jid,
                om.dev,
                if kex { " kex='true'" } else { "" },
                r["key"]
            ),
            _ => format!(
                "<encrypted xmlns='{OLDMEMO}'><header sid='{C_DEV}'><key rid='{}'{}>{}</key><iv>{}</iv></header>{payload}</encrypted>",
                om.dev,
                if kex { " prekey='true'" } else { "" },
                r["key"],
                r["iv"]
            ),
        };
        (xml, kex)
    }

    /// Decrypts omemod's `<encrypted>` XML: `Ok(None)` for an empty message, else the body and
    /// the SCE `<from>`/`<to>` (OMEMO 2).
    fn decrypt(&mut self, om: &Om, xml: &str) -> Result<Option<(String, String, String)>, String> {
        let sid = attr(&elements(xml, "header")[0].0, "sid");
        assert_eq!(sid, om.dev.to_string(), "{xml}");
        let (attrs, key) = elements(xml, "key")
            .into_iter()
            .find(|(a, _)| attr(a, "rid") == C_DEV.to_string())
            .unwrap_or_else(|| panic!("omemod's message has no key for {C_DEV}: {xml}"));
        let flag = if self.ns == OMEMO2 { "kex" } else { "prekey" };
        let kex = matches!(attr_opt(&attrs, flag).as_deref(), Some("true" | "1"));
        let iv = elements(xml, "iv")
            .first()
            .map_or("-".into(), |e| e.1.clone());
        let payload = elements(xml, "payload")
            .first()
            .map_or("-".into(), |e| e.1.clone());
        let r = self.cmd(&format!(
            "decrypt {} {} {} {key} {iv} {payload}",
            om.jid,
            om.dev,
            u8::from(kex)
        ))?;
        if r["body"] == "-" {
            return Ok(None);
        }
        let body = String::from_utf8(B64.decode(&r["body"]).expect("body base64")).expect("UTF-8");
        Ok(Some((body, r["from"].clone(), r["to"].clone())))
    }
}

impl Drop for CPeer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------------------------------------
// Plain XML reading (both sides write simple, prefix-free XML)
// ------------------------------------------------------------------------------------------------

/// Every `<tag …>text</tag>` (or `<tag …/>`) in `xml`: (attribute text, text content).
fn elements(xml: &str, tag: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let open = format!("<{tag}");
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        if !after.starts_with([' ', '>', '/']) {
            rest = after;
            continue;
        }
        let gt = after.find('>').expect("unterminated tag");
        let attrs = after[..gt].trim_end_matches('/').to_owned();
        if after[..gt].ends_with('/') {
            out.push((attrs, String::new()));
            rest = &after[gt..];
            continue;
        }
        let close = format!("</{tag}>");
        let end = after.find(&close).expect("unclosed element");
        out.push((attrs, after[gt + 1..end].to_owned()));
        rest = &after[end..];
    }
    out
}

fn attr_opt(attrs: &str, name: &str) -> Option<String> {
    let mut rest = attrs;
    while let Some(i) = rest.find(&format!("{name}=")) {
        let before_ok = i == 0 || rest[..i].ends_with(' ');
        let v = &rest[i + name.len() + 1..];
        let q = v.chars().next()?;
        let end = v[1..].find(q)? + 1;
        if before_ok {
            return Some(v[1..end].to_owned());
        }
        rest = &v[end..];
    }
    None
}

fn attr(attrs: &str, name: &str) -> String {
    attr_opt(attrs, name).unwrap_or_else(|| panic!("no {name}= in {attrs:?}"))
}

// ------------------------------------------------------------------------------------------------
// omemod side
// ------------------------------------------------------------------------------------------------

struct Om {
    daemon: Daemon,
    c: Client,
    jid: String,
    dev: u32,
}

impl Om {
    fn start() -> Om {
        let daemon = Daemon::start();
        let mut c = daemon.client();
        let dev = c.create_account(OM_JID);
        Om {
            daemon,
            c,
            jid: OM_JID.to_owned(),
            dev,
        }
    }

    /// Stops omemod (SIGTERM) and starts it again on the same database.
    fn restart(&mut self) {
        self.daemon.stop();
        self.daemon.spawn();
        self.c = self.daemon.client();
    }

    /// omemod learns the libomemo-c device's list and current bundle.
    fn learn(&mut self, peer: &mut CPeer) {
        let ns = peer.ns;
        self.c.ok(
            "devicelist.update",
            json!({"jid": C_JID, "namespace": ns, "xml": peer.devicelist_xml()}),
        );
        self.c.ok(
            "bundle.update",
            json!({"jid": C_JID, "namespace": ns, "device_id": C_DEV, "xml": peer.bundle_xml()}),
        );
    }

    /// omemod encrypts `body` to the libomemo-c device; returns the XML and the kex flag it
    /// reports.
    fn send(&mut self, ns: &str, body: &str) -> (String, bool) {
        let r = self.c.ok(
            "encrypt",
            json!({"to": [C_JID], "body": body, "namespaces": [ns]}),
        );
        let dev = &r["devices"][0];
        assert_eq!(dev["status"], "encrypted", "{r}");
        assert_eq!(dev["device_id"], C_DEV, "{r}");
        (
            r["messages"][0]["xml"].as_str().expect("xml").to_owned(),
            dev["kex"].as_bool().expect("kex"),
        )
    }

    /// omemod decrypts the libomemo-c device's XML.
    fn recv(&mut self, xml: &str) -> Result<Value, Value> {
        self.c.decrypt(C_JID, xml)
    }
}

// ------------------------------------------------------------------------------------------------
// Scenarios
// ------------------------------------------------------------------------------------------------

/// Bodies that need escaping or several UTF-8 bytes (the SCE envelope and 0.3's raw UTF-8).
fn body(who: &str, i: usize) -> String {
    match i % 3 {
        0 => format!("{who} #{i}: plain text"),
        1 => format!("{who} #{i}: <b>&amp; \"quotes\" & 'apostrophes'</b>"),
        _ => format!("{who} #{i}: grüße, 你好, 🦀 — ok"),
    }
}

/// libomemo-c decrypts omemod's message and must find `body`, with the SCE affixes in OMEMO 2.
fn c_recv(peer: &mut CPeer, om: &Om, xml: &str, body: &str) {
    let got = peer
        .decrypt(om, xml)
        .unwrap_or_else(|e| panic!("libomemo-c could not decrypt omemod's message: {e}\n{xml}"))
        .unwrap_or_else(|| panic!("libomemo-c saw an empty message, expected {body:?}"));
    assert_eq!(got.0, body, "libomemo-c decrypted the wrong body");
    if peer.ns == OMEMO2 {
        assert_eq!(
            (got.1.as_str(), got.2.as_str()),
            (OM_JID, C_JID),
            "SCE affixes"
        );
    }
}

/// omemod decrypts libomemo-c's message and must find `body`, with the SCE affixes in OMEMO 2.
fn om_recv(om: &mut Om, ns: &str, xml: &str, body: &str) -> Value {
    let r = om.recv(xml).unwrap_or_else(|e| {
        panic!("omemod could not decrypt libomemo-c's message (expected {body:?}): {e}\n{xml}")
    });
    assert_eq!(r["namespace"], ns, "{r}");
    assert_eq!(r["sender"]["jid"], C_JID, "{r}");
    assert_eq!(r["sender"]["device_id"], C_DEV, "{r}");
    assert_eq!(r["body"], body, "omemod decrypted the wrong body: {r}");
    if ns == OMEMO2 {
        assert_eq!(r["envelope"]["from"], C_JID, "{r}");
        assert_eq!(r["envelope"]["to"], OM_JID, "{r}");
    }
    r
}

/// Alternating messages (every one turns the ratchet), then bursts of 3 each way.
fn converse(om: &mut Om, peer: &mut CPeer, rounds: usize) {
    let ns = peer.ns;
    for i in 0..rounds {
        let b = body("libomemo-c→omemod", i);
        let (x, kex) = peer.encrypt(om, Some(&b));
        assert!(!kex, "round {i}: libomemo-c still sends key exchanges: {x}");
        let r = om_recv(om, ns, &x, &b);
        assert_eq!(r["key_exchange"], false, "{r}");
        let b = body("omemod→libomemo-c", i);
        let (x, kex) = om.send(ns, &b);
        assert!(!kex, "round {i}: omemod still sends key exchanges: {x}");
        c_recv(peer, om, &x, &b);
    }
    for i in 0..3 {
        let burst: Vec<_> = (0..3)
            .map(|j| {
                let b = body(&format!("burst {i} from libomemo-c"), j);
                (peer.encrypt(om, Some(&b)).0, b)
            })
            .collect();
        for (x, b) in &burst {
            om_recv(om, ns, x, b);
        }
        let burst: Vec<_> = (0..3)
            .map(|j| {
                let b = body(&format!("burst {i} from omemod"), j);
                (om.send(ns, &b).0, b)
            })
            .collect();
        for (x, b) in &burst {
            c_recv(peer, om, x, b);
        }
    }
}

/// omemod builds the session from libomemo-c's bundle; both its unanswered messages are key
/// exchanges; libomemo-c consumes one pre key; then messages both ways with ratchet turns.
fn session_initiated_by_omemod(ns: &'static str) {
    let mut om = Om::start();
    let mut peer = CPeer::start(ns);
    om.learn(&mut peer);
    let before = peer.prekey_ids();

    let (x0, kex0) = om.send(ns, "first from omemod");
    let (x1, kex1) = om.send(ns, "second from omemod, still unanswered");
    assert!(
        kex0 && kex1,
        "omemod must send key exchanges until answered"
    );
    c_recv(&mut peer, &om, &x0, "first from omemod");
    c_recv(&mut peer, &om, &x1, "second from omemod, still unanswered");
    let after = peer.prekey_ids();
    assert_eq!(
        before.len() - after.len(),
        1,
        "libomemo-c should have used one pre key: {before:?} → {after:?}"
    );

    let (x, kex) = peer.encrypt(&om, Some("libomemo-c answers"));
    assert!(!kex, "the responder never sends a key exchange: {x}");
    let r = om_recv(&mut om, ns, &x, "libomemo-c answers");
    assert_eq!(r["key_exchange"], false, "{r}");
    converse(&mut om, &mut peer, 6);
}

/// libomemo-c builds the session from omemod's bundle; omemod takes the key exchange, uses one
/// pre key and asks to republish; then messages both ways with ratchet turns.
fn session_initiated_by_libomemo_c(ns: &'static str) {
    let mut om = Om::start();
    let mut peer = CPeer::start(ns);
    om.learn(&mut peer);
    let bundle = om.c.bundle(ns)["xml"].as_str().expect("xml").to_owned();
    peer.build_from(&om, &bundle);

    let (x0, kex0) = peer.encrypt(&om, Some("first from libomemo-c"));
    let (x1, kex1) = peer.encrypt(&om, Some("second from libomemo-c, unanswered"));
    assert!(
        kex0 && kex1,
        "libomemo-c's first messages must be key exchanges"
    );
    let r = om_recv(&mut om, ns, &x0, "first from libomemo-c");
    assert_eq!(r["key_exchange"], true, "{r}");
    assert!(
        r["actions"]
            .as_array()
            .expect("actions")
            .iter()
            .any(|a| a["type"] == "publish_bundle" && a["namespace"] == ns),
        "omemod used a pre key and must ask to republish: {r}"
    );
    let r = om_recv(&mut om, ns, &x1, "second from libomemo-c, unanswered");
    assert_eq!(r["key_exchange"], true, "{r}");
    let after = om.c.bundle(ns)["xml"].as_str().expect("xml").to_owned();
    assert!(
        !after.contains(
            &elements(&bundle, if ns == OMEMO2 { "pk" } else { "preKeyPublic" })
                .last()
                .expect("pre key")
                .1
        ),
        "omemod kept the used pre key in its bundle"
    );

    let (x, kex) = om.send(ns, "omemod answers");
    assert!(!kex, "the responder never sends a key exchange: {x}");
    c_recv(&mut peer, &om, &x, "omemod answers");
    // libomemo-c stops sending key exchanges once it heard back.
    converse(&mut om, &mut peer, 6);
}

/// The chain lengths of the reordering schedule: deterministic, 2…6 messages (a chain of 1 has
/// no "last message after the first").
fn chain_lengths() -> Vec<usize> {
    (0..30).map(|k| 2 + (k * 7 + 3) % 5).collect()
}

/// libomemo-c → omemod, deterministic reordering across chains: of every chain, all messages
/// but the last are delivered (the first ones in reverse order), omemod answers (libomemo-c's
/// ratchet turns), the first message of the next chain is delivered, and only then the last
/// message of the previous chain (once with omemod restarted in between). Nothing may be lost;
/// replays stay duplicates.
fn reordering_across_chains_libomemo_c_to_omemod(ns: &'static str) {
    let mut om = Om::start();
    let mut peer = CPeer::start(ns);
    om.learn(&mut peer);
    let (x, _) = om.send(ns, "hello");
    c_recv(&mut peer, &om, &x, "hello");

    let lengths = chain_lengths();
    let (mut sent, mut late, mut lost) = (0usize, 0usize, Vec::new());
    let mut held: Option<(String, String)> = None;
    for (k, len) in lengths.iter().enumerate() {
        let chain: Vec<(String, String)> = (0..*len)
            .map(|i| {
                let b = body(&format!("chain {k} message {i}"), i);
                sent += 1;
                (peer.encrypt(&om, Some(&b)).0, b)
            })
            .collect();
        let (last, rest) = chain.split_last().expect("chain");
        // The first message of this chain, then the held-back last one of the previous chain
        // (once across a restart of omemod: the earlier chains are in the stored session).
        om_recv(&mut om, ns, &rest[0].0, &rest[0].1);
        if k == lengths.len() / 2 {
            om.restart();
        }
        if let Some((x, b)) = held.take() {
            late += 1;
            match om.recv(&x) {
                Ok(r) => assert_eq!(r["body"], b.as_str(), "{r}"),
                Err(e) => lost.push(format!("chain {} last: {}", k - 1, e["data"]["kind"])),
            }
        }
        for (x, b) in rest[1..].iter().rev() {
            om_recv(&mut om, ns, x, b);
        }
        held = Some(last.clone());
        let b = body("omemod answers", k);
        let (x, _) = om.send(ns, &b);
        c_recv(&mut peer, &om, &x, &b);
    }
    let (x, b) = held.take().expect("last");
    late += 1;
    match om.recv(&x) {
        Ok(r) => assert_eq!(r["body"], b.as_str(), "{r}"),
        Err(e) => lost.push(format!("final last: {}", e["data"]["kind"])),
    }
    eprintln!(
        "{}: libomemo-c → omemod: {sent} messages in {} chains, {late} delivered after the next chain, {} lost",
        if ns == OMEMO2 { "OMEMO 2" } else { "OMEMO 0.3" },
        lengths.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "{} of {sent} messages from libomemo-c lost: {lost:?}",
        lost.len()
    );
    // A replay of a late message is a redelivery (issue 8: same body, the ratchet untouched),
    // and the session still works.
    let r = om.recv(&x).expect("replay redelivered");
    assert_eq!(r["redelivered"], true, "{r}");
    assert_eq!(r["body"], b.as_str(), "{r}");
    converse(&mut om, &mut peer, 1);
}

/// omemod → libomemo-c with the same schedule (libomemo-c keeps earlier receiving chains, so this
/// direction always worked; it shows omemod's headers are what libsignal expects).
fn reordering_across_chains_omemod_to_libomemo_c(ns: &'static str) {
    let mut om = Om::start();
    let mut peer = CPeer::start(ns);
    om.learn(&mut peer);
    let bundle = om.c.bundle(ns)["xml"].as_str().expect("xml").to_owned();
    peer.build_from(&om, &bundle);
    let (x, _) = peer.encrypt(&om, Some("hello"));
    om_recv(&mut om, ns, &x, "hello");

    let mut held: Option<(String, String)> = None;
    let mut sent = 0;
    for (k, len) in chain_lengths().iter().enumerate() {
        let chain: Vec<(String, String)> = (0..*len)
            .map(|i| {
                let b = body(&format!("chain {k} message {i}"), i);
                sent += 1;
                (om.send(ns, &b).0, b)
            })
            .collect();
        let (last, rest) = chain.split_last().expect("chain");
        c_recv(&mut peer, &om, &rest[0].0, &rest[0].1);
        if let Some((x, b)) = held.take() {
            c_recv(&mut peer, &om, &x, &b);
        }
        for (x, b) in rest[1..].iter().rev() {
            c_recv(&mut peer, &om, x, b);
        }
        held = Some(last.clone());
        let b = body("libomemo-c answers", k);
        let (x, _) = peer.encrypt(&om, Some(&b));
        om_recv(&mut om, ns, &x, &b);
    }
    let (x, b) = held.take().expect("last");
    c_recv(&mut peer, &om, &x, &b);
    assert!(
        peer.decrypt(&om, &x).is_err(),
        "libomemo-c accepted a replay"
    );
    eprintln!("{ns}: omemod → libomemo-c: {sent} messages, 0 lost");
    converse(&mut om, &mut peer, 1);
}

/// Empty messages both ways (libomemo-c's key transport / OMEMO 2's 32 zero bytes, omemod's
/// `heartbeat`), and omemod's heartbeat after a long one-sided chain from libomemo-c (counter 53).
fn empty_messages_and_heartbeat(ns: &'static str) {
    let mut om = Om::start();
    let mut peer = CPeer::start(ns);
    om.learn(&mut peer);
    let (x, _) = om.send(ns, "hello");
    c_recv(&mut peer, &om, &x, "hello");

    let (x, kex) = peer.encrypt(&om, None);
    assert!(!kex, "{x}");
    assert!(
        !x.contains("<payload>"),
        "an empty message has no payload: {x}"
    );
    let r = om
        .recv(&x)
        .unwrap_or_else(|e| panic!("omemod refused libomemo-c's empty message: {e}"));
    assert_eq!(r["empty"], true, "{r}");

    let heartbeat = |om: &mut Om| {
        let r = om.c.ok(
            "heartbeat",
            json!({"jid": C_JID, "namespace": ns, "device_id": C_DEV}),
        );
        r["messages"][0]["xml"].as_str().expect("xml").to_owned()
    };
    let x = heartbeat(&mut om);
    let got = peer
        .decrypt(&om, &x)
        .unwrap_or_else(|e| panic!("libomemo-c refused omemod's heartbeat: {e}\n{x}"));
    assert_eq!(got, None, "omemod's heartbeat must be empty");

    // 54 messages in one chain: the one with counter 53 asks omemod for a heartbeat.
    let mut asked = Vec::new();
    for i in 0..54 {
        let b = body("one-sided", i);
        let (x, _) = peer.encrypt(&om, Some(&b));
        let r = om_recv(&mut om, ns, &x, &b);
        let wants = r["actions"]
            .as_array()
            .expect("actions")
            .iter()
            .any(|a| a["type"] == "send_heartbeat" && a["device_id"] == C_DEV);
        if wants {
            asked.push(i);
        }
    }
    assert_eq!(
        asked,
        vec![53],
        "omemod should ask for one heartbeat, at counter 53"
    );
    let x = heartbeat(&mut om);
    assert_eq!(peer.decrypt(&om, &x).expect("heartbeat"), None);
    converse(&mut om, &mut peer, 1);
}

/// A seeded random schedule, 300 messages: each side sends bursts of 1–4 messages; each message
/// is delivered in its turn (in random order) or held back for 1–3 later turns (fewer than the 5 earlier chains both
/// sides keep), so late messages land in older chains in every order. Nothing may be lost either
/// way. `OMEMOD_TEST_SEED` replays a schedule.
fn seeded_random_delays_both_ways(ns: &'static str) {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(support::seed(0x11b0_3e3c));
    let mut om = Om::start();
    let mut peer = CPeer::start(ns);
    om.learn(&mut peer);
    let (x, _) = om.send(ns, "hello");
    c_recv(&mut peer, &om, &x, "hello");

    // (due turn, xml, body) per direction.
    let mut to_om: Vec<(usize, String, String)> = Vec::new();
    let mut to_c: Vec<(usize, String, String)> = Vec::new();
    let (mut sent, mut late) = (0usize, 0usize);
    let mut lost = Vec::new();
    let mut turn = 0;
    while sent < 300 {
        turn += 1;
        let c_turn = turn % 2 == 1;
        for i in 0..rng.gen_range(1..=4) {
            let b = body(&format!("turn {turn}"), i);
            let x = if c_turn {
                peer.encrypt(&om, Some(&b)).0
            } else {
                om.send(ns, &b).0
            };
            sent += 1;
            let due = if rng.gen_bool(0.3) {
                late += 1;
                turn + rng.gen_range(1..=3)
            } else {
                turn
            };
            if c_turn { &mut to_om } else { &mut to_c }.push((due, x, b));
        }
        // Deliver what is due, in random order.
        for queue in [&mut to_om, &mut to_c] {
            let mut due: Vec<_> = Vec::new();
            queue.retain(|m| {
                if m.0 <= turn {
                    due.push(m.clone());
                    false
                } else {
                    true
                }
            });
            due.shuffle(&mut rng);
            for (_, x, b) in due {
                let is_for_om = x.contains(&format!("sid='{C_DEV}'"));
                let res = if is_for_om {
                    om.recv(&x)
                        .map(|r| r["body"] == b.as_str())
                        .map_err(|e| e["data"]["kind"].to_string())
                } else {
                    peer.decrypt(&om, &x)
                        .map(|r| r.is_some_and(|(got, _, _)| got == b))
                };
                match res {
                    Ok(true) => {}
                    Ok(false) => panic!("wrong body for {b:?}"),
                    Err(e) => lost.push(format!(
                        "{} {b:?}: {e}",
                        if is_for_om {
                            "→omemod"
                        } else {
                            "→libomemo-c"
                        }
                    )),
                }
            }
        }
    }
    // Whatever is still held arrives now.
    for (_, x, b) in to_om.drain(..) {
        if let Err(e) = om.recv(&x) {
            lost.push(format!("→omemod {b:?}: {}", e["data"]["kind"]));
        }
    }
    for (_, x, b) in to_c.drain(..) {
        if let Err(e) = peer.decrypt(&om, &x) {
            lost.push(format!("→libomemo-c {b:?}: {e}"));
        }
    }
    eprintln!(
        "{ns}: {sent} messages both ways, {late} held back 1–3 turns, {} lost",
        lost.len()
    );
    assert!(lost.is_empty(), "{} of {sent} lost: {lost:#?}", lost.len());
    converse(&mut om, &mut peer, 1);
}
