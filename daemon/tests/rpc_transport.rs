//! The JSON-RPC transport, tested against the real `omemod serve` binary.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{kind, rpc_error, Daemon, Wire, BIN};
use serde_json::{json, Value};

#[test]
fn malformed_json_then_the_connection_still_serves() {
    let d = Daemon::start(&[]);
    let mut c = d.wire();
    c.send_line(r#"{"jsonrpc": "2.0", "id": 1, "method": "#);
    let v = c.recv();
    assert_eq!(v["error"]["code"], -32700);
    assert_eq!(v["id"], Value::Null);
    assert_eq!(kind(&v), "parse_error");
    c.send_raw(b"\xff\xfe\n");
    assert_eq!(c.recv()["error"]["code"], -32700);
    let v = c.next_answer("status", json!({}));
    assert!(v["result"]["version"].is_string(), "{v}");
}

#[test]
fn unknown_method_and_wrong_params() {
    let d = Daemon::start(&[]);
    let c = d.client();
    let e = rpc_error(c.call("no.such_method", json!({})));
    assert_eq!(e.code, -32601);
    assert_eq!(e.kind, "method_not_found");
    let e = rpc_error(c.call("debug.sleep", json!({"ms": "soon"})));
    assert_eq!(e.code, -32602);
    assert_eq!(e.kind, "invalid_params");
    let e = rpc_error(c.call("debug.sleep", json!({})));
    assert_eq!(e.kind, "invalid_params");
    let e = rpc_error(c.call("status", json!({"unexpected": 1})));
    assert_eq!(e.kind, "invalid_params");
    let mut c = d.wire();
    // Positional params are refused: params are always a by-name object.
    c.send_line(r#"{"jsonrpc":"2.0","id":7,"method":"debug.sleep","params":[1]}"#);
    let v = c.recv();
    assert_eq!((v["id"].clone(), kind(&v)), (json!(7), "invalid_params"));
    // Not a JSON-RPC request.
    c.send_line(r#"{"id":8,"method":"status"}"#);
    let v = c.recv();
    assert_eq!(
        (v["id"].clone(), v["error"]["code"].clone()),
        (json!(8), json!(-32600))
    );
    c.send_line("42");
    assert_eq!(c.recv()["error"]["code"], -32600);
}

#[test]
fn oversized_line_is_refused_and_the_connection_goes_on() {
    let d = Daemon::start(&["--max-request-bytes", "4096"]);
    let mut c = d.wire();
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"status","params":{{"pad":"{}"}}}}"#,
        "x".repeat(100_000)
    );
    c.send_line(&big);
    let v = c.recv();
    assert_eq!(v["error"]["code"], -32001);
    assert_eq!(kind(&v), "request_too_large");
    assert_eq!(v["id"], Value::Null);
    let v = c.next_answer("status", json!({}));
    assert!(v["result"].is_object(), "{v}");
}

#[test]
fn batches() {
    let d = Daemon::start(&[]);
    let mut c = d.wire();
    c.send_line(
        r#"[{"jsonrpc":"2.0","id":1,"method":"status"},
            {"jsonrpc":"2.0","method":"status"},
            42,
            {"jsonrpc":"2.0","id":"x","method":"nope"},
            {"jsonrpc":"2.0","id":3,"method":"debug.sleep","params":{"ms":1}}]"#
            .replace('\n', " ")
            .as_str(),
    );
    let v = c.recv();
    let items = v.as_array().expect("batch answer is an array");
    assert_eq!(items.len(), 4, "{v}");
    let by_id = |id: Value| {
        items
            .iter()
            .find(|i| i["id"] == id)
            .cloned()
            .unwrap_or_default()
    };
    assert!(by_id(json!(1))["result"]["version"].is_string());
    assert_eq!(by_id(json!("x"))["error"]["code"], -32601);
    assert_eq!(by_id(json!(3))["result"]["slept_ms"], 1);
    let invalid: Vec<_> = items.iter().filter(|i| i["id"].is_null()).collect();
    assert_eq!(invalid.len(), 1);
    assert_eq!(invalid[0]["error"]["code"], -32600);

    c.send_line("[]");
    let v = c.recv();
    assert!(v.is_object(), "empty batch gets one error object: {v}");
    assert_eq!(v["error"]["code"], -32600);

    // A batch of notifications gets no answer at all.
    c.send_line(r#"[{"jsonrpc":"2.0","method":"status"},{"jsonrpc":"2.0","method":"debug.sleep","params":{"ms":1}}]"#);
    c.expect_silence(Duration::from_millis(300));
    assert!(c.next_answer("status", json!({}))["result"].is_object());
}

