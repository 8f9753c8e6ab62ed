//! Fuzz harnesses for what a guest controls in the devices (`fuzz/` runs
//! them under libFuzzer; `tests/fuzz_corpus.rs` replays the corpus on
//! stable Rust): see docs/fuzzing.md.
//!
//! - `virtio_blk`: descriptor chains, request headers and ring indexes,
//!   through the real device (transport, I/O thread, parser, block layer);
//! - `virtio_mmio`: register sequences against the transport;
//! - `ide`: IDE channel registers, data port strings and ATAPI packets
//!   (`ide.rs`, no guest memory);
//! - `acpi_power`: the ACPI PM1 and reset registers, straight and through
//!   a bus (`power.rs`, no guest memory).
//!
//! Both decode their input with `block::fuzz::Input` (reads past the end
//! give zeros) and run on a small guest memory with a hole and two regions,
//! so that buffers can straddle a region boundary, the hole or the end of
//! RAM.

pub mod blk;
pub mod ide;
pub mod mmio;
pub mod power;

pub use blk::virtio_blk;
pub use ide::ide;
pub use mmio::virtio_mmio;
pub use power::acpi_power;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Guest RAM, small so that an execution touches little memory: [0, HOLE)
/// with the rings and a data area, a hole, and [HOLE_END, RAM_END), a
/// second data area.
pub const HOLE: u64 = 0xa000;
pub const HOLE_END: u64 = 0xb000;
pub const RAM_END: u64 = 0x1_0000;
/// Where the harnesses put the split virtqueue (room for 256 entries).
pub const DESC: u64 = 0x1000;
pub const AVAIL: u64 = 0x2000;
pub const USED: u64 = 0x3000;
/// The first data area: after the rings, up to the hole.
pub const DATA: u64 = 0x4000;

fn guest_memory() -> GuestMemoryMmap {
    let ranges = [(GuestAddress(0), HOLE as usize), (GuestAddress(HOLE_END), (RAM_END - HOLE_END) as usize)];
    match GuestMemoryMmap::from_ranges(&ranges) {
        Ok(m) => m,
        Err(e) => panic!("fuzz: cannot map guest memory: {e}"),
    }
}

/// Whether [addr, addr + len) is inside one RAM region (what
/// `GuestMemory::get_slice` accepts).
pub fn in_one_region(addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else { return false };
    (end <= HOLE) || (addr >= HOLE_END && end <= RAM_END)
}

/// Disk sizes the inputs choose from: empty, tiny, ordinary, huge, and one
/// whose last sector is near the top of u64 (for overflow checks).
pub const CAPACITIES: [u64; 8] = [0, 512, 64 << 10, 1 << 20, 4 << 20, 1 << 40, !511, 3 << 9];

/// The two RAM regions as (start, end).
pub const REGIONS: [(u64, u64); 2] = [(0, HOLE), (HOLE_END, RAM_END)];

/// The host address of guest RAM region `r`.
fn region_ptr(mem: &GuestMemoryMmap, r: usize) -> (*mut u8, usize) {
    let (start, end) = REGIONS[r];
    match mem.get_host_address(GuestAddress(start)) {
        Ok(p) => (p, (end - start) as usize),
        Err(e) => panic!("fuzz: guest memory region {r}: {e}"),
    }
}

/// Guest RAM region `r` of `mem` as plain bytes, for bulk comparisons:
/// vm-memory's volatile accessors go word by word, which is slow under the
/// fuzzer's instrumentation.
///
/// # Safety
/// Nothing may write guest memory while the slice lives: no I/O thread is
/// running (before activation, after a reset).
unsafe fn region_bytes(mem: &GuestMemoryMmap, r: usize) -> &[u8] {
    let (p, len) = region_ptr(mem, r);
    // SAFETY: the region is mapped for `len` bytes; the caller guarantees
    // that nothing writes it meanwhile.
    unsafe { std::slice::from_raw_parts(p, len) }
}

/// Fills guest RAM region `r` from `src` (its length).
///
/// # Safety
/// Nothing else may access guest memory meanwhile (as for `region_bytes`).
unsafe fn fill_region(mem: &GuestMemoryMmap, r: usize, src: &[u8]) {
    let (p, len) = region_ptr(mem, r);
    assert_eq!(src.len(), len, "fuzz: fill of region {r}");
    // SAFETY: the region is mapped for `len` bytes, `src` is as long, and
    // the caller guarantees exclusive access.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p, len) };
}
