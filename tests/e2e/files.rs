//! XEP-0454 files through the socket: every way a file, a link or a call can be wrong gets its
//! typed error and no plaintext; the bounds (size, transfers per connection and in all, idle
//! transfers, chunk size) hold; `omemod file encrypt|decrypt` leaves nothing behind on failure.

use super::support::*;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// omemod encrypts `plain` through the `file.encrypt.*` calls: (fragment, file to upload).
fn encrypt(c: &mut Client, plain: &[u8]) -> (String, Vec<u8>) {
    let begin = c.ok("file.encrypt.begin", json!({"size": plain.len()}));
    let (t, chunk) = (begin["transfer"].clone(), chunk_size(&begin));
    let mut file = Vec::new();
    for (i, piece) in plain.chunks(chunk).enumerate() {
        let r = c.ok(
            "file.encrypt.chunk",
            json!({"transfer": t, "offset": i * chunk, "data": B64.encode(piece)}),
        );
        assert_eq!(r["offset"], (i * chunk + piece.len()) as u64, "{r}");
        file.extend(B64.decode(r["data"].as_str().unwrap()).unwrap());
    }
    let tag = c.ok("file.encrypt.finish", json!({ "transfer": t }));
    file.extend(B64.decode(tag["tag"].as_str().unwrap()).unwrap());
    assert_eq!(begin["upload_size"], file.len() as u64);
    (begin["fragment"].as_str().unwrap().to_owned(), file)
}

fn chunk_size(begin: &Value) -> usize {
    begin["chunk_size"].as_u64().expect("chunk_size") as usize
}

fn chunk(t: &Value, offset: usize, data: &[u8]) -> Value {
    json!({"transfer": t, "offset": offset, "data": B64.encode(data)})
}

/// Begins decrypting `file` and sends it to `file.decrypt.check`; the last answer.
fn check(c: &mut Client, key: Value, file: &[u8]) -> (Value, Result<Value, Value>) {
    let mut p = key;
    p["size"] = json!(file.len());
    let begin = c.ok("file.decrypt.begin", p);
    let (t, size) = (begin["transfer"].clone(), chunk_size(&begin));
    let mut last = Err(json!("no chunk"));
    for (i, piece) in file.chunks(size).enumerate() {
        last = c.call("file.decrypt.check", chunk(&t, i * size, piece));
        if last.is_err() {
            break;
        }
    }
    (t, last)
}

