//! How cost grows with the database (issue 25): for each size, a database of N accounts × M
//! contacts × D devices with real sessions, then a release daemon on it, measured.
//! `scripts/bench-scale` runs it (`OMEMOD_BENCH_ONLY=scale`); it is never part of a plain
//! `scripts/bench` run.
//!
//! - [`gen`]: the database of one size, made by the daemon's own code;
//! - [`measure`]: start-up, memory, latencies cold and warm, throughput, maintenance passes
//!   under traffic, database and WAL size;
//! - [`doc`]: the table and the plot (docs/performance-scale.md, docs/performance-scale.svg).
//!
//! Knobs: `OMEMOD_SCALE_SIZES` (sessions, default `10000,100000,1000000`),
//! `OMEMOD_SCALE_CONTACTS` (M, default 50), `OMEMOD_SCALE_DEVICES` (D, default 2),
//! `OMEMOD_SCALE_PREKEYS` (one-time prekeys in each stored bundle, default 100),
//! `OMEMOD_SCALE_DIR` (where databases go, default `target/scale`), `OMEMOD_SCALE_KEEP=1` (keep
//! each database and its peers for the next run instead of deleting them),
//! `OMEMOD_SCALE_THREADS` (generator threads), `OMEMOD_SCALE_MD` (the Markdown report; empty:
//! not written).

mod doc;
mod gen;
mod measure;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use protocol_core::session::Session;
use protocol_core::Version;
use serde::{Deserialize, Serialize};

use crate::config::Cfg;
use crate::peer::Device;

/// Peers kept for the traffic, at most (a random sample of the sessions).
const SAMPLE: usize = 4096;

/// The shape of one database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub accounts: usize,
    pub contacts: usize,
    pub devices: usize,
    pub prekeys: usize,
    #[serde(with = "ns_serde")]
    pub namespace: Version,
}

impl Layout {
    pub fn sessions(&self) -> usize {
        self.accounts * self.contacts * self.devices
    }

    pub fn contacts_total(&self) -> usize {
        self.accounts * self.contacts
    }
}

mod ns_serde {
    use protocol_core::Version;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Version, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(crate::ns_tag(*v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Version, D::Error> {
        let s = String::deserialize(d)?;
        Version::ALL
            .into_iter()
            .find(|v| crate::ns_tag(*v) == s)
            .ok_or_else(|| serde::de::Error::custom("namespace"))
    }
}

/// A peer device kept for the traffic: who it is, and its side of the session with one of our
/// accounts.
#[derive(Serialize, Deserialize)]
pub struct PeerState {
    pub account: String,
    pub account_device: u32,
    pub jid: String,
    pub device: u32,
    #[serde(with = "ns_serde")]
    pub namespace: Version,
    /// `Session::to_bytes` (the peer holds no skipped keys).
    session: String,
}

impl PeerState {
    fn of(account: String, account_device: u32, peer: &Device) -> Self {
        let s = &peer.sessions[&(account.clone(), account_device)];
        PeerState {
            account,
            account_device,
            jid: peer.jid.clone(),
            device: peer.device_id,
            namespace: peer.version,
            session: hex::encode(&*s.to_bytes(false)),
        }
    }

    /// The device, holding its session with our account (its own keys are fresh: only the
    /// session is used from here on).
    pub fn device(&self) -> Device {
        let mut d = Device::new(&self.jid, self.device, self.namespace, 0, 0);
        let bytes = hex::decode(&self.session).expect("hex");
        let s = Session::from_bytes(&bytes, Vec::new()).expect("peer session");
        d.sessions
            .insert((self.account.clone(), self.account_device), s);
        d
    }

    /// The state of `d` (after traffic), to be saved.
    pub fn update(&mut self, d: &Device) {
        let s = &d.sessions[&(self.account.clone(), self.account_device)];
        self.session = hex::encode(&*s.to_bytes(false));
    }
}

/// What a kept database holds.
#[derive(Serialize, Deserialize)]
struct Kept {
    layout: Layout,
    generation_secs: f64,
    peers: Vec<PeerState>,
}

/// Everything measured at one size, by key (see [`measure`]).
pub type Figures = BTreeMap<String, f64>;

struct ScaleCfg {
    sizes: Vec<usize>,
    contacts: usize,
    devices: usize,
    prekeys: usize,
    dir: PathBuf,
    keep: bool,
    threads: usize,
    md: Option<PathBuf>,
}

impl ScaleCfg {
    fn from_env(cfg: &Cfg) -> Self {
        let num = |k: &str, d: usize| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(d)
        };
        let sizes = std::env::var("OMEMOD_SCALE_SIZES")
            .ok()
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.split(',')
                    .map(|x| x.trim().parse().expect("OMEMOD_SCALE_SIZES: numbers"))
                    .collect()
            })
            .unwrap_or_else(|| vec![10_000, 100_000, 1_000_000]);
        let repo = cfg.repo.canonicalize().expect("repository");
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let md = match std::env::var_os("OMEMOD_SCALE_MD") {
            Some(p) if p.is_empty() => None,
            Some(p) => Some(PathBuf::from(p)),
            None => Some(repo.join("docs/performance-scale.md")),
        };
        ScaleCfg {
            sizes,
            contacts: num("OMEMOD_SCALE_CONTACTS", 50),
            devices: num("OMEMOD_SCALE_DEVICES", 2),
            prekeys: num("OMEMOD_SCALE_PREKEYS", 100),
            dir: std::env::var_os("OMEMOD_SCALE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo.join("target/scale")),
            keep: std::env::var("OMEMOD_SCALE_KEEP").is_ok_and(|v| !v.is_empty() && v != "0"),
            threads: num("OMEMOD_SCALE_THREADS", threads),
            md,
        }
    }

