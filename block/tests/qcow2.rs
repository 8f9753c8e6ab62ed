//! qcow2 through imago, checked against QEMU's own tools: chains made by
//! `qemu-img create -b`, read and written through our driver, then
//! `qemu-img check` and `qemu-img compare` against a raw file holding what
//! must be there; the errors a user can meet (missing backing file,
//! corrupt header, loop, image in use); snapshot=on; and a randomized run
//! of writes, discards and write-zeroes against a model.
//!
//! Needs qemu-img (resources/install-deps.sh installs it); says SKIPPED
//! without it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use block::image::{self, Format, OpenOptions};
use block::{BlockBackend, DiscardMode};

fn qemu_img() -> bool {
    let ok = Command::new("qemu-img").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        println!("SKIPPED: qemu-img not found (apt-get install qemu-utils)");
    }
    ok
}

fn dir(tag: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("qcow2-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str], cwd: &Path) -> String {
    let o = Command::new("qemu-img").args(args).current_dir(cwd).output().unwrap();
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "qemu-img {args:?}: {out}");
    out
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 9) as u8)).collect()
}

const MIB: usize = 1 << 20;

fn open(path: &Path, o: OpenOptions) -> Arc<BlockBackend> {
    let opened = image::open(path, &o).unwrap_or_else(|e| panic!("{e}"));
    let b = Arc::new(BlockBackend::new("q"));
    b.set_discard(DiscardMode::Unmap);
    b.insert_medium(opened.driver, &opened.filename).unwrap();
    b
}

