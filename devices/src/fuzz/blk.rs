//! virtio-blk through the real device: the input decides the descriptor
//! tables (addresses, lengths, flags, next indexes, indirect tables), the
//! request headers, the avail ring and its index, and when to notify. The
//! test driver (`virtio::testing::Driver`) owns the transport, the device
//! runs its own I/O thread over a null drive (inline, so an execution is
//! fast and deterministic).
//!
//! After each notification the harness waits, without sleeping blindly,
//! until every published chain is in the used ring or the device says
//! DEVICE_NEEDS_RESET (a bounded wait: a device that does neither is a
//! bug), and checks:
//! - used entries only for heads published in that round, at most once per
//!   publication, and only for chains that end properly (a chain that does
//!   not cannot be answered: the device must ask for a reset instead);
//! - a used length between 1 and the chain's writable bytes;
//! - the device answers every chain when all of them end properly;
//! - at the end (after a reset, which joins the I/O thread), guest memory
//!   differs from what the harness wrote only inside the writable buffers
//!   of chains that end properly and the used ring, and only with bytes
//!   the device can produce there (a null drive reads zeros, statuses are
//!   0-2, the serial is "fz").
//!
//! A round whose writable buffers overlap the rings or an indirect table
//! is not notified (the execution ends there): the device would rewrite its
//! own input, and the checks could no longer know what it saw.
//!
//! Input: two config bytes (drive and features, queue size), then
//! operations (`tag`); `Encoder` builds inputs for the seed corpus.

use std::cell::RefCell;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use block::drivers::null::NullDriver;
use block::fuzz::Input;
use block::{AioEngine, BlockBackend};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{guest_memory, in_one_region, fill_region, region_bytes, AVAIL, CAPACITIES, DATA, DESC, HOLE, HOLE_END, RAM_END, REGIONS, USED};
use crate::virtio::block::{Block, MAX_DESCRIPTORS, QUEUE_SIZE};
use crate::virtio::mmio::MmioTransport;
use crate::virtio::testing::Driver;

/// What GET_ID answers.
pub const SERIAL: &str = "fz";
/// Operations per input, and notifications per input.
pub const MAX_OPS: usize = 96;
pub const MAX_ROUNDS: usize = 4;
/// A device that neither answers nor asks for a reset within this long is
/// stuck.
const WAIT: Duration = Duration::from_secs(10);
/// What OUT requests write: the largest data buffer the chain builder
/// makes is 8 sectors.
static OUT_DATA: [u8; 4096] = {
    let mut d = [0u8; 4096];
    let mut i = 0;
    while i < d.len() {
        d[i] = (i as u8) ^ 0x3c;
        i += 1;
    }
    d
};
/// What guest memory holds where the harness wrote nothing.
const CANARY: u8 = 0xa5;
/// Data areas the chain builder allocates from: after the rings, and the
/// second RAM region.
const AREAS: [(u64, u64); 2] = [(DATA, HOLE), (HOLE_END, RAM_END)];

/// Tags of the operations (the tag byte modulo `TAGS`).
pub mod tag {
    /// A well-formed request chain (header, data, status), direct or
    /// through an indirect table, optionally published.
    pub const CHAIN: u8 = 0;
    /// One descriptor of the ring's table, every field from the input.
    pub const DESC: u8 = 1;
    /// One descriptor anywhere (an indirect table's entry).
    pub const DESC_AT: u8 = 2;
    /// A request header anywhere.
    pub const HEADER: u8 = 3;
    /// A discard / write-zeroes segment anywhere.
    pub const SEGMENT: u8 = 4;
    /// Raw bytes anywhere.
    pub const BYTES: u8 = 5;
    /// A head into the next avail ring slot.
    pub const PUBLISH: u8 = 6;
    /// Move the avail index (forwards, backwards, far ahead).
    pub const AVAIL_IDX: u8 = 7;
    /// used_event and the avail ring's flags.
    pub const EVENT: u8 = 8;
    /// Publish the avail index, notify and wait: one round.
    pub const NOTIFY: u8 = 9;
    pub const TAGS: u8 = 10;
}

