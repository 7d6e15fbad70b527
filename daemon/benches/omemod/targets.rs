//! Ratios, floors and targets: every RPC figure against this run's floor, and the PASS / MISS
//! of issue 5's and issue 13's targets.

use crate::stats::{us, Fig, Report};
use crate::{ns_tag, DURABILITIES, NS_ALL};

pub const OPS: [(&str, &str); 6] = [
    ("decrypt", "decrypt, established session"),
    ("decrypt_dh", "decrypt with a DH step"),
    ("encrypt", "encrypt, 1 device"),
    ("fanout100", "encrypt to 100 devices"),
    ("session_active", "new session from a bundle (active)"),
    (
        "session_passive",
        "new session from a key exchange (passive)",
    ),
];

/// X25519-class operations of an operation (key generation counted as one): the crypto floor.
pub fn x25519_count(op: &str) -> f64 {
    match op {
        // receiving chain DH + new ratchet key + sending chain DH
        "decrypt_dh" => 3.0,
        // ephemeral key + 4 X3DH DH + ratchet key + its DH
        "session_active" => 7.0,
        // 4 X3DH DH + first ratchet step (DH, new key, DH) + replacement prekey
        "session_passive" => 8.0,
        _ => 0.0,
    }
}

/// python-omemo comparator: the persisted variant matching the durability when there is one.
pub fn py_key(op: &str, dur: &str) -> &'static str {
    match (op, dur) {
        ("decrypt", "normal") => "decrypt_persist_nosync",
        ("decrypt", _) => "decrypt_persist",
        ("decrypt_dh", _) => "decrypt_dh",
        ("encrypt", _) => "encrypt",
        ("fanout100", _) => "fanout100",
        ("session_active", _) => "session_active",
        ("session_passive", _) => "session_passive",
        _ => "?",
    }
}

pub fn floor_sum(r: &Report, op: &str, dur: &str) -> Option<f64> {
    let n = x25519_count(op);
    // X25519 is measured by the floor section only; operations without DH steps don't need it.
    let dh = if n > 0.0 {
        n * r.p50("floor.x25519")?
    } else {
        0.0
    };
    Some(rpc_floor(r, dur)? + dh)
}

/// This run's floor of one RPC round trip with a commit: empty RPC + one SQLite commit.
pub fn rpc_floor(r: &Report, dur: &str) -> Option<f64> {
    Some(
        r.p50(&format!("floor.rpc_status.{dur}"))?
            + r.p50(&format!("floor.sqlite_commit.{dur}"))?,
    )
}

/// The floor of an RPC figure `rpc.<durability>.<ns>.<op>` (see [`floor_sum`]); figures of
/// decrypts under load use the decrypt floor.
pub fn fig_floor(r: &Report, key: &str) -> Option<f64> {
    let mut parts = key.split('.');
    let (Some("rpc"), Some(d), Some(_), Some(op)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let op = if op == "decrypt_under_8" {
        "decrypt"
    } else {
        op
    };
    floor_sum(r, op, d)
}

/// Every RPC latency figure with its floor and both percentiles as ratios to it.
pub fn floor_rows(r: &Report) -> Vec<(String, Fig, f64)> {
    r.figs
        .iter()
        .filter(|(k, _)| k.starts_with("rpc."))
        .filter_map(|(k, f)| Some((k.clone(), *f, fig_floor(r, k)?)))
        .collect()
}

pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    }
}

pub fn opt_us(x: Option<f64>) -> String {
    x.map(us).unwrap_or_else(|| "–".into())
}

pub struct Target {
    pub what: String,
    pub value: String,
    pub goal: String,
    pub pass: Option<bool>,
}

