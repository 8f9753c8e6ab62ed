//! The ATA disk's commands (QEMU's ide_cmd_table for IDE_HD) and PIO
//! through the block layer's blocking path: each DRQ block is one
//! `BlockBackend::execute` over the device's own buffer, decided by
//! `BlockBackend::complete_request` (error policy and accounting).
//!
//! werror/rerror=stop: `Outcome::Stop` keeps the command (registers and
//! buffer untouched, DRQ clear, no completion, no IRQ) and records what to
//! re-run; `IdeChannel::resume` re-runs it (QEMU's ide_handle_rw_error and
//! ide_restart_bh). Out-of-range requests abort without touching storage
//! and count as invalid, whatever the policy.

use std::time::Instant;

use block::{BlockDevOps, IoVec, Op, Outcome, Request};

use super::{identify, Drive, Irq, Next, Retry, ABRT, DRDY, DSC, ERR, MAX_MULT_SECTORS};

pub const WIN_NOP: u8 = 0x00;
pub const WIN_DEVICE_RESET: u8 = 0x08;
pub const WIN_READ: u8 = 0x20;
pub const WIN_READ_EXT: u8 = 0x24;
pub const WIN_READ_NATIVE_MAX_EXT: u8 = 0x27;
pub const WIN_MULTREAD_EXT: u8 = 0x29;
pub const WIN_WRITE: u8 = 0x30;
pub const WIN_WRITE_EXT: u8 = 0x34;
pub const WIN_MULTWRITE_EXT: u8 = 0x39;
pub const WIN_VERIFY: u8 = 0x40;
pub const WIN_VERIFY_EXT: u8 = 0x42;
pub const WIN_SEEK: u8 = 0x70;
pub const WIN_DIAGNOSE: u8 = 0x90;
pub const WIN_SPECIFY: u8 = 0x91;
pub const WIN_PACKETCMD: u8 = 0xa0;
pub const WIN_PIDENTIFY: u8 = 0xa1;
pub const WIN_MULTREAD: u8 = 0xc4;
pub const WIN_MULTWRITE: u8 = 0xc5;
pub const WIN_SETMULT: u8 = 0xc6;
pub const WIN_CHECKPOWERMODE1: u8 = 0xe5;
pub const WIN_CHECKPOWERMODE2: u8 = 0x98;
pub const WIN_FLUSH_CACHE: u8 = 0xe7;
pub const WIN_IDENTIFY: u8 = 0xec;
pub const WIN_FLUSH_CACHE_EXT: u8 = 0xea;
pub const WIN_SETFEATURES: u8 = 0xef;
pub const WIN_READ_NATIVE_MAX: u8 = 0xf8;

/// The disk's `BlockDevOps`: a fixed disk. Its size is read from the
/// backend on every command, so `resize` needs nothing; PIO is
/// synchronous, so there is nothing to hold back in a drained section.
pub(crate) struct DiskOps;

impl BlockDevOps for DiskOps {}

impl Drive {
    fn sectors(&self) -> u64 {
        self.medium_bytes() / 512
    }

    /// Completion of a non-data command: DRDY (+DSC) and the IRQ.
    fn complete(&mut self, irq: &Irq, dsc: bool) {
        self.status = DRDY | if dsc { DSC } else { 0 };
        irq.raise();
    }

    fn abort_irq(&mut self, irq: &Irq) {
        self.abort();
        irq.raise();
    }

    /// QEMU's ide_get_sector: LBA48, LBA28 or CHS (an impossible CHS
    /// address gives u64::MAX, which fails the range check).
    pub(crate) fn get_sector(&self) -> u64 {
        let (s, l, h) = (u64::from(self.sector), u64::from(self.lcyl), u64::from(self.hcyl));
        if self.select & 0x40 != 0 {
            if self.lba48 {
                (u64::from(self.hob_hcyl) << 40)
                    | (u64::from(self.hob_lcyl) << 32)
                    | (u64::from(self.hob_sector) << 24)
                    | (h << 16)
                    | (l << 8)
                    | s
            } else {
                (u64::from(self.select & 0x0f) << 24) | (h << 16) | (l << 8) | s
            }
        } else {
            let cyl = (h << 8) | l;
            let head = u64::from(self.select & 0x0f);
            if s == 0 {
                return u64::MAX;
            }
            (cyl * u64::from(self.heads) + head) * u64::from(self.spt) + s - 1
        }
    }

    /// QEMU's ide_set_sector.
    pub(crate) fn set_sector(&mut self, n: u64) {
        if self.select & 0x40 != 0 {
            if self.lba48 {
                self.sector = n as u8;
                self.lcyl = (n >> 8) as u8;
                self.hcyl = (n >> 16) as u8;
                self.hob_sector = (n >> 24) as u8;
                self.hob_lcyl = (n >> 32) as u8;
                self.hob_hcyl = (n >> 40) as u8;
            } else {
                self.select = (self.select & 0xf0) | ((n >> 24) as u8 & 0x0f);
                self.hcyl = (n >> 16) as u8;
                self.lcyl = (n >> 8) as u8;
                self.sector = n as u8;
            }
        } else {
            let per_cyl = u64::from(self.heads.max(1)) * u64::from(self.spt.max(1));
            let cyl = n / per_cyl;
            let r = n % per_cyl;
            self.hcyl = (cyl >> 8) as u8;
            self.lcyl = cyl as u8;
            self.select = (self.select & 0xf0) | ((r / u64::from(self.spt.max(1))) as u8 & 0x0f);
            self.sector = (r % u64::from(self.spt.max(1)) + 1) as u8;
        }
    }

