//! omemod (placeholder until the daemon lands).
fn main() {
    eprintln!("omemod: the daemon is not built yet");
    std::process::exit(1);
}
