//! Drain as a handshake, under any interleaving of threads: a stress test
//! in which sections begin and end on several threads while others submit
//! I/O, through both queue engines and the blocking calls, against a
//! driver that fails the test if a request ever starts, or is still
//! running, inside a section; and the pieces of the handshake one by one.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use block::drivers::null::NullDriver;
use block::iov::{zero, IoVec};
use block::{AioEngine, AsyncMode, BlockBackend, BlockDevOps, BlockDriver, Completion, IoQueue, IoResult, Request};

/// Threads between `drained_begin` returning and `drained_end`.
#[derive(Default)]
struct Watch {
    inside: AtomicUsize,
    violations: AtomicUsize,
    requests: AtomicUsize,
    first: Mutex<Option<String>>,
}

impl Watch {
    fn violation(&self, what: String) {
        self.violations.fetch_add(1, Ordering::SeqCst);
        self.first.lock().unwrap().get_or_insert(what);
    }
    fn check(&self, when: &str) {
        let n = self.inside.load(Ordering::SeqCst);
        if n > 0 {
            self.violation(format!("a request {when} inside a drained section ({n} open)"));
        }
    }
}

/// Storage that checks the watch as each request starts and ends, and
/// takes a little while in between.
struct Checked {
    watch: Arc<Watch>,
    mode: AsyncMode,
}

impl Checked {
    fn io(&self) -> IoResult<()> {
        self.watch.check("started");
        self.watch.requests.fetch_add(1, Ordering::SeqCst);
        for _ in 0..50 {
            std::hint::spin_loop();
        }
        std::thread::yield_now();
        self.watch.check("was still running");
        Ok(())
    }
}

impl BlockDriver for Checked {
    fn name(&self) -> &'static str {
        "checked"
    }
    fn size(&self) -> IoResult<u64> {
        Ok(1 << 20)
    }
    fn preadv(&self, _: u64, iov: &[IoVec]) -> IoResult<()> {
        // SAFETY: a read's segments are valid for writes.
        unsafe { zero(iov) };
        self.io()
    }
    fn pwritev(&self, _: u64, _: &[IoVec]) -> IoResult<()> {
        self.io()
    }
    fn flush(&self) -> IoResult<()> {
        self.io()
    }
    fn discard(&self, _: u64, _: u64) -> IoResult<()> {
        self.io()
    }
    fn write_zeroes(&self, _: u64, _: u64, _: bool) -> IoResult<()> {
        self.io()
    }
    fn truncate(&self, _: u64) -> IoResult<()> {
        Ok(())
    }
    fn async_mode(&self) -> AsyncMode {
        self.mode
    }
}

/// A device whose drained_begin/end must alternate and match the sections.
struct Dev {
    stopped: AtomicBool,
    watch: Arc<Watch>,
}

impl BlockDevOps for Dev {
    fn drained_begin(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            self.watch.violation("drained_begin on a stopped device".into());
        }
    }
    fn drained_end(&self) {
        if !self.stopped.swap(false, Ordering::SeqCst) {
            self.watch.violation("drained_end on a running device".into());
        }
    }
}

