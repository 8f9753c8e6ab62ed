//! `BlockBackend`: a named drive as a device sees it (QEMU's BlockBackend).
//!
//! It owns an optional medium (a driver stack that can be removed and
//! inserted at runtime), the read-only and write-cache state, the error
//! policies and iostatus, the I/O statistics, and the attached device's
//! `BlockDevOps`. Every request goes through the same checks as QEMU's
//! `blk_check_byte_request` before any driver sees it, and unaligned
//! requests against an O_DIRECT medium are bounced through aligned buffers
//! (read-modify-write for writes), so a guest can never see a torn or wrong
//! byte whatever offsets and lengths it uses.

use std::io::{IoSlice, IoSliceMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use crate::align::AlignedBuf;
use crate::devops::BlockDevOps;
use crate::driver::{BlockDriver, Errno, IoResult};
use crate::gate::WriteGate;
use crate::iov::{total_len, IoVec};
use crate::policy::{ErrorAction, OnError};
use crate::request::ReqOp;
use crate::stats::Stats;

/// QEMU's cap on one request (BDRV_REQUEST_MAX_BYTES, about 2 GiB).
pub const MAX_REQUEST_BYTES: u64 = (i32::MAX as u64) & !511;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoStatus {
    Ok,
    Failed,
    NoSpace,
}

/// What the block layer tells whoever listens (the control socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockEvent {
    /// QEMU's BLOCK_IO_ERROR. `operation` is "read" or "write" (flush and
    /// discard count as write); `nospace` only when iostatus is enabled.
    IoError { device: String, operation: &'static str, action: ErrorAction, nospace: Option<bool>, reason: String },
    /// QEMU's DEVICE_TRAY_MOVED.
    TrayMoved { device: String, tray_open: bool },
}

pub type EventSink = Box<dyn Fn(BlockEvent) + Send + Sync>;

struct Medium {
    driver: Arc<dyn BlockDriver>,
    filename: String,
}

struct State {
    medium: Option<Medium>,
    read_only: bool,
    write_cache: bool,
    allow_write_beyond_eof: bool,
    on_read_error: OnError,
    on_write_error: OnError,
    iostatus: IoStatus,
    iostatus_enabled: bool,
    dev: Option<Arc<dyn BlockDevOps>>,
}

pub struct BlockBackend {
    name: String,
    state: Mutex<State>,
    stats: Stats,
    events: Mutex<Option<EventSink>>,
    /// Unaligned writes do read-modify-write of whole blocks; see `gate`.
    gate: WriteGate,
    /// Requests a driver is working on, for drain.
    in_flight: AtomicUsize,
    /// Nested drained sections; the device is held back while non-zero.
    quiesce: AtomicUsize,
    drain_lock: Mutex<()>,
    drain_cv: Condvar,
}

impl BlockBackend {
    /// A drive with QEMU's defaults: read-write, write cache on,
    /// rerror=report, werror=enospc, no medium.
    pub fn new(name: &str) -> Self {
        BlockBackend {
            name: name.to_string(),
            state: Mutex::new(State {
                medium: None,
                read_only: false,
                write_cache: true,
                allow_write_beyond_eof: false,
                on_read_error: OnError::DEFAULT_READ,
                on_write_error: OnError::DEFAULT_WRITE,
                iostatus: IoStatus::Ok,
                iostatus_enabled: false,
                dev: None,
            }),
            stats: Stats::default(),
            events: Mutex::new(None),
            gate: WriteGate::default(),
            in_flight: AtomicUsize::new(0),
            quiesce: AtomicUsize::new(0),
            drain_lock: Mutex::new(()),
            drain_cv: Condvar::new(),
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn set_event_sink(&self, sink: Option<EventSink>) {
        *self.events.lock().unwrap_or_else(|e| e.into_inner()) = sink;
    }

    fn emit(&self, e: BlockEvent) {
        if let Some(sink) = self.events.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            sink(e);
        }
    }

    // --- configuration -------------------------------------------------

    pub fn set_read_only(&self, ro: bool) {
        self.st().read_only = ro;
    }
    pub fn is_read_only(&self) -> bool {
        self.st().read_only
    }
    pub fn set_write_cache(&self, on: bool) {
        self.st().write_cache = on;
    }
    pub fn write_cache(&self) -> bool {
        self.st().write_cache
    }
    pub fn set_allow_write_beyond_eof(&self, allow: bool) {
        self.st().allow_write_beyond_eof = allow;
    }

    /// Sets the policies; `enospc` is refused for reads, as on the command line.
    pub fn set_on_error(&self, read: OnError, write: OnError) -> Result<(), crate::Error> {
        if read == OnError::Enospc {
            return Err(crate::Error::EnospcForRead);
        }
        let mut s = self.st();
        s.on_read_error = read;
        s.on_write_error = write;
        Ok(())
    }

    pub fn on_error(&self) -> (OnError, OnError) {
        let s = self.st();
        (s.on_read_error, s.on_write_error)
    }

    /// QEMU's `blk_get_error_action`.
    pub fn error_action(&self, is_read: bool, errno: Errno) -> ErrorAction {
        let s = self.st();
        let policy = if is_read { s.on_read_error } else { s.on_write_error };
        policy.action(errno.0)
    }

    /// QEMU's `blk_error_action`, called by the device once it has dealt
    /// with a failed request: on stop, record the iostatus; in every case
    /// report the event. Returns the action so the caller can stop the VM.
    pub fn handle_error(&self, is_read: bool, errno: Errno) -> ErrorAction {
        let action = self.error_action(is_read, errno);
        if action == ErrorAction::Stop {
            self.iostatus_set_err(errno);
        }
        let nospace = self.st().iostatus_enabled.then_some(errno == Errno::ENOSPC);
        self.emit(BlockEvent::IoError {
            device: self.name.clone(),
            operation: if is_read { "read" } else { "write" },
            action,
            nospace,
            reason: errno.to_string(),
        });
        action
    }

    // --- iostatus ------------------------------------------------------

    pub fn iostatus_enable(&self) {
        let mut s = self.st();
        s.iostatus_enabled = true;
        s.iostatus = IoStatus::Ok;
    }

    pub fn iostatus_reset(&self) {
        self.st().iostatus = IoStatus::Ok;
    }

    /// Records a failure unless one is already recorded (the first wins).
    pub fn iostatus_set_err(&self, errno: Errno) {
        let mut s = self.st();
        if s.iostatus_enabled && s.iostatus == IoStatus::Ok {
            s.iostatus = if errno == Errno::ENOSPC { IoStatus::NoSpace } else { IoStatus::Failed };
        }
    }

    /// The iostatus as query-block shows it: only when enabled and a
    /// policy can stop the VM.
    pub fn iostatus(&self) -> Option<IoStatus> {
        let s = self.st();
        let can_stop = matches!(s.on_write_error, OnError::Enospc | OnError::Stop) || s.on_read_error == OnError::Stop;
        (s.iostatus_enabled && can_stop).then_some(s.iostatus)
    }

    // --- device and medium ---------------------------------------------

    pub fn attach_dev(&self, dev: Arc<dyn BlockDevOps>) {
        let mut s = self.st();
        s.dev = Some(dev);
        // QEMU's blk_attach_dev resets the iostatus.
        s.iostatus = IoStatus::Ok;
    }

    pub fn detach_dev(&self) {
        self.st().dev = None;
    }

    fn dev(&self) -> Option<Arc<dyn BlockDevOps>> {
        self.st().dev.clone()
    }

    /// No device, or a device with removable media (QEMU's
    /// blk_dev_has_removable_media).
    pub fn has_removable_media(&self) -> bool {
        self.dev().is_none_or(|d| d.removable())
    }

    pub fn has_tray(&self) -> bool {
        self.dev().is_some_and(|d| d.has_tray())
    }

    pub fn is_tray_open(&self) -> bool {
        self.dev().is_some_and(|d| d.has_tray() && d.is_tray_open())
    }

    pub fn is_medium_locked(&self) -> bool {
        self.dev().is_some_and(|d| d.is_medium_locked())
    }

    pub fn is_inserted(&self) -> bool {
        self.st().medium.is_some()
    }

    /// Inserted and the tray (if any) closed: requests can reach it.
    pub fn is_available(&self) -> bool {
        self.is_inserted() && !self.is_tray_open()
    }

    pub fn medium_filename(&self) -> Option<String> {
        self.st().medium.as_ref().map(|m| m.filename.clone())
    }

    /// Tells the device its medium changed; reports a tray move when the
    /// tray state changed (QEMU's blk_dev_change_media_cb).
    pub fn change_media(&self, load: bool) {
        let Some(dev) = self.dev().filter(|d| d.removable()) else { return };
        let was_open = self.is_tray_open();
        dev.change_media(load);
        let now_open = self.is_tray_open();
        if self.has_tray() && was_open != now_open {
            self.emit(BlockEvent::TrayMoved { device: self.name.clone(), tray_open: now_open });
        }
    }

    /// A guest-initiated eject or load (START STOP UNIT): always reported.
    pub fn guest_eject(&self, eject: bool) {
        self.emit(BlockEvent::TrayMoved { device: self.name.clone(), tray_open: eject });
    }

    pub fn eject_request(&self, force: bool) {
        if let Some(d) = self.dev() {
            d.eject_request(force);
        }
    }

    pub fn insert_medium(&self, driver: Arc<dyn BlockDriver>, filename: &str) -> Result<(), crate::Error> {
        let mut s = self.st();
        if s.medium.is_some() {
            return Err(crate::Error::MediumPresent(self.name.clone()));
        }
        s.medium = Some(Medium { driver, filename: filename.to_string() });
        Ok(())
    }

    /// Removes the medium (waiting for nothing: callers drain first).
    pub fn remove_medium(&self) -> Option<Arc<dyn BlockDriver>> {
        self.st().medium.take().map(|m| m.driver)
    }

    // --- requests ------------------------------------------------------

    fn driver(&self) -> IoResult<Arc<dyn BlockDriver>> {
        let s = self.st();
        match &s.medium {
            Some(m) => Ok(m.driver.clone()),
            None => Err(Errno::ENOMEDIUM),
        }
    }

    /// QEMU's blk_check_byte_request: a medium that is available, a range
    /// that neither overflows nor exceeds the request cap, and inside the
    /// medium unless writing beyond EOF is allowed.
    fn check(&self, offset: u64, bytes: u64, is_write: bool) -> IoResult<Arc<dyn BlockDriver>> {
        let drv = self.driver()?;
        if self.is_tray_open() {
            return Err(Errno::ENOMEDIUM);
        }
        if bytes > MAX_REQUEST_BYTES || offset > i64::MAX as u64 || offset.checked_add(bytes).is_none() {
            return Err(Errno::EIO);
        }
        let beyond_ok = is_write && self.st().allow_write_beyond_eof;
        if !beyond_ok {
            let len = drv.size()?;
            if offset > len || len - offset < bytes {
                return Err(Errno::EIO);
            }
        }
        Ok(drv)
    }

    /// Checks a request before any driver sees it and returns the driver to
    /// run it on. Writes to a read-only drive are EPERM. A refusal counts as
    /// an invalid request.
    pub(crate) fn prepare(&self, op: ReqOp, offset: u64, len: u64) -> IoResult<Arc<dyn BlockDriver>> {
        let r = match op {
            ReqOp::Read => self.check(offset, len, false),
            ReqOp::Flush => self.driver(),
            _ if self.st().read_only => Err(Errno::EPERM),
            _ => self.check(offset, len, true),
        };
        r.inspect_err(|_| self.stats.invalid(op.kind()))
    }

    /// Runs a checked request to its end on this thread (the blocking calls
    /// and the thread pool): bounces what O_DIRECT cannot take, and passes
    /// the write gate around writes.
    ///
    /// # Safety
    /// `iov` must be valid as `Request` describes until this returns.
    pub(crate) unsafe fn exec(&self, drv: &dyn BlockDriver, op: ReqOp, offset: u64, len: u64, iov: &[IoVec]) -> IoResult<()> {
        let align = drv.request_alignment();
        match op {
            ReqOp::Read if needs_bounce(align, offset, iov) => bounce_read(drv, offset, len, iov),
            ReqOp::Read => drv.preadv(offset, IoVec::as_mut_slices(iov)),
            ReqOp::Write if needs_bounce(align, offset, iov) => {
                let _excl = self.gate.exclusive(align);
                bounce_write(drv, offset, len, IoVec::as_slices(iov))
            }
            ReqOp::Write => {
                let _shared = self.gate.shared(align);
                drv.pwritev(offset, IoVec::as_slices(iov))
            }
            ReqOp::Flush => drv.flush(),
            // Nothing to do, as in QEMU (fallocate would call it EINVAL).
            ReqOp::Discard | ReqOp::WriteZeroes { .. } if len == 0 => Ok(()),
            ReqOp::Discard => {
                let _shared = self.gate.shared(align);
                drv.discard(offset, len)
            }
            // Unaligned edges are written as data so the bytes outside the
            // range stay intact.
            ReqOp::WriteZeroes { unmap } if !offset.is_multiple_of(align as u64) || !len.is_multiple_of(align as u64) => {
                let _excl = self.gate.exclusive(align);
                zeroes_unaligned(drv, offset, len, align as u64, unmap)
            }
            ReqOp::WriteZeroes { unmap } => {
                let _shared = self.gate.shared(align);
                drv.write_zeroes(offset, len, unmap)
            }
        }
    }

    pub(crate) fn gate(&self) -> &WriteGate {
        &self.gate
    }

    /// Counts a finished request in the statistics.
    pub(crate) fn account(&self, op: ReqOp, bytes: u64, start: Instant, r: IoResult<()>) -> IoResult<()> {
        match r {
            Ok(()) => self.stats.done(op.kind(), bytes, start.elapsed()),
            Err(_) => self.stats.failed(op.kind()),
        }
        r
    }

    /// The blocking path: check, count in flight, run, account.
    fn run(&self, op: ReqOp, offset: u64, len: u64, iov: &[IoVec]) -> IoResult<()> {
        let drv = self.prepare(op, offset, len)?;
        self.request_begin();
        let start = Instant::now();
        // SAFETY: `iov` is borrowed from the caller's slices for this call.
        let r = unsafe { self.exec(&*drv, op, offset, len, iov) };
        self.request_end();
        self.account(op, len, start, r)
    }

    pub fn getlength(&self) -> IoResult<u64> {
        self.driver()?.size()
    }

    /// The blocking calls below run on the caller's thread, for callers
    /// that want an answer before they go on (IDE PIO, tools, tests). A
    /// thread that owns an `IoQueue` with writes in flight uses the queue
    /// instead: an unaligned blocking write would wait for those writes,
    /// which only that thread can complete.
    pub fn preadv(&self, offset: u64, iov: &mut [IoSliceMut<'_>]) -> IoResult<()> {
        let iov = IoVec::from_mut_slices(iov);
        self.run(ReqOp::Read, offset, total_len(iov), iov)
    }

    pub fn pwritev(&self, offset: u64, iov: &[IoSlice<'_>]) -> IoResult<()> {
        let iov = IoVec::from_slices(iov);
        self.run(ReqOp::Write, offset, total_len(iov), iov)
    }

    pub fn read(&self, offset: u64, buf: &mut [u8]) -> IoResult<()> {
        self.preadv(offset, &mut [IoSliceMut::new(buf)])
    }

    pub fn write(&self, offset: u64, buf: &[u8]) -> IoResult<()> {
        self.pwritev(offset, &[IoSlice::new(buf)])
    }

    /// A flush always reaches the driver, whatever the write cache says,
    /// as in QEMU (the raw driver drops it only for cache=unsafe).
    pub fn flush(&self) -> IoResult<()> {
        self.run(ReqOp::Flush, 0, 0, &[])
    }

    pub fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        self.run(ReqOp::Discard, offset, len, &[])
    }

    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> IoResult<()> {
        self.run(ReqOp::WriteZeroes { unmap }, offset, len, &[])
    }

    /// Resizes the medium and tells the device. Read-only: EACCES, as QEMU.
    pub fn truncate(&self, size: u64) -> IoResult<()> {
        if self.st().read_only {
            return Err(Errno::EACCES);
        }
        self.driver()?.truncate(size)?;
        if let Some(d) = self.dev() {
            d.resize();
        }
        Ok(())
    }

    // --- in flight and drain -------------------------------------------

    pub(crate) fn request_begin(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    /// A driver finished a request; wakes drainers when it was the last.
    pub(crate) fn request_end(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 && self.quiesce.load(Ordering::SeqCst) > 0 {
            let _g = self.drain_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.drain_cv.notify_all();
        }
    }

    /// Requests a driver is still working on.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Starts a drained section: the device stops submitting (its
    /// drained_begin, on the first of nested sections), then this waits
    /// until no request of this drive is in flight. Requests submitted
    /// through an `IoQueue` complete only when that queue's thread polls it,
    /// so that thread must keep polling (or call `IoQueue::drain`).
    pub fn drained_begin(&self) {
        self.quiesce_begin();
        self.wait_idle();
    }

    /// Ends a drained section; the device resumes on the last one.
    pub fn drained_end(&self) {
        if self.quiesce.fetch_sub(1, Ordering::SeqCst) == 1 {
            if let Some(d) = self.dev() {
                d.drained_end();
            }
        }
    }

    /// Waits until nothing of this drive is in flight, with the device
    /// held back meanwhile.
    pub fn drain(&self) {
        self.drained_begin();
        self.drained_end();
    }

    pub(crate) fn quiesce_begin(&self) {
        if self.quiesce.fetch_add(1, Ordering::SeqCst) == 0 {
            if let Some(d) = self.dev() {
                d.drained_begin();
            }
        }
    }

    pub(crate) fn wait_idle(&self) {
        let mut g = self.drain_lock.lock().unwrap_or_else(|e| e.into_inner());
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            g = self.drain_cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Drains every drive at once: all devices stop first, so none can
    /// start a request on another drive while the others are waited for.
    pub fn drain_all(backends: &[Arc<BlockBackend>]) {
        for b in backends {
            b.quiesce_begin();
        }
        for b in backends {
            b.wait_idle();
        }
        for b in backends {
            b.drained_end();
        }
    }
}

/// O_DIRECT wants offset, length and every buffer aligned.
fn needs_bounce(align: usize, offset: u64, iov: &[IoVec]) -> bool {
    if align <= 1 {
        return false;
    }
    let a = align as u64;
    if !offset.is_multiple_of(a) {
        return true;
    }
    let mut total = 0u64;
    for v in iov {
        if !(v.base() as usize).is_multiple_of(align) || !v.len().is_multiple_of(align) {
            return true;
        }
        total += v.len() as u64;
    }
    !total.is_multiple_of(a)
}

/// Whether an asynchronous engine can hand this request to the kernel as it
/// is: aligned for the driver's O_DIRECT needs.
pub(crate) fn is_aligned(align: usize, offset: u64, iov: &[IoVec]) -> bool {
    !needs_bounce(align, offset, iov)
}

fn aligned_span(offset: u64, bytes: u64, align: u64) -> (u64, u64) {
    let start = offset - offset % align;
    let end = (offset + bytes).div_ceil(align) * align;
    (start, end - start)
}

/// # Safety
/// `iov` must be valid for writes.
unsafe fn bounce_read(drv: &dyn BlockDriver, offset: u64, bytes: u64, iov: &[IoVec]) -> IoResult<()> {
    let align = drv.request_alignment() as u64;
    let (start, span) = aligned_span(offset, bytes, align);
    let mut buf = AlignedBuf::new(span as usize, align as usize);
    drv.preadv(start, &mut [IoSliceMut::new(buf.as_mut_slice())])?;
    let pos = (offset - start) as usize;
    crate::iov::scatter(&buf.as_slice()[pos..], IoVec::as_mut_slices(iov));
    Ok(())
}
fn bounce_write(drv: &dyn BlockDriver, offset: u64, bytes: u64, iov: &[IoSlice<'_>]) -> IoResult<()> {
    let align = drv.request_alignment() as u64;
    let (start, span) = aligned_span(offset, bytes, align);
    let mut buf = AlignedBuf::new(span as usize, align as usize);
    // Read the partial head and tail blocks so their other bytes survive.
    if offset != start {
        drv.preadv(start, &mut [IoSliceMut::new(&mut buf.as_mut_slice()[..align as usize])])?;
    }
    let end = offset + bytes;
    let tail_partial = !end.is_multiple_of(align);
    // One block holding both ends was already read as the head.
    let tail_already_read = span == align && offset != start;
    if tail_partial && !tail_already_read {
        let tail = (span - align) as usize;
        drv.preadv(start + span - align, &mut [IoSliceMut::new(&mut buf.as_mut_slice()[tail..])])?;
    }
    let pos = (offset - start) as usize;
    crate::iov::gather(iov, &mut buf.as_mut_slice()[pos..]);
    drv.pwritev(start, &[IoSlice::new(buf.as_slice())])
}

fn zeroes_unaligned(drv: &dyn BlockDriver, offset: u64, len: u64, align: u64, unmap: bool) -> IoResult<()> {
    let end = offset + len;
    let inner_start = offset.div_ceil(align) * align;
    let inner_end = end - end % align;
    if inner_start >= inner_end {
        let zeros = vec![0u8; len as usize];
        return bounce_write(drv, offset, len, &[IoSlice::new(&zeros)]);
    }
    if offset < inner_start {
        let zeros = vec![0u8; (inner_start - offset) as usize];
        bounce_write(drv, offset, inner_start - offset, &[IoSlice::new(&zeros)])?;
    }
    drv.write_zeroes(inner_start, inner_end - inner_start, unmap)?;
    if inner_end < end {
        let zeros = vec![0u8; (end - inner_end) as usize];
        bounce_write(drv, inner_end, end - inner_end, &[IoSlice::new(&zeros)])?;
    }
    Ok(())
}