#[test]
fn a_file_that_does_not_authenticate_gives_no_plaintext() {
    let d = Daemon::start_with(&["--file-chunk-bytes", "4096"]);
    let mut c = d.client();
    let plain: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
    let (fragment, file) = encrypt(&mut c, &plain);
    let other = format!("{}{}", &fragment[..24], "ab".repeat(32));
    let mut bad_tag = file.clone();
    *bad_tag.last_mut().unwrap() ^= 1;
    let mut bad_byte = file.clone();
    bad_byte[5000] ^= 1;
    let cut = &file[..file.len() - 1];
    for (what, key, f) in [
        ("a wrong key", json!({ "fragment": other }), &file[..]),
        ("a bad tag", json!({ "fragment": fragment }), &bad_tag[..]),
        (
            "an altered byte",
            json!({ "fragment": fragment }),
            &bad_byte[..],
        ),
        ("a file cut short", json!({ "fragment": fragment }), cut),
    ] {
        let (t, last) = check(&mut c, key, f);
        let e = last.expect_err(what);
        assert_eq!(e["data"]["kind"], "authentication_failed", "{what}: {e}");
        assert_eq!(e["data"]["cause"], "peer_misbehaved", "{what}: {e}");
        // The transfer is over: there is nothing to read.
        c.err(
            "file.decrypt.read",
            chunk(&t, 0, &f[..4096]),
            "unknown_transfer",
        );
    }
    // Shorter than a tag.
    for size in [0, 15] {
        let e = c.err(
            "file.decrypt.begin",
            json!({"fragment": fragment, "size": size}),
            "file_truncated",
        );
        assert!(!e.to_string().contains(&fragment), "{e}");
    }
    // The right file decrypts, and only after the check pass, and only the chunks checked.
    let begin = c.ok(
        "file.decrypt.begin",
        json!({"fragment": fragment, "size": file.len()}),
    );
    assert_eq!(begin["plaintext_size"], plain.len() as u64);
    let t = begin["transfer"].clone();
    let e = c.err(
        "file.decrypt.read",
        chunk(&t, 0, &file[..4096]),
        "transfer_out_of_order",
    );
    assert_eq!(e["data"]["expected_method"], "file.decrypt.check", "{e}");
    assert_eq!(e["data"]["expected_offset"], 0, "{e}");
    let mut verified = Vec::new();
    for (i, piece) in file.chunks(4096).enumerate() {
        verified.push(c.ok("file.decrypt.check", chunk(&t, i * 4096, piece))["verified"].clone());
    }
    assert_eq!(verified, [json!(false), json!(false), json!(true)]);
    let first = c.ok("file.decrypt.read", chunk(&t, 0, &file[..4096]));
    assert_eq!(
        B64.decode(first["data"].as_str().unwrap()).unwrap(),
        plain[..4096]
    );
    assert_eq!(first["done"], false);
    let mut changed = file[4096..8192].to_vec();
    changed[0] ^= 1;
    let e = c.err(
        "file.decrypt.read",
        chunk(&t, 4096, &changed),
        "file_changed",
    );
    assert_eq!(e["data"]["offset"], 4096, "{e}");
    c.err(
        "file.decrypt.read",
        chunk(&t, 4096, &file[4096..8192]),
        "unknown_transfer",
    );
}

