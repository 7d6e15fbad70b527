//! Crash safety end to end: the daemon is killed with SIGKILL at random points (seeded RNG)
//! while a client streams requests to it, restarted on the same database, and every
//! acknowledged operation must have held:
//!
//! - an answered decrypt never decrypts anew: its ratchet step (and the key material for
//!   redelivery) was committed before the answer, so it comes back as a redelivery;
//! - a decrypt in flight at the kill is never lost: it decrypts afterwards (with the right
//!   body), fresh or as a redelivery, and one never sent decrypts;
//! - an answered encrypt produced a message the peer can decrypt, and the sender's session was
//!   not rolled back (its later messages still decrypt, nothing is reused);
//! - a one-time prekey is consumed if and only if the session built from it was committed, the
//!   pool is refilled in the same transaction, and the bundle version counts exactly those;
//! - stored peer device lists and bundles that were acknowledged are there after the restart;
//! - the database and socket keep their modes; sessions work both ways afterwards;
//! - a restart after a SIGKILL is never taken for the restore of an older copy.

#[path = "../support/mod.rs"]
mod support;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};
use support::{prekey_ids, Client, Daemon, BOTH};

const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";

fn seed() -> u64 {
    support::seed(0xc0ffee)
}

/// A client connection that survives the daemon dying under it: `call` gives `None` when
/// the connection broke before the answer arrived (the request was not acknowledged).
struct Conn {
    conn: omemod_client::blocking::Client,
}

impl Conn {
    fn connect(socket: &Path) -> Conn {
        let mut conn = omemod_client::blocking::Client::connect(socket).expect("connect");
        conn.set_timeout(Some(Duration::from_secs(30)));
        Conn { conn }
    }

    fn call(&mut self, method: &str, params: &Value) -> Option<Result<Value, Value>> {
        match self.conn.call(method, params.clone()) {
            Ok(v) => Some(Ok(v)),
            Err(omemod_client::Error::Rpc(e)) => Some(Err(support::error_object(&e))),
            Err(omemod_client::Error::TimedOut(_)) => {
                panic!("no answer to {method} within 30 s (daemon hung?)")
            }
            Err(_) => None,
        }
    }
}

/// What became of one request of a stream.
#[derive(Debug, Clone)]
enum Outcome {
    /// Answered before the kill.
    Acked(Result<Value, Value>),
    /// Sent, but the daemon died before answering.
    InFlight,
    /// Never sent.
    NotSent,
}

impl Outcome {
    fn acked_ok(&self) -> bool {
        matches!(self, Outcome::Acked(Ok(_)))
    }
}

/// Estimates how long a stream takes, from the streams seen so far, to place kills in it.
struct Pacer {
    per_request: Duration,
}

impl Pacer {
    fn new() -> Self {
        Pacer {
            per_request: Duration::from_millis(3),
        }
    }

    /// A random point within the expected run time of `n` requests.
    fn delay(&self, rng: &mut StdRng, n: usize) -> Duration {
        self.per_request.mul_f64(n as f64 * rng.gen_range(0.0..1.0))
    }

    fn observe(&mut self, answered: usize, took: Duration) {
        if answered >= 3 {
            self.per_request = (self.per_request + took / answered as u32) / 2;
        }
    }
}