/// Issue 5's targets: latencies, speed against python-omemo, throughput, redelivery's and
/// sealing's cost, memory and start-up.
pub fn targets(r: &Report) -> Vec<Target> {
    let mut out = Vec::new();
    latency_targets(r, &mut out);
    speed_targets(r, &mut out);
    for ns in NS_ALL {
        let t = ns_tag(ns);
        for (d, goal) in [("normal", 15_000.0), ("full", 5_000.0)] {
            let v = r.rates.get(&format!("rpc.{d}.{t}.throughput_8")).copied();
            out.push(Target {
                what: format!("8 clients decrypting, {d}, {t}"),
                value: v.map(|v| format!("{v:.0}/s")).unwrap_or_else(|| "–".into()),
                goal: format!("≥ {goal:.0}/s"),
                pass: v.map(|v| v >= goal),
            });
        }
    }
    for ns in NS_ALL {
        let t = ns_tag(ns);
        for d in DURABILITIES {
            at_most(
                &mut out,
                format!("issue 8: decrypt p50 with ÷ without redelivery, {d}, {t}"),
                r.p50(&format!("ab.{d}.{t}.decrypt_with_redelivery")),
                r.p50(&format!("ab.{d}.{t}.decrypt_without_redelivery")),
                1.10,
            );
            for op in ["decrypt", "encrypt"] {
                at_most(
                    &mut out,
                    format!("issue 24: {op} p50 sealed ÷ unsealed, {d}, {t}"),
                    r.p50(&format!("ab.{d}.{t}.{op}_sealed")),
                    r.p50(&format!("ab.{d}.{t}.{op}_unsealed")),
                    1.05,
                );
            }
        }
    }
    for d in DURABILITIES {
        let (on, off) = (
            r.p50(&format!("ab.{d}.startup_sealed")),
            r.p50(&format!("ab.{d}.startup_unsealed")),
        );
        let diff = on.zip(off).map(|(a, b)| a - b);
        out.push(Target {
            what: format!("issue 24: start-up p50 sealed − unsealed, {d}"),
            value: diff
                .map(|x| format!("{:+.1} ms", x / 1000.0))
                .unwrap_or_else(|| "–".into()),
            goal: "≤ 10 ms".into(),
            pass: diff.map(|x| x <= 10_000.0),
        });
    }
    let n = r
        .values
        .get("mem.sessions")
        .map(|s| format!("{s:.0}"))
        .unwrap_or_else(|| "–".into());
    memory_targets(
        r,
        &mut out,
        (
            format!("RSS with {n} sessions loaded (max of hot / after restart)"),
            64.0,
        ),
        (format!("start-up with {n} sessions"), "< 1 s", 1e6),
    );
    out
}

fn latency_targets(r: &Report, out: &mut Vec<Target>) {
    let mut lat = |what: String, v: Option<f64>, limit_us: f64| {
        out.push(Target {
            what,
            value: opt_us(v),
            goal: format!("≤ {}", us(limit_us)),
            pass: v.map(|v| v <= limit_us),
        });
    };
    for ns in NS_ALL {
        let t = ns_tag(ns);
        lat(
            format!("decrypt via RPC p50, normal, {t}"),
            r.p50(&format!("rpc.normal.{t}.decrypt")),
            100.0,
        );
        lat(
            format!("decrypt via RPC p50, full, {t}"),
            r.p50(&format!("rpc.full.{t}.decrypt")),
            400.0,
        );
        lat(
            format!("fan-out to 100 devices p50, normal, {t}"),
            r.p50(&format!("rpc.normal.{t}.fanout100")),
            1000.0,
        );
        for d in DURABILITIES {
            lat(
                format!("session from a bundle, committed, p50, {d}, {t}"),
                r.p50(&format!("rpc.{d}.{t}.session_active")),
                1000.0,
            );
        }
    }
}

fn speed_targets(r: &Report, out: &mut Vec<Target>) {
    let mut speed = |what: String, ours: Option<f64>, theirs: Option<f64>, factor: f64| {
        let x = match (ours, theirs) {
            (Some(o), Some(p)) if o > 0.0 => Some(p / o),
            _ => None,
        };
        out.push(Target {
            what,
            value: x.map(|x| format!("{x:.1}×")).unwrap_or_else(|| "–".into()),
            goal: format!("≥ {factor}× faster"),
            pass: x.map(|x| x >= factor),
        });
    };
    for ns in NS_ALL {
        let t = ns_tag(ns);
        for d in DURABILITIES {
            let pk = py_key("decrypt", d);
            speed(
                format!("decrypt, {d}, {t} vs python-omemo {pk}"),
                r.p50(&format!("rpc.{d}.{t}.decrypt")),
                r.p50(&format!("py.{t}.{pk}")),
                3.0,
            );
        }
        speed(
            format!("fan-out 100, normal, {t} vs python-omemo"),
            r.p50(&format!("rpc.normal.{t}.fanout100")),
            r.p50(&format!("py.{t}.fanout100")),
            10.0,
        );
        for d in DURABILITIES {
            speed(
                format!("session from a bundle, {d}, {t} vs python-omemo"),
                r.p50(&format!("rpc.{d}.{t}.session_active")),
                r.p50(&format!("py.{t}.session_active")),
                10.0,
            );
        }
    }
}

