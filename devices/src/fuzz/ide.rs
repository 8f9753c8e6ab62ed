//! The IDE channel (`crate::ide`): register writes and reads at any
//! offset and width, device control (nIEN, SRST, HOB), data port strings of
//! any length and item size, ATA commands with their task file, ATAPI
//! PACKET commands with any CDB and byte count limit, host media operations
//! (tray, eject requests, medium insert/remove), injected I/O errors under
//! every error policy, and resumes. It must never panic, and:
//! - BSY is never left set (PIO completes synchronously);
//! - an absent slave, selected, reads status 0 and error 0;
//! - the IRQ line never rises while nIEN is set;
//! - the disk's image only changes through completed writes (checked by a
//!   model: after the run, bytes outside the sectors written hold the
//!   initial pattern).
//!
//! Input: one config byte (which devices, image sizes, error policies),
//! then operations (`tag`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use block::drivers::inject::{Count, InjectDriver, Rule};
use block::fuzz::Input;
use block::testing::TestDisk;
use block::{BlockBackend, OnError, Op};

use crate::ide::{DriveConfig, IdeChannel, Media, BSY, CTL_NIEN, REG_DATA, REG_STATUS};
use crate::BusDevice;

pub const MAX_OPS: usize = 256;

/// Tags of the operations (the tag byte modulo `TAGS`).
pub mod tag {
    /// A register write: offset (0-7), width (1, 2, 4), value.
    pub const WRITE: u8 = 0;
    /// A register read: offset, width.
    pub const READ: u8 = 1;
    /// Device control write.
    pub const DEVCTL: u8 = 2;
    /// A data port string read: item size (2, 4), bytes (u16).
    pub const INS: u8 = 3;
    /// A data port string write: item size, length (u8 × 2), bytes from the input.
    pub const OUTS: u8 = 4;
    /// A PACKET command: features, byte count limit (u16), 12 CDB bytes.
    pub const PACKET: u8 = 5;
    /// An ATA command: select, count, LBA (3 bytes), HOB count, HOB LBA
    /// (3 bytes), features, command.
    pub const ATA: u8 = 6;
    /// Host: change_media, eject_request, resume, remove/insert medium.
    pub const HOST: u8 = 7;
    /// An injected error: op, errno selector.
    pub const INJECT: u8 = 8;
    pub const TAGS: u8 = 9;
}

/// Disk image sizes (bytes) the config byte chooses from.
const DISK_SIZES: [usize; 4] = [64 << 10, 512, 0, (64 << 10) + 1000];
/// CD image sizes.
const CD_SIZES: [usize; 4] = [8 * 2048, 2048, 0, 3 * 2048 + 100];
const ERRNOS: [i32; 4] = [5, 28, 123, 22];
const POLICIES: [OnError; 4] = [OnError::Report, OnError::Stop, OnError::Ignore, OnError::Enospc];

fn initial(i: usize) -> u8 {
    (i as u8).wrapping_mul(31) ^ (i >> 9) as u8
}

struct Dev {
    backend: Arc<BlockBackend>,
    inject: Arc<InjectDriver>,
    disk: Arc<TestDisk>,
}

fn dev(name: &str, size: usize, read: OnError, write: OnError) -> Dev {
    let disk = TestDisk::new(size, true);
    for (i, b) in disk.data().iter_mut().enumerate() {
        *b = initial(i);
    }
    let inject = Arc::new(InjectDriver::new(disk.clone()));
    let backend = Arc::new(BlockBackend::new(name));
    if let Err(e) = backend.insert_medium(inject.clone(), "img") {
        panic!("fuzz: insert: {e}");
    }
    let write = if write == OnError::Enospc { OnError::Enospc } else { write };
    let read = if read == OnError::Enospc { OnError::Report } else { read };
    if let Err(e) = backend.set_on_error(read, write) {
        panic!("fuzz: policy: {e}");
    }
    Dev { backend, inject, disk }
}

