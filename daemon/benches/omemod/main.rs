//! omemod's benchmark harness (issue 5). `scripts/bench` runs it; by hand:
//! `cargo bench -p omemod --bench omemod` (the python-omemo part needs the venv: `scripts/setup-python`).
//!
//! One run measures, on this machine:
//! 1. omemod through its socket (release binary, real SQLite file in a temp dir, WAL), with
//!    `--durability normal` and `--durability full`, both namespaces: decrypt / encrypt on an
//!    established session (p50/p99), decrypt with a DH step, throughput with 1 and 8 concurrent
//!    clients, encrypt to 100 devices, session creation active (first encrypt from a stored bundle)
//!    and passive (decrypt of a key exchange);
//! 2. the same operations in-process with protocol-core (no socket, no database);
//! 3. the same operations with python-omemo in-process (`tests/interop/bench_python.py`);
//! 4. the floor: X25519, Ed25519 sign / verify, one small SQLite commit (NORMAL, FULL), one empty
//!    RPC round trip (`status`);
//! 5. memory and start-up with 10,000 sessions, database size per session.
//!
//! Every RPC figure is also given as a ratio to the same run's floor (empty RPC round trip + one
//! SQLite commit of the same durability, + N × X25519 for operations with DH steps), so figures
//! taken on a busy machine stay comparable; issue 13's targets are such ratios.
//!
//! Then prints the ratios and PASS/MISS against the targets, and a Markdown report (written to
//! `$OMEMOD_BENCH_MD` when set). Peers are simulated in-process with protocol-core: they build real
//! `<encrypted>` elements, device lists and bundles, so the daemon does exactly what it does with
//! real clients.
//!
//! Environment: `OMEMOD_BENCH_QUICK=1` (smoke run, ~1 min), `OMEMOD_BENCH_SCALE=F` (multiply the
//! iteration counts), `OMEMOD_BENCH_ONLY=floor,core,rpc,python,memory` (sections),
//! `OMEMOD_BENCH_NS=twomemo|oldmemo`, `OMEMOD_BENCH_DURABILITY=normal|full` (narrow the RPC part),
//! `OMEMOD_BENCH_OPS=decrypt,decrypt_dh,encrypt,throughput,fanout100,session_active,session_passive,redelivery_ab,sealing_ab`
//! (operations of the RPC part; the same list may be given as arguments:
//! `cargo bench -p omemod --bench omemod -- decrypt encrypt throughput`),
//! `OMEMOD_BENCH_SESSIONS=N` (sessions of the memory test, default 10000), `OMEMOD_BENCH_BIN`
//! (the omemod binary), `OMEMOD_BENCH_BASELINE_BIN` and `OMEMOD_BENCH_SEALING_BASELINE_BIN` (the
//! A/B baselines without redelivery and without sealing), `OMEMOD_PYTHON` (python of the venv),
//! `OMEMOD_BENCH_MD` (Markdown output).
//! No timed assertions: this is a benchmark; it fails only if an operation itself fails.
//!
//! Modules, by what they measure:
//! - [`floor`]: X25519, Ed25519, SQLite commits (and a decrypt's commit part by part);
//! - [`protocol`]: protocol-core in-process;
//! - [`rpc`]: omemod through its socket (latencies, throughput, issue 8's redelivery A/B);
//! - [`python`]: python-omemo in-process;
//! - [`memory`]: memory, start-up and database size with many sessions;
//! - [`targets`]: every RPC figure against this run's floor, and the targets of issues 5 and 13;
//! - [`report`]: the console summary and the Markdown report (docs/performance.md).
//!
//! And what they use: [`config`] (the `OMEMOD_BENCH_*` knobs), [`stats`] (figures, the
//! report's store), [`peer`] (in-process OMEMO devices, the daemon's peers), [`daemon`] (the
//! `omemod` process, and the bench's calls on it through omemod-client).

mod config;
mod daemon;
mod floor;
mod memory;
mod peer;
mod protocol;
mod python;
mod report;
mod rpc;
mod scale;
mod stats;
mod targets;

use std::time::Instant;

use protocol_core::Version;

use config::Cfg;
use stats::Report;

const BODY: &str = "Hello, this is a benchmark message of moderate length. \u{1F600}";
const ME: &str = "me@bench.example";
const NS_ALL: [Version; 2] = [Version::Twomemo, Version::Oldmemo];
const DURABILITIES: [&str; 2] = ["normal", "full"];

fn ns_tag(v: Version) -> &'static str {
    match v {
        Version::Twomemo => "twomemo",
        Version::Oldmemo => "oldmemo",
    }
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: do nothing there.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "omemod benchmark: run with `cargo bench -p omemod --bench omemod` or scripts/bench"
        );
        return;
    }
    let cfg = Cfg::from_env();
    let mut r = Report::default();
    println!(
        "omemod benchmark{}",
        if cfg.quick {
            " (QUICK smoke run: numbers are rough)"
        } else {
            ""
        }
    );
    for (k, v) in report::machine() {
        println!("  {k:<8} {v}");
    }
    println!("  binary   {}", cfg.bin.display());
    let started = Instant::now();
    // The scale benchmark (issue 25) runs alone, and only when asked for by name.
    if cfg
        .only
        .as_ref()
        .is_some_and(|o| o.iter().any(|x| x == "scale"))
    {
        scale::bench_scale(&cfg);
        println!("total time {:.0} s", started.elapsed().as_secs_f64());
        return;
    }
    if cfg.section("floor") {
        floor::bench_floor(&cfg, &mut r);
    }
    if cfg.section("core") {
        protocol::bench_core(&cfg, &mut r);
    }
    if cfg.section("rpc") {
        for &d in &cfg.durabilities {
            rpc::bench_rpc(&cfg, &mut r, d);
            if cfg.op("redelivery_ab") {
                rpc::bench_redelivery_ab(&cfg, &mut r, d);
            }
            if cfg.op("sealing_ab") {
                rpc::bench_sealing_ab(&cfg, &mut r, d);
            }
        }
    }
    if cfg.section("python") {
        python::bench_python(&cfg, &mut r);
    }
    if cfg.section("memory") {
        memory::bench_memory(&cfg, &mut r);
    }
    report::print(&r, &cfg);
    println!("total time {:.0} s", started.elapsed().as_secs_f64());
}
