//! What one size costs, on a release daemon (`--durability normal`, debug methods on for
//! `debug.maintenance`) serving the generated database:
//!
//! - start-up: spawn → first `status` answer, three starts (the first one on the new file);
//! - RSS idle (after start), and after a burst of `encrypt`s to random contacts of random
//!   accounts from 8 clients (enough to fill the session cache);
//! - decrypt and encrypt p50 / p99 on random sessions: cold (the first use of the session and
//!   of its account since start, so one per account) and warm (used again);
//! - decrypts/s with 8 and 32 clients, each its own connection and sessions;
//! - each maintenance pass run (as if 91 days had passed: all its work due at once) while 4
//!   clients decrypt: its time, and the p99 and worst latency of the requests it overlapped;
//! - the database and WAL size.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::gen::{account_jid, contact_jid};
use super::{Figures, Layout, PeerState};
use crate::config::Cfg;
use crate::daemon::{Client, Daemon};
use crate::peer::Device;
use crate::stats::fig;
use crate::BODY;

/// Days the maintenance passes are run ahead: past every retention (signed prekeys 7 + 7,
/// skipped keys 30, redelivery 7 and 90, dropped devices 90).
const DAYS_AHEAD: u32 = 91;
/// Most sessions used cold (and then warm) per operation, each of another account.
const COLD: usize = 1000;
/// Most contacts the burst encrypts to.
const BURST: usize = 20_000;

/// A peer with the account it talks to.
struct Peer {
    account: String,
    account_device: u32,
    device: Device,
}

impl Peer {
    /// The peer's next message to our account, as a `decrypt` call.
    fn message(&mut self) -> (&'static str, serde_json::Value) {
        let to = [(self.account.clone(), self.account_device)];
        let xml = self.device.encrypt_to(&to, BODY, &self.account);
        (
            "decrypt",
            json!({"account": self.account, "from": self.device.jid, "xml": xml}),
        )
    }

    fn encrypt_call(&self) -> (&'static str, serde_json::Value) {
        encrypt_to(&self.account, &self.device.jid, self.device.version)
    }
}

fn encrypt_to(
    account: &str,
    to: &str,
    ns: protocol_core::Version,
) -> (&'static str, serde_json::Value) {
    (
        "encrypt",
        json!({"account": account, "to": [to], "body": BODY, "namespaces": [ns.namespace()]}),
    )
}

fn decrypted(v: &serde_json::Value) {
    assert_eq!(v["body"].as_str(), Some(BODY), "decrypt answer: {v}");
}

pub fn run(cfg: &Cfg, db: &Path, layout: &Layout, states: &mut [PeerState], f: &mut Figures) {
    let mib = |b: u64| b as f64 / 1048576.0;
    f.insert("db_mib".into(), mib(size(db, "")));
    let mut d = Daemon::new(
        &cfg.bin,
        Some(db.to_owned()),
        "normal",
        &["--enable-debug-methods"],
    );
    startup(&mut d, f);
    std::thread::sleep(Duration::from_secs(2));
    f.insert("rss_idle_mib".into(), d.rss_kib() / 1024.0);

    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut order: Vec<usize> = (0..states.len()).collect();
    order.shuffle(&mut rng);
    let mut peers: Vec<(usize, Peer)> = order
        .into_iter()
        .map(|i| {
            let s = &states[i];
            (
                i,
                Peer {
                    account: s.account.clone(),
                    account_device: s.account_device,
                    device: s.device(),
                },
            )
        })
        .collect();
    // Cold means the first use of the session and of its account since start: one peer of
    // each of the first accounts for decrypt, of the next ones for encrypt.
    let cold = cold_first(&mut peers, COLD);
    let wal_max = Arc::new(AtomicU64::new(0));
    let watch = watch_wal(db, Arc::clone(&wal_max));

    let c = d.client();
    latencies(&c, f, "decrypt", &mut peers[..cold], |p| p.message(), true);
    latencies(
        &c,
        f,
        "encrypt",
        &mut peers[cold..2 * cold],
        |p| p.encrypt_call(),
        false,
    );
    burst(&d, layout, f, &mut rng);
    std::thread::sleep(Duration::from_secs(1));
    f.insert("rss_burst_mib".into(), d.rss_kib() / 1024.0);
    f.insert(
        "sessions_touched".into(),
        (2 * cold + BURST.min(layout.contacts_total()) * layout.devices) as f64,
    );

    let rest = &mut peers[2 * cold..];
    for clients in [8usize, 32] {
        let rate = throughput(&d, rest, clients);
        f.insert(format!("throughput_{clients}"), rate);
    }
    maintenance(&d, rest, f);
    f.insert("wal_max_mib".into(), mib(wal_max.load(Ordering::Relaxed)));
    watch.store(false, Ordering::Relaxed);
    f.insert("wal_end_mib".into(), mib(size(db, "-wal")));
    d.stop();
    f.insert("db_after_mib".into(), mib(size(db, "")));
    // The peers' sessions moved on: keep them for a later run on the same database.
    for (i, p) in &peers {
        states[*i].update(&p.device);
    }
}