/// Runs one input.
pub fn ide(data: &[u8]) {
    let mut inp = Input::new(data);
    let cfg = inp.u8();
    let layout = cfg & 3;
    let policy = POLICIES[usize::from((cfg >> 2) & 3)];
    let disk = dev("hd", DISK_SIZES[usize::from((cfg >> 4) & 3)], policy, policy);
    let cd = dev("cd", CD_SIZES[usize::from((cfg >> 6) & 3)], policy, OnError::Report);
    let dc = || Some(DriveConfig { backend: disk.backend.clone(), media: Media::Disk, serial: "FZ".into() });
    let cc = || Some(DriveConfig { backend: cd.backend.clone(), media: Media::Cdrom, serial: "FZCD".into() });
    let (master, slave, slave_absent) = match layout {
        0 => (dc(), cc(), false),
        1 => (cc(), None, true),
        2 => (dc(), None, true),
        _ => (cc(), dc(), false),
    };
    let level = Arc::new(AtomicBool::new(false));
    let rises = Arc::new(AtomicUsize::new(0));
    let (l, r) = (level.clone(), rises.clone());
    let irq = Box::new(move |v: bool| {
        if v && !l.swap(true, Ordering::SeqCst) {
            r.fetch_add(1, Ordering::SeqCst);
        } else if !v {
            l.store(false, Ordering::SeqCst);
        }
    });
    let mut ch = match IdeChannel::new(irq, master, slave) {
        Ok(c) => c,
        Err(e) => panic!("fuzz: channel: {e}"),
    };
    let mut devctl = 0u8;
    // Sectors of the disk image a write may have changed.
    let mut written = vec![false; DISK_SIZES[usize::from((cfg >> 4) & 3)].div_ceil(512)];
    let disk_unit = match layout {
        0 | 2 => Some(0u8),
        3 => Some(1),
        _ => None,
    };
    for _ in 0..MAX_OPS {
        if inp.is_empty() {
            break;
        }
        let masked = devctl & CTL_NIEN != 0;
        let rises_before = rises.load(Ordering::SeqCst);
        let t = inp.u8() % tag::TAGS;
        let mut nien_changed = false;
        match t {
            tag::WRITE => {
                let off = u64::from(inp.u8() % 8);
                let width = [1usize, 2, 4][usize::from(inp.u8() % 3)];
                let v = inp.u32().to_le_bytes();
                if off + width as u64 > REG_STATUS && disk_unit.is_some() {
                    mark_all(&mut written);
                }
                ch.write(off, &v[..width]);
            }
            tag::READ => {
                let off = u64::from(inp.u8() % 8);
                let width = [1usize, 2, 4][usize::from(inp.u8() % 3)];
                let mut b = [0u8; 4];
                ch.read(off, &mut b[..width]);
            }
            tag::DEVCTL => {
                devctl = inp.u8();
                nien_changed = true;
                ch.write_devctl(devctl);
            }
            tag::INS => {
                let size = if inp.u8() & 1 == 0 { 2 } else { 4 };
                let n = usize::from(inp.u16() % 8192) / size * size;
                let mut b = vec![0u8; n];
                ch.read_string(REG_DATA, size, &mut b);
            }
            tag::OUTS => {
                let size = if inp.u8() & 1 == 0 { 2 } else { 4 };
                let n = usize::from(inp.u8()) * 2 * size;
                let b = inp.bytes(n).to_vec();
                ch.write_string(REG_DATA, size, &b);
            }
            tag::PACKET => {
                let feature = inp.u8() & 0x07;
                let bcl = inp.u16();
                let cdb = inp.bytes(12).to_vec();
                ch.write_reg(1, feature);
                ch.write_reg(4, bcl as u8);
                ch.write_reg(5, (bcl >> 8) as u8);
                ch.write_reg(REG_STATUS, 0xa0);
                ch.write_string(REG_DATA, 2, &cdb);
            }
            tag::ATA => {
                let regs = inp.bytes(10).to_vec();
                let get = |i: usize| regs.get(i).copied().unwrap_or(0);
                let cmd = inp.u8();
                ch.write_reg(2, get(5));
                ch.write_reg(3, get(6));
                ch.write_reg(4, get(7));
                ch.write_reg(5, get(8));
                ch.write_reg(2, get(1));
                ch.write_reg(3, get(2));
                ch.write_reg(4, get(3));
                ch.write_reg(5, get(4));
                ch.write_reg(1, get(9));
                ch.write_reg(6, get(0));
                if disk_unit.is_some() {
                    mark_all(&mut written);
                }
                ch.write_reg(REG_STATUS, cmd);
            }
            tag::HOST => {
                let v = inp.u8();
                let b = if v & 0x80 != 0 { &disk.backend } else { &cd.backend };
                match v & 7 {
                    0 => b.change_media(false),
                    1 => b.change_media(true),
                    2 => b.eject_request(false),
                    3 => b.eject_request(true),
                    4 => {
                        if disk_unit.is_some() {
                            mark_all(&mut written);
                        }
                        ch.resume();
                    }
                    5 => {
                        b.remove_medium();
                    }
                    6 => {
                        let src = if v & 0x80 != 0 { &disk } else { &cd };
                        let _ = b.insert_medium(src.inject.clone(), "img");
                    }
                    _ => {
                        let mut x = [0u8; 1];
                        ch.read(7, &mut x);
                    }
                }
            }
            _ => {
                let v = inp.u8();
                let op = [Op::Read, Op::Write, Op::Flush, Op::Read][usize::from(v & 3)];
                let target = if v & 0x80 != 0 { &disk } else { &cd };
                target.inject.add_rule(Rule { op: Some(op), sectors: None, errno: ERRNOS[usize::from((v >> 2) & 3)], count: Count::Once });
            }
        }
        // The line never rises while nIEN is set (during the whole op).
        if masked && !nien_changed && devctl & CTL_NIEN != 0 {
            assert_eq!(rises.load(Ordering::SeqCst), rises_before, "IRQ raised with nIEN=1 (op {t})");
        }
        assert_eq!(ch.read_altstatus() & BSY, 0, "BSY left set");
        if slave_absent && ch.selected_unit() == 1 {
            assert_eq!(ch.read_altstatus(), 0, "absent slave status");
        }
    }
    // Writes can only change the disk while a command may have written.
    if !written.iter().any(|w| *w) {
        let d = disk.disk.data();
        for (i, b) in d.iter().enumerate() {
            assert_eq!(*b, initial(i), "disk byte {i} changed without a write command");
        }
    }
}