    /// The sector count of a 28-bit (0 = 256) or 48-bit (0 = 65536) command.
    fn count(&self) -> u32 {
        if self.lba48 {
            match (u32::from(self.hob_nsector) << 8) | u32::from(self.nsector) {
                0 => 65536,
                n => n,
            }
        } else {
            match self.nsector {
                0 => 256,
                n => u32::from(n),
            }
        }
    }

    /// QEMU's ide_sect_range_ok.
    fn range_ok(&self, lba: u64, n: u64) -> bool {
        let total = self.sectors();
        lba <= total && n <= total - lba
    }

    /// Starts a PIO read or write command: range check, then the first
    /// block (reads) or DRQ for the first block (writes).
    fn start_rw(&mut self, irq: &Irq, write: bool, lba48: bool, multiple: bool) {
        self.lba48 = lba48;
        if multiple && self.mult_sectors == 0 {
            return self.abort_irq(irq);
        }
        let n = self.count();
        let lba = self.get_sector();
        let op = if write { Op::Write } else { Op::Read };
        if !self.range_ok(lba, u64::from(n)) {
            if let Some(b) = &self.backend {
                b.stats().invalid(op);
            }
            return self.abort_irq(irq);
        }
        self.nsector_left = n;
        self.req_nb_sectors = if multiple { self.mult_sectors } else { 1 };
        self.error = 0;
        if write {
            self.status = DRDY | DSC;
            let first = n.min(self.req_nb_sectors) as usize * 512;
            // No IRQ: the host polls DRQ and sends the first block.
            self.transfer_start(0, first, true, Next::AtaWrite);
        } else {
            self.sector_read(irq);
        }
    }

    fn io_bytes(&self) -> usize {
        (self.nsector_left.min(self.req_nb_sectors).min(MAX_MULT_SECTORS) as usize) * 512
    }

    /// Runs one request over `buf[..len]` and decides its outcome.
    pub(crate) fn block_io(&mut self, op: Op, offset: u64, len: usize) -> Outcome {
        let Some(backend) = self.backend.clone() else { return Outcome::Error(block::Errno::ENOMEDIUM) };
        let len = len.min(self.buf.len());
        let start = Instant::now();
        let p = self.buf.as_mut_ptr();
        let iov = || {
            // SAFETY: the buffer belongs to this drive, which is borrowed
            // mutably for the whole (synchronous) request; nobody else
            // holds a reference to it meanwhile, and `len` is within it.
            vec![unsafe { IoVec::new(p, len) }]
        };
        let req = match op {
            Op::Read => Request::read(offset, iov(), 0),
            Op::Write => Request::write(offset, iov(), 0),
            _ => Request::flush(0),
        };
        let r = backend.execute(&req);
        drop(req);
        backend.complete_request(op, len as u64, start, r)
    }

    /// QEMU's ide_sector_read: the next block of a PIO read, or the end.
    pub(crate) fn sector_read(&mut self, irq: &Irq) {
        self.status = DRDY | DSC;
        self.error = 0;
        if self.nsector_left == 0 {
            // The last block was read: DRQ clears, no IRQ.
            self.transfer_stop();
            return;
        }
        let len = self.io_bytes();
        let n = (len / 512) as u64;
        let lba = self.get_sector();
        match self.block_io(Op::Read, lba.saturating_mul(512), len) {
            Outcome::Stop => {
                self.pending = Some(Retry::AtaRead);
                return;
            }
            Outcome::Error(_) => return self.abort_irq(irq),
            Outcome::Ok => {}
        }
        self.nsector_left -= n as u32;
        self.set_sector(lba.saturating_add(n));
        self.transfer_start(0, len, false, Next::AtaRead);
        irq.raise();
    }

    /// QEMU's ide_sector_write: a block arrived; write it, then ask for
    /// the next one or complete.
    pub(crate) fn sector_write(&mut self, irq: &Irq) {
        self.status = DRDY | DSC;
        let len = self.io_bytes();
        let n = (len / 512) as u64;
        let lba = self.get_sector();
        match self.block_io(Op::Write, lba.saturating_mul(512), len) {
            Outcome::Stop => {
                self.pending = Some(Retry::AtaWrite);
                return;
            }
            Outcome::Error(_) => return self.abort_irq(irq),
            Outcome::Ok => {}
        }
        self.nsector_left = self.nsector_left.saturating_sub(n as u32);
        self.set_sector(lba.saturating_add(n));
        if self.nsector_left == 0 {
            self.transfer_stop();
        } else {
            let next = self.io_bytes();
            self.transfer_start(0, next, true, Next::AtaWrite);
        }
        irq.raise();
    }