fn run_stress(mode: AsyncMode, engine: AioEngine) {
    block::testing::WIDEN_RACES.store(true, Ordering::Relaxed);
    let watch = Arc::new(Watch::default());
    let b = Arc::new(BlockBackend::new("stress"));
    b.insert_medium(Arc::new(Checked { watch: watch.clone(), mode }), "checked").unwrap();
    let dev = Arc::new(Dev { stopped: AtomicBool::new(false), watch: watch.clone() });
    b.attach_dev(dev.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut threads = Vec::new();

    // Sections, begun and ended on three threads, nested among them.
    for t in 0..3u64 {
        let (b, watch) = (b.clone(), watch.clone());
        threads.push(std::thread::spawn(move || {
            // At least 4000 sections each, and on until 20000 requests ran
            // in between (a section thread that never pauses would starve
            // the submitters), within the deadline.
            let mut i = 0u64;
            while (i < 4000 || watch.requests.load(Ordering::SeqCst) < 20_000) && Instant::now() < deadline {
                b.drained_begin();
                watch.inside.fetch_add(1, Ordering::SeqCst);
                if (i + t).is_multiple_of(3) {
                    std::thread::sleep(Duration::from_micros(50));
                }
                watch.inside.fetch_sub(1, Ordering::SeqCst);
                b.drained_end();
                if i % 8 == t {
                    std::thread::sleep(Duration::from_micros(100));
                } else {
                    std::thread::yield_now();
                }
                i += 1;
            }
        }));
    }
    // Queues, each owned by its thread, submitting batches and polling.
    let mut submitters = Vec::new();
    for t in 0..2u64 {
        let (b, stop) = (b.clone(), stop.clone());
        submitters.push(std::thread::spawn(move || {
            let mut q = IoQueue::new(b, engine).unwrap();
            let mut bufs = vec![[0u8; 512]; 8];
            let mut out: Vec<Completion> = Vec::new();
            let mut done = 0u64;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                for (i, buf) in bufs.iter_mut().enumerate() {
                    // SAFETY: `bufs` outlives the wait for every completion below.
                    let seg = vec![unsafe { IoVec::new(buf.as_mut_ptr(), 512) }];
                    let req = match (i + t as usize) % 4 {
                        0 => Request::write(i as u64 * 512, seg, i as u64),
                        1 => Request::flush(i as u64),
                        _ => Request::read(i as u64 * 512, seg, i as u64),
                    };
                    unsafe { q.submit(req) };
                }
                q.flush_submissions();
                out.clear();
                while out.len() < bufs.len() {
                    let want = bufs.len() - out.len();
                    q.wait(&mut out, want);
                }
                assert!(out.iter().all(|c| c.result.is_ok()), "{out:?}");
                done += out.len() as u64;
            }
            done
        }));
    }
    // And blocking calls from another thread.
    {
        let (b, stop) = (b.clone(), stop.clone());
        submitters.push(std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let mut done = 0;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                b.read(0, &mut buf).unwrap();
                b.write(512, &buf).unwrap();
                done += 2;
            }
            done
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let submitted: u64 = submitters.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(Instant::now() < deadline, "the stress run hit its 60 s bound");
    let first = watch.first.lock().unwrap().clone();
    assert_eq!(watch.violations.load(Ordering::SeqCst), 0, "{mode:?}/{engine:?}: first: {first:?}");
    assert!(!dev.stopped.load(Ordering::SeqCst), "the device was left stopped");
    assert!(!b.is_drained() && b.in_flight() == 0);
    assert!(watch.requests.load(Ordering::SeqCst) >= 20_000, "too little I/O ran: {submitted}");
}

#[test]
fn stress_no_request_runs_inside_a_section_inline() {
    run_stress(AsyncMode::Inline, AioEngine::IoUring);
}

#[test]
fn stress_no_request_runs_inside_a_section_on_the_pool() {
    run_stress(AsyncMode::Blocking, AioEngine::Threads);
}

#[test]
fn requests_submitted_in_a_section_are_parked_in_order_and_run_after_it() {
    let b = Arc::new(BlockBackend::new("p"));
    b.insert_medium(Arc::new(NullDriver::new(1 << 20)), "n").unwrap();
    let mut q = IoQueue::new(b.clone(), AioEngine::IoUring).unwrap();
    b.drained_begin();
    let mut buf = [1u8; 512];
    for t in 0..3 {
        // SAFETY: buf outlives the completions waited for below.
        unsafe { q.submit(Request::read(0, vec![IoVec::new(buf.as_mut_ptr(), 512)], t)) };
    }
    let mut out = Vec::new();
    assert_eq!(q.poll(&mut out), 0, "nothing runs inside the section");
    assert_eq!((q.parked(), b.in_flight()), (3, 0));
    // The end of the section wakes the queue's event loop.
    let mut p = libc::pollfd { fd: q.eventfd(), events: libc::POLLIN, revents: 0 };
    assert_eq!(unsafe { libc::poll(&mut p, 1, 0) }, 0, "eventfd readable before the end");
    b.drained_end();
    assert_eq!(unsafe { libc::poll(&mut p, 1, 10_000) }, 1, "the end did not signal the queue");
    q.on_event(&mut out);
    assert_eq!(out.iter().map(|c| c.token).collect::<Vec<_>>(), [0, 1, 2], "in submission order");
    assert_eq!((q.parked(), b.in_flight()), (0, 0));
}

#[test]
fn blocking_calls_wait_for_the_section_to_end() {
    let b = Arc::new(BlockBackend::new("w"));
    b.insert_medium(Arc::new(NullDriver::new(1 << 20)), "n").unwrap();
    b.drained_begin();
    let (tx, rx) = std::sync::mpsc::channel();
    let b2 = b.clone();
    let t = std::thread::spawn(move || {
        let r = b2.read(0, &mut [0u8; 512]);
        tx.send(r).unwrap();
    });
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "a read ran inside the section");
    assert_eq!(b.in_flight(), 0);
    b.drained_end();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(Ok(())));
    t.join().unwrap();
    // Truncate is a request too.
    b.drained_begin();
    let b2 = b.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || tx.send(b2.truncate(8192)).unwrap());
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "a truncate ran inside the section");
    assert_eq!(b.getlength(), Ok(1 << 20));
    b.drained_end();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(Ok(())));
    t.join().unwrap();
    assert_eq!(b.getlength(), Ok(8192));
}

#[test]
fn with_deferred_ack_a_completion_counts_until_the_owner_acts_on_it() {
    let b = Arc::new(BlockBackend::new("ack"));
    b.insert_medium(Arc::new(NullDriver::new(1 << 20)), "n").unwrap();
    let mut q = IoQueue::new(b.clone(), AioEngine::IoUring).unwrap();
    q.set_deferred_ack(true);
    unsafe { q.submit(Request::flush(1)) };
    let mut out = Vec::new();
    assert_eq!(q.poll(&mut out), 1);
    assert_eq!(b.in_flight(), 1, "handed back but not yet acted on");
    q.ack();
    assert_eq!(b.in_flight(), 0);
}

#[test]
fn a_bounded_drain_names_the_drive_still_busy_and_ends_its_section() {
    let b = Arc::new(BlockBackend::new("stuck"));
    b.insert_medium(Arc::new(NullDriver::new(1 << 20)), "n").unwrap();
    let idle = Arc::new(BlockBackend::new("idle"));
    let mut q = IoQueue::new(b.clone(), AioEngine::IoUring).unwrap();
    q.set_deferred_ack(true);
    unsafe { q.submit(Request::flush(1)) };
    let mut out = Vec::new();
    assert_eq!(q.poll(&mut out), 1);
    // The completion is never acknowledged: the drive stays busy.
    let t = Instant::now();
    let busy = BlockBackend::drain_all_for(&[b.clone(), idle.clone()], Duration::from_millis(100));
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert_eq!(busy, vec![("stuck".to_string(), 1)]);
    assert!(!b.is_drained() && !idle.is_drained(), "the sections ended");
    q.ack();
    assert!(BlockBackend::drain_all_for(&[b, idle], Duration::from_millis(100)).is_empty());
}