fn mark_all(w: &mut [bool]) {
    w.iter_mut().for_each(|x| *x = true);
}

/// Builds inputs by name, for the seeds.
pub struct Encoder {
    pub bytes: Vec<u8>,
}

impl Encoder {
    pub fn new(cfg: u8) -> Self {
        Encoder { bytes: vec![cfg] }
    }
    pub fn reg(mut self, off: u8, v: u8) -> Self {
        self.bytes.extend_from_slice(&[tag::WRITE, off, 0, v, 0, 0, 0]);
        self
    }
    pub fn read(mut self, off: u8) -> Self {
        self.bytes.extend_from_slice(&[tag::READ, off, 0]);
        self
    }
    pub fn devctl(mut self, v: u8) -> Self {
        self.bytes.extend_from_slice(&[tag::DEVCTL, v]);
        self
    }
    pub fn ins(mut self, n: u16) -> Self {
        self.bytes.extend_from_slice(&[tag::INS, 0]);
        self.bytes.extend_from_slice(&n.to_le_bytes());
        self
    }
    pub fn outs(mut self, data: &[u8]) -> Self {
        self.bytes.extend_from_slice(&[tag::OUTS, 0, (data.len() / 4) as u8]);
        self.bytes.extend_from_slice(&data[..data.len() / 4 * 4]);
        self
    }
    pub fn packet(mut self, bcl: u16, cdb: &[u8]) -> Self {
        self.bytes.extend_from_slice(&[tag::PACKET, 0]);
        self.bytes.extend_from_slice(&bcl.to_le_bytes());
        let mut c = [0u8; 12];
        c[..cdb.len()].copy_from_slice(cdb);
        self.bytes.extend_from_slice(&c);
        self
    }
    /// An LBA48-style task file (HOB zero) and command to `unit`.
    pub fn ata(mut self, unit: u8, cmd: u8, lba: u32, count: u8, feature: u8) -> Self {
        self.bytes.push(tag::ATA);
        self.bytes.extend_from_slice(&[0xe0 | (unit << 4), count, lba as u8, (lba >> 8) as u8, (lba >> 16) as u8, 0, 0, 0, 0, feature, cmd]);
        self
    }
    pub fn host(mut self, v: u8) -> Self {
        self.bytes.extend_from_slice(&[tag::HOST, v]);
        self
    }
    pub fn inject(mut self, v: u8) -> Self {
        self.bytes.extend_from_slice(&[tag::INJECT, v]);
        self
    }
}

