//! The `omemod` command line: `serve` runs the daemon; the other commands are clients that send
//! one JSON-RPC request to a running daemon through omemod-client (its blocking client).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use omemod_client::Error as ClientError;

use crate::config::{self, Durability, ServeConfig};

/// omemod: OMEMO (XEP-0384) encryption for XMPP clients, served over JSON-RPC on a Unix socket.
#[derive(Debug, Parser)]
#[command(name = "omemod", version, about)]
pub struct Cli {
    /// The daemon's socket [default: `socket` of the config file, else
    /// $RUNTIME_DIRECTORY/omemod.sock under systemd, else $XDG_RUNTIME_DIR/omemod/omemod.sock].
    #[arg(long, global = true, value_name = "PATH", env = "OMEMOD_SOCKET")]
    pub socket: Option<PathBuf>,
    /// The config file (TOML; keys as the `serve` flags, with `_` for `-`)
    /// [default: $XDG_CONFIG_HOME/omemod/config.toml].
    #[arg(long, global = true, value_name = "PATH", env = "OMEMOD_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon until SIGTERM or SIGINT.
    Serve(ServeArgs),
    /// Send one request and print its result as JSON (errors go to stderr, exit code 1).
    Call {
        /// Method name, e.g. `status`.
        method: String,
        /// Params as a JSON object; `-` reads them from standard input.
        params: Option<String>,
    },
    /// Print the OpenRPC document of the daemon's methods.
    Openrpc,
    /// Create the OMEMO account for a JID (calls `account.create`).
    Init {
        /// The account's bare JID.
        #[arg(long)]
        jid: String,
    },
    /// Show the daemon's status (calls `status`).
    Status,
    /// Show our own fingerprint (calls `fingerprint.get`).
    Fingerprint {
        /// The account, when there are several.
        #[arg(long)]
        account: Option<String>,
    },
    /// Manage accounts: list, delete, export one for another machine, import it there.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Write a consistent copy of the database to FILE (SQLite's online backup; safe while the
    /// daemon runs), stamped as a copy: a daemon started on it replaces its prekeys and starts
    /// new sessions. FILE must not exist; it is created with mode 0600.
    Backup {
        /// Where to write the copy.
        file: PathBuf,
        #[command(flatten)]
        db: DbArg,
    },
    /// Replace the database by a backup (stamped as a copy: the next start replaces its prekeys
    /// and starts new sessions). Refuses while a daemon uses the database; the replaced file is
    /// kept as `<db>.before-restore-<time>`.
    Restore {
        /// The backup to restore.
        file: PathBuf,
        #[command(flatten)]
        db: DbArg,
    },
    /// Print a shell completion script (e.g. `omemod completions bash >
    /// ~/.local/share/bash-completion/completions/omemod`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff; e.g. `omemod man | man -l -`).
    Man,
    /// Decide whether to trust one identity key of a contact (calls `trust.set`); without a
    /// decision, list the decisions about the contact (calls `trust.list`).
    Trust {
        /// The account, when there are several.
        #[arg(long)]
        account: Option<String>,
        /// The contact's bare JID.
        #[arg(long)]
        jid: String,
        /// The key's fingerprint, as `trust.list` / `devices.list` show it.
        #[arg(long, requires = "decision")]
        fingerprint: Option<String>,
        /// The decision.
        #[arg(value_enum, requires = "fingerprint")]
        decision: Option<TrustDecision>,
    },
}

/// `omemod account …`.
#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// List the accounts (calls `account.list`).
    List,
    /// Delete an account and every secret stored for it, for good (calls `account.delete`).
    Delete {
        /// The account's bare JID.
        #[arg(long)]
        account: String,
        /// Confirm: the identity cannot be recovered without a backup or an export.
        #[arg(long)]
        yes: bool,
    },
    /// Write one account (identity, prekeys, sessions, device lists, trust) to FILE, for moving
    /// it to another machine. Reads the database directly; safe while the daemon runs. FILE holds
    /// the account's secrets: it is created with mode 0600 and must not exist.
    Export {
        /// The account's bare JID.
        #[arg(long)]
        account: String,
        /// Where to write it.
        file: PathBuf,
        #[command(flatten)]
        db: DbArg,
    },
    /// Add an account exported with `account export` to this machine's database, treated as a
    /// restored copy (new prekeys, new sessions). Stop the daemon first (the database must not be
    /// in use); then stop using the account on the old machine.
    Import {
        /// The exported account.
        file: PathBuf,
        #[command(flatten)]
        db: DbArg,
    },
}

