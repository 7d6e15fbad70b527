//! The `omemod` command line: `serve` runs the daemon; the other commands are clients that send
//! one JSON-RPC request to a running daemon through omemod-client (its blocking client), or
//! work on the database file (backup, restore, account export and import).
//!
//! - `manual`: the manual page `omemod man` prints, rendered from this module's definitions.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use omemod_client::Error as ClientError;

use crate::config::{self, Durability, ServeConfig};

mod manual;

/// omemod: OMEMO (XEP-0384) encryption for XMPP clients, served over JSON-RPC on a Unix socket.
#[derive(Debug, Parser)]
#[command(name = "omemod", version, about)]
pub struct Cli {
    /// The daemon's socket [default: `socket` of the config file, else
    /// $RUNTIME_DIRECTORY/omemod.sock under systemd, else $XDG_RUNTIME_DIR/omemod/omemod.sock,
    /// else `/run/user/<uid>/omemod/omemod.sock` when `/run/user/<uid>` exists, else
    /// `/tmp/omemod-<uid>/omemod.sock`].
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
    // Boxed: its flags outweigh every other command's.
    Serve(Box<ServeArgs>),
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
        /// Device ids the new device must not take: those on the account's published device
        /// lists (comma-separated, or the flag repeated), so that two devices never share one.
        #[arg(long, value_name = "ID,...", value_delimiter = ',')]
        avoid: Vec<u32>,
        /// How new keys of contacts are trusted [default: btbv].
        #[arg(long, value_enum)]
        trust_mode: Option<TrustModeArg>,
    },
    /// List the known devices, ours and our contacts', with fingerprint, trust and staleness
    /// (calls `devices.list`).
    Devices {
        /// The account, when there are several.
        #[arg(long)]
        account: Option<String>,
        /// Only this contact's devices (our own JID: our devices).
        #[arg(long)]
        jid: Option<String>,
        /// Print the JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show the daemon's status (calls `status`).
    Status,
    /// Show our own fingerprint (calls `fingerprint.get`).
    Fingerprint {
        /// The account, when there are several.
        #[arg(long)]
        account: Option<String>,
    },
    /// Show our verification link as a QR code for a contact to scan (Conversations, Gajim,
    /// Monal and omemod read it), with our fingerprint as those clients display it (calls
    /// `link.get`).
    Link {
        /// The account, when there are several.
        #[arg(long)]
        account: Option<String>,
        /// Print the link and fingerprints only, no QR code.
        #[arg(long)]
        no_qr: bool,
    },
    /// Verify a contact by the link their client shows as a QR code (`xmpp:…?omemo-sid-…`):
    /// every key it names becomes trusted, or none if one differs (calls `link.verify`).
    Verify {
        /// The account, when there are several.
        #[arg(long)]
        account: Option<String>,
        /// The scanned link.
        link: String,
    },
    /// Name this device for our other devices and contacts ("Laptop"); published signed in the
    /// OMEMO 2 device list, which the client must publish again (calls `account.set_label`).
    Label {
        /// The account, when there are several.
        #[arg(long)]
        account: Option<String>,
        /// The label (at most 53 characters); left out: remove it.
        label: Option<String>,
    },
    /// Manage accounts: list, delete, export one for another machine, import it there.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Encrypt a file for upload or decrypt a downloaded one (XEP-0454 `aesgcm://` links; calls
    /// the `file.*` methods). The files pass through this command; the daemon never opens them.
    #[command(subcommand)]
    File(FileCommand),
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
    /// and starts new sessions). Refuses while a daemon uses the database, and when this
    /// installation's key does not open the backup; the replaced file is kept as
    /// `<db>.before-restore-<time>`.
    Restore {
        /// The backup to restore.
        file: PathBuf,
        #[command(flatten)]
        db: DbArg,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Give the database a new data key, wrapped by a key from KEY_SOURCE (default: the one it
    /// has), and seal every secret again under it: whoever had the old key (or a key file, or a
    /// passphrase) opens nothing in the file afterwards. Stop the daemon first.
    Rekey {
        #[command(flatten)]
        db: DbArg,
        #[command(flatten)]
        key: KeyArgs,
        /// The new key source.
        #[arg(long, value_enum)]
        key_source: Option<config::KeySource>,
        /// The new key file (key-file source) [default: the current one, else
        /// $XDG_CONFIG_HOME/omemod/omemod.key].
        #[arg(long, value_name = "PATH")]
        new_key_file: Option<PathBuf>,
        /// Read the new passphrase (passphrase source) from this file instead of the terminal.
        #[arg(long, value_name = "PATH")]
        new_passphrase_file: Option<PathBuf>,
    },
    /// Create the key file (key-file source) at PATH unless it exists: 32 random bytes, hex,
    /// mode 0600 in a 0700 directory. The systemd unit runs it before its sandbox, which keeps
    /// the home directory read-only.
    KeyFile {
        /// Where [default: $XDG_CONFIG_HOME/omemod/omemod.key].
        path: Option<PathBuf>,
    },
    /// Unlock a daemon whose database's key source is a passphrase (calls `unlock`).
    Unlock {
        /// Read the passphrase from this file instead of the terminal.
        #[arg(long, value_name = "PATH")]
        passphrase_file: Option<PathBuf>,
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
    /// it to another machine, sealed under a passphrase asked for (the other machine's database
    /// has another key). Reads the database directly; safe while the daemon runs. FILE is
    /// created with mode 0600 and must not exist.
    Export {
        /// The account's bare JID.
        #[arg(long)]
        account: String,
        /// Where to write it.
        file: PathBuf,
        #[command(flatten)]
        db: DbArg,
        #[command(flatten)]
        key: KeyArgs,
        /// Read the export's passphrase from this file instead of the terminal.
        #[arg(long, value_name = "PATH", env = "OMEMOD_EXPORT_PASSPHRASE_FILE")]
        export_passphrase_file: Option<PathBuf>,
    },
    /// Add an account exported with `account export` to this machine's database, its secrets
    /// sealed under this database's key, treated as a restored copy (new prekeys, new sessions).
    /// Stop the daemon first (the database must not be in use); then stop using the account on
    /// the old machine.
    Import {
        /// The exported account.
        file: PathBuf,
        #[command(flatten)]
        db: DbArg,
        #[command(flatten)]
        key: KeyArgs,
        /// Read the export's passphrase from this file instead of the terminal.
        #[arg(long, value_name = "PATH", env = "OMEMOD_EXPORT_PASSPHRASE_FILE")]
        export_passphrase_file: Option<PathBuf>,
    },
}

/// `omemod file …`.
#[derive(Debug, Subcommand)]
pub enum FileCommand {
    /// Encrypt IN into OUT, the file to upload (IN's size + 16 bytes). Prints the upload size,
    /// the key as the link's fragment and, with --url, the `aesgcm://` link to send once OUT is
    /// uploaded there.
    Encrypt {
        /// The file to send.
        input: PathBuf,
        /// Where to write the encrypted file; must not exist.
        output: PathBuf,
        /// The upload slot's HTTPS GET URL (XEP-0363), to print the link.
        #[arg(long)]
        url: Option<String>,
    },
    /// Decrypt the downloaded file IN into OUT with the key of LINK: an `aesgcm://` link, an
    /// `https://…#key` link, or the key fragment alone. OUT appears only once the whole file
    /// authenticated and was decrypted.
    Decrypt {
        /// The link (or its key fragment).
        link: String,
        /// The downloaded file.
        input: PathBuf,
        /// Where to write the plaintext; must not exist.
        output: PathBuf,
    },
}

/// The database of an offline command.
#[derive(Debug, Args)]
pub struct DbArg {
    /// The SQLite database [default: the database of the daemon answering on the socket, else
    /// `db` of the config file, else the default database of `serve`; refused when a socket was
    /// named (--socket, OMEMOD_SOCKET, the config file) but no daemon answers there].
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
}

/// How an offline command gets the database's key: the source recorded in the database, from
/// the key file recorded there (or this one), `$CREDENTIALS_DIRECTORY`, or a passphrase.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// The key file [default: the one the database records].
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// Read the database's passphrase (passphrase source) from this file instead of the
    /// terminal.
    #[arg(long, value_name = "PATH")]
    pub passphrase_file: Option<PathBuf>,
}

impl KeyArgs {
    fn settings(&self) -> crate::storage::KeySettings {
        crate::storage::KeySettings {
            key_file: self.key_file.clone(),
            ..crate::storage::KeySettings::from_env()
        }
    }

    /// Runs `f` with the database's key settings; when the database's key is a passphrase,
    /// reads it (the file, else the terminal, else standard input) and runs `f` again.
    fn with_key<T>(
        &self,
        mut f: impl FnMut(&crate::storage::KeySettings) -> Result<T, crate::storage::StorageError>,
    ) -> Result<T, String> {
        let mut keys = self.settings();
        if let Some(file) = &self.passphrase_file {
            keys.passphrase = Some(read_passphrase(Some(file), "")?);
        }
        match f(&keys) {
            Err(crate::storage::StorageError::Key(
                crate::storage::sealing::keys::KeyError::NeedPassphrase,
            )) if keys.passphrase.is_none() => {
                keys.passphrase = Some(read_passphrase(None, "passphrase of the database: ")?);
                f(&keys).map_err(|e| e.to_string())
            }
            r => r.map_err(|e| e.to_string()),
        }
    }
}

/// A passphrase: the first line of `file`, else typed at the terminal (not echoed), else the
/// first line of standard input.
fn read_passphrase(
    file: Option<&std::path::Path>,
    prompt: &str,
) -> Result<zeroize::Zeroizing<String>, String> {
    use std::io::BufRead;
    let line = |text: &str| zeroize::Zeroizing::new(text.lines().next().unwrap_or("").to_owned());
    if let Some(file) = file {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?,
        );
        return Ok(line(&text));
    }
    let stdin = std::io::stdin();
    let tty = rustix::termios::isatty(&stdin);
    let old = if tty {
        eprint!("{prompt}");
        let old = rustix::termios::tcgetattr(&stdin).map_err(|e| e.to_string())?;
        let mut quiet = old.clone();
        quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &quiet)
            .map_err(|e| e.to_string())?;
        Some(old)
    } else {
        None
    };
    let mut text = zeroize::Zeroizing::new(String::new());
    let read = stdin.lock().read_line(&mut text);
    if let Some(old) = old {
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &old);
        eprintln!();
    }
    read.map_err(|e| format!("cannot read the passphrase: {e}"))?;
    let pass = line(&text);
    if pass.is_empty() {
        return Err("no passphrase given".into());
    }
    Ok(pass)
}

