//! A test "driver" for virtio-blk: programs the virtio-mmio registers the
//! way Linux's virtio_mmio and virtio_blk do, lays out a split virtqueue in
//! its own guest memory and reads the used ring, while the device's I/O
//! thread does the work. Used by the device tests and `virtio-blk-bench`;
//! it panics on anything unexpected, as a test should.

#![allow(clippy::unwrap_used)]

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::block::{AioEngine, BlockBackend};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::block::{Block, BlockHandle, QUEUE_SIZE};
use super::mmio::MmioTransport;
use crate::BusDevice;

pub const DESC: u64 = 0x1_0000;
pub const AVAIL: u64 = 0x2_0000;
pub const USED: u64 = 0x3_0000;
pub const DATA: u64 = 0x10_0000;
pub const MEM_SIZE: usize = 32 << 20;
pub const DISK: u64 = 1 << 20;
pub const WAIT: Duration = Duration::from_secs(10);

pub const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
pub const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
pub const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// A request as laid out in guest memory.
#[derive(Clone, Copy)]
pub struct Req {
    pub head: u16,
    pub status: u64,
    pub data: u64,
}

/// The test's side of the device: registers, rings, buffers.
pub struct Driver {
    pub mem: GuestMemoryMmap,
    pub t: MmioTransport,
    pub irq: EventFd,
    pub handle: BlockHandle,
    pub next_desc: u16,
    pub avail_idx: u16,
    pub data_next: u64,
}

impl Driver {
    pub fn new(backend: Arc<BlockBackend>, engine: AioEngine, serial: Option<&str>) -> Driver {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let block = Block::new(backend, engine, serial).unwrap();
        let handle = block.handle();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let t = MmioTransport::new(Box::new(block), mem.clone(), irq.try_clone().unwrap()).unwrap();
        Driver { mem, t, irq, handle, next_desc: 0, avail_idx: 0, data_next: DATA }
    }

    pub fn r(&mut self, off: u32) -> u32 {
        let mut d = [0u8; 4];
        self.t.read(u64::from(off), &mut d);
        u32::from_le_bytes(d)
    }

    pub fn w(&mut self, off: u32, v: u32) {
        self.t.write(u64::from(off), &v.to_le_bytes());
    }

