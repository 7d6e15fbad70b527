//! python-omemo in-process (`tests/interop/bench_python.py` in the interop venv): the same
//! operations, the comparator of the report.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::config::Cfg;
use crate::stats::{Fig, Report};

fn python_path(cfg: &Cfg) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OMEMOD_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let p = cfg.repo.join(".venv/bin/python");
    p.exists().then_some(p)
}

pub fn bench_python(cfg: &Cfg, r: &mut Report) {
    println!("\n== python-omemo, in-process (tests/interop/bench_python.py) ==");
    let Some(py) = python_path(cfg) else {
        let m = "python-omemo skipped: no venv (run scripts/setup-python or set OMEMOD_PYTHON)";
        println!("  {m}");
        r.notes.push(m.into());
        return;
    };
    let out = Command::new(&py)
        .arg(cfg.repo.join("tests/interop/bench_python.py"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run python");
    if !out.status.success() {
        let m = format!("python-omemo bench failed ({})", out.status);
        println!("  {m}");
        r.notes.push(m);
        return;
    }
    let v: Value = serde_json::from_slice(&out.stdout).expect("python JSON");
    r.python_version = v["python_omemo"].as_str().map(|s| {
        format!(
            "python-omemo {s} (Python {})",
            v["python"].as_str().unwrap_or("?")
        )
    });
    for (t, ops) in v["results"].as_object().expect("results") {
        for (op, f) in ops.as_object().unwrap() {
            r.fig(
                &format!("py.{t}.{op}"),
                Fig {
                    p50: f["median_us"].as_f64().unwrap(),
                    p99: f["p99_us"].as_f64().unwrap(),
                    n: f["n"].as_u64().unwrap() as usize,
                },
            );
        }
    }
}
