//! omemod through its socket, one daemon per durability, both namespaces: the empty round trip
//! (`status`, part of the floor), decrypt / encrypt on an established session, decrypt with a
//! DH step, throughput with 1 and 8 clients, encrypt to 100 devices, session creation active
//! and passive; issue 8's A/B of decrypt with and without redelivery, and issue 24's of decrypt,
//! encrypt and start-up with and without sealing.

use std::sync::{Arc, Barrier};
use std::time::Instant;

use protocol_core::bundle::Bundle;
use protocol_core::xml::Encrypted;
use protocol_core::Version;
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Value};

use crate::config::Cfg;
use crate::daemon::{Call, Client, Daemon};
use crate::floor::commit_floor;
use crate::peer::Device;
use crate::stats::{fig, Fig, Report};
use crate::{ns_tag, BODY, ME};

fn check_body(r: &Value) {
    assert_eq!(r["body"].as_str(), Some(BODY), "decrypted body: {r}");
}

/// A peer device of the daemon's account with an established, confirmed session (it initiated,
/// the daemon answered).
fn established_peer(c: &Client, jid: &str, dev: u32, ns: Version) -> Device {
    let mut p = Device::new(jid, dev, ns, 1, 0);
    let mine = &c.own_bundle(ns); // current: earlier key exchanges used some prekeys
    c.learn(&[&p]);
    let me_dev = c.own_device();
    let pk = pick_prekey(mine, &mut p.rng);
    p.initiate(ME, me_dev, mine, pk);
    let first = p.encrypt_to(&[(ME.to_owned(), me_dev)], BODY, ME);
    let (method, params) = Client::decrypt_call(jid, &first);
    check_body(&c.ok(method, params));
    let back = c.encrypt_xml(jid, ns);
    assert_eq!(p.receive(ME, &back).as_deref(), Some(BODY));
    p
}

fn pick_prekey(b: &Bundle, rng: &mut StdRng) -> u32 {
    b.prekeys[rng.gen_range(0..b.prekeys.len())].id
}

/// One durability's daemon with our account, and the figures' names.
struct Rpc<'a> {
    cfg: &'a Cfg,
    durability: &'a str,
    d: Daemon,
    c: Client,
    /// Our account's address: (ME, device id).
    me: (String, u32),
    /// The last device id handed to a peer.
    dev_ids: u32,
}

pub fn bench_rpc(cfg: &Cfg, r: &mut Report, durability: &str) {
    println!("\n== omemod via socket, --durability {durability} ==");
    let d = Daemon::start(cfg, durability);
    let c = d.client();
    c.ok("account.create", json!({"jid": ME}));
    let me = (ME.to_owned(), c.own_device());
    let mut b = Rpc {
        cfg,
        durability,
        d,
        c,
        me,
        dev_ids: 10,
    };
    b.empty_round_trip(r);
    for &ns in &cfg.namespaces {
        let pj = format!("peer-{}@bench.example", ns_tag(ns));
        let dev = b.next_dev();
        let mut p = established_peer(&b.c, &pj, dev, ns);
        if cfg.op("decrypt") {
            b.decrypt(r, &mut p);
        }
        if cfg.op("decrypt_dh") {
            b.decrypt_dh(r, &mut p);
        }
        if cfg.op("encrypt") {
            b.encrypt(r, &p);
        }
        if cfg.op("throughput") {
            b.throughput(r, ns);
        }
        if cfg.op("fanout100") {
            b.fanout(r, ns);
        }
        if cfg.op("session_active") {
            b.session_active(r, ns);
        }
        if cfg.op("session_passive") {
            b.session_passive(r, ns);
        }
    }
}