    pub fn features(&mut self) -> u64 {
        self.w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        let lo = self.r(VIRTIO_MMIO_DEVICE_FEATURES);
        self.w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        let hi = self.r(VIRTIO_MMIO_DEVICE_FEATURES);
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// Linux's virtio_mmio probe and virtio_blk setup, accepting the offered
    /// features except those in `refuse`.
    pub fn init(&mut self, refuse: u64) {
        self.init_rings(refuse, [DESC, AVAIL, USED]);
        assert_eq!(self.r(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0, "activation failed");
    }

    /// `init` with the rings' addresses given: [descriptors, avail, used].
    pub fn init_rings(&mut self, refuse: u64, rings: [u64; 3]) {
        self.w(VIRTIO_MMIO_STATUS, 0);
        self.mem.write_slice(&[0u8; 0x3_0000], GuestAddress(DESC)).unwrap();
        self.next_desc = 0;
        self.avail_idx = 0;
        assert_eq!(self.r(VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(self.r(VIRTIO_MMIO_VERSION), 2);
        assert_eq!(self.r(VIRTIO_MMIO_DEVICE_ID), 2);
        self.w(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        self.w(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
        let f = self.features() & !refuse;
        self.w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        self.w(VIRTIO_MMIO_DRIVER_FEATURES, f as u32);
        self.w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        self.w(VIRTIO_MMIO_DRIVER_FEATURES, (f >> 32) as u32);
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        self.w(VIRTIO_MMIO_STATUS, s);
        assert_ne!(self.r(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK, 0, "features refused");
        self.w(VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(self.r(VIRTIO_MMIO_QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
        self.w(VIRTIO_MMIO_QUEUE_NUM, u32::from(QUEUE_SIZE));
        for (i, &addr) in rings.iter().enumerate() {
            let lo = [VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_AVAIL_LOW, VIRTIO_MMIO_QUEUE_USED_LOW][i];
            self.w(lo, addr as u32);
            self.w(lo + 4, (addr >> 32) as u32);
        }
        self.w(VIRTIO_MMIO_QUEUE_READY, 1);
        self.w(VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(self.r(VIRTIO_MMIO_STATUS) & !VIRTIO_CONFIG_S_NEEDS_RESET, s | VIRTIO_CONFIG_S_DRIVER_OK);
    }

    pub fn alloc(&mut self, len: u64) -> u64 {
        let a = self.data_next;
        self.data_next += (len + 15) & !15;
        assert!(self.data_next < MEM_SIZE as u64, "test ran out of buffer space");
        a
    }

    pub fn put_desc(&self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = DESC + u64::from(idx) * 16;
        self.mem.write_obj(addr, GuestAddress(at)).unwrap();
        self.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
        self.mem.write_obj(next, GuestAddress(at + 14)).unwrap();
    }

    /// Writes a chain of (addr, len, device-writable) descriptors; returns
    /// the head index.
    pub fn chain(&mut self, descs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, write)) in descs.iter().enumerate() {
            let idx = (head + i as u16) % QUEUE_SIZE;
            let last = i + 1 == descs.len();
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.put_desc(idx, addr, len, flags, (idx + 1) % QUEUE_SIZE);
        }
        self.next_desc = (head + descs.len() as u16) % QUEUE_SIZE;
        head
    }

    pub fn publish(&mut self, head: u16) {
        let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % QUEUE_SIZE);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem.write_obj(self.avail_idx, GuestAddress(AVAIL + 2)).unwrap();
    }

    pub fn notify(&mut self) {
        self.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    }

    /// Header, optional out data, optional in buffer, status: Linux's shape.
    pub fn request(&mut self, ty: u32, sector: u64, out: &[u8], in_len: u32) -> Req {
        let hdr = self.alloc(16);
        self.mem.write_obj(ty, GuestAddress(hdr)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(hdr + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(hdr + 8)).unwrap();
        let mut descs = vec![(hdr, 16, false)];
        let mut data = 0;
        if !out.is_empty() {
            data = self.alloc(out.len() as u64);
            self.mem.write_slice(out, GuestAddress(data)).unwrap();
            descs.push((data, out.len() as u32, false));
        }
        if in_len > 0 {
            data = self.alloc(u64::from(in_len));
            self.mem.write_slice(&vec![0xeeu8; in_len as usize], GuestAddress(data)).unwrap();
            descs.push((data, in_len, true));
        }
        let status = self.alloc(1);
        self.mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
        descs.push((status, 1, true));
        let head = self.chain(&descs);
        self.publish(head);
        Req { head, status, data }
    }

    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    pub fn used(&self, i: u16) -> (u32, u32) {
        let at = USED + 4 + 8 * u64::from(i % QUEUE_SIZE);
        (self.mem.read_obj(GuestAddress(at)).unwrap(), self.mem.read_obj(GuestAddress(at + 4)).unwrap())
    }

    /// Waits (on the interrupt eventfd, with a deadline) until the used
    /// ring holds `n` entries in total.
    pub fn wait_used(&self, n: u16) {
        let deadline = Instant::now() + WAIT;
        while self.used_idx() != n {
            assert!(Instant::now() < deadline, "used idx stuck at {} (want {n})", self.used_idx());
            let mut p = libc::pollfd { fd: self.irq.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut p, 1, 10) };
        }
    }

    /// Waits until the device status says NEEDS_RESET.
    pub fn wait_needs_reset(&mut self) {
        let deadline = Instant::now() + WAIT;
        while self.r(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET == 0 {
            assert!(Instant::now() < deadline, "device never asked for a reset");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn status(&self, r: Req) -> u8 {
        self.mem.read_obj(GuestAddress(r.status)).unwrap()
    }

    pub fn data(&self, r: Req, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(r.data)).unwrap();
        v
    }

    pub fn config(&mut self, off: u32, len: usize) -> u64 {
        let mut d = [0u8; 8];
        self.t.read(u64::from(VIRTIO_MMIO_CONFIG + off), &mut d[..len]);
        u64::from_le_bytes(d)
    }

    pub fn check_alive_after_reset(&mut self) {
        self.init(0);
        assert_eq!(self.r(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        self.check_alive();
    }

    /// A read that must succeed: the device works (again).
    pub fn check_alive(&mut self) {
        let r = self.request(VIRTIO_BLK_T_IN, 0, &[], 512);
        self.notify();
        self.wait_used(self.avail_idx);
        assert_eq!(self.status(r), S_OK);
    }
}

