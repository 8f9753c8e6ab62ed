//! Replays the fuzz corpora of the virtio-blk device, the virtio-mmio
//! transport, the IDE channel and the ACPI PM1 registers
//! (`fuzz/corpus/{virtio_blk,virtio_mmio,ide,acpi_power}/`) through the
//! harnesses on stable Rust, and runs the hand-made seeds. See
//! docs/fuzzing.md.

use block::fuzz::write_seeds as write_corpus_seeds;

fn replay(target: &str, harness: fn(&[u8])) {
    let n = block::fuzz::replay(target, harness);
    eprintln!("{target}: replayed {n} inputs");
}

#[test]
fn virtio_blk_corpus_replays() {
    replay("virtio_blk", devices::fuzz::virtio_blk);
}

#[test]
fn virtio_mmio_corpus_replays() {
    replay("virtio_mmio", devices::fuzz::virtio_mmio);
}

/// The seeds reach what they were made for: the device answers them (or
/// asks for a reset) as the spec says.
#[test]
fn seeds_run() {
    use devices::fuzz::blk::{seeds, virtio_blk_outcome, Outcome};
    let ok = |used: &[(u32, u32, u8)]| Outcome { used: used.to_vec(), needs_reset: false, skipped: false };
    let reset = Outcome { used: Vec::new(), needs_reset: true, skipped: false };
    for (name, data) in seeds() {
        let r = std::panic::catch_unwind(|| virtio_blk_outcome(&data));
        let Ok(outcome) = r else { panic!("virtio_blk seed {name} fails") };
        let want = match name {
            // A 4 KiB read: data and status written, status OK.
            "read" => ok(&[(0, 4097, 0)]),
            "write-flush" => ok(&[(0, 1, 0), (5, 1, 0)]),
            // GET_ID writes 20 bytes and the status.
            "get-id-discard-write-zeroes" => ok(&[(0, 21, 0), (4, 1, 0), (8, 1, 0)]),
            "indirect-read-write" => ok(&[(0, 1537, 0), (1, 1, 0)]),
            "split-header-merged-status" => ok(&[(0, 513, 0)]),
            "two-rounds-event-idx" => ok(&[(0, 513, 0), (3, 1, 0)]),
            // IOERR for a write and a write-zeroes on a read-only disk.
            "read-only-write" => ok(&[(0, 1, 1), (2, 1, 1)]),
            "loop" | "avail-far-ahead" => reset.clone(),
            "small-queue-wraps" => ok(&[(0, 513, 0), (1, 1, 0), (0, 513, 0)]),
            _ => outcome.clone(),
        };
        assert_eq!(outcome, want, "virtio_blk seed {name}");
    }
    for (name, data) in devices::fuzz::mmio::seeds() {
        let r = std::panic::catch_unwind(|| devices::fuzz::mmio::virtio_mmio_outcome(&data));
        let Ok(o) = r else { panic!("virtio_mmio seed {name} fails") };
        let (running, needs_reset) = (o.running > 0, o.needs_reset > 0);
        match name {
            "driver-ok" => assert!(running && !needs_reset, "{name}: {o:?}"),
            // The first activation's I/O thread may or may not have written
            // its answers (into memory the second activation's rings then
            // read) before the reset: on a loaded machine the second run can
            // meet a ring the first one changed and ask for a reset, which is
            // right. At least one of a few runs must come up clean.
            "reset-reinit" => {
                let clean = |o: &devices::fuzz::mmio::Outcome| o.running > 0 && o.needs_reset == 0;
                let again = || devices::fuzz::mmio::virtio_mmio_outcome(&data);
                assert!(clean(&o) || (0..20).any(|_| clean(&again())), "{name}: {o:?}");
            }
            // The device answers the read the seed put in the rings, if its
            // I/O thread gets there within the seed's waits (a few tries,
            // for a loaded machine).
            "driver-ok-read" => {
                let answered = |o: &devices::fuzz::mmio::Outcome| o.running > 0 && o.used_idx == 1;
                let again = || devices::fuzz::mmio::virtio_mmio_outcome(&data);
                assert!(answered(&o) || (0..50).any(|_| answered(&again())), "{name}: {o:?}");
            }
            // FEATURES_OK refused (legacy) or skipped: DRIVER_OK fails;
            // queue 1 does not exist, so queue 0 was never set up.
            "legacy-refused" | "no-features-ok" | "queue-1" => assert!(needs_reset && !running, "{name}: {o:?}"),
            _ => {}
        }
    }
}

/// `FUZZ_WRITE_SEEDS=1 cargo test -p devices --test fuzz_corpus -- --ignored`
/// writes the seeds into the corpus directories (see docs/fuzzing.md).
#[test]
#[ignore]
fn write_seeds() {
    write_corpus_seeds("virtio_blk", devices::fuzz::blk::seeds());
    write_corpus_seeds("virtio_mmio", devices::fuzz::mmio::seeds());
}

#[test]
fn ide_corpus_replays() {
    replay("ide", devices::fuzz::ide);
}

/// The IDE seeds run, and `FUZZ_WRITE_SEEDS=1 cargo test -p devices --test
/// fuzz_corpus -- --ignored` writes them into fuzz/corpus/ide/ too.
#[test]
fn ide_seeds_run() {
    for (name, data) in devices::fuzz::ide::seeds() {
        let r = std::panic::catch_unwind(|| devices::fuzz::ide(&data));
        assert!(r.is_ok(), "ide seed {name} fails");
    }
}

#[test]
#[ignore]
fn write_ide_seeds() {
    write_corpus_seeds("ide", devices::fuzz::ide::seeds());
}

#[test]
fn acpi_power_corpus_replays() {
    replay("acpi_power", devices::fuzz::acpi_power);
}

/// The ACPI seeds fire the triggers they were made for, and no others.
#[test]
fn acpi_power_seeds_run() {
    use devices::fuzz::power::{acpi_power_outcome, seeds};
    for (name, data) in seeds() {
        let r = std::panic::catch_unwind(|| acpi_power_outcome(&data));
        let Ok(o) = r else { panic!("acpi_power seed {name} fails") };
        let want = match name {
            "poweroff-acpica" | "poweroff-byte" => (1, 0),
            "reset" => (0, 1),
            // Two reset values as a byte string, one S5 with SLP_EN as a word.
            "strings" => (1, 2),
            _ => (0, 0),
        };
        assert_eq!((o.poweroffs, o.resets), want, "acpi_power seed {name}: {o:?}");
        if name == "bus-edges" {
            assert_eq!(o.routed, 0, "{name}: accesses that straddle the range reach the device");
        }
    }
}

/// `FUZZ_WRITE_SEEDS=1 cargo test -p devices --test fuzz_corpus -- --ignored`
/// writes them into fuzz/corpus/acpi_power/ too.
#[test]
#[ignore]
fn write_acpi_power_seeds() {
    write_corpus_seeds("acpi_power", devices::fuzz::power::seeds());
}