#[test]
fn notifications_are_not_answered() {
    let d = Daemon::start(&[]);
    let mut c = d.wire();
    c.send_line(r#"{"jsonrpc":"2.0","method":"status"}"#);
    c.send_line(r#"{"jsonrpc":"2.0","method":"no.such_method"}"#);
    c.expect_silence(Duration::from_millis(300));
    // The next line is the answer to this request, not to the notifications.
    let v = c.next_answer("status", json!({}));
    assert!(v["result"].is_object());
}

#[test]
fn answers_come_out_of_order() {
    let d = Daemon::start(&[]);
    let mut c = d.wire();
    let slow = c.request("debug.sleep", json!({"ms": 300}));
    let fast = c.request("status", json!({}));
    let first = c.recv();
    let second = c.recv();
    assert_eq!(first["id"], json!(fast), "status must be answered first");
    assert_eq!(second["id"], json!(slow));
    assert_eq!(second["result"]["slept_ms"], 300);
}

#[test]
fn many_concurrent_connections() {
    let d = Daemon::start(&[]);
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let socket = d.socket.clone();
            std::thread::spawn(move || {
                let mut c = Wire::connect(&socket);
                // Pipeline all 50, then read all 50 (in any order).
                // id -> the `slept_ms` expected (None for `status`).
                let mut ids = std::collections::HashMap::new();
                for i in 0..50u64 {
                    let id = t * 1000 + i;
                    let sleep = (i % 5 == 0).then_some(i);
                    let v = match sleep {
                        Some(ms) => json!({"jsonrpc":"2.0","id":id,"method":"debug.sleep","params":{"ms":ms}}),
                        None => json!({"jsonrpc":"2.0","id":id,"method":"status"}),
                    };
                    c.send(&v);
                    ids.insert(id, sleep);
                }
                for _ in 0..50 {
                    let v = c.recv();
                    let id = v["id"].as_u64().expect("numeric id");
                    let expected = ids.remove(&id).unwrap_or_else(|| panic!("unexpected or repeated id {id}"));
                    match expected {
                        Some(ms) => assert_eq!(v["result"]["slept_ms"], ms, "{v}"),
                        None => assert!(v["result"]["clients"].as_u64().unwrap_or(0) >= 1, "{v}"),
                    }
                }
                assert!(ids.is_empty());
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
}

// `in_answer: true`: announced to every subscriber (a duty without an answer would go to one).
fn heartbeat() -> Value {
    json!({"type": "send_heartbeat", "account": "me@example.org", "cause": "test",
           "in_answer": true, "jid": "you@example.org",
           "namespace": "urn:xmpp:omemo:2", "device_id": 1234})
}

fn bundle_changed() -> Value {
    json!({"type": "publish_bundle", "account": "me@example.org", "cause": "test",
           "in_answer": true, "namespace": "eu.siacs.conversations.axolotl", "device_id": 5})
}

#[test]
fn events_reach_only_subscribers() {
    let d = Daemon::start(&[]);
    let mut all = d.wire();
    let mut hb_only = d.wire();
    let mut none = d.wire();

    let v = all.next_answer("subscribe", json!({}));
    let sub_all = v["result"]["subscription"]
        .as_u64()
        .expect("subscription id");
    let v = hb_only.next_answer("subscribe", json!({"types": ["send_heartbeat"]}));
    let sub_hb = v["result"]["subscription"]
        .as_u64()
        .expect("subscription id");
    let v = none.next_answer("subscribe", json!({"types": ["no_such_type"]}));
    assert_eq!(kind(&v), "invalid_params");

    let v = none.next_answer("debug.emit", json!({"event": bundle_changed()}));
    assert_eq!(v["result"]["receivers"], 2, "{v}");
    let ev = all.recv();
    assert_eq!(
        ev,
        json!({"jsonrpc":"2.0","method":"event","params":{"subscription":sub_all,"event":bundle_changed()}})
    );

    none.next_answer("debug.emit", json!({"event": heartbeat()}));
    assert_eq!(all.recv()["params"]["event"], heartbeat());
    let ev = hb_only.recv();
    assert_eq!(
        ev["params"],
        json!({"subscription": sub_hb, "event": heartbeat()})
    );

    // Unsubscribe: no more events; a second unsubscribe is an error.
    let v = all.next_answer("unsubscribe", json!({"subscription": sub_all}));
    assert_eq!(v["result"]["unsubscribed"], true);
    let v = all.next_answer("unsubscribe", json!({"subscription": sub_all}));
    assert_eq!(kind(&v), "unknown_subscription");
    // A subscription id of another connection is unknown here.
    let v = none.next_answer("unsubscribe", json!({"subscription": sub_hb}));
    assert_eq!(kind(&v), "unknown_subscription");

    none.next_answer("debug.emit", json!({"event": heartbeat()}));
    assert_eq!(hb_only.recv()["params"]["event"], heartbeat());
    all.expect_silence(Duration::from_millis(300));
    none.expect_silence(Duration::from_millis(100));

    // A subscription ends with its connection.
    drop(hb_only);
    std::thread::sleep(Duration::from_millis(200));
    let v = none.next_answer("debug.emit", json!({"event": heartbeat()}));
    assert_eq!(v["result"]["receivers"], 0, "{v}");
}

#[test]
fn a_lagging_subscriber_gets_events_lost() {
    let d = Daemon::start(&[]);
    let mut slow = d.wire();
    let sub = slow.next_answer("subscribe", json!({}))["result"]["subscription"].clone();
    let fast = d.client();
    // 5000 events while `slow` reads nothing: more than the socket, the queue and the bus hold.
    let emits: Vec<(&str, Value)> = (0..250)
        .map(|_| ("debug.emit", json!({"event": heartbeat()})))
        .collect();
    for _ in 0..20 {
        let answers = fast.batch(&emits).expect("batch");
        assert_eq!(answers.len(), 250);
    }
    // The daemon kept serving others meanwhile.
    assert!(fast.call("status", json!({})).expect("status").is_object());
    let mut lost = 0;
    let mut got = 0;
    slow.writer
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    while let Some(v) = slow.recv_opt() {
        assert_eq!(v["params"]["subscription"], sub);
        match v["params"]["event"]["type"].as_str() {
            Some("events_lost") => lost += v["params"]["event"]["missed"].as_u64().expect("missed"),
            Some("send_heartbeat") => got += 1,
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert!(lost > 0, "expected events_lost (got {got})");
    assert_eq!(got + lost, 5000);
}

#[test]
fn socket_and_directory_are_private() {
    let d = Daemon::start(&[]);
    let dir = d.socket.parent().expect("dir");
    let dir_mode = std::fs::metadata(dir).expect("dir").permissions().mode() & 0o777;
    let sock_mode = std::fs::metadata(&d.socket)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    assert_eq!(sock_mode, 0o600);
}

#[test]
fn a_second_daemon_refuses_a_live_socket() {
    let d = Daemon::start(&[]);
    let out = Command::new(BIN)
        .args(["serve", "--socket"])
        .arg(&d.socket)
        .arg("--db")
        .arg(d.dir.0.join("second.db"))
        .env_remove("LISTEN_FDS")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already listening"));
    // The first daemon still serves.
    assert!(d
        .client()
        .call("status", json!({}))
        .expect("status")
        .is_object());
}

#[test]
fn sigterm_exits_cleanly_and_removes_the_socket() {
    let mut d = Daemon::start(&[]);
    let mut c = d.wire();
    // An in-flight request is allowed to finish.
    let id = c.request("debug.sleep", json!({"ms": 500}));
    std::thread::sleep(Duration::from_millis(100));
    let status = d.terminate();
    assert!(status.success(), "exit status {status}: {}", d.log());
    assert!(!d.socket.exists(), "socket file left behind");
    let v = c.recv();
    assert_eq!(v["id"], json!(id));
    assert_eq!(v["result"]["slept_ms"], 500);
    assert!(c.recv_opt().is_none(), "connection closed after shutdown");
}

#[test]
fn stale_socket_is_replaced() {
    let mut d = Daemon::start(&[]);
    let socket = d.socket.clone();
    // Kill hard: the socket file stays behind.
    d.child.kill().expect("kill");
    d.child.wait().expect("wait");
    assert!(socket.exists());
    // Its own database next to the socket, not the user's default one.
    let db2 = socket.with_file_name("second.db");
    let mut d2 = Command::new(BIN)
        .args(["serve", "--enable-debug-methods", "--socket"])
        .arg(&socket)
        .arg("--db")
        .arg(&db2)
        .env_remove("LISTEN_FDS")
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut ok = false;
    for _ in 0..500 {
        if let Ok(s) = std::os::unix::net::UnixStream::connect(&socket) {
            drop(s);
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = d2.kill();
    let _ = d2.wait();
    assert!(ok, "second daemon did not take over the stale socket");
}

#[test]
fn cli_call_status_and_errors() {
    let d = Daemon::start(&[]);
    let out = Command::new(BIN)
        .arg("--socket")
        .arg(&d.socket)
        .args(["call", "status"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON result");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["socket"], json!(d.socket));

    let out = Command::new(BIN)
        .arg("--socket")
        .arg(&d.socket)
        .arg("status")
        .output()
        .expect("run");
    assert!(out.status.success());

    // Params from stdin.
    let mut child = Command::new(BIN)
        .arg("--socket")
        .arg(&d.socket)
        .args(["call", "debug.sleep", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(br#"{"ms": 3}"#)
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["slept_ms"], 3);

    let out = Command::new(BIN)
        .arg("--socket")
        .arg(&d.socket)
        .args(["call", "nope"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("method_not_found"));
}

#[test]
fn openrpc_lists_every_method() {
    let out = Command::new(BIN).arg("openrpc").output().expect("run");
    assert!(out.status.success());
    let doc: Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert!(doc["openrpc"].as_str().is_some_and(|v| v.starts_with("1.")));
    let names: Vec<&str> = doc["methods"]
        .as_array()
        .expect("methods")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    for m in ["status", "rpc.discover", "subscribe", "unsubscribe"] {
        assert!(names.contains(&m), "{m} missing from {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.starts_with("debug.")),
        "debug methods must not be public"
    );
    assert!(doc["components"]["schemas"]["Event"].is_object());

    // rpc.discover over the socket returns the same methods (plus the debug ones here).
    let d = Daemon::start(&[]);
    let v = d
        .client()
        .call("rpc.discover", json!({}))
        .expect("rpc.discover");
    let served: Vec<&str> = v["methods"]
        .as_array()
        .expect("methods")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    for m in &names {
        assert!(served.contains(m));
    }
    assert!(served.contains(&"debug.sleep"));
}

#[test]
fn another_uid_is_refused() {
    if rustix::process::getuid().as_raw() != 0 {
        eprintln!("SKIPPED another_uid_is_refused: needs root to run a client as uid 65534");
        return;
    }
    let python = "/usr/bin/python3";
    if !std::path::Path::new(python).exists() {
        eprintln!("SKIPPED another_uid_is_refused: {python} not found");
        return;
    }
    let d = Daemon::start(&[]);
    // Open the socket to everyone, so that only the daemon's uid check stands in the way.
    for dir in [d.dir.0.as_path(), d.socket.parent().expect("dir")] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    }
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666))
        .expect("chmod socket");
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
try:
    s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"status"}\n')
except OSError:
    pass  # the daemon may already have refused us and closed
data = b''
while True:
    try:
        chunk = s.recv(65536)
    except ConnectionResetError:
        break
    if not chunk:
        break
    data += chunk
sys.stdout.write(data.decode())
"#;
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(&d.socket)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run python as uid 65534");
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line, then closed: {text:?}");
    let v: Value = serde_json::from_str(lines[0]).expect("JSON");
    assert_eq!(v["error"]["code"], -32003);
    assert_eq!(kind(&v), "unauthorized");
    assert_eq!(v["id"], Value::Null);
    // The socket file belongs to the daemon's uid.
    assert_eq!(std::fs::metadata(&d.socket).expect("socket").uid(), 0);
    // Our own uid is still served.
    assert!(d
        .client()
        .call("status", json!({}))
        .expect("status")
        .is_object());
}
