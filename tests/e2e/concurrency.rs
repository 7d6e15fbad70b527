//! Concurrency end to end: many clients (separate connections, separate threads) against one
//! daemon at once — concurrent decrypts of the same session (every message decrypts exactly
//! once across all clients), concurrent traffic on different sessions and namespaces (key
//! exchanges included), multi-recipient encrypts racing per-session traffic, read-only calls
//! mixed in, and pipelined requests on one connection (answers matched by id).

#[path = "../support/mod.rs"]
mod support;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;
use std::time::Instant;
use support::{assert_redelivery, Client, Daemon, Wire, BOTH, OLDMEMO, OMEMO2};

const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";

fn seed() -> u64 {
    support::seed(0x0e4e_c0de)
}

/// A barrier that does not hang when a thread taking part in it has failed: a failing thread
/// (see `FailGuard`) raises `failed`, and every waiter then gives up.
struct Gate {
    n: usize,
    count: Mutex<usize>,
    cv: Condvar,
    failed: Arc<AtomicBool>,
}

impl Gate {
    fn new(n: usize, failed: &Arc<AtomicBool>) -> Arc<Self> {
        Arc::new(Gate {
            n,
            count: Mutex::new(0),
            cv: Condvar::new(),
            failed: failed.clone(),
        })
    }

    fn wait(&self) {
        let mut c = self.count.lock().unwrap();
        *c += 1;
        self.cv.notify_all();
        while *c < self.n {
            assert!(!self.failed.load(Ordering::SeqCst), "another thread failed");
            c = self
                .cv
                .wait_timeout(c, Duration::from_millis(50))
                .unwrap()
                .0;
        }
    }
}

/// Raises the flag when the thread holding it panics.
struct FailGuard(Arc<AtomicBool>);

impl Drop for FailGuard {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

/// Two daemons with one account each that know each other's devices and bundles (no session
/// yet). Returns the daemons and their device ids.
fn pair(bob_extra: &[&str]) -> (Daemon, Daemon, u32, u32) {
    let alice = Daemon::start();
    let bob = Daemon::start_with(bob_extra);
    let mut a = alice.client();
    let mut b = bob.client();
    let aid = a.create_account(ALICE);
    let bid = b.create_account(BOB);
    b.learn(ALICE, &mut a, &BOTH);
    a.learn(BOB, &mut b, &BOTH);
    (alice, bob, aid, bid)
}

/// `xml` (a `<bundle>` of either namespace) with only the one-time prekey `keep` left.
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

/// The id of the `n`-th (from 1, by id) one-time prekey of a `<bundle>`: each namespace has its
/// own pool, so ids differ between namespaces.
fn nth_prekey(xml: &str, n: u32) -> u32 {
    let attr = if xml.contains("<pk ") {
        "<pk id="
    } else {
        "<preKeyPublic preKeyId="
    };
    let mut ids: Vec<u32> = xml
        .match_indices(attr)
        .map(|(i, _)| {
            let rest = &xml[i + attr.len() + 1..];
            rest[..rest.find(['\'', '"']).unwrap()]
                .parse()
                .expect("prekey id")
        })
        .collect();
    ids.sort_unstable();
    ids[n as usize - 1]
}

/// `learner` learns `owner`'s (`jid`) device list and a bundle offering only its `keep`-th
/// prekey, so that initiators never pick the same one-time prekey.
fn learn_one_prekey(learner: &mut Client, jid: &str, owner: &mut Client, ns: &str, keep: u32) {
    let list = owner.devicelist(ns);
    learner.ok(
        "devicelist.update",
        json!({"jid": jid, "namespace": ns, "xml": list["xml"]}),
    );
    let b = owner.bundle(ns);
    let xml = b["xml"].as_str().unwrap();
    let xml = only_prekey(xml, nth_prekey(xml, keep));
    let r = learner.ok(
        "bundle.update",
        json!({"jid": jid, "namespace": ns, "device_id": b["device_id"], "xml": xml}),
    );
    assert_eq!(r["prekey_count"], json!(1), "{r}");
}

/// `from`'s client decrypts `xml` and must get `body` from `sender_id`.
fn expect_body(c: &mut Client, from: &str, sender_id: u32, xml: &str, body: &str) -> Value {
    let r = c
        .decrypt(from, xml)
        .unwrap_or_else(|e| panic!("decrypt of {body:?} failed: {e}"));
    assert_eq!(r["body"], json!(body), "wrong body: {r}");
    assert_eq!(r["sender"]["jid"], json!(from), "{r}");
    assert_eq!(r["sender"]["device_id"], json!(sender_id), "{r}");
    r
}

/// One message each way in `ns`, checked (the session works in both directions).
#[allow(clippy::too_many_arguments)]
fn round_trip(
    x: &mut Client,
    x_jid: &str,
    x_id: u32,
    y: &mut Client,
    y_jid: &str,
    y_id: u32,
    ns: &str,
    tag: &str,
) {
    let body = format!("{tag}: {x_jid} -> {y_jid} in {ns}");
    let xml = x.encrypt_xml(&[y_jid], Some(&body), ns);
    let r = expect_body(y, x_jid, x_id, &xml, &body);
    assert_eq!(r["namespace"], json!(ns));
    let body = format!("{tag}: {y_jid} -> {x_jid} in {ns}");
    let xml = y.encrypt_xml(&[x_jid], Some(&body), ns);
    let r = expect_body(x, y_jid, y_id, &xml, &body);
    assert_eq!(r["namespace"], json!(ns));
}

/// 8 bob-side clients each try to decrypt ALL of a set of messages from alice, each in its own
/// random order, at the same time. The set spans both namespaces: in OMEMO 2 a fresh session
/// (every message a key exchange, so the clients race to build the session); in OMEMO 0.3 an
/// established session whose messages span a DH ratchet step (so skipped keys of the old chain
/// are stored and used concurrently). Every message must decrypt exactly once across all
/// clients, with its body; every other attempt is a redelivery of the same answer.
#[test]
fn concurrent_decrypts_on_one_session_decrypt_each_message_exactly_once() {
    const CLIENTS: usize = 8;
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed());
    let (alice, bob, aid, bid) = pair(&[]);
    let mut a = alice.client();
    let mut b = bob.client();

