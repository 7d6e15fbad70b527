//! The run's configuration, from the `OMEMOD_BENCH_*` environment (see the crate docs).

use std::path::PathBuf;

use protocol_core::Version;

use crate::{ns_tag, DURABILITIES, NS_ALL};

pub struct Cfg {
    pub quick: bool,
    pub scale: f64,
    pub only: Option<Vec<String>>,
    pub ops: Option<Vec<String>>,
    pub sessions: usize,
    pub namespaces: Vec<Version>,
    pub durabilities: Vec<&'static str>,
    pub repo: PathBuf,
    pub bin: PathBuf,
    /// The same code built without redelivery (`bench-baseline-no-redelivery`), for issue 8's
    /// A/B comparison; scripts/bench builds it.
    pub baseline: Option<PathBuf>,
    /// The same code built without sealing (`bench-baseline-no-sealing`), for issue 24's A/B
    /// comparison; scripts/bench builds it.
    pub sealing_baseline: Option<PathBuf>,
}

impl Cfg {
    pub fn from_env() -> Self {
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
        let bin_var = |var: &str| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let baseline = bin_var("OMEMOD_BENCH_BASELINE_BIN");
        let sealing_baseline = bin_var("OMEMOD_BENCH_SEALING_BASELINE_BIN");
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
            sealing_baseline,
        }
    }

    /// Iterations: `full` normally, `quick` with OMEMOD_BENCH_QUICK, times OMEMOD_BENCH_SCALE.
    pub fn n(&self, full: usize, quick: usize) -> usize {
        let base = if self.quick { quick } else { full };
        ((base as f64 * self.scale) as usize).max(3)
    }

    /// Whether an operation of the RPC part is measured.
    pub fn op(&self, name: &str) -> bool {
        self.ops
            .as_ref()
            .is_none_or(|o| o.iter().any(|x| x == name))
    }

    pub fn section(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|x| x == name))
    }
}