impl Rpc<'_> {
    fn next_dev(&mut self) -> u32 {
        self.dev_ids += 1;
        self.dev_ids
    }

    fn key(&self, ns: Version, op: &str) -> String {
        format!("rpc.{}.{}.{op}", self.durability, ns_tag(ns))
    }

    /// The empty RPC round trip (`status`) of the floor; and this durability's commit floor,
    /// which the ratios need even when the floor section is skipped.
    fn empty_round_trip(&self, r: &mut Report) {
        let status: Call = ("status", json!({}));
        let mut v = Vec::new();
        for i in 0..self.cfg.n(5000, 500) + 100 {
            let (ns_, _) = self.c.timed(status.clone());
            if i >= 100 {
                v.push(ns_);
            }
        }
        r.fig(&format!("floor.rpc_status.{}", self.durability), fig(&v));
        if r.p50(&format!("floor.sqlite_commit.{}", self.durability))
            .is_none()
        {
            commit_floor(self.cfg, r, self.durability);
        }
    }

    /// decrypt, same chain.
    fn decrypt(&self, r: &mut Report, p: &mut Device) {
        let n = self.cfg.n(2000, 200);
        let calls: Vec<Call> = (0..n + 50)
            .map(|_| {
                let x = p.encrypt_to(std::slice::from_ref(&self.me), BODY, ME);
                Client::decrypt_call(&p.jid, &x)
            })
            .collect();
        let mut v = Vec::with_capacity(n);
        for (i, call) in calls.into_iter().enumerate() {
            let (dt, res) = self.c.timed(call);
            if i == 0 {
                check_body(&res);
            }
            if i >= 50 {
                v.push(dt);
            }
        }
        r.fig(&self.key(p.version, "decrypt"), fig(&v));
    }

    /// decrypt with a DH step (ping-pong; only the decrypt is timed).
    fn decrypt_dh(&self, r: &mut Report, p: &mut Device) {
        let mut v = Vec::new();
        for _ in 0..self.cfg.n(500, 60) {
            let back = self.c.encrypt_xml(&p.jid, p.version);
            p.receive(ME, &back);
            let x = p.encrypt_to(std::slice::from_ref(&self.me), BODY, ME);
            let (dt, res) = self.c.timed(Client::decrypt_call(&p.jid, &x));
            check_body(&res);
            v.push(dt);
        }
        r.fig(&self.key(p.version, "decrypt_dh"), fig(&v));
    }

    /// encrypt, one device (the peer does not read these; its chain just grows).
    fn encrypt(&self, r: &mut Report, p: &Device) {
        let n = self.cfg.n(2000, 200);
        let mut v = Vec::with_capacity(n);
        for i in 0..n + 50 {
            let (dt, res) = self.c.timed(Client::encrypt_call(&p.jid, p.version));
            if i == 0 {
                assert_eq!(res["devices"][0]["status"], "encrypted", "{res}");
            }
            if i >= 50 {
                v.push(dt);
            }
        }
        r.fig(&self.key(p.version, "encrypt"), fig(&v));
    }

    /// throughput: 1 and 8 clients, each decrypting messages of its own session.
    fn throughput(&mut self, r: &mut Report, ns: Version) {
        let t = ns_tag(ns);
        let per1 = self.cfg.n(3000, 300);
        let per8 = self.cfg.n(1500, 150);
        let mut peers: Vec<Device> = (0..8)
            .map(|i| {
                let dev = self.next_dev();
                established_peer(&self.c, &format!("tp{i}-{t}@bench.example"), dev, ns)
            })
            .collect();
        let mut per_client: Vec<Vec<Call>> = Vec::new();
        for (i, p) in peers.iter_mut().enumerate() {
            let k = if i == 0 { per1 + per8 } else { per8 };
            per_client.push(
                (0..k)
                    .map(|_| {
                        let x = p.encrypt_to(std::slice::from_ref(&self.me), BODY, ME);
                        Client::decrypt_call(&p.jid, &x)
                    })
                    .collect(),
            );
        }
        let first: Vec<Call> = per_client[0].drain(..per1).collect();
        let (rate1, _) = run_clients(&self.d, vec![first]);
        r.rate(&self.key(ns, "throughput_1"), rate1);
        let (rate8, lat8) = run_clients(&self.d, per_client);
        r.rate(&self.key(ns, "throughput_8"), rate8);
        r.fig(&self.key(ns, "decrypt_under_8"), lat8);
    }

    /// fan-out: one JID with 100 devices, sessions established and confirmed.
    fn fanout(&mut self, r: &mut Report, ns: Version) {
        let fj = format!("fan-{}@bench.example", ns_tag(ns));
        let base = self.next_dev() * 1000;
        let mut fans: Vec<Device> = (0..100)
            .map(|i| Device::new(&fj, base + i, ns, 5, 0))
            .collect();
        self.c.learn(&fans.iter().collect::<Vec<_>>());
        let (dt, res) = self.c.timed(Client::encrypt_call(&fj, ns));
        r.fig(&self.key(ns, "fanout100_first"), fig(&[dt]));
        let first = res["messages"][0]["xml"].as_str().expect("xml").to_owned();
        let mut answers = Vec::new();
        for f in fans.iter_mut() {
            assert_eq!(f.receive(ME, &first).as_deref(), Some(BODY));
            let back = f.encrypt_to(std::slice::from_ref(&self.me), BODY, ME);
            answers.push(("decrypt", json!({"from": fj, "xml": back})));
        }
        self.c.batch(answers);
        let n = self.cfg.n(300, 30);
        let mut v = Vec::with_capacity(n);
        for i in 0..n + 5 {
            let (dt, res) = self.c.timed(Client::encrypt_call(&fj, ns));
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
        r.fig(&self.key(ns, "fanout100"), fig(&v));
    }

    /// session creation, active: first encrypt to a fresh device whose bundle is stored (a
    /// 100-prekey bundle; device list and bundle ingested untimed).
    fn session_active(&mut self, r: &mut Report, ns: Version) {
        let t = ns_tag(ns);
        let n = self.cfg.n(400, 40);
        let mut v = Vec::with_capacity(n);
        for i in 0..n + 10 {
            let aj = format!("act{i}-{t}@bench.example");
            let fresh = Device::new(&aj, self.next_dev(), ns, 1, 99);
            self.c.learn(&[&fresh]);
            let (dt, res) = self.c.timed(Client::encrypt_call(&aj, ns));
            assert_eq!(res["devices"][0]["kex"], true, "{res}");
            if i >= 10 {
                v.push(dt);
            }
        }
        r.fig(&self.key(ns, "session_active"), fig(&v));
    }

    /// session creation, passive: decrypt of a first message (key exchange). Each uses one of
    /// our prekeys (which the daemon replaces), so messages are made in rounds of distinct
    /// prekeys of the current bundle.
    fn session_passive(&self, r: &mut Report, ns: Version) {
        let t = ns_tag(ns);
        let n = self.cfg.n(400, 40);
        let mut v = Vec::with_capacity(n);
        let mut i = 0usize;
        while v.len() < n {
            let mine = self.c.own_bundle(ns);
            let round: Vec<Call> = mine
                .prekeys
                .iter()
                .take(50.min(n - v.len() + usize::from(i == 0) * 5))
                .map(|pk| {
                    i += 1;
                    let pj = format!("pas{i}-{t}@bench.example");
                    let mut x = Device::new(&pj, 77, ns, 0, 0);
                    x.initiate(ME, self.me.1, &mine, pk.id);
                    let m = x.encrypt_to(std::slice::from_ref(&self.me), BODY, ME);
                    Client::decrypt_call(&pj, &m)
                })
                .collect();
            for (j, call) in round.into_iter().enumerate() {
                let (dt, res) = self.c.timed(call);
                check_body(&res);
                assert_eq!(res["key_exchange"], true);
                if !(i <= 55 && j < 5) {
                    v.push(dt);
                }
            }
        }
        r.fig(&self.key(ns, "session_passive"), fig(&v));
    }
}