    // (namespace, body, xml, is key exchange)
    let mut msgs: Vec<(&str, String, String, bool)> = Vec::new();

    // OMEMO 2: no session yet on either side; all of these carry the key exchange.
    for i in 0..30 {
        let body = format!("omemo2 kex message {i}");
        let xml = a.encrypt_xml(&[BOB], Some(&body), OMEMO2);
        msgs.push((OMEMO2, body, xml, true));
    }

    // OMEMO 0.3: establish, then chain A (first one decrypted now), a reply, then chain B.
    // (Alice refetches bob's bundle first, as a client does on his `publish_bundle`: the OMEMO 2
    // key exchange used one of the prekeys both namespaces share.)
    a.learn(BOB, &mut b, &BOTH);
    round_trip(&mut a, ALICE, aid, &mut b, BOB, bid, OLDMEMO, "setup");
    let mut chain_a: Vec<(String, String)> = (0..20)
        .map(|i| {
            let body = format!("oldmemo chain A message {i}");
            let xml = a.encrypt_xml(&[BOB], Some(&body), OLDMEMO);
            (body, xml)
        })
        .collect();
    let (first_body, first_xml) = chain_a.remove(0);
    expect_body(&mut b, ALICE, aid, &first_xml, &first_body);
    let reply = b.encrypt_xml(&[ALICE], Some("reply between chains"), OLDMEMO);
    expect_body(&mut a, BOB, bid, &reply, "reply between chains");
    for (body, xml) in chain_a {
        msgs.push((OLDMEMO, body, xml, false));
    }
    for i in 0..20 {
        let body = format!("oldmemo chain B message {i}");
        let xml = a.encrypt_xml(&[BOB], Some(&body), OLDMEMO);
        msgs.push((OLDMEMO, body, xml, false));
    }
    let msgs = Arc::new(msgs);
    let n = msgs.len();

