//! Replays the fuzz corpus of the QMP decoder (`fuzz/corpus/qmp_decoder/`)
//! through the harness on stable Rust, and checks that the hand-made seeds
//! still reach what they were made for. See docs/fuzzing.md.

use std::path::PathBuf;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

#[test]
fn qmp_decoder_corpus_replays() {
    let dir = corpus_dir("qmp_decoder");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty: nothing would be replayed", dir.display());
    for f in &files {
        let data = std::fs::read(f).unwrap();
        // A panic names the file.
        let r = std::panic::catch_unwind(|| vmm::fuzz::qmp_decoder(&data));
        assert!(r.is_ok(), "{} fails", f.display());
    }
    eprintln!("qmp_decoder: replayed {} inputs", files.len());
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
    if std::env::var_os("FUZZ_WRITE_SEEDS").is_none() {
        return;
    }
    let dir = corpus_dir("qmp_decoder");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, data) in vmm::fuzz::seeds() {
        std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
    }
}
