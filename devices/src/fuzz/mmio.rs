//! The virtio-mmio register block with a virtio-blk device behind it: a
//! sequence of reads and writes at any offset and width (1, 2, 4, 8
//! bytes), any value, with status transitions, queue setup at hostile
//! addresses, DRIVER_OK (which starts the I/O thread), resets, config
//! space and notifications, and guest memory the device then reads as
//! rings. It must never panic, and the register block must stay
//! consistent:
//! - the identification registers never change; reads of another width
//!   than 4, or unaligned, read zeros;
//! - status bits only come and go by a reset (writing 0), after which the
//!   status reads 0;
//! - QueueNumMax is 256 for queue 0 and 0 for any other;
//! - InterruptStatus only has its two defined bits;
//! - the config generation never goes back;
//! - config space reads the capacity it was built with, and zeros past
//!   its 60 bytes.
//!
//! The I/O thread runs concurrently with the register accesses, as with a
//! real guest; WAIT operations let it catch up (bounded: `MAX_WAITS` of
//! `WAIT_US`).
//!
//! Input: one config byte (drive, guest memory contents), then operations
//! (`tag`).

use std::cell::RefCell;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use block::drivers::null::NullDriver;
use block::fuzz::Input;
use block::{AioEngine, BlockBackend};
use virtio_bindings::virtio_blk::VIRTIO_BLK_F_FLUSH;
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{guest_memory, fill_region, AVAIL, CAPACITIES, DESC, HOLE, HOLE_END, RAM_END, REGIONS, USED};
use crate::virtio::block::{Block, QUEUE_SIZE};
use crate::virtio::mmio::MmioTransport;
use crate::BusDevice;

pub const MAX_OPS: usize = 128;
const CONFIG_LEN: u64 = 60;

/// Tags of the operations (the tag byte modulo `TAGS`).
pub mod tag {
    /// Read at any offset and width.
    pub const READ: u8 = 0;
    /// Write at any offset, width and value.
    pub const WRITE: u8 = 1;
    /// A 32-bit write to one of the defined registers.
    pub const REG_WRITE: u8 = 2;
    /// A 32-bit read of one of the defined registers.
    pub const REG_READ: u8 = 3;
    /// The whole driver initialisation, with ring addresses, queue size
    /// and refused features from the input.
    pub const INIT: u8 = 4;
    /// Bytes into guest memory.
    pub const POKE: u8 = 5;
    /// QueueNotify.
    pub const NOTIFY: u8 = 6;
    /// A config space read.
    pub const CONFIG: u8 = 7;
    /// Wait (at most `WAIT_US`) for an interrupt, e.g. after a
    /// notification, so that the I/O thread gets to the rings before the
    /// next operations or the final reset.
    pub const WAIT: u8 = 8;
    pub const TAGS: u8 = 9;
}

/// The longest a WAIT operation waits (the I/O thread takes tens of
/// microseconds for a notification), and how many an input gets: an input
/// cannot make an execution much slower than this.
pub const WAIT_US: i64 = 200;
pub const MAX_WAITS: usize = 2;

/// The defined registers, and a few undefined offsets.
pub const REGS: [u32; 32] = [
    VIRTIO_MMIO_MAGIC_VALUE,
    VIRTIO_MMIO_VERSION,
    VIRTIO_MMIO_DEVICE_ID,
    VIRTIO_MMIO_VENDOR_ID,
    VIRTIO_MMIO_DEVICE_FEATURES,
    VIRTIO_MMIO_DEVICE_FEATURES_SEL,
    VIRTIO_MMIO_DRIVER_FEATURES,
    VIRTIO_MMIO_DRIVER_FEATURES_SEL,
    VIRTIO_MMIO_QUEUE_SEL,
    VIRTIO_MMIO_QUEUE_NUM_MAX,
    VIRTIO_MMIO_QUEUE_NUM,
    VIRTIO_MMIO_QUEUE_READY,
    VIRTIO_MMIO_QUEUE_NOTIFY,
    VIRTIO_MMIO_INTERRUPT_STATUS,
    VIRTIO_MMIO_INTERRUPT_ACK,
    VIRTIO_MMIO_STATUS,
    VIRTIO_MMIO_QUEUE_DESC_LOW,
    VIRTIO_MMIO_QUEUE_DESC_HIGH,
    VIRTIO_MMIO_QUEUE_AVAIL_LOW,
    VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
    VIRTIO_MMIO_QUEUE_USED_LOW,
    VIRTIO_MMIO_QUEUE_USED_HIGH,
    VIRTIO_MMIO_SHM_SEL,
    VIRTIO_MMIO_SHM_LEN_LOW,
    VIRTIO_MMIO_SHM_LEN_HIGH,
    VIRTIO_MMIO_SHM_BASE_LOW,
    VIRTIO_MMIO_SHM_BASE_HIGH,
    VIRTIO_MMIO_CONFIG_GENERATION,
    VIRTIO_MMIO_CONFIG,
    0x18,
    0xf8,
    0xfff,
];