/// The database of an offline command.
#[derive(Debug, Args)]
pub struct DbArg {
    /// The SQLite database [default: the one `serve` uses].
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
}

impl DbArg {
    /// `--db`, else the database of the daemon answering on `socket`, else the config file's,
    /// else the default.
    fn path(&self, socket: &std::path::Path, file_db: Option<&std::path::Path>) -> PathBuf {
        if let Some(db) = &self.db {
            return db.clone();
        }
        request(socket, "status", json!({}))
            .ok()
            .and_then(|v| v.get("db").and_then(Value::as_str).map(PathBuf::from))
            .or_else(|| file_db.map(std::path::Path::to_path_buf))
            .unwrap_or_else(config::default_db_path)
    }
}

/// A trust decision.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TrustDecision {
    /// Encrypt to and accept messages from the device.
    Trusted,
    /// Never encrypt to the device.
    Distrusted,
    /// Forget the decision.
    Undecided,
}

/// Options of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The SQLite database [default: `db` of the config file, else $STATE_DIRECTORY/omemod.db
    /// under systemd, else $XDG_STATE_HOME/omemod/omemod.db].
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// `full` survives power loss; `normal` survives a process crash but may lose the last commits
    /// on power loss [default: full].
    #[arg(long, value_enum)]
    pub durability: Option<Durability>,
    /// Longest accepted request line, in bytes [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Longest response, in bytes [default: 16777216].
    #[arg(long, value_name = "BYTES")]
    pub max_response_bytes: Option<usize>,
    /// Requests one connection may have running at once [default: 64].
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<usize>,
    /// Register the `debug.*` methods. For tests only; never in production.
    #[arg(long, hide = true)]
    pub enable_debug_methods: bool,
    #[command(flatten)]
    pub redelivery: crate::config::RedeliveryArgs,
    #[command(flatten)]
    pub bounds: crate::config::BoundsFlags,
}

/// Parses the command line and runs it.
pub fn run() -> ExitCode {
    // Whatever a command creates (database, backup, export, socket) is private to us.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = Cli::parse();
    if let Some(code) = print_generated(&cli.command) {
        return code;
    }
    let file = match config::FileConfig::load(cli.config.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("omemod: {e}");
            return ExitCode::from(2);
        }
    };
    let socket = cli
        .socket
        .clone()
        .or_else(|| file.socket.clone())
        .unwrap_or_else(config::default_socket_path);
    let socket = socket.as_path();
    let file_db = file.db.clone();
    let db_path = |db: &DbArg| db.path(socket, file_db.as_deref());
    match cli.command {
        Command::Completions { .. } | Command::Man => ExitCode::SUCCESS,
        Command::Serve(args) => serve(socket.to_path_buf(), args, &file),
        Command::Openrpc => openrpc(socket.to_path_buf()),
        Command::Call { method, params } => {
            let params = match read_params(params.as_deref()) {
                Ok(p) => p,
                Err(msg) => {
                    eprintln!("omemod: {msg}");
                    return ExitCode::from(2);
                }
            };
            call(socket, &method, params)
        }
        Command::Init { jid } => call_cli(socket, "account.create", json!({"jid": jid})),
        Command::Status => call_cli(socket, "status", json!({})),
        Command::Fingerprint { account } => {
            call_cli(socket, "fingerprint.get", with_account(json!({}), account))
        }
        Command::Account(cmd) => account_command(socket, cmd, &db_path),
        Command::Backup { file, db } => {
            offline(crate::storage::transfer::backup(&db_path(&db), &file))
        }
        Command::Restore { file, db } => restore(&file, &db_path(&db)),
        Command::Trust {
            account,
            jid,
            fingerprint,
            decision,
        } => trust_command(socket, account, jid, fingerprint.zip(decision)),
    }
}

/// `completions` and `man`, which print what clap generates and need no config: their exit
/// code, `None` for every other command.
fn print_generated(command: &Command) -> Option<ExitCode> {
    match command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "omemod", &mut std::io::stdout());
            Some(ExitCode::SUCCESS)
        }
        Command::Man => {
            let man = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
            Some(match man.render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("omemod: {e}");
                    ExitCode::FAILURE
                }
            })
        }
        _ => None,
    }
}

