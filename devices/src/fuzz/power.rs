//! The ACPI PM1 registers (`crate::legacy::AcpiPower`): reads and writes
//! straight to the device at any offset (inside the range, just past it,
//! where `offset + i` overflows) and any width the trait takes (0 to 16
//! bytes), and port accesses and strings through a `Bus` with the device
//! where the VMM puts it, at ports around its range. It must never panic,
//! and, against a model of the registers as the ACPI spec (4.8.3) and the
//! device's documentation describe them:
//! - a read fills exactly the buffer it is given, with the model's bytes;
//!   an access the bus does not route to the device changes nothing;
//! - PM1a_STS reads 0 (write 1 to clear, and nothing sets a bit), PM1a_EN
//!   reads back what was written, PM1a_CNT reads SCI_EN always and SLP_EN
//!   never, the reset register and everything past it read 0;
//! - the poweroff eventfd fires once for each write that puts SLP_EN with
//!   the `_S5` SLP_TYP into PM1a_CNT's high byte, the reset eventfd once
//!   for each write of the FADT's reset value to the reset register, and
//!   neither ever otherwise (checked after every operation).
//!
//! Input: operations (`tag`) until the input ends.

use std::sync::{Arc, Mutex};

use block::fuzz::Input;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::lock;
use crate::legacy::{AcpiPower, EventFdTrigger, ACPI_PM_LEN, RESET_OFFSET, RESET_VALUE, S5_SLEEP_TYPE};
use crate::{Bus, BusDevice};

pub const MAX_OPS: usize = 256;
/// The VMM's port for the device (`vmm::arch::layout::ACPI_PM_PORT`): the
/// bus path sees the ports a guest sees.
pub const BASE: u64 = 0x600;
/// Bus accesses go to ports [BASE - 8, BASE + 24): the device and both
/// sides of it.
const PORT_SPAN: u8 = 32;
/// The widest access straight to the device: wider than anything a vCPU
/// exit brings, as the trait takes any slice.
const MAX_WIDTH: u8 = 16;
/// What read buffers hold where the device must not write.
const CANARY: u8 = 0xa5;

/// PM1a_CNT bits (ACPI 6.5, table 4.13).
const SCI_EN: u16 = 1;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_EN: u16 = 1 << 13;

/// Tags of the operations (the tag byte modulo `TAGS`).
pub mod tag {
    /// Straight to the device: offset selector (see `offset`), width
    /// (0-16), that many value bytes.
    pub const WRITE: u8 = 0;
    /// Straight to the device: offset selector, width.
    pub const READ: u8 = 1;
    /// `out` through the bus: port (BASE - 8 + 0..32), width selector (1,
    /// 2, 4), value bytes.
    pub const OUT: u8 = 2;
    /// `in` through the bus: port, width selector.
    pub const IN: u8 = 3;
    /// `rep outs` through the bus: port, item size selector, length (0-63,
    /// not necessarily whole items), bytes.
    pub const OUTS: u8 = 4;
    /// `rep ins` through the bus: port, item size selector, length.
    pub const INS: u8 = 5;
    pub const TAGS: u8 = 6;
}

/// The registers as the spec names them, and the triggers they owe.
#[derive(Default)]
struct Model {
    sts: u16,
    en: u16,
    /// PM1a_CNT as it reads back.
    cnt: u16,
    poweroffs: u64,
    resets: u64,
}

impl Model {
    fn new() -> Self {
        Model { cnt: SCI_EN, ..Default::default() }
    }

    /// The byte at device offset `off` (None: `offset + i` overflowed).
    fn read_byte(&self, off: Option<u64>) -> u8 {
        let Some(off) = off else { return 0 };
        let lane = |r: u16| r.to_le_bytes()[(off & 1) as usize];
        match off {
            0 | 1 => lane(self.sts),
            2 | 3 => lane(self.en),
            4 | 5 => lane(self.cnt),
            _ => 0,
        }
    }

