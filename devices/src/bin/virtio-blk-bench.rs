//! The device model's own cost: requests pushed through the virtqueue path
//! (registers, split ring, chain parsing, block layer, used ring, EVENT_IDX)
//! with the null driver underneath, so that no storage time is counted.
//!
//! The "guest" is the test driver in `devices::virtio::testing`, spinning
//! on the used ring from the main thread and keeping DEPTH requests of
//! BS bytes in flight, as Linux's virtio_blk does with EVENT_IDX. Reported:
//! requests per second of wall time, and per second of CPU time of the
//! device's I/O thread ("per core"), read from /proc. With two CPUs or
//! more, the driver runs on CPU 0 and the I/O thread on CPU 1.
//!
//! Usage: cargo run --release -p devices --bin virtio-blk-bench [-- SECONDS DEPTH BS]

use std::sync::Arc;
use std::time::{Duration, Instant};

use block::drivers::null::NullDriver;
use block::{AioEngine, BlockBackend};
use devices::virtio::block::QUEUE_SIZE;
use devices::virtio::testing::{Driver, AVAIL, USED};
use virtio_bindings::virtio_blk::VIRTIO_BLK_T_IN;
use vm_memory::{Bytes, GuestAddress};

/// The /proc/self/task entry of this process's thread called `name`.
fn thread_dir(name: &str) -> Option<std::path::PathBuf> {
    std::fs::read_dir("/proc/self/task").ok()?.flatten().map(|t| t.path()).find(|p| {
        std::fs::read_to_string(p.join("comm")).is_ok_and(|c| c.trim() == name)
    })
}

/// Pins thread `tid` (0: the caller) to one CPU.
fn pin(tid: libc::pid_t, cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// CPU seconds (user + system) of this process's thread called `name`.
fn thread_cpu(name: &str) -> Option<f64> {
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    {
        let t = thread_dir(name)?;
        let stat = std::fs::read_to_string(t.join("stat")).ok()?;
        // Fields after the ")" that ends the command name: utime is the
        // 12th, stime the 13th.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        Some(ticks / hz)
    }
}

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let secs = args.first().copied().unwrap_or(5);
    let depth = args.get(1).copied().unwrap_or(32).clamp(1, u64::from(QUEUE_SIZE) / 3) as u16;
    let bs = args.get(2).copied().unwrap_or(4096) as u32;

    let backend = Arc::new(BlockBackend::new("bench"));
    if let Err(e) = backend.insert_medium(Arc::new(NullDriver::new(1 << 30)), "null") {
        eprintln!("virtio-blk-bench: {e}");
        std::process::exit(1);
    }
    let mut d = Driver::new(backend, AioEngine::IoUring, None);
    d.init(0);

    // One chain per slot (header, data, status), published over and over.
    let mut heads = Vec::new();
    for i in 0..depth {
        let hdr = d.alloc(16);
        d.mem.write_obj(VIRTIO_BLK_T_IN, GuestAddress(hdr)).unwrap_or_default();
        d.mem.write_obj(u64::from(i) * 8, GuestAddress(hdr + 8)).unwrap_or_default();
        let data = d.alloc(u64::from(bs));
        let status = d.alloc(1);
        heads.push(d.chain(&[(hdr, 16, false), (data, bs, true), (status, 1, true)]));
    }
    for &h in &heads {
        d.publish(h);
    }
    let used_event = GuestAddress(AVAIL + 4 + 2 * u64::from(QUEUE_SIZE));
    let avail_event = GuestAddress(USED + 4 + 8 * u64::from(QUEUE_SIZE));
    d.notify();

    // The "guest" spins on one CPU and the I/O thread gets another, when
    // there are two: left to the scheduler, they sometimes share one and
    // the result halves.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let worker_tid = thread_dir("blk-bench").and_then(|p| p.file_name()?.to_str()?.parse::<libc::pid_t>().ok());
    if let (true, Some(tid)) = (cpus >= 2, worker_tid) {
        pin(0, 0);
        pin(tid, 1);
    }

    let cpu0 = thread_cpu("blk-bench").unwrap_or(0.0);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut seen: u16 = 0;
    let mut done: u64 = 0;
    while Instant::now() < deadline {
        let used = d.used_idx();
        if used == seen {
            std::hint::spin_loop();
            continue;
        }
        let old_avail = d.avail_idx;
        while seen != used {
            let (id, _) = d.used(seen);
            d.publish(id as u16);
            seen = seen.wrapping_add(1);
            done += 1;
        }
        // Linux's virtqueue_kick_prepare: notify only when the device asked
        // for it (avail_event), and ask for an interrupt at the next entry.
        d.mem.write_obj(seen, used_event).unwrap_or_default();
        let ev: u16 = d.mem.read_obj(avail_event).unwrap_or_default();
        let new = d.avail_idx;
        if new.wrapping_sub(ev).wrapping_sub(1) < new.wrapping_sub(old_avail) {
            d.notify();
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = thread_cpu("blk-bench").unwrap_or(0.0) - cpu0;
    println!("virtio-blk-bench: null driver, {bs}-byte reads, {depth} in flight, {wall:.1} s");
    println!("requests: {done}");
    println!("wall:     {:.0} req/s", done as f64 / wall);
    if cpu > 0.0 {
        println!("I/O thread CPU: {cpu:.2} s ({:.0}% of one core)", 100.0 * cpu / wall);
        println!("per core: {:.0} req/s per CPU-second of the I/O thread", done as f64 / cpu);
    }
}