/// Guest memory contents the config byte chooses from.
const FILLS: usize = 4;

struct State {
    mem: GuestMemoryMmap,
    fills: Vec<Vec<u8>>,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

impl State {
    fn new() -> State {
        let n = RAM_END as usize;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let random: Vec<u8> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        // Small numbers everywhere: plausible indexes, lengths, flags.
        let small: Vec<u8> = (0..n).map(|i| [1, 0, 2, 0, 16, 0, 0, 0][i % 8]).collect();
        State { mem: guest_memory(), fills: vec![vec![0; n], vec![0xff; n], random, small] }
    }
}

/// Register offsets: a defined register (sometimes off by a few bytes),
/// config space, or anything.
fn offset(inp: &mut Input) -> u64 {
    let k = inp.u8();
    match k % 8 {
        0..=3 => u64::from(REGS[usize::from(inp.u8()) % REGS.len()]),
        4 => u64::from(REGS[usize::from(inp.u8()) % REGS.len()]) + u64::from(k >> 6),
        5 => u64::from(VIRTIO_MMIO_CONFIG) + u64::from(inp.u8()),
        6 => u64::from(inp.u16()),
        _ => inp.u64(),
    }
}

fn width(inp: &mut Input) -> usize {
    [4, 1, 2, 8][usize::from(inp.u8() % 4)]
}

/// Ring addresses: the test driver's, hostile ones near the edges of RAM,
/// zero, or anything.
fn ring_addr(inp: &mut Input, default: u64) -> u64 {
    match inp.u8() % 8 {
        0..=2 => default,
        3 => HOLE - u64::from(inp.u8()) * 8,
        4 => RAM_END - u64::from(inp.u8()) * 8,
        5 => 0,
        6 => u64::from(inp.u16()) * 8,
        _ => inp.u64(),
    }
}

fn value(inp: &mut Input) -> u32 {
    match inp.u8() % 8 {
        0 => 0,
        1 => 1,
        2 | 3 => u32::from(inp.u8()),
        4 => [DESC, AVAIL, USED, HOLE_END, RAM_END - 16][usize::from(inp.u8() % 5)] as u32,
        5 => u32::MAX,
        _ => inp.u32(),
    }
}

/// What an execution did, for tests of the seeds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Status reads that showed DRIVER_OK without DEVICE_NEEDS_RESET.
    pub running: usize,
    /// Status reads that showed DEVICE_NEEDS_RESET.
    pub needs_reset: usize,
    /// The used index in the default used ring at the end.
    pub used_idx: u16,
}

struct Run {
    t: MmioTransport,
    irq: EventFd,
    waits: usize,
    outcome: Outcome,
    capacity: u64,
    /// Status bits seen since the last reset.
    status: u32,
    queue_sel: u32,
    generation: u32,
    /// What happened, formatted only for a failure report.
    log: Vec<Event>,
}

/// Read only through Debug, in failure reports.
#[allow(dead_code)]
#[derive(Debug)]
enum Event {
    Config(u8),
    Read { off: u64, width: usize, value: u64 },
    Write { off: u64, width: usize, value: u64 },
    Init { refuse: u8, num: u32, rings: [u64; 3], steps: u8 },
    Poke { at: u64, bytes: Vec<u8> },
    Wait,
}

