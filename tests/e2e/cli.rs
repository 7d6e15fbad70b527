//! The command line as a newcomer meets it: which database the offline commands write (and
//! when they refuse to guess), a refused `serve` that leaves nothing behind, errors under the
//! systemd unit's sandbox that name the paths it allows, `--help` and the manual.
#[path = "../support/mod.rs"]
mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// A home of its own: no config file, state and runtime directories inside it, and none of
/// the caller's omemod variables.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Self {
        Home {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The database `serve` would use by default here.
    fn default_db(&self) -> PathBuf {
        self.path("state/omemod/omemod.db")
    }

    /// `omemod ARGS` in this home, with `env` added, run to completion.
    fn omemod(&self, args: &[&str], env: &[(&str, &Path)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_omemod"));
        cmd.args(args)
            .env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("XDG_STATE_HOME", self.path("state"))
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .env("RUST_LOG", "warn");
        for var in [
            "OMEMOD_SOCKET",
            "OMEMOD_CONFIG",
            "STATE_DIRECTORY",
            "RUNTIME_DIRECTORY",
            "INVOCATION_ID",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(cmd, args)
    }

    /// Writes the default config file.
    fn config(&self, text: &str) -> PathBuf {
        let file = self.path("config/omemod/config.toml");
        std::fs::create_dir_all(file.parent().expect("dir")).expect("mkdir");
        std::fs::write(&file, text).expect("config");
        file
    }
}

/// Runs `cmd` to completion (with a deadline).
fn run(mut cmd: Command, args: &[&str]) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start omemod");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("omemod {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The JSON result of a successful command.
fn result(out: &Output) -> Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_slice(&out.stdout).expect("JSON result")
}

#[test]
fn offline_commands_name_their_database_and_refuse_a_default_they_were_not_pointed_at() {
    let home = Home::new();
    let mut d = Daemon::start();
    d.client().create_account("alice@example.org");
    let socket = path_str(&d.socket);
    let backup = home.path("b1.db");

    // A daemon answers: its database, said on stderr and in the result.
    let out = home.omemod(&["--socket", &socket, "backup", &path_str(&backup)], &[]);
    let r = result(&out);
    assert_eq!(r["db"], path_str(&d.db), "{r}");
    assert!(
        r["db_from"].as_str().unwrap_or_default().contains(&socket),
        "{r}"
    );
    assert!(stderr(&out).contains(&path_str(&d.db)), "{}", stderr(&out));

    // The private daemon stopped, its socket still named: which database is meant is unknown.
    d.stop();
    let refused = |args: &[&str], env: &[(&str, &Path)], named_by: &str| {
        let out = home.omemod(args, env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        for needle in [
            socket.as_str(),
            named_by,
            &path_str(&home.default_db()),
            "--db",
        ] {
            assert!(err.contains(needle), "{args:?}: {needle} missing: {err}");
        }
        assert!(
            !home.path("state").exists(),
            "{args:?} touched the default database"
        );
    };
    let backup_arg = path_str(&backup);
    refused(
        &["restore", &backup_arg],
        &[("OMEMOD_SOCKET", d.socket.as_path())],
        "OMEMOD_SOCKET",
    );
    let export = [
        "account",
        "export",
        "--account",
        "alice@example.org",
        "/none/x.json",
    ];
    for command in [
        &["restore", &backup_arg][..],
        &["backup", "/none/x.db"],
        &export,
        &["account", "import", "/none/x.json"],
    ] {
        refused(
            &[&["--socket", &socket][..], command].concat(),
            &[],
            "--socket",
        );
    }
    // The same when the config file names the socket.
    let config = home.config(&format!("socket = \"{socket}\"\n"));
    let out = home.omemod(&["restore", &path_str(&backup)], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&path_str(&config)),
        "{}",
        stderr(&out)
    );
    assert!(!home.path("state").exists());

    // Pointed at explicitly: done, and said.
    let out = home.omemod(
        &["restore", &path_str(&backup), "--db", &path_str(&d.db)],
        &[("OMEMOD_SOCKET", d.socket.as_path())],
    );
    let r = result(&out);
    assert_eq!(r["db"], path_str(&d.db), "{r}");
    assert_eq!(r["db_from"], "given with --db", "{r}");
    assert!(r["previous"].as_str().is_some(), "{r}");
    // A config file's `db` is pointing at it too.
    let other = home.path("other/omemod.db");
    let config = home.config(&format!(
        "socket = \"{socket}\"\ndb = \"{}\"\n",
        path_str(&other)
    ));
    let r = result(&home.omemod(&["restore", &path_str(&backup)], &[]));
    assert_eq!(r["db"], path_str(&other), "{r}");
    assert!(
        r["db_from"]
            .as_str()
            .unwrap_or_default()
            .contains(&path_str(&config)),
        "{r}"
    );
    // Nothing named at all: the default database is the one meant, and it is named.
    std::fs::remove_file(&config).expect("rm config");
    let out = home.omemod(&["restore", &path_str(&backup)], &[]);
    let r = result(&out);
    assert_eq!(r["db"], path_str(&home.default_db()), "{r}");
    assert_eq!(r["db_from"], "the default database", "{r}");
    assert!(
        stderr(&out).contains(&path_str(&home.default_db())),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_serve_refused_for_a_busy_socket_leaves_no_file_behind() {
    let home = Home::new();
    let d = Daemon::start();
    let db = home.path("new/omemod.db");
    let out = home.omemod(
        &[
            "serve",
            "--socket",
            &path_str(&d.socket),
            "--db",
            &path_str(&db),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already listening"),
        "{}",
        stderr(&out)
    );
    assert!(
        !home.path("new").exists(),
        "the refused serve created {}",
        db.display()
    );
    // Something that is not a socket in the way: the same.
    let not_socket = home.path("file.sock");
    std::fs::write(&not_socket, b"x").expect("write");
    let out = home.omemod(
        &[
            "serve",
            "--socket",
            &path_str(&not_socket),
            "--db",
            &path_str(&db),
        ],
        &[],
    );
    assert!(stderr(&out).contains("not a socket"), "{}", stderr(&out));
    assert!(!home.path("new").exists());
    // The daemon on it is untouched.
    d.client().ok("status", serde_json::json!({}));
}

/// `omemod serve` as the systemd unit runs it, in the unit's file-system sandbox (bubblewrap:
/// everything read-only but the runtime directory), with a config file whose database lies in
/// the read-only home: the error names the sandbox and the paths the unit allows.
#[test]
fn sandbox_errors_name_the_paths_the_unit_allows() {
    let bwrap = Command::new("bwrap").arg("--version").output();
    assert!(
        bwrap.is_ok_and(|o| o.status.success()),
        "bwrap not found: install bubblewrap (Debian package bubblewrap)"
    );
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .to_path_buf();
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let home = root.path().join("home");
    let runtime = root.path().join("run/omemod");
    let state = home.join(".local/state/omemod");
    for d in [&runtime, &state, &home.join(".config/omemod")] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    std::fs::write(
        home.join(".config/omemod/config.toml"),
        "db = \"~/omemod/omemod.db\"\n",
    )
    .expect("config");
    // As the unit's sandbox: all read-only but its state and runtime directories (and the
    // build tree, under a /tmp that is replaced), new namespaces, systemd's variables.
    let serve = |systemd: bool| {
        let mut cmd = Command::new("bwrap");
        cmd.args([
            "--die-with-parent",
            "--new-session",
            "--clearenv",
            "--unshare-user",
        ])
        .args([
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--ro-bind",
            "/",
            "/",
        ])
        .args(["--tmpfs", "/tmp", "--dev", "/dev", "--proc", "/proc"]);
        for (how, dir) in [
            ("--ro-bind", &target),
            ("--bind", &state),
            ("--bind", &runtime),
        ] {
            cmd.arg(how).arg(dir).arg(dir);
        }
        let mut env = vec![
            ("HOME", home.clone()),
            ("STATE_DIRECTORY", state.clone()),
            ("RUNTIME_DIRECTORY", runtime.clone()),
            ("PATH", "/usr/bin:/bin".into()),
            ("RUST_LOG", "warn".into()),
        ];
        if systemd {
            env.push(("INVOCATION_ID", "0123456789abcdef".into()));
        }
        for (k, v) in env {
            cmd.arg("--setenv").arg(k).arg(v);
        }
        cmd.args([env!("CARGO_BIN_EXE_omemod"), "serve"]);
        run(cmd, &["serve"])
    };
    let out = serve(true);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    for needle in [
        "Read-only file system",
        "systemd",
        "ProtectHome=read-only",
        &path_str(&state),
        &path_str(&runtime),
        "config.toml",
        "ReadWritePaths=",
    ] {
        assert!(err.contains(needle), "{needle} missing: {err}");
    }
    assert!(!home.join("omemod").exists());
    // Outside systemd the error stays as it is.
    let out = serve(false);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("Read-only file system"),
        "{err}"
    );
    assert!(!err.contains("ReadWritePaths="), "{err}");
}

#[test]
fn help_says_where_the_socket_goes_without_a_runtime_directory() {
    let home = Home::new();
    let out = home.omemod(&["--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("/tmp/omemod-<uid>/omemod.sock"), "{help}");
    assert!(help.contains("/run/user/<uid>"), "{help}");
}

#[test]
fn man_and_completions_refuse_flags_that_mean_nothing_to_them() {
    let home = Home::new();
    for args in [
        vec!["man", "--socket", "/x.sock"],
        vec!["--config", "/x.toml", "man"],
        vec!["completions", "bash", "--socket", "/x.sock"],
    ] {
        let out = home.omemod(&args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&out).contains("means nothing"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(out.stdout.is_empty());
    }
    // From the environment (a user's shell setting) they are ignored.
    let out = home.omemod(&["man"], &[("OMEMOD_SOCKET", Path::new("/x.sock"))]);
    assert!(out.status.success(), "{}", stderr(&out));
    let page = String::from_utf8_lossy(&out.stdout);
    for section in ["FILES", "ENVIRONMENT", "\"EXIT STATUS\"", "EXAMPLES"] {
        assert!(page.contains(&format!(".SH {section}")), "{section}");
    }
}