/// Hand-made seeds: (name, input).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    // cfg: layout 0 (disk master, CD slave), report, 64 KiB disk, 8-sector CD.
    let e = || Encoder::new(0);
    let sector: Vec<u8> = (0..512u32).map(|i| i as u8).collect();
    vec![
        ("identify", e().devctl(2).ata(0, 0xec, 0, 0, 0).ins(512).read(7).bytes),
        ("write-read", e().ata(0, 0x30, 3, 1, 0).outs(&sector).read(7).ata(0, 0x20, 3, 1, 0).ins(512).read(7).bytes),
        ("multiple", e().ata(0, 0xc6, 0, 4, 0).ata(0, 0xc5, 0, 6, 0).outs(&[7; 1024]).outs(&[7; 1024]).outs(&[9; 1024]).ata(0, 0xc4, 0, 6, 0).ins(4096).ins(2048).bytes),
        ("srst", e().devctl(6).devctl(2).reg(6, 0xb0).read(4).read(5).read(1).reg(6, 0xa0).read(4).bytes),
        ("atapi-inquiry", e().reg(6, 0xb0).packet(36, &[0x12, 0, 0, 0, 36]).ins(36).packet(18, &[0x03, 0, 0, 0, 18]).ins(18).bytes),
        ("atapi-read-bcl", e().reg(6, 0xb0).packet(2048, &[0x28, 0, 0, 0, 0, 1, 0, 0, 3]).ins(2048).ins(2048).ins(2048).read(7).bytes),
        (
            "atapi-media-change",
            e().reg(6, 0xb0).host(0).host(1).packet(0, &[0]).packet(0, &[0]).packet(8, &[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8]).ins(8).packet(18, &[3, 0, 0, 0, 18]).ins(18).bytes,
        ),
        (
            "atapi-lock-eject",
            e().reg(6, 0xb0).packet(0, &[0x1e, 0, 0, 0, 1]).packet(0, &[0x1b, 0, 0, 0, 2]).host(2).packet(8, &[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8]).ins(8).packet(0, &[0x1e]).packet(0, &[0x1b, 0, 0, 0, 2]).bytes,
        ),
        (
            "atapi-toc-config-mode",
            e().reg(6, 0xb0)
                .packet(0xfffe, &[0x43, 2, 0, 0, 0, 0, 0, 0, 0xff])
                .ins(20)
                .packet(0xfffe, &[0x46, 0, 0, 0, 0, 0, 0, 0, 255])
                .ins(40)
                .packet(0xfffe, &[0x5a, 0, 0x3f, 0, 0, 0, 0, 0, 255])
                .ins(54)
                .bytes,
        ),
        // werror=stop (cfg bits 2-3 = 1): a failed write held, then resumed.
        ("werror-stop", Encoder::new(4).inject(0x81).ata(0, 0x30, 2, 1, 0).outs(&sector).host(4).read(7).bytes),
        ("cd-only-empty", Encoder::new(0x81).packet(0, &[0]).reg(6, 0xb0).read(7).read(1).packet(8, &[0x25]).bytes),
    ]
}