/// `trust`: records the decision about the key with `fingerprint`, or lists the decisions
/// about the contact when none is given.
fn trust_command(
    socket: &std::path::Path,
    account: Option<String>,
    jid: String,
    decision: Option<(String, TrustDecision)>,
) -> ExitCode {
    let Some((fingerprint, decision)) = decision else {
        let params = with_account(json!({"jid": jid}), account);
        return call_cli(socket, "trust.list", params);
    };
    let level = match decision {
        TrustDecision::Trusted => "trusted",
        TrustDecision::Distrusted => "distrusted",
        TrustDecision::Undecided => "undecided",
    };
    let params = json!({"jid": jid, "fingerprint": fingerprint, "level": level});
    call_cli(socket, "trust.set", with_account(params, account))
}

fn account_command(
    socket: &std::path::Path,
    cmd: AccountCommand,
    db_path: &dyn Fn(&DbArg) -> PathBuf,
) -> ExitCode {
    match cmd {
        AccountCommand::List => call_cli(socket, "account.list", json!({})),
        AccountCommand::Delete { account, yes } => {
            if !yes {
                eprintln!(
                    "omemod: deleting {account} destroys its identity and every session; \
                     add --yes to confirm (take `omemod backup` or `omemod account export` first)"
                );
                return ExitCode::from(2);
            }
            call_cli(socket, "account.delete", json!({"jid": account}))
        }
        AccountCommand::Export { account, file, db } => {
            let jid = crate::storage::jids::normalise(&account).unwrap_or(account);
            offline(
                crate::storage::transfer::export_account_to(&db_path(&db), &jid, &file)
                    .map(|rows| json!({"account": jid, "file": file, "rows": rows})),
            )
        }
        AccountCommand::Import { file, db } => import(&file, &db_path(&db)),
    }
}

/// Prints an offline command's result as JSON, or its error (exit code 1).
fn offline<T: serde::Serialize, E: std::fmt::Display>(r: Result<T, E>) -> ExitCode {
    match r {
        Ok(v) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("omemod: {e}");
            ExitCode::from(1)
        }
    }
}

/// Takes the database's lock for an offline change; says who holds it otherwise.
fn lock_for_offline_change(db: &std::path::Path) -> Result<crate::lock::DbLock, ExitCode> {
    crate::lock::DbLock::acquire(db, None).map_err(|e| {
        eprintln!("omemod: {e}");
        ExitCode::from(1)
    })
}

fn restore(file: &std::path::Path, db: &std::path::Path) -> ExitCode {
    let _lock = match lock_for_offline_change(db) {
        Ok(l) => l,
        Err(code) => return code,
    };
    offline(crate::storage::transfer::restore(file, db))
}

fn import(file: &std::path::Path, db: &std::path::Path) -> ExitCode {
    let _lock = match lock_for_offline_change(db) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let doc: Value = match std::fs::read(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", file.display())))
    {
        Ok(v) => v,
        Err(e) => {
            eprintln!("omemod: {e}");
            return ExitCode::from(1);
        }
    };
    let store = match crate::storage::Store::open(db, crate::storage::Durability::Full) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("omemod: database {}: {e}", db.display());
            return ExitCode::from(1);
        }
    };
    let r = store.write_blocking(move |tx| crate::storage::transfer::import_account(tx, &doc));
    let closed = store.close();
    offline(r.and_then(|jid| closed.map(|()| json!({"imported": jid, "db": db}))))
}

fn with_account(mut params: Value, account: Option<String>) -> Value {
    if let (Some(obj), Some(account)) = (params.as_object_mut(), account) {
        obj.insert("account".into(), Value::String(account));
    }
    params
}

/// `serve`'s settings: flags over the config file over the defaults.
fn serve_config(socket: PathBuf, args: ServeArgs, file: &config::FileConfig) -> ServeConfig {
    ServeConfig {
        socket,
        db: args
            .db
            .or_else(|| file.db.clone())
            .unwrap_or_else(config::default_db_path),
        durability: args.durability.or(file.durability).unwrap_or_default(),
        max_request_bytes: args
            .max_request_bytes
            .or(file.max_request_bytes)
            .unwrap_or(config::DEFAULT_MAX_REQUEST_BYTES)
            .max(1),
        max_response_bytes: args
            .max_response_bytes
            .or(file.max_response_bytes)
            .unwrap_or(config::DEFAULT_MAX_RESPONSE_BYTES)
            .max(1),
        max_in_flight: args
            .max_in_flight
            .or(file.max_in_flight)
            .unwrap_or(config::DEFAULT_MAX_IN_FLIGHT)
            .max(1),
        enable_debug_methods: args.enable_debug_methods,
        redelivery: args.redelivery.resolve(file),
        bounds: args.bounds.resolve(file),
    }
}

