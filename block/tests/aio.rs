//! The asynchronous path: every request type through `IoQueue` on both
//! engines, refusals, the eventfd, error injection, drain with requests in
//! flight, and concurrent unaligned O_DIRECT writes against a model.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use block::aio::IoQueue;
use block::drivers::inject::{Count, InjectDriver, Rule};
use block::drivers::null::NullDriver;
use block::drivers::raw::RawFile;
use block::testing::TestDisk;
use block::{AioEngine, BlockBackend, BlockDevOps, BlockDriver, CacheMode, Completion, DiscardMode, Errno, IoResult, IoVec, Op, Request};

const ENGINES: [AioEngine; 2] = [AioEngine::IoUring, AioEngine::Threads];

fn tmp(tag: &str, len: usize, fill: u8) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("aio-{}-{tag}", std::process::id()));
    std::fs::write(&p, vec![fill; len]).unwrap();
    p
}

fn backend_on(path: &std::path::Path, cache: CacheMode) -> Arc<BlockBackend> {
    let b = Arc::new(BlockBackend::new("d"));
    b.insert_medium(Arc::new(RawFile::open(path, false, cache).unwrap()), "f").unwrap();
    b
}

/// One segment over a test buffer.
fn iov(buf: &mut [u8]) -> Vec<IoVec> {
    // SAFETY: every test keeps its buffers alive, and untouched, until the
    // completions of the requests that carry them are back.
    vec![unsafe { IoVec::new(buf.as_mut_ptr(), buf.len()) }]
}

/// A queue on `engine`; says SKIPPED when io_uring is unavailable and the
/// io_uring case runs on the pool instead.
fn queue(b: &Arc<BlockBackend>, engine: AioEngine) -> IoQueue {
    let q = IoQueue::new(b.clone(), engine).unwrap();
    if q.engine() != engine {
        println!("SKIPPED: io_uring is unavailable here; the {engine:?} case ran on the thread pool");
        eprintln!("SKIPPED: io_uring is unavailable here; the {engine:?} case ran on the thread pool");
    }
    q
}

/// Submits one request and waits for its completion.
fn one(q: &mut IoQueue, req: Request) -> IoResult<()> {
    let token = req.token();
    // SAFETY: every test buffer outlives the wait below.
    unsafe { q.submit(req) };
    let mut out = Vec::new();
    q.wait(&mut out, 1);
    assert_eq!(out.len(), 1, "exactly one completion");
    assert_eq!(out[0].token, token);
    out[0].result
}