struct State {
    mem: GuestMemoryMmap,
    /// What guest memory should hold, but for the device's writes.
    shadow: Vec<u8>,
    /// The initial contents: canary, rings zeroed.
    pristine: Vec<u8>,
    /// Where the device may write, rebuilt by each execution.
    mask: Vec<u8>,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

impl State {
    fn new() -> State {
        let mut pristine = vec![CANARY; RAM_END as usize];
        pristine[DESC as usize..DESC as usize + 16 * usize::from(QUEUE_SIZE)].fill(0);
        pristine[AVAIL as usize..AVAIL as usize + 6 + 2 * usize::from(QUEUE_SIZE)].fill(0);
        pristine[USED as usize..USED as usize + 6 + 8 * usize::from(QUEUE_SIZE)].fill(0);
        // Not RAM: never written, never read back (`after` holds zeros).
        pristine[HOLE as usize..HOLE_END as usize].fill(0);
        State { mem: guest_memory(), shadow: pristine.clone(), pristine, mask: vec![0; RAM_END as usize] }
    }
}

/// The parts of [addr, addr + len) inside RAM, as (start, end) pairs.
fn ram_parts(addr: u64, len: u64) -> impl Iterator<Item = (u64, u64)> {
    let end = addr.saturating_add(len);
    REGIONS.into_iter().filter_map(move |(s, e)| {
        let (a, b) = (addr.max(s), end.min(e));
        (a < b).then_some((a, b))
    })
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Addresses: mostly in the data areas, some at the edges of the hole, of
/// the second region and of RAM, in the rings, or anywhere.
pub(super) fn addr(inp: &mut Input) -> u64 {
    let k = inp.u8();
    match k % 10 {
        0..=2 => DATA + u64::from(inp.u16()) % (HOLE - DATA),
        3 | 4 => HOLE_END + u64::from(inp.u16()) % (RAM_END - HOLE_END),
        5 => HOLE - 128 + u64::from(inp.u8()),
        6 => RAM_END - 128 + u64::from(inp.u8()),
        7 => [DESC, AVAIL, USED][usize::from(inp.u8() % 3)] + u64::from(inp.u16() % 0x1000),
        8 => u64::from(inp.u32()),
        _ => inp.u64(),
    }
}

/// Descriptor lengths: small, whole sectors, a header, or anything.
fn len(inp: &mut Input) -> u32 {
    let k = inp.u8();
    match k % 8 {
        0 | 1 => u32::from(inp.u8()),
        2 | 3 => u32::from(inp.u8() % 17) * 512,
        4 => 16,
        5 => 1,
        6 => u32::from(inp.u16()),
        _ => inp.u32(),
    }
}

/// Sectors: small, near the end of the disk, or anything.
fn sector(inp: &mut Input, capacity: u64) -> u64 {
    let k = inp.u8();
    match k % 4 {
        0 | 1 => u64::from(inp.u8()),
        2 => (capacity / 512).wrapping_sub(u64::from(inp.u8() % 16)),
        _ => inp.u64(),
    }
}

fn req_type(inp: &mut Input) -> u32 {
    match inp.u8() % 8 {
        0 | 6 => VIRTIO_BLK_T_IN,
        1 => VIRTIO_BLK_T_OUT,
        2 => VIRTIO_BLK_T_FLUSH,
        3 => VIRTIO_BLK_T_GET_ID,
        4 => VIRTIO_BLK_T_DISCARD,
        5 => VIRTIO_BLK_T_WRITE_ZEROES,
        _ => inp.u32(),
    }
}

/// One descriptor as the device reads it: (addr, len, flags, next).
type Desc = (u64, u32, u16, u16);

fn read_desc(mem: &GuestMemoryMmap, at: u64) -> Option<Desc> {
    if !in_one_region(at, 16) {
        return None;
    }
    let mut b = [0u8; 16];
    mem.read_slice(&mut b, GuestAddress(at)).ok()?;
    let addr = u64::from_le_bytes(b[0..8].try_into().ok()?);
    let len = u32::from_le_bytes(b[8..12].try_into().ok()?);
    Some((addr, len, u16::from_le_bytes([b[12], b[13]]), u16::from_le_bytes([b[14], b[15]])))
}

/// What an execution did, for tests of the seeds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Used entries in order: (head, used length, status byte).
    pub used: Vec<(u32, u32, u8)>,
    /// The device asked for a reset.
    pub needs_reset: bool,
    /// A round was not notified (writable buffers over the rings).
    pub skipped: bool,
}

/// A chain as the spec (and virtio-queue) reads it.
#[derive(Default, Debug)]
struct Walk {
    /// It ends properly: no NEXT on its last descriptor, at most
    /// MAX_DESCRIPTORS, a writable last descriptor whose last byte is in
    /// RAM. Only such a chain can be answered.
    ok: bool,
    writable: Vec<(u64, u64)>,
    writable_total: u64,
    /// Indirect tables it uses.
    tables: Vec<(u64, u64)>,
    /// Where its status byte is.
    status: u64,
}

fn walk(mem: &GuestMemoryMmap, qsize: u16, head: u16) -> Walk {
    let mut w = Walk::default();
    let (mut table, mut size, mut idx, mut ttl) = (DESC, u32::from(qsize), u32::from(head), u32::from(qsize));
    let mut indirect = false;
    let mut bytes: u32 = 0;
    let mut count = 0;
    let mut last: Option<Desc> = None;
    loop {
        if ttl == 0 || idx >= size {
            break;
        }
        let Some(d) = table.checked_add(u64::from(idx) * 16).and_then(|at| read_desc(mem, at)) else { break };
        let (a, l, flags, next) = d;
        if u32::from(flags) & VRING_DESC_F_INDIRECT != 0 {
            if indirect || l % 16 != 0 || l / 16 > u32::from(u16::MAX) {
                break;
            }
            w.tables.push((a, u64::from(l)));
            (table, size, idx, ttl, indirect) = (a, l / 16, 0, l / 16, true);
            continue;
        }
        // virtio-queue stops a chain longer than 4 GiB.
        let Some(b) = bytes.checked_add(l) else { break };
        bytes = b;
        count += 1;
        if count > MAX_DESCRIPTORS {
            return w;
        }
        if u32::from(flags) & VRING_DESC_F_WRITE != 0 {
            w.writable.push((a, u64::from(l)));
            w.writable_total += u64::from(l);
        }
        last = Some(d);
        if u32::from(flags) & VRING_DESC_F_NEXT != 0 {
            idx = u32::from(next);
            ttl -= 1;
        } else {
            ttl = 0;
        }
    }
    w.ok = last.is_some_and(|(a, l, flags, _)| {
        let flags = u32::from(flags);
        flags & VRING_DESC_F_NEXT == 0
            && flags & VRING_DESC_F_WRITE != 0
            && l > 0
            && a.checked_add(u64::from(l) - 1).is_some_and(|s| in_one_region(s, 1))
    });
    if let (true, Some((a, l, _, _))) = (w.ok, last) {
        w.status = a + u64::from(l) - 1;
    }
    w
}

struct Run<'a> {
    d: Driver,
    shadow: &'a mut Vec<u8>,
    qsize: u16,
    capacity: u64,
    /// The avail index the harness will publish at the next notification.
    avail_idx: u16,
    /// What the device has consumed (all of it, after each round).
    consumed: u16,
    used_seen: u16,
    /// Writable ranges of answerable chains, over all rounds.
    allowed: Vec<(u64, u64)>,
    /// Bump allocators of the chain builder, one per area.
    next_free: [u64; 2],
    rounds: usize,
    needs_reset: bool,
    /// The input set used_event or the avail flags in this round: the
    /// device may rightly not interrupt.
    quiet: bool,
    /// What happened, formatted only for a failure report.
    log: Vec<Event>,
    outcome: Outcome,
}

