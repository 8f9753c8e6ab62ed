//! IDE (parallel ATA, PIO only): one channel with a master and a slave,
//! each absent, an ATA disk or an ATAPI CD-ROM over a `block::BlockBackend`.
//! QEMU's hw/ide/core.c and atapi.c are the reference for behaviour; the
//! design and the places where we deviate are in docs/ide.md.
//!
//! - `mod.rs` (this file): the channel: task-file registers with the LBA48
//!   HOB copies, device select, device control (nIEN, SRST, HOB), the IRQ
//!   line, the data port state machine and the bus devices for the command
//!   block (base+0..7) and the control port (base+0x206).
//! - `ata.rs`: the ATA disk's commands and PIO through the block layer.
//! - `atapi.rs`: the PACKET protocol, the packet commands, sense data, and
//!   the tray, lock and media-change state with the `BlockDevOps` of the CD.
//! - `identify.rs`: IDENTIFY DEVICE and IDENTIFY PACKET DEVICE data.
//!
//! # Locking
//!
//! Port I/O runs on a vCPU thread with the channel's `Mutex` held (the bus
//! locks the device for the whole access). Disk I/O for PIO is synchronous
//! on that thread: `BlockBackend::execute` runs the request, and the block
//! layer calls the device's `BlockDevOps` meanwhile (`is_tray_open` on
//! every request through `is_available`), and from other threads too
//! (`change_media`, `eject_request` from the control socket, drained
//! sections). None of those callbacks takes the channel's lock: the tray,
//! lock and media-change state (`atapi::MediaState`) is atomics in an
//! `Arc` shared by the drive and its `BlockDevOps` object, and the IRQ line
//! (`Irq`) is shared the same way, with nIEN mirrored in an atomic and the
//! line level behind a leaf mutex that is never held while anything else
//! is taken. So a callback can run while the vCPU holds the channel, and a
//! vCPU waiting in `execute` for a drained section to end cannot block the
//! thread that ends it.

pub mod ata;
pub mod atapi;
pub mod identify;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use block::BlockBackend;

use crate::bus::BusDevice;
use atapi::{MediaState, Packet};

/// Status register bits.
pub const BSY: u8 = 0x80;
pub const DRDY: u8 = 0x40;
pub const DF: u8 = 0x20;
pub const DSC: u8 = 0x10;
pub const DRQ: u8 = 0x08;
pub const ERR: u8 = 0x01;
/// Error register: command aborted.
pub const ABRT: u8 = 0x04;
/// Device control register bits.
pub const CTL_NIEN: u8 = 0x02;
pub const CTL_SRST: u8 = 0x04;
pub const CTL_HOB: u8 = 0x80;

/// The I/O buffer of each device: a DRQ block must fit (ATAPI blocks are
/// at most 65534 bytes, which may straddle 34 CD sectors; ATA blocks at
/// most `MAX_MULT_SECTORS` sectors). Allocated once, never sized by the
/// guest.
pub const BUF_LEN: usize = 128 * 1024;
/// Largest READ/WRITE MULTIPLE block, in sectors (QEMU's MAX_MULT_SECTORS).
pub const MAX_MULT_SECTORS: u32 = 16;

/// The command block registers as offsets from the base (0x1f0/0x170).
pub const REG_DATA: u64 = 0;
pub const REG_ERROR: u64 = 1;
pub const REG_NSECTOR: u64 = 2;
pub const REG_SECTOR: u64 = 3;
pub const REG_LCYL: u64 = 4;
pub const REG_HCYL: u64 = 5;
pub const REG_SELECT: u64 = 6;
pub const REG_STATUS: u64 = 7;

/// What sits on a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    /// An ATA disk (`media=disk`).
    Disk,
    /// An ATAPI CD-ROM (`media=cdrom`).
    Cdrom,
}

/// One device of a channel.
pub struct DriveConfig {
    pub backend: Arc<BlockBackend>,
    pub media: Media,
    /// IDENTIFY serial number (at most 20 characters are used).
    pub serial: String,
}

/// The channel's interrupt line, shared with the CD's `BlockDevOps`
/// (which raise it on a media change) without the channel's lock.
pub(crate) struct Irq {
    line: Box<dyn Fn(bool) + Send + Sync>,
    level: Mutex<bool>,
    nien: AtomicBool,
}