#[test]
fn every_request_type_on_both_engines() {
    for engine in ENGINES {
        let path = tmp(&format!("types-{engine:?}"), 1 << 20, 0xaa);
        let b = backend_on(&path, CacheMode::Writeback);
        b.set_discard(DiscardMode::Unmap);
        let mut q = queue(&b, engine);
        let mut data: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
        // Split over two segments to go through writev/readv.
        let (x, y) = data.split_at_mut(3000);
        let segs: Vec<IoVec> = iov(x).into_iter().chain(iov(y)).collect();
        assert_eq!(one(&mut q, Request::write(4096, segs, 1)), Ok(()), "{engine:?}");
        let mut back = vec![0u8; 8192];
        assert_eq!(one(&mut q, Request::read(4096, iov(&mut back), 2)), Ok(()));
        assert!(back == data, "{engine:?}: read back differs");
        assert_eq!(one(&mut q, Request::flush(3)), Ok(()));
        assert_eq!(one(&mut q, Request::discard(65536, 65536, 4)), Ok(()));
        assert_eq!(one(&mut q, Request::write_zeroes(4096, 4096, false, 5)), Ok(()));
        let file = std::fs::read(&path).unwrap();
        assert!(file[4096..8192].iter().all(|&v| v == 0), "write-zeroes");
        assert_eq!(file[8192..12288], data[4096..]);
        assert!(file[65536..131072].iter().all(|&v| v == 0), "discard punched a hole");
        assert_eq!(file[131072], 0xaa, "past the discard untouched");
        // The queue accounts nothing: the device does, by its policy.
        assert_eq!(b.stats().get(Op::Read).ops, 0);
        assert_eq!(b.in_flight(), 0);
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn refused_requests_complete_with_their_error() {
    let b = Arc::new(BlockBackend::new("cd"));
    let mut q = queue(&b, AioEngine::IoUring);
    let mut buf = [0u8; 512];
    assert_eq!(one(&mut q, Request::read(0, iov(&mut buf), 1)), Err(Errno::ENOMEDIUM));
    b.insert_medium(Arc::new(NullDriver::new(4096)), "n").unwrap();
    assert_eq!(one(&mut q, Request::read(4000, iov(&mut buf), 2)), Err(Errno::EIO), "crosses the end");
    b.set_read_only(true);
    assert_eq!(one(&mut q, Request::write(0, iov(&mut buf), 3)), Err(Errno::EPERM));
    assert_eq!(one(&mut q, Request::discard(0, 512, 4)), Ok(()), "discard=ignore: before the write check");
    b.set_discard(DiscardMode::Unmap);
    assert_eq!(one(&mut q, Request::discard(0, 512, 6)), Err(Errno::EPERM));
    assert_eq!(one(&mut q, Request::read(0, iov(&mut buf), 5)), Ok(()));
    assert_eq!(b.in_flight(), 0, "refusals were handed back too");
}

#[test]
fn injected_errors_reach_the_completion_on_both_engines() {
    for engine in ENGINES {
        let path = tmp(&format!("inj-{engine:?}"), 65536, 0);
        let inject = Arc::new(InjectDriver::new(Arc::new(RawFile::open(&path, false, CacheMode::Writeback).unwrap())));
        let b = Arc::new(BlockBackend::new("e"));
        b.insert_medium(inject.clone(), "e").unwrap();
        let mut q = queue(&b, engine);
        inject.add_rule(Rule { op: Some(Op::Write), sectors: Some((8, 8)), errno: libc::ENOSPC, count: Count::Once });
        let mut buf = [5u8; 512];
        assert_eq!(one(&mut q, Request::write(0, iov(&mut buf), 1)), Ok(()), "sector 0 passes");
        assert_eq!(one(&mut q, Request::write(4096, iov(&mut buf), 2)), Err(Errno::ENOSPC));
        assert_eq!(one(&mut q, Request::write(4096, iov(&mut buf), 3)), Ok(()), "once");
        assert_eq!(std::fs::read(&path).unwrap()[4096], 5);
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn eventfd_signals_completions_from_the_pool() {
    let path = tmp("efd", 65536, 3);
    let b = backend_on(&path, CacheMode::Writeback);
    for engine in ENGINES {
        let mut q = queue(&b, engine);
        let mut buf = [0u8; 4096];
        // SAFETY: buf outlives the completion below.
        unsafe { q.submit(Request::read(0, iov(&mut buf), 9)) };
        q.flush_submissions();
        let mut out: Vec<Completion> = Vec::new();
        let mut p = libc::pollfd { fd: q.eventfd(), events: libc::POLLIN, revents: 0 };
        // Requests go to the kernel or the pool; either way the eventfd
        // must become readable (10 s is only a bound against hanging).
        let ready = unsafe { libc::poll(&mut p, 1, 10_000) };
        assert_eq!(ready, 1, "{engine:?}: eventfd never became readable");
        while out.is_empty() {
            q.on_event(&mut out);
        }
        assert_eq!(out, vec![Completion { token: 9, result: Ok(()) }]);
        assert_eq!(buf, [3u8; 4096]);
    }
    let _ = std::fs::remove_file(&path);
}

#[derive(Default)]
struct DrainDev {
    log: Mutex<Vec<&'static str>>,
    held: AtomicBool,
}

impl BlockDevOps for DrainDev {
    fn drained_begin(&self) {
        self.log.lock().unwrap().push("begin");
        self.held.store(true, Ordering::SeqCst);
    }
    fn drained_end(&self) {
        self.log.lock().unwrap().push("end");
        self.held.store(false, Ordering::SeqCst);
    }
}

#[test]
fn drain_waits_for_requests_in_flight() {
    // Reads that stay in flight until released.
    let stuck = TestDisk::new(1 << 20, false);
    stuck.hold_reads(true);
    let b = Arc::new(BlockBackend::new("slow"));
    b.insert_medium(stuck.clone(), "slow").unwrap();
    let dev = Arc::new(DrainDev::default());
    b.attach_dev(dev.clone());
    let mut q = queue(&b, AioEngine::IoUring);
    let mut bufs = vec![[1u8; 512]; 4];
    for (i, buf) in bufs.iter_mut().enumerate() {
        // SAFETY: bufs outlive the queue's completions (waited for below).
        unsafe { q.submit(Request::read(i as u64 * 512, iov(buf), i as u64)) };
    }
    assert!(stuck.wait_reads(4, Duration::from_secs(10)), "the reads never reached the driver");
    assert_eq!(b.in_flight(), 4);

    let (tx, rx) = mpsc::channel();
    let b2 = b.clone();
    let drainer = std::thread::spawn(move || {
        b2.drain();
        tx.send(()).unwrap();
    });
    while !dev.held.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    // The device is held back and drain has not returned: 4 are stuck.
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "drain returned with requests in flight");
    stuck.hold_reads(false);
    // Done in the driver, but not handed back: still in flight.
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "drain returned before the completions were handed back");
    assert_eq!(b.in_flight(), 4);
    let mut out = Vec::new();
    while out.len() < 4 {
        let want = 4 - out.len();
        q.wait(&mut out, want);
    }
    rx.recv_timeout(Duration::from_secs(10)).expect("drain never returned");
    drainer.join().unwrap();
    assert_eq!(*dev.log.lock().unwrap(), vec!["begin", "end"]);
    assert_eq!(b.in_flight(), 0);
    assert!(out.iter().all(|c| c.result.is_ok()));
    assert!(bufs.iter().all(|b| b.iter().all(|&v| v == 0)), "the test disk reads zeros");
}

#[test]
fn queue_drain_from_its_own_thread_and_drain_all() {
    let path = tmp("qdrain", 1 << 20, 0);
    let b = backend_on(&path, CacheMode::Writeback);
    let dev = Arc::new(DrainDev::default());
    b.attach_dev(dev.clone());
    let mut q = queue(&b, AioEngine::IoUring);
    let mut bufs = vec![[7u8; 4096]; 16];
    for (i, buf) in bufs.iter_mut().enumerate() {
        // SAFETY: bufs outlive the drain, which returns every completion.
        unsafe { q.submit(Request::write(i as u64 * 4096, iov(buf), i as u64)) };
    }
    unsafe { q.submit(Request::discard(0, 4096, 100)) };
    let mut out = Vec::new();
    q.drain(&mut out);
    assert_eq!(out.len(), 17, "every completion handed back by drain");
    assert_eq!(q.pending(), 0);
    assert_eq!(b.in_flight(), 0);
    assert_eq!(*dev.log.lock().unwrap(), vec!["begin", "end"]);

    let other = Arc::new(BlockBackend::new("n"));
    other.insert_medium(Arc::new(NullDriver::new(4096)), "n").unwrap();
    BlockBackend::drain_all(&[b.clone(), other]);
    assert_eq!(*dev.log.lock().unwrap(), vec!["begin", "end", "begin", "end"]);
    let _ = std::fs::remove_file(&path);
}

/// xorshift64*, seeded: a failure reproduces.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[test]
fn concurrent_unaligned_o_direct_writes_lose_nothing() {
    const SIZE: u64 = 128 * 1024;
    let path = tmp("direct", SIZE as usize, 0);
    let Ok(drv) = RawFile::open(&path, false, CacheMode::None) else {
        println!("SKIPPED: no O_DIRECT in {}", path.display());
        eprintln!("SKIPPED: no O_DIRECT in {}", path.display());
        return;
    };
    assert!(drv.request_alignment() >= 512);
    for engine in ENGINES {
        let b = Arc::new(BlockBackend::new("p"));
        b.insert_medium(Arc::new(RawFile::open(&path, false, CacheMode::None).unwrap()), "p").unwrap();
        let mut q = queue(&b, engine);
        let mut model = std::fs::read(&path).unwrap();
        let mut rng = Rng(0x1234_5678 ^ engine as u64);
        for round in 0..60 {
            // A batch of writes with disjoint byte ranges that often share
            // a 512-byte block: in flight together, mixing aligned ones
            // (io_uring) with unaligned ones (read-modify-write on the pool).
            let mut cuts: Vec<u64> = (0..16).map(|_| rng.below(SIZE)).collect();
            cuts.sort();
            cuts.dedup();
            let mut bufs: Vec<Vec<u8>> = Vec::new();
            let mut ranges = Vec::new();
            for w in cuts.windows(2) {
                let (mut s, mut e) = (w[0], w[1]);
                if rng.below(2) == 0 {
                    // Widen to whole blocks inside the gap when it can.
                    let (as_, ae) = (s.div_ceil(512) * 512, e / 512 * 512);
                    if as_ < ae {
                        (s, e) = (as_, ae);
                    }
                }
                bufs.push((s..e).map(|i| (i as u8) ^ round as u8 ^ 0x5a).collect());
                ranges.push(s);
            }
            for (i, (buf, &s)) in bufs.iter_mut().zip(&ranges).enumerate() {
                model[s as usize..s as usize + buf.len()].copy_from_slice(buf);
                // SAFETY: bufs outlive the wait for all completions below.
                unsafe { q.submit(Request::write(s, iov(buf), i as u64)) };
            }
            let mut out = Vec::new();
            while out.len() < bufs.len() {
                let want = bufs.len() - out.len();
                q.wait(&mut out, want);
            }
            assert!(out.iter().all(|c| c.result.is_ok()), "{engine:?} round {round}: {out:?}");
        }
        drop(q);
        let on_disk = std::fs::read(&path).unwrap();
        assert!(on_disk == model, "{engine:?}: file differs from the model");
    }
    let _ = std::fs::remove_file(&path);
}

/// Storage whose reads panic: a bug in a driver.
struct Panicky;
impl BlockDriver for Panicky {
    fn name(&self) -> &'static str {
        "panicky"
    }
    fn size(&self) -> IoResult<u64> {
        Ok(1 << 20)
    }
    fn preadv(&self, _: u64, _: &[IoVec]) -> IoResult<()> {
        panic!("driver bug (this panic is expected by the test)");
    }
    fn pwritev(&self, _: u64, _: &[IoVec]) -> IoResult<()> {
        Ok(())
    }
    fn flush(&self) -> IoResult<()> {
        Ok(())
    }
    fn discard(&self, _: u64, _: u64) -> IoResult<()> {
        Ok(())
    }
    fn write_zeroes(&self, _: u64, _: u64, _: bool) -> IoResult<()> {
        Ok(())
    }
    fn truncate(&self, _: u64) -> IoResult<()> {
        Ok(())
    }
}

#[test]
fn a_panicking_pool_job_still_completes_and_keeps_its_worker() {
    let b = Arc::new(BlockBackend::new("panicky"));
    b.insert_medium(Arc::new(Panicky), "p").unwrap();
    let mut q = IoQueue::new(b.clone(), AioEngine::Threads).unwrap();
    let mut buf = [0u8; 512];
    assert_eq!(one(&mut q, Request::read(0, iov(&mut buf), 1)), Err(Errno::EIO), "the panic became EIO");
    // The worker goes back to waiting for work: it survived the panic.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while q.pool_workers() != (1, 1) {
        assert!(std::time::Instant::now() < deadline, "the worker did not survive: {:?}", q.pool_workers());
        std::thread::yield_now();
    }
    assert_eq!(one(&mut q, Request::write(0, iov(&mut buf), 2)), Ok(()));
    assert_eq!(q.pool_workers().0, 1, "the same worker took the next job");
    assert_eq!(b.in_flight(), 0);
}

