//! virtio-blk: one request queue served by an I/O thread that submits to
//! the block layer's asynchronous `IoQueue` (io_uring by default).
//!
//! Threads: the vCPU thread only touches registers and config space
//! (`Block` behind the transport's lock); the I/O thread (`worker`) owns
//! the queue, the in-flight table and the retry list; the block layer calls
//! `BlockDevOps` (resize, drain) from whichever thread it is on. They meet
//! in `Shared`, which is atomics and an eventfd that wakes the worker.

mod request;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;

use ::block::{AioEngine, BlockBackend, BlockDevOps, IoQueue};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use request::{ID_BYTES, MAX_DESCRIPTORS, SECTOR};

use super::{ActivateError, Activation, Interrupt, VirtioDevice};

/// QEMU's default for virtio-blk; Linux then allows 254 segments.
pub const QUEUE_SIZE: u16 = 256;
/// Largest discard / write-zeroes in sectors (QEMU's request cap).
const MAX_ZERO_SECTORS: u32 = (::block::backend::MAX_REQUEST_BYTES / SECTOR) as u32;
/// Discard granularity in sectors: one host page, so that a discard the
/// guest sends can actually free host blocks.
const DISCARD_ALIGNMENT: u32 = 8;
const CONFIG_LEN: usize = 60;

/// What the worker, the block layer's callbacks and the VMM share.
struct Shared {
    backend: Weak<BlockBackend>,
    /// Bytes; the config space shows it in sectors.
    capacity: AtomicU64,
    /// Drained section: take nothing new from the ring.
    quiesced: AtomicBool,
    /// The VM is stopped (QMP `stop`): take nothing new from the ring until
    /// it resumes, so that the image does not change under a stopped VM
    /// (QEMU stops its virtio queue processing while stopped too).
    vm_stopped: AtomicBool,
    /// The worker must exit (device reset or VMM shutdown).
    stop: AtomicBool,
    /// The VM was resumed: resubmit the retry list.
    resume: AtomicBool,
    /// Requests held by werror/rerror=stop, for the VMM and tests.
    held: AtomicUsize,
    /// Held requests dropped by a device reset or the VMM's exit.
    dropped: AtomicU64,
    /// Times the I/O thread woke up: a diagnostic (an idle device must
    /// not spin).
    wakeups: AtomicU64,
    kick: EventFd,
    /// Set once, when the transport is built: resize raises config
    /// interrupts through it whether or not the driver is active.
    interrupt: OnceLock<Arc<Interrupt>>,
    /// Held while the capacity changes together with the config
    /// generation, and while the driver reads config space: a driver that
    /// reads the 64-bit capacity in two halves either sees one value or a
    /// new generation.
    config_lock: Mutex<()>,
}

impl Shared {
    fn wake(&self) {
        let _ = self.kick.write(1);
    }
}

/// The block layer's view of the device.
struct DevOps(Arc<Shared>);

impl BlockDevOps for DevOps {
    fn resize(&self) {
        let Some(backend) = self.0.backend.upgrade() else { return };
        let _config = self.0.config_lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(len) = backend.getlength() {
            self.0.capacity.store(len, Ordering::SeqCst);
        }
        if let Some(irq) = self.0.interrupt.get() {
            irq.signal_config();
        }
    }

    fn drained_begin(&self) {
        self.0.quiesced.store(true, Ordering::SeqCst);
    }

    fn drained_end(&self) {
        self.0.quiesced.store(false, Ordering::SeqCst);
        self.0.wake();
    }
}

/// What the VMM keeps of a disk after handing the device to its transport.
#[derive(Clone)]
pub struct BlockHandle {
    shared: Arc<Shared>,
    backend: Arc<BlockBackend>,
}

impl BlockHandle {
    pub fn backend(&self) -> &Arc<BlockBackend> {
        &self.backend
    }

    /// The VM runs again: resubmit the requests a stop policy held, in
    /// their order, before taking new ones.
    pub fn resume(&self) {
        self.shared.vm_stopped.store(false, Ordering::SeqCst);
        self.shared.resume.store(true, Ordering::SeqCst);
        self.shared.wake();
    }

    /// The VM stops: requests already taken finish (the caller drains
    /// them), and none is taken from the ring until `resume`.
    pub fn vm_stop(&self) {
        self.shared.vm_stopped.store(true, Ordering::SeqCst);
    }

    /// Requests waiting for a resume.
    pub fn held_requests(&self) -> usize {
        self.shared.held.load(Ordering::SeqCst)
    }