    fn write_byte(&mut self, off: Option<u64>, v: u8) {
        let Some(off) = off else { return };
        let shift = 8 * (off & 1);
        let mask = 0xffu16 << shift;
        let lane = u16::from(v) << shift;
        match off {
            0 | 1 => self.sts &= !lane,
            2 | 3 => self.en = (self.en & !mask) | lane,
            4 | 5 => {
                let written = (self.cnt & !mask) | lane;
                // SLP_EN and SLP_TYP live in the high byte: only a write of
                // that byte can ask for a sleep state.
                let typ = (written >> SLP_TYP_SHIFT) & 7;
                if off == 5 && written & SLP_EN != 0 && typ == u16::from(S5_SLEEP_TYPE) {
                    self.poweroffs += 1;
                }
                self.cnt = (written & !SLP_EN) | SCI_EN;
            }
            o if o == u64::from(RESET_OFFSET) && v == RESET_VALUE => self.resets += 1,
            _ => {}
        }
    }

    fn write(&mut self, off: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            self.write_byte(off.checked_add(i as u64), *b);
        }
    }

    fn read(&self, off: u64, len: usize) -> Vec<u8> {
        (0..len).map(|i| self.read_byte(off.checked_add(i as u64))).collect()
    }
}

/// What an execution did, for tests of the seeds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub poweroffs: u64,
    pub resets: u64,
    /// Bus accesses the bus routed to the device.
    pub routed: usize,
}

struct Run {
    dev: Arc<Mutex<AcpiPower>>,
    bus: Bus,
    poweroff: EventFd,
    reset: EventFd,
    model: Model,
    outcome: Outcome,
    /// The operations so far, for the failure message.
    log: Vec<String>,
}

/// An eventfd's count since the last look (0 when nothing fired).
fn fired(fd: &EventFd) -> u64 {
    match fd.read() {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => panic!("fuzz: eventfd read: {e}"),
    }
}

fn eventfd() -> EventFd {
    match EventFd::new(EFD_NONBLOCK) {
        Ok(f) => f,
        Err(e) => panic!("fuzz: eventfd: {e}"),
    }
}

fn trigger(fd: &EventFd) -> EventFdTrigger {
    match fd.try_clone() {
        Ok(f) => EventFdTrigger(f),
        Err(e) => panic!("fuzz: eventfd clone: {e}"),
    }
}

impl Run {
    fn new() -> Self {
        let (poweroff, reset) = (eventfd(), eventfd());
        let dev = Arc::new(Mutex::new(AcpiPower::new(trigger(&poweroff), trigger(&reset))));
        let mut bus = Bus::new();
        if let Err(e) = bus.insert(dev.clone(), BASE, u64::from(ACPI_PM_LEN)) {
            panic!("fuzz: bus: {e}");
        }
        Run { dev, bus, poweroff, reset, model: Model::new(), outcome: Outcome::default(), log: Vec::new() }
    }

    fn fail(&self, what: std::fmt::Arguments) -> ! {
        panic!("acpi_power: {what}\noperations:\n{}", self.log.join("\n"))
    }

    /// Checks a read's buffer: the model's bytes in its first `len`, the
    /// canary after them.
    fn check_read(&self, off: u64, len: usize, buf: &[u8]) {
        let want = self.model.read(off, len);
        if buf[..len] != want[..] {
            self.fail(format_args!("read at offset {off:#x}: {:02x?}, the registers hold {want:02x?}", &buf[..len]));
        }
        if buf[len..].iter().any(|&b| b != CANARY) {
            self.fail(format_args!("read at offset {off:#x} of {len} bytes wrote past its buffer: {buf:02x?}"));
        }
    }

    /// Whether the bus must route an access of `len` bytes at `port`.
    fn routed(port: u64, len: usize) -> bool {
        port >= BASE && port + len as u64 <= BASE + u64::from(ACPI_PM_LEN)
    }

    fn check_routing(&mut self, port: u64, len: usize, routed: bool) {
        if routed != Self::routed(port, len) {
            self.fail(format_args!("bus access at {port:#x} of {len} bytes: routed {routed}"));
        }
        self.outcome.routed += usize::from(routed);
    }

    /// The triggers fired exactly as often as the model says they must.
    fn check_triggers(&mut self) {
        self.outcome.poweroffs += fired(&self.poweroff);
        self.outcome.resets += fired(&self.reset);
        if (self.outcome.poweroffs, self.outcome.resets) != (self.model.poweroffs, self.model.resets) {
            self.fail(format_args!(
                "{} poweroffs and {} resets fired, the writes asked for {} and {}",
                self.outcome.poweroffs, self.outcome.resets, self.model.poweroffs, self.model.resets
            ));
        }
    }