#[test]
fn a_hung_drive_cannot_take_another_drives_workers() {
    // Drive A's storage hangs with more reads than a pool has workers.
    let hung = TestDisk::new(1 << 20, false);
    hung.hold_reads(true);
    let a = Arc::new(BlockBackend::new("hung"));
    a.insert_medium(hung.clone(), "hung").unwrap();
    let mut qa = IoQueue::new(a.clone(), AioEngine::Threads).unwrap();
    let n = block::aio::pool::MAX_WORKERS + 6;
    let mut bufs = vec![[0u8; 512]; n];
    for (i, buf) in bufs.iter_mut().enumerate() {
        // SAFETY: bufs outlive the wait for every completion below.
        unsafe { qa.submit(Request::read(0, iov(buf), i as u64)) };
    }
    assert!(hung.wait_reads(block::aio::pool::MAX_WORKERS, Duration::from_secs(10)), "A's workers never all hung");
    // Drive B still gets its requests done.
    let b = Arc::new(BlockBackend::new("fine"));
    b.insert_medium(TestDisk::new(1 << 20, false), "fine").unwrap();
    let mut qb = IoQueue::new(b, AioEngine::Threads).unwrap();
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let mut buf = [1u8; 512];
        tx.send(one(&mut qb, Request::read(0, iov(&mut buf), 7))).unwrap();
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(Ok(())), "drive B starved by drive A");
    t.join().unwrap();
    hung.hold_reads(false);
    let mut out = Vec::new();
    while out.len() < n {
        let want = n - out.len();
        qa.wait(&mut out, want);
    }
    assert!(out.iter().all(|c| c.result.is_ok()));
}