impl Run {
    fn fail(&self, what: std::fmt::Arguments) -> ! {
        panic!("virtio-mmio fuzz: {what}\ncapacity {}, log:\n{:#x?}", self.capacity, self.log);
    }

    fn read(&mut self, off: u64, width: usize) -> u64 {
        let mut b = [0u8; 8];
        self.t.read(off, &mut b[..width]);
        let v = u64::from_le_bytes(b);
        self.log.push(Event::Read { off, width, value: v });
        self.check_read(off, width, v);
        v
    }

    fn write(&mut self, off: u64, width: usize, v: u64) {
        // What the device sees: the low `width` bytes. The oracle below must
        // judge that value, not the random u64 it came from (a 4-byte write
        // of 0x1070500000000 is a reset).
        let v = if width >= 8 { v } else { v & ((1u64 << (8 * width)) - 1) };
        self.log.push(Event::Write { off, width, value: v });
        self.t.write(off, &v.to_le_bytes()[..width]);
        if width != 4 || !off.is_multiple_of(4) || off >= u64::from(VIRTIO_MMIO_CONFIG) {
            return;
        }
        match off as u32 {
            VIRTIO_MMIO_STATUS if v == 0 => {
                self.status = 0;
                self.queue_sel = 0;
                let s = self.read(off, 4);
                if s != 0 {
                    self.fail(format_args!("status {s:#x} after a reset"));
                }
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v as u32,
            _ => {}
        }
    }

    fn w32(&mut self, reg: u32, v: u32) {
        self.write(u64::from(reg), 4, u64::from(v));
    }

    fn check_read(&mut self, off: u64, width: usize, v: u64) {
        let config = u64::from(VIRTIO_MMIO_CONFIG);
        if off >= config {
            let c = off - config;
            for i in 0..width as u64 {
                let byte = (v >> (8 * i)) as u8;
                let want = match c.checked_add(i) {
                    Some(o) if o < 8 => ((self.capacity / 512) >> (8 * o)) as u8,
                    Some(o) if o < CONFIG_LEN => byte,
                    _ => 0,
                };
                if byte != want {
                    self.fail(format_args!("config byte {} reads {byte:#x}, want {want:#x}", c.wrapping_add(i)));
                }
            }
            return;
        }
        if width != 4 || !off.is_multiple_of(4) {
            if v != 0 {
                self.fail(format_args!("a {width}-byte read at {off:#x} gave {v:#x}, not zero"));
            }
            return;
        }
        let v = v as u32;
        let want = match off as u32 {
            VIRTIO_MMIO_MAGIC_VALUE => Some(0x7472_6976),
            VIRTIO_MMIO_VERSION => Some(2),
            VIRTIO_MMIO_DEVICE_ID => Some(2),
            VIRTIO_MMIO_VENDOR_ID => Some(0x554d_4551),
            VIRTIO_MMIO_QUEUE_NUM_MAX => Some(if self.queue_sel == 0 { u32::from(QUEUE_SIZE) } else { 0 }),
            VIRTIO_MMIO_INTERRUPT_STATUS => {
                if v & !(VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG) != 0 {
                    self.fail(format_args!("interrupt status {v:#x}"));
                }
                None
            }
            VIRTIO_MMIO_STATUS => {
                if v & self.status != self.status {
                    self.fail(format_args!("status went from {:#x} to {v:#x} without a reset", self.status));
                }
                self.status = v;
                if v & VIRTIO_CONFIG_S_NEEDS_RESET != 0 {
                    self.outcome.needs_reset += 1;
                } else if v & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
                    self.outcome.running += 1;
                }
                None
            }
            VIRTIO_MMIO_CONFIG_GENERATION => {
                if v < self.generation {
                    self.fail(format_args!("config generation went back from {} to {v}", self.generation));
                }
                self.generation = v;
                None
            }
            _ => None,
        };
        if let Some(w) = want {
            if v != w {
                self.fail(format_args!("register {off:#x} reads {v:#x}, want {w:#x}"));
            }
        }
    }