#[test]
fn malformed_links_and_calls_get_typed_errors() {
    let d = Daemon::start();
    let mut c = d.client();
    let fragment = format!("{}{}", "0a".repeat(12), "0b".repeat(32));
    for (what, link) in [
        ("wrong scheme", format!("https://h/f#{fragment}")),
        ("no scheme", format!("h/f#{fragment}")),
        ("no host", format!("aesgcm:///f#{fragment}")),
        ("no key", "aesgcm://h/f".to_owned()),
        ("bad hex", format!("aesgcm://h/f#{}zz", &fragment[..86])),
        ("short key", format!("aesgcm://h/f#{}", &fragment[..86])),
        ("long key", format!("aesgcm://h/f#{fragment}0000")),
        ("blank", format!("aesgcm://h/a b#{fragment}")),
    ] {
        for (method, params) in [
            ("file.link.parse", json!({ "link": link })),
            ("file.decrypt.begin", json!({"link": link, "size": 100})),
        ] {
            let e = c.err(method, params, "invalid_aesgcm_link");
            let message = e["message"].as_str().unwrap();
            assert!(!message.contains(&fragment[..20]), "{what}: {e}");
        }
    }
    for bad in [&fragment[..80], "zz", &format!("{fragment}00")] {
        c.err(
            "file.decrypt.begin",
            json!({"fragment": bad, "size": 100}),
            "invalid_aesgcm_link",
        );
    }
    // A 16-byte IV is a key too.
    let legacy = format!("{}{}", "0a".repeat(16), "0b".repeat(32));
    let r = c.ok(
        "file.link.parse",
        json!({ "link": format!("aesgcm://Up.Example:8443/x/y.jpg?v=1#{legacy}") }),
    );
    assert_eq!(r["url"], "https://Up.Example:8443/x/y.jpg?v=1");
    c.err(
        "file.decrypt.begin",
        json!({"link": format!("aesgcm://h/f#{fragment}"), "fragment": fragment, "size": 100}),
        "invalid_params",
    );
    c.err("file.decrypt.begin", json!({"size": 100}), "invalid_params");
    // Only an HTTPS upload becomes a link, and the link reads back.
    c.err(
        "file.encrypt.begin",
        json!({"size": 1, "url": "http://h/f"}),
        "invalid_aesgcm_link",
    );
    let begin = c.ok(
        "file.encrypt.begin",
        json!({"size": 5, "url": "https://up.example/slot/a.png"}),
    );
    let link = begin["link"].as_str().unwrap();
    assert_eq!(
        link,
        format!(
            "aesgcm://up.example/slot/a.png#{}",
            begin["fragment"].as_str().unwrap()
        )
    );
    let r = c.ok("file.link.parse", json!({ "link": link }));
    assert_eq!(r["url"], "https://up.example/slot/a.png");
    let t = begin["transfer"].clone();
    // Chunks: whole, in order, base64; finish only at the end.
    let e = c.err(
        "file.encrypt.chunk",
        chunk(&t, 0, b"1234"),
        "invalid_params",
    );
    assert_eq!(e["data"]["expected_length"], 5, "{e}");
    let e = c.err(
        "file.encrypt.chunk",
        chunk(&t, 1, b"12345"),
        "transfer_out_of_order",
    );
    assert_eq!(e["data"]["expected_offset"], 0, "{e}");
    c.err(
        "file.encrypt.chunk",
        json!({"transfer": t, "offset": 0, "data": "not base64!"}),
        "invalid_params",
    );
    let e = c.err(
        "file.encrypt.finish",
        json!({ "transfer": t }),
        "transfer_out_of_order",
    );
    assert_eq!(e["data"]["expected_method"], "file.encrypt.chunk", "{e}");
    c.err(
        "file.decrypt.check",
        chunk(&t, 0, b"12345"),
        "transfer_out_of_order",
    );
    // Another connection does not see the transfer.
    d.client().err(
        "file.encrypt.chunk",
        chunk(&t, 0, b"12345"),
        "unknown_transfer",
    );
    let r = c.ok("file.encrypt.chunk", chunk(&t, 0, b"12345"));
    assert_eq!(r["offset"], 5);
    let e = c.err(
        "file.encrypt.chunk",
        chunk(&t, 5, b""),
        "transfer_out_of_order",
    );
    assert_eq!(e["data"]["expected_method"], "file.encrypt.finish", "{e}");
    c.ok("file.encrypt.finish", json!({ "transfer": t }));
    c.err("file.cancel", json!({ "transfer": t }), "unknown_transfer");
}

/// Calls `file.encrypt.begin` until it succeeds (a closed connection's transfers end a moment
/// after it closes).
fn begin_eventually(c: &mut Client, size: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.call("file.encrypt.begin", json!({ "size": size })) {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e["data"]["kind"], "too_many_transfers", "{e}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("the transfers were not freed: {e}"),
        }
    }
}

/// `file.encrypt.begin` refused with `too_many_transfers`: its `data.max` and
/// `data.per_connection`.
fn refused(c: &mut Client) -> (Value, Value) {
    let e = c.err(
        "file.encrypt.begin",
        json!({"size": 1}),
        "too_many_transfers",
    );
    (
        e["data"]["max"].clone(),
        e["data"]["per_connection"].clone(),
    )
}

