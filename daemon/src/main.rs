//! `omemod`: a local daemon that owns one user's OMEMO devices and serves encryption to XMPP
//! clients over JSON-RPC 2.0 on a Unix socket. See `docs/rpc.md`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    omemod::cli::run()
}
