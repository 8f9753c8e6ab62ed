//! `block-bench`: what `qemu-img bench` does, through our block layer, with
//! the same knobs, so the two can run side by side on the same file
//! (resources/bench-block.sh does). Requests go through `BlockBackend` and an
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
    /// Random request-aligned offsets instead of sequential ones.
    #[arg(long)]
    random: bool,
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
    let mut q = IoQueue::new(backend.clone(), a.aio).map_err(|e| e.to_string())?;
    let mut bufs: Vec<AlignedBuf> = (0..a.depth).map(|_| AlignedBuf::new(a.size as usize, 4096)).collect::<Result<_, _>>().map_err(|e| e.to_string())?;

    let step = a.step.unwrap_or(a.size);
    let slots = image / a.size;
    let mut offset = a.offset;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next_offset = move || {
        if a.random {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            return (rng % slots) * a.size;
        }
        // As qemu-img bench: wrap to the start when a request would cross the end.
        if offset + a.size > image {
            offset = 0;
        }
        let o = offset;
        offset += step;
        o
    };
    let mut submit = |q: &mut IoQueue, slot: usize, buf: &mut AlignedBuf| {
        // SAFETY: each buffer belongs to one request at a time and lives
        // until the queue is dropped, which waits for everything.
        let iov = vec![unsafe { IoVec::new(buf.as_mut_ptr(), a.size as usize) }];
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
    for (i, b) in bufs.iter_mut().enumerate().take(a.count.min(a.depth as u64) as usize) {
        submit(&mut q, i, b);
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
                submit(&mut q, slot, &mut bufs[slot]);
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
