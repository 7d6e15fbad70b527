//! `omemod man`: one manual page (roff) for the whole command line. The commands, their
//! flags, arguments, values and defaults are read off the command line's definition (clap's
//! `Command` tree), so none can be missing or stale; what clap does not know — the files, the
//! environment, the exit status, examples — is written here.

use clap::{Arg, Command};
use roff::{bold, italic, roman, Inline, Roff};

/// The page, as `man -l -` reads it.
pub fn render(cli: &Command) -> String {
    let mut page = Roff::new();
    let version = cli.get_version().unwrap_or_default();
    // No date: the page is as old as the binary, which says its version.
    page.control(
        "TH",
        [
            "OMEMOD",
            "1",
            " ",
            &format!("omemod {version}"),
            "User Commands",
        ],
    );
    page.control("SH", ["NAME"]);
    let about = cli.get_about().map(|a| a.to_string()).unwrap_or_default();
    let about = about.strip_prefix("omemod: ").unwrap_or(&about);
    page.text([roman(format!("omemod - {about}"))]);

    page.control("SH", ["SYNOPSIS"]);
    for (i, line) in SYNOPSIS.iter().enumerate() {
        if i > 0 {
            page.control("br", []);
        }
        page.text([bold("omemod"), roman(format!(" {line}"))]);
    }

    page.control("SH", ["DESCRIPTION"]);
    paragraphs(&mut page, DESCRIPTION);

    page.control("SH", ["GLOBAL OPTIONS"]);
    page.text([roman(
        "Before or after the command; not taken by man and completions, which need neither.",
    )]);
    for arg in cli.get_arguments().filter(|a| a.is_global_set()) {
        option(&mut page, arg);
    }
    page.control("TP", []);
    page.text([bold("-h"), roman(", "), bold("--help")]);
    page.text([roman(
        "Print the help of omemod or of a command (a summary with -h).",
    )]);
    page.control("TP", []);
    page.text([bold("-V"), roman(", "), bold("--version")]);
    page.text([roman("Print the version.")]);

    page.control("SH", ["COMMANDS"]);
    for sub in cli.get_subcommands() {
        command(&mut page, sub, "omemod");
    }

    for (title, text) in [
        ("FILES", FILES),
        ("ENVIRONMENT", ENVIRONMENT),
        ("EXIT STATUS", EXIT_STATUS),
    ] {
        page.control("SH", [title]);
        entries(&mut page, text);
    }
    page.control("SH", ["EXAMPLES"]);
    examples(&mut page);
    page.control("SH", ["SEE ALSO"]);
    paragraphs(&mut page, SEE_ALSO);
    page.render()
}

/// One command (and its subcommands): `.SS omemod PATH`, its synopsis, what it does, its
/// arguments and flags.
fn command(page: &mut Roff, cmd: &Command, parent: &str) {
    let path = format!("{parent} {}", cmd.get_name());
    let args: Vec<&Arg> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_global_set())
        .collect();
    page.control("SS", [path.as_str()]);
    let mut synopsis = vec![bold(path.clone())];
    if cmd.has_subcommands() {
        synopsis.push(roman(" "));
        synopsis.push(italic("COMMAND"));
    }
    for a in &args {
        synopsis.push(roman(" "));
        synopsis.extend(usage(a));
    }
    page.text(synopsis);
    page.control("PP", []);
    let about = cmd
        .get_long_about()
        .or_else(|| cmd.get_about())
        .map(|a| a.to_string())
        .unwrap_or_default();
    page.text([roman(about)]);
    for a in args {
        option(page, a);
    }
    for sub in cmd.get_subcommands() {
        command(page, sub, &path);
    }
}

/// How an argument is written in a synopsis: `[--db PATH]`, `--jid JID`, `FILE`, `[PARAMS]`.
fn usage(arg: &Arg) -> Vec<Inline> {
    let mut out = Vec::new();
    let optional = !arg.is_required_set();
    if optional {
        out.push(roman("["));
    }
    match arg.get_long() {
        Some(long) => {
            out.push(bold(format!("--{long}")));
            if takes_value(arg) {
                out.push(roman(" "));
                out.push(italic(value_name(arg)));
            }
        }
        None => out.push(italic(value_name(arg))),
    }
    if optional {
        out.push(roman("]"));
    }
    out
}

