//! The I/O thread of one virtio-blk device: takes chains from the ring,
//! submits them to the block layer, puts completions in the used ring and
//! interrupts the guest once per batch (or not at all, when EVENT_IDX says
//! the driver does not want it yet).
//!
//! Every request lives in exactly one place at a time: the `slots` table
//! from submission until its completion is written; while a stop policy
//! holds it, its slot index sits in `retry` instead of in the IoQueue. A
//! slot is emptied by `take()` before the used ring sees it, so a request
//! cannot complete twice.

use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use std::time::Instant;

use ::block::{Completion, Errno, IoQueue, Outcome, Request};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::request::{self, Head, Limits, Parsed};
use super::Shared;
use crate::virtio::{Activation, GuestMemory, Interrupt};

struct InFlight {
    head: Head,
    req: Request,
    /// Submission order, which the retry list keeps.
    seq: u64,
    /// Of the latest submission, for the statistics.
    start: Instant,
}

pub(super) struct Worker {
    mem: Arc<GuestMemory>,
    queue: Queue,
    notify: EventFd,
    interrupt: Arc<Interrupt>,
    ioq: IoQueue,
    shared: Arc<Shared>,
    serial: Vec<u8>,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    /// Slots held by a stop policy, in submission order.
    retry: Vec<usize>,
    next_seq: u64,
    done: Vec<Completion>,
    scratch: request::Scratch,
    used_added: bool,
    /// The driver broke the ring: nothing more is taken until a reset.
    broken: bool,
}

const NOTIFY: u64 = 0;
const COMPLETIONS: u64 = 1;
const KICK: u64 = 2;
/// The drive's I/O limits may let a held request go.
const THROTTLE: u64 = 3;

impl Worker {
    pub(super) fn new(mut a: Activation, ioq: IoQueue, shared: Arc<Shared>, serial: Vec<u8>) -> std::io::Result<Self> {
        let queue = a.queues.pop().ok_or_else(|| std::io::Error::other("no queue"))?;
        let mut ioq = ioq;
        // Completions count as in flight until `finish` has acted on them.
        ioq.set_deferred_ack(true);
        let notify = a.notify.pop().ok_or_else(|| std::io::Error::other("no notify eventfd"))?;
        Ok(Worker {
            mem: Arc::new(a.mem),
            queue,
            notify,
            interrupt: a.interrupt,
            ioq,
            shared,
            serial,
            slots: Vec::new(),
            free: Vec::new(),
            retry: Vec::new(),
            next_seq: 0,
            done: Vec::new(),
            scratch: request::Scratch::default(),
            used_added: false,
            broken: false,
        })
    }

