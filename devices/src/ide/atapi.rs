//! The ATAPI CD-ROM: the PACKET protocol, the packet commands (QEMU's
//! atapi.c `atapi_cmd_table`), sense data, the PIO byte-count limit, and
//! the tray, lock and media-change state with the CD's `BlockDevOps`.
//!
//! The tray/lock/event state (`MediaState`) is atomics shared with `CdOps`,
//! so that the block layer's callbacks (`is_tray_open` on every request,
//! `change_media` and `eject_request` from the control socket) never take
//! the channel's lock, which the vCPU doing PIO holds (see `super`).
//!
//! Reads: each DRQ block of a READ(10)/(12)/READ CD is read from the
//! backend when the block starts (all the 2048-byte sectors it touches), so
//! a block needs one request and never stops half-way. The error policy
//! (rerror) applies to these reads through `complete_request`, as issue 10
//! asks ("rerror applies to CD reads"): `Outcome::Stop` holds the command
//! until `IdeChannel::resume`, a reported error becomes sense data
//! (ENOMEDIUM → NOT READY / medium not present, anything else → ILLEGAL
//! REQUEST / LBA out of range, as QEMU's ide_atapi_io_error). QEMU differs
//! here: its ATAPI PIO reads (cd_read_sector_cb) bypass the policy and
//! always report; only its ATAPI DMA path goes through it.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use block::{BlockDevOps, Errno, Op, Outcome};

use super::ata::{WIN_DEVICE_RESET, WIN_FLUSH_CACHE, WIN_IDENTIFY, WIN_PACKETCMD, WIN_PIDENTIFY, WIN_READ, WIN_SETFEATURES};
use super::{identify, Drive, Irq, Next, Retry, ABRT, DRDY, DSC, ERR};

pub const SECTOR: u64 = 2048;
/// Images up to this many bytes are CDs (80 minutes); larger ones report
/// the DVD-ROM profile, as QEMU's.
pub const CD_MAX_BYTES: u64 = 1_440_000 * 512;

/// Sense keys.
pub const NO_SENSE: u8 = 0;
pub const NOT_READY: u8 = 2;
pub const ILLEGAL_REQUEST: u8 = 5;
pub const UNIT_ATTENTION: u8 = 6;
/// Additional sense codes.
pub const ASC_INV_OPCODE: u8 = 0x20;
pub const ASC_LBA_OUT_OF_RANGE: u8 = 0x21;
pub const ASC_INV_FIELD_IN_CDB: u8 = 0x24;
pub const ASC_MEDIUM_MAY_HAVE_CHANGED: u8 = 0x28;
pub const ASC_INCOMPATIBLE_FORMAT: u8 = 0x30;
pub const ASC_SAVING_NOT_SUPPORTED: u8 = 0x39;
pub const ASC_MEDIUM_NOT_PRESENT: u8 = 0x3a;
pub const ASC_DATA_PHASE_ERROR: u8 = 0x4b;
pub const ASC_MEDIA_REMOVAL_PREVENTED: u8 = 0x53;

/// Packet opcodes.
pub const TEST_UNIT_READY: u8 = 0x00;
pub const REQUEST_SENSE: u8 = 0x03;
pub const INQUIRY: u8 = 0x12;
pub const START_STOP_UNIT: u8 = 0x1b;
pub const PREVENT_ALLOW: u8 = 0x1e;
pub const READ_CAPACITY: u8 = 0x25;
pub const READ_10: u8 = 0x28;
pub const SEEK_10: u8 = 0x2b;
pub const READ_TOC: u8 = 0x43;
pub const GET_CONFIGURATION: u8 = 0x46;
pub const GESN: u8 = 0x4a;
pub const READ_DISC_INFO: u8 = 0x51;
pub const MODE_SENSE_10: u8 = 0x5a;
pub const READ_12: u8 = 0xa8;
pub const READ_DVD_STRUCTURE: u8 = 0xad;
pub const SET_CD_SPEED: u8 = 0xbb;
pub const MECHANISM_STATUS: u8 = 0xbd;
pub const READ_CD: u8 = 0xbe;