/// base.raw (a pattern) <- mid.qcow2 (0x42 at 1-2 MiB) <- top.qcow2, with
/// relative backing names, made by qemu-img. Returns the expected content.
fn chain(d: &Path) -> Vec<u8> {
    let mut want = pattern(1, 4 * MIB);
    std::fs::write(d.join("base.raw"), &want).unwrap();
    run(&["create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "mid.qcow2"], d);
    // mid's own data, written by QEMU's qemu-io: 0x42 over 1-2 MiB.
    let o = Command::new("qemu-io").args(["-f", "qcow2", "-c", "write -P 0x42 1M 1M"]).arg(d.join("mid.qcow2")).output();
    let o = o.expect("qemu-io (qemu-utils) runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    want[MIB..2 * MIB].fill(0x42);
    run(&["create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2"], d);
    want
}

#[test]
fn a_chain_reads_every_layer_and_writes_only_the_top() {
    if !qemu_img() {
        return;
    }
    let d = dir("chain");
    let mut want = chain(&d);
    let base0 = std::fs::read(d.join("base.raw")).unwrap();
    let mid0 = std::fs::read(d.join("mid.qcow2")).unwrap();
    {
        // Opened from another directory: backing names are relative to
        // the image, not to the process.
        let b = open(&d.join("top.qcow2"), OpenOptions::default());
        let mut got = vec![0u8; 4 * MIB];
        b.read(0, &mut got).unwrap();
        assert!(got == want, "the chain reads as base with mid's data over it");
        // A whole cluster, and 64 KiB inside a cluster with backing data
        // (copy-on-write of the rest of it).
        let w1 = pattern(7, 65536);
        b.write(3 * MIB as u64, &w1).unwrap();
        want[3 * MIB..3 * MIB + 65536].copy_from_slice(&w1);
        let w2 = pattern(9, 65536);
        let at = MIB + MIB / 2 + 4096;
        b.write(at as u64, &w2).unwrap();
        want[at..at + 65536].copy_from_slice(&w2);
        b.flush().unwrap();
        b.read(0, &mut got).unwrap();
        assert!(got == want, "read back");
        let info = b.medium_info().unwrap();
        assert_eq!((info.format, info.depth(), info.backing_filename.as_deref()), (Format::Qcow2, 2, Some("mid.qcow2")));
    }
    std::fs::write(d.join("want.raw"), &want).unwrap();
    assert!(run(&["check", "top.qcow2"], &d).contains("No errors were found"));
    assert!(run(&["compare", "-f", "raw", "-F", "qcow2", "want.raw", "top.qcow2"], &d).contains("Images are identical"));
    assert!(std::fs::read(d.join("base.raw")).unwrap() == base0, "base.raw changed");
    assert!(std::fs::read(d.join("mid.qcow2")).unwrap() == mid0, "mid.qcow2 changed");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn user_errors_name_the_file() {
    if !qemu_img() {
        return;
    }
    let d = dir("errors");
    let err = |p: &Path, o: OpenOptions| image::open(p, &o).err().map(|e| e.to_string()).unwrap_or_else(|| panic!("{} opened", p.display()));
    // A missing backing file.
    std::fs::write(d.join("gone.raw"), vec![0u8; 65536]).unwrap();
    run(&["create", "-q", "-f", "qcow2", "-b", "gone.raw", "-F", "raw", "orphan.qcow2"], &d);
    std::fs::remove_file(d.join("gone.raw")).unwrap();
    let e = err(&d.join("orphan.qcow2"), OpenOptions::default());
    assert!(e.contains("orphan.qcow2") && e.contains("could not open backing file") && e.contains("gone.raw") && e.contains("No such file"), "{e}");
    // A corrupt header: the magic, then garbage.
    let mut bad = b"QFI\xfb".to_vec();
    bad.extend(std::iter::repeat_n(0xffu8, 508));
    std::fs::write(d.join("bad.qcow2"), &bad).unwrap();
    let e = err(&d.join("bad.qcow2"), OpenOptions::default());
    assert!(e.starts_with(&format!("cannot open '{}'", d.join("bad.qcow2").display())), "{e}");
    // format=qcow2 on a raw file.
    std::fs::write(d.join("plain.raw"), vec![0u8; 65536]).unwrap();
    let e = err(&d.join("plain.raw"), OpenOptions { format: Some(Format::Qcow2), ..Default::default() });
    assert!(e.contains("not a qcow2 image"), "{e}");
    // A loop: a over b over a.
    run(&["create", "-q", "-f", "qcow2", "a.qcow2", "1M"], &d);
    run(&["create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2"], &d);
    run(&["rebase", "-u", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2"], &d);
    let e = err(&d.join("a.qcow2"), OpenOptions::default());
    assert!(e.contains("backing file loop") && e.contains("a.qcow2"), "{e}");
    // In use: a second writer is refused, by us and by QEMU's tools.
    run(&["create", "-q", "-f", "qcow2", "used.qcow2", "1M"], &d);
    let first = open(&d.join("used.qcow2"), OpenOptions::default());
    let e = err(&d.join("used.qcow2"), OpenOptions::default());
    assert!(e.contains("used.qcow2") && e.contains("Failed to get \"write\" lock"), "{e}");
    let o = Command::new("qemu-io").args(["-c", "write 0 512"]).arg(d.join("used.qcow2")).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("lock"), "qemu-io wrote to an image we hold");
    drop(first);
    let _again = open(&d.join("used.qcow2"), OpenOptions::default());
    drop(_again);
    // And QEMU's lock is respected: qemu-io holds the image for a while.
    // (Wait until /proc/locks shows its lock on byte 201, unshared write:
    // an open of ours meanwhile would make qemu-io fail instead.)
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(d.join("used.qcow2")).unwrap().ino();
    let mut holder = Command::new("qemu-io").args(["-f", "qcow2", "-c", "sleep 20000"]).arg(d.join("used.qcow2")).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let held = loop {
        let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
        if locks.lines().any(|l| l.contains(&format!(":{ino} 201 201"))) {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let refused = image::open(&d.join("used.qcow2"), &OpenOptions::default()).err().map(|e| e.to_string());
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(held, "qemu-io never locked the image");
    let e = refused.expect("opened an image qemu-io holds");
    assert!(e.contains("Failed to get \"write\" lock"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn snapshot_on_keeps_the_image_and_removes_the_overlay() {
    if !qemu_img() {
        return;
    }
    let d = dir("snapshot");
    let want = chain(&d);
    let top0 = std::fs::read(d.join("top.qcow2")).unwrap();
    std::fs::write(d.join("plain.raw"), pattern(3, MIB)).unwrap();
    let raw0 = std::fs::read(d.join("plain.raw")).unwrap();
    for (file, format) in [("top.qcow2", Format::Qcow2), ("plain.raw", Format::Raw)] {
        let o = OpenOptions { format: Some(format), snapshot: true, ..Default::default() };
        let opened = image::open(&d.join(file), &o).unwrap();
        assert!(opened.filename.starts_with(&image::snapshot_dir().display().to_string()), "{}", opened.filename);
        assert!(!Path::new(&opened.filename).exists(), "the overlay is unlinked at once");
        // ...but it was made there, and is open: one of our descriptors.
        let deleted = format!("{} (deleted)", opened.filename);
        let open_fds = std::fs::read_dir("/proc/self/fd").unwrap().filter_map(|e| std::fs::read_link(e.ok()?.path()).ok());
        assert!(open_fds.into_iter().any(|t| t.display().to_string() == deleted), "no descriptor of {deleted}");
        let b = Arc::new(BlockBackend::new("s"));
        b.insert_medium(opened.driver, &opened.filename).unwrap();
        let w = pattern(11, 131072);
        b.write(65536, &w).unwrap();
        b.flush().unwrap();
        let mut got = vec![0u8; 131072];
        b.read(65536, &mut got).unwrap();
        assert!(got == w, "{file}: the snapshot reads its writes");
        let mut first = vec![0u8; 4096];
        b.read(0, &mut first).unwrap();
        let orig = if format == Format::Qcow2 { &want[..4096] } else { &raw0[..4096] };
        assert!(first == orig, "{file}: the rest reads from the image");
    }
    assert!(std::fs::read(d.join("top.qcow2")).unwrap() == top0, "top.qcow2 changed");
    assert!(std::fs::read(d.join("plain.raw")).unwrap() == raw0, "plain.raw changed");
    let _ = std::fs::remove_dir_all(&d);
}

/// A small xorshift, so that a failing sequence can be replayed by seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_writes_discards_and_zeroes_match_qemu_img() {
    if !qemu_img() {
        return;
    }
    // Version 3 (zero clusters) and version 2 (none: discard does nothing,
    // write-zeroes writes zeros as data).
    random_run("random-v3", "1.1");
    random_run("random-v2", "0.10");
}

fn random_run(tag: &str, compat: &str) {
    let d = dir(tag);
    let size = 8 * MIB;
    let cluster = 65536usize;
    let v3 = compat == "1.1";
    // Over a raw base, so that discards and zeroes must hide backing data.
    let mut model = pattern(5, size);
    std::fs::write(d.join("base.raw"), &model).unwrap();
    run(&["create", "-q", "-f", "qcow2", "-o", &format!("compat={compat}"), "-b", "base.raw", "-F", "raw", "r.qcow2"], &d);
    let seed = std::env::var("QCOW2_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x9e37_79b9_7f4a_7c15u64);
    println!("seed {seed:#x} (QCOW2_SEED replays it)");
    let mut rng = Rng(seed);
    {
        let b = open(&d.join("r.qcow2"), OpenOptions { format: Some(Format::Qcow2), ..Default::default() });
        for i in 0..600 {
            let off = rng.below(size as u64 - 1) as usize;
            let len = (1 + rng.below(3 * cluster as u64) as usize).min(size - off);
            match rng.below(10) {
                0..=5 => {
                    let data = pattern((i % 251) as u8, len);
                    b.write(off as u64, &data).unwrap();
                    model[off..off + len].copy_from_slice(&data);
                }
                6 | 7 => {
                    // QEMU's qcow2: whole clusters inside read as zeros,
                    // the partial ones at the edges keep their data.
                    b.discard(off as u64, len as u64).unwrap();
                    let (s, e) = (off.div_ceil(cluster) * cluster, (off + len) / cluster * cluster);
                    if v3 && s < e {
                        model[s..e].fill(0);
                    }
                }
                _ => {
                    let unmap = rng.below(2) == 0;
                    b.write_zeroes(off as u64, len as u64, unmap).unwrap();
                    model[off..off + len].fill(0);
                }
            }
            if i % 97 == 0 {
                let mut got = vec![0u8; size];
                b.read(0, &mut got).unwrap();
                assert!(got == model, "{tag}: after operation {i}");
            }
        }
        b.flush().unwrap();
    }
    std::fs::write(d.join("model.raw"), &model).unwrap();
    assert!(run(&["check", "r.qcow2"], &d).contains("No errors were found"));
    assert!(run(&["compare", "-f", "raw", "-F", "qcow2", "model.raw", "r.qcow2"], &d).contains("Images are identical"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn concurrent_requests_from_several_threads() {
    if !qemu_img() {
        return;
    }
    let d = dir("threads");
    let size = 8 * MIB;
    run(&["create", "-q", "-f", "qcow2", "c.qcow2", "8M"], &d);
    let b = open(&d.join("c.qcow2"), OpenOptions { format: Some(Format::Qcow2), ..Default::default() });
    // Four threads, each in its own 2 MiB stripe: writes of any size and
    // offset (clusters get allocated concurrently), zeroes and discards.
    let stripes: Vec<Vec<u8>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4u64)
            .map(|t| {
                let b = b.clone();
                s.spawn(move || {
                    let base = t * 2 * MIB as u64;
                    let mut model = vec![0u8; 2 * MIB];
                    let mut rng = Rng(0x1234_5678 + t);
                    for i in 0..300 {
                        let off = rng.below(2 * MIB as u64 - 1) as usize;
                        let len = (1 + rng.below(200_000) as usize).min(2 * MIB - off);
                        if rng.below(8) == 0 {
                            b.write_zeroes(base + off as u64, len as u64, i % 2 == 0).unwrap();
                            model[off..off + len].fill(0);
                        } else {
                            let data = pattern((t * 50 + i % 50) as u8, len);
                            b.write(base + off as u64, &data).unwrap();
                            model[off..off + len].copy_from_slice(&data);
                        }
                    }
                    model
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    b.flush().unwrap();
    let mut got = vec![0u8; size];
    b.read(0, &mut got).unwrap();
    let want: Vec<u8> = stripes.concat();
    assert!(got == want, "read back");
    drop(b);
    std::fs::write(d.join("want.raw"), &want).unwrap();
    assert!(run(&["check", "c.qcow2"], &d).contains("No errors were found"));
    assert!(run(&["compare", "-f", "raw", "-F", "qcow2", "want.raw", "c.qcow2"], &d).contains("Images are identical"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn cache_none_writes_the_last_sector_of_an_odd_sized_image() {
    if !qemu_img() {
        return;
    }
    let d = dir("direct");
    // 1000448 bytes: not a multiple of 4 KiB.
    run(&["create", "-q", "-f", "qcow2", "odd.qcow2", "1000000"], &d);
    let o = OpenOptions { format: Some(Format::Qcow2), cache: block::CacheMode::None, ..Default::default() };
    let opened = match image::open(&d.join("odd.qcow2"), &o) {
        Ok(x) => x,
        Err(e) if e.to_string().contains("Invalid argument") => {
            println!("SKIPPED: O_DIRECT is not supported under {}: {e}", d.display());
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let b = Arc::new(BlockBackend::new("odd"));
    b.insert_medium(opened.driver, &opened.filename).unwrap();
    let size = b.getlength().unwrap();
    assert_eq!(size, 1000448);
    let last = pattern(4, 512);
    b.write(size - 512, &last).unwrap();
    let odd = pattern(6, 1000);
    b.write(4097, &odd).unwrap();
    b.flush().unwrap();
    let mut got = vec![0u8; 512];
    b.read(size - 512, &mut got).unwrap();
    assert!(got == last);
    drop(b);
    let mut want = vec![0u8; size as usize];
    want[size as usize - 512..].copy_from_slice(&last);
    want[4097..5097].copy_from_slice(&odd);
    std::fs::write(d.join("want.raw"), &want).unwrap();
    assert!(run(&["check", "odd.qcow2"], &d).contains("No errors were found"));
    assert!(run(&["compare", "-f", "raw", "-F", "qcow2", "want.raw", "odd.qcow2"], &d).contains("Images are identical"));
    let _ = std::fs::remove_dir_all(&d);
}