impl Irq {
    /// An event: raises the line unless nIEN masks it (QEMU's
    /// ide_bus_set_irq).
    pub(crate) fn raise(&self) {
        if !self.nien.load(Ordering::SeqCst) {
            self.set(true);
        }
    }

    pub(crate) fn lower(&self) {
        self.set(false);
    }

    fn set(&self, level: bool) {
        let mut l = self.level.lock().unwrap_or_else(|e| e.into_inner());
        if *l != level {
            *l = level;
            (self.line)(level);
        }
    }

    fn level(&self) -> bool {
        *self.level.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Absent,
    Ata,
    Atapi,
}

/// What runs when the current DRQ block has been moved (QEMU's
/// end_transfer_func).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// End of the command's data: clear DRQ.
    Stop,
    /// The next block of a PIO read (or its end).
    AtaRead,
    /// Write the block just received, then the next one.
    AtaWrite,
    /// The 12 CDB bytes have arrived: run the packet command.
    PacketCdb,
    /// The next DRQ block of an ATAPI reply (or its completion).
    AtapiReply,
}

/// A command held by werror/rerror=stop, re-run by `IdeChannel::resume`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    AtaRead,
    AtaWrite,
    Flush,
    AtapiRead,
}

/// One device's state (QEMU's IDEState).
pub(crate) struct Drive {
    pub(crate) kind: Kind,
    pub(crate) backend: Option<Arc<BlockBackend>>,
    pub(crate) serial: String,
    pub(crate) feature: u8,
    pub(crate) error: u8,
    pub(crate) nsector: u8,
    pub(crate) sector: u8,
    pub(crate) lcyl: u8,
    pub(crate) hcyl: u8,
    pub(crate) select: u8,
    pub(crate) status: u8,
    pub(crate) hob_feature: u8,
    pub(crate) hob_nsector: u8,
    pub(crate) hob_sector: u8,
    pub(crate) hob_lcyl: u8,
    pub(crate) hob_hcyl: u8,
    pub(crate) buf: Box<[u8]>,
    pub(crate) ptr: usize,
    pub(crate) end: usize,
    /// The current transfer goes from the host to the device.
    pub(crate) out: bool,
    pub(crate) next: Next,
    // ATA
    pub(crate) lba48: bool,
    /// Sectors of the current command not yet transferred.
    pub(crate) nsector_left: u32,
    /// The DRQ block size of the current command, in sectors.
    pub(crate) req_nb_sectors: u32,
    pub(crate) mult_sectors: u32,
    /// Logical CHS geometry (INITIALIZE DEVICE PARAMETERS may change it).
    pub(crate) heads: u32,
    pub(crate) spt: u32,
    pub(crate) pending: Option<Retry>,
    // ATAPI
    pub(crate) sense_key: u8,
    pub(crate) asc: u8,
    pub(crate) ascq: u8,
    pub(crate) pkt: Packet,
    pub(crate) media: Arc<MediaState>,
}

impl Drive {
    fn new(kind: Kind, backend: Option<Arc<BlockBackend>>, serial: String) -> Drive {
        let mut d = Drive {
            kind,
            backend,
            serial,
            feature: 0,
            error: 0,
            nsector: 0,
            sector: 0,
            lcyl: 0,
            hcyl: 0,
            select: 0xa0,
            status: 0,
            hob_feature: 0,
            hob_nsector: 0,
            hob_sector: 0,
            hob_lcyl: 0,
            hob_hcyl: 0,
            buf: vec![0u8; BUF_LEN].into_boxed_slice(),
            ptr: 0,
            end: 0,
            out: false,
            next: Next::Stop,
            lba48: false,
            nsector_left: 0,
            req_nb_sectors: 1,
            mult_sectors: MAX_MULT_SECTORS,
            heads: 16,
            spt: 63,
            pending: None,
            sense_key: 0,
            asc: 0,
            ascq: 0,
            pkt: Packet::default(),
            media: Arc::new(MediaState::default()),
        };
        d.reset();
        d
    }