    let failed = Arc::new(AtomicBool::new(false));
    let barrier = Gate::new(CLIENTS, &failed);
    let mut handles = Vec::new();
    for c in 0..CLIENTS {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        if c == 0 {
            order.sort_unstable(); // one client in send order,
        } else if c == 1 {
            order.sort_unstable_by(|x, y| y.cmp(x)); // one in reverse order
        }
        let mut client = bob.client();
        let barrier = barrier.clone();
        let msgs = msgs.clone();
        let guard = FailGuard(failed.clone());
        handles.push(thread::spawn(move || {
            let _guard = guard;
            barrier.wait();
            let mut out: Vec<(usize, Result<Value, Value>)> = Vec::new();
            for i in order {
                out.push((i, client.decrypt(ALICE, &msgs[i].2)));
            }
            out
        }));
    }
    let mut successes: Vec<Vec<Value>> = vec![Vec::new(); n];
    let mut redelivered: Vec<Vec<Value>> = vec![Vec::new(); n];
    let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
    for r in results {
        for (i, r) in r.expect("client thread panicked") {
            match r {
                Ok(v) if v["redelivered"] == true => redelivered[i].push(v),
                Ok(v) => successes[i].push(v),
                Err(e) => panic!("message {i}: {e}"),
            }
        }
    }
    for i in 0..n {
        let (ns, body, _, kex) = &msgs[i];
        assert_eq!(
            successes[i].len(),
            1,
            "message {i} ({body}) decrypted {} times: {:?}",
            successes[i].len(),
            successes[i]
        );
        assert_eq!(redelivered[i].len(), CLIENTS - 1, "message {i}");
        for again in &redelivered[i] {
            assert_redelivery(&successes[i][0], again);
        }
        let r = &successes[i][0];
        assert_eq!(r["body"], json!(body), "{r}");
        assert_eq!(r["namespace"], json!(ns), "{r}");
        assert_eq!(r["sender"]["device_id"], json!(aid), "{r}");
        assert_eq!(r["key_exchange"], json!(kex), "{r}");
    }

    // Later copies are still redeliveries, and the sessions still work both ways, in both
    // namespaces.
    for (i, (_, _, xml, _)) in msgs.iter().enumerate() {
        assert_redelivery(
            &successes[i][0],
            &b.decrypt(ALICE, xml).expect("redelivery"),
        );
    }
    for ns in BOTH {
        for k in 0..3 {
            round_trip(
                &mut a,
                ALICE,
                aid,
                &mut b,
                BOB,
                bid,
                ns,
                &format!("after {k}"),
            );
        }
    }
    eprintln!(
        "concurrent decrypts: {n} messages x {CLIENTS} clients, {:?}",
        t0.elapsed()
    );
}