/// Read only through Debug, in failure reports.
#[allow(dead_code)]
#[derive(Debug)]
enum Event {
    Config(u8, u8),
    Chain { head: u16, ty: u32, sector: u64, descs: Vec<(u64, u32, bool)>, indirect: bool },
    Desc { idx: u16, desc: Desc },
    DescAt { table: u64, i: u64, desc: Desc },
    Header { at: u64, ty: u32, sector: u64 },
    Segment { at: u64, sector: u64, num: u32, flags: u32 },
    Bytes { at: u64, bytes: Vec<u8> },
    Publish(u16),
    AvailIdx(u16),
    Interrupts { used_event: u16, avail_flags: u16 },
    Round { round: usize, avail_idx: u16, heads: Vec<u16>, answerable: usize },
    NotNotified { round: usize, writable: (u64, u64) },
}

impl Run<'_> {
    fn fail(&self, what: std::fmt::Arguments) -> ! {
        panic!("virtio-blk fuzz: {what}\nqueue size {}, capacity {}, log:\n{:#x?}", self.qsize, self.capacity, self.log);
    }

    /// Writes guest memory (the parts in RAM) and the shadow alike, but
    /// never the avail index, which the harness publishes at notification
    /// time (the I/O thread may still be looking at it after a round), nor
    /// the used ring: the device only writes it (virtio-queue keeps its own
    /// index), and the harness needs to read what the device put there.
    fn put(&mut self, addr: u64, bytes: &[u8]) {
        let used_end = USED + 6 + 8 * u64::from(QUEUE_SIZE);
        let keep_out = [(AVAIL + 2, AVAIL + 4), (USED, used_end)];
        let mut parts: Vec<(u64, u64)> = ram_parts(addr, bytes.len() as u64).collect();
        for (ks, ke) in keep_out {
            parts = parts.into_iter().flat_map(|(a, b)| [(a, b.min(ks)), (a.max(ke), b)]).filter(|(a, b)| a < b).collect();
        }
        for (a, b) in parts {
            self.put_raw(a, &bytes[(a - addr) as usize..(b - addr) as usize]);
        }
    }

    /// `bytes` at `addr`, which is in one RAM region.
    fn put_raw(&mut self, addr: u64, bytes: &[u8]) {
        self.shadow[addr as usize..addr as usize + bytes.len()].copy_from_slice(bytes);
        let _ = self.d.mem.write_slice(bytes, GuestAddress(addr));
    }

    fn put_desc_at(&mut self, at: u64, d: Desc) {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&d.0.to_le_bytes());
        b[8..12].copy_from_slice(&d.1.to_le_bytes());
        b[12..14].copy_from_slice(&d.2.to_le_bytes());
        b[14..16].copy_from_slice(&d.3.to_le_bytes());
        self.put(at, &b);
    }

    fn put_header(&mut self, at: u64, ty: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&ty.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.put(at, &h);
    }

    fn put_segment(&mut self, at: u64, sector: u64, num: u32, flags: u32) {
        let mut s = [0u8; 16];
        s[0..8].copy_from_slice(&sector.to_le_bytes());
        s[8..12].copy_from_slice(&num.to_le_bytes());
        s[12..16].copy_from_slice(&flags.to_le_bytes());
        self.put(at, &s);
    }

    /// `len` bytes (16-aligned) from area `area`, wrapping around.
    fn alloc(&mut self, area: usize, len: u64) -> u64 {
        let (start, end) = AREAS[area];
        let len = (len + 15) & !15;
        if self.next_free[area] + len > end {
            self.next_free[area] = start;
        }
        let a = self.next_free[area];
        self.next_free[area] = (a + len).min(end);
        a
    }

    fn publish(&mut self, head: u16) {
        let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % self.qsize);
        self.put(slot, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    fn index(&self, inp: &mut Input) -> u16 {
        let b = inp.u8();
        if b >= 0xfc {
            inp.u16()
        } else {
            u16::from(b) % self.qsize
        }
    }

    fn flags(inp: &mut Input) -> u16 {
        let b = inp.u8();
        if b & 0x80 != 0 {
            inp.u16()
        } else {
            u16::from(b) & (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE | VRING_DESC_F_INDIRECT) as u16
        }
    }

    /// A request the way a driver lays it out; see `Encoder::chain`.
    fn chain(&mut self, inp: &mut Input) {
        let head = u16::from(inp.u8()) % self.qsize;
        let shape = inp.u8();
        let (indirect, split_header, merge_status, area, publish) =
            (shape & 1 != 0, shape & 2 != 0, shape & 4 != 0, usize::from(shape >> 3 & 1), shape & 16 != 0);
        let ty = req_type(inp);
        let sec = sector(inp, self.capacity);
        let nseg = inp.u8() % 4;
        let hdr = self.alloc(area, 16);
        self.put_header(hdr, ty, sec);
        let mut descs: Vec<(u64, u32, bool)> = if split_header { vec![(hdr, 8, false), (hdr + 8, 8, false)] } else { vec![(hdr, 16, false)] };
        let zeroes = ty == VIRTIO_BLK_T_DISCARD || ty == VIRTIO_BLK_T_WRITE_ZEROES;
        let write_data = ty != VIRTIO_BLK_T_OUT && !zeroes;
        for _ in 0..nseg {
            if zeroes {
                let s = self.alloc(area, 16);
                let (ssec, num) = (sector(inp, self.capacity), u32::from(inp.u8()));
                let flags = match inp.u8() % 4 {
                    0 | 1 => 0,
                    2 => VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
                    _ => inp.u32(),
                };
                self.put_segment(s, ssec, num, flags);
                descs.push((s, 16, false));
            } else {
                let b = inp.u8();
                let l = if b >= 0xf0 { u32::from(b & 0xf) } else { u32::from(b % 9) * 512 };
                let a = self.alloc(area, u64::from(l));
                if !write_data {
                    self.put(a, &OUT_DATA[..l as usize]);
                }
                descs.push((a, l, write_data));
            }
        }
        match descs.last_mut() {
            Some(last) if merge_status && last.2 => {
                last.1 += 1;
                // The status byte sits right after the data.
                self.alloc(area, 1);
            }
            _ => descs.push((self.alloc(area, 1), 1, true)),
        }
        let n = descs.len() as u16;
        let flags = |i: u16, w: bool| {
            let mut f = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
            if i + 1 < n {
                f |= VRING_DESC_F_NEXT as u16;
            }
            f
        };
        if indirect {
            let table = self.alloc(area, 16 * u64::from(n));
            for (i, &(a, l, w)) in descs.iter().enumerate() {
                let i = i as u16;
                self.put_desc_at(table + 16 * u64::from(i), (a, l, flags(i, w), i + 1));
            }
            self.put_desc_at(DESC + 16 * u64::from(head), (table, 16 * u32::from(n), VRING_DESC_F_INDIRECT as u16, 0));
        } else {
            for (i, &(a, l, w)) in descs.iter().enumerate() {
                let i = i as u16;
                let idx = (head + i) % self.qsize;
                self.put_desc_at(DESC + 16 * u64::from(idx), (a, l, flags(i, w), (idx + 1) % self.qsize));
            }
        }
        self.log.push(Event::Chain { head, ty, sector: sec, descs, indirect });
        if publish {
            self.publish(head);
        }
    }

    fn used_idx(&self) -> u16 {
        self.d.mem.read_obj(GuestAddress(USED + 2)).unwrap_or(0)
    }

    fn used(&self, i: u16) -> (u32, u32) {
        let at = USED + 4 + 8 * u64::from(i % self.qsize);
        (self.d.mem.read_obj(GuestAddress(at)).unwrap_or(u32::MAX), self.d.mem.read_obj(GuestAddress(at + 4)).unwrap_or(0))
    }

    /// Until the used index reaches `target` (true) or the device asks for
    /// a reset (false), sleeping on the interrupt eventfd, which both
    /// raise: the harness asks for an interrupt on the first used entry of
    /// each round (used_event, avail flags) unless the input set them
    /// itself (`quiet`), in which case it spins, then polls briefly.
    fn wait(&self, target: u16, quiet: bool) -> bool {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if self.used_idx() == target {
                return true;
            }
            if self.d.t.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0 {
                return false;
            }
            let waited = start.elapsed();
            if waited > WAIT {
                let what = if quiet { "" } else { " (and raised no interrupt)" };
                self.fail(format_args!("the device neither answered (used idx {}, want {target}) nor asked for a reset{what}", self.used_idx()));
            }
            spins += 1;
            if spins < 8 {
                std::thread::yield_now();
                continue;
            }
            let timeout = if quiet { 1 } else { (WAIT - waited).as_millis() as i32 + 1 };
            let mut p = libc::pollfd { fd: self.d.irq.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut p, 1, timeout) };
            let _ = self.d.irq.read();
        }
    }

    /// Publishes the avail index, notifies, waits, checks. False when the
    /// execution ends here.
    fn round(&mut self) -> bool {
        if self.rounds == MAX_ROUNDS || self.needs_reset {
            return false;
        }
        self.rounds += 1;
        let new = self.avail_idx.wrapping_sub(self.consumed);
        let mut heads = Vec::new();
        if new <= self.qsize {
            for i in 0..new {
                let slot = AVAIL + 4 + 2 * u64::from(self.consumed.wrapping_add(i) % self.qsize);
                heads.push(self.d.mem.read_obj::<u16>(GuestAddress(slot)).unwrap_or(0));
            }
        }
        let walks: Vec<Walk> = heads.iter().map(|&h| walk(&self.d.mem, self.qsize, h)).collect();
        // The device stops at the first chain it cannot answer.
        let answerable = walks.iter().position(|w| !w.ok).unwrap_or(walks.len());
        let q = u64::from(self.qsize);
        let mut control = vec![(DESC, DESC + 16 * q), (AVAIL, AVAIL + 6 + 2 * q), (USED, USED + 6 + 8 * q)];
        for w in &walks[..answerable] {
            control.extend(w.tables.iter().map(|&(a, l)| (a, a.saturating_add(l))));
        }
        for w in &walks[..answerable] {
            for &(a, l) in &w.writable {
                let r = (a, a.saturating_add(l));
                if control.iter().any(|&c| overlaps(r, c)) {
                    self.log.push(Event::NotNotified { round: self.rounds, writable: r });
                    self.outcome.skipped = true;
                    return false;
                }
                self.allowed.push(r);
            }
        }
        let quiet = std::mem::take(&mut self.quiet);
        if !quiet {
            // An interrupt for the first used entry, with or without EVENT_IDX.
            let at = AVAIL + 4 + 2 * u64::from(self.qsize);
            self.put(at, &self.used_seen.to_le_bytes());
            self.put(AVAIL, &[0, 0]);
        }
        let _ = self.d.irq.read();
        // Only now: the I/O thread may be running (it starts at DRIVER_OK
        // and may only get to its first look at the ring much later).
        self.put_raw(AVAIL + 2, &self.avail_idx.to_le_bytes());
        self.log.push(Event::Round { round: self.rounds, avail_idx: self.avail_idx, heads: heads.clone(), answerable });
        self.d.notify();
        let answered = self.wait(self.avail_idx, quiet);
        if answered && answerable < heads.len() {
            self.fail(format_args!("a chain that does not end properly was answered: {:?}", walks[answerable]));
        }
        if !answered {
            if new <= self.qsize && answerable == heads.len() {
                self.fail(format_args!("DEVICE_NEEDS_RESET although every chain is well-formed: {walks:x?}"));
            }
            self.needs_reset = true;
            // The I/O thread may still be finishing the chains before the
            // broken one: the reset waits for it.
            self.reset();
        }
        let end = self.used_idx();
        let mut pending: Vec<u16> = heads[..answerable].to_vec();
        let count = end.wrapping_sub(self.used_seen);
        if count > self.qsize || usize::from(count) > pending.len() {
            self.fail(format_args!("{count} used entries for {} answerable chains", pending.len()));
        }
        for i in 0..count {
            let (id, used_len) = self.used(self.used_seen.wrapping_add(i));
            let Some(at) = pending.iter().position(|&h| u32::from(h) == id) else {
                self.fail(format_args!("used entry {id} was not published (or answered twice); heads {heads:?}"));
            };
            pending.swap_remove(at);
            let w = &walks[heads.iter().position(|&h| u32::from(h) == id).unwrap_or(0)];
            if used_len == 0 || u64::from(used_len) > w.writable_total {
                self.fail(format_args!("used length {used_len} for head {id} with {} writable bytes", w.writable_total));
            }
            let status = self.d.mem.read_obj(GuestAddress(w.status)).unwrap_or(0xff);
            self.outcome.used.push((id, used_len, status));
        }
        self.used_seen = end;
        self.consumed = self.avail_idx;
        !self.needs_reset
    }

    fn reset(&mut self) {
        self.d.w(VIRTIO_MMIO_STATUS, 0);
        let st = self.d.r(VIRTIO_MMIO_STATUS);
        if st != 0 {
            self.fail(format_args!("status {st:#x} after a reset"));
        }
    }
}