    /// Held requests that a device reset or the VMM's exit dropped.
    pub fn dropped_requests(&self) -> u64 {
        self.shared.dropped.load(Ordering::SeqCst)
    }

    /// How often the I/O thread has woken up so far.
    pub fn wakeups(&self) -> u64 {
        self.shared.wakeups.load(Ordering::Relaxed)
    }
}

pub struct Block {
    backend: Arc<BlockBackend>,
    /// The drive's configured write cache (cache=), offered as FLUSH.
    write_cache: bool,
    engine: AioEngine,
    serial: Vec<u8>,
    features: u64,
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

impl Block {
    /// A disk over `backend` (which has its medium). `serial` is what
    /// GET_ID returns (at most 20 bytes are used).
    pub fn new(backend: Arc<BlockBackend>, engine: AioEngine, serial: Option<&str>) -> crate::Result<Block> {
        let capacity = backend.getlength().map_err(|e| crate::Error::Block(backend.name().to_string(), e.to_string()))?;
        let shared = Arc::new(Shared {
            backend: Arc::downgrade(&backend),
            capacity: AtomicU64::new(capacity),
            quiesced: AtomicBool::new(false),
            vm_stopped: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            resume: AtomicBool::new(false),
            held: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            wakeups: AtomicU64::new(0),
            kick: EventFd::new(EFD_NONBLOCK).map_err(crate::Error::EventFd)?,
            interrupt: OnceLock::new(),
            config_lock: Mutex::new(()),
        });
        let mut features = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_DISCARD)
            | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        if backend.write_cache() {
            features |= 1 << VIRTIO_BLK_F_FLUSH;
        }
        if backend.is_read_only() {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        backend.attach_dev(Arc::new(DevOps(shared.clone())));
        let serial = serial.map(|s| s.as_bytes()[..s.len().min(ID_BYTES)].to_vec()).unwrap_or_default();
        let write_cache = backend.write_cache();
        Ok(Block { backend, write_cache, engine, serial, features, shared, worker: None })
    }

    pub fn handle(&self) -> BlockHandle {
        BlockHandle { shared: self.shared.clone(), backend: self.backend.clone() }
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        let sectors = self.shared.capacity.load(Ordering::SeqCst) / SECTOR;
        c[0..8].copy_from_slice(&sectors.to_le_bytes());
        c[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes()); // seg_max
        c[20..24].copy_from_slice(&(SECTOR as u32).to_le_bytes()); // blk_size
        c[32] = u8::from(self.backend.write_cache()); // writeback
        c[34..36].copy_from_slice(&1u16.to_le_bytes()); // num_queues
        c[36..40].copy_from_slice(&MAX_ZERO_SECTORS.to_le_bytes()); // max_discard_sectors
        c[40..44].copy_from_slice(&1u32.to_le_bytes()); // max_discard_seg
        c[44..48].copy_from_slice(&DISCARD_ALIGNMENT.to_le_bytes());
        c[48..52].copy_from_slice(&MAX_ZERO_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
        c[52..56].copy_from_slice(&1u32.to_le_bytes()); // max_write_zeroes_seg
        c[56] = 1; // write_zeroes_may_unmap
        c
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn set_interrupt(&mut self, irq: Arc<Interrupt>) {
        // A transport gives it once; a second call changes nothing.
        let _ = self.shared.interrupt.set(irq);
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = {
            let _config = self.shared.config_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.config()
        };
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| c.get(o).copied())
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        self.reset();
        let ioq = IoQueue::new(self.backend.clone(), self.engine)?;
        // A driver that does not accept FLUSH cannot flush a cache, so the
        // spec wants every completed write stable: the drive's write cache
        // goes off (each write is then followed by a flush in the block
        // layer), as QEMU's virtio_blk_set_features does.
        let flush = 1u64 << VIRTIO_BLK_F_FLUSH;
        self.backend.set_write_cache(self.write_cache && a.features & flush != 0);
        self.shared.stop.store(false, Ordering::SeqCst);
        self.shared.resume.store(false, Ordering::SeqCst);
        let w = worker::Worker::new(a, ioq, self.shared.clone(), self.serial.clone()).map_err(ActivateError::EventFd)?;
        let name = format!("blk-{}", self.backend.name());
        let handle = block::thread::spawn(name, move || w.run()).map_err(ActivateError::Thread)?;
        self.worker = Some(handle);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            self.shared.stop.store(true, Ordering::SeqCst);
            self.shared.wake();
            // The thread clears `held` as it drops its retry list.
            let _ = w.join();
        }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.reset();
        self.backend.detach_dev();
    }
}