/// RSS with every session loaded (the larger of hot and after restart) below `rss.1` MiB, and
/// start-up below `startup.2` µs; judged only on a full-size run (10,000 sessions).
fn memory_targets(
    r: &Report,
    out: &mut Vec<Target>,
    rss: (String, f64),
    startup: (String, &str, f64),
) {
    let full_size = r.values.get("mem.sessions").is_some_and(|s| *s >= 10_000.0);
    let loaded = [
        "mem.rss_hot_mib (all sessions cached)",
        "mem.rss_warm_mib (after restart, all loaded)",
    ]
    .iter()
    .filter_map(|k| r.values.get(*k).copied())
    .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    let (what, limit) = rss;
    out.push(Target {
        what,
        value: loaded
            .map(|v| format!("{v:.1} MiB"))
            .unwrap_or_else(|| "–".into()),
        goal: format!("< {limit} MiB"),
        pass: loaded.filter(|_| full_size).map(|v| v < limit),
    });
    let (what, goal, limit_us) = startup;
    let st = r.p50("mem.startup");
    out.push(Target {
        what,
        value: opt_us(st),
        goal: goal.into(),
        pass: st.filter(|_| full_size).map(|v| v < limit_us),
    });
}

/// `a / b` must stay at most `limit`.
fn at_most(out: &mut Vec<Target>, what: String, a: Option<f64>, b: Option<f64>, limit: f64) {
    ratio_target(out, what, (a, b), ("≤", limit), |x| x <= limit);
}

/// `a / b` must reach at least `limit`.
fn at_least(out: &mut Vec<Target>, what: String, a: Option<f64>, b: Option<f64>, limit: f64) {
    ratio_target(out, what, (a, b), ("≥", limit), |x| x >= limit);
}

/// The target `a / b` `sign` `limit`, met when `pass` holds for the ratio.
fn ratio_target(
    out: &mut Vec<Target>,
    what: String,
    (a, b): (Option<f64>, Option<f64>),
    (sign, limit): (&str, f64),
    pass: impl Fn(f64) -> bool,
) {
    let x = match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    out.push(Target {
        what,
        value: x.map(|x| format!("{x:.2}×")).unwrap_or_else(|| "–".into()),
        goal: format!("{sign} {limit}×"),
        pass: x.map(pass),
    });
}

/// Issue 13's targets: ratios within this run, so that they hold on any machine.
pub fn targets_issue13(r: &Report) -> Vec<Target> {
    let mut out = Vec::new();
    for ns in NS_ALL {
        let t = ns_tag(ns);
        for (d, limit) in [("normal", 1.5), ("full", 1.15)] {
            for op in ["decrypt", "encrypt"] {
                at_most(
                    &mut out,
                    format!("{op} p50 ÷ floor, {d}, {t}"),
                    r.p50(&format!("rpc.{d}.{t}.{op}")),
                    floor_sum(r, op, d),
                    limit,
                );
            }
        }
    }
    for ns in NS_ALL {
        let t = ns_tag(ns);
        at_most(
            &mut out,
            format!("fan-out 100 p50 ÷ protocol-core fan-out, normal, {t}"),
            r.p50(&format!("rpc.normal.{t}.fanout100")),
            r.p50(&format!("core.{t}.fanout100")),
            2.5,
        );
        at_least(
            &mut out,
            format!("fan-out 100, normal, {t}: python-omemo ÷ omemod"),
            r.p50(&format!("py.{t}.fanout100")),
            r.p50(&format!("rpc.normal.{t}.fanout100")),
            50.0,
        );
        for (d, limit) in [("normal", 12.0), ("full", 10.0)] {
            at_least(
                &mut out,
                format!("session from a bundle, committed, {d}, {t}: python-omemo ÷ omemod"),
                r.p50(&format!("py.{t}.session_active")),
                r.p50(&format!("rpc.{d}.{t}.session_active")),
                limit,
            );
        }
    }
    for ns in NS_ALL {
        let t = ns_tag(ns);
        // Within one run "no regression under NORMAL" can only mean: 8 clients are not slower
        // than 1; the comparison with earlier builds is the report's before/after.
        for (d, limit) in [("full", 4.0), ("normal", 1.0)] {
            at_least(
                &mut out,
                format!("8 clients ÷ 1 client throughput, {d}, {t}"),
                r.rates.get(&format!("rpc.{d}.{t}.throughput_8")).copied(),
                r.rates.get(&format!("rpc.{d}.{t}.throughput_1")).copied(),
                limit,
            );
        }
    }
    memory_targets(
        r,
        &mut out,
        (
            "RSS with 10,000 sessions loaded (max of hot / after restart)".into(),
            32.0,
        ),
        (
            "start-up with 10,000 sessions".into(),
            "< 100 ms",
            100_000.0,
        ),
    );
    out
}

pub fn pass_str(p: Option<bool>) -> &'static str {
    match p {
        Some(true) => "PASS",
        Some(false) => "MISS",
        None => "n/a",
    }
}