/// Several peers (one daemon each) and both namespaces: 8 sessions on the hub, each driven by
/// its own thread (own hub connection, own peer connection) doing bursts both ways, with key
/// exchanges racing at the start (the hub initiates half the sessions, the peers the other half);
/// then multi-recipient encrypts (locking many sessions at once) racing the per-session
/// traffic, and read-only calls mixed in on further connections. 11 hub connections in all.
#[test]
fn concurrent_traffic_on_different_sessions_and_mixed_calls() {
    const PEERS: [&str; 4] = [
        "carol@example.org",
        "dave@example.org",
        "erin@example.org",
        "frank@example.org",
    ];
    const ROUNDS: usize = 8;
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed() ^ 0x55);
    let hub = Daemon::start();
    let mut h = hub.client();
    let hub_id = h.create_account(BOB);
    let hub_fp = h.ok("fingerprint.get", json!({}))["fingerprint"].clone();
    let mut peers: Vec<(Daemon, u32)> = Vec::new();
    // Each session is started by one side (see `hub_first`) with a one-time prekey no other
    // initiator uses: the hub's prekey number 1 + 2 * peer + namespace, each peer's number 1 +
    // namespace (counted within that namespace's pool).
    for (pi, jid) in PEERS.iter().enumerate() {
        let d = Daemon::start();
        let mut p = d.client();
        let id = p.create_account(jid);
        for (k, ns) in BOTH.iter().enumerate() {
            learn_one_prekey(&mut h, jid, &mut p, ns, 1 + k as u32);
            learn_one_prekey(&mut p, BOB, &mut h, ns, 1 + 2 * pi as u32 + k as u32);
        }
        peers.push((d, id));
    }
    let peer_ids: Vec<u32> = peers.iter().map(|(_, id)| *id).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicBool::new(false));
    // 8 session threads + 1 broadcaster wait for the end of round 0 (sessions built).
    let established = Gate::new(8 + 1, &failed);
    let start = Gate::new(8 + 1 + 2, &failed);
    let mut handles: Vec<thread::JoinHandle<usize>> = Vec::new();

    for (pi, jid) in PEERS.iter().enumerate() {
        for ns in BOTH {
            let mut hc = hub.client();
            let mut pc = peers[pi].0.client();
            let pid = peer_ids[pi];
            let established = established.clone();
            let start = start.clone();
            let mut trng = StdRng::seed_from_u64(rng.gen());
            // Who sends first (and so builds the session): the hub for half of them.
            let hub_first = (pi + usize::from(ns == OLDMEMO)) % 2 == 0;
            let guard = FailGuard(failed.clone());
            handles.push(thread::spawn(move || {
                let _guard = guard;
                start.wait();
                let mut done = 0;
                for round in 0..ROUNDS {
                    if round == 1 {
                        established.wait();
                    }
                    let k = if round == 0 { 1 } else { trng.gen_range(1..=4) };
                    for dir in 0..2 {
                        let hub_sends = (dir == 0) == hub_first;
                        let (from_c, to_c, from_jid, to_jid, from_id) = if hub_sends {
                            (&mut hc, &mut pc, BOB, *jid, hub_id)
                        } else {
                            (&mut pc, &mut hc, *jid, BOB, pid)
                        };
                        let mut batch: Vec<(String, String)> = (0..k)
                            .map(|i| {
                                let body = format!("{from_jid}->{to_jid} {ns} r{round} #{i}");
                                let xml = from_c.encrypt_xml(&[to_jid], Some(&body), ns);
                                (body, xml)
                            })
                            .collect();
                        batch.shuffle(&mut trng); // out of order
                        for (body, xml) in &batch {
                            let r = expect_body(to_c, from_jid, from_id, xml, body);
                            assert_eq!(r["namespace"], json!(ns));
                            done += 1;
                        }
                        // A copy of the batch is a redelivery.
                        let (body, xml) = &batch[0];
                        let r = to_c.decrypt(from_jid, xml).expect("redelivery");
                        assert_eq!(
                            (&r["redelivered"], &r["body"]),
                            (&json!(true), &json!(body))
                        );
                    }
                }
                done
            }));
        }
    }

    // The broadcaster: one message to every peer at once (one key per peer), decrypted by each.
    {
        let mut hc = hub.client();
        let mut pcs: Vec<Client> = peers.iter().map(|(d, _)| d.client()).collect();
        let established = established.clone();
        let start = start.clone();
        let peer_ids = peer_ids.clone();
        let guard = FailGuard(failed.clone());
        handles.push(thread::spawn(move || {
            let _guard = guard;
            start.wait();
            established.wait();
            let mut done = 0;
            for j in 0..10 {
                let ns = BOTH[j % 2];
                let body = format!("broadcast {j} in {ns}");
                let r = hc.ok(
                    "encrypt",
                    json!({"to": PEERS, "body": body, "namespaces": [ns],
                           "sce_to": "room@muc.example.org"}),
                );
                let msgs = r["messages"].as_array().expect("messages");
                assert_eq!(msgs.len(), 1, "{r}");
                let devs = r["devices"].as_array().expect("devices");
                let enc: HashSet<u64> = devs
                    .iter()
                    .filter(|d| d["status"] == "encrypted")
                    .map(|d| d["device_id"].as_u64().unwrap())
                    .collect();
                for id in &peer_ids {
                    assert!(enc.contains(&(*id as u64)), "no key for {id}: {r}");
                }
                let xml = msgs[0]["xml"].as_str().unwrap().to_owned();
                for pc in pcs.iter_mut() {
                    expect_body(pc, BOB, hub_id, &xml, &body);
                    done += 1;
                }
            }
            done
        }));
    }

    // Two readers: read-only calls, answers checked, until the writers are done.
    for r in 0..2 {
        let mut c = hub.client();
        let stop = stop.clone();
        let start = start.clone();
        let hub_fp = hub_fp.clone();
        let failed = failed.clone();
        let guard = FailGuard(failed.clone());
        handles.push(thread::spawn(move || {
            let _guard = guard;
            start.wait();
            let mut done = 0;
            while !stop.load(Ordering::Relaxed) && !failed.load(Ordering::Relaxed) {
                let st = c.ok("status", json!({}));
                assert!(st["clients"].as_u64().unwrap() >= 1, "{st}");
                for ns in BOTH {
                    let b = c.bundle(ns);
                    assert_eq!(b["device_id"], json!(hub_id), "{b}");
                    let l = c.devicelist(ns);
                    assert!(
                        l["xml"].as_str().unwrap().contains(&hub_id.to_string()),
                        "{l}"
                    );
                }
                let fp = c.ok("fingerprint.get", json!({}));
                assert_eq!(fp["fingerprint"], hub_fp);
                let devs = c.ok("devices.list", json!({}));
                assert!(devs.as_array().unwrap().len() >= 4 * 2, "{devs}");
                if r == 1 {
                    let t = c.ok("trust.list", json!({}));
                    assert!(t.is_array(), "{t}");
                }
                done += 1;
            }
            done
        }));
    }

    let writers: Vec<_> = handles.drain(..9).collect();
    let mut decrypted = 0;
    let mut panicked = 0;
    for w in writers {
        match w.join() {
            Ok(n) => decrypted += n,
            Err(_) => panicked += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut reads = 0;
    for r in handles {
        match r.join() {
            Ok(n) => reads += n,
            Err(_) => panicked += 1,
        }
    }
    assert_eq!(panicked, 0, "{panicked} client threads failed (see above)");
    assert!(reads > 0, "the readers never ran");

    // Afterwards every session still works both ways.
    for (pi, jid) in PEERS.iter().enumerate() {
        let mut p = peers[pi].0.client();
        for ns in BOTH {
            round_trip(&mut h, BOB, hub_id, &mut p, jid, peer_ids[pi], ns, "after");
        }
    }
    eprintln!(
        "different sessions: {decrypted} messages decrypted, {reads} reader loops, {:?}",
        t0.elapsed()
    );
}

/// Reads one answer per expected id; panics on EOF, a missing or repeated id.
fn read_answers(c: &mut Wire, ids: &HashSet<Value>) -> HashMap<String, Value> {
    let mut got: HashMap<String, Value> = HashMap::new();
    while got.len() < ids.len() {
        let v = c
            .read()
            .expect("connection closed while answers were pending");
        let id = v["id"].clone();
        assert!(ids.contains(&id), "answer to an id never sent: {v}");
        assert!(
            got.insert(id.to_string(), v.clone()).is_none(),
            "two answers for {id}"
        );
    }
    got
}

fn request(id: &Value, method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
}

/// Pipelining on one connection: many requests written before any answer is read; answers
/// come in any order and are matched by id. A slow request does not hold back a fast one.
#[test]
fn pipelined_requests_on_one_connection() {
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed() ^ 0xaa);
    let (alice, bob, aid, bid) = pair(&["--enable-debug-methods"]);
    let mut a = alice.client();
    let mut b = bob.client();
    for ns in BOTH {
        round_trip(&mut a, ALICE, aid, &mut b, BOB, bid, ns, "setup");
        // Refetch: the key exchange used one of the prekeys both namespaces share.
        a.learn(BOB, &mut b, &BOTH);
    }

    // Answers really come out of order: a slow request first, a fast one after it.
    let mut p = bob.wire();
    p.send_raw(&request(&json!("slow"), "debug.sleep", json!({"ms": 800})));
    p.send_raw(&request(&json!("fast"), "status", json!({})));
    let first = p.read().expect("answer");
    assert_eq!(
        first["id"],
        json!("fast"),
        "the fast request waited: {first}"
    );
    let second = p.read().expect("answer");
    assert_eq!(second["id"], json!("slow"), "{second}");
    assert_eq!(second["result"]["slept_ms"], json!(800));

    // Phase 1 (under the in-flight limit): everything written, then everything read.
    let mut msgs: Vec<(String, String)> = Vec::new();
    for i in 0..30 {
        let ns = BOTH[i % 2];
        let body = format!("pipelined {i} in {ns}");
        msgs.push((body.clone(), a.encrypt_xml(&[BOB], Some(&body), ns)));
    }
    let mut lines: Vec<(Value, String)> = Vec::new();
    // decrypt id -> message index
    let mut dec_ids: BTreeMap<String, usize> = BTreeMap::new();
    let mut enc_ids: BTreeMap<String, (String, &str)> = BTreeMap::new();
    for (i, (_, xml)) in msgs.iter().enumerate() {
        let id = json!(1000 + i);
        dec_ids.insert(id.to_string(), i);
        lines.push((
            id.clone(),
            request(&id, "decrypt", json!({"from": ALICE, "xml": xml})),
        ));
    }
    // The same message twice: exactly one of the two may succeed.
    let dup_id = json!("dup-of-0");
    lines.push((
        dup_id.clone(),
        request(&dup_id, "decrypt", json!({"from": ALICE, "xml": msgs[0].1})),
    ));
    for j in 0..12 {
        let ns = BOTH[j % 2];
        let id = json!(format!("enc-{j}"));
        let body = format!("pipelined reply {j} in {ns}");
        enc_ids.insert(id.to_string(), (body.clone(), ns));
        lines.push((
            id.clone(),
            request(
                &id,
                "encrypt",
                json!({"to": [ALICE], "body": body, "namespaces": [ns]}),
            ),
        ));
    }
    for j in 0..5 {
        let id = json!(format!("status-{j}"));
        lines.push((id.clone(), request(&id, "status", json!({}))));
    }
    let bad_id = json!("no-such-method");
    lines.push((
        bad_id.clone(),
        request(&bad_id, "no.such.method", json!({})),
    ));
    assert!(lines.len() < 64);
    lines.shuffle(&mut rng);
    let ids: HashSet<Value> = lines.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids.len(), lines.len());
    let mut all = String::new();
    for (_, l) in &lines {
        all.push_str(l);
        all.push('\n');
    }
    p.send_raw(all.trim_end_matches('\n'));
    let got = read_answers(&mut p, &ids);

    let mut ok_count = HashMap::new();
    for (id, i) in &dec_ids {
        let v = &got[id];
        if *i == 0 {
            // Compared with the copy below: one of the two is a redelivery.
            *ok_count.entry(0).or_insert(0) += usize::from(v["result"]["redelivered"] == false);
        }
        assert!(v.get("error").is_none(), "decrypt {i}: {v}");
        assert_eq!(v["result"]["body"], json!(msgs[*i].0), "{v}");
        assert_eq!(v["result"]["sender"]["device_id"], json!(aid), "{v}");
    }
    let d = &got[&dup_id.to_string()];
    assert!(d.get("error").is_none(), "{d}");
    assert_eq!(d["result"]["body"], json!(msgs[0].0), "{d}");
    *ok_count.entry(0).or_insert(0) += usize::from(d["result"]["redelivered"] == false);
    assert_eq!(
        ok_count[&0], 1,
        "message 0 decrypted {} times",
        ok_count[&0]
    );
    for j in 0..5 {
        let v = &got[&json!(format!("status-{j}")).to_string()];
        assert!(v["result"]["pid"].is_u64(), "{v}");
    }
    let v = &got[&bad_id.to_string()];
    assert_eq!(v["error"]["data"]["kind"], "method_not_found", "{v}");
    // The replies bob encrypted concurrently: alice decrypts all of them (in a random order;
    // their chain positions depend on the order the daemon ran them in).
    let mut replies: Vec<(String, String)> = enc_ids
        .iter()
        .map(|(id, (body, ns))| {
            let v = &got[id];
            assert!(v.get("error").is_none(), "{v}");
            let m = v["result"]["messages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["namespace"] == *ns)
                .unwrap_or_else(|| panic!("no {ns} message: {v}"));
            (body.clone(), m["xml"].as_str().unwrap().to_owned())
        })
        .collect();
    replies.shuffle(&mut rng);
    for (body, xml) in &replies {
        expect_body(&mut a, BOB, bid, xml, body);
    }

    // Phase 2: 300 requests, more than the in-flight limit, written by one thread while this
    // one reads (the daemon applies backpressure; nothing may be lost or answered twice).
    let mut msgs2: Vec<(String, String)> = Vec::new();
    for i in 0..120 {
        let ns = BOTH[i % 2];
        let body = format!("second pipeline {i} in {ns}");
        msgs2.push((body.clone(), a.encrypt_xml(&[BOB], Some(&body), ns)));
    }
    let mut lines2: Vec<(Value, String)> = Vec::new();
    for (i, (_, xml)) in msgs2.iter().enumerate() {
        let id = json!(i);
        lines2.push((
            id.clone(),
            request(&id, "decrypt", json!({"from": ALICE, "xml": xml})),
        ));
    }
    for j in 0..60 {
        let ns = BOTH[j % 2];
        let id = json!(format!("e{j}"));
        let body = format!("second reply {j}");
        lines2.push((
            id.clone(),
            request(
                &id,
                "encrypt",
                json!({"to": [ALICE], "body": body, "namespaces": [ns]}),
            ),
        ));
    }
    for j in 0..120 {
        let id = json!(format!("s{j}"));
        let (m, params) = match j % 3 {
            0 => ("status", json!({})),
            1 => ("bundle.get", json!({"namespace": BOTH[j % 2]})),
            _ => ("devices.list", json!({})),
        };
        lines2.push((id.clone(), request(&id, m, params)));
    }
    lines2.shuffle(&mut rng);
    let ids2: HashSet<Value> = lines2.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids2.len(), 300);
    let writer_stream = std::os::unix::net::UnixStream::connect(&bob.socket).expect("connect");
    // One connection: the writer thread owns a clone of the same stream the reader reads.
    let reader_stream = writer_stream.try_clone().expect("clone");
    let mut reader = Wire::from_stream(reader_stream);
    let to_write: Vec<String> = lines2.iter().map(|(_, l)| l.clone()).collect();
    let writer = thread::spawn(move || {
        use std::io::Write;
        let mut s = writer_stream;
        for l in to_write {
            s.write_all(l.as_bytes()).expect("write");
            s.write_all(b"\n").expect("write");
        }
        s
    });
    let t_read = Instant::now();
    let got2 = read_answers(&mut reader, &ids2);
    let _keep_open = writer.join().expect("writer");
    for (i, (body, _)) in msgs2.iter().enumerate() {
        let v = &got2[&json!(i).to_string()];
        assert_eq!(v["result"]["body"], json!(body), "{v}");
    }
    let mut replies2: Vec<(String, String)> = Vec::new();
    for j in 0..60 {
        let v = &got2[&json!(format!("e{j}")).to_string()];
        let ns = BOTH[j % 2];
        let m = v["result"]["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .find(|m| m["namespace"] == ns)
            .unwrap_or_else(|| panic!("no {ns} message: {v}"));
        replies2.push((
            format!("second reply {j}"),
            m["xml"].as_str().unwrap().to_owned(),
        ));
    }
    for j in 0..120 {
        let v = &got2[&json!(format!("s{j}")).to_string()];
        assert!(
            v.get("error").is_none() && (v["result"].is_object() || v["result"].is_array()),
            "{v}"
        );
    }
    replies2.shuffle(&mut rng);
    for (body, xml) in &replies2 {
        expect_body(&mut a, BOB, bid, xml, body);
    }
    eprintln!("second pipeline read in {:?}", t_read.elapsed());

    // Copies of everything are redeliveries; the sessions work both ways.
    for (body, xml) in msgs.iter().chain(msgs2.iter()) {
        let r = b.decrypt(ALICE, xml).expect("redelivery");
        assert_eq!(
            (&r["redelivered"], &r["body"]),
            (&json!(true), &json!(body))
        );
    }
    for ns in BOTH {
        round_trip(&mut a, ALICE, aid, &mut b, BOB, bid, ns, "after");
    }
    eprintln!("pipelined: {:?}", t0.elapsed());
}
