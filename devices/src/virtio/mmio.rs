//! The virtio-mmio register block (virtio 1.2 §4.2.2, version 2 only).
//!
//! Everything here runs on a vCPU thread on a register exit and only during
//! setup or teardown: queue notifications are ioeventfds registered on
//! `QueueNotify` and never reach `write` (when they do, for a VMM without
//! ioeventfd, the write is forwarded to the same eventfd).
//!
//! Bad register use by the driver (wrong width, writes in the wrong state)
//! is ignored, as a real register block would; a queue configuration that
//! does not fit in guest RAM makes DRIVER_OK fail with DEVICE_NEEDS_RESET.

use std::sync::Arc;

use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Activation, GuestMemory, Interrupt, VirtioDevice};
use crate::bus::BusDevice;

/// "virt" in little endian.
const MAGIC: u32 = 0x7472_6976;
const VERSION: u32 = 2;
/// Same vendor as QEMU's virtio-mmio ("QEMU"); Linux does not look at it.
const VENDOR: u32 = 0x554d_4551;

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    notify: Vec<EventFd>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    active: bool,
}

impl MmioTransport {
    /// `irq` is the eventfd behind the device's interrupt (an irqfd in the
    /// VMM, any eventfd in tests).
    pub fn new(mut device: Box<dyn VirtioDevice>, mem: GuestMemory, irq: EventFd) -> crate::Result<Self> {
        let mut queues = Vec::new();
        let mut notify = Vec::new();
        for &max in device.queue_max_sizes() {
            // Sizes are powers of two up to 32768, checked by the crate; a
            // device asking for another is a bug caught at startup.
            queues.push(Queue::new(max).map_err(|e| crate::Error::Queue(e.to_string()))?);
            notify.push(EventFd::new(EFD_NONBLOCK).map_err(crate::Error::EventFd)?);
        }
        let interrupt = Arc::new(Interrupt::new(irq));
        device.set_interrupt(interrupt.clone());
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            notify,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            active: false,
        })
    }

    /// The eventfd to register as an ioeventfd on `QueueNotify` with the
    /// queue's index as datamatch.
    pub fn queue_notify_eventfds(&self) -> &[EventFd] {
        &self.notify
    }

    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// The device status as the driver reads it.
    pub fn status(&self) -> u32 {
        if self.interrupt.needs_reset() {
            self.status | VIRTIO_CONFIG_S_NEEDS_RESET
        } else {
            self.status
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue setup is only legal between FEATURES_OK and DRIVER_OK on a
    /// queue that is not ready yet.
    fn queue_writable(&mut self) -> Option<&mut Queue> {
        let setup = self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0 && self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0;
        self.selected_queue().filter(|q| setup && !q.ready())
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        for e in &self.notify {
            let _ = e.read();
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.reset();
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // Bits are only ever added (the driver resets to clear them).
        if value & self.status != self.status {
            return;
        }
        let new = value & !self.status;
        let mut value = value;
        if new & VIRTIO_CONFIG_S_FEATURES_OK != 0 && self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            // A legacy driver: refuse, the driver sees FEATURES_OK unset.
            value &= !VIRTIO_CONFIG_S_FEATURES_OK;
        }
        if new & VIRTIO_CONFIG_S_DRIVER_OK != 0 && !self.active {
            self.status = value;
            if value & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
                // DRIVER_OK without negotiated features: nothing to run.
                self.interrupt.set_needs_reset();
            } else {
                self.activate();
            }
            return;
        }
        self.status = value;
    }

    /// The device's copies of the queues and their notification eventfds,
    /// or None when a queue cannot run.
    fn queues_for_device(&self) -> Option<(Vec<Queue>, Vec<EventFd>)> {
        let event_idx = self.driver_features & (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        let mut notify = Vec::with_capacity(self.queues.len());
        for (q, e) in self.queues.iter().zip(&self.notify) {
            // The queue crate refuses to hand out chains from a ring at
            // address 0, so such a queue could never make progress.
            let unset = q.desc_table() == 0 || q.avail_ring() == 0 || q.used_ring() == 0;
            if unset || !q.is_valid(&self.mem) {
                return None;
            }
            // The transport keeps its copy for the registers.
            let mut q = Queue::try_from(q.state()).ok()?;
            q.set_event_idx(event_idx);
            queues.push(q);
            notify.push(e.try_clone().ok()?);
        }
        Some((queues, notify))
    }

    fn activate(&mut self) {
        let Some((queues, notify)) = self.queues_for_device() else {
            self.interrupt.set_needs_reset();
            return;
        };
        let a = Activation {
            mem: self.mem.clone(),
            queues,
            notify,
            interrupt: self.interrupt.clone(),
            features: self.driver_features,
        };
        match self.device.activate(a) {
            Ok(()) => self.active = true,
            Err(e) => {
                eprintln!("virtio-mmio: activating device type {}: {e}", self.device.device_type());
                self.interrupt.set_needs_reset();
            }
        }
    }

    fn read_reg(&mut self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status(),
            // No shared memory regions: length all ones (§4.2.2).
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            VIRTIO_MMIO_CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u32, v: u32) {
        let lo = |q: &mut Queue, f: fn(&mut Queue, Option<u32>, Option<u32>)| f(q, Some(v), None);
        let hi = |q: &mut Queue, f: fn(&mut Queue, Option<u32>, Option<u32>)| f(q, None, Some(v));
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES => {
                let negotiating = self.status & VIRTIO_CONFIG_S_DRIVER != 0
                    && self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0;
                if negotiating && self.driver_features_sel < 2 {
                    let shift = 32 * self.driver_features_sel;
                    let mask = 0xffff_ffffu64 << shift;
                    let offered = self.device.features();
                    self.driver_features = (self.driver_features & !mask) | ((u64::from(v) << shift) & offered);
                }
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            VIRTIO_MMIO_QUEUE_NUM => {
                // The queue ignores sizes that are not a power of two up to
                // its maximum, so the maximum stays and the driver sees it.
                if let (Some(q), Ok(size)) = (self.queue_writable(), u16::try_from(v)) {
                    q.set_size(size);
                }
            }
            VIRTIO_MMIO_QUEUE_READY => {
                // Only before DRIVER_OK: per-queue reset of a live queue is
                // not offered (VIRTIO_F_RING_RESET), Linux resets the device.
                if let Some(q) = self.queue_writable() {
                    q.set_ready(v == 1);
                }
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => {
                if let Some(e) = self.notify.get(v as usize) {
                    let _ = e.write(1);
                }
            }
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(v),
            VIRTIO_MMIO_STATUS => self.set_status(v),
            VIRTIO_MMIO_QUEUE_DESC_LOW => self.queue_writable().into_iter().for_each(|q| lo(q, Queue::set_desc_table_address)),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => self.queue_writable().into_iter().for_each(|q| hi(q, Queue::set_desc_table_address)),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => self.queue_writable().into_iter().for_each(|q| lo(q, Queue::set_avail_ring_address)),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => self.queue_writable().into_iter().for_each(|q| hi(q, Queue::set_avail_ring_address)),
            VIRTIO_MMIO_QUEUE_USED_LOW => self.queue_writable().into_iter().for_each(|q| lo(q, Queue::set_used_ring_address)),
            VIRTIO_MMIO_QUEUE_USED_HIGH => self.queue_writable().into_iter().for_each(|q| hi(q, Queue::set_used_ring_address)),
            _ => {}
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device.read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        // Registers are 32-bit only; anything else reads as zero.
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        let v = self.read_reg(offset as u32);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            // Config writes are only meaningful once the driver knows the
            // device; before that they are ignored.
            if self.status & VIRTIO_CONFIG_S_DRIVER != 0 {
                self.device.write_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else { return };
        if !offset.is_multiple_of(4) {
            return;
        }
        self.write_reg(offset as u32, u32::from_le_bytes(bytes));
    }
}

impl Drop for MmioTransport {
    /// Stops the device's I/O before guest memory can go away.
    fn drop(&mut self) {
        if self.active {
            self.device.reset();
        }
    }
}
