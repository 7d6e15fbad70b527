//! An omemod client in Rust, on the `omemod_client` library of this crate. [`HELP`] is its
//! manual (`omemod-client --help`).

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use omemod_client::{
    default_socket_path, Client, DecryptRequest, EncryptRequest, Error, Event, NAMESPACES,
};

const USAGE: &str = "usage: omemod-client [--socket PATH] [--account JID] \
                     status|publish-info|encrypt|decrypt|events [OPTIONS] (--help: all of it)";

/// What `--help` prints.
const HELP: &str = "\
An omemod client in Rust, on the omemod_client library (client-examples/rust).

usage: omemod-client [--socket PATH] [--account JID] COMMAND [ARGS]

  status                                   the daemon, its accounts, and ours
  publish-info                             what to publish to PEP, for both namespaces
  encrypt --to JID [--to JID…] --body TEXT [--namespace NS] [--room ROOM]
                                           one <encrypted> element per line
  decrypt --from JID --xml FILE|- [--to JID] [--group-chat]   the body (sender on stderr)
  events [--count N]                       subscribe and print events as they come

Socket: --socket, else $OMEMOD_SOCKET, else $XDG_RUNTIME_DIR/omemod/omemod.sock, else
/run/user/<uid>/omemod/omemod.sock when /run/user/<uid> exists, else
/tmp/omemod-<uid>/omemod.sock (the same rule as `omemod serve`).
Account: --account, else $OMEMOD_ACCOUNT, else the daemon's only account; never created here
(`omemod init --jid you@example.org` does that).
Exit codes: 0 success, 1 the daemon answered with an error, 2 usage error or no daemon.
";

/// The command line: global options, the command, and its `--key value` options.
struct Args {
    socket: Option<PathBuf>,
    account: Option<String>,
    command: String,
    /// Every `--to`, in order.
    to: Vec<String>,
    opts: HashMap<String, String>,
}

