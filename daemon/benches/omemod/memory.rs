//! Memory, start-up and database size with many sessions (default 10,000: 100 JIDs × 100
//! devices, OMEMO 2, `--durability normal`).

use std::time::{Duration, Instant};

use protocol_core::Version;
use serde_json::json;

use crate::config::Cfg;
use crate::daemon::{Client, Daemon};
use crate::peer::Device;
use crate::stats::{fig, Report};
use crate::{BODY, ME};

const NS: Version = Version::Twomemo;
const PER_JID: usize = 100;

fn jid(j: usize) -> String {
    format!("many{j}@bench.example")
}

fn encrypt_to_jid(c: &Client, j: usize) -> serde_json::Value {
    c.ok(
        "encrypt",
        json!({"to": [jid(j)], "body": BODY, "namespaces": [NS.namespace()]}),
    )
}

/// The daemon's RSS once it has settled (300 ms after the last request).
fn settled_rss(r: &mut Report, d: &Daemon, key: &str) {
    std::thread::sleep(Duration::from_millis(300));
    r.value(key, d.rss_kib() / 1024.0, "MiB");
}

pub fn bench_memory(cfg: &Cfg, r: &mut Report) {
    let total = if cfg.quick {
        cfg.sessions.min(2000)
    } else {
        cfg.sessions
    };
    let jids = total.div_ceil(PER_JID);
    println!(
        "\n== memory and start-up: {total} sessions ({jids} JIDs x {PER_JID} devices, OMEMO 2, --durability normal) =="
    );
    let mut d = Daemon::start(cfg, "normal");
    let c = d.client();
    c.ok("account.create", json!({"jid": ME}));
    settled_rss(r, &d, "mem.rss_idle_mib");
    let db_empty = d.db_used_bytes();
    ingest(r, &c, total, jids);
    let db_bundles = d.db_used_bytes();
    create_sessions(r, &d, &c, total, jids);
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
    restart(cfg, r, &mut d, jids);
    r.value("mem.sessions", total as f64, "");
}

/// Device lists and 100-prekey bundles of `total` devices, generated in-process.
fn ingest(r: &mut Report, c: &Client, total: usize, jids: usize) {
    let t0 = Instant::now();
    let mut devs_total = 0usize;
    for j in 0..jids {
        let jid = jid(j);
        let k = PER_JID.min(total - devs_total);
        let devs: Vec<Device> = (0..k)
            .map(|i| Device::new(&jid, 1 + i as u32, NS, 0, 100))
            .collect();
        c.learn(&devs.iter().collect::<Vec<_>>());
        devs_total += k;
    }
    r.value(
        "mem.ingest_secs (device lists + bundles, incl. generation)",
        t0.elapsed().as_secs_f64(),
        "s",
    );
}

/// One `encrypt` per JID: a new session with each of its devices.
fn create_sessions(r: &mut Report, d: &Daemon, c: &Client, total: usize, jids: usize) {
    let t0 = Instant::now();
    for j in 0..jids {
        let res = encrypt_to_jid(c, j);
        let ok = res["devices"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["status"] == "encrypted")
            .count();
        assert_eq!(ok, PER_JID.min(total - j * PER_JID), "{res}");
    }
    r.value(
        "mem.session_creation_us_each (encrypt per JID, 100 new sessions each)",
        t0.elapsed().as_secs_f64() * 1e6 / total as f64,
        "µs",
    );
    settled_rss(r, d, "mem.rss_hot_mib (all sessions cached)");
}

/// Start-up on the full database, then every session loaded again.
fn restart(cfg: &Cfg, r: &mut Report, d: &mut Daemon, jids: usize) {
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
    let c = d.client();
    let t0 = Instant::now();
    for j in 0..jids {
        encrypt_to_jid(&c, j);
    }
    r.value(
        "mem.encrypt_all_after_restart_s (loads every session)",
        t0.elapsed().as_secs_f64(),
        "s",
    );
    settled_rss(r, d, "mem.rss_warm_mib (after restart, all loaded)");
}
