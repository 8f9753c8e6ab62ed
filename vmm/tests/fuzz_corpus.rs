//! Replays the fuzz corpus of the QMP decoder (`fuzz/corpus/qmp_decoder/`)
//! through the harness on stable Rust, and checks that the hand-made seeds
//! still reach what they were made for. See docs/fuzzing.md.

#[test]
fn qmp_decoder_corpus_replays() {
    let n = block::fuzz::replay("qmp_decoder", vmm::fuzz::qmp_decoder);
    eprintln!("qmp_decoder: replayed {n} inputs");
}

/// The seeds give the messages and errors they were made for.
#[test]
fn qmp_decoder_seeds_run() {
    use vmm::fuzz::{qmp_decoder_outcome, seeds};
    let longer = "JSON parse error, message longer than 1048576 bytes";
    let nesting = "JSON parse error, nesting deeper than 1024 levels";
    for (name, data) in seeds() {
        let r = std::panic::catch_unwind(|| qmp_decoder_outcome(&data));
        let Ok(o) = r else { panic!("qmp_decoder seed {name} fails") };
        let errors: Vec<&str> = o.errors.iter().map(String::as_str).collect();
        let requests: Vec<&str> = o.requests.iter().map(String::as_str).collect();
        match name {
            "split-mid-message" => assert_eq!((requests, o.messages), (vec!["a", "b"], 3), "{name}: {o:?}"),
            "brackets-in-strings" => assert_eq!(requests, ["a}]\"{"], "{name}: {o:?}"),
            "garbage-then-message" => {
                assert_eq!(errors.len(), 1, "{name}: {o:?}");
                assert_eq!(requests, ["qmp_capabilities"], "{name}: {o:?}");
            }
            "nesting-1025" => {
                assert_eq!(errors, [nesting], "{name}: {o:?}");
                assert_eq!(requests, ["query-status"], "{name}: {o:?}");
            }
            "nesting-200" => {
                assert!(errors.len() == 1 && errors[0].contains("recursion limit"), "{name}: {o:?}");
                assert_eq!(requests, ["qmp_capabilities"], "{name}: {o:?}");
            }
            "max-message" => assert_eq!((errors.len(), requests), (0, vec!["x", "qmp_capabilities"]), "{name}: {o:?}"),
            "long-message" | "long-line" => {
                assert_eq!(errors, [longer], "{name}: {o:?}");
                assert_eq!(requests, ["qmp_capabilities"], "{name}: {o:?}");
            }
            "templates" => assert!(o.messages >= 10 && !o.errors.is_empty(), "{name}: {o:?}"),
            _ => {}
        }
    }
}

/// `FUZZ_WRITE_SEEDS=1 cargo test -p vmm --test fuzz_corpus -- --ignored`
/// writes the seeds into the corpus directory (see docs/fuzzing.md).
#[test]
#[ignore]
fn write_seeds() {
    block::fuzz::write_seeds("qmp_decoder", vmm::fuzz::seeds());
}