/// Where the command line, the environment and the config file point: the daemon's socket and
/// the database of the offline commands.
struct Pointers {
    socket: PathBuf,
    /// What named the socket (`--socket`, `OMEMOD_SOCKET`, the config file); `None`: the default.
    socket_from: Option<String>,
    /// The config file's `db`, and the file.
    file_db: Option<PathBuf>,
    config: PathBuf,
}

/// The database an offline command works on, and why that one.
struct ChosenDb {
    path: PathBuf,
    why: String,
}

impl DbArg {
    /// `--db`, else the database of the daemon answering on the socket, else the config file's,
    /// else the default database — unless the socket was named and nothing answers there: the
    /// database meant is then unknown, and the default may be another user's of the machine
    /// (a private daemon's), so the command is refused with the flag to pass.
    fn choose(&self, at: &Pointers) -> Result<ChosenDb, String> {
        if let Some(db) = &self.db {
            return Ok(ChosenDb {
                path: db.clone(),
                why: "given with --db".into(),
            });
        }
        let socket = at.socket.display();
        let served = request(&at.socket, "status", json!({}))
            .ok()
            .and_then(|v| v.get("db").and_then(Value::as_str).map(PathBuf::from));
        if let Some(db) = served {
            return Ok(ChosenDb {
                path: db,
                why: format!("the database of the daemon on {socket}"),
            });
        }
        if let Some(db) = &at.file_db {
            return Ok(ChosenDb {
                path: db.clone(),
                why: format!("`db` of {}", at.config.display()),
            });
        }
        let default = config::default_db_path();
        match &at.socket_from {
            None => Ok(ChosenDb {
                path: default,
                why: "the default database".into(),
            }),
            Some(from) => Err(format!(
                "which database? No daemon answers on {socket} (named by {from}), so the \
                 database it uses is unknown, and {} names none; the default database is {}. \
                 Pass --db PATH (--db {} for the default one)",
                at.config.display(),
                default.display(),
                default.display(),
            )),
        }
    }
}