pub const VENDOR: &[u8; 8] = b"RVMM    ";
pub const PRODUCT: &[u8; 16] = b"RVMM CD-ROM     ";
pub const REVISION: &[u8; 4] = b"1.0 ";

/// Tray, lock and pending events, shared with `CdOps` (atomics: read and
/// changed without the channel's lock).
#[derive(Default)]
pub(crate) struct MediaState {
    pub(crate) tray_open: AtomicBool,
    pub(crate) locked: AtomicBool,
    /// QEMU's cdrom_changed: 1 after a change (next command: not ready),
    /// 2 (next: unit attention), 0.
    pub(crate) changed: AtomicU8,
    /// GESN media events.
    pub(crate) new_media: AtomicBool,
    pub(crate) eject_request: AtomicBool,
    pub(crate) removal: AtomicBool,
}

/// The CD's `BlockDevOps`.
pub(crate) struct CdOps {
    pub(crate) media: Arc<MediaState>,
    pub(crate) irq: Arc<Irq>,
}

impl BlockDevOps for CdOps {
    /// QEMU's ide_cd_change_cb.
    fn change_media(&self, load: bool) {
        let m = &self.media;
        m.tray_open.store(!load, Ordering::SeqCst);
        m.changed.store(1, Ordering::SeqCst);
        m.new_media.store(true, Ordering::SeqCst);
        m.eject_request.store(false, Ordering::SeqCst);
        if !load {
            m.removal.store(true, Ordering::SeqCst);
        }
        self.irq.raise();
    }

    /// QEMU's ide_cd_eject_request_cb: the guest sees an eject request
    /// event; a forced one unlocks (the caller then opens the tray).
    fn eject_request(&self, force: bool) {
        self.media.eject_request.store(true, Ordering::SeqCst);
        if force {
            self.media.locked.store(false, Ordering::SeqCst);
        }
        self.irq.raise();
    }

    fn is_tray_open(&self) -> bool {
        self.media.tray_open.load(Ordering::SeqCst)
    }

    fn is_medium_locked(&self) -> bool {
        self.media.locked.load(Ordering::SeqCst)
    }

    fn removable(&self) -> bool {
        true
    }

    fn has_tray(&self) -> bool {
        true
    }

    // PIO is synchronous on the vCPU thread and `execute` itself waits
    // while a section is open: nothing to hold back.
    fn drained_begin(&self) {}
    fn drained_end(&self) {}
}

/// The data phase of a packet command.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Packet {
    /// Data comes from the medium (else from the reply in the buffer).
    pub(crate) reading: bool,
    pub(crate) lba: u64,
    pub(crate) total: u64,
    pub(crate) sent: u64,
}

const ALLOW_UA: u8 = 1;
const CHECK_READY: u8 = 2;
const NONDATA: u8 = 4;
const CONDDATA: u8 = 8;

