//! Asynchronous requests: an `IoQueue` belongs to one thread (a device's
//! I/O thread, the benchmark) and one drive. Requests are submitted without
//! waiting; their completions come back from `poll`, and the queue's eventfd
//! becomes readable whenever one arrives from elsewhere, so an event loop can
//! sleep on it.
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

pub mod pool;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, Once};
use std::time::Instant;

use io_uring::{opcode, types, IoUring};
use vmm_sys_util::eventfd::EventFd;

use crate::backend::{is_aligned, BlockBackend};
use crate::driver::{AsyncMode, BlockDriver, Errno, IoResult};
use crate::iov::{advance, total_len, zero, IoVec};
use crate::policy::AioEngine;
use crate::request::{Completion, ReqOp, Request};

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
    op: ReqOp,
    /// The whole request's bytes, for the statistics.
    bytes: u64,
    /// Where what is left to transfer starts (short transfers resubmit).
    offset: u64,
    iov: Vec<IoVec>,
    start: Instant,
    fd: RawFd,
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

pub struct IoQueue {
    backend: Arc<BlockBackend>,
    shared: Arc<Shared>,
    ring: Option<IoUring>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// Completions known at submission, returned by the next poll.
    ready: Vec<Completion>,
    cqes: Vec<(u64, i32)>,
    ring_inflight: usize,
    pool_inflight: usize,
    /// SQEs pushed but not yet given to the kernel.
    unsubmitted: bool,
}

fn io_uring_unavailable(e: &std::io::Error) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| eprintln!("block: io_uring is unavailable ({e}); using the thread pool"));
}

/// A ring whose completions do not interrupt the owner thread while it
/// runs (COOP_TASKRUN): measured on tmpfs, 3x the requests per second of a
/// plain ring. A sleeping owner is still woken (its poll or epoll returns
/// EINTR and the completions are posted), and TASKRUN_FLAG tells `poll` when
/// posted-but-unprocessed completions need a trip into the kernel. Kernels
/// before 5.19 lack both: a plain ring then.
fn new_ring() -> std::io::Result<IoUring> {
    IoUring::builder().setup_coop_taskrun().setup_taskrun_flag().build(RING_ENTRIES).or_else(|_| IoUring::new(RING_ENTRIES))
}