/// The two daemons of an A/B comparison (this build first, the baseline second), each with our
/// account; `me[i]` is the account's address on `daemons[i]`.
struct Ab {
    daemons: [Daemon; 2],
    clients: [Client; 2],
    me: [(String, u32); 2],
}

impl Ab {
    fn start(cfg: &Cfg, base: &std::path::Path, durability: &str) -> Self {
        let daemons = [
            Daemon::start(cfg, durability),
            Daemon::start_bin(base, durability),
        ];
        let clients = [daemons[0].client(), daemons[1].client()];
        let me = [0, 1].map(|i| {
            clients[i].ok("account.create", json!({"jid": ME}));
            (ME.to_owned(), clients[i].own_device())
        });
        Ab {
            daemons,
            clients,
            me,
        }
    }

    /// Each side's calls (made by `make` for that side), the first 50 an untimed warm-up, the
    /// rest timed in `blocks` alternating blocks, so that the machine's drift hits both alike.
    /// `check` looks at each side's first timed answer.
    fn alternate(
        &self,
        blocks: usize,
        per_block: usize,
        mut make: impl FnMut(usize) -> Vec<Call>,
        check: impl Fn(&Value),
    ) -> [Vec<u64>; 2] {
        let queued = [0, 1].map(|i| {
            let mut calls = make(i);
            for (method, params) in calls.drain(..50) {
                self.clients[i].ok(method, params);
            }
            calls
        });
        let mut times: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
        let mut queued = queued.map(Vec::into_iter);
        for b in 0..blocks {
            for i in [b % 2, 1 - b % 2] {
                for call in queued[i].by_ref().take(per_block) {
                    let (dt, res) = self.clients[i].timed(call);
                    if times[i].is_empty() {
                        check(&res);
                    }
                    times[i].push(dt);
                }
            }
        }
        times
    }

