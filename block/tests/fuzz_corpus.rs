//! Replays the fuzz corpus of the block layer's request checks
//! (`fuzz/corpus/block_requests/`) through the harness on stable Rust, and
//! checks that the hand-made seeds still reach what they were made for.
//! See docs/fuzzing.md.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty: nothing would be replayed", dir.display());
    files
}

#[test]
fn block_requests_corpus_replays() {
    let files = corpus("block_requests");
    for f in &files {
        let data = std::fs::read(f).unwrap();
        // A panic names the file.
        let r = std::panic::catch_unwind(|| block::fuzz::requests(&data));
        assert!(r.is_ok(), "{} fails", f.display());
    }
    eprintln!("replayed {} inputs ({})", files.len(), block::fuzz::image_info());
}

#[test]
fn block_requests_seeds_run() {
    for (name, data) in block::fuzz::seeds() {
        let r = std::panic::catch_unwind(|| block::fuzz::requests(&data));
        assert!(r.is_ok(), "seed {name} fails");
    }
}

/// `FUZZ_WRITE_SEEDS=1 cargo test -p block --test fuzz_corpus -- --ignored`
/// writes the seeds into the corpus directory (see docs/fuzzing.md).
#[test]
#[ignore]
fn write_seeds() {
    if std::env::var_os("FUZZ_WRITE_SEEDS").is_none() {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/block_requests");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, data) in block::fuzz::seeds() {
        std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
    }
}
