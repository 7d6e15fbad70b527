//! Figures (p50 / p99 of samples) and the report that collects everything measured.

use std::collections::BTreeMap;
use std::time::Instant;

/// Latency figure in microseconds.
#[derive(Clone, Copy, Debug)]
pub struct Fig {
    pub p50: f64,
    pub p99: f64,
    pub n: usize,
}

pub fn fig(samples_ns: &[u64]) -> Fig {
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
pub fn time_each(warm: usize, iters: usize, mut f: impl FnMut()) -> Fig {
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

pub fn us(x: f64) -> String {
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
pub struct Report {
    pub figs: BTreeMap<String, Fig>,
    pub rates: BTreeMap<String, f64>,
    pub values: BTreeMap<String, f64>,
    pub notes: Vec<String>,
    pub python_version: Option<String>,
}

impl Report {
    pub fn fig(&mut self, key: &str, f: Fig) {
        println!(
            "  {key:<44} p50 {:>10}  p99 {:>10}  (n={})",
            us(f.p50),
            us(f.p99),
            f.n
        );
        self.figs.insert(key.to_owned(), f);
    }
    pub fn rate(&mut self, key: &str, r: f64) {
        println!("  {key:<44} {r:>10.0} /s");
        self.rates.insert(key.to_owned(), r);
    }
    pub fn value(&mut self, key: &str, v: f64, unit: &str) {
        println!("  {key:<44} {v:>10.2} {unit}");
        self.values.insert(key.to_owned(), v);
    }
    pub fn p50(&self, key: &str) -> Option<f64> {
        self.figs.get(key).map(|f| f.p50)
    }
}