/// The command line, or `None` for `--help`.
fn parse_args() -> Result<Option<Args>, String> {
    let mut socket = None;
    let mut account = std::env::var("OMEMOD_ACCOUNT")
        .ok()
        .filter(|a| !a.is_empty());
    let mut command = None;
    let mut to = Vec::new();
    let mut opts = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if arg == "--help" || arg == "-h" {
            return Ok(None);
        }
        let Some(name) = arg.strip_prefix("--") else {
            if command.replace(arg).is_some() {
                return Err(USAGE.into());
            }
            continue;
        };
        if name == "group-chat" {
            opts.insert(name.to_owned(), String::new());
            continue;
        }
        let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
        match name {
            "socket" => socket = Some(PathBuf::from(value)),
            "account" => account = Some(value),
            "to" => to.push(value),
            "body" | "namespace" | "room" | "from" | "xml" | "count" => {
                opts.insert(name.to_owned(), value);
            }
            _ => return Err(format!("unknown option --{name}")),
        }
    }
    let command = command.ok_or_else(|| USAGE.to_owned())?;
    Ok(Some(Args {
        socket,
        account,
        command,
        to,
        opts,
    }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let path = args.socket.clone().unwrap_or_else(default_socket_path);
    let mut client = match Client::connect(&path).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "cannot use omemod's socket {}: {e} (is `omemod serve` running?)",
                path.display()
            );
            return ExitCode::from(2);
        }
    };
    client.set_account(args.account.clone());
    match run(&client, &args).await {
        Ok(code) => ExitCode::from(code),
        Err(Failure::Usage(msg)) => {
            eprintln!("{msg}");
            ExitCode::from(2)
        }
        Err(Failure::Client(e @ Error::Rpc(_))) => {
            eprintln!(
                "error: {}",
                explain(&client, &e, args.account.as_deref()).await
            );
            ExitCode::from(1)
        }
        Err(Failure::Client(e @ Error::EnvelopeMismatch { .. })) => {
            eprintln!("refused: {e}");
            ExitCode::from(1)
        }
        Err(Failure::Client(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Why a command failed: a usage error, or the client's error.
enum Failure {
    Usage(String),
    Client(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Client(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Client(Error::Io(e))
    }
}

fn opt<'a>(args: &'a Args, name: &str) -> Result<&'a str, Failure> {
    args.opts
        .get(name)
        .map(String::as_str)
        .ok_or_else(|| Failure::Usage(format!("{} needs --{name}", args.command)))
}

async fn run(client: &Client, args: &Args) -> Result<u8, Failure> {
    match args.command.as_str() {
        "status" => {
            // Independent requests can be in flight together on one connection.
            let (status, accounts) = tokio::try_join!(client.status(), client.accounts())?;
            println!(
                "omemod {} (pid {}) on {}",
                status.version, status.pid, status.socket
            );
            for a in accounts {
                println!("account {} device {}", a.jid, a.device_id);
            }
            let me = client.me().await?;
            println!(
                "using {} device {} fingerprint {}",
                me.jid, me.device_id, me.fingerprint
            );
        }
        "publish-info" => {
            // Before publishing a device list, fetch the one on the server and hand it to
            // devicelist_update (jid = our own JID), or publishing ours drops our other devices.
            for ns in NAMESPACES {
                for (what, item) in [
                    ("devicelist", client.devicelist(ns).await?),
                    ("bundle", client.bundle(ns).await?),
                ] {
                    let opts: Vec<String> = item
                        .publish_options
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    println!(
                        "{} {what}: node {} item {} options {}",
                        item.namespace,
                        item.node,
                        item.item_id,
                        opts.join(", ")
                    );
                    println!("  {}", item.xml);
                }
            }
        }
        "encrypt" => {
            let to: Vec<&str> = args.to.iter().map(String::as_str).collect();
            if to.is_empty() {
                return Err(Failure::Usage("encrypt needs --to".into()));
            }
            let ns = args.opts.get("namespace").map(|n| [n.as_str()]);
            let sent = client
                .encrypt(&EncryptRequest {
                    to: &to,
                    body: opt(args, "body")?,
                    namespaces: ns.as_ref().map(|n| &n[..]),
                    // A group chat: `to` lists the members' real JIDs, the envelope names the room.
                    sce_to: args.opts.get("room").map(String::as_str),
                })
                .await;
            let r = match sent {
                Ok(r) => r,
                Err(e) => {
                    // No device of the recipients could get it: say why for each.
                    let Some((devices, actions)) = e.unreached() else {
                        return Err(e.into());
                    };
                    for d in &devices {
                        let why = d.reason.as_deref().unwrap_or(&d.status);
                        eprintln!("{} device {} [{}]: {why}", d.jid, d.device_id, d.namespace);
                    }
                    show_actions(&actions);
                    eprintln!("nothing to send: no device of the contact could be encrypted for");
                    return Ok(1);
                }
            };
            for d in &r.devices {
                let note = d
                    .reason
                    .as_ref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                eprintln!(
                    "{} device {} [{}]: {}{note}",
                    d.jid, d.device_id, d.namespace, d.status
                );
            }
            show_actions(&r.actions);
            if r.messages.is_empty() {
                eprintln!("nothing to send: no device of the contact could be encrypted for");
                return Ok(1);
            }
            // Each element goes into a <message type='chat' to=JID>, next to a fallback <body>,
            // an EME hint (urn:xmpp:eme:0) and <store xmlns='urn:xmpp:hints'/>: docs/clients.md.
            for m in &r.messages {
                println!("{}", m.xml);
            }
        }
        "decrypt" => {
            let from = opt(args, "from")?;
            let file = opt(args, "xml")?;
            let mut xml = String::new();
            if file == "-" {
                std::io::stdin().read_to_string(&mut xml)?;
            } else {
                xml = std::fs::read_to_string(file)?;
            }
            // Where the stanza was addressed: us (default) or a room (--to ROOM --group-chat).
            if args.to.len() > 1 {
                return Err(Failure::Usage("decrypt takes at most one --to".into()));
            }
            let to = match (args.to.first(), &args.account) {
                (Some(to), _) | (None, Some(to)) => to.clone(),
                (None, None) => client.me().await?.jid,
            };
            let r = client
                .decrypt(&DecryptRequest {
                    from,
                    xml: xml.trim(),
                    to: &to,
                    group_chat: args.opts.contains_key("group-chat"),
                })
                .await?;
            let mut extra = String::new();
            if r.key_exchange {
                extra.push_str(" key exchange");
            }
            if r.redelivered {
                let at = r.first_decrypted_at.unwrap_or(0);
                extra.push_str(&format!(" redelivered (first at {at})"));
            }
            if r.own {
                // Sent by this very device (a carbon, the room's reflection, the archive).
                let at = r.sent_at.unwrap_or(0);
                extra.push_str(&format!(" own (sent at {at})"));
            }
            let s = &r.sender;
            eprintln!(
                "from {} device {} [{}] trust {}{extra}",
                s.jid, s.device_id, r.namespace, s.trust
            );
            show_actions(&r.actions);
            if r.empty {
                eprintln!("(empty message: nothing to show)");
            } else {
                println!("{}", r.body.unwrap_or_default());
            }
        }
        "events" => {
            let count: Option<usize> = match args.opts.get("count") {
                Some(c) => Some(
                    c.parse()
                        .map_err(|_| Failure::Usage(format!("--count {c}: not a number")))?,
                ),
                None => None,
            };
            let mut events = client.take_events().ok_or(Error::Closed)?;
            let id = client.subscribe().await?;
            println!("subscribed ({id}); waiting for events");
            let mut seen = 0;
            while count != Some(seen) {
                let e = events.recv().await.ok_or(Error::Closed)?;
                let note = if e.in_answer {
                    " (the caller does it)"
                } else {
                    ""
                };
                println!("{}{note}", e.event);
                seen += 1;
            }
        }
        other => return Err(Failure::Usage(format!("unknown command {other}\n{USAGE}"))),
    }
    Ok(0)
}

fn show_actions(actions: &[Event]) {
    for a in actions {
        eprintln!("then: {a}");
    }
}

/// A friendly message for the errors a user can act on, chosen by `data.kind`.
async fn explain(client: &Client, e: &Error, account: Option<&str>) -> String {
    match e.kind().unwrap_or("") {
        "account_required" => {
            let jids: Vec<String> = client
                .accounts()
                .await
                .map(|v| v.into_iter().map(|a| a.jid).collect())
                .unwrap_or_default();
            if jids.is_empty() {
                "omemod has no account yet: create one with `omemod init --jid you@example.org`"
                    .into()
            } else {
                format!(
                    "omemod has several accounts ({}): choose one with --account JID or OMEMOD_ACCOUNT=JID",
                    jids.join(", ")
                )
            }
        }
        "unknown_account" => format!(
            "omemod has no account {}: see `omemod call account.list`",
            account.unwrap_or("?")
        ),
        "duplicate_message" => {
            "this message was already decrypted (a replay or a second delivery)".into()
        }
        "not_for_this_device" => "this message is not encrypted for our device".into(),
        "no_session" | "broken_session" => {
            "no usable session with the sender: ask them to resend, or call session.replace".into()
        }
        "distrusted" => "the sender's key is distrusted: the message was refused".into(),
        _ => e.to_string(),
    }
}
