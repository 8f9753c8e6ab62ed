//! Replays the fuzz corpus of the block layer's request checks
//! (`fuzz/corpus/block_requests/`) through the harness on stable Rust, and
//! checks that the hand-made seeds still reach what they were made for.
//! See docs/fuzzing.md.

#[test]
fn block_requests_corpus_replays() {
    let n = block::fuzz::replay("block_requests", block::fuzz::requests);
    eprintln!("replayed {n} inputs ({})", block::fuzz::image_info());
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
    block::fuzz::write_seeds("block_requests", block::fuzz::seeds());
}
