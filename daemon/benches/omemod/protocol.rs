//! protocol-core in-process: the same operations as through the socket, without socket or
//! database (XML, payload and ratchet only).

use std::time::Instant;

use protocol_core::bundle::Bundle;
use protocol_core::Version;

use crate::config::Cfg;
use crate::peer::Device;
use crate::stats::{fig, time_each, Report};
use crate::{ns_tag, BODY};

pub fn bench_core(cfg: &Cfg, r: &mut Report) {
    println!(
        "\n== protocol-core, in-process (XML, payload and ratchet; no socket, no database) =="
    );
    for &ns in &cfg.namespaces {
        let mut p = Pair::new(ns);
        let key = |op: &str| format!("core.{}.{op}", ns_tag(ns));
        decrypts(cfg, r, &key, &mut p);
        r.fig(
            &key("encrypt"),
            time_each(50, cfg.n(3000, 300), || {
                std::hint::black_box(p.alice.encrypt_to(std::slice::from_ref(&p.b), BODY, &p.b.0));
            }),
        );
        fanout(cfg, r, &key, &mut p);
        sessions(cfg, r, &key, &mut p);
    }
}

/// alice and bob with a confirmed session, each with the other's address; `bb` is bob's bundle.
struct Pair {
    alice: Device,
    bob: Device,
    a: (String, u32),
    b: (String, u32),
    bb: Bundle,
}

impl Pair {
    fn new(ns: Version) -> Pair {
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
        Pair {
            alice,
            bob,
            a,
            b,
            bb,
        }
    }
}

/// decrypt on the same chain, and decrypt with a DH step.
fn decrypts(cfg: &Cfg, r: &mut Report, key: &dyn Fn(&str) -> String, p: &mut Pair) {
    let Pair {
        alice, bob, a, b, ..
    } = p;
    // decrypt, same chain: messages made beforehand, decrypted in order.
    let n = cfg.n(3000, 300);
    let msgs: Vec<String> = (0..n + 50)
        .map(|_| alice.encrypt_to(std::slice::from_ref(b), BODY, &b.0))
        .collect();
    let mut it = msgs.iter();
    r.fig(
        &key("decrypt"),
        time_each(50, n, || {
            let body = bob.receive(&a.0, it.next().unwrap());
            debug_assert!(body.is_some());
        }),
    );
    // decrypt with a DH step: ping-pong.
    let mut v = Vec::new();
    for _ in 0..cfg.n(1000, 100) {
        let back = bob.encrypt_to(std::slice::from_ref(a), BODY, &a.0);
        alice.receive(&b.0, &back);
        let m = alice.encrypt_to(std::slice::from_ref(b), BODY, &b.0);
        let t0 = Instant::now();
        bob.receive(&a.0, &m);
        v.push(t0.elapsed().as_nanos() as u64);
    }
    r.fig(&key("decrypt_dh"), fig(&v));
}

/// fan-out to 100 confirmed sessions.
fn fanout(cfg: &Cfg, r: &mut Report, key: &dyn Fn(&str) -> String, p: &mut Pair) {
    let (alice, a) = (&mut p.alice, &p.a);
    let mut fans: Vec<Device> = (0..100)
        .map(|i| Device::new("fan@core.example", 1000 + i, alice.version, 1, 0))
        .collect();
    let targets: Vec<(String, u32)> = fans.iter().map(|f| (f.jid.clone(), f.device_id)).collect();
    for f in &fans {
        alice.initiate(&f.jid, f.device_id, &f.bundle(), 1);
    }
    let first = alice.encrypt_to(&targets, BODY, "fan@core.example");
    for f in fans.iter_mut() {
        f.receive(&a.0, &first);
        let back = f.encrypt_to(std::slice::from_ref(a), BODY, &a.0);
        alice.receive(&f.jid.clone(), &back);
    }
    r.fig(
        &key("fanout100"),
        time_each(5, cfg.n(300, 30), || {
            std::hint::black_box(alice.encrypt_to(&targets, BODY, "fan@core.example"));
        }),
    );
}

/// Session creation, active (X3DH from the bundle + first message) and passive (a key
/// exchange received).
fn sessions(cfg: &Cfg, r: &mut Report, key: &dyn Fn(&str) -> String, p: &mut Pair) {
    let Pair {
        alice,
        bob,
        a,
        b,
        bb,
    } = p;
    let mut k = 0u32;
    r.fig(
        &key("session_active"),
        time_each(20, cfg.n(1000, 100), || {
            k += 1;
            let tgt = (format!("x{k}@core.example"), 7);
            alice.initiate(&tgt.0, tgt.1, bb, 1);
            std::hint::black_box(alice.encrypt_to(std::slice::from_ref(&tgt), BODY, &tgt.0));
            alice.sessions.remove(&tgt);
        }),
    );
    // passive: key exchanges made beforehand by fresh sessions.
    let n = cfg.n(1000, 100);
    let kexes: Vec<String> = (0..n + 20)
        .map(|_| {
            alice.initiate(&b.0, b.1, bb, 1);
            alice.encrypt_to(std::slice::from_ref(b), BODY, &b.0)
        })
        .collect();
    let mut it = kexes.iter();
    r.fig(
        &key("session_passive"),
        time_each(20, n, || {
            bob.sessions.clear();
            std::hint::black_box(bob.receive(&a.0, it.next().unwrap()));
        }),
    );
}