fn serve(socket: PathBuf, args: ServeArgs, file: &config::FileConfig) -> ExitCode {
    crate::logging::init("info");
    let config = serve_config(socket, args, file);
    // One runtime thread: a request is microseconds of CPU between two waits (socket, commit),
    // so cross-thread wake-ups would cost more than they buy. SQLite's writer, readers and
    // checkpointer have threads of their own, so commits still overlap with other requests.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::rpc::server::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn openrpc(socket: PathBuf) -> ExitCode {
    let config = ServeConfig {
        socket: socket.clone(),
        db: config::default_db_path(),
        durability: Durability::default(),
        max_request_bytes: config::DEFAULT_MAX_REQUEST_BYTES,
        max_response_bytes: config::DEFAULT_MAX_RESPONSE_BYTES,
        max_in_flight: config::DEFAULT_MAX_IN_FLIGHT,
        enable_debug_methods: false,
        redelivery: Default::default(),
        bounds: crate::config::BoundsArgs::default(),
    };
    let ctx = Arc::new(crate::rpc::ctx::Ctx::new(config, socket));
    if let Err(e) = crate::rpc::methods::build(Arc::clone(&ctx), false) {
        eprintln!("omemod: {e}");
        return ExitCode::FAILURE;
    }
    match ctx.openrpc.get().map(serde_json::to_string_pretty) {
        Some(Ok(text)) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        _ => ExitCode::FAILURE,
    }
}

fn read_params(arg: Option<&str>) -> Result<Value, String> {
    let text = match arg {
        None => return Ok(json!({})),
        Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| format!("cannot read stdin: {e}"))?;
            s
        }
        Some(s) => s.to_owned(),
    };
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("params are not JSON: {e}"))?;
    if !v.is_object() {
        return Err("params must be a JSON object".into());
    }
    Ok(v)
}

/// [`call`] for the named commands: errors about params are worded with the command's flags.
fn call_cli(socket: &std::path::Path, method: &str, params: Value) -> ExitCode {
    call_with(socket, method, params, true)
}

/// The CLI wording of an error whose RPC message names params.
fn cli_message(kind: &str, message: &str) -> Option<String> {
    match kind {
        "account_required" if message.starts_with("no account") => {
            Some("no account yet: create one with `omemod init --jid JID`".into())
        }
        "account_required" => Some(
            "several accounts: name one with --account JID (`omemod account list` shows them)"
                .into(),
        ),
        "unknown_account" => Some(format!(
            "{message}: check --account (`omemod account list` shows the accounts)"
        )),
        "invalid_jid" => Some(format!(
            "{message}: give a bare JID (local@domain, no /resource) to --jid / --account"
        )),
        _ => None,
    }
}

/// Sends one request, prints the result; exit code 1 on an error answer, 2 when the daemon cannot
/// be reached.
fn call(socket: &std::path::Path, method: &str, params: Value) -> ExitCode {
    call_with(socket, method, params, false)
}

fn call_with(socket: &std::path::Path, method: &str, params: Value, cli: bool) -> ExitCode {
    match request(socket, method, params) {
        Ok(result) => {
            // A closed stdout (`| head`) is not an error of the call.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&result).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(ClientError::Rpc(e)) => {
            let reworded = cli.then(|| cli_message(&e.kind, &e.message)).flatten();
            let message = reworded.as_deref().unwrap_or(&e.message);
            eprintln!("omemod: {method}: {message} ({}, code {})", e.kind, e.code);
            if e.data.as_object().is_some_and(|o| o.len() > 1) {
                eprintln!(
                    "{}",
                    serde_json::to_string_pretty(&e.data).unwrap_or_default()
                );
            }
            ExitCode::from(1)
        }
        Err(e @ ClientError::Trust(_)) => {
            eprintln!("omemod: {e}; not connecting (is `omemod serve` running?)");
            ExitCode::from(2)
        }
        Err(e @ ClientError::Connect { .. }) => {
            eprintln!("omemod: {e} (is `omemod serve` running?)");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("omemod: {e}");
            ExitCode::from(2)
        }
    }
}

/// One request to the daemon at `socket` on a connection of its own (after omemod-client's
/// checks that the socket and the daemon are ours): its result, or why not.
fn request(socket: &std::path::Path, method: &str, params: Value) -> Result<Value, ClientError> {
    omemod_client::blocking::Client::connect(socket)?.call(method, params)
}
