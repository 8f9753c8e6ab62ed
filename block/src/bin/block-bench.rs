//! `block-bench`: what `qemu-img bench` does, through our block layer, with
//! the same knobs, so the two can run side by side on the same file
//! (bench/block.sh does). Requests go through `BlockBackend` and an
//! `IoQueue` exactly as a device's would: checks, statistics, engines.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use block::aio::IoQueue;
use block::align::AlignedBuf;
use block::drivers::null::NullDriver;
use block::drivers::raw::RawFile;
use block::{AioEngine, BlockBackend, BlockDriver, CacheMode, Completion, IoVec, Request};
use clap::Parser;

#[derive(Parser)]
#[command(name = "block-bench", about = "Benchmark the block layer like `qemu-img bench`")]
struct Args {
    /// Image file (raw driver); not used with --driver null.
    file: Option<PathBuf>,
    /// Number of requests.
    #[arg(short = 'c', long, default_value_t = 75000)]
    count: u64,
    /// Requests in flight at once.
    #[arg(short = 'd', long, default_value_t = 64)]
    depth: usize,
    /// Bytes per request (suffixes k, M, G).
    #[arg(short = 's', long, default_value = "4k", value_parser = parse_size)]
    size: u64,
    /// Distance between sequential requests (default: the request size).
    #[arg(short = 'S', long, value_parser = parse_size)]
    step: Option<u64>,
    /// First offset.
    #[arg(short = 'o', long, default_value = "0", value_parser = parse_size)]
    offset: u64,
    /// Write instead of read.
    #[arg(short = 'w', long)]
    write: bool,
    /// Random request-aligned offsets instead of sequential ones, without
    /// repeats until every slot of the image was visited (as fio's default
    /// random map).
    #[arg(long)]
    random: bool,
    /// Every request reads into (or writes from) one buffer, as qemu-img
    /// bench does, instead of a buffer per request slot, as fio does.
    #[arg(long)]
    shared_buffer: bool,
    /// raw or null.
    #[arg(long, default_value = "raw")]
    driver: String,
    /// Size of the null device.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    null_size: u64,
    /// Cache mode for raw: none, writeback, unsafe.
    #[arg(short = 't', long, default_value = "writeback")]
    cache: CacheMode,
    /// Engine: io_uring or threads.
    #[arg(short = 'i', long, default_value = "io_uring")]
    aio: AioEngine,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok().and_then(|n| n.checked_mul(mult)).ok_or_else(|| format!("invalid size '{s}'"))
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("block-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: Args) -> Result<(), String> {
    if a.depth == 0 || a.size == 0 || a.size > u32::MAX as u64 {
        return Err("depth and size must be positive (size below 4 GiB)".into());
    }
    let drv: Arc<dyn BlockDriver> = match a.driver.as_str() {
        "null" => Arc::new(NullDriver::new(a.null_size)),
        "raw" => {
            let f = a.file.as_ref().ok_or("the raw driver needs a file")?;
            Arc::new(RawFile::open(f, !a.write, a.cache).map_err(|e| e.to_string())?)
        }
        d => return Err(format!("invalid driver '{d}' (expected raw or null)")),
    };
    let image = drv.size().map_err(|e| format!("size: {e}"))?;
    if image < a.size {
        return Err(format!("the image ({image} bytes) is smaller than one request"));
    }
    let backend = Arc::new(BlockBackend::new("bench"));
    backend.insert_medium(drv, "bench").map_err(|e| e.to_string())?;
    // A buffer per request slot, as fio has; or, with --shared-buffer, one
    // for all, as qemu-img bench has (every request it sends reads into
    // the first slot's buffer, which stays in the CPU caches: 2.5x on 1 MiB
    // null reads at depth 32 here).
    let size = a.size as usize;
    if a.shared_buffer && !a.size.is_multiple_of(4096) {
        return Err("--shared-buffer needs a size that is a multiple of 4 KiB (see below)".into());
    }
    let nbufs = if a.shared_buffer { 1 } else { a.depth };
    let mut bufs: Vec<AlignedBuf> = (0..nbufs).map(|_| AlignedBuf::new(size, 4096)).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let ptrs: Vec<*mut u8> = bufs.iter_mut().map(|b| b.as_mut_ptr()).collect();
    // SAFETY: slot i owns buffer i, and the buffers outlive every request:
    // the queue, declared after them, is dropped first and waits for
    // everything in flight. Shared, several requests write the one buffer
    // at once, which `IoQueue::submit` does not allow in general; here the
    // writers are the kernel (io_uring, or a pool thread's pread) and never
    // Rust code, because the buffer is 4 KiB-aligned and a whole number of
    // 4 KiB blocks, so no request needs a bounce buffer copied by us. The
    // bytes are never read.
    let buf = move |slot: usize| ptrs[slot % nbufs];
    let mut q = IoQueue::new(backend.clone(), a.aio).map_err(|e| e.to_string())?;

    let step = a.step.unwrap_or(a.size);
    let mut slots = Permutation::new(image / a.size);
    let mut offset = a.offset;
    let mut next_offset = move || {
        if a.random {
            return slots.next() * a.size;
        }
        // As qemu-img bench (7.2): the next offset is the last plus the
        // step, modulo the image size; a request that would cross the end
        // starts at 0 instead (qemu-img would fail it).
        let o = if offset + a.size > image { 0 } else { offset };
        offset = (o + step) % image;
        o
    };
    let mut submit = |q: &mut IoQueue, slot: usize| {
        // SAFETY: each slot belongs to one request at a time (see `buf`).
        let iov = vec![unsafe { IoVec::new(buf(slot), size) }];
        let off = next_offset();
        let req = if a.write { Request::write(off, iov, slot as u64) } else { Request::read(off, iov, slot as u64) };
        // SAFETY: as above.
        unsafe { q.submit(req) };
    };

    println!(
        "Sending {} {} requests, {} bytes each, {} in parallel ({} driver, cache={:?}, engine {:?})",
        a.count,
        if a.write { "write" } else { "read" },
        a.size,
        a.depth,
        a.driver,
        a.cache,
        q.engine()
    );
    let start = Instant::now();
    let mut submitted = 0u64;
    for i in 0..a.count.min(a.depth as u64) as usize {
        submit(&mut q, i);
        submitted += 1;
    }
    let mut done = 0u64;
    let mut out: Vec<Completion> = Vec::with_capacity(a.depth);
    while done < a.count {
        if q.wait(&mut out, 1) == 0 {
            return Err(format!("{} requests never completed", a.count - done));
        }
        for c in out.drain(..) {
            c.result.map_err(|e| format!("request failed: {e}"))?;
            done += 1;
            if submitted < a.count {
                let slot = c.token as usize;
                // Straight to the kernel, as fio and qemu-img bench do: on a
                // disk, holding resubmissions until the batch is done cost
                // 10% of the requests per second.
                submit(&mut q, slot);
                q.flush_submissions();
                submitted += 1;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!("Run completed in {secs:.3} seconds.");
    println!(
        "block-bench: {} requests in {:.3} s: {:.0} requests/s, {:.1} MiB/s",
        a.count,
        secs,
        a.count as f64 / secs,
        (a.count * a.size) as f64 / secs / (1 << 20) as f64
    );
    Ok(())
}

/// The numbers `0..n` in a scrambled order, each once per pass: a counter
/// through a bijection of the enclosing power of two (odd multipliers and
/// xor-shifts are both invertible modulo 2^bits), skipping what is `>= n`.
struct Permutation {
    n: u64,
    bits: u32,
    counter: u64,
}

impl Permutation {
    fn new(n: u64) -> Self {
        let bits = n.max(2).next_power_of_two().trailing_zeros();
        Permutation { n: n.max(1), bits, counter: 0 }
    }

    fn scramble(&self, x: u64) -> u64 {
        let mask = if self.bits == 64 { u64::MAX } else { (1u64 << self.bits) - 1 };
        let half = self.bits.div_ceil(2);
        let mut y = x.wrapping_mul(0x9e37_79b9_7f4a_7c15) & mask;
        y ^= y >> half;
        y = y.wrapping_mul(0xbf58_476d_1ce4_e5b9) & mask;
        y ^= y >> half;
        y
    }

    fn next(&mut self) -> u64 {
        loop {
            let y = self.scramble(self.counter);
            self.counter = self.counter.wrapping_add(1) & ((1u64 << self.bits) - 1);
            if y < self.n {
                return y;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Permutation;

    #[test]
    fn random_offsets_visit_every_slot_once_per_pass() {
        for n in [1u64, 2, 3, 1000, 4096, 262_144] {
            let mut p = Permutation::new(n);
            let mut seen = vec![false; n as usize];
            for _ in 0..n {
                let x = p.next() as usize;
                assert!(!seen[x], "slot {x} of {n} repeated");
                seen[x] = true;
            }
            // Not the identity, which would be sequential reads.
            if n > 3 {
                let mut q = Permutation::new(n);
                assert!((0..n).any(|i| q.next() != i));
            }
        }
    }
}