fn size(db: &Path, suffix: &str) -> u64 {
    let mut p = db.as_os_str().to_owned();
    p.push(suffix);
    std::fs::metadata(std::path::PathBuf::from(p)).map_or(0, |m| m.len())
}

/// Orders `peers` so that the first `2 * n` (n at most `max`, at most half the accounts) talk to
/// distinct accounts; returns n.
fn cold_first(peers: &mut Vec<(usize, Peer)>, max: usize) -> usize {
    let mut seen = std::collections::HashSet::new();
    let (mut first, mut rest): (Vec<_>, Vec<_>) = std::mem::take(peers)
        .into_iter()
        .partition(|(_, p)| seen.insert(p.account.clone()));
    let n = max.min(first.len() / 2);
    rest.extend(first.drain(2 * n..));
    first.append(&mut rest);
    *peers = first;
    n
}

/// Samples the WAL's size every 50 ms into `max` until the returned flag is cleared.
fn watch_wal(db: &Path, max: Arc<AtomicU64>) -> Arc<AtomicBool> {
    let on = Arc::new(AtomicBool::new(true));
    let (flag, db) = (Arc::clone(&on), db.to_owned());
    std::thread::spawn(move || {
        while flag.load(Ordering::Relaxed) {
            max.fetch_max(size(&db, "-wal"), Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    on
}

/// Three starts: spawn → first `status` answer (the first on the file as generated).
fn startup(d: &mut Daemon, f: &mut Figures) {
    let mut starts = Vec::new();
    for i in 0..3 {
        if i > 0 {
            d.stop();
        }
        let t = d.spawn();
        starts.push(t.as_nanos() as u64);
        println!("  start-up {}: {:.1} ms", i + 1, t.as_secs_f64() * 1e3);
    }
    f.insert("startup_first_ms".into(), starts[0] as f64 / 1e6);
    let s = fig(&starts);
    f.insert("startup_ms".into(), s.p50 / 1e3);
}

/// `op` on each peer once (cold: the first use of its session and account since start), then
/// twice more (warm); p50 / p99 of both.
fn latencies(
    c: &Client,
    f: &mut Figures,
    op: &str,
    peers: &mut [(usize, Peer)],
    mut call: impl FnMut(&mut Peer) -> (&'static str, serde_json::Value),
    check: bool,
) {
    let mut run = |peers: &mut [(usize, Peer)]| -> Vec<u64> {
        peers
            .iter_mut()
            .map(|(_, p)| {
                let (ns, v) = c.timed(call(p));
                if check {
                    decrypted(&v);
                }
                ns
            })
            .collect()
    };
    let cold = fig(&run(peers));
    let mut warm = run(peers);
    warm.extend(run(peers));
    let warm = fig(&warm);
    for (k, x) in [("cold", cold), ("warm", warm)] {
        println!(
            "  {op:<8} {k:<5} p50 {:>9.1} µs  p99 {:>9.1} µs  (n={})",
            x.p50, x.p99, x.n
        );
        f.insert(format!("{op}_{k}_p50_us"), x.p50);
        f.insert(format!("{op}_{k}_p99_us"), x.p99);
    }
}

/// `encrypt` to random contacts of random accounts from 8 clients: most sessions it touches
/// are cold, and together they fill the session cache.
fn burst(d: &Daemon, layout: &Layout, f: &mut Figures, rng: &mut impl Rng) {
    let n = BURST.min(layout.contacts_total());
    let mut targets: Vec<usize> =
        rand::seq::index::sample(rng, layout.contacts_total(), n).into_vec();
    targets.shuffle(rng);
    let ns = layout.namespace;
    let contacts = layout.contacts;
    let t = Instant::now();
    let samples: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .chunks(n.div_ceil(8))
            .map(|chunk| {
                let c = d.client();
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|&k| {
                            let (a, ct) = (k / contacts, k % contacts);
                            c.timed(encrypt_to(&account_jid(a), &contact_jid(a, ct), ns))
                                .0
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("burst client"))
            .collect()
    });
    let secs = t.elapsed().as_secs_f64();
    let x = fig(&samples);
    println!(
        "  burst: {n} encrypts from 8 clients in {secs:.1} s, p50 {:.0} µs p99 {:.0} µs",
        x.p50, x.p99
    );
    f.insert("burst_encrypt_p50_us".into(), x.p50);
    f.insert("burst_encrypt_p99_us".into(), x.p99);
    f.insert("burst_rate".into(), n as f64 / secs);
}

/// Decrypts/s with `clients` clients, each on its own sessions (warmed first), for 3 s.
fn throughput(d: &Daemon, peers: &mut [(usize, Peer)], clients: usize) -> f64 {
    let per = (peers.len() / clients).clamp(1, 16);
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let groups = peers.len().div_ceil(per).min(clients);
    let ready = std::sync::Barrier::new(groups + 1);
    let t = std::thread::scope(|s| {
        for group in peers.chunks_mut(per).take(clients) {
            let c = d.client();
            let (stop, count, ready) = (&stop, &count, &ready);
            s.spawn(move || {
                for (_, p) in group.iter_mut() {
                    decrypted(&c.ok_call(p.message()));
                }
                ready.wait();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    decrypted(&c.ok_call(group[i % group.len()].1.message()));
                    count.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            });
        }
        ready.wait();
        let t = Instant::now();
        count.store(0, Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(3));
        let n = count.load(Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        n as f64 / t.elapsed().as_secs_f64()
    });
    println!("  throughput, {clients} clients: {t:.0} decrypts/s");
    t
}

/// Each maintenance pass while 4 clients decrypt: its time, and the latencies of the requests
/// it overlapped against those before the first pass.
fn maintenance(d: &Daemon, peers: &mut [(usize, Peer)], f: &mut Figures) {
    let stop = AtomicBool::new(false);
    let origin = Instant::now();
    let at = |t: Instant| t.duration_since(origin).as_nanos() as u64;
    let per = (peers.len() / 4).clamp(1, 16);
    let (requests, windows) = std::thread::scope(|s| {
        let handles: Vec<_> = peers
            .chunks_mut(per)
            .take(4)
            .map(|group| {
                let c = d.client();
                let stop = &stop;
                s.spawn(move || {
                    let mut out = Vec::new();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let call = group[i % group.len()].1.message();
                        let t0 = Instant::now();
                        decrypted(&c.ok_call(call));
                        out.push((at(t0), at(Instant::now())));
                        i += 1;
                    }
                    out
                })
            })
            .collect();
        let c = d.client();
        std::thread::sleep(Duration::from_secs(3));
        let mut windows = Vec::new();
        for (pass, _) in super::doc::PASSES {
            let t0 = Instant::now();
            let r = c.ok(
                "debug.maintenance",
                json!({"pass": pass, "days_ahead": DAYS_AHEAD}),
            );
            windows.push((
                pass,
                at(t0),
                at(Instant::now()),
                r["micros"].as_f64().unwrap_or(0.0),
            ));
            std::thread::sleep(Duration::from_secs(1));
        }
        stop.store(true, Ordering::Relaxed);
        let requests: Vec<(u64, u64)> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("traffic client"))
            .collect();
        (requests, windows)
    });
    let first = windows.first().map_or(u64::MAX, |w| w.1);
    let base: Vec<u64> = requests
        .iter()
        .filter(|(_, e)| *e < first)
        .map(|(s, e)| e - s)
        .collect();
    let b = fig(&base);
    let bmax = base.iter().copied().max().unwrap_or(0) as f64 / 1e3;
    println!(
        "  traffic before the passes: p50 {:.0} µs p99 {:.0} µs max {bmax:.0} µs (n={})",
        b.p50, b.p99, b.n
    );
    f.insert("maint_base_p50_us".into(), b.p50);
    f.insert("maint_base_p99_us".into(), b.p99);
    f.insert("maint_base_max_us".into(), bmax);
    for (pass, s, e, micros) in windows {
        let during: Vec<u64> = requests
            .iter()
            .filter(|(rs, re)| *rs < e && *re > s)
            .map(|(rs, re)| re - rs)
            .collect();
        let x = fig(&during);
        let max = during.iter().copied().max().unwrap_or(0) as f64 / 1e3;
        println!(
            "  pass {pass:<15} {:>9.1} ms; requests during it: p99 {:.0} µs max {max:.0} µs (n={})",
            micros / 1e3,
            x.p99,
            x.n
        );
        f.insert(format!("maint_{pass}_ms"), micros / 1e3);
        f.insert(format!("maint_{pass}_p99_us"), x.p99);
        f.insert(format!("maint_{pass}_max_us"), max);
        f.insert(format!("maint_{pass}_n"), x.n as f64);
    }
}
