//! Asynchronous requests: an `IoQueue` belongs to one thread (a device's
//! I/O thread, the benchmark) and one drive. It may be made on another
//! thread, but once it has submitted a request it must stay on the thread
//! that did (its io_uring is bound to that thread, see `new_ring`).
//! Requests are submitted without waiting; their completions come back from
//! `poll`, and the queue's eventfd becomes readable when completions arrive
//! from elsewhere while `poll` has handed back everything, so an event loop
//! can sleep on it and call `poll` when it wakes.
//!
//! Each request goes where it is cheapest (QEMU makes the same choices):
//! - a driver that never blocks (null) runs at once, on the submitting
//!   thread: a thread hop would cost more than the request;
//! - reads, writes and flushes of a raw file go straight to the kernel
//!   through io_uring (the default engine), when they are aligned for the
//!   file's O_DIRECT needs;
//! - everything else (error injection, requests that need bounce buffers,
//!   discard, write-zeroes, and all requests with `aio=threads` or when
//!   io_uring is unavailable) runs on the thread pool.
//!
//! Completions that are ready at submission do not touch the eventfd:
//! callers poll after each batch they submit.
//!
//! A drive with I/O limits (`throttle`) holds requests over budget in
//! order, one queue per direction, after QEMU's checks and before any
//! engine sees them; the queue's timer (`timer_fd`, for the owner's event
//! loop) fires when the group lets one go.
//!
//! A request counts as in flight for drain from its admission until `poll`
//! hands its completion back. Requests submitted while a drained section is
//! open are parked, in order, and started once the section ends (the
//! backend then signals the eventfd). Nothing is accounted here: the
//! device decides what a completion means (`BlockBackend::complete_request`).

pub mod pool;

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, Once};

use io_uring::{opcode, types, IoUring};
use vmm_sys_util::eventfd::EventFd;

use crate::backend::BlockBackend;
use crate::drain::Waker;
use crate::driver::{AsyncMode, BlockDriver, Errno, IoResult};
use crate::drivers::options::AioEngine;
use crate::io::{exec, needs_bounce, Job};
use crate::iov::{advance, total_len, zero, IoVec};
use crate::request::{Completion, Op, Request};
use crate::throttle::drive::Ticket;
use crate::throttle::timer::Timer;
use pool::Pool;

/// Ring size; also the most requests one queue keeps in io_uring at once
/// (more go to the thread pool), so the completion ring (twice as large)
/// can never overflow.
const RING_ENTRIES: u32 = 256;

/// Linux's IOV_MAX: more segments than this go to the thread pool, whose
/// loop transfers them in pieces.
const IOV_MAX: usize = 1024;

/// A request in io_uring.
struct Slot {
    token: u64,
    op: Op,
    /// Where what is left to transfer starts (short transfers resubmit).
    offset: u64,
    iov: Vec<IoVec>,
    fd: RawFd,
    /// RWF_DSYNC on writes: the write cache is off.
    dsync: bool,
    /// Keeps the file open until the kernel is done with it, even if the
    /// medium is removed meanwhile.
    drv: Arc<dyn BlockDriver>,
    /// Holds the backend's write gate shared.
    gate: bool,
}

/// What the pool's workers hand back.
struct Shared {
    efd: EventFd,
    done: Mutex<Vec<Completion>>,
}

impl Shared {
    fn deliver(&self, c: Completion) {
        self.done.lock().unwrap_or_else(|e| e.into_inner()).push(c);
        let _ = self.efd.write(1);
    }
}

/// Delivers a pool job's completion when dropped: with the job's result,
/// or EIO when the job panicked before it had one. No completion is lost.
struct Delivery {
    shared: Arc<Shared>,
    token: u64,
    result: Option<IoResult<()>>,
}

impl Drop for Delivery {
    fn drop(&mut self) {
        let result = self.result.take().unwrap_or(Err(Errno::EIO));
        self.shared.deliver(Completion { token: self.token, result });
    }
}

/// What an io_uring_enter failure means for the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EnterError {
    /// Interrupted: try again now.
    Retry,
    /// The kernel is short of resources or its completion queue is full:
    /// reap, then try again later, never in a tight loop.
    Later,
    /// Anything else will not get better: the ring is given up, its
    /// unsubmitted requests fail, new ones go to the pool.
    Broken,
}

/// io_uring_enter's flag to process and wait for completions.
const IORING_ENTER_GETEVENTS: u32 = 1;

fn classify(e: &std::io::Error) -> EnterError {
    match e.raw_os_error() {
        Some(libc::EINTR) => EnterError::Retry,
        Some(libc::EAGAIN) | Some(libc::EBUSY) => EnterError::Later,
        _ => EnterError::Broken,
    }
}

