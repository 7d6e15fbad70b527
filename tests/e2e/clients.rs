//! The client examples (client-examples/: Python, Node, Rust, shell) run as a user would run them,
//! against real daemons: alice's example encrypts to bob in each namespace, bob's decrypts, each
//! shows what to publish and prints events; with two accounts and no `--account` each says how to
//! choose, on an empty daemon how to create one; none creates an account. The Python library the
//! Python example is written on is installed with pip into a fresh venv, where its own test suite
//! runs (`python_library`).
//!
//! Needs `python3` (with venv), `node`, `bash` with `jq` and `socat` on PATH (`scripts/test`
//! installs them through `scripts/test-deps`), and the Python package index for pip; the Rust
//! example is built here with cargo.
#[path = "../support/mod.rs"]
mod support;

use serde_json::json;
use std::ffi::OsString;
use std::fs::Permissions;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;
use support::*;

const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";
const TIMEOUT: Duration = Duration::from_secs(60);

/// How to start one example.
struct Example {
    name: &'static str,
    program: PathBuf,
    args: Vec<OsString>,
}

/// What an example run printed.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A program on PATH, or a clear failure saying what to install.
fn on_path(program: &str, install: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{program}` is not on PATH: install {install} (`scripts/test-deps` does)")
        })
}

/// The directory of the omemod binary under test: first on the examples' PATH, so the shell
/// example finds it there.
fn omemod_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_omemod"))
        .parent()
        .expect("bin dir")
        .to_owned()
}

/// Builds the Rust example (another package of the workspace) once, with the cargo running us.
fn rust_example() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new(env!("CARGO"))
            .args(["build", "-p", "omemod-client", "--bin", "omemod-client"])
            .arg("--message-format=json-render-diagnostics")
            .current_dir(repo())
            .stderr(Stdio::inherit())
            .output()
            .expect("run cargo");
        assert!(out.status.success(), "cargo build -p omemod-client failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| {
                m["reason"] == "compiler-artifact" && m["target"]["name"] == "omemod-client"
            })
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo named no omemod-client executable")
    })
    .clone()
}

fn example(name: &'static str) -> Example {
    let dir = repo().join("client-examples");
    let (program, args) = match name {
        "python" => (
            on_path("python3", "python3"),
            vec![dir.join("python/python_client.py").into()],
        ),
        "node" => (
            on_path("node", "Node.js (Debian: nodejs)"),
            vec![dir.join("node_client.mjs").into()],
        ),
        "shell" => {
            on_path("jq", "jq");
            on_path("socat", "socat");
            (
                on_path("bash", "bash"),
                vec![dir.join("shell_client.sh").into()],
            )
        }
        "rust" => (rust_example(), vec![]),
        _ => unreachable!("no example {name}"),
    };
    Example {
        name,
        program,
        args,
    }
}

impl Example {
    /// The command with a clean environment for the example: the socket from `OMEMOD_SOCKET`,
    /// no account chosen, our omemod first on PATH.
    fn command(&self, socket: &Path, args: &[&str]) -> Command {
        let mut path = vec![omemod_dir()];
        path.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .args(args)
            .env("OMEMOD_SOCKET", socket)
            .env_remove("OMEMOD_ACCOUNT")
            .env_remove("OMEMOD")
            .env("PATH", std::env::join_paths(path).expect("PATH"));
        cmd
    }

    fn run(&self, socket: &Path, args: &[&str]) -> Run {
        self.run_with(self.command(socket, args), None)
    }

    /// Runs to the end (killed after TIMEOUT), with `input` on stdin.
    fn run_with(&self, mut cmd: Command, input: Option<&str>) -> Run {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{}: start: {e}", self.name));
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(input.unwrap_or("").as_bytes())
            .expect("write stdin");
        drop(stdin);
        let out = finish(child, TIMEOUT, &format!("{}: {cmd:?}", self.name));
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn ok(&self, socket: &Path, args: &[&str]) -> Run {
        let r = self.run(socket, args);
        assert_eq!(r.code, 0, "{} {args:?}: {r}", self.name);
        r
    }
}

fn accounts(c: &mut Client) -> Vec<String> {
    let list = c.ok("account.list", json!({}));
    let mut v: Vec<String> = list
        .as_array()
        .expect("list")
        .iter()
        .map(|a| a["jid"].as_str().expect("jid").to_owned())
        .collect();
    v.sort();
    v
}

fn exercise(name: &'static str) {
    let ex = example(name);
    let da = Daemon::start();
    let db = Daemon::start();
    let mut a = da.client();
    let mut b = db.client();
    let alice_device = a.create_account(ALICE);
    b.create_account(BOB);
    // What the XMPP client would carry between the two accounts' PEP nodes.
    a.learn(BOB, &mut b, &BOTH);
    b.learn(ALICE, &mut a, &BOTH);

    // status on the default socket path: $XDG_RUNTIME_DIR/omemod/omemod.sock (a hard link to
    // alice's socket here), with one account and no --account.
    let xdg = da.dir.path().join("xdg");
    std::fs::create_dir_all(xdg.join("omemod")).expect("mkdir");
    std::fs::set_permissions(xdg.join("omemod"), Permissions::from_mode(0o700)).expect("chmod");
    std::fs::hard_link(&da.socket, xdg.join("omemod/omemod.sock")).expect("link");
    let mut cmd = ex.command(&da.socket, &["status"]);
    cmd.env_remove("OMEMOD_SOCKET").env("XDG_RUNTIME_DIR", &xdg);
    let r = ex.run_with(cmd, None);
    assert_eq!(r.code, 0, "{name} status: {r}");
    assert!(
        r.stdout
            .contains(&format!("using {ALICE} device {alice_device}")),
        "{name} status: {r}"
    );

    // The shell example finds omemod in the repository's target/ when it is not on PATH.
    if name == "shell" {
        let mut cmd = ex.command(&da.socket, &["status"]);
        cmd.env("PATH", std::env::var_os("PATH").unwrap_or_default());
        let r = ex.run_with(cmd, None);
        assert_eq!(r.code, 0, "shell status without omemod on PATH: {r}");
        assert!(r.stdout.contains(ALICE), "{r}");
    }

    // publish-info: every node and item, and the very XML omemod hands out.
    let r = ex.ok(&da.socket, &["--account", ALICE, "publish-info"]);
    for ns in BOTH {
        for item in [a.devicelist(ns), a.bundle(ns)] {
            let node = item["node"].as_str().expect("node");
            let xml = item["xml"].as_str().expect("xml");
            assert!(
                r.stdout.contains(&format!(
                    "node {node} item {}",
                    item["item_id"].as_str().expect("item")
                )),
                "{name} publish-info lacks {node}: {r}"
            );
            assert!(
                r.stdout.contains(xml),
                "{name} publish-info lacks {xml}: {r}"
            );
        }
    }

    // events: bob's example subscribes; a device list change arrives as a line.
    let mut cmd = ex.command(&db.socket, &["--account", BOB, "events"]);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start events");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(TIMEOUT).expect("events: no first line");
    assert!(first.starts_with("subscribed"), "{name} events: {first}");
    b.ok(
        "devicelist.update",
        json!({"jid": "carol@example.org", "namespace": OMEMO2,
               "xml": "<devices xmlns='urn:xmpp:omemo:2'><device id='4242'/></devices>"}),
    );
    let mut seen = vec![];
    while !seen
        .iter()
        .any(|l: &String| l.starts_with("devicelist_changed") && l.contains("carol@example.org"))
    {
        match rx.recv_timeout(TIMEOUT) {
            Ok(l) => seen.push(l),
            Err(_) => panic!("{name} events: no devicelist_changed line; got {seen:?}"),
        }
    }
    let _ = child.kill();
    let _ = child.wait();

    // encrypt with alice's example, decrypt with bob's, in each namespace; the account comes
    // from --account for alice and from OMEMOD_ACCOUNT for bob.
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, ns) in BOTH.iter().enumerate() {
        let text = format!("héllo \"bob\" <&> ✓ {i} in {ns}");
        let r = ex.ok(
            &da.socket,
            &[
                "--account",
                ALICE,
                "encrypt",
                "--to",
                BOB,
                "--body",
                &text,
                "--namespace",
                ns,
            ],
        );
        let xml = r.stdout.trim();
        assert_eq!(r.stdout.lines().count(), 1, "{name} encrypt: {r}");
        assert!(
            xml.starts_with("<encrypted xmlns='") && xml.contains(ns),
            "{name} encrypt: {r}"
        );
        assert!(!xml.contains("bob\""), "{name}: plaintext in the element");
        let file = dir.path().join(format!("m{i}.xml"));
        std::fs::write(&file, &r.stdout).expect("write");
        let file_arg = file.to_string_lossy().into_owned();
        // The first from a file, the second from stdin.
        let (xml_arg, input) = if i == 0 {
            (file_arg.as_str(), None)
        } else {
            ("-", Some(r.stdout.as_str()))
        };
        let mut cmd = ex.command(&db.socket, &["decrypt", "--from", ALICE, "--xml", xml_arg]);
        cmd.env("OMEMOD_ACCOUNT", BOB);
        let d = ex.run_with(cmd, input);
        assert_eq!(d.code, 0, "{name} decrypt in {ns}: {d}");
        assert_eq!(d.stdout, format!("{text}\n"), "{name} decrypt in {ns}: {d}");
        assert!(
            d.stderr
                .contains(&format!("from {ALICE} device {alice_device}")),
            "{name}: {d}"
        );

        // Again: a typed error (duplicate_message) explained, or — on a daemon that reports
        // redeliveries — the body marked as redelivered.
        let again = ex.run(
            &db.socket,
            &[
                "--account",
                BOB,
                "decrypt",
                "--from",
                ALICE,
                "--xml",
                &file_arg,
            ],
        );
        match again.code {
            1 => {
                assert!(
                    again.stderr.contains("already decrypted") && again.stdout.is_empty(),
                    "{name} replay: {again}"
                );
            }
            0 => assert!(
                again.stderr.contains("redelivered"),
                "{name} replay: {again}"
            ),
            _ => panic!("{name} replay: {again}"),
        }
    }

    // A message for bob presented as if addressed to someone else: the OMEMO 2 envelope does
    // not match, and no plaintext comes out.
    let secret = "not for carol's eyes";
    let r = ex.ok(
        &da.socket,
        &[
            "--account",
            ALICE,
            "encrypt",
            "--to",
            BOB,
            "--body",
            secret,
            "--namespace",
            OMEMO2,
        ],
    );
    let cmd = ex.command(
        &db.socket,
        &[
            "--account",
            BOB,
            "decrypt",
            "--from",
            ALICE,
            "--to",
            "carol@example.org",
            "--xml",
            "-",
        ],
    );
    let d = ex.run_with(cmd, Some(&r.stdout));
    assert_eq!(d.code, 1, "{name} decrypt with a wrong `to`: {d}");
    assert!(!d.stdout.contains(secret), "{name}: {d}");

    // A group chat: the envelope names the room. Decrypted as a room message it reads; the
    // same kind of message passed off as a private one is refused. Two recipients, one of whom
    // omemod has never seen: the example says to fetch that device list.
    const ROOM: &str = "room@muc.example.org";
    let mut group = vec![];
    for i in 0..2 {
        let r = ex.ok(
            &da.socket,
            &[
                "--account",
                ALICE,
                "encrypt",
                "--to",
                BOB,
                "--to",
                "carol@example.org",
                "--room",
                ROOM,
                "--body",
                &format!("to the room {i}"),
                "--namespace",
                OMEMO2,
            ],
        );
        assert!(
            r.stderr.contains("fetch_devicelist") && r.stderr.contains("carol@example.org"),
            "{name} group encrypt: {r}"
        );
        group.push(r.stdout);
    }
    let cmd = ex.command(
        &db.socket,
        &[
            "--account",
            BOB,
            "decrypt",
            "--from",
            ALICE,
            "--to",
            ROOM,
            "--group-chat",
            "--xml",
            "-",
        ],
    );
    let d = ex.run_with(cmd, Some(&group[0]));
    assert_eq!(d.code, 0, "{name} group decrypt: {d}");
    assert_eq!(d.stdout, "to the room 0\n", "{name} group decrypt: {d}");
    let cmd = ex.command(
        &db.socket,
        &["--account", BOB, "decrypt", "--from", ALICE, "--xml", "-"],
    );
    let d = ex.run_with(cmd, Some(&group[1]));
    assert_eq!(d.code, 1, "{name} room message taken as private: {d}");
    assert!(!d.stdout.contains("to the room"), "{name}: {d}");

    // Two accounts and none chosen: the friendly message, for every command; nothing created.
    let dt = Daemon::start();
    let mut t = dt.client();
    t.create_account("carol@example.org");
    t.create_account("dave@example.org");
    for args in [
        &["status"][..],
        &["publish-info"],
        &["encrypt", "--to", BOB, "--body", "x"],
    ] {
        let r = ex.run(&dt.socket, args);
        assert_eq!(r.code, 1, "{name} {args:?} with two accounts: {r}");
        for needle in [
            "several accounts",
            "carol@example.org",
            "dave@example.org",
            "--account",
        ] {
            assert!(r.stderr.contains(needle), "{name} {args:?}: {r}");
        }
    }
    let r = ex.run(
        &dt.socket,
        &["--account", "nobody@example.org", "publish-info"],
    );
    assert_eq!(r.code, 1, "{name}: {r}");
    assert!(
        r.stderr.contains("no account nobody@example.org"),
        "{name}: {r}"
    );

    // An empty daemon: told how to create an account, and none is created.
    let de = Daemon::start();
    let mut e = de.client();
    for args in [&["status"][..], &["publish-info"]] {
        let r = ex.run(&de.socket, args);
        assert_eq!(r.code, 1, "{name} {args:?} on an empty daemon: {r}");
        assert!(
            r.stderr.contains("no account yet") && r.stderr.contains("omemod init"),
            "{name} {args:?}: {r}"
        );
    }

    // A socket someone could have swapped: a symlink to it, or a directory open to others.
    let links = dir.path().join("links");
    std::fs::create_dir(&links).expect("mkdir");
    std::fs::set_permissions(&links, Permissions::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::symlink(&da.socket, links.join("omemod.sock")).expect("symlink");
    let r = ex.run(&links.join("omemod.sock"), &["status"]);
    assert_eq!(r.code, 2, "{name} through a symlink: {r}");
    assert!(r.stderr.contains("symbolic link"), "{name}: {r}");
    std::fs::remove_file(links.join("omemod.sock")).expect("rm");
    std::fs::hard_link(&da.socket, links.join("omemod.sock")).expect("link");
    std::fs::set_permissions(&links, Permissions::from_mode(0o777)).expect("chmod");
    let r = ex.run(&links.join("omemod.sock"), &["status"]);
    assert_eq!(r.code, 2, "{name} in a world-writable directory: {r}");
    assert!(r.stderr.contains("writable by other users"), "{name}: {r}");

    // No daemon at all: exit 2 and a hint.
    let gone = dir.path().join("nothing.sock");
    let r = ex.run(&gone, &["status"]);
    assert_eq!(r.code, 2, "{name} without a daemon: {r}");
    assert!(r.stderr.contains("omemod serve"), "{name}: {r}");

    assert_eq!(accounts(&mut a), [ALICE]);
    assert_eq!(accounts(&mut b), [BOB]);
    assert_eq!(accounts(&mut t), ["carol@example.org", "dave@example.org"]);
    assert!(accounts(&mut e).is_empty(), "{name} created an account");
}

#[test]
fn python_example() {
    exercise("python");
}

#[test]
fn node_example() {
    exercise("node");
}

#[test]
fn shell_example() {
    exercise("shell");
}

#[test]
fn rust_example_cli() {
    exercise("rust");
}

/// Waits for `child` to end and collects its output; kills it and fails the test after `limit`.
fn finish(child: std::process::Child, limit: Duration, what: &str) -> std::process::Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{what}: no end within {limit:?}");
        }
    }
}

/// Runs `cmd` to its end and fails the test, with its output, unless it succeeds. Returns
/// stdout and stderr together.
fn checked(mut cmd: Command, what: &str, limit: Duration) -> String {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: start: {e}"));
    let out = finish(child, limit, what);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

/// Copies a source tree, leaving out what builds and runs leave in it.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        let name_s = name.to_string_lossy();
        if name_s == "build" || name_s == "__pycache__" || name_s.ends_with(".egg-info") {
            continue;
        }
        let path = entry.path();
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&path, &to.join(&name));
        } else {
            std::fs::copy(&path, to.join(&name)).expect("copy");
        }
    }
}

/// The Python client library (client-examples/python) as a user gets it: installed with pip
/// into a fresh venv (from a copy of the repository's directory, so that pip's build leaves
/// nothing in the tree), then its own test suite run against this omemod — every method, each
/// error kind's exception, reconnects by the retry rules, redelivery of a lost answer — with the
/// installed copy, not the source tree, on the import path. pip needs the Python package index
/// (setuptools for the build).
#[test]
fn python_library() {
    let python = on_path("python3", "python3 with venv (Debian: python3-venv)");
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("omemod-client");
    copy_tree(&repo().join("client-examples/python"), &src);
    let venv = tmp.path().join("venv");
    let mut cmd = Command::new(&python);
    cmd.args(["-m", "venv"]).arg(&venv);
    checked(cmd, "python3 -m venv", TIMEOUT);
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "-q",
    ])
    .arg(&src);
    checked(
        cmd,
        "pip install client-examples/python",
        Duration::from_secs(300),
    );
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(src.join("tests"))
        .current_dir(tmp.path())
        .env("OMEMOD_BIN", env!("CARGO_BIN_EXE_omemod"))
        .env("OMEMOD_CLIENT_INSTALLED_IN", &venv)
        .env_remove("OMEMOD_SOCKET")
        .env_remove("PYTHONPATH");
    let out = checked(cmd, "the library's test suite", Duration::from_secs(300));
    // Nothing skipped: also not the test that the installed copy is the one imported.
    assert!(
        out.contains("test_the_installed_package_is_the_one_tested") && !out.contains("skipped"),
        "the library's suite skipped tests:\n{out}"
    );
}

/// `--help` (or `-h`, also after the command) prints the whole usage on stdout and exits 0
/// without a daemon: every command, the options, the socket rule down to the
/// `/tmp/omemod-<uid>` fallback of `omemod serve`, the exit codes. (The Python example's help
/// is argparse's.)
#[test]
fn examples_answer_help_without_a_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nowhere = dir.path().join("no-daemon.sock");
    for name in ["node", "shell", "rust"] {
        let ex = example(name);
        for args in [&["--help"][..], &["-h"], &["status", "--help"]] {
            let r = ex.run(&nowhere, args);
            assert_eq!(r.code, 0, "{name} {args:?}: {r}");
            assert!(r.stderr.is_empty(), "{name} {args:?}: {r}");
            for word in [
                "usage:",
                "--socket PATH",
                "--account JID",
                "status",
                "publish-info",
                "encrypt --to JID",
                "decrypt --from JID",
                "events [--count N]",
                "$OMEMOD_SOCKET",
                "/tmp/omemod-<uid>/omemod.sock",
                "$OMEMOD_ACCOUNT",
                "Exit codes",
            ] {
                assert!(
                    r.stdout.contains(word),
                    "{name} {args:?} lacks {word:?}: {r}"
                );
            }
        }
        // Without a command: a short usage on stderr that points at --help.
        let r = ex.run(&nowhere, &[]);
        assert_eq!(r.code, 2, "{name}: {r}");
        assert!(r.stderr.contains("--help"), "{name}: {r}");
    }
}
