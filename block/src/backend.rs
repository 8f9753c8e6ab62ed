//! `BlockBackend`: a named drive as a device sees it (the role of QEMU's
//! block-backend.c).
//!
//! It owns an optional medium (a driver stack that can be removed and
//! inserted at runtime), the read-only, write-cache and discard settings,
//! the error policies and iostatus, the I/O statistics, the attached
//! device's `BlockDevOps`, and drain. Every request goes through QEMU's
//! checks, in QEMU's order, before any driver sees it; running it is
//! `io`'s business.

use std::io::{IoSlice, IoSliceMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::devops::BlockDevOps;
use crate::drain::{Drain, Waker};
use crate::drivers::inject::InjectDriver;
use crate::driver::{BlockDriver, Errno, IoResult};
use crate::drivers::options::DiscardMode;
use crate::gate::WriteGate;
use crate::io::Job;
use crate::iov::{dup_all, IoVec};
use crate::policy::{ErrorAction, OnError};
use crate::request::{Op, Request};
use crate::stats::Stats;
use crate::throttle::drive::DriveLimits;

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
    /// discard count as write); `node_name` is absent without a medium;
    /// `nospace` only when iostatus is enabled (QEMU's
    /// blk_iostatus_is_enabled: a device enabled it and a policy can stop);
    /// `reason` is the plain strerror text.
    IoError {
        device: String,
        node_name: Option<String>,
        operation: &'static str,
        action: ErrorAction,
        nospace: Option<bool>,
        reason: String,
    },
    /// QEMU's DEVICE_TRAY_MOVED.
    TrayMoved { device: String, tray_open: bool },
}

pub type EventSink = Box<dyn Fn(BlockEvent) + Send + Sync>;

/// What a device does with a finished request, once the error policy and
/// the accounting have seen it (`BlockBackend::complete_request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Complete it as successful (it was, or the policy ignores the error).
    Ok,
    /// Complete it with this error.
    Error(Errno),
    /// Keep it, do not complete it: the VM stops and it is retried on resume.
    Stop,
}

struct Medium {
    /// What requests go to: the image's driver, or the injection layer
    /// over it (`inject`).
    driver: Arc<dyn BlockDriver>,
    /// The injection layer, while there is one.
    inject: Option<Arc<InjectDriver>>,
    filename: String,
    /// QEMU's node-name; "#blockN" when the user gave none, as QEMU names
    /// the nodes of -drive.
    node_name: String,
}

fn auto_node_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("#block{:03}", NEXT.fetch_add(1, Ordering::Relaxed) * 128 + 100)
}