pub struct IoQueue {
    backend: Arc<BlockBackend>,
    shared: Arc<Shared>,
    /// Registered with the backend while requests are parked.
    waker: Waker,
    pool: Arc<Pool>,
    ring: Option<IoUring>,
    /// The ring was made disabled (see `new_ring`) and is enabled by the
    /// first trip into the kernel, on the thread that owns the queue.
    ring_disabled: bool,
    /// io_uring_enter failed for good: nothing new goes to the ring, what
    /// it holds is still reaped (`reap_broken`), and it is dropped once
    /// empty.
    ring_broken: bool,
    /// The thread that enabled the ring, the only one that may enter it.
    ring_owner: Option<std::thread::ThreadId>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// Completions known at submission, returned by the next poll.
    ready: Vec<Completion>,
    /// Requests that arrived inside a drained section, in order.
    parked: VecDeque<Request>,
    cqes: Vec<(u64, i32)>,
    /// Slots pushed to the submission ring that the kernel has not taken.
    queued: Vec<usize>,
    ring_inflight: usize,
    pool_inflight: usize,
    /// The owner acknowledges completions itself (`ack`), once it has
    /// acted on them; until then they still count as in flight.
    deferred_ack: bool,
    /// Completions handed back and not yet acknowledged.
    unacked: usize,
    /// Requests held by the drive's I/O limits, per direction, in order.
    throttled: [VecDeque<Throttled>; 2],
    /// Set by the drive's throttle group when a held request may go.
    timer: Arc<Timer>,
}

/// A request the drive's limits hold, checked and ready to run.
struct Throttled {
    ticket: Ticket,
    drv: Arc<dyn BlockDriver>,
    job: Job,
    req: Request,
}

fn io_uring_unavailable(e: &std::io::Error) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| eprintln!("block: io_uring is unavailable ({e}); using the thread pool"));
}

fn io_uring_broken(e: &std::io::Error) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| eprintln!("block: io_uring failed ({e}); using the thread pool"));
}

/// A ring whose completions do not interrupt the owner thread while it
/// runs (COOP_TASKRUN): measured on tmpfs, 3x the requests per second of a
/// plain ring. A sleeping owner is still woken (its poll or epoll returns
/// EINTR and the completions are posted), and TASKRUN_FLAG tells `poll` when
/// posted-but-unprocessed completions need a trip into the kernel.
///
/// Where the kernel has them (6.1), also SINGLE_ISSUER and DEFER_TASKRUN,
/// as fio sets them: completions are posted only when the owner enters the
/// kernel to get events, in one batch, instead of by task work that
/// interrupts it. Measured with block-bench against fio on a tmpfs file
/// (reads there are handed to io_uring's workers), interleaved, 2-3 runs
/// each: 4 KiB random reads went from 0.94 to 0.98 of fio at depth 1 and
/// from 0.82 to 0.93 at depth 32. The registered
/// eventfd still fires when the first held-back completion arrives, so
/// owners that sleep in epoll still wake. The single issuer is whichever
/// thread enters first: the ring is made disabled (R_DISABLED) and enabled
/// by that first trip, because queues are made on one thread (a vCPU
/// activating a device) and used on another (its I/O thread). Kernels
/// before 5.19 lack all of these: a plain ring then.
///
/// Returns the ring and whether it still needs enabling.
fn new_ring() -> std::io::Result<(IoUring, bool)> {
    let coop = || {
        let mut b = IoUring::builder();
        b.setup_coop_taskrun().setup_taskrun_flag();
        b
    };
    if let Ok(r) = coop().setup_single_issuer().setup_defer_taskrun().setup_r_disabled().build(RING_ENTRIES) {
        return Ok((r, true));
    }
    coop().build(RING_ENTRIES).or_else(|_| IoUring::new(RING_ENTRIES)).map(|r| (r, false))
}