    /// What Linux does, with the input's choices.
    fn init(&mut self, inp: &mut Input) {
        let refuse = inp.u8();
        let b = inp.u8();
        let num = if b < 0xf0 { 1u32 << (b % 10) } else { u32::from(inp.u16()) };
        let rings = [ring_addr(inp, DESC), ring_addr(inp, AVAIL), ring_addr(inp, USED)];
        let steps = inp.u8();
        self.log.push(Event::Init { refuse, num, rings, steps });
        self.w32(VIRTIO_MMIO_STATUS, 0);
        let mut s = VIRTIO_CONFIG_S_ACKNOWLEDGE;
        self.w32(VIRTIO_MMIO_STATUS, s);
        s |= VIRTIO_CONFIG_S_DRIVER;
        self.w32(VIRTIO_MMIO_STATUS, s);
        self.w32(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        let lo = self.read(u64::from(VIRTIO_MMIO_DEVICE_FEATURES), 4);
        self.w32(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        let hi = self.read(u64::from(VIRTIO_MMIO_DEVICE_FEATURES), 4);
        let mut f = (hi << 32) | lo;
        for (bit, feature) in [(0, VIRTIO_RING_F_EVENT_IDX), (1, VIRTIO_RING_F_INDIRECT_DESC), (2, VIRTIO_BLK_F_FLUSH), (3, VIRTIO_F_VERSION_1)] {
            if refuse & (1 << bit) != 0 {
                f &= !(1u64 << feature);
            }
        }
        self.w32(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        self.w32(VIRTIO_MMIO_DRIVER_FEATURES, f as u32);
        self.w32(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        self.w32(VIRTIO_MMIO_DRIVER_FEATURES, (f >> 32) as u32);
        if steps & 1 == 0 {
            s |= VIRTIO_CONFIG_S_FEATURES_OK;
            self.w32(VIRTIO_MMIO_STATUS, s);
        }
        self.w32(VIRTIO_MMIO_QUEUE_SEL, u32::from(steps >> 4 & 1));
        self.w32(VIRTIO_MMIO_QUEUE_NUM, num);
        for (lo, a) in [VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_AVAIL_LOW, VIRTIO_MMIO_QUEUE_USED_LOW].into_iter().zip(rings) {
            self.w32(lo, a as u32);
            self.w32(lo + 4, (a >> 32) as u32);
        }
        if steps & 2 == 0 {
            self.w32(VIRTIO_MMIO_QUEUE_READY, 1);
        }
        if steps & 4 == 0 {
            self.w32(VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
            self.read(u64::from(VIRTIO_MMIO_STATUS), 4);
        }
    }
}

/// One execution: see the module documentation.
pub fn virtio_mmio(data: &[u8]) {
    virtio_mmio_outcome(data);
}

/// `virtio_mmio`, saying what happened.
pub fn virtio_mmio_outcome(data: &[u8]) -> Outcome {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let State { mem, fills } = s.get_or_insert_with(State::new);
        let mut inp = Input::new(data);
        let c0 = inp.u8();
        let fill = &fills[usize::from(c0 >> 3) % FILLS];
        for (r, &(a, b)) in REGIONS.iter().enumerate() {
            // SAFETY: no device exists yet.
            unsafe { fill_region(mem, r, &fill[a as usize..b as usize]) };
        }
        let capacity = CAPACITIES[usize::from(c0 >> 5)];

        let backend = Arc::new(BlockBackend::new("fuzz"));
        backend.set_read_only(c0 & 1 != 0);
        backend.set_write_cache(c0 & 2 != 0);
        backend.insert_medium(Arc::new(NullDriver::new(capacity)), "null").unwrap_or_default();
        let block = match Block::new(backend, AioEngine::Threads, Some("fz")) {
            Ok(b) => b,
            Err(e) => panic!("virtio-mmio fuzz: {e}"),
        };
        let irq = EventFd::new(EFD_NONBLOCK).unwrap_or_else(|e| panic!("eventfd: {e}"));
        let irq2 = irq.try_clone().unwrap_or_else(|e| panic!("eventfd: {e}"));
        let t = MmioTransport::new(Box::new(block), mem.clone(), irq2).unwrap_or_else(|e| panic!("transport: {e}"));
        let mut run = Run {
            t,
            irq,
            waits: 0,
            outcome: Outcome::default(),
            capacity,
            status: 0,
            queue_sel: 0,
            generation: 0,
            log: vec![Event::Config(c0)],
        };
        for _ in 0..MAX_OPS {
            if inp.is_empty() {
                break;
            }
            match inp.u8() % tag::TAGS {
                tag::READ => {
                    let (off, w) = (offset(&mut inp), width(&mut inp));
                    run.read(off, w);
                }
                tag::WRITE => {
                    let (off, w) = (offset(&mut inp), width(&mut inp));
                    let v = if inp.u8() & 1 == 0 { u64::from(value(&mut inp)) } else { inp.u64() };
                    run.write(off, w, v);
                }
                tag::REG_WRITE => {
                    let reg = REGS[usize::from(inp.u8()) % REGS.len()];
                    let v = value(&mut inp);
                    run.w32(reg, v);
                }
                tag::REG_READ => {
                    let reg = REGS[usize::from(inp.u8()) % REGS.len()];
                    run.read(u64::from(reg), 4);
                }
                tag::INIT => run.init(&mut inp),
                tag::POKE => {
                    let at = super::blk::addr(&mut inp);
                    let n = usize::from(inp.u8() % 32);
                    let b = inp.bytes(n).to_vec();
                    run.log.push(Event::Poke { at, bytes: b.clone() });
                    let _ = mem.write_slice(&b, GuestAddress(at));
                }
                tag::NOTIFY => {
                    let q = if inp.u8() < 0xf0 { 0 } else { inp.u32() };
                    run.w32(VIRTIO_MMIO_QUEUE_NOTIFY, q);
                }
                tag::CONFIG => {
                    let off = u64::from(VIRTIO_MMIO_CONFIG) + u64::from(inp.u8() % 72);
                    let w = width(&mut inp);
                    run.read(off, w);
                }
                _ => {
                    if run.waits < MAX_WAITS {
                        run.waits += 1;
                        let mut p = libc::pollfd { fd: run.irq.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                        let t = libc::timespec { tv_sec: 0, tv_nsec: WAIT_US * 1000 };
                        // SAFETY: one valid pollfd, a valid timeout, no signal mask.
                        unsafe { libc::ppoll(&mut p, 1, &t, std::ptr::null()) };
                        let _ = run.irq.read();
                        run.log.push(Event::Wait);
                    }
                }
            }
        }
        // A reset joins the I/O thread, if there is one.
        run.w32(VIRTIO_MMIO_STATUS, 0);
        run.outcome.used_idx = mem.read_obj(GuestAddress(USED + 2)).unwrap_or(0);
        run.outcome
    })
}

/// Builds inputs in the harness's format, for the seed corpus.
pub struct Encoder {
    pub bytes: Vec<u8>,
}

impl Encoder {
    /// `fill`: guest memory contents (0 zeros, 1 0xff, 2 random, 3 small
    /// numbers); `capacity`: index into `CAPACITIES`.
    pub fn new(capacity: u8, fill: u8, write_cache: bool) -> Self {
        Encoder { bytes: vec![(capacity << 5) | ((fill & 3) << 3) | (u8::from(write_cache) << 1)] }
    }

    /// The driver's initialisation with the test driver's rings; `steps`
    /// bits skip FEATURES_OK (1), QUEUE_READY (2), DRIVER_OK (4), or
    /// select queue 1 (16).
    pub fn init(mut self, refuse: u8, steps: u8) -> Self {
        self.bytes.extend_from_slice(&[tag::INIT, refuse, 8, 0, 0, 0, steps]);
        self
    }

    pub fn reg_write(mut self, reg: usize, v: u32) -> Self {
        self.bytes.extend_from_slice(&[tag::REG_WRITE, reg as u8, 6]);
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn reg_read(mut self, reg: usize) -> Self {
        self.bytes.extend_from_slice(&[tag::REG_READ, reg as u8]);
        self
    }

    pub fn read(mut self, off: u16, width_sel: u8) -> Self {
        let [lo, hi] = off.to_le_bytes();
        self.bytes.extend_from_slice(&[tag::READ, 6, lo, hi, width_sel]);
        self
    }

    pub fn config(mut self, off: u8, width_sel: u8) -> Self {
        self.bytes.extend_from_slice(&[tag::CONFIG, off, width_sel]);
        self
    }

    /// `bytes` at `addr` into the first data area.
    pub fn poke(mut self, addr: u16, bytes: &[u8]) -> Self {
        let [lo, hi] = addr.to_le_bytes();
        self.bytes.extend_from_slice(&[tag::POKE, 0, lo, hi, bytes.len() as u8]);
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// `bytes` at `off` into the descriptor table (0),
    /// avail ring (1) or used ring (2).
    pub fn poke_ring(mut self, ring: u8, off: u16, bytes: &[u8]) -> Self {
        let [lo, hi] = off.to_le_bytes();
        self.bytes.extend_from_slice(&[tag::POKE, 7, ring, lo, hi, bytes.len() as u8]);
        self.bytes.extend_from_slice(bytes);
        self
    }

    pub fn notify(mut self) -> Self {
        self.bytes.extend_from_slice(&[tag::NOTIFY, 0]);
        self
    }

    pub fn wait(mut self) -> Self {
        self.bytes.push(tag::WAIT);
        self
    }
}

/// Hand-made inputs: a full initialisation to DRIVER_OK and a request,
/// resets, a refused legacy driver, config reads, odd widths.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let e = |fill| Encoder::new(3, fill, true);
    let status = REGS.iter().position(|&r| r == VIRTIO_MMIO_STATUS).unwrap_or(0);
    let gen = REGS.iter().position(|&r| r == VIRTIO_MMIO_CONFIG_GENERATION).unwrap_or(0);
    let istatus = REGS.iter().position(|&r| r == VIRTIO_MMIO_INTERRUPT_STATUS).unwrap_or(0);
    let ack = REGS.iter().position(|&r| r == VIRTIO_MMIO_INTERRUPT_ACK).unwrap_or(0);
    // A read of sector 0 in the default rings: descriptors at DESC (header
    // at 0x100, data at 0x200, status at 0x400), avail idx 1.
    let mut desc = Vec::new();
    for (a, l, f, n) in [(0x100u64, 16u32, 1u16, 1u16), (0x200, 512, 3, 2), (0x400, 1, 2, 0)] {
        desc.extend_from_slice(&a.to_le_bytes());
        desc.extend_from_slice(&l.to_le_bytes());
        desc.extend_from_slice(&f.to_le_bytes());
        desc.extend_from_slice(&n.to_le_bytes());
    }
    let read_request = e(0)
        .init(0, 0)
        .reg_read(status)
        .poke_ring(0, 0, &desc[..24])
        .poke_ring(0, 24, &desc[24..])
        .poke_ring(1, 0, &[0, 0, 1, 0, 0, 0])
        .notify()
        .wait()
        .reg_read(istatus)
        .reg_write(ack, 1)
        .reg_read(status)
        .bytes;
    vec![
        ("driver-ok", e(0).init(0, 0).reg_read(status).reg_read(gen).config(0, 3).config(20, 0).bytes),
        ("driver-ok-read", read_request),
        ("legacy-refused", e(0).init(8, 0).reg_read(status).bytes),
        ("reset-reinit", e(2).init(0, 0).notify().reg_write(status, 0).init(1, 0).notify().reg_read(status).bytes),
        ("no-features-ok", e(3).init(0, 1).reg_read(status).notify().bytes),
        ("odd-widths", e(0).read(0x70, 1).read(0x71, 0).read(0x100, 3).read(0x13b, 2).config(56, 3).bytes),
        ("queue-1", e(0).init(0, 16).reg_read(status).bytes),
    ]
}