    pub(super) fn run(mut self) {
        let epoll = match self.epoll() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("virtio-blk: I/O thread cannot wait for events: {e}");
                self.interrupt.set_needs_reset();
                return;
            }
        };
        let mut events = [EpollEvent::default(); 4];
        while !self.shared.stop.load(Ordering::SeqCst) {
            self.step();
            // Requests the kernel refused for now (EAGAIN/EBUSY) are retried
            // shortly: no completion would wake us for them.
            let timeout = if self.ioq.has_unsubmitted() { 1 } else { -1 };
            match epoll.wait(timeout, &mut events) {
                Ok(n) => {
                    self.shared.wakeups.fetch_add(1, Ordering::Relaxed);
                    // Level-triggered: every eventfd that woke us is read,
                    // or the next wait returns at once.
                    for ev in &events[..n] {
                        match ev.data() {
                            NOTIFY => drop(self.notify.read()),
                            KICK => drop(self.shared.kick.read()),
                            COMPLETIONS => drop(self.ioq.on_event(&mut self.done)),
                            THROTTLE => drop(self.ioq.on_timer(&mut self.done)),
                            _ => {}
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("virtio-blk: epoll: {e}");
                    self.interrupt.set_needs_reset();
                    break;
                }
            }
        }
        // Reset or shutdown: wait until nothing in flight can write guest
        // memory, and answer nothing (the driver has forgotten the ring).
        // Requests a stop policy held are dropped: said on stderr, since
        // QMP `cont` will not retry them.
        self.done.clear();
        self.ioq.drain(&mut self.done);
        if !self.retry.is_empty() {
            let name = self.shared.backend.upgrade().map_or_else(|| "?".to_string(), |b| b.name().to_string());
            eprintln!(
                "vmm: drive '{name}': {} request(s) held by a stop policy were dropped by a device reset or the VMM's exit",
                self.retry.len()
            );
            self.shared.dropped.fetch_add(self.retry.len() as u64, Ordering::SeqCst);
        }
        self.shared.held.store(0, Ordering::SeqCst);
    }

    fn epoll(&self) -> std::io::Result<Epoll> {
        let epoll = Epoll::new()?;
        for (fd, token) in [
            (self.notify.as_raw_fd(), NOTIFY),
            (self.ioq.eventfd(), COMPLETIONS),
            (self.shared.kick.as_raw_fd(), KICK),
            (self.ioq.timer_fd(), THROTTLE),
        ] {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token))?;
        }
        Ok(epoll)
    }

    /// One pass: completions, a pending resume, new requests, completions
    /// again (the null driver and refusals complete at submission), and at
    /// most one interrupt.
    pub(super) fn step(&mut self) {
        self.complete_ready();
        // Held requests are new I/O for the block layer: not inside a
        // drained section (drained_end wakes us and the flag is still set).
        if !self.shared.quiesced.load(Ordering::SeqCst) && self.shared.resume.swap(false, Ordering::SeqCst) {
            self.resubmit_held();
        }
        if self.may_take_requests() {
            self.take_requests();
        }
        self.complete_ready();
        self.interrupt_if_needed();
    }

    fn may_take_requests(&self) -> bool {
        // A driver cannot have more requests outstanding than the ring has
        // entries; one that republishes heads early could otherwise make
        // the in-flight table grow without bound.
        let in_flight = self.slots.len() - self.free.len();
        !self.broken
            && self.retry.is_empty()
            && in_flight < usize::from(self.queue.size())
            && !self.shared.quiesced.load(Ordering::SeqCst)
            && !self.shared.vm_stopped.load(Ordering::SeqCst)
    }

    fn take_requests(&mut self) {
        let mut more_expected = false;
        loop {
            // With EVENT_IDX this tells the driver not to notify while we
            // are busy; without it, it sets VRING_USED_F_NO_NOTIFY.
            let _ = self.queue.disable_notification(&*self.mem);
            if !self.avail_index_sane() {
                self.break_device();
                return;
            }
            let mut took = false;
            while self.may_take_requests() {
                // An Arc clone, so the chain does not borrow `self`.
                let mem = self.mem.clone();
                let Some(chain) = self.queue.pop_descriptor_chain(&*mem) else { break };
                self.handle(chain);
                took = true;
            }
            if more_expected && !took && self.may_take_requests() {
                // The avail index says there is more, yet the queue hands
                // out nothing (virtio-queue refuses some rings, e.g. at
                // address 0): without this the loop would never end.
                self.break_device();
                return;
            }
            self.ioq.flush_submissions();
            if !self.may_take_requests() {
                return;
            }
            match self.queue.enable_notification(&*self.mem) {
                // More arrived while notifications were off.
                Ok(true) => more_expected = true,
                _ => return,
            }
        }
    }

    /// The driver can only be ahead by at most a ring's worth of entries.
    fn avail_index_sane(&self) -> bool {
        match self.queue.avail_idx(&*self.mem, Ordering::Acquire) {
            Ok(idx) => (idx - Wrapping(self.queue.next_avail())).0 <= self.queue.size(),
            Err(_) => false,
        }
    }

    fn break_device(&mut self) {
        self.broken = true;
        self.interrupt.set_needs_reset();
    }

    fn handle(&mut self, chain: virtio_queue::DescriptorChain<&GuestMemory>) {
        let limits = Limits {
            capacity: self.shared.capacity.load(Ordering::SeqCst),
            serial: &self.serial,
        };
        match request::parse(&self.mem, chain, &limits, &mut self.scratch) {
            Err(request::Broken) => self.break_device(),
            Ok((head, Parsed::Done(status))) => self.complete(head, status),
            Ok((head, Parsed::Invalid(op))) => {
                // Refused before the block layer (bad sector or range):
                // QEMU's block_acct_invalid.
                self.ioq.backend().stats().invalid(op);
                self.complete(head, VIRTIO_BLK_S_IOERR as u8);
            }
            Ok((head, Parsed::Io(mut req))) => {
                let slot = self.free.pop().unwrap_or_else(|| {
                    self.slots.push(None);
                    self.slots.len() - 1
                });
                req.set_token(slot as u64);
                // The copy stays for a retry under a stop policy.
                self.submit(req.clone());
                self.slots[slot] = Some(InFlight { head, req, seq: self.next_seq, start: Instant::now() });
                self.next_seq += 1;
            }
        }
    }

    fn submit(&mut self, req: Request) {
        // SAFETY: the buffers are guest RAM (checked by `parse`), which
        // outlives this thread; the driver does not touch a buffer it has
        // made available until it is in the used ring, and a device reset
        // drains the queue before returning.
        unsafe { self.ioq.submit(req) };
    }

    /// Finishes what `on_event` already collected and whatever `poll`
    /// finds now.
    fn complete_ready(&mut self) {
        self.ioq.poll(&mut self.done);
        let done = std::mem::take(&mut self.done);
        for c in &done {
            self.finish(c.token as usize, c.result);
        }
        self.done = done;
        self.done.clear();
        // Completed, held or reported: a drain may now count them out.
        self.ioq.ack();
    }

    fn finish(&mut self, slot: usize, result: Result<(), Errno>) {
        let Some(f) = self.slots.get_mut(slot).and_then(Option::take) else { return };
        let status = match self.ioq.backend().complete_request(f.req.op(), f.req.len(), f.start, result) {
            Outcome::Ok => VIRTIO_BLK_S_OK,
            Outcome::Error(Errno::ENOTSUP) => VIRTIO_BLK_S_UNSUPP,
            Outcome::Error(_) => VIRTIO_BLK_S_IOERR,
            Outcome::Stop => {
                // Held: back in its slot, and in the retry list in
                // submission order.
                let seq = f.seq;
                self.slots[slot] = Some(f);
                let at = self.retry.partition_point(|&s| self.slots[s].as_ref().is_some_and(|x| x.seq < seq));
                self.retry.insert(at, slot);
                self.shared.held.store(self.retry.len(), Ordering::SeqCst);
                return;
            }
        };
        self.complete(f.head, status as u8);
        self.free.push(slot);
    }

    fn resubmit_held(&mut self) {
        let held = std::mem::take(&mut self.retry);
        self.shared.held.store(0, Ordering::SeqCst);
        for slot in held {
            if let Some(f) = self.slots[slot].as_mut() {
                f.start = Instant::now();
                let req = f.req.clone();
                self.submit(req);
            }
        }
        self.ioq.flush_submissions();
    }

    fn complete(&mut self, head: Head, status: u8) {
        // Both addresses were checked against guest RAM; a failure here
        // would be a driver racing its own ring, and changes nothing for us.
        let _ = self.mem.write_obj(status, head.status);
        if self.queue.add_used(&*self.mem, head.index, head.used_len).is_ok() {
            self.used_added = true;
        }
    }

    fn interrupt_if_needed(&mut self) {
        if !self.used_added {
            return;
        }
        self.used_added = false;
        if self.queue.needs_notification(&*self.mem).unwrap_or(true) {
            self.interrupt.signal_used();
        }
    }
}