impl IoQueue {
    /// A queue for `backend`. `AioEngine::IoUring` falls back to the thread
    /// pool, said once on stderr, when the kernel refuses io_uring.
    pub fn new(backend: Arc<BlockBackend>, engine: AioEngine) -> Result<IoQueue, crate::Error> {
        let efd = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|e| crate::Error::Queue(e.to_string()))?;
        let ring = match engine {
            AioEngine::Threads => None,
            AioEngine::IoUring => {
                let r = new_ring().and_then(|(r, disabled)| {
                    r.submitter().register_eventfd(efd.as_raw_fd())?;
                    Ok((r, disabled))
                });
                r.inspect_err(io_uring_unavailable).ok()
            }
        };
        let (ring, ring_disabled) = match ring {
            Some((r, disabled)) => (Some(r), disabled),
            None => (None, false),
        };
        let shared = Arc::new(Shared { efd, done: Mutex::new(Vec::new()) });
        let timer = Arc::new(Timer::new().map_err(|e| crate::Error::Queue(e.to_string()))?);
        backend.limits().add_timer(&timer);
        let for_waker = shared.clone();
        Ok(IoQueue {
            backend,
            shared,
            waker: Arc::new(move || {
                let _ = for_waker.efd.write(1);
            }),
            pool: Arc::new(Pool::default()),
            ring,
            ring_disabled,
            ring_owner: None,
            ring_broken: false,
            slots: Vec::new(),
            free: Vec::new(),
            ready: Vec::new(),
            parked: VecDeque::new(),
            cqes: Vec::new(),
            queued: Vec::new(),
            ring_inflight: 0,
            pool_inflight: 0,
            deferred_ack: false,
            unacked: 0,
            throttled: Default::default(),
            timer,
        })
    }

    /// The engine actually in use.
    pub fn engine(&self) -> AioEngine {
        if self.ring.is_some() {
            AioEngine::IoUring
        } else {
            AioEngine::Threads
        }
    }

    pub fn backend(&self) -> &Arc<BlockBackend> {
        &self.backend
    }

    /// This queue's worker threads, and how many are idle (for tests).
    pub fn pool_workers(&self) -> (usize, usize) {
        self.pool.workers()
    }

    /// Readable when completions may be waiting: read it (`on_event` does)
    /// and poll.
    pub fn eventfd(&self) -> RawFd {
        self.shared.efd.as_raw_fd()
    }

    /// Submitted requests whose completion `poll` has not returned yet
    /// (parked ones included).
    pub fn pending(&self) -> usize {
        self.in_flight() + self.parked.len()
    }

    /// Requests admitted and not yet handed back (throttled ones too).
    fn in_flight(&self) -> usize {
        self.ring_inflight + self.pool_inflight + self.ready.len() + self.throttled()
    }

    /// Requests the drive's I/O limits hold.
    pub fn throttled(&self) -> usize {
        self.throttled[0].len() + self.throttled[1].len()
    }

    /// Readable when the drive's I/O limits may let a held request go:
    /// call `on_timer`.
    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// Clears the timer and polls: what an event loop calls when
    /// `timer_fd` is readable.
    pub fn on_timer(&mut self, out: &mut Vec<Completion>) -> usize {
        self.timer.clear();
        self.poll(out)
    }

    /// Starts the held requests the drive's limits let go now, in order,
    /// and sets the timer for the next one the member waits on.
    #[inline]
    fn release_throttled(&mut self) {
        if self.throttled() != 0 {
            self.release_due();
        }
    }

    #[inline(never)]
    fn release_due(&mut self) {
        for d in 0..2 {
            // Requests held by one member, oldest first; after a change of
            // group, the old member's (all let go by the drain that came
            // with it) are ahead of the new one's.
            let mut seen: Option<(Arc<crate::throttle::Member>, u64)> = None;
            while let Some(front) = self.throttled[d].front() {
                let m = &front.ticket.member;
                let released = match &seen {
                    Some((sm, r)) if Arc::ptr_eq(sm, m) => *r,
                    _ => {
                        let r = m.poll(front.ticket.dir);
                        seen = Some((m.clone(), r));
                        r
                    }
                };
                if front.ticket.ticket >= released {
                    break;
                }
                if let Some(t) = self.throttled[d].pop_front() {
                    self.dispatch(t.drv, t.job, t.req);
                }
            }
        }
    }

    /// Requests waiting for a drained section to end.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Submits a request. Refused requests (bad range, no medium, read-only)
    /// complete with their error like any other.
    ///
    /// # Safety
    /// The memory behind the request's segments must stay valid, and
    /// untouched by anyone else, until `poll` has returned the request's
    /// completion (or the queue is dropped, which waits for everything
    /// started and never starts what is parked).
    pub unsafe fn submit(&mut self, req: Request) {
        self.unpark();
        if !self.parked.is_empty() || !self.backend.try_enter(&self.waker) {
            self.parked.push_back(req);
            return;
        }
        self.start(req);
    }

    /// Starts parked requests, in order, while no section is open.
    fn unpark(&mut self) {
        while !self.parked.is_empty() && self.backend.try_enter(&self.waker) {
            if let Some(req) = self.parked.pop_front() {
                self.start(req);
            }
        }
    }

    /// Runs an admitted request, or queues it with an engine.
    fn start(&mut self, req: Request) {
        let (drv, job) = match self.backend.prepare(&req) {
            Ok(Some(x)) => x,
            Ok(None) => return self.ready.push(Completion { token: req.token(), result: Ok(()) }),
            Err(e) => return self.ready.push(Completion { token: req.token(), result: Err(e) }),
        };
        if let Some(ticket) = self.backend.limits().intercept(job.op, job.len) {
            let d = ticket.dir as usize;
            return self.throttled[d].push_back(Throttled { ticket, drv, job, req });
        }
        self.dispatch(drv, job, req);
    }

    /// Runs a checked request now, or queues it with an engine. Inlined
    /// into `start`, the path of every request.
    #[inline(always)]
    fn dispatch(&mut self, drv: Arc<dyn BlockDriver>, job: Job, req: Request) {
        let mode = drv.async_mode();
        // A flush that the file drops (cache=unsafe) is as cheap as null's.
        let inline = mode == AsyncMode::Inline || (job.op == Op::Flush && matches!(mode, AsyncMode::File { flush: false, .. }));
        if inline {
            // A driver that panics fails the request, not the in-flight
            // count (release builds abort on a panic anyway).
            let result = catch_unwind(AssertUnwindSafe(|| exec(self.backend.gate(), &*drv, job, req.iov()))).unwrap_or(Err(Errno::EIO));
            return self.ready.push(Completion { token: req.token(), result });
        }
        match mode {
            AsyncMode::File { fd, flush } if self.ring_can_take(&*drv, job, req.iov()) => {
                let gate = job.op == Op::Write && drv.request_alignment() > 1;
                if gate && !self.backend.gate().try_shared() {
                    // An unaligned write holds the file: wait for it on the pool.
                    return self.run_on_pool(drv, job, req);
                }
                let token = req.token();
                let slot = Slot { token, op: job.op, offset: job.offset, iov: req.into_iov(), fd, dsync: job.fua && flush, drv, gate };
                let idx = match self.free.pop() {
                    Some(i) => {
                        self.slots[i] = Some(slot);
                        i
                    }
                    None => {
                        self.slots.push(Some(slot));
                        self.slots.len() - 1
                    }
                };
                self.ring_inflight += 1;
                self.push_sqe(idx);
            }
            _ => self.run_on_pool(drv, job, req),
        }
    }

    fn ring_can_take(&self, drv: &dyn BlockDriver, job: Job, iov: &[IoVec]) -> bool {
        self.ring.is_some()
            && !self.ring_broken
            && matches!(job.op, Op::Read | Op::Write | Op::Flush)
            && self.ring_inflight < RING_ENTRIES as usize
            && iov.len() <= IOV_MAX
            && !needs_bounce(drv.request_alignment(), job.offset, iov)
    }

    fn run_on_pool(&mut self, drv: Arc<dyn BlockDriver>, job: Job, req: Request) {
        let backend = self.backend.clone();
        let delivery = Delivery { shared: self.shared.clone(), token: req.token(), result: None };
        self.pool_inflight += 1;
        self.pool.spawn(Box::new(move || {
            // Moved whole into the job, so its drop delivers even on a panic.
            let mut delivery = delivery;
            delivery.result = Some(exec(backend.gate(), &*drv, job, req.iov()));
        }));
    }

    /// Queues slot `idx`'s (remaining) transfer in the submission ring.
    fn push_sqe(&mut self, idx: usize) {
        if self.ring_broken {
            // The rest of a short transfer on a ring that takes nothing more.
            return self.fail_slot(idx, Errno::EIO);
        }
        let Some(s) = self.slots[idx].as_ref() else { return };
        let fd = types::Fd(s.fd);
        let dsync = if s.dsync { libc::RWF_DSYNC } else { 0 };
        let entry = match (s.op, s.iov.as_slice()) {
            (Op::Read, [one]) => opcode::Read::new(fd, one.base(), one.len() as u32).offset(s.offset).build(),
            (Op::Read, v) => opcode::Readv::new(fd, IoVec::as_iovec_ptr(v), v.len() as u32).offset(s.offset).build(),
            (Op::Write, [one]) => opcode::Write::new(fd, one.base(), one.len() as u32).offset(s.offset).rw_flags(dsync).build(),
            (Op::Write, v) => opcode::Writev::new(fd, IoVec::as_iovec_ptr(v), v.len() as u32).offset(s.offset).rw_flags(dsync).build(),
            _ => opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build(),
        }
        .user_data(idx as u64);
        loop {
            let Some(ring) = self.ring.as_mut() else { return self.fail_slot(idx, Errno::EIO) };
            // SAFETY: the entry points at the slot's segments, which live
            // (with the caller's memory) until the completion is reaped.
            if unsafe { ring.submission().push(&entry) }.is_ok() {
                self.queued.push(idx);
                return;
            }
            // Full: hand what is queued to the kernel to make room.
            if !self.enter() {
                // No room and no way to make it now: fail rather than spin.
                return self.fail_slot(idx, Errno(libc::EAGAIN));
            }
        }
    }

    /// Fails a slot that never reached the kernel.
    fn fail_slot(&mut self, idx: usize, errno: Errno) {
        let mut ready = std::mem::take(&mut self.ready);
        self.finish(idx, Err(errno), &mut ready);
        self.ready = ready;
    }

    /// Gives queued requests to the kernel now (poll does this too).
    pub fn flush_submissions(&mut self) {
        if !self.queued.is_empty() {
            self.enter();
        }
    }

    /// One trip into the kernel: submits what is queued and, as the trip
    /// returns, lets it post the completions it holds back. False when the
    /// kernel took nothing and nothing should be retried now.
    fn enter(&mut self) -> bool {
        if !self.enable_ring() {
            return false;
        }
        debug_assert!(
            self.ring_owner.is_none_or(|t| t == std::thread::current().id()),
            "an IoQueue moved threads after its first request (see the module doc)"
        );
        let Some(ring) = self.ring.as_mut().filter(|_| !self.ring_broken) else { return false };
        let pending = ring.submission().len() as u32;
        for _ in 0..16 {
            // GETEVENTS with nothing to wait for: a DEFER_TASKRUN ring posts
            // held-back completions only on a trip that asks for events.
            // SAFETY: no extended argument, and flags the kernel knows.
            match unsafe { ring.submitter().enter::<libc::sigset_t>(pending, 0, IORING_ENTER_GETEVENTS, None) } {
                Ok(n) => {
                    let n = n.min(self.queued.len());
                    self.queued.drain(..n);
                    return true;
                }
                Err(e) => match classify(&e) {
                    EnterError::Retry => continue,
                    EnterError::Later => return false,
                    EnterError::Broken => {
                        io_uring_broken(&e);
                        self.break_ring(Errno(e.raw_os_error().unwrap_or(libc::EIO)));
                        return false;
                    }
                },
            }
        }
        false
    }

    /// A broken ring still holds requests the kernel owns (and buffers it
    /// may still write): a DEFER_TASKRUN ring posts their completions only
    /// on a trip that asks for events, so keep asking, whatever it answers,
    /// until the ring is empty and dropped.
    fn reap_broken(&mut self) {
        if !self.ring_broken || self.ring_inflight == 0 {
            return;
        }
        if let Some(ring) = self.ring.as_ref() {
            // SAFETY: no extended argument, and flags the kernel knows.
            let _ = unsafe { ring.submitter().enter::<libc::sigset_t>(0, 0, IORING_ENTER_GETEVENTS, None) };
        }
    }

    /// Enables a ring made disabled, from the thread that enters it first
    /// (which SINGLE_ISSUER then binds it to). False when the ring is gone.
    fn enable_ring(&mut self) -> bool {
        if !self.ring_disabled {
            return self.ring.is_some() && !self.ring_broken;
        }
        let Some(ring) = self.ring.as_ref() else { return false };
        self.ring_disabled = false;
        self.ring_owner = Some(std::thread::current().id());
        if let Err(e) = ring.submitter().register_enable_rings() {
            io_uring_broken(&e);
            self.break_ring(Errno(e.raw_os_error().unwrap_or(libc::EIO)));
            return false;
        }
        true
    }

    /// The ring cannot be used any more: what it never took fails, what it
    /// took may still complete (it is still reaped), new requests go to the
    /// pool.
    fn break_ring(&mut self, errno: Errno) {
        self.ring_broken = true;
        for idx in std::mem::take(&mut self.queued) {
            self.fail_slot(idx, errno);
        }
        self.drop_broken_ring();
    }

    fn drop_broken_ring(&mut self) {
        if self.ring_broken && self.ring_inflight == 0 {
            self.ring = None;
        }
    }

    /// Appends every completion available now to `out` (handing them back,
    /// so they stop counting as in flight); returns how many.
    pub fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        let before = out.len();
        self.unpark();
        self.release_throttled();
        out.append(&mut self.ready);
        if self.pool_inflight > 0 {
            let mut done = self.shared.done.lock().unwrap_or_else(|e| e.into_inner());
            self.pool_inflight -= done.len();
            out.append(&mut done);
        }
        if self.ring.is_some() {
            self.flush_submissions();
            self.reap_broken();
            self.reap(out);
            // Completions held back for us need a trip into the kernel,
            // taken only when the kernel says some are (TASKRUN_FLAG). It
            // is taken even when some were reaped just now: a
            // DEFER_TASKRUN ring signals the eventfd for the first
            // held-back completion only, so leaving the others would
            // strand them until something else woke the owner.
            if self.ring_inflight > 0 && !self.ring_broken && self.ring.as_mut().is_some_and(|r| r.submission().taskrun()) {
                self.enter();
                self.reap(out);
            }
            // Short transfers resubmitted their rest; failed slots are ready.
            self.flush_submissions();
            out.append(&mut self.ready);
            self.drop_broken_ring();
        }
        let n = out.len() - before;
        if self.deferred_ack {
            self.unacked += n;
        } else {
            self.backend.leave(n);
        }
        n
    }

    /// With `deferred`, a completion `poll` hands back keeps counting as in
    /// flight (a drain keeps waiting) until the owner calls `ack` after
    /// acting on it: a device that completes to its guest, applies the
    /// error policy or holds the request under werror=stop, all before a
    /// drain can return, as QEMU counts a request until its callback ran.
    pub fn set_deferred_ack(&mut self, deferred: bool) {
        self.deferred_ack = deferred;
        self.ack();
    }

    /// The owner has acted on every completion handed back so far.
    pub fn ack(&mut self) {
        self.backend.leave(std::mem::take(&mut self.unacked));
    }

    /// Takes the completions visible in the completion ring.
    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        let Some(ring) = self.ring.as_mut() else { return 0 };
        let before = out.len();
        self.cqes.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        let mut cqes = std::mem::take(&mut self.cqes);
        for (idx, res) in cqes.drain(..) {
            self.ring_done(idx as usize, res, out);
        }
        self.cqes = cqes;
        out.len() - before
    }

    /// A CQE for slot `idx`: finished, failed, or short and resubmitted.
    fn ring_done(&mut self, idx: usize, res: i32, out: &mut Vec<Completion>) {
        let Some(s) = self.slots.get_mut(idx).and_then(|s| s.as_mut()) else { return };
        let result = if res < 0 {
            Err(Errno(-res))
        } else {
            let left = total_len(&s.iov);
            let moved = res as u64;
            match s.op {
                Op::Read | Op::Write if moved < left && moved > 0 => {
                    advance(&mut s.iov, res as usize);
                    s.offset += moved;
                    return self.push_sqe(idx);
                }
                Op::Read if moved < left => {
                    // End of file: the rest reads as zeros, as in the driver.
                    // SAFETY: the rest of a read's segments, valid for
                    // writes until the completion is delivered.
                    unsafe { zero(&s.iov) };
                    Ok(())
                }
                // A write that makes no progress would loop forever.
                Op::Write if moved < left => Err(Errno::EIO),
                Op::Write => {
                    s.drv.grown_to(s.offset + moved);
                    Ok(())
                }
                _ => Ok(()),
            }
        };
        self.finish(idx, result, out);
    }

    /// Frees slot `idx` and delivers its completion, releasing the gate.
    fn finish(&mut self, idx: usize, result: IoResult<()>, out: &mut Vec<Completion>) {
        let Some(s) = self.slots[idx].take() else { return };
        self.free.push(idx);
        self.ring_inflight -= 1;
        if s.gate {
            self.backend.gate().unlock_shared();
        }
        out.push(Completion { token: s.token, result });
    }

    /// Clears the eventfd and polls: what an event loop calls when the
    /// eventfd is readable.
    pub fn on_event(&mut self, out: &mut Vec<Completion>) -> usize {
        let _ = self.shared.efd.read();
        self.poll(out)
    }

    /// Polls, blocking until at least `min` completions were appended to
    /// `out` or nothing is pending (parked requests wait for their section
    /// to end). Returns how many were appended.
    pub fn wait(&mut self, out: &mut Vec<Completion>, min: usize) -> usize {
        let before = out.len();
        loop {
            self.poll(out);
            if out.len() - before >= min || self.pending() == 0 {
                return out.len() - before;
            }
            self.sleep();
        }
    }

    /// Requests wait in the submission ring because the kernel refused
    /// them for now (EAGAIN/EBUSY): the owner must poll again soon, since
    /// no completion will wake it for them.
    pub fn has_unsubmitted(&self) -> bool {
        !self.queued.is_empty()
    }

    /// Sleeps until a completion may have arrived.
    fn sleep(&mut self) {
        // Whatever waits in the submission ring goes first, with its
        // bookkeeping; only an empty one may be waited on below.
        self.flush_submissions();
        if self.has_unsubmitted() {
            // The kernel refused them for now; try again shortly.
            return self.wait_events(1);
        }
        self.enable_ring();
        match self.ring.as_ref() {
            // Only io_uring to wait for: let the kernel block us.
            Some(ring)
                if !self.ring_broken
                    && self.pool_inflight == 0
                    && self.ring_inflight > 0
                    && self.parked.is_empty()
                    && self.throttled() == 0 =>
            {
                if let Err(e) = ring.submitter().submit_and_wait(1) {
                    match classify(&e) {
                        EnterError::Retry => {}
                        // The eventfd (registered with the ring) wakes us;
                        // the timeout only bounds a missed wake-up.
                        EnterError::Later => self.wait_events(1),
                        EnterError::Broken => {
                            io_uring_broken(&e);
                            self.break_ring(Errno(e.raw_os_error().unwrap_or(libc::EIO)));
                        }
                    }
                }
            }
            // The pool, the waker of parked requests and the ring (through
            // its registered eventfd) signal the eventfd. A broken ring's
            // last completions are looked for every 10 ms.
            _ if self.ring_broken => self.wait_events(10),
            _ => self.wait_events(-1),
        }
    }

    /// Sleeps until the eventfd or the timer is readable or `timeout_ms`
    /// passes (-1: no limit), then clears both.
    fn wait_events(&self, timeout_ms: i32) {
        let ev = |fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        let mut p = [ev(self.shared.efd.as_raw_fd()), ev(self.timer.as_raw_fd())];
        // SAFETY: polls two descriptors we own.
        unsafe { libc::poll(p.as_mut_ptr(), 2, timeout_ms) };
        let _ = self.shared.efd.read();
        // A drive without limits never sets its timer: no syscall for it.
        if p[1].revents != 0 {
            self.timer.clear();
        }
    }

    /// Drains the drive from the queue's own thread: the device is held
    /// back, this queue's requests complete (appended to `out` for the
    /// caller to deliver), and so do any blocking calls on other threads.
    /// Parked requests stay parked.
    pub fn drain(&mut self, out: &mut Vec<Completion>) {
        self.drained_begin(out);
        self.backend.drained_end();
    }

    /// `drain` without the end: the caller ends the section with
    /// `backend().drained_end()`. The completions it hands back count as
    /// acknowledged.
    pub fn drained_begin(&mut self, out: &mut Vec<Completion>) {
        self.backend.quiesce_begin();
        self.poll(out);
        while self.in_flight() > 0 {
            self.sleep();
            self.poll(out);
        }
        self.ack();
        self.backend.wait_idle();
    }
}