/// How an account trusts contacts' new keys (`account.create`'s `trust_mode`).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TrustModeArg {
    /// Blind trust before verification: new keys are trusted until you verify one of the
    /// contact's keys; after that they are undecided.
    Btbv,
    /// Trust on first use: a contact's first key is trusted, later ones undecided.
    Tofu,
    /// Every new key is undecided until you decide.
    Manual,
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
    pub stale: crate::config::StaleArgs,
    #[command(flatten)]
    pub bounds: crate::config::BoundsFlags,
    #[command(flatten)]
    pub files: crate::config::FileFlags,
    /// Where the database's data key comes from when it is first sealed [default: `key_source`
    /// of the config file, else the systemd credential `omemod.key` when systemd passes one,
    /// else the Secret Service when one runs unlocked on the session bus, else the key file]. A
    /// database keeps its source: `omemod rekey` changes it.
    #[arg(long, value_enum)]
    pub key_source: Option<config::KeySource>,
    /// The key file of the key-file source [default: `key_file` of the config file, else the one
    /// the database records, else $XDG_CONFIG_HOME/omemod/omemod.key]; never in the database's
    /// directory.
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
}

/// Parses the command line and runs it.
pub fn run() -> ExitCode {
    // Whatever a command creates (database, backup, export, socket) is private to us.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Some(code) = print_generated(&cli.command, &matches) {
        return code;
    }
    let file = match config::FileConfig::load(cli.config.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("omemod: {e}");
            return ExitCode::from(2);
        }
    };
    let config_path = cli
        .config
        .clone()
        .unwrap_or_else(config::default_config_path);
    let socket_from = match (&cli.socket, &file.socket) {
        (Some(_), _) => Some(match matches.value_source("socket") {
            Some(clap::parser::ValueSource::EnvVariable) => "OMEMOD_SOCKET".to_owned(),
            _ => "--socket".to_owned(),
        }),
        (None, Some(_)) => Some(format!("`socket` of {}", config_path.display())),
        (None, None) => None,
    };
    let pointers = Pointers {
        socket: cli
            .socket
            .clone()
            .or_else(|| file.socket.clone())
            .unwrap_or_else(config::default_socket_path),
        socket_from,
        file_db: file.db.clone(),
        config: config_path,
    };
    let socket = pointers.socket.as_path();
    match cli.command {
        Command::Completions { .. } | Command::Man => ExitCode::SUCCESS,
        Command::Serve(args) => serve(socket.to_path_buf(), *args, &file, &pointers.config),
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
        Command::Init {
            jid,
            avoid,
            trust_mode,
        } => call_cli(
            socket,
            "account.create",
            init_params(jid, &avoid, trust_mode),
        ),
        Command::Devices { account, jid, json } => {
            let mut params = with_account(json!({}), account);
            if let Some(j) = jid {
                params["jid"] = json!(j);
            }
            let render = if json { pretty } else { devices_table };
            call_with(socket, "devices.list", params, true, render)
        }
        Command::Status => call_cli(socket, "status", json!({})),
        Command::Fingerprint { account } => {
            call_cli(socket, "fingerprint.get", with_account(json!({}), account))
        }
        Command::Account(cmd) => account_command(&pointers, cmd),
        Command::File(cmd) => file_command(socket, cmd),
        Command::Link { account, no_qr } => link_command(socket, account, !no_qr),
        Command::Verify { account, link } => call_cli(
            socket,
            "link.verify",
            with_account(json!({"link": link}), account),
        ),
        Command::Label { account, label } => call_cli(
            socket,
            "account.set_label",
            with_account(json!({"label": label}), account),
        ),
        Command::Backup { file, db } => with_db(&db, &pointers, "backing up", |db| {
            offline_json(crate::storage::transfer::backup(db, &file))
        }),
        Command::Restore { file, db, key } => with_db(&db, &pointers, "restoring onto", |db| {
            restore(&file, db, &key)
        }),
        Command::Rekey {
            db,
            key,
            key_source,
            new_key_file,
            new_passphrase_file,
        } => with_db(&db, &pointers, "rekeying", |db| {
            rekey(db, &key, key_source, new_key_file, new_passphrase_file)
        }),
        Command::KeyFile { path } => {
            let path = path.unwrap_or_else(crate::storage::sealing::keys::default_key_file);
            offline(
                crate::storage::sealing::keys::ensure_key_file(&path)
                    .map(|()| json!({"key_file": path})),
            )
        }
        Command::Unlock { passphrase_file } => {
            match read_passphrase(passphrase_file.as_deref(), "passphrase of the database: ") {
                Ok(p) => call_cli(socket, "unlock", json!({"passphrase": p.as_str()})),
                Err(e) => {
                    eprintln!("omemod: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Trust {
            account,
            jid,
            fingerprint,
            decision,
        } => trust_command(socket, account, jid, fingerprint.zip(decision)),
    }
}

/// `completions` and `man`, which print what is generated from the command line's definition
/// and need neither daemon nor config: their exit code, `None` for every other command. The
/// global `--socket` and `--config` mean nothing to them: given on their command line, they
/// are refused (from the environment they are ignored).
fn print_generated(command: &Command, matches: &clap::ArgMatches) -> Option<ExitCode> {
    let name = match command {
        Command::Completions { .. } => "completions",
        Command::Man => "man",
        _ => return None,
    };
    for flag in ["socket", "config"] {
        if matches.value_source(flag) == Some(clap::parser::ValueSource::CommandLine) {
            eprintln!(
                "omemod: --{flag} means nothing to `omemod {name}`, which prints what it \
                 prints without a daemon or a config file"
            );
            return Some(ExitCode::from(2));
        }
    }
    match command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "omemod", &mut std::io::stdout());
            Some(ExitCode::SUCCESS)
        }
        Command::Man => {
            let page = manual::render(&<Cli as clap::CommandFactory>::command());
            Some(match std::io::stdout().lock().write_all(page.as_bytes()) {
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

/// `link`: our verification link, drawn as a QR code (unless `qr` is false), and our
/// fingerprint as Conversations, Dino and Gajim display it.
fn link_command(socket: &std::path::Path, account: Option<String>, qr: bool) -> ExitCode {
    let link = omemod_client::blocking::Client::connect(socket).and_then(|mut c| {
        c.set_account(account);
        c.block_on(c.get_ref().link())
    });
    let link = match link {
        Ok(l) => l,
        Err(e) => return report_error("link.get", e, true),
    };
    let mut out = std::io::stdout().lock();
    if qr {
        match qr_code(&link.link) {
            Some(code) => {
                let _ = writeln!(out, "{code}");
            }
            None => eprintln!("omemod: the link is too long for a QR code; share it as text"),
        }
    }
    let _ = writeln!(out, "{}\n", link.link);
    let _ = writeln!(
        out,
        "{} (device {}):",
        link.jid,
        link.devices.first().map_or(0, |d| d.device_id)
    );
    let f = &link.fingerprints;
    let _ = writeln!(out, "  Conversations: {}", f.conversations);
    let _ = writeln!(
        out,
        "  Dino:  {}",
        f.dino.replace('\u{a0}', " ").replace('\n', "\n         ")
    );
    let _ = writeln!(out, "  Gajim: {}", f.gajim.replace('\n', "\n         "));
    for d in link.devices.iter().skip(1) {
        let _ = writeln!(
            out,
            "also our verified device {}: {}",
            d.device_id, d.fingerprint
        );
    }
    ExitCode::SUCCESS
}

/// `text` as a QR code of half-height block characters, light modules drawn (for terminals
/// with a dark background), with its quiet zone; `None` if it does not fit in a QR code.
fn qr_code(text: &str) -> Option<String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    Some(
        code.render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .build(),
    )
}

/// Runs an offline command on the database `db` chooses (said on stderr, and as `db` and
/// `db_from` in the printed result), or says why none was chosen (exit code 2).
fn with_db(
    db: &DbArg,
    at: &Pointers,
    doing: &str,
    command: impl FnOnce(&std::path::Path) -> Result<Value, String>,
) -> ExitCode {
    let chosen = match db.choose(at) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("omemod: {e}");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "omemod: {doing} database {} ({})",
        chosen.path.display(),
        chosen.why
    );
    let result = command(&chosen.path).map(|mut v| {
        if let Some(obj) = v.as_object_mut() {
            obj.insert("db".into(), json!(chosen.path));
            obj.insert("db_from".into(), json!(chosen.why));
        }
        v
    });
    offline(result)
}

/// An offline command's result as JSON, its error as text.
fn offline_json<T: serde::Serialize, E: std::fmt::Display>(
    r: Result<T, E>,
) -> Result<Value, String> {
    r.map_err(|e| e.to_string())
        .and_then(|v| serde_json::to_value(v).map_err(|e| e.to_string()))
}

fn account_command(at: &Pointers, cmd: AccountCommand) -> ExitCode {
    let socket = at.socket.as_path();
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
        AccountCommand::Export {
            account,
            file,
            db,
            key,
            export_passphrase_file,
        } => {
            let jid = crate::storage::jids::normalise(&account).unwrap_or(account);
            with_db(&db, at, "exporting from", |db| {
                let pass = read_passphrase(
                    export_passphrase_file.as_deref(),
                    "passphrase for the export: ",
                )?;
                key.with_key(|keys| {
                    crate::storage::transfer::export_account_to(db, &jid, &file, keys, &pass)
                })
                .map(|rows| json!({"account": jid, "file": file, "rows": rows, "sealed": true}))
            })
        }
        AccountCommand::Import {
            file,
            db,
            key,
            export_passphrase_file,
        } => with_db(&db, at, "importing into", |db| {
            import(&file, db, &key, export_passphrase_file.as_deref())
        }),
    }
}

/// `file encrypt` and `file decrypt`: the file passes through the blocking client in chunks;
/// the output is written to a hidden file beside OUT and renamed to OUT only on success.
fn file_command(socket: &std::path::Path, cmd: FileCommand) -> ExitCode {
    let (method, input, output) = match &cmd {
        FileCommand::Encrypt { input, output, .. } => ("file.encrypt", input, output),
        FileCommand::Decrypt { input, output, .. } => ("file.decrypt", input, output),
    };
    if output.exists() {
        eprintln!("omemod: {} exists; not overwriting it", output.display());
        return ExitCode::from(1);
    }
    let mut input = match std::fs::File::open(input) {
        Ok(f) => std::io::BufReader::new(f),
        Err(e) => {
            eprintln!("omemod: cannot read {}: {e}", input.display());
            return ExitCode::from(1);
        }
    };
    let client = match omemod_client::blocking::Client::connect(socket) {
        Ok(c) => c,
        Err(e) => return report_error(method, e, true),
    };
    let mut progress = progress_meter();
    let done = write_beside(output, |out| match &cmd {
        FileCommand::Encrypt { url, .. } => {
            let size = input.get_ref().metadata()?.len();
            let sent = client.encrypt_file(&mut input, size, out, url.as_deref(), &mut progress)?;
            let mut v = json!({"output": output, "upload_size": sent.upload_size,
                "fragment": sent.fragment});
            if let Some(link) = sent.link {
                v["link"] = json!(link);
            }
            Ok(v)
        }
        FileCommand::Decrypt { link, .. } => {
            let key = omemod_client::files::FileKey::guess(link);
            let size = client.decrypt_file(key, &mut input, out, &mut progress)?;
            Ok(json!({"output": output, "size": size}))
        }
    });
    match done {
        Ok(v) => offline::<_, String>(Ok(v)),
        // Reading IN or writing OUT failed.
        Err(ClientError::Io(e)) => {
            eprintln!("omemod: {method}: {e}");
            ExitCode::from(1)
        }
        Err(e) => report_error(method, e, true),
    }
}

/// Runs `write` on a new hidden file beside `path` (mode 0600 by our umask), then renames it to
/// `path`; on error the hidden file is removed, so nothing half-written is left.
fn write_beside<T>(
    path: &std::path::Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let temp = path.with_file_name(format!(
        ".{}.omemod-{}.partial",
        name.unwrap_or_default(),
        std::process::id()
    ));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)?;
    let mut out = std::io::BufWriter::new(file);
    let result = write(&mut out).and_then(|v| {
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        Ok(v)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Shows a file helper's progress on stderr when it is a terminal (every whole percent).
fn progress_meter() -> impl FnMut(omemod_client::files::Progress) {
    use std::io::IsTerminal;
    let show = std::io::stderr().is_terminal();
    let mut last = None;
    move |p: omemod_client::files::Progress| {
        let percent = (p.done * 100).checked_div(p.total).unwrap_or(100);
        if !show || last == Some((p.stage, percent)) {
            return;
        }
        last = Some((p.stage, percent));
        let what = match p.stage {
            omemod_client::files::Stage::Encrypting => "encrypting",
            omemod_client::files::Stage::Checking => "checking",
            omemod_client::files::Stage::Decrypting => "decrypting",
        };
        let end = if p.done == p.total { "\n" } else { "" };
        eprint!("\romemod: {what} {percent:3} %{end}");
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
fn lock_for_offline_change(db: &std::path::Path) -> Result<crate::lock::DbLock, String> {
    crate::lock::DbLock::acquire(db, None).map_err(|e| e.to_string())
}

fn restore(file: &std::path::Path, db: &std::path::Path, key: &KeyArgs) -> Result<Value, String> {
    let _lock = lock_for_offline_change(db)?;
    key.with_key(|keys| crate::storage::transfer::restore(file, db, keys))
        .and_then(|r| offline_json(Ok::<_, String>(r)))
}

fn rekey(
    db: &std::path::Path,
    key: &KeyArgs,
    source: Option<config::KeySource>,
    new_key_file: Option<PathBuf>,
    new_passphrase_file: Option<PathBuf>,
) -> Result<Value, String> {
    let _lock = lock_for_offline_change(db)?;
    let recorded = crate::storage::recorded_key_source(db)
        .map_err(|e| format!("database {}: {e}", db.display()))?
        .ok_or("the database is not sealed yet: start the daemon once (`omemod serve` seals it)")?;
    let source = source.map_or(recorded.source, Into::into);
    let mut new = crate::storage::KeySettings {
        source: Some(source),
        key_file: new_key_file.or_else(|| {
            (recorded.source == crate::storage::SourceKind::KeyFile)
                .then(|| recorded.source_ref.clone().map(PathBuf::from))
                .flatten()
        }),
        ..crate::storage::KeySettings::from_env()
    };
    if source == crate::storage::SourceKind::Passphrase {
        new.passphrase = Some(read_passphrase(
            new_passphrase_file.as_deref(),
            "new passphrase of the database: ",
        )?);
    }
    key.with_key(|old| crate::storage::rekey(db, old, &new))
        .and_then(|r| offline_json(Ok::<_, String>(r)))
}

fn import(
    file: &std::path::Path,
    db: &std::path::Path,
    key: &KeyArgs,
    export_passphrase_file: Option<&std::path::Path>,
) -> Result<Value, String> {
    let _lock = lock_for_offline_change(db)?;
    let doc: Value = std::fs::read(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", file.display())))?;
    let pass = if crate::storage::transfer::needs_passphrase(&doc) {
        Some(read_passphrase(
            export_passphrase_file,
            "passphrase of the export: ",
        )?)
    } else {
        None
    };
    let store = key.with_key(|keys| {
        crate::storage::Store::open_with(
            db,
            crate::storage::StoreConfig {
                keys: keys.clone(),
                ..crate::storage::StoreConfig::default()
            },
        )
    })?;
    let r = store.write_blocking(move |tx| {
        crate::storage::transfer::import_account(tx, &doc, pass.as_ref().map(|p| p.as_str()))
    });
    let closed = store.close();
    offline_json(r.and_then(|jid| closed.map(|()| json!({"imported": jid}))))
}

/// `account.create`'s params for `init`.
fn init_params(jid: String, avoid: &[u32], trust_mode: Option<TrustModeArg>) -> Value {
    let mut params = json!({"jid": jid, "avoid": avoid});
    if let Some(mode) = trust_mode {
        params["trust_mode"] = json!(match mode {
            TrustModeArg::Btbv => "btbv",
            TrustModeArg::Tofu => "tofu",
            TrustModeArg::Manual => "manual",
        });
    }
    params
}

/// A result as indented JSON.
fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// `devices.list`'s answer as a table, one line per device: this very device marked `*`, the
/// trust level with what made it, stale devices marked, the last message's date (UTC).
fn devices_table(list: &Value) -> String {
    const HEADER: [&str; 9] = [
        "JID",
        "NS",
        "DEVICE",
        "LABEL",
        "ACTIVE",
        "TRUST",
        "STALE",
        "LAST SEEN",
        "FINGERPRINT",
    ];
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let mut rows: Vec<[String; 9]> = vec![HEADER.map(str::to_owned)];
    for d in list.as_array().into_iter().flatten() {
        let ns = match d["namespace"].as_str() {
            Some("urn:xmpp:omemo:2") => "2",
            Some("eu.siacs.conversations.axolotl") => "0.3",
            _ => "?",
        };
        let this = if d["this_device"] == true { " *" } else { "" };
        let trust = match (text(&d["trust"]), text(&d["trust_source"])) {
            (Some(level), Some(source)) => format!("{level} ({source})"),
            (Some(level), None) => level,
            _ => "-".to_owned(),
        };
        let seen = d["last_seen"].as_u64().map_or("never".to_owned(), |t| {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t);
            let stamp = humantime::format_rfc3339_seconds(at).to_string();
            stamp.get(..16).unwrap_or(&stamp).replace('T', " ")
        });
        let yes = |b: &Value| if b == true { "yes" } else { "no" };
        rows.push([
            text(&d["jid"]).unwrap_or_default(),
            ns.to_owned(),
            format!("{}{this}", d["device_id"]),
            text(&d["label"]).unwrap_or_else(|| "-".to_owned()),
            yes(&d["active"]).to_owned(),
            trust,
            yes(&d["stale"]).to_owned(),
            seen,
            text(&d["fingerprint"]).unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    let mut widths = [0usize; 9];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out.pop();
    out
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
        stale: args.stale.resolve(file),
        bounds: args.bounds.resolve(file),
        files: args.files.resolve(file),
        keys: crate::storage::KeySettings {
            source: args.key_source.or(file.key_source).map(Into::into),
            key_file: args.key_file.or_else(|| file.key_file.clone()),
            ..crate::storage::KeySettings::from_env()
        },
    }
}

fn serve(
    socket: PathBuf,
    args: ServeArgs,
    file: &config::FileConfig,
    config_file: &std::path::Path,
) -> ExitCode {
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
            match sandbox_hint(&e, config_file) {
                Some(hint) => tracing::error!("{e}; {hint}"),
                None => tracing::error!("{e}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// Under systemd (`$INVOCATION_ID`), a path the daemon may not write (read-only file system,
/// permission denied) is most likely outside what the unit's sandbox leaves writable
/// (ProtectSystem=strict, ProtectHome=read-only): which paths those are, and what to change.
fn sandbox_hint(
    e: &(dyn std::error::Error + 'static),
    config_file: &std::path::Path,
) -> Option<String> {
    std::env::var_os("INVOCATION_ID")?;
    let denied = std::iter::successors(Some(e), |e| e.source()).any(|e| {
        e.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
            )
        })
    });
    if !denied {
        return None;
    }
    let dir = |p: PathBuf| p.parent().map(std::path::Path::to_path_buf).unwrap_or(p);
    Some(format!(
        "under systemd the unit's sandbox (ProtectSystem=strict, ProtectHome=read-only) lets \
         omemod write only its database directory {} and its socket directory {}: leave `db` \
         and `socket` out of {} (or the flags out of the unit), point them there, or allow the \
         path with ReadWritePaths= (`systemctl --user edit omemod`)",
        dir(config::default_db_path()).display(),
        dir(config::default_socket_path()).display(),
        config_file.display(),
    ))
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
        stale: Default::default(),
        bounds: crate::config::BoundsArgs::default(),
        files: crate::config::FileLimits::default(),
        keys: Default::default(),
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
    call_with(socket, method, params, true, pretty)
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
        "invalid_jid" => Some(format!("{message}; check --jid / --account")),
        _ => None,
    }
}

/// Sends one request, prints the result; exit code 1 on an error answer, 2 when the daemon cannot
/// be reached.
fn call(socket: &std::path::Path, method: &str, params: Value) -> ExitCode {
    call_with(socket, method, params, false, pretty)
}

/// Sends one request and prints its result as `render` shows it.
fn call_with(
    socket: &std::path::Path,
    method: &str,
    params: Value,
    cli: bool,
    render: fn(&Value) -> String,
) -> ExitCode {
    match request(socket, method, params) {
        Ok(result) => {
            // A closed stdout (`| head`) is not an error of the call.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", render(&result));
            ExitCode::SUCCESS
        }
        Err(e) => report_error(method, e, cli),
    }
}

/// Prints why `method` failed: exit code 1 on an error answer, 2 when the daemon cannot be
/// reached. `cli`: errors about params are worded with the command's flags.
fn report_error(method: &str, e: ClientError, cli: bool) -> ExitCode {
    match e {
        ClientError::Rpc(e) => {
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
        e @ ClientError::Trust(_) => {
            eprintln!("omemod: {e}; not connecting (is `omemod serve` running?)");
            ExitCode::from(2)
        }
        e @ ClientError::Connect { .. } => {
            eprintln!("omemod: {e} (is `omemod serve` running?)");
            ExitCode::from(2)
        }
        e => {
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