/// Streams `reqs` over one connection while this thread kills the daemon after a random delay;
/// restarts it and returns what became of each request (the first unanswered one is
/// `InFlight`, the rest `NotSent`).
fn stream_and_kill(
    d: &mut Daemon,
    reqs: Vec<(String, Value)>,
    rng: &mut StdRng,
    pacer: &mut Pacer,
) -> Vec<Outcome> {
    let n = reqs.len();
    let delay = pacer.delay(rng, n);
    let (ready_tx, ready_rx) = mpsc::channel();
    let socket = d.socket.clone();
    let streamer = thread::spawn(move || {
        let mut c = Conn::connect(&socket);
        ready_tx.send(()).unwrap();
        let t = Instant::now();
        let mut last = Duration::ZERO;
        let mut out = Vec::new();
        for (method, params) in &reqs {
            match c.call(method, params) {
                Some(r) => {
                    out.push(Outcome::Acked(r));
                    last = t.elapsed();
                }
                None => {
                    out.push(Outcome::InFlight);
                    break;
                }
            }
        }
        (out, last)
    });
    ready_rx.recv().expect("streamer connected");
    thread::sleep(delay);
    d.kill();
    let (mut out, took) = streamer.join().expect("streamer panicked");
    let answered = out
        .iter()
        .filter(|o| matches!(o, Outcome::Acked(_)))
        .count();
    pacer.observe(answered, took);
    out.resize(n, Outcome::NotSent);
    d.spawn();
    check_modes(d);
    // A crash never looks like a restored copy (issue 19): that would rebuild every session.
    let status = d.client().ok("status", json!({}));
    assert_eq!(
        status["rollback"],
        Value::Null,
        "a SIGKILL was taken for a restore: {status}"
    );
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Database 0600 (and its WAL files), socket 0600, socket directory 0700.
fn check_modes(d: &Daemon) {
    assert_eq!(mode(&d.db), 0o600, "database mode");
    for suffix in ["-wal", "-shm"] {
        let p = d.db.with_file_name(format!(
            "{}{suffix}",
            d.db.file_name().unwrap().to_string_lossy()
        ));
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{} mode", p.display());
        }
    }
    assert_eq!(mode(&d.socket), 0o600, "socket mode");
    assert_eq!(
        mode(d.socket.parent().unwrap()),
        0o700,
        "socket directory mode"
    );
}

/// Calls with an optional `account`.
fn call_as(
    c: &mut Client,
    account: Option<&str>,
    method: &str,
    mut params: Value,
) -> Result<Value, Value> {
    if let Some(a) = account {
        params["account"] = json!(a);
    }
    c.call(method, params)
}

fn ok_as(c: &mut Client, account: Option<&str>, method: &str, params: Value) -> Value {
    call_as(c, account, method, params).unwrap_or_else(|e| panic!("{method} failed: {e}"))
}