    /// QEMU's ide_reset, except that the tray and lock survive (see
    /// docs/ide.md): registers, multiple count, transfer, sense, signature.
    /// Forgets a command a stop policy held (the guest reset the device,
    /// or issued another command), saying so: QMP `cont` will not retry it.
    pub(crate) fn drop_held(&mut self, why: &str) {
        if self.pending.take().is_some() {
            let name = self.backend.as_ref().map_or("?", |b| b.name());
            eprintln!("vmm: drive '{name}': 1 request held by a stop policy was dropped by {why}");
        }
    }

    pub(crate) fn reset(&mut self) {
        self.feature = 0;
        self.error = 0;
        self.nsector = 0;
        self.sector = 0;
        self.lcyl = 0;
        self.hcyl = 0;
        self.hob_feature = 0;
        self.hob_nsector = 0;
        self.hob_sector = 0;
        self.hob_lcyl = 0;
        self.hob_hcyl = 0;
        self.select = 0xa0;
        self.status = DRDY | DSC;
        self.lba48 = false;
        self.mult_sectors = MAX_MULT_SECTORS;
        self.nsector_left = 0;
        self.req_nb_sectors = 1;
        self.drop_held("a device reset");
        self.sense_key = 0;
        self.asc = 0;
        self.ascq = 0;
        self.pkt = Packet::default();
        self.media.changed.store(0, Ordering::SeqCst);
        self.transfer_stop();
        self.buf[..4].fill(0xff);
        self.set_signature();
    }

    /// QEMU's ide_set_signature.
    pub(crate) fn set_signature(&mut self) {
        self.select &= 0xf0;
        self.nsector = 1;
        self.sector = 1;
        let (l, h) = match self.kind {
            Kind::Atapi => (0x14, 0xeb),
            Kind::Ata => (0, 0),
            Kind::Absent => (0xff, 0xff),
        };
        self.lcyl = l;
        self.hcyl = h;
    }

    /// Starts a DRQ block of `buf[start..start + len]`.
    pub(crate) fn transfer_start(&mut self, start: usize, len: usize, out: bool, next: Next) {
        self.ptr = start.min(BUF_LEN);
        self.end = start.saturating_add(len).min(BUF_LEN);
        self.out = out;
        self.next = next;
        if self.status & ERR == 0 {
            self.status |= DRQ;
        }
    }

    pub(crate) fn transfer_stop(&mut self) {
        self.ptr = 0;
        self.end = 0;
        self.out = false;
        self.next = Next::Stop;
        self.status &= !DRQ;
    }

    /// QEMU's ide_abort_command: ATA-level abort (no IRQ here).
    pub(crate) fn abort(&mut self) {
        self.transfer_stop();
        self.status = DRDY | ERR;
        self.error = ABRT;
    }

    /// EXECUTE DEVICE DIAGNOSTIC's result on this device (also the end of
    /// a software reset): signature, error 0x01, status.
    fn diagnostic(&mut self, irq: &Irq) {
        self.select = 0xa0;
        self.set_signature();
        self.error = 0x01;
        if self.kind == Kind::Atapi {
            // ATAPI devices clear the status (DRDY included) after reset.
            self.status = 0;
        } else {
            self.status = DRDY | DSC;
            if self.kind == Kind::Ata {
                irq.raise();
            }
        }
    }

    fn busy(&self) -> bool {
        self.status & (BSY | DRQ) != 0
    }

    /// The block ended: run the continuation.
    fn end_transfer(&mut self, irq: &Irq) {
        self.status &= !DRQ;
        let next = self.next;
        self.next = Next::Stop;
        match next {
            Next::Stop => self.transfer_stop(),
            Next::AtaRead => self.sector_read(irq),
            Next::AtaWrite => self.sector_write(irq),
            Next::PacketCdb => self.packet_cdb(irq),
            Next::AtapiReply => self.atapi_reply_end(irq),
        }
    }