impl Drop for IoQueue {
    /// The kernel and the workers may still be using the slots' segments and
    /// the callers' memory: wait for them, and hand their completions back
    /// (to nobody) so the drive's in-flight count is right. Parked requests
    /// never started and are dropped.
    fn drop(&mut self) {
        self.parked.clear();
        // Throttled requests were admitted: they run now rather than wait
        // for their turn (their memory is valid until this returns).
        let _lifted = BlockBackend::lift_limits(std::slice::from_ref(&self.backend));
        let mut sink = Vec::new();
        self.poll(&mut sink);
        while self.in_flight() > 0 {
            self.sleep();
            self.poll(&mut sink);
        }
        self.ack();
        self.pool.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enter_errors_are_retried_deferred_or_fatal_never_spun_on() {
        let e = |n| std::io::Error::from_raw_os_error(n);
        assert_eq!(classify(&e(libc::EINTR)), EnterError::Retry);
        assert_eq!(classify(&e(libc::EAGAIN)), EnterError::Later);
        assert_eq!(classify(&e(libc::EBUSY)), EnterError::Later);
        for fatal in [libc::EBADF, libc::EFAULT, libc::EINVAL, libc::ENXIO, libc::EOPNOTSUPP, libc::EBADR] {
            assert_eq!(classify(&e(fatal)), EnterError::Broken, "errno {fatal}");
        }
    }

    #[test]
    fn a_broken_ring_fails_what_it_never_took_and_the_pool_takes_over() {
        let path = std::env::temp_dir().join(format!("aio-broken-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 65536]).unwrap();
        let drv = crate::drivers::raw::RawFile::open(&path, false, crate::CacheMode::Writeback).unwrap();
        let b = Arc::new(BlockBackend::new("b"));
        b.insert_medium(Arc::new(drv), "b").unwrap();
        let mut q = IoQueue::new(b.clone(), AioEngine::IoUring).unwrap();
        if q.engine() != AioEngine::IoUring {
            println!("SKIPPED: io_uring is unavailable here");
            return;
        }
        let mut bufs = [[0u8; 512]; 2];
        let seg = |b: &mut [u8; 512]| vec![unsafe { IoVec::new(b.as_mut_ptr(), 512) }];
        // SAFETY: bufs outlive the waits below.
        unsafe { q.submit(Request::read(0, seg(&mut bufs[0]), 1)) };
        assert_eq!(q.queued.len(), 1, "in the submission ring, not yet given to the kernel");
        q.break_ring(Errno::EIO);
        let mut out = Vec::new();
        q.wait(&mut out, 1);
        assert_eq!(out, vec![Completion { token: 1, result: Err(Errno::EIO) }]);
        assert!(q.ring.is_none(), "an empty broken ring is dropped");
        unsafe { q.submit(Request::read(0, seg(&mut bufs[1]), 2)) };
        out.clear();
        q.wait(&mut out, 1);
        assert_eq!(out, vec![Completion { token: 2, result: Ok(()) }]);
        assert_eq!(bufs[1], [7u8; 512], "read on the pool");
        assert_eq!(b.in_flight(), 0);
        let _ = std::fs::remove_file(&path);
    }

    /// A drive over a scratch file opened with O_DIRECT, so that
    /// completions arrive later, from the device, rather than during
    /// submission from the page cache. The file lives under target/ (tmpfs
    /// refuses O_DIRECT) and goes when this does. None, with SKIPPED said,
    /// where O_DIRECT is refused.
    struct DirectDrive {
        backend: Arc<BlockBackend>,
        path: std::path::PathBuf,
    }

    impl DirectDrive {
        fn new(name: &str, data: &[u8]) -> Option<Self> {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{name}-{}", std::process::id()));
            std::fs::write(&path, data).unwrap();
            let drv = match crate::drivers::raw::RawFile::open(&path, true, crate::CacheMode::None) {
                Ok(d) => d,
                Err(e) => {
                    println!("SKIPPED: O_DIRECT is refused under target/ ({e})");
                    let _ = std::fs::remove_file(&path);
                    return None;
                }
            };
            let backend = Arc::new(BlockBackend::new("b"));
            backend.insert_medium(Arc::new(drv), "b").unwrap();
            Some(DirectDrive { backend, path })
        }
    }

    impl Drop for DirectDrive {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// The virtio worker's pattern: the queue is made on one thread and
    /// used on another, whose owner sleeps on the queue's eventfd (in
    /// epoll) and then polls, never calling `wait`. Every completion must
    /// wake it and be handed back by `poll`, whatever ring flags the kernel
    /// took (a DEFER_TASKRUN ring posts completions only on request).
    #[test]
    fn an_owner_on_another_thread_sleeping_on_the_eventfd_gets_every_completion() {
        let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        let Some(drive) = DirectDrive::new("aio-efd", &data) else { return };
        let b = drive.backend.clone();
        let q = IoQueue::new(b.clone(), AioEngine::IoUring).unwrap();
        if q.engine() != AioEngine::IoUring {
            println!("SKIPPED: io_uring is unavailable here");
            return;
        }
        let owner = std::thread::spawn(move || {
            let mut q = q;
            let mut bufs: Vec<crate::align::AlignedBuf> = (0..32).map(|_| crate::align::AlignedBuf::new(4096, 4096).unwrap()).collect();
            let mut out = Vec::new();
            let mut done = 0;
            for round in 0..8u64 {
                for (i, buf) in bufs.iter_mut().enumerate().take(32) {
                    let off = ((round * 32 + i as u64) * 4096) % (1 << 20);
                    // SAFETY: the buffers outlive the loop, which waits for
                    // every request.
                    unsafe { q.submit(Request::read(off, vec![IoVec::new(buf.as_mut_ptr(), 4096)], off)) };
                }
                q.flush_submissions();
                let mut got = 0;
                while got < 32 {
                    out.clear();
                    got += q.poll(&mut out);
                    for c in &out {
                        assert_eq!(c.result, Ok(()));
                    }
                    if got < 32 {
                        let mut p = libc::pollfd { fd: q.eventfd(), events: libc::POLLIN, revents: 0 };
                        // SAFETY: one valid pollfd.
                        let n = unsafe { libc::poll(&mut p, 1, 10_000) };
                        assert_eq!(n, 1, "no wake-up within 10 s with {} requests in flight", 32 - got);
                        let mut v = 0u64;
                        // SAFETY: an 8-byte read into a u64 from the eventfd.
                        unsafe { libc::read(q.eventfd(), &mut v as *mut u64 as *mut libc::c_void, 8) };
                    }
                }
                done += got;
                for (i, buf) in bufs.iter().enumerate().take(32) {
                    let off = (((round * 32 + i as u64) * 4096) % (1 << 20)) as usize;
                    assert_eq!(buf.as_slice(), &data[off..off + 4096]);
                }
            }
            done
        });
        assert_eq!(owner.join().unwrap(), 256);
        assert_eq!(b.in_flight(), 0);
    }

    /// A ring that breaks while the kernel holds requests must still
    /// deliver them: a DEFER_TASKRUN ring posts completions only when asked,
    /// so the broken ring keeps being asked until it is empty. Without
    /// that, the wait below never returns (the watchdog fails the test).
    #[test]
    fn a_ring_broken_with_requests_in_the_kernel_still_completes_them() {
        let Some(drive) = DirectDrive::new("aio-broken-inflight", &vec![9u8; 1 << 20]) else { return };
        let b = drive.backend.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let b2 = b.clone();
        std::thread::spawn(move || {
            let mut q = IoQueue::new(b2, AioEngine::IoUring).unwrap();
            if q.engine() != AioEngine::IoUring {
                let _ = tx.send(None);
                return;
            }
            let mut bufs: Vec<crate::align::AlignedBuf> = (0..16).map(|_| crate::align::AlignedBuf::new(4096, 4096).unwrap()).collect();
            for (i, buf) in bufs.iter_mut().enumerate() {
                // SAFETY: the buffers outlive the wait below, which returns
                // only when every request has completed.
                unsafe { q.submit(Request::read(i as u64 * 65536, vec![IoVec::new(buf.as_mut_ptr(), 4096)], i as u64)) };
            }
            q.flush_submissions();
            assert!(q.queued.is_empty(), "the kernel took them all");
            q.break_ring(Errno::EIO);
            let mut out = Vec::new();
            while out.len() < 16 {
                let want = 16 - out.len();
                q.wait(&mut out, want);
            }
            let ok = out.iter().filter(|c| c.result.is_ok()).count();
            let data_ok = bufs.iter().all(|b| b.as_slice().iter().all(|&x| x == 9));
            let _ = tx.send(Some((ok, data_ok)));
        });
        match rx.recv_timeout(std::time::Duration::from_secs(20)) {
            Ok(None) => println!("SKIPPED: io_uring is unavailable here"),
            Ok(Some((ok, data_ok))) => {
                assert_eq!(ok, 16, "requests the kernel took complete normally");
                assert!(data_ok);
                assert_eq!(b.in_flight(), 0);
            }
            Err(_) => panic!("requests held by a broken ring never completed"),
        }
    }
}