/// The `<encrypted>` of namespace `ns` in an encrypt result.
fn message_xml(r: &Value, ns: &str) -> String {
    r["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .find(|m| m["namespace"] == ns)
        .unwrap_or_else(|| panic!("no {ns} message: {r}"))["xml"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn encrypt_as(c: &mut Client, account: Option<&str>, to: &str, body: &str, ns: &str) -> String {
    let r = ok_as(
        c,
        account,
        "encrypt",
        json!({"to": [to], "body": body, "namespaces": [ns]}),
    );
    message_xml(&r, ns)
}

/// Decrypts and checks body and sender.
fn expect_body(c: &mut Client, account: Option<&str>, from: &str, sid: u32, xml: &str, body: &str) {
    let r = call_as(c, account, "decrypt", json!({"from": from, "xml": xml}))
        .unwrap_or_else(|e| panic!("decrypt of {body:?} failed: {e}"));
    assert_eq!(r["body"], json!(body), "{r}");
    assert_eq!(r["sender"]["device_id"], json!(sid), "{r}");
}

/// Decrypts a message decrypted before: a redelivery of the same body (the ratchet step and the
/// key material were committed together), never a second first decryption.
fn expect_redelivered(
    c: &mut Client,
    account: Option<&str>,
    from: &str,
    xml: &str,
    body: &str,
    what: &str,
) {
    match call_as(c, account, "decrypt", json!({"from": from, "xml": xml})) {
        Ok(v) => {
            assert_eq!(v["redelivered"], true, "{what} decrypted anew: {v}");
            assert_eq!(v["body"], json!(body), "{what}: {v}");
            assert_eq!(v["actions"], json!([]), "{what}: {v}");
        }
        Err(e) => panic!("{what} lost after the restart: {e}"),
    }
}

/// One message each way in `ns`.
#[allow(clippy::too_many_arguments)]
fn round_trip(
    x: &mut Client,
    xa: Option<&str>,
    x_jid: &str,
    x_id: u32,
    y: &mut Client,
    ya: Option<&str>,
    y_jid: &str,
    y_id: u32,
    ns: &str,
    tag: &str,
) {
    let body = format!("{tag}: {x_jid} -> {y_jid}");
    let xml = encrypt_as(x, xa, y_jid, &body, ns);
    expect_body(y, ya, x_jid, x_id, &xml, &body);
    let body = format!("{tag}: {y_jid} -> {x_jid}");
    let xml = encrypt_as(y, ya, x_jid, &body, ns);
    expect_body(x, xa, y_jid, y_id, &xml, &body);
}

/// `xml` (a `<bundle>`) with only the one-time prekey `keep` left.
fn only_prekey(xml: &str, keep: u32) -> String {
    let (open, close) = if xml.contains("<pk ") {
        ("<pk ", "</pk>")
    } else {
        ("<preKeyPublic ", "</preKeyPublic>")
    };
    let start = xml.find("<prekeys>").expect("<prekeys>") + "<prekeys>".len();
    let end = xml.find("</prekeys>").expect("</prekeys>");
    let kept: Vec<&str> = xml[start..end]
        .split_inclusive(close)
        .filter(|e| {
            e.starts_with(open)
                && (e.contains(&format!("d='{keep}'>")) || e.contains(&format!("d=\"{keep}\">")))
        })
        .collect();
    assert_eq!(kept.len(), 1, "prekey {keep} not in {xml}");
    format!("{}{}{}", &xml[..start], kept[0], &xml[end..])
}

/// Kill rounds during a stream of decrypts (messages the peer prepared) and encrypts (to the
/// peer), alternating the victim (alice or bob) and the namespace. The first round of each
/// namespace starts with no session, so the kill can hit the key exchange.
#[test]
fn sigkill_during_encrypt_and_decrypt_streams() {
    encrypt_and_decrypt_streams(&[]);
}

/// The same under `--durability normal`, where the waiting request itself leads the commit
/// (no writer thread on the path): an acknowledged answer still means committed.
#[test]
fn sigkill_during_encrypt_and_decrypt_streams_normal() {
    encrypt_and_decrypt_streams(&["--durability", "normal"]);
}

fn encrypt_and_decrypt_streams(extra: &[&str]) {
    const ROUNDS: usize = 20;
    const MSGS: usize = 24;
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed());
    let mut ds = [Daemon::start_with(extra), Daemon::start_with(extra)];
    let jids = [ALICE, BOB];
    let mut ids = [0u32; 2];
    {
        let mut a = ds[0].client();
        let mut b = ds[1].client();
        ids[0] = a.create_account(ALICE);
        ids[1] = b.create_account(BOB);
        // Alice will start both sessions: bob's bundle offers her one prekey per namespace.
        for (k, ns) in BOTH.iter().enumerate() {
            let list = b.devicelist(ns);
            a.ok(
                "devicelist.update",
                json!({"jid": BOB, "namespace": ns, "xml": list["xml"]}),
            );
            let bundle = b.bundle(ns);
            let xml = bundle["xml"].as_str().unwrap();
            let first = prekey_ids(xml).into_iter().nth(k).expect("prekey");
            let xml = only_prekey(xml, first);
            a.ok(
                "bundle.update",
                json!({"jid": BOB, "namespace": ns, "device_id": ids[1], "xml": xml}),
            );
        }
        b.learn(ALICE, &mut a, &BOTH);
    }
    let (mut acked_decrypts, mut acked_encrypts, mut in_flight_kills) = (0, 0, 0);
    let mut pacer = Pacer::new();
    for round in 0..ROUNDS {
        let ns = BOTH[round % 2];
        // Rounds 0, 1: bob (no session yet: alice's messages are key exchanges); 2, 3: alice; …
        let v = (round / 2 + 1) % 2;
        let p = 1 - v;
        let (vj, pj, vid, pid) = (jids[v], jids[p], ids[v], ids[p]);
        let mut pc = ds[p].client();
        let incoming: Vec<(String, String)> = (0..MSGS)
            .map(|i| {
                let body = format!("round {round}: {pj} -> {vj} #{i}");
                let xml = pc.encrypt_xml(&[vj], Some(&body), ns);
                (body, xml)
            })
            .collect();
        // The stream: decrypts in a roughly ascending order (neighbours swapped at random), and
        // encrypts to the peer mixed in after the first decrypt (the victim must not start a
        // session of its own while the peer's key exchange is in flight).
        let mut order: Vec<usize> = (0..MSGS).collect();
        for i in 1..MSGS {
            if rng.gen_bool(0.3) {
                order.swap(i - 1, i);
            }
        }
        // (request, Some(message index) for a decrypt / None for an encrypt, encrypt body)
        let mut plan: Vec<(Option<usize>, String)> = Vec::new();
        let mut e = 0;
        for (k, &i) in order.iter().enumerate() {
            plan.push((Some(i), String::new()));
            while k > 0 && rng.gen_bool(0.4) {
                plan.push((None, format!("round {round}: {vj} -> {pj} #{e}")));
                e += 1;
            }
        }
        for _ in 0..8 {
            plan.push((None, format!("round {round}: {vj} -> {pj} #{e}")));
            e += 1;
        }
        let reqs: Vec<(String, Value)> = plan
            .iter()
            .map(|(d, body)| match d {
                Some(i) => (
                    "decrypt".to_owned(),
                    json!({"from": pj, "xml": incoming[*i].1}),
                ),
                None => (
                    "encrypt".to_owned(),
                    json!({"to": [pj], "body": body, "namespaces": [ns]}),
                ),
            })
            .collect();
        let outcomes = stream_and_kill(&mut ds[v], reqs, &mut rng, &mut pacer);
        in_flight_kills += usize::from(outcomes.iter().any(|o| matches!(o, Outcome::InFlight)));

        let mut vc = ds[v].client();
        // (a), (b): every incoming message decrypts exactly once in all.
        let mut seen = [false; MSGS];
        let mut sent_enc: Vec<(String, String)> = Vec::new(); // acknowledged encrypts
        for ((d, body), o) in plan.iter().zip(&outcomes) {
            match (d, o) {
                (Some(i), Outcome::Acked(r)) => {
                    let r = r
                        .as_ref()
                        .unwrap_or_else(|e| panic!("decrypt #{i} failed: {e}"));
                    assert_eq!(r["body"], json!(incoming[*i].0), "{r}");
                    assert_eq!(r["sender"]["device_id"], json!(pid), "{r}");
                    // It was answered: its ratchet step must be on disk.
                    let (b, x) = &incoming[*i];
                    expect_redelivered(&mut vc, None, pj, x, b, "acknowledged decrypt");
                    seen[*i] = true;
                    acked_decrypts += 1;
                }
                (Some(i), Outcome::InFlight) => {
                    // Committed (a redelivery now) or not (decrypts now): never lost.
                    match vc.decrypt(pj, &incoming[*i].1) {
                        Ok(r) => assert_eq!(r["body"], json!(incoming[*i].0), "{r}"),
                        Err(e) => panic!("in-flight decrypt #{i} lost: {e}"),
                    }
                    seen[*i] = true;
                }
                (None, Outcome::Acked(r)) => {
                    let r = r.as_ref().unwrap_or_else(|e| panic!("encrypt failed: {e}"));
                    sent_enc.push((body.clone(), message_xml(r, ns)));
                    acked_encrypts += 1;
                }
                _ => {}
            }
        }
        let mut rest: Vec<usize> = (0..MSGS).filter(|i| !seen[*i]).collect();
        rest.shuffle(&mut rng);
        for i in rest {
            expect_body(&mut vc, None, pj, pid, &incoming[i].1, &incoming[i].0);
        }
        for (body, xml) in &incoming {
            expect_redelivered(&mut vc, None, pj, xml, body, "a message already decrypted");
        }
        // (c): the peer decrypts every acknowledged encrypt (any order), exactly once.
        sent_enc.shuffle(&mut rng);
        for (body, xml) in &sent_enc {
            expect_body(&mut pc, None, vj, vid, xml, body);
        }
        for (body, xml) in &sent_enc {
            expect_redelivered(&mut pc, None, vj, xml, body, "an acknowledged encrypt");
        }
        // (c), (d): nothing rolled back on the victim: its new messages decrypt (a reused chain
        // position would be refused as a duplicate), and the session works both ways.
        for k in 0..2 {
            round_trip(
                &mut vc,
                None,
                vj,
                vid,
                &mut pc,
                None,
                pj,
                pid,
                ns,
                &format!("round {round} after restart {k}"),
            );
        }
    }
    // Both namespaces, both ways, at the end.
    let (a, b) = ds.split_at_mut(1);
    let (mut ac, mut bc) = (a[0].client(), b[0].client());
    for ns in BOTH {
        round_trip(
            &mut ac, None, ALICE, ids[0], &mut bc, None, BOB, ids[1], ns, "final",
        );
    }
    eprintln!(
        "{ROUNDS} kills: {acked_decrypts} acknowledged decrypts, {acked_encrypts} acknowledged \
         encrypts, {in_flight_kills} kills with a request in flight, {:?}",
        t0.elapsed()
    );
    assert!(
        acked_decrypts > 0 && acked_encrypts > 0,
        "the kills never raced any traffic"
    );
    assert!(
        in_flight_kills >= ROUNDS / 3,
        "only {in_flight_kills} of {ROUNDS} kills hit a request in flight"
    );
}

/// Kill rounds while bob takes first messages from new peers (key exchanges that consume his
/// one-time prekeys and refill the pool: bundle changes), learns new peers' device lists and
/// bundles and starts sessions with them, and reads his own bundle. The peers are accounts of
/// one other daemon. Each peer is offered a different one of bob's prekeys, so that which
/// prekey each key exchange consumes is known.
#[test]
fn sigkill_during_key_exchanges_and_bundle_changes() {
    key_exchanges_and_bundle_changes(&[]);
}

/// The same under `--durability normal`.
#[test]
fn sigkill_during_key_exchanges_and_bundle_changes_normal() {
    key_exchanges_and_bundle_changes(&["--durability", "normal"]);
}

fn key_exchanges_and_bundle_changes(extra: &[&str]) {
    const ROUNDS: usize = 16;
    const KEX_PEERS: usize = 4; // per round: send bob their first messages
    const NEW_PEERS: usize = 2; // per round: bob learns them and starts a session
    const KEX_MSGS: usize = 3;
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed() ^ 0x5eed);
    let mut bob = Daemon::start_with(extra);
    let crowd = Daemon::start_with(extra);
    let mut b = bob.client();
    let bid = b.create_account(BOB);
    let mut cc = crowd.client();
    let (mut acked_kex, mut acked_learn, mut acked_init, mut in_flight_kills) = (0, 0, 0, 0);
    let mut pacer = Pacer::new();

    for round in 0..ROUNDS {
        let ns = BOTH[round % 2];
        let mut b = bob.client();
        let before = b.bundle(ns);
        let version_before = before["bundle_version"].as_i64().unwrap();
        let pool_before = prekey_ids(before["xml"].as_str().unwrap());
        assert_eq!(pool_before.len(), 100);
        let offered: Vec<u32> = pool_before
            .iter()
            .copied()
            .collect::<Vec<_>>()
            .choose_multiple(&mut rng, KEX_PEERS)
            .copied()
            .collect();

        // Peers that write first: each knows bob with exactly one of his prekeys.
        // (jid, device id, offered prekey, [(body, xml)])
        #[allow(clippy::type_complexity)]
        let mut kex: Vec<(String, u32, u32, Vec<(String, String)>)> = Vec::new();
        for (i, &pk) in offered.iter().enumerate() {
            let jid = format!("kex{round}x{i}@example.org");
            let id = cc.create_account(&jid);
            let acct = Some(jid.as_str());
            let list = b.devicelist(ns);
            ok_as(
                &mut cc,
                acct,
                "devicelist.update",
                json!({"jid": BOB, "namespace": ns, "xml": list["xml"]}),
            );
            let xml = only_prekey(before["xml"].as_str().unwrap(), pk);
            ok_as(
                &mut cc,
                acct,
                "bundle.update",
                json!({"jid": BOB, "namespace": ns, "device_id": bid, "xml": xml}),
            );
            let msgs: Vec<(String, String)> = (0..KEX_MSGS)
                .map(|k| {
                    let body = format!("{jid} first words #{k}");
                    (body.clone(), encrypt_as(&mut cc, acct, BOB, &body, ns))
                })
                .collect();
            // Bob knows their device list (so he can answer later), not needed to decrypt.
            let l = ok_as(&mut cc, acct, "devicelist.get", json!({"namespace": ns}));
            b.ok(
                "devicelist.update",
                json!({"jid": jid, "namespace": ns, "xml": l["xml"]}),
            );
            kex.push((jid, id, pk, msgs));
        }
        // Peers bob will write to first: he learns them during the stream. Each offers one
        // prekey, so a session rebuilt after a rollback would reuse it and fail.
        // (jid, device id, devicelist xml, bundle xml)
        let mut fresh: Vec<(String, u32, String, String)> = Vec::new();
        for i in 0..NEW_PEERS {
            let jid = format!("new{round}x{i}@example.org");
            let id = cc.create_account(&jid);
            let acct = Some(jid.as_str());
            let l = ok_as(&mut cc, acct, "devicelist.get", json!({"namespace": ns}));
            let bu = ok_as(&mut cc, acct, "bundle.get", json!({"namespace": ns}));
            let xml = bu["xml"].as_str().unwrap();
            let seventh = prekey_ids(xml).into_iter().nth(6).expect("prekey");
            let xml = only_prekey(xml, seventh);
            // They know bob's device list (to answer), not his bundle.
            let list = b.devicelist(ns);
            ok_as(
                &mut cc,
                acct,
                "devicelist.update",
                json!({"jid": BOB, "namespace": ns, "xml": list["xml"]}),
            );
            fresh.push((jid, id, l["xml"].as_str().unwrap().to_owned(), xml));
        }

        // The stream: kex decrypts in random order; per new peer devicelist.update,
        // bundle.update, encrypt (in that order); bundle.get now and then.
        #[derive(Clone, Copy, Debug)]
        enum Step {
            Kex(usize, usize),
            List(usize),
            Bundle(usize),
            Init(usize),
            GetBundle,
        }
        let mut queues: Vec<Vec<Step>> = Vec::new();
        let mut kq: Vec<Step> = (0..KEX_PEERS)
            .flat_map(|i| (0..KEX_MSGS).map(move |k| Step::Kex(i, k)))
            .collect();
        kq.shuffle(&mut rng);
        queues.push(kq);
        for j in 0..NEW_PEERS {
            queues.push(vec![Step::Init(j), Step::Bundle(j), Step::List(j)]); // popped from the end
        }
        queues.push(vec![Step::GetBundle; 4]);
        let mut steps = Vec::new();
        while queues.iter().any(|q| !q.is_empty()) {
            let live: Vec<usize> = (0..queues.len())
                .filter(|q| !queues[*q].is_empty())
                .collect();
            let q = *live.choose(&mut rng).unwrap();
            steps.push(queues[q].pop().unwrap());
        }
        let reqs: Vec<(String, Value)> = steps
            .iter()
            .map(|s| match *s {
                Step::Kex(i, k) => (
                    "decrypt".to_owned(),
                    json!({"from": kex[i].0, "xml": kex[i].3[k].1}),
                ),
                Step::List(j) => (
                    "devicelist.update".to_owned(),
                    json!({"jid": fresh[j].0, "namespace": ns, "xml": fresh[j].2}),
                ),
                Step::Bundle(j) => (
                    "bundle.update".to_owned(),
                    json!({"jid": fresh[j].0, "namespace": ns, "device_id": fresh[j].1, "xml": fresh[j].3}),
                ),
                Step::Init(j) => (
                    "encrypt".to_owned(),
                    json!({"to": [fresh[j].0], "body": format!("hello {}", fresh[j].0), "namespaces": [ns]}),
                ),
                Step::GetBundle => ("bundle.get".to_owned(), json!({"namespace": ns})),
            })
            .collect();
        let outcomes = stream_and_kill(&mut bob, reqs, &mut rng, &mut pacer);
        in_flight_kills += usize::from(outcomes.iter().any(|o| matches!(o, Outcome::InFlight)));
        let mut b = bob.client();

        // Bob's bundle right after the restart, in both namespaces (one prekey pool each).
        let after = b.bundle(ns);
        let other = b.bundle(BOTH[(round + 1) % 2]);
        let pool = prekey_ids(after["xml"].as_str().unwrap());
        let other_pool = prekey_ids(other["xml"].as_str().unwrap());
        assert!(pool.is_disjoint(&other_pool), "namespaces share prekeys");
        assert_eq!(other_pool.len(), 100, "the other pool changed");
        assert_eq!(
            pool.len(),
            100,
            "prekey pool not refilled with its consumption"
        );
        let version = after["bundle_version"].as_i64().unwrap();
        assert_eq!(other["bundle_version"].as_i64().unwrap(), version);
        for (s, o) in steps.iter().zip(&outcomes) {
            if let (Step::GetBundle, Outcome::Acked(r)) = (s, o) {
                let r = r.as_ref().unwrap_or_else(|e| panic!("bundle.get: {e}"));
                let v = r["bundle_version"].as_i64().unwrap();
                assert!(
                    v <= version,
                    "bundle version went back from {v} to {version}"
                );
            }
        }
        let consumed: Vec<bool> = kex.iter().map(|k| !pool.contains(&k.2)).collect();
        assert_eq!(
            version - version_before,
            consumed.iter().filter(|c| **c).count() as i64,
            "bundle version does not count the consumed prekeys"
        );
        for (i, (jid, id, pk, msgs)) in kex.iter().enumerate() {
            let acct = Some(jid.as_str());
            let outs: Vec<(usize, &Outcome)> = steps
                .iter()
                .zip(&outcomes)
                .filter_map(|(s, o)| match s {
                    Step::Kex(x, k) if *x == i => Some((*k, o)),
                    _ => None,
                })
                .collect();
            let acked = outs.iter().any(|(_, o)| o.acked_ok());
            let tried = outs.iter().any(|(_, o)| !matches!(o, Outcome::NotSent));
            if acked {
                assert!(
                    consumed[i],
                    "{jid}: session acknowledged, prekey {pk} still offered"
                );
                acked_kex += 1;
            }
            if consumed[i] {
                assert!(tried, "{jid}: prekey {pk} consumed by no decrypt");
            }
            for (k, o) in &outs {
                let (body, xml) = &msgs[*k];
                match o {
                    Outcome::Acked(r) => {
                        let r = r.as_ref().unwrap_or_else(|e| panic!("{jid} #{k}: {e}"));
                        assert_eq!(r["body"], json!(body), "{r}");
                        assert_eq!(r["key_exchange"], json!(true), "{r}");
                        expect_redelivered(
                            &mut b,
                            None,
                            jid,
                            xml,
                            body,
                            "acknowledged key exchange",
                        );
                    }
                    Outcome::InFlight if consumed[i] => match b.decrypt(jid, xml) {
                        Ok(r) => assert_eq!(r["body"], json!(body), "{r}"),
                        Err(e) => panic!("{jid} #{k}: in-flight key exchange lost: {e}"),
                    },
                    // Never sent, or in flight while its prekey is still offered (so no
                    // session with this peer was committed): decrypts now, once.
                    _ => match b.decrypt(jid, xml) {
                        Ok(r) => {
                            assert_eq!(r["body"], json!(body), "{r}");
                            assert_eq!(r["sender"]["device_id"], json!(id), "{r}");
                        }
                        Err(e) => panic!(
                            "{jid} #{k} ({o:?}, prekey {pk} consumed: {}) does not decrypt \
                             after the restart: {e}",
                            consumed[i]
                        ),
                    },
                }
            }
            for (body, xml) in msgs {
                expect_redelivered(&mut b, None, jid, xml, body, "a decrypted key exchange");
            }
            // Both ways: bob answers (no key exchange of his own), the peer writes again.
            let body = format!("bob answers {jid}");
            let xml = b.encrypt_xml(&[jid], Some(&body), ns);
            expect_body(&mut cc, acct, BOB, bid, &xml, &body);
            let body = format!("{jid} again");
            let xml = encrypt_as(&mut cc, acct, BOB, &body, ns);
            let r = b
                .decrypt(jid, &xml)
                .unwrap_or_else(|e| panic!("{jid}: {e}"));
            assert_eq!(r["body"], json!(body));
            assert_eq!(
                r["key_exchange"],
                json!(false),
                "session not confirmed: {r}"
            );
        }
        // All of them consumed now, each exactly once.
        let end = b.bundle(ns);
        let pool_end = prekey_ids(end["xml"].as_str().unwrap());
        assert_eq!(pool_end.len(), 100);
        for (jid, _, pk, _) in &kex {
            assert!(!pool_end.contains(pk), "{jid}'s prekey {pk} still offered");
        }
        assert_eq!(
            end["bundle_version"].as_i64().unwrap(),
            version_before + KEX_PEERS as i64
        );

        // The peers bob learnt and wrote to.
        for (j, (jid, id, list, bundle)) in fresh.iter().enumerate() {
            let acct = Some(jid.as_str());
            let out = |want: fn(&Step) -> bool| {
                steps
                    .iter()
                    .zip(&outcomes)
                    .find(|(s, _)| want(s) && step_peer(s) == Some(j))
                    .map(|(_, o)| o.clone())
                    .unwrap()
            };
            fn step_peer(s: &Step) -> Option<usize> {
                match s {
                    Step::List(j) | Step::Bundle(j) | Step::Init(j) => Some(*j),
                    _ => None,
                }
            }
            let list_o = out(|s| matches!(s, Step::List(_)));
            let bundle_o = out(|s| matches!(s, Step::Bundle(_)));
            let init_o = out(|s| matches!(s, Step::Init(_)));
            let devs = ok_as(&mut b, None, "devices.list", json!({"jid": jid}));
            let known = devs
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["device_id"] == json!(id) && d["namespace"] == json!(ns));
            match &list_o {
                Outcome::Acked(r) => {
                    r.as_ref()
                        .unwrap_or_else(|e| panic!("devicelist.update: {e}"));
                    assert!(known, "{jid}: acknowledged device list lost: {devs}");
                    acked_learn += 1;
                }
                Outcome::NotSent => assert!(!known, "{jid}: device list never sent: {devs}"),
                Outcome::InFlight => {}
            }
            if let Outcome::Acked(r) = &bundle_o {
                r.as_ref().unwrap_or_else(|e| panic!("bundle.update: {e}"));
            }
            // What bob sent before the kill reaches them.
            if let Outcome::Acked(r) = &init_o {
                let r = r.as_ref().unwrap_or_else(|e| panic!("encrypt: {e}"));
                let dev = &r["devices"][0];
                assert_eq!(dev["status"], json!("encrypted"), "{r}");
                assert_eq!(dev["kex"], json!(true), "{r}");
                let xml = message_xml(r, ns);
                expect_body(&mut cc, acct, BOB, bid, &xml, &format!("hello {jid}"));
                acked_init += 1;
            }
            // Relearn only what was not acknowledged: the rest must come from the database.
            if !matches!(list_o, Outcome::Acked(_)) {
                b.ok(
                    "devicelist.update",
                    json!({"jid": jid, "namespace": ns, "xml": list}),
                );
            }
            if !matches!(bundle_o, Outcome::Acked(_)) {
                b.ok(
                    "bundle.update",
                    json!({"jid": jid, "namespace": ns, "device_id": id, "xml": bundle}),
                );
            }
            // A new message to them: on the acknowledged session if there was one (it offers
            // only the prekey that session used, so a rebuilt session would be refused).
            let body = format!("after the restart to {jid}");
            let r = b.ok(
                "encrypt",
                json!({"to": [jid], "body": body, "namespaces": [ns]}),
            );
            assert_eq!(r["devices"][0]["status"], json!("encrypted"), "{r}");
            expect_body(&mut cc, acct, BOB, bid, &message_xml(&r, ns), &body);
            let body = format!("{jid} answers");
            let xml = encrypt_as(&mut cc, acct, BOB, &body, ns);
            expect_body(&mut b, None, jid, *id, &xml, &body);
            let body = format!("bob once more to {jid}");
            let xml = b.encrypt_xml(&[jid], Some(&body), ns);
            expect_body(&mut cc, acct, BOB, bid, &xml, &body);
        }
    }
    eprintln!(
        "{ROUNDS} kills: {acked_kex} acknowledged key exchanges, {acked_learn} acknowledged \
         device lists, {acked_init} acknowledged session starts, {in_flight_kills} kills with a \
         request in flight, {:?}",
        t0.elapsed()
    );
    assert!(
        acked_kex > 0 && acked_init > 0,
        "the kills never raced any key exchange"
    );
    assert!(
        in_flight_kills >= ROUNDS / 3,
        "only {in_flight_kills} of {ROUNDS} kills hit a request in flight"
    );
}