    fn op(&mut self, inp: &mut Input) {
        let mut buf = [CANARY; MAX_WIDTH as usize + 8];
        match inp.u8() % tag::TAGS {
            tag::WRITE => {
                let off = offset(inp);
                let len = usize::from(inp_width(inp));
                let data = value(inp, len);
                self.log.push(format!("write {off:#x} {data:02x?}"));
                lock(&self.dev).write(off, &data);
                self.model.write(off, &data);
            }
            tag::READ => {
                let off = offset(inp);
                let len = usize::from(inp_width(inp));
                self.log.push(format!("read {off:#x} {len}"));
                lock(&self.dev).read(off, &mut buf[..len]);
                self.check_read(off, len, &buf);
            }
            tag::OUT => {
                let port = port(inp);
                let len = pio_width(inp);
                let data = value(inp, len);
                self.log.push(format!("out {port:#x} {data:02x?}"));
                let routed = self.bus.write(port, &data);
                self.check_routing(port, data.len(), routed);
                if routed {
                    self.model.write(port - BASE, &data);
                }
            }
            tag::IN => {
                let port = port(inp);
                let len = pio_width(inp);
                self.log.push(format!("in {port:#x} {len}"));
                let routed = self.bus.read(port, &mut buf[..len]);
                self.check_routing(port, len, routed);
                if routed {
                    self.check_read(port - BASE, len, &buf);
                } else {
                    self.check_read(u64::MAX, 0, &buf);
                }
            }
            tag::OUTS => {
                let port = port(inp);
                let size = pio_width(inp);
                let len = usize::from(inp.u8() % 64);
                let data = value(inp, len);
                self.log.push(format!("outs {port:#x} {size} {data:02x?}"));
                let routed = self.bus.write_string(port, size, &data);
                self.check_routing(port, size, routed);
                if routed {
                    for item in data.chunks(size) {
                        self.model.write(port - BASE, item);
                    }
                }
            }
            _ => {
                let port = port(inp);
                let size = pio_width(inp);
                let len = usize::from(inp.u8() % 64);
                self.log.push(format!("ins {port:#x} {size} {len}"));
                let mut s = vec![CANARY; len];
                let routed = self.bus.read_string(port, size, &mut s);
                self.check_routing(port, size, routed);
                let want: Vec<u8> = if routed {
                    (0..len.div_ceil(size))
                        .flat_map(|i| self.model.read(port - BASE, size.min(len - i * size)))
                        .collect()
                } else {
                    vec![CANARY; len]
                };
                if s != want {
                    self.fail(format_args!("ins at {port:#x}: {s:02x?}, want {want:02x?}"));
                }
            }
        }
        self.check_triggers();
    }
}

/// A device offset: the range and just past it (0-15), the top of u64
/// (where `offset + i` saturates), or any.
fn offset(inp: &mut Input) -> u64 {
    let s = inp.u8();
    match s >> 6 {
        0 | 1 => u64::from(s & 0xf),
        2 => u64::MAX - u64::from(s & 0xf),
        _ => inp.u64(),
    }
}

fn inp_width(inp: &mut Input) -> u8 {
    inp.u8() % (MAX_WIDTH + 1)
}

fn pio_width(inp: &mut Input) -> usize {
    [1, 2, 4][usize::from(inp.u8() % 3)]
}

fn port(inp: &mut Input) -> u64 {
    BASE - 8 + u64::from(inp.u8() % PORT_SPAN)
}

/// `len` value bytes (zeros past the input's end).
fn value(inp: &mut Input, len: usize) -> Vec<u8> {
    let mut v = inp.bytes(len).to_vec();
    v.resize(len, 0);
    v
}

/// Runs one input.
pub fn acpi_power(data: &[u8]) {
    acpi_power_outcome(data);
}

/// `acpi_power`, saying what happened.
pub fn acpi_power_outcome(data: &[u8]) -> Outcome {
    let mut inp = Input::new(data);
    let mut run = Run::new();
    for _ in 0..MAX_OPS {
        if inp.is_empty() {
            break;
        }
        run.op(&mut inp);
    }
    // The whole register block, and a little past it, as the model says.
    let mut buf = [CANARY; MAX_WIDTH as usize + 8];
    lock(&run.dev).read(0, &mut buf[..usize::from(MAX_WIDTH)]);
    run.check_read(0, usize::from(MAX_WIDTH), &buf);
    run.outcome
}