    fn layout(&self, sessions: usize) -> Layout {
        Layout {
            accounts: sessions.div_ceil(self.contacts * self.devices).max(1),
            contacts: self.contacts,
            devices: self.devices,
            prekeys: self.prekeys,
            namespace: Version::Twomemo,
        }
    }
}

pub fn bench_scale(cfg: &Cfg) {
    let sc = ScaleCfg::from_env(cfg);
    std::fs::create_dir_all(&sc.dir).expect("scale dir");
    let mut results: Vec<(Layout, Figures)> = Vec::new();
    for &size in &sc.sizes {
        let layout = sc.layout(size);
        println!(
            "\n== scale: {} sessions ({} accounts x {} contacts x {} devices, {}-prekey bundles) ==",
            layout.sessions(),
            layout.accounts,
            layout.contacts,
            layout.devices,
            layout.prekeys
        );
        let dir = sc.dir.join(format!("s{}", layout.sessions()));
        let (mut kept, fresh) = prepare(&sc, &dir, layout);
        let mut figs = Figures::new();
        figs.insert("generation_secs".into(), kept.generation_secs);
        figs.insert("fresh_database".into(), f64::from(u8::from(fresh)));
        measure::run(
            cfg,
            &dir.join("omemod.db"),
            &layout,
            &mut kept.peers,
            &mut figs,
        );
        if sc.keep {
            save(&dir, &kept);
        } else {
            let _ = std::fs::remove_dir_all(&dir);
        }
        results.push((layout, figs));
        doc::write(&sc, &results, cfg);
    }
}

/// The database of `layout` in `dir`: the kept one if it matches, else a new one. Returns it and
/// whether it was made now.
fn prepare(sc: &ScaleCfg, dir: &Path, layout: Layout) -> (Kept, bool) {
    let meta = dir.join("peers.json");
    if let Some(k) = std::fs::read(&meta)
        .ok()
        .and_then(|b| serde_json::from_slice::<Kept>(&b).ok())
        .filter(|k| k.layout == layout && dir.join("omemod.db").exists())
    {
        println!("  reusing the database in {}", dir.display());
        return (k, false);
    }
    let _ = std::fs::remove_dir_all(dir);
    // Private, as the daemon wants its database's directory.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)
        .expect("database dir");
    let t = Instant::now();
    let sample = (SAMPLE as f64 / layout.sessions() as f64).min(1.0);
    let peers = gen::generate(&dir.join("omemod.db"), &layout, sample, sc.threads);
    let kept = Kept {
        layout,
        generation_secs: t.elapsed().as_secs_f64(),
        peers,
    };
    if sc.keep {
        save(dir, &kept);
    }
    (kept, true)
}

fn save(dir: &Path, kept: &Kept) {
    std::fs::write(
        dir.join("peers.json"),
        serde_json::to_vec(kept).expect("json"),
    )
    .expect("save peers");
}