    /// Data port reads of `size`-byte items into `out`. Without DRQ, or
    /// during a write, reads give zeros and nothing advances. An item that
    /// runs past the end of a block is completed with zeros (QEMU gives 0
    /// and does not advance; we pad so that odd-length replies finish).
    fn data_read(&mut self, irq: &Irq, size: usize, out: &mut [u8]) {
        let size = size.max(1);
        let mut pos = 0;
        while pos < out.len() {
            if self.status & DRQ == 0 || self.out || self.ptr >= self.end {
                out[pos..].fill(0);
                return;
            }
            let avail = self.end - self.ptr;
            let want = out.len() - pos;
            if avail >= want {
                out[pos..].copy_from_slice(&self.buf[self.ptr..self.ptr + want]);
                self.ptr += want;
                pos += want;
            } else {
                out[pos..pos + avail].copy_from_slice(&self.buf[self.ptr..self.end]);
                let padded = (pos + avail).div_ceil(size).saturating_mul(size).min(out.len());
                out[pos + avail..padded].fill(0);
                self.ptr = self.end;
                pos = padded;
            }
            if self.ptr >= self.end {
                self.end_transfer(irq);
            }
        }
    }

    /// Data port writes; see `data_read`. Bytes past the end of a block
    /// within the last item are dropped.
    fn data_write(&mut self, irq: &Irq, size: usize, data: &[u8]) {
        let size = size.max(1);
        let mut pos = 0;
        while pos < data.len() {
            if self.status & DRQ == 0 || !self.out || self.ptr >= self.end {
                return;
            }
            let avail = self.end - self.ptr;
            let want = data.len() - pos;
            if avail >= want {
                self.buf[self.ptr..self.ptr + want].copy_from_slice(&data[pos..]);
                self.ptr += want;
                pos += want;
            } else {
                self.buf[self.ptr..self.end].copy_from_slice(&data[pos..pos + avail]);
                self.ptr = self.end;
                pos = (pos + avail).div_ceil(size).saturating_mul(size).min(data.len());
            }
            if self.ptr >= self.end {
                self.end_transfer(irq);
            }
        }
    }

    /// Total bytes of the medium (0 when none is available).
    pub(crate) fn medium_bytes(&self) -> u64 {
        self.backend.as_ref().and_then(|b| b.getlength().ok()).unwrap_or(0)
    }
}

/// One IDE channel (QEMU's IDEBus): two devices, the selected unit, the
/// device control register and the IRQ line. A `BusDevice` for the command
/// block (8 ports at base); `IdeChannel::control` gives the one for the
/// control port (base + 0x206).
pub struct IdeChannel {
    drives: [Drive; 2],
    unit: usize,
    devctl: u8,
    irq: Arc<Irq>,
}

impl IdeChannel {
    /// A channel with `master` and `slave` (None: absent). `irq` sets the
    /// channel's interrupt line level (the VMM drives KVM's line with it).
    /// The devices attach their `BlockDevOps` to the backends; CD drives
    /// are made read-only. A slave without a master is refused, as libata
    /// would not find it (QEMU's phantom master answers for it).
    pub fn new(irq: Box<dyn Fn(bool) + Send + Sync>, master: Option<DriveConfig>, slave: Option<DriveConfig>) -> crate::Result<IdeChannel> {
        if master.is_none() {
            if let Some(s) = &slave {
                return Err(crate::Error::Block(s.backend.name().to_string(), "an IDE slave needs a master on its channel".into()));
            }
        }
        let irq = Arc::new(Irq { line: irq, level: Mutex::new(false), nien: AtomicBool::new(false) });
        let make = |c: Option<DriveConfig>| -> Drive {
            match c {
                None => Drive::new(Kind::Absent, None, String::new()),
                Some(c) => {
                    let kind = match c.media {
                        Media::Disk => Kind::Ata,
                        Media::Cdrom => Kind::Atapi,
                    };
                    let d = Drive::new(kind, Some(c.backend.clone()), c.serial);
                    match kind {
                        Kind::Atapi => {
                            c.backend.set_read_only(true);
                            c.backend.attach_dev(Arc::new(atapi::CdOps { media: d.media.clone(), irq: irq.clone() }));
                        }
                        _ => c.backend.attach_dev(Arc::new(ata::DiskOps)),
                    }
                    d
                }
            }
        };
        let drives = [make(master), make(slave)];
        Ok(IdeChannel { drives, unit: 0, devctl: 0, irq })
    }

    /// The bus device for the control port (alt status / device control).
    pub fn control(channel: Arc<Mutex<IdeChannel>>) -> Arc<Mutex<IdeControl>> {
        Arc::new(Mutex::new(IdeControl(channel)))
    }