    /// Decrypts from a peer with an established session, `blocks × per_block` timed per side.
    fn decrypt(&self, ns: Version, dev: u32, blocks: usize, per_block: usize) -> [Vec<u64>; 2] {
        let pj = format!("ab-{}@bench.example", ns_tag(ns));
        let mut peers = [0, 1].map(|i| established_peer(&self.clients[i], &pj, dev + i as u32, ns));
        self.alternate(
            blocks,
            per_block,
            |i| {
                (0..blocks * per_block + 50)
                    .map(|_| {
                        let x = peers[i].encrypt_to(std::slice::from_ref(&self.me[i]), BODY, ME);
                        Client::decrypt_call(&pj, &x)
                    })
                    .collect()
            },
            check_body,
        )
    }
}

/// Issue 8: decrypt p50 with redelivery against the same code built without it, in one run.
pub fn bench_redelivery_ab(cfg: &Cfg, r: &mut Report, durability: &str) {
    let Some(base) = cfg.baseline.as_deref() else {
        return;
    };
    println!(
        "\n== redelivery A/B: this build vs {} ({durability}) ==",
        base.display()
    );
    let ab = Ab::start(cfg, base, durability);
    for &ns in &cfg.namespaces {
        let t = ns_tag(ns);
        let [on, off] = ab.decrypt(ns, 40, cfg.n(10, 3), cfg.n(200, 50));
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

/// Issue 24: decrypt and encrypt p50 with secrets sealed at rest against the same code built
/// without sealing, in one run, and the start-up of both on the databases that left.
pub fn bench_sealing_ab(cfg: &Cfg, r: &mut Report, durability: &str) {
    let Some(base) = cfg.sealing_baseline.as_deref() else {
        return;
    };
    println!(
        "\n== sealing A/B: this build vs {} ({durability}) ==",
        base.display()
    );
    let mut ab = Ab::start(cfg, base, durability);
    let (blocks, per_block) = (cfg.n(10, 3), cfg.n(200, 50));
    for &ns in &cfg.namespaces {
        let t = ns_tag(ns);
        let [on, off] = ab.decrypt(ns, 60, blocks, per_block);
        r.fig(&format!("ab.{durability}.{t}.decrypt_sealed"), fig(&on));
        r.fig(&format!("ab.{durability}.{t}.decrypt_unsealed"), fig(&off));
        // Encrypt to a peer with an established session (it does not read these).
        let pj = format!("ab-enc-{t}@bench.example");
        for i in 0..2 {
            established_peer(&ab.clients[i], &pj, 80 + i as u32, ns);
        }
        let [on, off] = ab.alternate(
            blocks,
            per_block,
            |_| vec![Client::encrypt_call(&pj, ns); blocks * per_block + 50],
            |res| assert_eq!(res["devices"][0]["status"], "encrypted", "{res}"),
        );
        r.fig(&format!("ab.{durability}.{t}.encrypt_sealed"), fig(&on));
        r.fig(&format!("ab.{durability}.{t}.encrypt_unsealed"), fig(&off));
    }
    // Start-up, alternating which side starts first.
    let mut starts: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    for d in &mut ab.daemons {
        d.stop();
    }
    for k in 0..cfg.n(10, 3) {
        for i in [k % 2, 1 - k % 2] {
            starts[i].push(ab.daemons[i].spawn().as_nanos() as u64);
            std::thread::sleep(std::time::Duration::from_millis(100));
            ab.daemons[i].stop();
        }
    }
    let [on, off] = starts;
    r.fig(&format!("ab.{durability}.startup_sealed"), fig(&on));
    r.fig(&format!("ab.{durability}.startup_unsealed"), fig(&off));
}

/// One thread per client, each with its own connection, making its calls one after another.
/// Returns (decrypts per second over the wall time, latency of all calls).
fn run_clients(d: &Daemon, per_client: Vec<Vec<Call>>) -> (f64, Fig) {
    let total: usize = per_client.iter().map(|v| v.len()).sum();
    let barrier = Arc::new(Barrier::new(per_client.len() + 1));
    let handles: Vec<_> = per_client
        .into_iter()
        .map(|calls| {
            let c = d.client();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let mut v = Vec::with_capacity(calls.len());
                for call in calls {
                    // `timed` fails the run on an error answer ("decrypt failed: …").
                    let (dt, _) = c.timed(call);
                    v.push(dt);
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