/// Builds inputs by name, for the seeds.
#[derive(Default)]
pub struct Encoder {
    pub bytes: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }
    /// Straight to the device at offset `off` (0-15).
    pub fn write(mut self, off: u8, data: &[u8]) -> Self {
        self.bytes.extend_from_slice(&[tag::WRITE, off & 0xf, data.len() as u8]);
        self.bytes.extend_from_slice(data);
        self
    }
    /// Straight to the device at `u64::MAX - below` (below 0-15).
    pub fn write_top(mut self, below: u8, data: &[u8]) -> Self {
        self.bytes.extend_from_slice(&[tag::WRITE, 0x80 | (below & 0xf), data.len() as u8]);
        self.bytes.extend_from_slice(data);
        self
    }
    pub fn read(mut self, off: u8, len: u8) -> Self {
        self.bytes.extend_from_slice(&[tag::READ, off & 0xf, len]);
        self
    }
    /// `width_sel`: 0, 1, 2 for 1, 2, 4 bytes; `port` is absolute.
    pub fn out(mut self, port: u16, width_sel: u8, v: u32) -> Self {
        self.bytes.extend_from_slice(&[tag::OUT, port_sel(port), width_sel]);
        let w = [1, 2, 4][usize::from(width_sel % 3)];
        self.bytes.extend_from_slice(&v.to_le_bytes()[..w]);
        self
    }
    pub fn inp(mut self, port: u16, width_sel: u8) -> Self {
        self.bytes.extend_from_slice(&[tag::IN, port_sel(port), width_sel]);
        self
    }
    pub fn outs(mut self, port: u16, size_sel: u8, data: &[u8]) -> Self {
        self.bytes.extend_from_slice(&[tag::OUTS, port_sel(port), size_sel, data.len() as u8]);
        self.bytes.extend_from_slice(data);
        self
    }
    pub fn ins(mut self, port: u16, size_sel: u8, len: u8) -> Self {
        self.bytes.extend_from_slice(&[tag::INS, port_sel(port), size_sel, len]);
        self
    }
}

fn port_sel(port: u16) -> u8 {
    (u64::from(port) + 8 - BASE) as u8
}

/// PM1a_CNT's high byte: SLP_TYP `typ`, SLP_EN `en`.
fn cnt_hi(typ: u8, en: bool) -> u8 {
    (typ << 2) | (u8::from(en) << 5)
}

/// Hand-made seeds: (name, input).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let e = Encoder::new;
    let s5 = cnt_hi(S5_SLEEP_TYPE, true);
    vec![
        // Linux's poweroff: SLP_TYP first, then SLP_TYP with SLP_EN, as words.
        (
            "poweroff-acpica",
            e().out(0x604, 1, (u32::from(cnt_hi(5, false)) << 8) | 1)
                .inp(0x604, 1)
                .out(0x604, 1, (u32::from(s5) << 8) | 1)
                .bytes,
        ),
        ("poweroff-byte", e().write(5, &[s5]).read(4, 2).bytes),
        (
            "s3-and-s5-without-slp-en",
            e().write(4, &[1, cnt_hi(3, true)]).write(4, &[1, cnt_hi(5, false)]).read(4, 2).bytes,
        ),
        ("reset", e().out(0x606, 0, 0x41).out(0x606, 0, u32::from(RESET_VALUE)).inp(0x606, 0).bytes),
        (
            "status-enable",
            e().write(2, &[0x21, 0x01])
                .read(0, 4)
                .write(0, &[0xff, 0xff, 0, 0])
                .out(0x600, 2, 0xffff_ffff)
                .inp(0x600, 2)
                .bytes,
        ),
        // Accesses that straddle the end or start of the range are not routed.
        (
            "bus-edges",
            e().out(0x605, 2, 0x4242_3434)
                .out(0x604, 2, 0x4200_3401)
                .inp(0x5fe, 2)
                .inp(0x607, 0)
                .out(0x5ff, 1, 0x3400)
                .bytes,
        ),
        (
            "strings",
            e().outs(0x606, 0, &[RESET_VALUE, 0, RESET_VALUE]).outs(0x604, 1, &[1, s5, 1]).ins(0x602, 1, 7).bytes,
        ),
        (
            "past-the-end",
            e().write_top(1, &[s5; 8])
                .write(6, &[RESET_VALUE - 1, RESET_VALUE, s5])
                .write(7, &[RESET_VALUE; 9])
                .read(3, 16)
                .bytes,
        ),
    ]
}