/// The driver's side of initialisation (as Linux does it), with the
/// features in `refuse` declined and a queue of `qsize` entries.
fn init(d: &mut Driver, refuse: u64, qsize: u16) {
    d.w(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    d.w(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
    let f = d.features() & !refuse;
    d.w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    d.w(VIRTIO_MMIO_DRIVER_FEATURES, f as u32);
    d.w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    d.w(VIRTIO_MMIO_DRIVER_FEATURES, (f >> 32) as u32);
    let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
    d.w(VIRTIO_MMIO_STATUS, s);
    d.w(VIRTIO_MMIO_QUEUE_SEL, 0);
    d.w(VIRTIO_MMIO_QUEUE_NUM, u32::from(qsize));
    for (lo, a) in [(VIRTIO_MMIO_QUEUE_DESC_LOW, DESC), (VIRTIO_MMIO_QUEUE_AVAIL_LOW, AVAIL), (VIRTIO_MMIO_QUEUE_USED_LOW, USED)] {
        d.w(lo, a as u32);
        d.w(lo + 4, (a >> 32) as u32);
    }
    d.w(VIRTIO_MMIO_QUEUE_READY, 1);
    d.w(VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
    let st = d.r(VIRTIO_MMIO_STATUS);
    assert_eq!(st, s | VIRTIO_CONFIG_S_DRIVER_OK, "virtio-blk fuzz: activation failed (status {st:#x})");
}

/// One execution: see the module documentation.
pub fn virtio_blk(data: &[u8]) {
    virtio_blk_outcome(data);
}

/// `virtio_blk`, saying what happened.
pub fn virtio_blk_outcome(data: &[u8]) -> Outcome {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let State { mem, shadow, pristine, mask } = s.get_or_insert_with(State::new);
        shadow.copy_from_slice(pristine);
        for (r, &(a, b)) in REGIONS.iter().enumerate() {
            // SAFETY: no device exists yet.
            unsafe { fill_region(mem, r, &shadow[a as usize..b as usize]) };
        }
        let mut inp = Input::new(data);
        let c0 = inp.u8();
        let c1 = inp.u8();
        let capacity = CAPACITIES[usize::from(c0 >> 5)];
        let qsize = 1u16 << (if c1 % 16 < 9 { c1 % 16 } else { 8 });
        let mut refuse = 0u64;
        for (bit, feature) in [(2, VIRTIO_RING_F_EVENT_IDX), (3, VIRTIO_RING_F_INDIRECT_DESC), (4, VIRTIO_BLK_F_FLUSH)] {
            if c0 & (1 << bit) != 0 {
                refuse |= 1 << feature;
            }
        }

        let backend = Arc::new(BlockBackend::new("fuzz"));
        backend.set_read_only(c0 & 1 != 0);
        backend.set_write_cache(c0 & 2 != 0);
        backend.insert_medium(Arc::new(NullDriver::new(capacity)), "null").unwrap_or_default();
        let block = match Block::new(backend, AioEngine::Threads, Some(SERIAL)) {
            Ok(b) => b,
            Err(e) => panic!("virtio-blk fuzz: {e}"),
        };
        let handle = block.handle();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap_or_else(|e| panic!("eventfd: {e}"));
        let irq2 = irq.try_clone().unwrap_or_else(|e| panic!("eventfd: {e}"));
        let t = MmioTransport::new(Box::new(block), mem.clone(), irq2).unwrap_or_else(|e| panic!("transport: {e}"));
        let mut d = Driver { mem: mem.clone(), t, irq, handle, next_desc: 0, avail_idx: 0, data_next: 0 };
        init(&mut d, refuse, qsize);

        let mut run = Run {
            d,
            shadow,
            qsize,
            capacity,
            avail_idx: 0,
            consumed: 0,
            used_seen: 0,
            allowed: Vec::new(),
            next_free: [AREAS[0].0, AREAS[1].0],
            rounds: 0,
            needs_reset: false,
            quiet: false,
            log: vec![Event::Config(c0, c1)],
            outcome: Outcome::default(),
        };
        let mut live = true;
        for _ in 0..MAX_OPS {
            if inp.is_empty() || !live {
                break;
            }
            match inp.u8() % tag::TAGS {
                tag::CHAIN => run.chain(&mut inp),
                tag::DESC => {
                    let idx = u16::from(inp.u8()) % qsize;
                    let d = (addr(&mut inp), len(&mut inp), Run::flags(&mut inp), run.index(&mut inp));
                    run.log.push(Event::Desc { idx, desc: d });
                    run.put_desc_at(DESC + 16 * u64::from(idx), d);
                }
                tag::DESC_AT => {
                    let table = addr(&mut inp);
                    let i = u64::from(inp.u8() % 32);
                    let next = u16::from(inp.u8() % 34);
                    let d = (addr(&mut inp), len(&mut inp), Run::flags(&mut inp), next);
                    run.log.push(Event::DescAt { table, i, desc: d });
                    run.put_desc_at(table.wrapping_add(16 * i), d);
                }
                tag::HEADER => {
                    let at = addr(&mut inp);
                    let (ty, sec) = (req_type(&mut inp), sector(&mut inp, capacity));
                    run.log.push(Event::Header { at, ty, sector: sec });
                    run.put_header(at, ty, sec);
                }
                tag::SEGMENT => {
                    let at = addr(&mut inp);
                    let (sec, num, flags) = (sector(&mut inp, capacity), inp.u32(), u32::from(inp.u8() % 4));
                    run.log.push(Event::Segment { at, sector: sec, num, flags });
                    run.put_segment(at, sec, num, flags);
                }
                tag::BYTES => {
                    let at = addr(&mut inp);
                    let n = usize::from(inp.u8() % 32);
                    let b = inp.bytes(n).to_vec();
                    run.log.push(Event::Bytes { at, bytes: b.clone() });
                    run.put(at, &b);
                }
                tag::PUBLISH => {
                    let h = run.index(&mut inp);
                    run.log.push(Event::Publish(h));
                    run.publish(h);
                }
                tag::AVAIL_IDX => {
                    let b = inp.u8();
                    run.avail_idx = if b & 1 != 0 { run.avail_idx.wrapping_add(inp.u8() as i8 as u16) } else { inp.u16() };
                    run.log.push(Event::AvailIdx(run.avail_idx));
                }
                tag::EVENT => {
                    let (used_event, flags) = (inp.u16(), u16::from(inp.u8() & 1));
                    run.log.push(Event::Interrupts { used_event, avail_flags: flags });
                    run.put(AVAIL + 4 + 2 * u64::from(qsize), &used_event.to_le_bytes());
                    run.put(AVAIL, &flags.to_le_bytes());
                    run.quiet = true;
                }
                _ => live = run.round(),
            }
        }
        if live && run.avail_idx != run.consumed {
            run.round();
        }
        if !run.needs_reset {
            run.reset();
        }

        // Everything the device changed: in answerable chains' writable
        // buffers or the used ring, and only bytes it can write there.
        let used_ring = (USED, USED + 6 + 8 * u64::from(qsize));
        // Where the device may write: 2 for anything, 1 for the bytes it
        // can produce, 0 for nothing. Compared a block at a time (memcmp)
        // first: byte loops are slow under the fuzzer's instrumentation.
        mask.fill(0);
        for (&(a, b), m) in run.allowed.iter().map(|r| (r, 1)).chain([(&used_ring, 2)]) {
            let (a, b) = (a.min(RAM_END) as usize, b.min(RAM_END) as usize);
            mask[a..b].fill(m);
        }
        let (zeros, ones, twos) = ([0u8; 256], [1u8; 256], [2u8; 256]);
        for (r, &(start, end)) in REGIONS.iter().enumerate() {
            // SAFETY: the reset joined the I/O thread.
            let after = unsafe { region_bytes(&run.d.mem, r) };
            let before = &run.shadow[start as usize..end as usize];
            let mask = &mask[start as usize..end as usize];
            for (c, ((x, y), m)) in after.chunks(256).zip(before.chunks(256)).zip(mask.chunks(256)).enumerate() {
                let n = x.len();
                if x == y || m == &twos[..n] || (m == &ones[..n] && x == &zeros[..n]) {
                    continue;
                }
                for j in (0..n).filter(|&j| x[j] != y[j]) {
                    let (at, v) = (start + (c * 256 + j) as u64, x[j]);
                    if m[j] == 0 {
                        run.fail(format_args!("the device wrote {v:#x} at {at:#x}, outside the writable buffers {:x?}", run.allowed));
                    }
                    if m[j] == 1 && !(v <= 2 || SERIAL.as_bytes().contains(&v)) {
                        run.fail(format_args!("the device wrote {v:#x} at {at:#x}: no status, zero or serial byte"));
                    }
                }
            }
        }
        run.outcome.needs_reset = run.needs_reset;
        run.outcome
    })
}

/// Builds inputs in the harness's format, for the seed corpus and tests.
pub struct Encoder {
    pub bytes: Vec<u8>,
}

/// The shape of a request built by `Encoder::chain`.
#[derive(Clone, Copy, Default)]
pub struct Shape {
    pub indirect: bool,
    pub split_header: bool,
    /// The status byte at the end of the last data buffer (writable data).
    pub merge_status: bool,
    /// Allocate in the second RAM region.
    pub high: bool,
    pub publish: bool,
}

impl Encoder {
    /// `capacity`: index into `CAPACITIES`; `qsize_log2` up to 8.
    pub fn new(capacity: u8, read_only: bool, write_cache: bool, refuse_event_idx: bool, qsize_log2: u8) -> Self {
        let c0 = (capacity << 5) | u8::from(read_only) | (u8::from(write_cache) << 1) | (u8::from(refuse_event_idx) << 2);
        Encoder { bytes: vec![c0, qsize_log2] }
    }

    /// A request: `ty` is 0 IN, 1 OUT, 2 FLUSH, 3 GET_ID, 4 DISCARD,
    /// 5 WRITE_ZEROES; data segments of `sectors[i]` sectors (for discard
    /// and write-zeroes: one 16-byte segment per entry, (sector, count)).
    pub fn chain(mut self, head: u8, shape: Shape, ty: u8, sector: u8, segs: &[(u8, u8)]) -> Self {
        let s = u8::from(shape.indirect)
            | (u8::from(shape.split_header) << 1)
            | (u8::from(shape.merge_status) << 2)
            | (u8::from(shape.high) << 3)
            | (u8::from(shape.publish) << 4);
        self.bytes.extend_from_slice(&[tag::CHAIN, head, s, ty, 0, sector, segs.len() as u8]);
        let zeroes = ty == 4 || ty == 5;
        for &(a, b) in segs {
            if zeroes {
                // sector (kind 0, small), count, flags (0; 2 = UNMAP).
                self.bytes.extend_from_slice(&[0, a, b, if ty == 5 { 2 } else { 0 }]);
            } else {
                self.bytes.push(a);
            }
        }
        self
    }

    pub fn desc(mut self, idx: u8, addr: u16, len: u8, flags: u8, next: u8) -> Self {
        let [lo, hi] = addr.to_le_bytes();
        self.bytes.extend_from_slice(&[tag::DESC, idx, 0, lo, hi, 0, len, flags & 7, next]);
        self
    }

    pub fn publish(mut self, head: u8) -> Self {
        self.bytes.extend_from_slice(&[tag::PUBLISH, head]);
        self
    }

    pub fn avail_idx(mut self, idx: u16) -> Self {
        let [lo, hi] = idx.to_le_bytes();
        self.bytes.extend_from_slice(&[tag::AVAIL_IDX, 0, lo, hi]);
        self
    }

    pub fn used_event(mut self, used_event: u16) -> Self {
        let [lo, hi] = used_event.to_le_bytes();
        self.bytes.extend_from_slice(&[tag::EVENT, lo, hi, 0]);
        self
    }

    pub fn notify(mut self) -> Self {
        self.bytes.push(tag::NOTIFY);
        self
    }
}

/// Hand-made inputs that reach the deep paths, for the seed corpus.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let e = || Encoder::new(3, false, true, false, 8);
    let p = Shape { publish: true, ..Shape::default() };
    let ind = Shape { indirect: true, publish: true, ..Shape::default() };
    vec![
        ("read", e().chain(0, p, 0, 8, &[(8, 0)]).notify().bytes),
        ("write-flush", e().chain(0, p, 1, 8, &[(2, 0), (1, 0)]).chain(5, p, 2, 0, &[]).notify().bytes),
        ("get-id-discard-write-zeroes", e().chain(0, p, 3, 0, &[(1, 0)]).chain(4, p, 4, 0, &[(8, 8)]).chain(8, p, 5, 0, &[(16, 8)]).notify().bytes),
        ("indirect-read-write", e().chain(0, ind, 0, 1, &[(1, 0), (2, 0)]).chain(1, ind, 1, 1, &[(4, 0)]).notify().bytes),
        ("split-header-merged-status", e().chain(0, Shape { split_header: true, merge_status: true, high: true, publish: true, ..Shape::default() }, 0, 3, &[(1, 0)]).notify().bytes),
        ("two-rounds-event-idx", e().chain(0, p, 0, 0, &[(1, 0)]).notify().used_event(1).chain(3, p, 1, 0, &[(1, 0)]).notify().bytes),
        ("read-only-write", Encoder::new(3, true, true, false, 8).chain(0, p, 1, 0, &[(1, 0)]).chain(2, p, 5, 0, &[(8, 8)]).notify().bytes),
        ("loop", e().desc(0, 0x100, 16, 1, 1).desc(1, 0x100, 16, 1, 0).publish(0).notify().bytes),
        ("avail-far-ahead", e().chain(0, p, 0, 0, &[(1, 0)]).avail_idx(1000).notify().bytes),
        ("small-queue-wraps", Encoder::new(2, false, false, true, 1).chain(0, ind, 0, 0, &[(1, 0)]).notify().chain(1, ind, 1, 0, &[(1, 0)]).notify().chain(0, ind, 0, 0, &[(1, 0)]).notify().bytes),
    ]
}
