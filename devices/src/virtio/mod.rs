//! Virtio devices over the virtio-mmio transport (virtio 1.x, "modern").
//!
//! The split is the spec's: `mmio::MmioTransport` owns the registers, the
//! negotiated features, the queues' configuration and the device status; a
//! `VirtioDevice` owns what its type means (config space, request handling)
//! and gets its queues, their notification eventfds and the interrupt once
//! the driver sets DRIVER_OK. Notifications arrive on ioeventfds and
//! interrupts leave through an irqfd, so the data path never needs a vCPU
//! exit handled here.

pub mod block;
pub mod mmio;
#[cfg(feature = "testing")]
pub mod testing;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use vm_memory::GuestMemoryMmap;
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as every device sees it.
pub type GuestMemory = GuestMemoryMmap;

/// What a device is handed at DRIVER_OK.
pub struct Activation {
    pub mem: GuestMemory,
    /// The queues the driver set up, in index order, already validated.
    pub queues: Vec<Queue>,
    /// One per queue: readable when the driver notified that queue.
    pub notify: Vec<EventFd>,
    pub interrupt: std::sync::Arc<Interrupt>,
    /// The features the driver accepted (a subset of `features()`).
    pub features: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot start the I/O thread: {0}")]
    Thread(std::io::Error),
    #[error("block layer: {0}")]
    Block(#[from] ::block::Error),
}

/// A device type behind the transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (2 for block).
    fn device_type(&self) -> u32;
    /// The largest size each queue may have; the length is the queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// Offered feature bits, VIRTIO_F_VERSION_1 included.
    fn features(&self) -> u64;
    /// Reads the device-specific config space; out-of-range bytes read 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The device's interrupt, given once when the transport is built, for
    /// config changes that happen before activation (resize).
    fn set_interrupt(&mut self, _irq: std::sync::Arc<Interrupt>) {}
    /// Writes config space (ignored by devices without writable fields).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts processing the queues.
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError>;
    /// Stops processing and forgets the queues: what the driver sees after
    /// writing 0 to the status register. Returns once no request that was
    /// in flight can touch guest memory any more.
    fn reset(&mut self);
}

/// The device's interrupt line and the two reasons to raise it, shared by
/// the transport (which reads and acknowledges them) and the device's
/// worker (which raises them).
pub struct Interrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    config_generation: AtomicU32,
    irq: EventFd,
}

impl Interrupt {
    /// `irq` is the eventfd KVM injects the device's GSI from (an irqfd).
    pub fn new(irq: EventFd) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            config_generation: AtomicU32::new(0),
            irq,
        }
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        // An eventfd counter only fails when it would overflow, which means
        // an interrupt is already pending: nothing is lost.
        let _ = self.irq.write(1);
    }

    /// New entries in a used ring.
    pub fn signal_used(&self) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    /// The config space changed (capacity after a resize, NEEDS_RESET).
    pub fn signal_config(&self) {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    /// The driver broke the rules in a way no status byte can report: the
    /// spec's answer is DEVICE_NEEDS_RESET plus a config-change interrupt.
    pub fn set_needs_reset(&self) {
        if !self.needs_reset.swap(true, Ordering::SeqCst) {
            self.signal_config();
        }
    }

    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::SeqCst)
    }

    fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}