struct State {
    medium: Option<Medium>,
    read_only: bool,
    write_cache: bool,
    discard: DiscardMode,
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
    drain: Drain,
    limits: DriveLimits,
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
                discard: DiscardMode::default(),
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
            drain: Drain::default(),
            limits: DriveLimits::default(),
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
    /// QEMU's `discard=`: with `ignore`, discards succeed without touching
    /// the image and write-zeroes never deallocates.
    pub fn set_discard(&self, mode: DiscardMode) {
        self.st().discard = mode;
    }
    pub fn discard_mode(&self) -> DiscardMode {
        self.st().discard
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
        let (nospace, node_name) = {
            let s = self.st();
            (iostatus_is_enabled(&s).then_some(errno == Errno::ENOSPC), s.medium.as_ref().map(|m| m.node_name.clone()))
        };
        self.emit(BlockEvent::IoError {
            device: self.name.clone(),
            node_name,
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
        if iostatus_is_enabled(&s) && s.iostatus == IoStatus::Ok {
            s.iostatus = if errno == Errno::ENOSPC { IoStatus::NoSpace } else { IoStatus::Failed };
        }
    }

    /// The iostatus as query-block shows it: only when enabled and a
    /// policy can stop the VM.
    pub fn iostatus(&self) -> Option<IoStatus> {
        let s = self.st();
        iostatus_is_enabled(&s).then_some(s.iostatus)
    }

    // --- device and medium ---------------------------------------------

    /// Attaches the device; inside a drained section it is stopped at once,
    /// as QEMU's blk_set_dev_ops replays the quiesce.
    pub fn attach_dev(&self, dev: Arc<dyn BlockDevOps>) {
        self.drain.with_sections(|open| {
            if open {
                dev.drained_begin();
            }
            let mut s = self.st();
            s.dev = Some(dev);
            // QEMU's blk_attach_dev resets the iostatus.
            s.iostatus = IoStatus::Ok;
        });
    }

    /// Detaches the device; inside a drained section it is let go running,
    /// so that no section end is owed to a device that is gone.
    pub fn detach_dev(&self) {
        self.drain.with_sections(|open| {
            let old = self.st().dev.take();
            if let (true, Some(d)) = (open, old) {
                d.drained_end();
            }
        });
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

    /// The medium's driver (`raw`, `null`, ...; the one under an injection
    /// layer), None without a medium.
    pub fn medium_driver(&self) -> Option<&'static str> {
        self.image_driver().map(|d| d.name())
    }

    /// The medium's own driver: under the injection layer, if there is one.
    fn image_driver(&self) -> Option<Arc<dyn BlockDriver>> {
        self.st().medium.as_ref().map(|m| m.inject.as_ref().map_or_else(|| m.driver.clone(), |i| i.inner().clone()))
    }

    /// The medium's injection layer (QMP x-block-error-inject), put in
    /// place on first use inside a drained section, keeping the medium's
    /// file and node name. Only drives that get rules pay for it: the layer
    /// sends file I/O to the thread pool instead of io_uring, so that every
    /// request meets the rules. None without a medium.
    pub fn injector(&self) -> Option<Arc<InjectDriver>> {
        self.drained(|| {
            let mut s = self.st();
            let m = s.medium.as_mut()?;
            if let Some(i) = &m.inject {
                return Some(i.clone());
            }
            let i = Arc::new(InjectDriver::new(m.driver.clone()));
            m.driver = i.clone();
            m.inject = Some(i.clone());
            Some(i)
        })
    }

    /// The medium's image format and backing chain (qcow2), for
    /// query-block; None for a raw file or no medium.
    pub fn medium_info(&self) -> Option<crate::image::ImageInfo> {
        self.image_driver()?.image_info()
    }

    /// The injection layer if there is one, for listing its rules.
    pub fn injection(&self) -> Option<Arc<InjectDriver>> {
        self.st().medium.as_ref().and_then(|m| m.inject.clone())
    }

    /// Drops every rule and the layer itself: the drive is as it was.
    pub fn clear_injection(&self) {
        self.drained(|| {
            let mut s = self.st();
            if let Some(m) = s.medium.as_mut() {
                if let Some(i) = m.inject.take() {
                    i.clear();
                    m.driver = i.inner().clone();
                }
            }
        })
    }

    /// The medium's node name (QEMU's node-name), None without a medium.
    pub fn node_name(&self) -> Option<String> {
        self.st().medium.as_ref().map(|m| m.node_name.clone())
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

    /// Inserts a medium, inside a drained section so that no request of
    /// the device can be between its checks and its driver meanwhile.
    /// The node gets an automatic name ("#blockN"), as -drive's do in QEMU.
    pub fn insert_medium(&self, driver: Arc<dyn BlockDriver>, filename: &str) -> Result<(), crate::Error> {
        self.insert_node(driver, filename, auto_node_name())
    }

    /// `insert_medium` with the node's own name (QMP blockdev-insert-medium
    /// of a node made by blockdev-add).
    pub fn insert_node(&self, driver: Arc<dyn BlockDriver>, filename: &str, node_name: String) -> Result<(), crate::Error> {
        self.drained(|| {
            let mut s = self.st();
            if s.medium.is_some() {
                return Err(crate::Error::MediumPresent(self.name.clone()));
            }
            s.medium = Some(Medium { driver, inject: None, filename: filename.to_string(), node_name });
            Ok(())
        })
    }

    /// Removes the medium once no request is in flight on it; requests
    /// then see ENOMEDIUM. Returns the driver (None when there was none).
    pub fn remove_medium(&self) -> Option<Arc<dyn BlockDriver>> {
        self.drained(|| self.st().medium.take().map(|m| self.closed(m)))
    }

    /// A medium leaves the drive: flushed, as QEMU's bdrv_close flushes
    /// (a qcow2 image's metadata caches, and the file), with a failure
    /// said on stderr since nobody is left to tell.
    fn closed(&self, m: Medium) -> Arc<dyn BlockDriver> {
        if let Err(e) = m.driver.flush() {
            eprintln!("block: drive '{}': flushing the removed medium '{}' failed: {e}", self.name, m.filename);
        }
        m.driver
    }

    /// Swaps the medium in one drained section: no request can run on the
    /// old one after, nor see an empty drive in between.
    pub fn change_medium(&self, driver: Arc<dyn BlockDriver>, filename: &str) -> Option<Arc<dyn BlockDriver>> {
        self.drained(|| {
            let new = Medium { driver, inject: None, filename: filename.to_string(), node_name: auto_node_name() };
            let old = self.st().medium.replace(new);
            old.map(|m| self.closed(m))
        })
    }

    fn drained<T>(&self, f: impl FnOnce() -> T) -> T {
        self.drained_begin();
        // Ends the section even if `f` panics (a test's, in debug builds).
        let _end = Guard(|| self.drained_end());
        f()
    }

    // --- requests ------------------------------------------------------

    /// The medium's driver, if a medium is inserted (tray ignored).
    fn driver(&self) -> IoResult<Arc<dyn BlockDriver>> {
        match &self.st().medium {
            Some(m) => Ok(m.driver.clone()),
            None => Err(Errno::ENOMEDIUM),
        }
    }

    /// The driver of an available medium (inserted, tray closed).
    fn available_driver(&self) -> IoResult<Arc<dyn BlockDriver>> {
        let drv = self.driver()?;
        if self.is_tray_open() {
            return Err(Errno::ENOMEDIUM);
        }
        Ok(drv)
    }

    /// QEMU's blk_check_byte_request, in its order: too large → EIO, no
    /// available medium → ENOMEDIUM, negative or past the end → EIO.
    fn check(&self, offset: u64, bytes: u64, is_write: bool) -> IoResult<Arc<dyn BlockDriver>> {
        if bytes > MAX_REQUEST_BYTES {
            return Err(Errno::EIO);
        }
        let drv = self.available_driver()?;
        if offset > i64::MAX as u64 || offset.checked_add(bytes).is_none() {
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

    /// Checks a request before any driver sees it and decides how it runs.
    /// After the range checks, changing a read-only drive is EPERM (as
    /// QEMU's bdrv_co_write_req_prepare). None: nothing for a driver to do
    /// (a flush of a read-only drive, a discard with discard=ignore), and
    /// the request succeeds.
    pub(crate) fn prepare(&self, req: &Request) -> IoResult<Option<(Arc<dyn BlockDriver>, Job)>> {
        let (op, offset, len) = (req.op(), req.offset(), req.len());
        let drv = match op {
            Op::Flush => self.available_driver()?,
            _ => self.check(offset, len, op.is_write())?,
        };
        let s = self.st();
        let unmap_ok = s.discard == DiscardMode::Unmap;
        let fua = !s.write_cache && matches!(op, Op::Write | Op::WriteZeroes);
        match op {
            // bdrv_co_pdiscard returns before any write check when
            // discards are disabled.
            Op::Discard if !unmap_ok => Ok(None),
            _ if op.is_write() && s.read_only => Err(Errno::EPERM),
            Op::Flush if s.read_only => Ok(None),
            _ => Ok(Some((drv, Job { op, offset, len, unmap: req.unmap() && unmap_ok, fua }))),
        }
    }

    pub(crate) fn gate(&self) -> &WriteGate {
        &self.gate
    }

    /// Runs a request to its end on this thread, without accounting: for
    /// devices that complete it through `complete_request` (IDE PIO).
    /// Waits while a drained section is open.
    pub fn execute(&self, req: &Request) -> IoResult<()> {
        self.drain.enter_blocking();
        let _leave = Guard(|| self.drain.leave(1));
        match self.prepare(req)? {
            Some((drv, job)) => {
                self.limits.wait(job.op, job.len);
                crate::io::exec(&self.gate, &*drv, job, req.iov())
            }
            None => Ok(()),
        }
    }

    /// What a device calls when a request of its own has finished: applies
    /// the error policy (QEMU's blk_get_error_action + blk_error_action) and
    /// accounts it as QEMU's devices do: success and ignored errors count
    /// as done, reported errors as failed, and a stopped request not at
    /// all (it counts once, when its retry finally completes).
    pub fn complete_request(&self, op: Op, bytes: u64, start: Instant, result: IoResult<()>) -> Outcome {
        let errno = match result {
            Ok(()) => {
                self.stats.done(op, bytes, start.elapsed());
                return Outcome::Ok;
            }
            Err(e) => e,
        };
        match self.handle_error(op.is_read(), errno) {
            ErrorAction::Ignore => {
                self.stats.done(op, bytes, start.elapsed());
                Outcome::Ok
            }
            ErrorAction::Report => {
                self.stats.failed(op);
                Outcome::Error(errno)
            }
            ErrorAction::Stop => Outcome::Stop,
        }
    }

    /// The blocking calls: run on the caller's thread and accounted (done
    /// or failed; no error policy), for tools and tests. A thread that owns
    /// an `IoQueue` with writes in flight uses the queue instead: an
    /// unaligned blocking write would wait for those writes, which only
    /// that thread can complete.
    fn run(&self, req: Request) -> IoResult<()> {
        let start = Instant::now();
        let r = self.execute(&req);
        match r {
            Ok(()) => self.stats.done(req.op(), req.len(), start.elapsed()),
            Err(_) => self.stats.failed(req.op()),
        }
        r
    }

    pub fn getlength(&self) -> IoResult<u64> {
        self.available_driver()?.size()
    }

    pub fn preadv(&self, offset: u64, iov: &mut [IoSliceMut<'_>]) -> IoResult<()> {
        // The request lives only for this call, inside the borrow.
        self.run(Request::read(offset, dup_all(IoVec::from_mut_slices(iov)), 0))
    }

    /// Writes from shared slices: the driver only reads the segments.
    pub fn pwritev(&self, offset: u64, iov: &[IoSlice<'_>]) -> IoResult<()> {
        self.run(Request::write(offset, dup_all(IoVec::from_slices(iov)), 0))
    }

    pub fn read(&self, offset: u64, buf: &mut [u8]) -> IoResult<()> {
        self.preadv(offset, &mut [IoSliceMut::new(buf)])
    }

    pub fn write(&self, offset: u64, buf: &[u8]) -> IoResult<()> {
        self.pwritev(offset, &[IoSlice::new(buf)])
    }

    /// A flush reaches the driver whatever the write cache says, as in
    /// QEMU (the raw driver drops it only for cache=unsafe); with the tray
    /// open it is ENOMEDIUM, on a read-only drive a successful no-op.
    pub fn flush(&self) -> IoResult<()> {
        self.run(Request::flush(0))
    }

    pub fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        self.run(Request::discard(offset, len, 0))
    }

    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> IoResult<()> {
        self.run(Request::write_zeroes(offset, len, unmap, 0))
    }

    /// Resizes the medium and tells the device. As QEMU's blk_co_truncate:
    /// no available medium → ENOMEDIUM, read-only → EACCES.
    /// It is a request like any other for drain: it waits while a section
    /// is open and a section waits for it.
    /// Flushes the medium's driver directly, outside the device's request
    /// accounting, tray or not (QEMU's bdrv_flush_all at vm_stop flushes
    /// the nodes, not device requests); nothing without a medium.
    pub fn flush_medium(&self) -> IoResult<()> {
        match self.driver() {
            Ok(d) => d.flush(),
            Err(_) => Ok(()),
        }
    }

    /// QMP block_resize: the medium's new size, set inside a drained
    /// section (as QEMU's qmp_block_resize) so that no request straddles
    /// it; the device is told (`BlockDevOps::resize`).
    pub fn resize(&self, size: u64) -> IoResult<()> {
        self.drained(|| self.set_size(&*self.driver()?, size))
    }

    pub fn truncate(&self, size: u64) -> IoResult<()> {
        self.drain.enter_blocking();
        let _leave = Guard(|| self.drain.leave(1));
        self.set_size(&*self.available_driver()?, size)
    }

    /// The size change itself, for `resize` and `truncate`: refused on a
    /// read-only drive; the device is told.
    fn set_size(&self, drv: &dyn BlockDriver, size: u64) -> IoResult<()> {
        if self.st().read_only {
            return Err(Errno::EACCES);
        }
        drv.truncate(size)?;
        if let Some(d) = self.dev() {
            d.resize();
        }
        Ok(())
    }

    // --- I/O limits ----------------------------------------------------

    /// QMP block_set_io_throttle and `throttling.*`: sets the drive's
    /// limits (QEMU's validity rules and messages). The drive joins
    /// `group`, or stays in its own; without one it is a group named after
    /// the drive. New limits apply at once to held requests too, with empty
    /// buckets. Limits with no rate set turn throttling off and leave the
    /// group; leaving (or moving to another group) happens in a drained
    /// section, which lets held requests go, as QEMU's
    /// blk_io_limits_disable.
    pub fn set_io_limits(&self, cfg: &crate::throttle::Config, group: Option<&str>) -> Result<(), String> {
        cfg.validate()?;
        if self.limits.leaves_group(cfg, group) {
            self.drained(|| self.limits.set(cfg, group, &self.name));
        } else {
            self.limits.set(cfg, group, &self.name);
        }
        Ok(())
    }

    /// The drive's limits and its group's name, when it has limits.
    pub fn io_limits(&self) -> Option<(crate::throttle::Config, String)> {
        self.limits.get()
    }

    /// Lets the drive's requests go without waiting for its limits until
    /// `io_limits_enable` (nested; drained sections do it too): for a
    /// stop, whose vCPUs may be waiting in a throttled request.
    pub fn io_limits_disable(&self) {
        self.limits.disable();
    }

    pub fn io_limits_enable(&self) {
        self.limits.enable();
    }

    /// `io_limits_disable` on every drive of `backends` until the guard
    /// is dropped, whatever way the scope is left.
    pub fn lift_limits(backends: &[Arc<BlockBackend>]) -> LimitsLifted {
        for b in backends {
            b.io_limits_disable();
        }
        LimitsLifted(backends.to_vec())
    }

    pub(crate) fn limits(&self) -> &DriveLimits {
        &self.limits
    }

    // --- in flight and drain -------------------------------------------

    /// Admits an asynchronous request unless a section is open; `waker`
    /// runs when the section ends.
    pub(crate) fn try_enter(&self, waker: &Waker) -> bool {
        self.drain.try_enter(waker)
    }

    /// `n` admitted requests have been handed back to their submitter.
    pub(crate) fn leave(&self, n: usize) {
        self.drain.leave(n);
    }

    /// Requests admitted and not yet handed back.
    pub fn in_flight(&self) -> usize {
        self.drain.in_flight()
    }

    /// A drained section is open.
    pub fn is_drained(&self) -> bool {
        self.drain.is_drained()
    }

    /// Opens a drained section: the device stops submitting (its
    /// drained_begin, on the first of nested sections), new requests wait,
    /// and this returns once no request of this drive is in flight.
    /// Requests submitted through an `IoQueue` are handed back only when
    /// that queue's thread polls it, so that thread must keep polling (or
    /// call `IoQueue::drained_begin` itself).
    pub fn drained_begin(&self) {
        self.quiesce_begin();
        self.drain.wait_idle();
    }

    /// Closes a section; on the last one the device resumes and waiting
    /// requests go on. Panics without a matching `drained_begin`.
    pub fn drained_end(&self) {
        assert!(self.drain.is_drained(), "block: drained_end without drained_begin");
        self.limits.enable();
        self.drain.end(|| self.dev());
    }

    /// Waits until nothing of this drive is in flight, with the device
    /// held back meanwhile.
    pub fn drain(&self) {
        self.drained_begin();
        self.drained_end();
    }

    /// Opens a section without waiting. Throttled requests go at once
    /// (QEMU's io_limits_disabled), or the section would wait for them.
    pub(crate) fn quiesce_begin(&self) {
        self.drain.begin(|| self.dev());
        self.limits.disable();
    }

    pub(crate) fn wait_idle(&self) {
        self.drain.wait_idle();
    }

    /// `drain_all`, waiting at most `limit` in all: returns the drives
    /// that still had requests in flight then (name, count), for a caller
    /// that must report a stuck host device rather than hang on it (QMP
    /// `stop`). Their requests complete later; new ones were held back
    /// during the section as usual.
    pub fn drain_all_for(backends: &[Arc<BlockBackend>], limit: std::time::Duration) -> Vec<(String, usize)> {
        let deadline = std::time::Instant::now() + limit;
        for b in backends {
            b.quiesce_begin();
        }
        let mut busy = Vec::new();
        for b in backends {
            if !b.drain.wait_idle_until(deadline) {
                busy.push((b.name.clone(), b.in_flight()));
            }
        }
        for b in backends {
            b.drained_end();
        }
        busy
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

/// Drives whose I/O limits are lifted (`BlockBackend::lift_limits`) until
/// this is dropped.
pub struct LimitsLifted(Vec<Arc<BlockBackend>>);

impl Drop for LimitsLifted {
    fn drop(&mut self) {
        for b in &self.0 {
            b.io_limits_enable();
        }
    }
}

/// Runs its closure when dropped: the end of a section or of a request,
/// whatever way the scope is left.
struct Guard<F: FnMut()>(F);

impl<F: FnMut()> Drop for Guard<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// QEMU's blk_iostatus_is_enabled: a device enabled it, and a policy can
/// stop the VM.
fn iostatus_is_enabled(s: &State) -> bool {
    let can_stop = matches!(s.on_write_error, OnError::Enospc | OnError::Stop) || s.on_read_error == OnError::Stop;
    s.iostatus_enabled && can_stop
}