/// A `.TP` entry: the flag or argument, then its help, values, environment variable.
fn option(page: &mut Roff, arg: &Arg) {
    page.control("TP", []);
    let mut head = usage(arg);
    if !arg.is_required_set() {
        // Brackets belong in a synopsis, not in front of a description.
        head.remove(0);
        head.pop();
    }
    page.text(head);
    let mut help = arg
        .get_long_help()
        .or_else(|| arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default();
    let values: Vec<String> = possible_values(arg)
        .map(|v| match v.get_help() {
            Some(h) => format!("{} ({h})", v.get_name()),
            None => v.get_name().to_owned(),
        })
        .collect();
    if !values.is_empty() {
        help.push_str(&format!(". One of: {}", values.join("; ")));
    }
    if let Some(env) = arg.get_env() {
        help.push_str(&format!(". Also ${}", env.to_string_lossy()));
    }
    page.text([roman(help)]);
}

/// The values an argument takes, when it names them (not a flag's true and false).
fn possible_values(arg: &Arg) -> impl Iterator<Item = clap::builder::PossibleValue> {
    let values = if takes_value(arg) {
        arg.get_possible_values()
    } else {
        Vec::new()
    };
    values.into_iter().filter(|v| !v.is_hide_set())
}

fn takes_value(arg: &Arg) -> bool {
    arg.get_action().takes_values()
}

fn value_name(arg: &Arg) -> String {
    arg.get_value_names()
        .and_then(|v| v.first())
        .map(ToString::to_string)
        .unwrap_or_else(|| arg.get_id().as_str().to_uppercase())
}

/// Blank-line separated paragraphs.
fn paragraphs(page: &mut Roff, text: &str) {
    for (i, p) in text.split("\n\n").enumerate() {
        if i > 0 {
            page.control("PP", []);
        }
        page.text([roman(p.replace('\n', " "))]);
    }
}

/// `term: description` lines, one `.TP` entry each.
fn entries(page: &mut Roff, text: &str) {
    for line in text.lines() {
        let (term, what) = line.split_once(": ").unwrap_or((line, ""));
        page.control("TP", []);
        page.text([bold(term)]);
        page.text([roman(what)]);
    }
}

fn examples(page: &mut Roff) {
    for (what, commands) in EXAMPLES {
        page.control("PP", []);
        page.text([roman(*what)]);
        page.control("PP", []);
        page.control("RS", ["4"]);
        page.control("nf", []);
        for c in *commands {
            page.text([roman(*c)]);
        }
        page.control("fi", []);
        page.control("RE", []);
    }
}

const SYNOPSIS: &[&str] = &[
    "[--socket PATH] [--config PATH] serve [OPTIONS]",
    "[--socket PATH] [--config PATH] COMMAND [OPTIONS] [ARGUMENTS]",
    "man | completions SHELL",
];

const DESCRIPTION: &str = "\
omemod is a local daemon that owns one user's OMEMO devices (XEP-0384: OMEMO 2 and OMEMO 0.3 \
at once): identity keys, prekeys, sessions, device lists, bundles and trust decisions, in one \
SQLite file. omemod serve runs it and answers JSON-RPC 2.0, one object per line, on a Unix \
socket that only processes of the same uid may use. It does not speak XMPP: clients move the \
stanzas and tell it what they received.

The other commands are its command-line clients. call, status, init, fingerprint, trust, \
openrpc, account list and account delete send requests to the daemon on the socket and print \
the result as JSON on standard output (errors on standard error). backup, restore, account \
export and account import work on the database file itself; each says on standard error which \
database it uses and why, and its result names it (db, db_from). man and completions print \
what they print without a daemon.

Settings come from flags, else the config file (TOML, the keys of the serve flags with _ for \
-, and socket), else the defaults below.";

const FILES: &str = "\
$XDG_CONFIG_HOME/omemod/config.toml: the config file (default ~/.config/omemod/config.toml); --config or $OMEMOD_CONFIG name another one, which must then exist.
$XDG_STATE_HOME/omemod/omemod.db: the database (default ~/.local/state/omemod/omemod.db, mode 0600); $STATE_DIRECTORY/omemod.db under a systemd unit with StateDirectory=; --db or db in the config file name another one.
<db>-wal, <db>-shm: SQLite's write-ahead log and its index, beside the database; part of it while the daemon runs (omemod backup takes a consistent copy).
<db>.lock: the lock that keeps a second daemon (or an offline command) off a database in use, with the holder's pid and socket.
<db>.before-restore-<time>: the database omemod restore replaced, kept beside it.
$XDG_RUNTIME_DIR/omemod/omemod.sock: the socket (mode 0600, in a 0700 directory); $RUNTIME_DIRECTORY/omemod.sock under a systemd unit with RuntimeDirectory=; /run/user/<uid>/omemod/omemod.sock without $XDG_RUNTIME_DIR when /run/user/<uid> exists, else /tmp/omemod-<uid>/omemod.sock; --socket, $OMEMOD_SOCKET or socket in the config file name another one.
omemod.service, omemod.socket: the systemd user units (systemd/ in the source); the service's sandbox lets the daemon write only its state and runtime directories.";

const ENVIRONMENT: &str = "\
OMEMOD_SOCKET: the socket, as --socket.
OMEMOD_CONFIG: the config file, as --config.
XDG_CONFIG_HOME, XDG_STATE_HOME, XDG_RUNTIME_DIR, HOME: where the config file, the database and the socket are by default (XDG base directory specification; relative paths are ignored).
STATE_DIRECTORY, RUNTIME_DIRECTORY: set by systemd (StateDirectory=, RuntimeDirectory=); the default database and socket go there.
LISTEN_FDS, LISTEN_PID: set by systemd socket activation; serve then uses the socket it is handed.
NOTIFY_SOCKET: set by systemd; serve reports READY=1 and STOPPING=1 there.
INVOCATION_ID: set by systemd for a unit; a file-system error (read-only, permission denied) then names the directories the unit lets the daemon write.
JOURNAL_STREAM: set by systemd when standard error is the journal; logs then go to journald with priorities.
RUST_LOG: the log level or filter of serve (default info); no level logs message bodies or key material.";

const EXIT_STATUS: &str = "\
0: success.
1: the daemon answered with an error, or an offline command or serve failed (the reason is on standard error).
2: the command line or the config file is invalid, the daemon cannot be reached (is omemod serve running?), an offline command does not know which database to use, or a confirmation (--yes) is missing.";

const EXAMPLES: &[(&str, &[&str])] = &[
    (
        "Start the daemon, create the account and show its fingerprint:",
        &[
            "omemod serve &",
            "omemod init --jid you@example.org",
            "omemod fingerprint",
        ],
    ),
    (
        "Call a method with params, from the command line or standard input:",
        &[
            "omemod call bundle.get '{\"namespace\": \"urn:xmpp:omemo:2\"}'",
            "echo '{\"jid\": \"bob@example.org\"}' | omemod call trust.list -",
        ],
    ),
    (
        "A private daemon beside the default one, its own socket and database:",
        &[
            "omemod --socket /tmp/t/omemod.sock serve --db /tmp/t/omemod.db",
            "OMEMOD_SOCKET=/tmp/t/omemod.sock omemod status",
        ],
    ),
    (
        "Back up while the daemon runs; restore once it is stopped:",
        &[
            "omemod backup ~/omemod-backup.db",
            "omemod restore ~/omemod-backup.db --db ~/.local/state/omemod/omemod.db",
        ],
    ),
    (
        "Trust a contact's key, after comparing fingerprints:",
        &[
            "omemod trust --jid bob@example.org",
            "omemod trust --jid bob@example.org --fingerprint '<as listed>' trusted",
        ],
    ),
    (
        "Read this page, and install bash completions:",
        &[
            "omemod man | man -l -",
            "omemod completions bash > ~/.local/share/bash-completion/completions/omemod",
        ],
    ),
];

const SEE_ALSO: &str = "\
docs/rpc.md (every method, error and event of the JSON-RPC interface) and docs/clients.md (how \
to write a client) in the source; omemod openrpc prints the OpenRPC document of the methods. \
systemd.exec(5) for the unit's sandbox.";

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The page's text as a reader sees it: roff escapes undone, fonts dropped.
    fn plain(roff: &str) -> String {
        roff.replace("\\fB", "")
            .replace("\\fI", "")
            .replace("\\fR", "")
            .replace("\\-", "-")
            .replace("\\(aq", "'")
            .replace("\\*(Aq", "'")
            .replace("\\&", "")
            .replace("\\\\", "\\")
    }

    /// Every command below `cmd` with its path (`omemod account export`).
    fn walk<'c>(cmd: &'c Command, path: &str, out: &mut Vec<(String, &'c Command)>) {
        for sub in cmd.get_subcommands() {
            let p = format!("{path} {}", sub.get_name());
            out.push((p.clone(), sub));
            walk(sub, &p, out);
        }
    }

    #[test]
    fn every_subcommand_flag_and_value_is_in_the_manual() {
        let cli = crate::cli::Cli::command();
        let page = plain(&render(&cli));
        // Each command's own section, up to the next one.
        let section = |path: &str| -> &str {
            let head = format!(".SS \"{path}\"\n");
            let head = if page.contains(&head) {
                head
            } else {
                format!(".SS {path}\n")
            };
            let start = page
                .find(&head)
                .unwrap_or_else(|| panic!("no section for {path}"));
            let rest = &page[start + head.len()..];
            let end = [rest.find(".SS "), rest.find(".SH ")]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(rest.len());
            &rest[..end]
        };
        let mut commands = Vec::new();
        walk(&cli, "omemod", &mut commands);
        let mut flags = 0;
        for (path, cmd) in &commands {
            let text = section(path);
            if let Some(about) = cmd.get_about() {
                let about = plain(&about.to_string().replace('-', "\\-"));
                assert!(text.contains(&about), "{path}: {about}");
            }
            for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
                let shown = match arg.get_long() {
                    Some(long) => format!("--{long}"),
                    None => value_name(arg),
                };
                assert!(text.contains(&shown), "{path}: {shown} missing");
                for v in possible_values(arg) {
                    assert!(
                        text.contains(v.get_name()),
                        "{path} {shown}: {}",
                        v.get_name()
                    );
                }
                flags += 1;
            }
        }
        assert!(commands.len() >= 16, "only {} commands", commands.len());
        assert!(flags >= 30, "only {flags} flags and arguments");
        for global in cli.get_arguments().filter(|a| a.is_global_set()) {
            let long = global.get_long().unwrap_or_default();
            assert!(page.contains(&format!("--{long}")), "--{long}");
        }
        for title in [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "GLOBAL OPTIONS",
            "COMMANDS",
            "FILES",
            "ENVIRONMENT",
            "EXIT STATUS",
            "EXAMPLES",
        ] {
            let head = if title.contains(' ') {
                format!(".SH \"{title}\"\n")
            } else {
                format!(".SH {title}\n")
            };
            assert!(page.contains(&head), "no {title} section");
        }
        assert!(page.contains("/tmp/omemod-<uid>/omemod.sock"));
        assert!(page.contains("--max-request-bytes") && page.contains("OMEMOD_SOCKET"));
    }

    #[test]
    fn the_manual_names_no_page_that_does_not_exist() {
        let page = plain(&render(&crate::cli::Cli::command()));
        for (at, _) in page.match_indices("omemod-") {
            let name: String = page[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '-')
                .collect();
            let after = &page[at + name.len()..];
            assert!(!after.starts_with('('), "a reference to a page {name}(…)");
        }
        // Only the test switch is hidden.
        assert!(!page.contains("enable-debug-methods"));
    }
}