    /// The VM runs again (QMP `cont`): re-runs the commands a
    /// werror/rerror=stop policy held (QEMU's ide_restart_bh).
    pub fn resume(&mut self) {
        let irq = self.irq.clone();
        for d in &mut self.drives {
            if let Some(r) = d.pending.take() {
                match r {
                    Retry::AtaRead => d.sector_read(&irq),
                    Retry::AtaWrite => d.sector_write(&irq),
                    Retry::Flush => d.flush_cache(&irq),
                    Retry::AtapiRead => d.atapi_reply_end(&irq),
                }
            }
        }
    }

    /// A command is held by a stop policy, waiting for `resume`.
    pub fn has_held_command(&self) -> bool {
        self.drives.iter().any(|d| d.pending.is_some())
    }

    /// The selected device: 0 master, 1 slave.
    pub fn selected_unit(&self) -> usize {
        self.unit
    }

    /// The line's current level.
    pub fn irq_level(&self) -> bool {
        self.irq.level()
    }

    /// System reset (QEMU's ide_bus_reset): both devices reset, unit 0,
    /// device control 0, the line low. Unlike SRST this also unlocks the
    /// tray (a power cycle).
    pub fn reset(&mut self) {
        self.unit = 0;
        self.devctl = 0;
        self.irq.nien.store(false, Ordering::SeqCst);
        for d in &mut self.drives {
            d.reset();
            d.media.locked.store(false, Ordering::SeqCst);
        }
        self.irq.lower();
    }

    fn no_device(&self) -> bool {
        self.drives.iter().all(|d| d.kind == Kind::Absent)
    }

    /// The selected device reads as absent (status and error 0).
    fn sel_absent(&self) -> bool {
        self.no_device() || self.drives[self.unit].kind == Kind::Absent
    }

    fn clear_hob(&mut self) {
        self.devctl &= !CTL_HOB;
    }

    /// A byte register read at `reg` (1..=7).
    pub fn read_reg(&mut self, reg: u64) -> u8 {
        let hob = self.devctl & CTL_HOB != 0;
        let none = self.no_device();
        let absent = self.sel_absent();
        let d = &self.drives[self.unit];
        match reg {
            REG_DATA => 0xff,
            REG_ERROR if absent => 0,
            REG_ERROR => {
                if hob {
                    d.hob_feature
                } else {
                    d.error
                }
            }
            2..=6 if none => 0,
            REG_NSECTOR => {
                if hob {
                    d.hob_nsector
                } else {
                    d.nsector
                }
            }
            REG_SECTOR => {
                if hob {
                    d.hob_sector
                } else {
                    d.sector
                }
            }
            REG_LCYL => {
                if hob {
                    d.hob_lcyl
                } else {
                    d.lcyl
                }
            }
            REG_HCYL => {
                if hob {
                    d.hob_hcyl
                } else {
                    d.hcyl
                }
            }
            REG_SELECT => d.select,
            REG_STATUS => {
                let s = if absent { 0 } else { d.status };
                self.irq.lower();
                s
            }
            _ => 0xff,
        }
    }

    /// A byte register write at `reg` (1..=7).
    pub fn write_reg(&mut self, reg: u64, val: u8) {
        if !(1..=7).contains(&reg) {
            return;
        }
        self.clear_hob();
        if reg != REG_STATUS && self.drives[self.unit].busy() {
            return;
        }
        match reg {
            REG_ERROR => {
                for d in &mut self.drives {
                    d.hob_feature = d.feature;
                    d.feature = val;
                }
            }
            REG_NSECTOR => {
                for d in &mut self.drives {
                    d.hob_nsector = d.nsector;
                    d.nsector = val;
                }
            }
            REG_SECTOR => {
                for d in &mut self.drives {
                    d.hob_sector = d.sector;
                    d.sector = val;
                }
            }
            REG_LCYL => {
                for d in &mut self.drives {
                    d.hob_lcyl = d.lcyl;
                    d.lcyl = val;
                }
            }
            REG_HCYL => {
                for d in &mut self.drives {
                    d.hob_hcyl = d.hcyl;
                    d.hcyl = val;
                }
            }
            REG_SELECT => {
                for d in &mut self.drives {
                    d.select = val | 0xa0;
                }
                self.unit = usize::from((val >> 4) & 1);
            }
            _ => {
                self.irq.lower();
                self.exec_cmd(val);
            }
        }
    }