/// QEMU's atapi_cmd_table flags; None: not implemented.
fn flags(op: u8) -> Option<u8> {
    Some(match op {
        TEST_UNIT_READY => CHECK_READY | NONDATA,
        REQUEST_SENSE | INQUIRY | GET_CONFIGURATION | GESN => ALLOW_UA,
        START_STOP_UNIT | PREVENT_ALLOW | SET_CD_SPEED => NONDATA,
        SEEK_10 => CHECK_READY | NONDATA,
        READ_CAPACITY | READ_10 | READ_12 | READ_TOC | READ_DISC_INFO | READ_DVD_STRUCTURE => CHECK_READY,
        READ_CD => CHECK_READY | CONDDATA,
        MODE_SENSE_10 | MECHANISM_STATUS => 0,
        _ => return None,
    })
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// MSF of an LBA (75 frames a second, 2 seconds of lead-in).
fn lba_to_msf(lba: u64) -> [u8; 3] {
    let l = lba.saturating_add(150);
    [((l / 75 / 60) & 0xff) as u8, ((l / 75) % 60) as u8, (l % 75) as u8]
}

/// A TOC address: MSF {0, M, S, F} or a big-endian LBA.
fn toc_addr(msf: bool, lba: u64) -> [u8; 4] {
    if msf {
        let m = lba_to_msf(lba);
        [0, m[0], m[1], m[2]]
    } else {
        (lba.min(u64::from(u32::MAX)) as u32).to_be_bytes()
    }
}

impl Drive {
    fn tray_open(&self) -> bool {
        self.media.tray_open.load(Ordering::SeqCst)
    }

    fn inserted(&self) -> bool {
        self.backend.as_ref().is_some_and(|b| b.is_inserted())
    }

    fn cd_sectors(&self) -> u64 {
        self.medium_bytes() / SECTOR
    }

    /// QEMU's media_present: tray closed and a non-empty medium.
    fn media_present(&self) -> bool {
        !self.tray_open() && self.cd_sectors() > 0
    }

    /// The ASCQ of "medium not present": 1 tray closed, 2 tray open.
    fn no_medium_ascq(&self) -> u8 {
        if self.tray_open() {
            2
        } else {
            1
        }
    }

    fn int_reason(&mut self, v: u8) {
        self.nsector = (self.nsector & !7) | v;
    }

    /// Good status: 0x50, ireason IO|CoD, IRQ.
    fn cmd_ok(&mut self, irq: &Irq) {
        self.transfer_stop();
        self.error = 0;
        self.status = DRDY | DSC;
        self.int_reason(3);
        irq.raise();
    }

    /// CHECK CONDITION: 0x41, error = key << 4, the sense latched, IRQ.
    fn cmd_error(&mut self, irq: &Irq, key: u8, asc: u8, ascq: u8) {
        self.transfer_stop();
        self.status = DRDY | ERR;
        self.error = key << 4;
        self.sense_key = key;
        self.asc = asc;
        self.ascq = ascq;
        self.int_reason(3);
        irq.raise();
    }

    fn not_present(&mut self, irq: &Irq) {
        let q = self.no_medium_ascq();
        self.cmd_error(irq, NOT_READY, ASC_MEDIUM_NOT_PRESENT, q);
    }

    fn invalid_field(&mut self, irq: &Irq) {
        self.cmd_error(irq, ILLEGAL_REQUEST, ASC_INV_FIELD_IN_CDB, 0);
    }

    fn bcl(&self) -> u64 {
        match u64::from(self.lcyl) | (u64::from(self.hcyl) << 8) {
            0xffff => 0xfffe,
            n => n,
        }
    }

    fn atapi_abort(&mut self, irq: &Irq) {
        self.abort();
        self.error = ABRT;
        irq.raise();
    }

    /// An ATA command to the CD (QEMU's CD_OK entries).
    pub(crate) fn atapi_exec(&mut self, irq: &Irq, cmd: u8) {
        match cmd {
            WIN_DEVICE_RESET => {
                // Halts PIO, resets (the tray and lock survive), status 0,
                // signature; no IRQ.
                self.reset();
                self.status = 0;
            }
            WIN_IDENTIFY | WIN_READ => {
                // libata reclassifies the device from the signature.
                self.set_signature();
                self.atapi_abort(irq);
            }
            WIN_PIDENTIFY => {
                let serial = self.serial.clone();
                identify::atapi(&mut self.buf, &serial);
                self.status = DRDY | DSC;
                self.error = 0;
                self.transfer_start(0, 512, false, Next::Stop);
                irq.raise();
            }
            WIN_PACKETCMD => {
                // OVL is not supported; DMA neither (PIO-only device).
                if self.feature & 0x03 != 0 {
                    return self.atapi_abort(irq);
                }
                self.status = DRDY | DSC;
                self.error = 0;
                self.nsector = 1;
                // No IRQ: accelerated DRQ, the host polls.
                self.transfer_start(0, 12, true, Next::PacketCdb);
            }
            WIN_FLUSH_CACHE => {
                self.status = DRDY | DSC;
                irq.raise();
            }
            WIN_SETFEATURES => {
                let ok = match self.feature {
                    0x03 => self.nsector >> 3 <= 1 && self.nsector & 7 <= 4,
                    0x02 | 0x82 | 0x05 | 0x85 | 0x42 | 0xc2 | 0x55 | 0xaa | 0x66 | 0xcc | 0x67 | 0x69 | 0x96 | 0x9a => true,
                    _ => false,
                };
                if ok {
                    self.status = DRDY | DSC;
                    irq.raise();
                } else {
                    self.atapi_abort(irq);
                }
            }
            _ => self.atapi_abort(irq),
        }
    }

    /// The 12 CDB bytes arrived: QEMU's ide_atapi_cmd.
    pub(crate) fn packet_cdb(&mut self, irq: &Irq) {
        let mut cdb = [0u8; 12];
        cdb.copy_from_slice(&self.buf[..12]);
        self.transfer_stop();
        let op = cdb[0];
        let fl = flags(op).unwrap_or(0);
        if self.sense_key == UNIT_ATTENTION && fl & ALLOW_UA == 0 {
            // The bare check: status ERR only, error UA|MC.
            self.status = ERR;
            self.error = (UNIT_ATTENTION << 4) | 0x20;
            self.int_reason(3);
            irq.raise();
            return;
        }
        if fl & ALLOW_UA == 0 && !self.tray_open() && self.inserted() {
            match self.media.changed.load(Ordering::SeqCst) {
                0 => {}
                1 => {
                    self.media.changed.store(2, Ordering::SeqCst);
                    return self.cmd_error(irq, NOT_READY, ASC_MEDIUM_NOT_PRESENT, 1);
                }
                _ => {
                    self.media.changed.store(0, Ordering::SeqCst);
                    return self.cmd_error(irq, UNIT_ATTENTION, ASC_MEDIUM_MAY_HAVE_CHANGED, 0);
                }
            }
        }
        if flags(op).is_none() {
            return self.cmd_error(irq, ILLEGAL_REQUEST, ASC_INV_OPCODE, 0);
        }
        if fl & CHECK_READY != 0 && !self.media_present() {
            return self.not_present(irq);
        }
        if fl & (NONDATA | CONDDATA) == 0 && self.bcl() == 0 {
            // QEMU's validate_bcl aborts without an IRQ; we raise it.
            return self.atapi_abort(irq);
        }
        // Sense is reported once (REQUEST SENSE), or cleared by the next
        // command that gets this far (our choice); a unit attention stays
        // until REQUEST SENSE, as in QEMU.
        if op != REQUEST_SENSE && self.sense_key != UNIT_ATTENTION {
            self.sense_key = NO_SENSE;
            self.asc = 0;
            self.ascq = 0;
        }
        self.status = DRDY | DSC;
        self.error = 0;
        match op {
            TEST_UNIT_READY | SET_CD_SPEED => self.cmd_ok(irq),
            REQUEST_SENSE => self.request_sense(irq, &cdb),
            INQUIRY => self.inquiry(irq, &cdb),
            MODE_SENSE_10 => self.mode_sense(irq, &cdb),
            PREVENT_ALLOW => {
                self.media.locked.store(cdb[4] & 1 != 0, Ordering::SeqCst);
                self.cmd_ok(irq);
            }
            START_STOP_UNIT => self.start_stop(irq, &cdb),
            READ_CAPACITY => {
                let last = self.cd_sectors().saturating_sub(1).min(u64::from(u32::MAX)) as u32;
                self.buf[..4].copy_from_slice(&last.to_be_bytes());
                self.buf[4..8].copy_from_slice(&(SECTOR as u32).to_be_bytes());
                self.reply(irq, 8, 8);
            }
            READ_10 => self.read(irq, u64::from(be32(&cdb[2..6])), u64::from(be16(&cdb[7..9]))),
            READ_12 => self.read(irq, u64::from(be32(&cdb[2..6])), u64::from(be32(&cdb[6..10]))),
            READ_CD => {
                let lba = u64::from(be32(&cdb[2..6]));
                let n = (u64::from(cdb[6]) << 16) | (u64::from(cdb[7]) << 8) | u64::from(cdb[8]);
                match cdb[9] & 0xf8 {
                    0x00 => self.cmd_ok(irq),
                    0x10 => {
                        if n != 0 && self.bcl() == 0 {
                            return self.atapi_abort(irq);
                        }
                        self.read(irq, lba, n)
                    }
                    // Raw sectors (sync, headers, EDC/ECC) are not supported.
                    _ => self.invalid_field(irq),
                }
            }
            SEEK_10 => {
                if u64::from(be32(&cdb[2..6])) >= self.cd_sectors() {
                    self.cmd_error(irq, ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE, 0);
                } else {
                    self.cmd_ok(irq);
                }
            }
            READ_TOC => self.read_toc(irq, &cdb),
            GET_CONFIGURATION => self.get_configuration(irq, &cdb),
            GESN => self.gesn(irq, &cdb),
            READ_DISC_INFO => {
                if cdb[1] & 7 != 0 {
                    return self.invalid_field(irq);
                }
                self.buf[..34].fill(0);
                self.buf[1] = 32;
                self.buf[2] = 0x0e;
                self.buf[3] = 1;
                self.buf[4] = 1;
                self.buf[5] = 1;
                self.buf[6] = 1;
                self.buf[7] = 0x20;
                self.reply(irq, 34, u64::from(be16(&cdb[7..9])));
            }
            MECHANISM_STATUS => {
                self.buf[..8].fill(0);
                self.buf[5] = 1;
                self.reply(irq, 8, u64::from(be16(&cdb[8..10])));
            }
            // A CD-ROM: no DVD structures (QEMU: 05/30 on CD media).
            READ_DVD_STRUCTURE => self.cmd_error(irq, ILLEGAL_REQUEST, ASC_INCOMPATIBLE_FORMAT, 0),
            _ => self.cmd_error(irq, ILLEGAL_REQUEST, ASC_INV_OPCODE, 0),
        }
    }

    /// Sends `buf[..min(len, alloc)]` to the host (QEMU's
    /// ide_atapi_cmd_reply).
    fn reply(&mut self, irq: &Irq, len: usize, alloc: u64) {
        let total = (len as u64).min(alloc);
        self.pkt = Packet { reading: false, lba: 0, total, sent: 0 };
        self.status = DRDY | DSC;
        self.atapi_reply_end(irq);
    }

    fn read(&mut self, irq: &Irq, lba: u64, n: u64) {
        if n == 0 {
            return self.cmd_ok(irq);
        }
        let total = self.cd_sectors();
        if lba >= total || n > total - lba {
            if let Some(b) = &self.backend {
                b.stats().invalid(Op::Read);
            }
            return self.cmd_error(irq, ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE, 0);
        }
        self.pkt = Packet { reading: true, lba, total: n * SECTOR, sent: 0 };
        self.status = DRDY | DSC;
        self.atapi_reply_end(irq);
    }

    /// The next DRQ block of a reply, or its completion (QEMU's
    /// ide_atapi_cmd_reply_end with atapi_byte_count_limit).
    pub(crate) fn atapi_reply_end(&mut self, irq: &Irq) {
        let left = self.pkt.total.saturating_sub(self.pkt.sent);
        if left == 0 {
            return self.cmd_ok(irq);
        }
        let mut bcl = self.bcl();
        if bcl == 0 {
            return self.atapi_abort(irq);
        }
        let mut size = left;
        if size > bcl {
            if bcl & 1 != 0 {
                bcl -= 1;
            }
            size = bcl.max(2);
        }
        let start;
        if self.pkt.reading {
            let first = self.pkt.sent / SECTOR;
            let last = (self.pkt.sent + size - 1) / SECTOR;
            let bytes = ((last - first + 1) * SECTOR) as usize;
            let offset = (self.pkt.lba + first).saturating_mul(SECTOR);
            match self.block_io(Op::Read, offset, bytes) {
                Outcome::Stop => {
                    self.status = DRDY | DSC;
                    self.pending = Some(Retry::AtapiRead);
                    return;
                }
                Outcome::Error(Errno::ENOMEDIUM) => return self.not_present(irq),
                Outcome::Error(_) => return self.cmd_error(irq, ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE, 0),
                Outcome::Ok => {}
            }
            start = (self.pkt.sent % SECTOR) as usize;
        } else {
            start = self.pkt.sent as usize;
        }
        self.lcyl = size as u8;
        self.hcyl = (size >> 8) as u8;
        self.int_reason(2);
        self.status = DRDY | DSC;
        self.pkt.sent += size;
        self.transfer_start(start, size as usize, false, Next::AtapiReply);
        irq.raise();
    }

    fn request_sense(&mut self, irq: &Irq, cdb: &[u8; 12]) {
        self.buf[..18].fill(0);
        self.buf[0] = 0xf0;
        self.buf[2] = self.sense_key;
        self.buf[7] = 10;
        self.buf[12] = self.asc;
        self.buf[13] = self.ascq;
        // The sense is reported once.
        self.sense_key = NO_SENSE;
        self.asc = 0;
        self.ascq = 0;
        self.reply(irq, 18, u64::from(cdb[4]));
    }

    fn inquiry(&mut self, irq: &Irq, cdb: &[u8; 12]) {
        let alloc = u64::from(cdb[4]);
        let b = &mut self.buf;
        if cdb[1] & 1 == 0 {
            b[..36].fill(0);
            b[0] = 0x05; // CD/DVD
            b[1] = 0x80; // removable
            b[2] = 0x00; // libata fixes the version up
            b[3] = 0x21;
            b[4] = 31;
            b[8..16].copy_from_slice(VENDOR);
            b[16..32].copy_from_slice(PRODUCT);
            b[32..36].copy_from_slice(REVISION);
            return self.reply(irq, 36, alloc);
        }
        let page = cdb[2];
        b[..128].fill(0);
        b[0] = 0x05;
        b[1] = page;
        let len = match page {
            0x00 => {
                b[4] = 0x00;
                b[5] = 0x83;
                6
            }
            0x83 => {
                if alloc < 28 {
                    return self.cmd_error(irq, ILLEGAL_REQUEST, ASC_DATA_PHASE_ERROR, 0);
                }
                let serial = self.serial.clone();
                let b = &mut self.buf;
                b[4..8].copy_from_slice(&[0x02, 0x00, 0, 20]);
                pad(&mut b[8..28], serial.as_bytes());
                let mut idx = 28;
                if idx + 72 <= alloc as usize {
                    b[28..32].copy_from_slice(&[0x02, 0x01, 0, 68]);
                    b[32..40].copy_from_slice(b"ATA     ");
                    pad(&mut b[40..80], identify::MODEL_CD.as_bytes());
                    pad(&mut b[80..100], serial.as_bytes());
                    idx = 100;
                }
                idx
            }
            _ => return self.invalid_field(irq),
        };
        self.buf[3] = (len - 4) as u8;
        self.reply(irq, len, alloc);
    }

    fn mode_sense(&mut self, irq: &Irq, cdb: &[u8; 12]) {
        let alloc = u64::from(be16(&cdb[7..9]));
        let pc = cdb[2] >> 6;
        let page = cdb[2] & 0x3f;
        match pc {
            0 => {}
            3 => return self.cmd_error(irq, ILLEGAL_REQUEST, ASC_SAVING_NOT_SUPPORTED, 0),
            _ => return self.invalid_field(irq),
        }
        let locked = self.media.locked.load(Ordering::SeqCst);
        let b = &mut self.buf;
        b[..64].fill(0);
        b[2] = 0x70;
        let mut q = 8;
        let pages: &[u8] = match page {
            0x01 => &[0x01],
            0x0e => &[0x0e],
            0x2a => &[0x2a],
            0x3f => &[0x01, 0x0e, 0x2a],
            _ => return self.invalid_field(irq),
        };
        for &p in pages {
            match p {
                0x01 => {
                    b[q] = 0x01;
                    b[q + 1] = 6;
                    b[q + 3] = 5;
                    q += 8;
                }
                0x0e => {
                    b[q] = 0x0e;
                    b[q + 1] = 14;
                    q += 16;
                }
                _ => {
                    b[q] = 0x2a;
                    b[q + 1] = 20;
                    b[q + 2] = 0x3b; // reads CD-R/RW, DVD-ROM...
                    b[q + 4] = 0x71;
                    b[q + 5] = 0x60;
                    // lock supported, lock state, eject supported, tray.
                    b[q + 6] = 0x29 | if locked { 0x02 } else { 0 };
                    b[q + 8..q + 10].copy_from_slice(&704u16.to_be_bytes());
                    b[q + 10..q + 12].copy_from_slice(&2u16.to_be_bytes());
                    b[q + 12..q + 14].copy_from_slice(&512u16.to_be_bytes());
                    b[q + 14..q + 16].copy_from_slice(&704u16.to_be_bytes());
                    q += 22;
                }
            }
        }
        b[..2].copy_from_slice(&((q - 2) as u16).to_be_bytes());
        self.reply(irq, q, alloc);
    }

    fn start_stop(&mut self, irq: &Irq, cdb: &[u8; 12]) {
        let start = cdb[4] & 1 != 0;
        let loej = cdb[4] & 2 != 0;
        if cdb[4] & 0xf0 != 0 || !loej {
            return self.cmd_ok(irq);
        }
        let open = self.tray_open();
        if !start && !open && self.media.locked.load(Ordering::SeqCst) {
            // QEMU: NOT READY with a medium, ILLEGAL REQUEST without.
            let key = if self.inserted() { NOT_READY } else { ILLEGAL_REQUEST };
            return self.cmd_error(irq, key, ASC_MEDIA_REMOVAL_PREVENTED, 2);
        }
        if open == start {
            self.media.tray_open.store(!start, Ordering::SeqCst);
            if let Some(b) = &self.backend {
                b.guest_eject(!start);
            }
        }
        self.cmd_ok(irq)
    }

    fn read_toc(&mut self, irq: &Irq, cdb: &[u8; 12]) {
        let msf = cdb[1] & 2 != 0;
        let start_track = cdb[6];
        let alloc = u64::from(be16(&cdb[7..9]));
        let format = if cdb[2] & 0x0f != 0 { cdb[2] & 0x0f } else { cdb[9] >> 6 };
        let total = self.cd_sectors();
        let b = &mut self.buf;
        b[..64].fill(0);
        let len = match format {
            0 => {
                if start_track > 1 && start_track != 0xaa {
                    return self.invalid_field(irq);
                }
                b[2] = 1;
                b[3] = 1;
                let mut q = 4;
                if start_track <= 1 {
                    b[q..q + 4].copy_from_slice(&[0, 0x14, 1, 0]);
                    b[q + 4..q + 8].copy_from_slice(&toc_addr(msf, 0));
                    q += 8;
                }
                b[q..q + 4].copy_from_slice(&[0, 0x16, 0xaa, 0]);
                b[q + 4..q + 8].copy_from_slice(&toc_addr(msf, total));
                q += 8;
                q
            }
            1 => {
                b[2] = 1;
                b[3] = 1;
                12
            }
            2 => {
                b[2] = 1;
                b[3] = 1;
                let mut q = 4;
                for point in [0xa0u8, 0xa1, 0xa2, 1] {
                    b[q] = 1;
                    b[q + 1] = 0x14;
                    b[q + 3] = point;
                    let tail: [u8; 4] = match point {
                        0xa0 | 0xa1 => [0, 1, 0, 0],
                        0xa2 => toc_addr(msf, total),
                        _ => toc_addr(msf, 0),
                    };
                    b[q + 7..q + 11].copy_from_slice(&tail);
                    q += 11;
                }
                q
            }
            _ => return self.invalid_field(irq),
        };
        self.buf[..2].copy_from_slice(&((len - 2) as u16).to_be_bytes());
        self.reply(irq, len, alloc);
    }

    fn get_configuration(&mut self, irq: &Irq, cdb: &[u8; 12]) {
        if be16(&cdb[2..4]) != 0 {
            return self.invalid_field(irq);
        }
        let alloc = u64::from(be16(&cdb[7..9])).min(512);
        let profile: u16 = if !self.media_present() {
            0
        } else if self.medium_bytes() > CD_MAX_BYTES {
            0x10
        } else {
            0x08
        };
        let b = &mut self.buf;
        b[..64].fill(0);
        b[6..8].copy_from_slice(&profile.to_be_bytes());
        // Profile list: DVD-ROM, CD-ROM.
        b[8..12].copy_from_slice(&[0, 0, 0x03, 8]);
        b[12..14].copy_from_slice(&0x10u16.to_be_bytes());
        b[14] = u8::from(profile == 0x10);
        b[16..18].copy_from_slice(&0x08u16.to_be_bytes());
        b[18] = u8::from(profile == 0x08);
        // Core: ATAPI physical interface.
        b[20..24].copy_from_slice(&[0, 0x01, 0x0b, 8]);
        b[24..28].copy_from_slice(&2u32.to_be_bytes());
        b[28] = 0x01;
        // Removable medium: tray loader, eject, lock.
        b[32..36].copy_from_slice(&[0, 0x03, 0x03, 4]);
        b[36] = (1 << 5) | (1 << 3) | 1;
        let len = 40;
        b[..4].copy_from_slice(&((len - 4) as u32).to_be_bytes());
        self.reply(irq, len, alloc);
    }

    /// GET EVENT STATUS NOTIFICATION, polled, media class (QEMU's
    /// event_status_media, plus the media removal event).
    fn gesn(&mut self, irq: &Irq, cdb: &[u8; 12]) {
        if cdb[1] & 1 == 0 {
            return self.invalid_field(irq);
        }
        let alloc = u64::from(be16(&cdb[7..9]));
        let class = cdb[4];
        if class & 0x10 == 0 {
            self.buf[..4].copy_from_slice(&[0, 0, 0x80, 0x10]);
            return self.reply(irq, 4, alloc);
        }
        let m = self.media.clone();
        let open = self.tray_open();
        let status = if open {
            1
        } else if self.inserted() {
            2
        } else {
            0
        };
        let take = |f: &AtomicBool| f.swap(false, Ordering::SeqCst);
        let event = if !open && take(&m.new_media) {
            m.removal.store(false, Ordering::SeqCst);
            2
        } else if take(&m.removal) {
            3
        } else if !open && take(&m.eject_request) {
            1
        } else {
            0
        };
        self.buf[..8].copy_from_slice(&[0, 4, 0x04, 0x10, event, status, 0, 0]);
        self.reply(irq, 8, alloc);
    }
}

fn pad(dst: &mut [u8], src: &[u8]) {
    for (i, d) in dst.iter_mut().enumerate() {
        *d = src.get(i).copied().unwrap_or(b' ');
    }
}