    /// FLUSH CACHE (EXT), and the flush after write cache off.
    pub(crate) fn flush_cache(&mut self, irq: &Irq) {
        match self.block_io(Op::Flush, 0, 0) {
            Outcome::Stop => {
                self.status = DRDY | DSC;
                self.pending = Some(Retry::Flush);
            }
            Outcome::Error(_) => self.abort_irq(irq),
            Outcome::Ok => self.complete(irq, true),
        }
    }

    /// IDENTIFY DEVICE: one 512-byte PIO-in block.
    fn identify(&mut self, irq: &Irq) {
        let sectors = self.sectors();
        let wc = self.backend.as_ref().is_some_and(|b| b.write_cache());
        let serial = self.serial.clone();
        identify::ata(&mut self.buf, &serial, sectors, self.mult_sectors, wc);
        self.status = DRDY | DSC;
        self.error = 0;
        self.transfer_start(0, 512, false, Next::Stop);
        irq.raise();
    }

    fn set_features(&mut self, irq: &Irq) {
        let Some(backend) = self.backend.clone() else { return self.abort_irq(irq) };
        match self.feature {
            0x02 => {
                backend.set_write_cache(true);
                self.complete(irq, true);
            }
            0x82 => {
                backend.set_write_cache(false);
                self.flush_cache(irq);
            }
            0x03 => {
                // Transfer mode from count >> 3: PIO (0, 1) with mode <= 4
                // is accepted; DMA modes are refused (PIO-only device).
                let kind = self.nsector >> 3;
                let mode = self.nsector & 7;
                if kind <= 1 && mode <= 4 {
                    self.complete(irq, true);
                } else {
                    self.abort_irq(irq);
                }
            }
            0x05 | 0x85 | 0x42 | 0xc2 | 0x55 | 0xaa | 0x66 | 0xcc | 0x67 | 0x69 | 0x96 | 0x9a => self.complete(irq, true),
            _ => self.abort_irq(irq),
        }
    }

    fn read_native_max(&mut self, irq: &Irq, lba48: bool) {
        self.lba48 = lba48;
        let total = self.sectors();
        if total == 0 {
            return self.abort_irq(irq);
        }
        let max = if lba48 { total - 1 } else { (total - 1).min(0x0fff_ffff) };
        // The result is an LBA whatever the select register said.
        self.select |= 0x40;
        self.set_sector(max);
        self.complete(irq, true);
    }

    /// An ATA command to the disk.
    pub(crate) fn ata_exec(&mut self, irq: &Irq, cmd: u8) {
        self.error = 0;
        match cmd {
            WIN_IDENTIFY => self.identify(irq),
            WIN_READ => self.start_rw(irq, false, false, false),
            WIN_READ_EXT => self.start_rw(irq, false, true, false),
            WIN_MULTREAD => self.start_rw(irq, false, false, true),
            WIN_MULTREAD_EXT => self.start_rw(irq, false, true, true),
            WIN_WRITE => self.start_rw(irq, true, false, false),
            WIN_WRITE_EXT => self.start_rw(irq, true, true, false),
            WIN_MULTWRITE => self.start_rw(irq, true, false, true),
            WIN_MULTWRITE_EXT => self.start_rw(irq, true, true, true),
            WIN_SETMULT => {
                let n = u32::from(self.nsector);
                if n > MAX_MULT_SECTORS || (n != 0 && !n.is_power_of_two()) {
                    self.abort_irq(irq);
                } else {
                    self.mult_sectors = n;
                    self.complete(irq, true);
                }
            }
            WIN_FLUSH_CACHE | WIN_FLUSH_CACHE_EXT => self.flush_cache(irq),
            WIN_SETFEATURES => self.set_features(irq),
            WIN_VERIFY | WIN_VERIFY_EXT | WIN_SEEK => self.complete(irq, true),
            WIN_CHECKPOWERMODE1 | WIN_CHECKPOWERMODE2 => {
                self.nsector = 0xff;
                self.complete(irq, true);
            }
            // Standby, idle, sleep: nothing to do.
            0xe0..=0xe3 | 0xe6 | 0x94..=0x97 | 0x99 => self.complete(irq, false),
            WIN_SPECIFY => {
                self.spt = u32::from(self.nsector).max(1);
                self.heads = u32::from(self.select & 0x0f) + 1;
                self.complete(irq, true);
            }
            WIN_READ_NATIVE_MAX => self.read_native_max(irq, false),
            WIN_READ_NATIVE_MAX_EXT => self.read_native_max(irq, true),
            // DEVICE RESET, PACKET, IDENTIFY PACKET: ATAPI only; NOP and
            // everything else abort.
            _ => self.abort_irq(irq),
        }
        if self.status & ERR != 0 {
            self.error |= ABRT;
        }
    }
}
