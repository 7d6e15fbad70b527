//! Replays every seed-corpus file of every fuzz target through the very same entry points the
//! fuzzer uses (`fuzz/src/lib.rs`, included below). Passing means: no input panics.

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod fuzz_entry;

use std::path::PathBuf;

fn corpus_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

#[test]
fn every_target_has_a_seed_corpus() {
    for (name, _) in fuzz_entry::TARGETS {
        let dir = corpus_root().join(name);
        let count = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus dir {}: {e}", dir.display()))
            .count();
        assert!(count >= 3, "target {name} has only {count} seed files");
    }
}

#[test]
fn corpus_files_never_panic() {
    let mut total = 0;
    for (name, run) in fuzz_entry::TARGETS {
        let dir = corpus_root().join(name);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus dir {}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for path in entries {
            let data = std::fs::read(&path).expect("read corpus file");
            run(&data);
            // Every prefix too: truncation is the most common malformation.
            for len in 0..data.len().min(600) {
                run(&data[..len]);
            }
            total += 1;
        }
    }
    assert!(total > 0);
}