    /// QEMU's ide_exec_cmd.
    fn exec_cmd(&mut self, cmd: u8) {
        let irq = self.irq.clone();
        let d = &mut self.drives[self.unit];
        if d.kind == Kind::Absent {
            return;
        }
        if d.busy() && !(cmd == ata::WIN_DEVICE_RESET && d.kind == Kind::Atapi) {
            return;
        }
        // A new command drops a held one (only a stopped VM holds one,
        // and it does not run the guest).
        d.drop_held("a new command");
        if cmd == ata::WIN_DIAGNOSE {
            d.diagnostic(&irq);
            return;
        }
        match d.kind {
            Kind::Ata => d.ata_exec(&irq, cmd),
            Kind::Atapi => d.atapi_exec(&irq, cmd),
            Kind::Absent => {}
        }
    }

    /// Alternate status (does not touch the line).
    pub fn read_altstatus(&self) -> u8 {
        if self.sel_absent() {
            0
        } else {
            self.drives[self.unit].status
        }
    }

    /// Device control: nIEN, SRST on a 0→1 edge (completed at once), HOB.
    pub fn write_devctl(&mut self, val: u8) {
        let old = self.devctl;
        self.devctl = val;
        self.irq.nien.store(val & CTL_NIEN != 0, Ordering::SeqCst);
        if old & CTL_SRST == 0 && val & CTL_SRST != 0 {
            let irq = self.irq.clone();
            for d in &mut self.drives {
                d.reset();
                d.diagnostic(&irq);
            }
        }
    }

    /// Data port reads: `out` holds items of `size` (2 or 4) bytes.
    pub fn read_data(&mut self, size: usize, out: &mut [u8]) {
        let irq = self.irq.clone();
        if self.sel_absent() {
            out.fill(0);
            return;
        }
        self.drives[self.unit].data_read(&irq, size, out);
    }

    /// Data port writes of items of `size` bytes.
    pub fn write_data(&mut self, size: usize, data: &[u8]) {
        let irq = self.irq.clone();
        if self.sel_absent() {
            return;
        }
        self.drives[self.unit].data_write(&irq, size, data);
    }
}

impl Drop for IdeChannel {
    fn drop(&mut self) {
        for d in &self.drives {
            if let Some(b) = &d.backend {
                b.detach_dev();
            }
        }
    }
}

impl BusDevice for IdeChannel {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == REG_DATA && matches!(data.len(), 2 | 4) {
            let n = data.len();
            self.read_data(n, data);
            return;
        }
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.read_reg(offset.saturating_add(i as u64));
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == REG_DATA {
            if matches!(data.len(), 2 | 4) {
                self.write_data(data.len(), data);
            }
            return;
        }
        for (i, b) in data.iter().enumerate() {
            self.write_reg(offset.saturating_add(i as u64), *b);
        }
    }

    fn read_string(&mut self, offset: u64, size: usize, data: &mut [u8]) {
        if offset == REG_DATA && matches!(size, 2 | 4) {
            self.read_data(size, data);
        } else {
            for item in data.chunks_mut(size.max(1)) {
                self.read(offset, item);
            }
        }
    }

    fn write_string(&mut self, offset: u64, size: usize, data: &[u8]) {
        if offset == REG_DATA && matches!(size, 2 | 4) {
            self.write_data(size, data);
        } else {
            for item in data.chunks(size.max(1)) {
                self.write(offset, item);
            }
        }
    }
}

/// The control port (0x3f6/0x376) of a channel: alternate status and
/// device control. 0x3f7 is the floppy controller's and is not claimed.
pub struct IdeControl(Arc<Mutex<IdeChannel>>);

impl BusDevice for IdeControl {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = if offset == 0 { crate::bus::lock(&self.0).read_altstatus() } else { 0xff };
        data.fill(0xff);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 {
            if let Some(&v) = data.first() {
                crate::bus::lock(&self.0).write_devctl(v);
            }
        }
    }
}
