//! A guest cannot blow up host memory with a huge misaligned request: a
//! 1 GiB write from a buffer at an odd address, through an O_DIRECT file,
//! must raise the process's peak RSS by a few MiB at most (the bounce
//! buffer is at most `block::io::BOUNCE_CHUNK`), not by a gigabyte.
//!
//! Alone in its own test binary, so no other test moves the peak.

use std::path::PathBuf;
use std::sync::Arc;

use block::drivers::raw::RawFile;
use block::{AioEngine, BlockBackend, CacheMode, IoQueue, IoVec, Request};

const GIB: usize = 1 << 30;

/// The kernel's peak resident set (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Resets VmHWM to the current RSS (Linux's clear_refs "5").
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

#[test]
fn a_misaligned_1_gib_write_bounces_through_bounded_memory() {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bounce-{}", std::process::id()));
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(GIB as u64 + (1 << 20)).unwrap();
    drop(f);
    let drv = match RawFile::open(&path, false, CacheMode::None) {
        Ok(d) => d,
        Err(e) => {
            println!("SKIPPED: O_DIRECT is not available in {}: {e}", path.display());
            eprintln!("SKIPPED: O_DIRECT is not available in {}: {e}", path.display());
            let _ = std::fs::remove_file(&path);
            return;
        }
    };
    let b = Arc::new(BlockBackend::new("big"));
    b.insert_medium(Arc::new(drv), "big").unwrap();

    // An untouched anonymous mapping reads as the shared zero page: the
    // source buffer itself adds nothing to the RSS.
    let len = GIB + 4096;
    // SAFETY: a fresh private anonymous mapping, unmapped below.
    let map = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE, -1, 0)
    };
    assert_ne!(map, libc::MAP_FAILED);

    let mut out = Vec::new();
    for engine in [AioEngine::IoUring, AioEngine::Threads] {
        let mut q = IoQueue::new(b.clone(), engine).unwrap();
        reset_peak();
        let before = peak_rss_kib();
        // One byte past a page boundary: O_DIRECT cannot take it as it is.
        // SAFETY: the mapping covers GIB bytes from there and outlives the
        // wait below.
        let seg = unsafe { IoVec::new(map.cast::<u8>().add(1), GIB) };
        unsafe { q.submit(Request::write(512, vec![seg], 1)) };
        out.clear();
        q.wait(&mut out, 1);
        let grown = peak_rss_kib().saturating_sub(before);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].result, Ok(()), "{engine:?}");
        println!("{engine:?}: peak RSS grew by {grown} KiB for a 1 GiB misaligned write");
        assert!(grown < 8 * 1024, "{engine:?}: peak RSS grew by {grown} KiB for one request");
    }
    // SAFETY: unmaps the mapping made above; no request uses it any more.
    unsafe { libc::munmap(map, len) };
    let _ = std::fs::remove_file(&path);
}