impl IoQueue {
    /// A queue for `backend`. `AioEngine::IoUring` falls back to the thread
    /// pool, said once on stderr, when the kernel refuses io_uring.
    pub fn new(backend: Arc<BlockBackend>, engine: AioEngine) -> Result<IoQueue, crate::Error> {
        let efd = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .map_err(|e| crate::Error::Queue(e.to_string()))?;
        let ring = match engine {
            AioEngine::Threads => None,
            AioEngine::IoUring => {
                let r = new_ring().and_then(|r| {
                    r.submitter().register_eventfd(efd.as_raw_fd())?;
                    Ok(r)
                });
                r.inspect_err(io_uring_unavailable).ok()
            }
        };
        Ok(IoQueue {
            backend,
            shared: Arc::new(Shared { efd, done: Mutex::new(Vec::new()) }),
            ring,
            slots: Vec::new(),
            free: Vec::new(),
            ready: Vec::new(),
            cqes: Vec::new(),
            ring_inflight: 0,
            pool_inflight: 0,
            unsubmitted: false,
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

    /// Readable when completions may be waiting: read it (`on_event` does)
    /// and poll.
    pub fn eventfd(&self) -> RawFd {
        self.shared.efd.as_raw_fd()
    }

    /// Submitted requests whose completion `poll` has not returned yet.
    pub fn pending(&self) -> usize {
        self.ring_inflight + self.pool_inflight + self.ready.len()
    }

    /// Submits a request. Refused requests (bad range, no medium, read-only)
    /// complete with their error like any other.
    ///
    /// # Safety
    /// The memory behind `req.iov` must stay valid, and untouched by anyone
    /// else, until `poll` has returned the request's completion (or the
    /// queue is dropped, which waits for everything in flight).
    pub unsafe fn submit(&mut self, req: Request) {
        let drv = match self.backend.prepare(req.op, req.offset, req.len) {
            Ok(d) => d,
            Err(e) => return self.ready.push(Completion { token: req.token, result: Err(e) }),
        };
        self.backend.request_begin();
        let start = Instant::now();
        let mode = drv.async_mode();
        // A flush that the file drops (cache=unsafe) is as cheap as null's.
        let inline = mode == AsyncMode::Inline || (req.op == ReqOp::Flush && matches!(mode, AsyncMode::File { flush: false, .. }));
        if inline {
            let r = self.backend.exec(&*drv, req.op, req.offset, req.len, &req.iov);
            self.backend.request_end();
            let result = self.backend.account(req.op, req.len, start, r);
            return self.ready.push(Completion { token: req.token, result });
        }
        match mode {
            AsyncMode::File { fd, .. } if self.ring_can_take(&*drv, req.op, req.offset, &req.iov) => {
                let gate = req.op == ReqOp::Write && drv.request_alignment() > 1;
                if gate && !self.backend.gate().try_shared() {
                    // An unaligned write holds the file: wait for it on the pool.
                    return self.run_on_pool(drv, req, start);
                }
                let Request { op, offset, len, iov, token } = req;
                let slot = Slot { token, op, bytes: len, offset, iov, start, fd, drv, gate };
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
            _ => self.run_on_pool(drv, req, start),
        }
    }

    fn ring_can_take(&self, drv: &dyn BlockDriver, op: ReqOp, offset: u64, iov: &[IoVec]) -> bool {
        self.ring.is_some()
            && matches!(op, ReqOp::Read | ReqOp::Write | ReqOp::Flush)
            && self.ring_inflight < RING_ENTRIES as usize
            && iov.len() <= IOV_MAX
            && is_aligned(drv.request_alignment(), offset, iov)
    }

    fn run_on_pool(&mut self, drv: Arc<dyn BlockDriver>, req: Request, start: Instant) {
        let Request { op, offset, len, iov, token } = req;
        let backend = self.backend.clone();
        let shared = self.shared.clone();
        self.pool_inflight += 1;
        pool::pool().spawn(Box::new(move || {
            // SAFETY: the submitter promised `iov` stays valid until the
            // completion is returned, which is after this.
            let r = unsafe { backend.exec(&*drv, op, offset, len, &iov) };
            backend.request_end();
            let result = backend.account(op, len, start, r);
            shared.done.lock().unwrap_or_else(|e| e.into_inner()).push(Completion { token, result });
            let _ = shared.efd.write(1);
        }));
    }

    /// Queues slot `idx`'s (remaining) transfer in the submission ring.
    fn push_sqe(&mut self, idx: usize) {
        let Some(s) = self.slots[idx].as_ref() else { return };
        let fd = types::Fd(s.fd);
        let entry = match (s.op, s.iov.as_slice()) {
            (ReqOp::Read, [one]) => opcode::Read::new(fd, one.base(), one.len() as u32).offset(s.offset).build(),
            (ReqOp::Read, v) => opcode::Readv::new(fd, IoVec::as_iovec_ptr(v), v.len() as u32).offset(s.offset).build(),
            (ReqOp::Write, [one]) => opcode::Write::new(fd, one.base(), one.len() as u32).offset(s.offset).build(),
            (ReqOp::Write, v) => opcode::Writev::new(fd, IoVec::as_iovec_ptr(v), v.len() as u32).offset(s.offset).build(),
            _ => opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build(),
        }
        .user_data(idx as u64);
        let Some(ring) = self.ring.as_mut() else { return };
        // SAFETY: the entry points at the slot's segments, which live (with
        // the caller's memory) until the completion is reaped.
        while unsafe { ring.submission().push(&entry) }.is_err() {
            // Full: hand what is queued to the kernel to make room.
            if let Err(e) = ring.submit() {
                if ![libc::EINTR, libc::EAGAIN, libc::EBUSY].contains(&e.raw_os_error().unwrap_or(0)) {
                    // The kernel refuses: the request fails rather than
                    // vanish (a lost slot would make `wait` hang).
                    let errno = Errno(e.raw_os_error().unwrap_or(libc::EIO));
                    let mut ready = std::mem::take(&mut self.ready);
                    self.finish(idx, Err(errno), &mut ready);
                    self.ready = ready;
                    return;
                }
            }
        }
        self.unsubmitted = true;
    }

    /// Gives queued requests to the kernel now (poll does this too).
    pub fn flush_submissions(&mut self) {
        if self.unsubmitted {
            self.enter();
        }
    }

    /// One trip into the kernel: submits what is queued and, as the trip
    /// returns, lets it post the completions it holds back.
    fn enter(&mut self) {
        if let Some(ring) = self.ring.as_ref() {
            // EBUSY/EAGAIN leave the entries queued; the next poll retries.
            if ring.submit().is_ok() {
                self.unsubmitted = false;
            }
        }
    }

    /// Appends every completion available now to `out`; returns how many.
    pub fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        let before = out.len();
        out.append(&mut self.ready);
        if self.pool_inflight > 0 {
            let mut done = self.shared.done.lock().unwrap_or_else(|e| e.into_inner());
            self.pool_inflight -= done.len();
            out.append(&mut done);
        }
        if self.ring.is_some() {
            self.flush_submissions();
            // Completions held back for us (COOP_TASKRUN) need a trip into
            // the kernel, but only when none are visible already: one
            // syscall per request instead of two.
            if self.reap(out) == 0 && self.ring_inflight > 0 && self.ring.as_mut().is_some_and(|r| r.submission().taskrun()) {
                self.enter();
                self.reap(out);
            }
            // Short transfers resubmitted their rest.
            self.flush_submissions();
        }
        out.len() - before
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
                ReqOp::Read | ReqOp::Write if moved < left && moved > 0 => {
                    advance(&mut s.iov, res as usize);
                    s.offset += moved;
                    return self.push_sqe(idx);
                }
                ReqOp::Read if moved < left => {
                    // End of file: the rest reads as zeros, as in the driver.
                    // SAFETY: the segments are the caller's unread buffers.
                    unsafe { zero(&s.iov) };
                    Ok(())
                }
                // A write that makes no progress would loop forever.
                ReqOp::Write if moved < left => Err(Errno::EIO),
                ReqOp::Write => {
                    s.drv.grown_to(s.offset + moved);
                    Ok(())
                }
                _ => Ok(()),
            }
        };
        self.finish(idx, result, out);
    }

    /// Frees slot `idx` and delivers its completion: releases the gate,
    /// counts it out of flight, accounts it.
    fn finish(&mut self, idx: usize, result: IoResult<()>, out: &mut Vec<Completion>) {
        let Some(s) = self.slots[idx].take() else { return };
        self.free.push(idx);
        self.ring_inflight -= 1;
        if s.gate {
            self.backend.gate().unlock_shared();
        }
        self.backend.request_end();
        let result = self.backend.account(s.op, s.bytes, s.start, result);
        out.push(Completion { token: s.token, result });
    }

    /// Clears the eventfd and polls: what an event loop calls when the
    /// eventfd is readable.
    pub fn on_event(&mut self, out: &mut Vec<Completion>) -> usize {
        let _ = self.shared.efd.read();
        self.poll(out)
    }

    /// Polls, blocking until at least `min` completions were appended to
    /// `out` or nothing is left in flight. Returns how many were appended.
    pub fn wait(&mut self, out: &mut Vec<Completion>, min: usize) -> usize {
        let before = out.len();
        loop {
            self.poll(out);
            if out.len() - before >= min || self.ring_inflight + self.pool_inflight == 0 {
                return out.len() - before;
            }
            match self.ring.as_ref() {
                // Only io_uring to wait for: let the kernel block us.
                Some(ring) if self.pool_inflight == 0 => {
                    let _ = ring.submit_and_wait(1);
                }
                // The pool (and the ring, through its registered eventfd)
                // signals the eventfd.
                _ => {
                    let mut p = libc::pollfd { fd: self.eventfd(), events: libc::POLLIN, revents: 0 };
                    // SAFETY: polls one descriptor we own.
                    unsafe { libc::poll(&mut p, 1, -1) };
                    let _ = self.shared.efd.read();
                }
            }
        }
    }

    /// Drains the drive from the queue's own thread: the device is held
    /// back, this queue's requests complete (appended to `out` for the
    /// caller to deliver), and so do any blocking calls on other threads.
    pub fn drain(&mut self, out: &mut Vec<Completion>) {
        self.drained_begin(out);
        self.backend.drained_end();
    }

    /// `drain` without the end: the caller ends the section with
    /// `backend().drained_end()`.
    pub fn drained_begin(&mut self, out: &mut Vec<Completion>) {
        self.backend.quiesce_begin();
        while self.ring_inflight + self.pool_inflight > 0 {
            self.wait(out, 1);
        }
        self.poll(out);
        self.backend.wait_idle();
    }
}

impl Drop for IoQueue {
    /// The kernel and the workers may still be using the slots' segments and
    /// the callers' memory: wait for them.
    fn drop(&mut self) {
        let mut sink = Vec::new();
        while self.ring_inflight + self.pool_inflight > 0 {
            self.wait(&mut sink, 1);
            sink.clear();
        }
    }
}
