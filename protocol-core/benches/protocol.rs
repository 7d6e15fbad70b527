//! Benchmarks (filled in with the session layer).
fn main() {}