#[test]
fn transfers_are_bounded_in_size_number_and_time() {
    let d = Daemon::start_with(&[
        "--max-file-bytes",
        "1000",
        "--max-file-transfers",
        "3",
        "--max-file-transfers-per-connection",
        "2",
        "--file-idle-timeout",
        "1",
        "--file-chunk-bytes",
        "5000",
    ]);
    let mut a = d.client();
    let e = a.err(
        "file.encrypt.begin",
        json!({"size": 1001}),
        "file_too_large",
    );
    assert_eq!(e["data"]["max_bytes"], 1000, "{e}");
    let fragment = format!("{}{}", "0a".repeat(12), "0b".repeat(32));
    a.err(
        "file.decrypt.begin",
        json!({"fragment": fragment, "size": 1017}),
        "file_too_large",
    );
    let begin = a.ok("file.encrypt.begin", json!({"size": 1000}));
    assert_eq!(chunk_size(&begin), 5000);
    a.ok(
        "file.decrypt.begin",
        json!({"fragment": fragment, "size": 1016}),
    );
    assert_eq!(refused(&mut a), (json!(2), json!(true)));
    let mut b = d.client();
    let kept = b.ok("file.encrypt.begin", json!({"size": 1}));
    assert_eq!(refused(&mut b), (json!(3), json!(false)));
    // A closed connection's transfers end with it.
    drop(a);
    begin_eventually(&mut b, 1);
    // An idle transfer is dropped after --file-idle-timeout; one in use is kept.
    let t = kept["transfer"].clone();
    std::thread::sleep(Duration::from_millis(600));
    b.ok("file.encrypt.chunk", chunk(&t, 0, b"x"));
    std::thread::sleep(Duration::from_millis(600));
    b.ok("file.encrypt.finish", json!({ "transfer": t }));
    let idle = b.ok("file.encrypt.begin", json!({"size": 1}))["transfer"].clone();
    std::thread::sleep(Duration::from_millis(2500));
    b.err(
        "file.encrypt.chunk",
        chunk(&idle, 0, b"x"),
        "unknown_transfer",
    );
}

/// Runs `omemod --socket S file ARGS`.
fn omemod_file(socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_omemod"))
        .arg("--socket")
        .arg(socket)
        .arg("file")
        .args(args)
        .output()
        .expect("run omemod file")
}

fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

#[test]
fn the_cli_encrypts_and_decrypts_and_leaves_nothing_behind_on_failure() {
    let d = Daemon::start_with(&["--file-chunk-bytes", "4096"]);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| path_str(&dir.path().join(n));
    let plain: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(p("photo.jpg"), &plain).unwrap();
    let out = omemod_file(
        &d.socket,
        &[
            "encrypt",
            &p("photo.jpg"),
            &p("upload"),
            "--url",
            "https://up.example/s/photo.jpg",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["upload_size"], plain.len() as u64 + 16, "{r}");
    let link = r["link"].as_str().unwrap().to_owned();
    assert!(
        link.starts_with("aesgcm://up.example/s/photo.jpg#"),
        "{link}"
    );
    assert_eq!(
        std::fs::metadata(p("upload")).unwrap().len(),
        plain.len() as u64 + 16
    );
    let out = omemod_file(
        &d.socket,
        &["decrypt", &link, &p("upload"), &p("opened.jpg")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(p("opened.jpg")).unwrap() == plain);
    // The key fragment alone works too; an existing output is never overwritten.
    let fragment = r["fragment"].as_str().unwrap();
    let out = omemod_file(
        &d.socket,
        &["decrypt", fragment, &p("upload"), &p("opened.jpg")],
    );
    assert_eq!(out.status.code(), Some(1));
    let before = names(dir.path());
    // A tampered download: exit 1, a typed error, and no output at all.
    let mut upload = std::fs::read(p("upload")).unwrap();
    upload[20_000] ^= 0x40;
    std::fs::write(p("tampered"), &upload).unwrap();
    let out = omemod_file(
        &d.socket,
        &["decrypt", &link, &p("tampered"), &p("out.jpg")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("authentication_failed"), "{stderr}");
    assert!(!stderr.contains(fragment), "{stderr}");
    // A download cut short, and a malformed link: the same.
    std::fs::write(p("cut"), &upload[..10]).unwrap();
    let out = omemod_file(&d.socket, &["decrypt", &link, &p("cut"), &p("out.jpg")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("file_truncated"));
    let out = omemod_file(
        &d.socket,
        &["decrypt", "aesgcm://h/f#00", &p("upload"), &p("out.jpg")],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_aesgcm_link"));
    let mut after = before.clone();
    after.extend(["cut".to_owned(), "tampered".to_owned()]);
    after.sort();
    assert_eq!(names(dir.path()), after, "nothing was left behind");
}
