//! The IDE channel driven through its registers as QEMU's
//! tests/qtest/ide-test.c and cdrom-test.c drive it, without a guest: an
//! ATA disk and an ATAPI CD-ROM over RAM-backed test storage, errors
//! injected with `InjectDriver`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use block::drivers::inject::{Count, InjectDriver, Rule};
use block::testing::TestDisk;
use block::{BlockBackend, BlockEvent, OnError, Op};
use devices::ide::*;
use devices::BusDevice;

const DISK_BYTES: usize = 4 << 20;

struct Host {
    ch: Arc<Mutex<IdeChannel>>,
    ctl: Arc<Mutex<IdeControl>>,
    level: Arc<AtomicBool>,
    raises: Arc<AtomicUsize>,
}

impl Host {
    fn new(master: Option<DriveConfig>, slave: Option<DriveConfig>) -> Host {
        let level = Arc::new(AtomicBool::new(false));
        let raises = Arc::new(AtomicUsize::new(0));
        let (l, r) = (level.clone(), raises.clone());
        let irq = Box::new(move |v: bool| {
            l.store(v, Ordering::SeqCst);
            if v {
                r.fetch_add(1, Ordering::SeqCst);
            }
        });
        let ch = Arc::new(Mutex::new(IdeChannel::new(irq, master, slave).unwrap()));
        let ctl = IdeChannel::control(ch.clone());
        Host { ch, ctl, level, raises }
    }
    fn inb(&self, reg: u64) -> u8 {
        let mut b = [0u8];
        self.ch.lock().unwrap().read(reg, &mut b);
        b[0]
    }
    fn outb(&self, reg: u64, v: u8) {
        self.ch.lock().unwrap().write(reg, &[v]);
    }
    fn alt(&self) -> u8 {
        let mut b = [0u8];
        self.ctl.lock().unwrap().read(0, &mut b);
        b[0]
    }
    fn devctl(&self, v: u8) {
        self.ctl.lock().unwrap().write(0, &[v]);
    }
    /// `rep insw` of `n` bytes.
    fn insw(&self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.ch.lock().unwrap().read_string(REG_DATA, 2, &mut v);
        v
    }
    fn outsw(&self, data: &[u8]) {
        self.ch.lock().unwrap().write_string(REG_DATA, 2, data);
    }
    fn irq(&self) -> bool {
        self.level.load(Ordering::SeqCst)
    }
    fn raises(&self) -> usize {
        self.raises.load(Ordering::SeqCst)
    }
    fn select(&self, unit: u8) {
        self.outb(REG_SELECT, 0xa0 | 0x40 | (unit << 4));
    }
    /// LBA28 task file + command.
    fn cmd28(&self, cmd: u8, lba: u32, count: u8) {
        self.outb(REG_NSECTOR, count);
        self.outb(REG_SECTOR, lba as u8);
        self.outb(REG_LCYL, (lba >> 8) as u8);
        self.outb(REG_HCYL, (lba >> 16) as u8);
        self.outb(REG_SELECT, 0xe0 | ((lba >> 24) as u8 & 0xf));
        self.outb(REG_STATUS, cmd);
    }
    /// LBA48 task file (HOB first) + command.
    fn cmd48(&self, cmd: u8, lba: u64, count: u16) {
        self.outb(REG_NSECTOR, (count >> 8) as u8);
        self.outb(REG_SECTOR, (lba >> 24) as u8);
        self.outb(REG_LCYL, (lba >> 32) as u8);
        self.outb(REG_HCYL, (lba >> 40) as u8);
        self.outb(REG_NSECTOR, count as u8);
        self.outb(REG_SECTOR, lba as u8);
        self.outb(REG_LCYL, (lba >> 8) as u8);
        self.outb(REG_HCYL, (lba >> 16) as u8);
        self.outb(REG_SELECT, 0xe0);
        self.outb(REG_STATUS, cmd);
    }
}

fn disk_backend(name: &str) -> (Arc<BlockBackend>, Arc<TestDisk>) {
    let d = TestDisk::new(DISK_BYTES, true);
    let b = Arc::new(BlockBackend::new(name));
    b.insert_medium(d.clone(), "disk.img").unwrap();
    (b, d)
}

fn disk(b: &Arc<BlockBackend>) -> Option<DriveConfig> {
    Some(DriveConfig { backend: b.clone(), media: Media::Disk, serial: "DISK0001".into() })
}

fn cd(b: &Arc<BlockBackend>) -> Option<DriveConfig> {
    Some(DriveConfig { backend: b.clone(), media: Media::Cdrom, serial: "CD0001".into() })
}

/// An "ISO": `sectors` 2048-byte sectors, each filled with its number.
fn iso_backend(name: &str, sectors: usize) -> (Arc<BlockBackend>, Arc<TestDisk>) {
    let d = TestDisk::new(sectors * 2048, true);
    for (i, s) in d.data().chunks_mut(2048).enumerate() {
        for (j, b) in s.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(7) ^ (j as u8);
        }
    }
    let b = Arc::new(BlockBackend::new(name));
    b.insert_medium(d.clone(), "cd.iso").unwrap();
    (b, d)
}

fn iso_sector(i: usize) -> Vec<u8> {
    (0..2048).map(|j| (i as u8).wrapping_mul(7) ^ (j as u8)).collect()
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed)).collect()
}

fn word(id: &[u8], w: usize) -> u16 {
    u16::from_le_bytes([id[2 * w], id[2 * w + 1]])
}

fn ata_string(id: &[u8], w: usize, words: usize) -> String {
    let mut s = Vec::new();
    for i in 0..words {
        s.push(id[2 * (w + i) + 1]);
        s.push(id[2 * (w + i)]);
    }
    String::from_utf8(s).unwrap().trim_end().to_string()
}

#[test]
fn identify_device() {
    let (b, _) = disk_backend("hd0");
    let h = Host::new(disk(&b), None);
    h.devctl(CTL_NIEN);
    h.select(0);
    h.outb(REG_STATUS, 0xec);
    assert_eq!(h.alt(), DRDY | DSC | DRQ);
    assert!(!h.irq(), "IDENTIFY is polled with nIEN=1: no IRQ");
    let id = h.insw(512);
    assert_eq!(h.inb(REG_STATUS), DRDY | DSC, "DRQ clears after the block");
    assert_eq!(word(&id, 0), 0x0040);
    assert_eq!(ata_string(&id, 27, 20), "RVMM HARDDISK");
    assert_eq!(ata_string(&id, 10, 10), "DISK0001");
    let sectors = (DISK_BYTES / 512) as u64;
    assert_eq!(u64::from(word(&id, 60)) | (u64::from(word(&id, 61)) << 16), sectors);
    let lba48 = (0..4).fold(0u64, |a, i| a | (u64::from(word(&id, 100 + i)) << (16 * i)));
    assert_eq!(lba48, sectors);
    assert_eq!(word(&id, 47), 0x8010);
    assert_eq!(word(&id, 59), 0x0110);
    assert_ne!(word(&id, 49) & 0x200, 0, "LBA");
    assert_ne!(word(&id, 83) & (1 << 10), 0, "LBA48");
    assert_eq!(word(&id, 82) & (1 << 10), 0, "no HPA");
    assert_eq!(word(&id, 84) & (1 << 5), 0, "no GPL");
    assert_ne!(word(&id, 85) & 0x20, 0, "write cache on");
    assert_eq!(word(&id, 76), 0);
    assert_eq!(id.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0, "checksum");

    // SET FEATURES: write cache off reaches the backend, and IDENTIFY shows it.
    h.outb(REG_ERROR, 0x82);
    h.outb(REG_STATUS, 0xef);
    assert_eq!(h.inb(REG_STATUS), DRDY | DSC);
    assert!(!b.write_cache());
    // SET MULTIPLE 4 is shown in word 59; 3 is refused.
    h.outb(REG_NSECTOR, 4);
    h.outb(REG_STATUS, 0xc6);
    assert_eq!(h.inb(REG_STATUS) & ERR, 0);
    h.outb(REG_NSECTOR, 3);
    h.outb(REG_STATUS, 0xc6);
    assert_eq!((h.inb(REG_STATUS), h.inb(REG_ERROR)), (DRDY | ERR, ABRT));
    h.outb(REG_STATUS, 0xec);
    let id = h.insw(512);
    assert_eq!(word(&id, 85) & 0x20, 0);
    assert_eq!(word(&id, 59), 0x0104);
    // A 32-bit data read works too.
    h.outb(REG_STATUS, 0xec);
    let mut d = [0u8; 4];
    h.ch.lock().unwrap().read(REG_DATA, &mut d);
    assert_eq!(u16::from_le_bytes([d[0], d[1]]), 0x0040);
    assert!(!h.irq() && h.raises() == 0, "nothing raised while nIEN=1");
}

#[test]
fn read_write_sectors_round_trip() {
    let (b, d) = disk_backend("hd0");
    let h = Host::new(disk(&b), None);
    h.select(0);
    let data = pattern(3, 3 * 512);
    h.cmd28(0x30, 5, 3);
    assert_eq!(h.alt(), DRDY | DSC | DRQ, "DRQ at once for PIO-out");
    assert!(!h.irq(), "no IRQ before the first block");
    for i in 0..3 {
        h.outsw(&data[i * 512..(i + 1) * 512]);
        assert!(h.irq(), "IRQ after block {i}");
        let st = h.inb(REG_STATUS);
        assert!(!h.irq(), "status read lowers the line");
        assert_eq!(st, if i < 2 { DRDY | DSC | DRQ } else { DRDY | DSC });
    }
    assert_eq!(&d.data()[5 * 512..8 * 512], &data[..]);
    // The registers point past the last sector.
    assert_eq!(h.inb(REG_SECTOR), 8);

    h.cmd28(0x20, 5, 3);
    let mut got = Vec::new();
    for i in 0..3 {
        assert!(h.irq(), "IRQ for block {i}");
        assert_eq!(h.inb(REG_STATUS), DRDY | DSC | DRQ);
        got.extend(h.insw(512));
    }
    assert!(!h.irq(), "no IRQ after the last block of a read");
    assert_eq!(h.alt(), DRDY | DSC);
    assert_eq!(got, data);
    assert_eq!(b.stats().get(Op::Read).ops, 3);
    assert_eq!(b.stats().get(Op::Write).ops, 3);

    // FLUSH CACHE completes with an IRQ.
    h.outb(REG_STATUS, 0xe7);
    assert!(h.irq());
    assert_eq!(h.inb(REG_STATUS), DRDY | DSC);
    assert_eq!(b.stats().get(Op::Flush).ops, 1);
}

#[test]
fn lba48_and_multiple() {
    let (b, d) = disk_backend("hd0");
    let h = Host::new(disk(&b), None);
    h.select(0);
    // WRITE MULTIPLE EXT of 10 sectors at 0x1234 in blocks of 16 (one block).
    let data = pattern(9, 10 * 512);
    h.cmd48(0x39, 0x1234, 10);
    h.outsw(&data);
    assert!(h.irq());
    assert_eq!(h.inb(REG_STATUS), DRDY | DSC);
    assert_eq!(&d.data()[0x1234 * 512..(0x1234 + 10) * 512], &data[..]);
    // The HOB copies read back through devctl.HOB.
    h.devctl(CTL_HOB);
    assert_eq!((h.inb(REG_SECTOR), h.inb(REG_LCYL)), (0, 0));
    h.devctl(0);
    assert_eq!((h.inb(REG_SECTOR), h.inb(REG_LCYL)), (0x3e, 0x12), "next LBA 0x123e");

    // READ MULTIPLE EXT with multiple count 4: blocks of 4, 4, 2, an IRQ each.
    h.outb(REG_NSECTOR, 4);
    h.outb(REG_STATUS, 0xc6);
    h.inb(REG_STATUS);
    h.cmd48(0x29, 0x1234, 10);
    let mut got = Vec::new();
    for n in [4, 4, 2] {
        assert!(h.irq());
        assert_eq!(h.inb(REG_STATUS), DRDY | DSC | DRQ);
        got.extend(h.insw(n * 512));
    }
    assert_eq!(h.alt(), DRDY | DSC);
    assert_eq!(got, data);
    assert_eq!(b.stats().get(Op::Read).ops, 3);

    // READ SECTORS EXT (one sector per block) with the count in HOB.
    h.cmd48(0x24, 0x1234, 2);
    assert_eq!(h.insw(512), data[..512]);
    assert_eq!(h.insw(512), data[512..1024]);
    assert_eq!(h.alt(), DRDY | DSC);

    // Out of range (LBA48 past the end): ABRT, storage untouched, invalid.
    let log = d.log().len();
    h.inb(REG_STATUS);
    h.cmd48(0x24, 1 << 40, 1);
    assert!(h.irq());
    assert_eq!((h.inb(REG_STATUS), h.inb(REG_ERROR)), (DRDY | ERR, ABRT));
    h.cmd28(0x30, (DISK_BYTES / 512) as u32 - 1, 2);
    assert_eq!((h.inb(REG_STATUS), h.inb(REG_ERROR)), (DRDY | ERR, ABRT));
    assert_eq!(d.log().len(), log);
    assert_eq!(b.stats().get(Op::Read).invalid, 1);
    assert_eq!(b.stats().get(Op::Write).invalid, 1);

    // READ NATIVE MAX EXT: the last LBA.
    h.outb(REG_SELECT, 0x40);
    h.outb(REG_STATUS, 0x27);
    h.devctl(CTL_HOB);
    let hob = (h.inb(REG_SECTOR), h.inb(REG_LCYL), h.inb(REG_HCYL));
    h.devctl(0);
    let lo = (h.inb(REG_SECTOR), h.inb(REG_LCYL), h.inb(REG_HCYL));
    let max = u64::from(lo.0) | u64::from(lo.1) << 8 | u64::from(lo.2) << 16 | u64::from(hob.0) << 24;
    assert_eq!(max, (DISK_BYTES / 512) as u64 - 1);
    // CHECK POWER MODE: active.
    h.outb(REG_STATUS, 0xe5);
    assert_eq!(h.inb(REG_NSECTOR), 0xff);
    // NOP and DEVICE RESET abort on a disk.
    for c in [0x00, 0x08, 0xa0, 0xa1] {
        h.outb(REG_STATUS, c);
        assert_eq!((h.inb(REG_STATUS), h.inb(REG_ERROR)), (DRDY | ERR, ABRT), "cmd {c:#x}");
    }
}

#[test]
fn srst_signatures_and_diagnostic() {
    let (hd, _) = disk_backend("hd0");
    let (cdb, _) = iso_backend("cd0", 8);
    let h = Host::new(disk(&hd), cd(&cdb));
    h.devctl(CTL_NIEN | CTL_SRST);
    h.devctl(CTL_NIEN);
    h.outb(REG_SELECT, 0xa0);
    assert_eq!(h.alt() & BSY, 0);
    assert_ne!(h.alt(), 0, "an ATA device's status is nonzero");
    assert_eq!((h.inb(REG_NSECTOR), h.inb(REG_SECTOR)), (1, 1));
    assert_eq!((h.inb(REG_LCYL), h.inb(REG_HCYL), h.inb(REG_ERROR)), (0, 0, 1));
    h.outb(REG_SELECT, 0xb0);
    assert_eq!((h.inb(REG_NSECTOR), h.inb(REG_SECTOR)), (1, 1));
    assert_eq!((h.inb(REG_LCYL), h.inb(REG_HCYL), h.inb(REG_ERROR)), (0x14, 0xeb, 1));
    assert_eq!(h.inb(REG_STATUS), 0, "ATAPI status is 0 after reset");
    // IDENTIFY DEVICE to the CD: ATAPI signature and abort.
    h.outb(REG_STATUS, 0xec);
    assert_eq!((h.inb(REG_STATUS), h.inb(REG_ERROR)), (DRDY | ERR, ABRT));
    assert_eq!((h.inb(REG_LCYL), h.inb(REG_HCYL)), (0x14, 0xeb));
    // IDENTIFY PACKET DEVICE.
    h.outb(REG_STATUS, 0xa1);
    assert_eq!(h.inb(REG_STATUS), DRDY | DSC | DRQ);
    let id = h.insw(512);
    assert_eq!(word(&id, 0), 0x85c0);
    assert_eq!(ata_string(&id, 27, 20), "RVMM CD-ROM");
    // EXECUTE DEVICE DIAGNOSTIC on the selected device clears DEV.
    h.outb(REG_STATUS, 0x90);
    assert_eq!(h.inb(REG_SELECT) & 0x10, 0);
    assert_eq!(h.inb(REG_ERROR), 1);
    assert_eq!(h.raises(), 0);
}

#[test]
fn absent_slave_reads_as_absent() {
    let (b, _) = disk_backend("hd0");
    let h = Host::new(disk(&b), None);
    h.outb(REG_SELECT, 0xb0);
    assert_eq!((h.inb(REG_STATUS), h.alt(), h.inb(REG_ERROR)), (0, 0, 0));
    // libata's ata_devchk: the latched values echo back.
    h.outb(REG_NSECTOR, 0x55);
    h.outb(REG_SECTOR, 0xaa);
    assert_eq!((h.inb(REG_NSECTOR), h.inb(REG_SECTOR)), (0x55, 0xaa));
    // Commands to it are dropped, data reads 0.
    h.outb(REG_STATUS, 0xec);
    assert_eq!((h.inb(REG_STATUS), h.raises()), (0, 0));
    assert_eq!(h.insw(4), vec![0; 4]);
    // SRST: still absent.
    h.devctl(CTL_SRST);
    h.devctl(0);
    h.outb(REG_SELECT, 0xb0);
    assert_eq!((h.inb(REG_STATUS), h.inb(REG_ERROR)), (0, 0));
    // A channel without devices reads 0 everywhere.
    let e = Host::new(None, None);
    for r in 1..=7 {
        assert_eq!(e.inb(r), 0, "reg {r}");
    }
    // A slave without a master is refused.
    assert!(IdeChannel::new(Box::new(|_| {}), None, disk(&b)).is_err());
}

#[test]
fn nien_masks_the_irq() {
    let (b, _) = disk_backend("hd0");
    let h = Host::new(disk(&b), None);
    h.select(0);
    h.devctl(CTL_NIEN);
    h.outb(REG_STATUS, 0xe5);
    assert!(!h.irq());
    h.devctl(0);
    assert!(!h.irq(), "a masked event is not raised when nIEN clears");
    h.outb(REG_STATUS, 0xe5);
    assert!(h.irq());
    h.alt();
    assert!(h.irq(), "alt status does not lower");
    h.outb(REG_STATUS, 0xe5);
    assert!(h.irq(), "the new command's completion raised it again");
    h.inb(REG_STATUS);
    assert!(!h.irq());
    assert_eq!(h.raises(), 2);
}

/// A PACKET command: returns (data, DRQ block sizes, final status, error).
fn packet(h: &Host, cdb: &[u8], bcl: u16) -> (Vec<u8>, Vec<usize>, u8, u8) {
    h.inb(REG_STATUS);
    h.outb(REG_ERROR, 0);
    h.outb(REG_LCYL, bcl as u8);
    h.outb(REG_HCYL, (bcl >> 8) as u8);
    h.outb(REG_STATUS, 0xa0);
    assert_eq!(h.alt(), DRDY | DSC | DRQ, "DRQ for the CDB");
    assert_eq!(h.inb(REG_NSECTOR) & 3, 1, "CoD");
    assert!(!h.irq(), "no IRQ for the CDB (accelerated DRQ)");
    let mut c = [0u8; 12];
    c[..cdb.len()].copy_from_slice(cdb);
    h.outsw(&c);
    let (mut data, mut blocks) = (Vec::new(), Vec::new());
    loop {
        assert!(h.irq(), "an IRQ for each phase");
        let st = h.inb(REG_STATUS);
        if st & DRQ == 0 {
            if st & ERR == 0 {
                assert_eq!(h.inb(REG_NSECTOR) & 3, 3, "ireason at completion");
            }
            return (data, blocks, st, h.inb(REG_ERROR));
        }
        assert_eq!(h.inb(REG_NSECTOR) & 3, 2, "ireason IO");
        let n = usize::from(h.inb(REG_LCYL)) | (usize::from(h.inb(REG_HCYL)) << 8);
        assert!(n > 0 && n <= usize::from(bcl));
        blocks.push(n);
        data.extend(h.insw(n.div_ceil(2) * 2).into_iter().take(n));
    }
}

fn sense(h: &Host) -> (u8, u8, u8) {
    let (d, _, st, _) = packet(h, &[0x03, 0, 0, 0, 18], 18);
    assert_eq!(st & ERR, 0);
    (d[2] & 0xf, d[12], d[13])
}

fn good(r: &(Vec<u8>, Vec<usize>, u8, u8)) {
    assert_eq!(r.2, DRDY | DSC, "good status (error {:#x})", r.3);
}

#[test]
fn atapi_inquiry_capacity_and_read() {
    let (b, _) = iso_backend("cd0", 40);
    let h = Host::new(cd(&b), None);
    h.select(0);
    let r = packet(&h, &[0x12, 0, 0, 0, 36], 36);
    good(&r);
    let inq = r.0;
    assert_eq!(inq.len(), 36);
    assert_eq!(inq[0] & 0x1f, 5, "peripheral type CD/DVD");
    assert_eq!(inq[1], 0x80, "removable");
    assert_eq!(&inq[8..16], b"RVMM    ");
    assert_eq!(&inq[16..32], b"RVMM CD-ROM     ");
    // VPD pages 0x00 and 0x83.
    let r = packet(&h, &[0x12, 1, 0x00, 0, 255], 255);
    assert_eq!(&r.0[..6], &[5, 0, 0, 2, 0, 0x83]);
    let r = packet(&h, &[0x12, 1, 0x83, 0, 255], 255);
    assert_eq!(r.0.len(), 100);
    assert_eq!(&r.0[8..14], b"CD0001");
    let r = packet(&h, &[0x12, 1, 0x83, 0, 20], 255);
    assert_eq!((r.2 & ERR, r.3 >> 4), (ERR, 5));
    assert_eq!(sense(&h), (5, 0x4b, 0));

    let r = packet(&h, &[0x25], 8);
    good(&r);
    assert_eq!(r.0, [0, 0, 0, 39, 0, 0, 8, 0]);

    // READ(10) of 3 sectors with a byte count limit of 2048: 3 DRQ blocks.
    let r = packet(&h, &[0x28, 0, 0, 0, 0, 4, 0, 0, 3], 2048);
    good(&r);
    assert_eq!(r.1, vec![2048; 3]);
    assert_eq!(r.0, [iso_sector(4), iso_sector(5), iso_sector(6)].concat());
    // qtest's pio_large: BCL 5120, 10 sectors: 4 blocks of 5120.
    let r = packet(&h, &[0x28, 0, 0, 0, 0, 0, 0, 0, 10], 5120);
    good(&r);
    assert_eq!(r.1, vec![5120; 4]);
    assert_eq!(r.0, (0..10).map(iso_sector).collect::<Vec<_>>().concat());
    // An odd limit is rounded down; READ(12) and READ CD.
    let r = packet(&h, &[0xa8, 0, 0, 0, 0, 1, 0, 0, 0, 2], 3001);
    assert_eq!(r.1, vec![3000, 1096]);
    assert_eq!(r.0, [iso_sector(1), iso_sector(2)].concat());
    let r = packet(&h, &[0xbe, 0, 0, 0, 0, 39, 0, 0, 1, 0x10], 0xffff);
    good(&r);
    assert_eq!(r.0, iso_sector(39));
    // Past the end: ILLEGAL REQUEST / LBA out of range, counted invalid.
    let r = packet(&h, &[0x28, 0, 0, 0, 0, 39, 0, 0, 2], 4096);
    assert_eq!((r.2, r.3), (DRDY | ERR, 0x50));
    assert_eq!(sense(&h), (5, 0x21, 0));
    assert_eq!(b.stats().get(Op::Read).invalid, 1);
    // BCL 0 for a data command: ATA abort.
    let r = packet(&h, &[0x25], 0);
    assert_eq!((r.2, r.3), (DRDY | ERR, ABRT));
    // Unknown opcode (MODE SENSE(6)): 05/20.
    packet(&h, &[0x1a], 255);
    assert_eq!(sense(&h), (5, 0x20, 0));
    // READ DVD STRUCTURE: incompatible medium.
    packet(&h, &[0xad, 0, 0, 0, 0, 0, 0, 0, 0, 8], 8);
    assert_eq!(sense(&h), (5, 0x30, 0));
}

#[test]
fn atapi_toc_config_mode_sense_and_more() {
    let (b, _) = iso_backend("cd0", 40);
    let h = Host::new(cd(&b), None);
    h.select(0);
    // READ TOC format 0, LBA: track 1 at 0, lead-out at 40.
    let r = packet(&h, &[0x43, 0, 0, 0, 0, 0, 0, 0, 0xff], 0xfffe);
    good(&r);
    assert_eq!(r.0, [0, 18, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0, 0, 0x16, 0xaa, 0, 0, 0, 0, 40]);
    // MSF: lead-out at 40 + 150 frames = 00:02:40.
    let r = packet(&h, &[0x43, 2, 0, 0, 0, 0, 0, 0, 0xff], 0xfffe);
    assert_eq!(&r.0[16..20], &[0, 0, 2, 40]);
    // Format 1 (from byte 9, as Linux sends it) and format 2.
    let r = packet(&h, &[0x43, 0, 0, 0, 0, 0, 0, 0, 12, 0x40], 0xfffe);
    assert_eq!(r.0, [0, 10, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    let r = packet(&h, &[0x43, 2, 2, 0, 0, 0, 0, 0, 0xff], 0xfffe);
    assert_eq!(r.0.len(), 48);
    // Start track 5: invalid field.
    packet(&h, &[0x43, 0, 0, 0, 0, 0, 5, 0, 0xff], 0xfffe);
    assert_eq!(sense(&h), (5, 0x24, 0));
    // GET CONFIGURATION: CD-ROM profile current.
    let r = packet(&h, &[0x46, 0, 0, 0, 0, 0, 0, 0, 255], 0xfffe);
    good(&r);
    assert_eq!(&r.0[6..8], &[0, 8]);
    assert_eq!(r.0[18], 1);
    // MODE SENSE(10) page 0x2a: eject and tray, not locked; 0x3f: all.
    let r = packet(&h, &[0x5a, 0, 0x2a, 0, 0, 0, 0, 0, 255], 0xfffe);
    good(&r);
    assert_eq!(r.0.len(), 30);
    assert_eq!((r.0[8], r.0[14]), (0x2a, 0x29));
    let r = packet(&h, &[0x5a, 0, 0x3f, 0, 0, 0, 0, 0, 255], 0xfffe);
    assert_eq!(r.0.len(), 54);
    let r = packet(&h, &[0x5a, 0, 0x01, 0, 0, 0, 0, 0, 255], 0xfffe);
    assert_eq!(r.0.len(), 16);
    packet(&h, &[0x5a, 0, 0xc1, 0, 0, 0, 0, 0, 255], 0xfffe);
    assert_eq!(sense(&h), (5, 0x39, 0));
    // READ DISC INFORMATION, MECHANISM STATUS, SEEK, SET CD SPEED.
    let r = packet(&h, &[0x51, 0, 0, 0, 0, 0, 0, 0, 34], 0xfffe);
    assert_eq!((r.0.len(), r.0[2]), (34, 0x0e));
    let r = packet(&h, &[0xbd, 0, 0, 0, 0, 0, 0, 0, 0, 8], 0xfffe);
    assert_eq!(r.0, [0, 0, 0, 0, 0, 1, 0, 0]);
    good(&packet(&h, &[0x2b, 0, 0, 0, 0, 39], 0));
    packet(&h, &[0x2b, 0, 0, 0, 0, 40], 0);
    assert_eq!(sense(&h), (5, 0x21, 0));
    good(&packet(&h, &[0xbb], 0));
    // The PACKET command with the DMA bit: aborted (PIO only).
    h.outb(REG_ERROR, 1);
    h.outb(REG_STATUS, 0xa0);
    assert_eq!((h.inb(REG_STATUS), h.inb(REG_ERROR)), (DRDY | ERR, ABRT));
}

#[test]
fn media_change_sense_sequence() {
    let (b, _) = iso_backend("cd0", 16);
    let h = Host::new(cd(&b), None);
    h.select(0);
    good(&packet(&h, &[0x00], 0));
    // The host changes the medium: tray opens, then closes with one.
    b.change_media(false);
    assert!(h.irq(), "the change raises the line");
    packet(&h, &[0x00], 0);
    assert_eq!(sense(&h), (2, 0x3a, 2), "tray open: not ready");
    // GESN while open: media removal, tray open.
    let r = packet(&h, &[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8], 8);
    assert_eq!(&r.0[2..6], &[4, 0x10, 3, 1]);
    b.change_media(true);
    let r = packet(&h, &[0x00], 0);
    assert_eq!((r.2, r.3), (DRDY | ERR, 0x20));
    assert_eq!(sense(&h), (2, 0x3a, 1), "first: not ready");
    let r = packet(&h, &[0x00], 0);
    assert_eq!((r.2, r.3), (DRDY | ERR, 0x60));
    // Without REQUEST SENSE: the bare unit attention check.
    let r = packet(&h, &[0x00], 0);
    assert_eq!((r.2, r.3), (ERR, 0x60));
    // GESN is allowed under UA: new media, present.
    let r = packet(&h, &[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8], 8);
    good(&r);
    assert_eq!(&r.0[..6], &[0, 4, 4, 0x10, 2, 2]);
    assert_eq!(sense(&h), (6, 0x28, 0));
    good(&packet(&h, &[0x00], 0));
    let r = packet(&h, &[0x28, 0, 0, 0, 0, 3, 0, 0, 1], 2048);
    assert_eq!(r.0, iso_sector(3));
    // GESN: nothing new.
    let r = packet(&h, &[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8], 8);
    assert_eq!(&r.0[4..6], &[0, 2]);
}

#[test]
fn lock_refuses_eject_and_unlock_allows_it() {
    let (b, _) = iso_backend("cd0", 16);
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    b.set_event_sink(Some(Box::new(move |e| ev.lock().unwrap().push(e))));
    let h = Host::new(cd(&b), None);
    h.select(0);
    good(&packet(&h, &[0x1e, 0, 0, 0, 1], 0));
    assert!(b.is_medium_locked());
    let r = packet(&h, &[0x5a, 0, 0x2a, 0, 0, 0, 0, 0, 255], 0xfffe);
    assert_eq!(r.0[14] & 2, 2, "lock state in page 0x2a");
    let r = packet(&h, &[0x1b, 0, 0, 0, 2], 0);
    assert_eq!((r.2, r.3), (DRDY | ERR, 0x20));
    assert_eq!(sense(&h), (2, 0x53, 2), "medium removal prevented");
    assert!(!b.is_tray_open());
    good(&packet(&h, &[0x1e, 0, 0, 0, 0], 0));
    good(&packet(&h, &[0x1b, 0, 0, 0, 2], 0));
    assert!(b.is_tray_open());
    assert!(!b.is_available());
    assert_eq!(events.lock().unwrap().as_slice(), &[BlockEvent::TrayMoved { device: "cd0".into(), tray_open: true }]);
    packet(&h, &[0x00], 0);
    assert_eq!(sense(&h), (2, 0x3a, 2));
    let r = packet(&h, &[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8], 8);
    assert_eq!(r.0[5], 1, "GESN: tray open");
    // Load: the medium reads again, without a unit attention.
    good(&packet(&h, &[0x1b, 0, 0, 0, 3], 0));
    assert!(!b.is_tray_open());
    good(&packet(&h, &[0x00], 0));
    assert_eq!(events.lock().unwrap().len(), 2);
    // SRST keeps the tray and the lock (our deviation from QEMU).
    good(&packet(&h, &[0x1e, 0, 0, 0, 1], 0));
    h.devctl(CTL_SRST);
    h.devctl(0);
    assert!(b.is_medium_locked());
}

#[test]
fn host_eject_request_while_locked() {
    let (b, _) = iso_backend("cd0", 16);
    let h = Host::new(cd(&b), None);
    h.select(0);
    good(&packet(&h, &[0x1e, 0, 0, 0, 1], 0));
    h.inb(REG_STATUS);
    b.eject_request(false);
    assert!(h.irq());
    assert!(b.is_medium_locked() && !b.is_tray_open());
    let r = packet(&h, &[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8], 8);
    good(&r);
    assert_eq!(&r.0[4..6], &[1, 2], "eject request, medium present");
    let r = packet(&h, &[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8], 8);
    assert_eq!(r.0[4], 0, "reported once");
    // Not polled: invalid field; another class: no event available.
    packet(&h, &[0x4a, 0, 0, 0, 0x10, 0, 0, 0, 8], 8);
    assert_eq!(sense(&h), (5, 0x24, 0));
    let r = packet(&h, &[0x4a, 1, 0, 0, 0x02, 0, 0, 0, 8], 8);
    assert_eq!(r.0, [0, 0, 0x80, 0x10]);
    // A forced request unlocks; the VMM then opens the tray.
    b.eject_request(true);
    assert!(!b.is_medium_locked());
    b.change_media(false);
    assert!(b.is_tray_open());
}

#[test]
fn empty_cd_drive() {
    let b = Arc::new(BlockBackend::new("cd0"));
    let h = Host::new(cd(&b), None);
    h.select(0);
    let r = packet(&h, &[0x12, 0, 0, 0, 36], 36);
    good(&r);
    packet(&h, &[0x00], 0);
    assert_eq!(sense(&h), (2, 0x3a, 1));
    packet(&h, &[0x25], 8);
    assert_eq!(sense(&h), (2, 0x3a, 1));
    let r = packet(&h, &[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8], 8);
    assert_eq!(&r.0[4..6], &[0, 0]);
    let r = packet(&h, &[0x46, 0, 0, 0, 0, 0, 0, 0, 255], 0xfffe);
    assert_eq!(&r.0[6..8], &[0, 0], "no current profile");
    // Locked and empty: eject refused with ILLEGAL REQUEST.
    good(&packet(&h, &[0x1e, 0, 0, 0, 1], 0));
    packet(&h, &[0x1b, 0, 0, 0, 2], 0);
    assert_eq!(sense(&h), (5, 0x53, 2));
    // The host inserts a medium and closes the tray.
    let (_, d) = iso_backend("x", 4);
    b.insert_medium(d, "new.iso").unwrap();
    b.change_media(true);
    packet(&h, &[0x00], 0);
    packet(&h, &[0x00], 0);
    assert_eq!(sense(&h), (6, 0x28, 0));
    let r = packet(&h, &[0x28, 0, 0, 0, 0, 3, 0, 0, 1], 2048);
    assert_eq!(r.0, iso_sector(3));
}

#[test]
fn werror_stop_keeps_the_write_and_resume_retries_it() {
    let d = TestDisk::new(DISK_BYTES, true);
    let inj = Arc::new(InjectDriver::new(d.clone()));
    let b = Arc::new(BlockBackend::new("hd0"));
    b.insert_medium(inj.clone(), "disk.img").unwrap();
    b.set_on_error(OnError::Report, OnError::Stop).unwrap();
    let h = Host::new(disk(&b), None);
    h.select(0);
    inj.add_rule(Rule { op: Some(Op::Write), sectors: None, errno: 5, count: Count::Once });
    let data = pattern(1, 1024);
    h.cmd28(0x30, 10, 2);
    h.outsw(&data[..512]);
    assert!(!h.irq(), "no completion while stopped");
    assert_eq!(h.raises(), 0);
    assert!(h.ch.lock().unwrap().has_held_command());
    assert_eq!(h.alt() & (DRQ | ERR), 0);
    assert_eq!(d.data()[10 * 512], 0);
    assert_eq!(b.stats().get(Op::Write).failed, 0);
    h.ch.lock().unwrap().resume();
    assert!(!h.ch.lock().unwrap().has_held_command());
    assert!(h.irq(), "the retried block completes");
    assert_eq!(h.inb(REG_STATUS), DRDY | DSC | DRQ, "and asks for the next");
    h.outsw(&data[512..]);
    assert_eq!(h.inb(REG_STATUS), DRDY | DSC);
    assert_eq!(&d.data()[10 * 512..12 * 512], &data[..]);
    assert_eq!(b.stats().get(Op::Write).ops, 2);

    // werror=report: ABRT. A flush under stop is held and retried.
    b.set_on_error(OnError::Report, OnError::Report).unwrap();
    inj.add_rule(Rule { op: Some(Op::Write), sectors: None, errno: 5, count: Count::Once });
    h.cmd28(0x30, 10, 1);
    h.outsw(&data[..512]);
    assert_eq!((h.inb(REG_STATUS), h.inb(REG_ERROR)), (DRDY | ERR, ABRT));
    b.set_on_error(OnError::Stop, OnError::Stop).unwrap();
    inj.add_rule(Rule { op: Some(Op::Flush), sectors: None, errno: 5, count: Count::Once });
    h.outb(REG_STATUS, 0xe7);
    assert!(h.ch.lock().unwrap().has_held_command() && !h.irq());
    h.ch.lock().unwrap().resume();
    assert!(h.irq());
    assert_eq!(h.inb(REG_STATUS), DRDY | DSC);
    // A read error under rerror=stop, then resumed.
    inj.add_rule(Rule { op: Some(Op::Read), sectors: None, errno: 5, count: Count::Once });
    h.cmd28(0x20, 10, 1);
    assert!(h.ch.lock().unwrap().has_held_command() && !h.irq());
    h.ch.lock().unwrap().resume();
    assert!(h.irq());
    assert_eq!(h.insw(512), data[..512]);
}

#[test]
fn rerror_applies_to_cd_reads() {
    let (_, d) = iso_backend("x", 16);
    let inj = Arc::new(InjectDriver::new(d));
    let b = Arc::new(BlockBackend::new("cd0"));
    b.insert_medium(inj.clone(), "cd.iso").unwrap();
    let h = Host::new(cd(&b), None);
    h.select(0);
    // report: ILLEGAL REQUEST / 0x21 (QEMU's ide_atapi_io_error).
    inj.add_rule(Rule { op: Some(Op::Read), sectors: None, errno: 5, count: Count::Once });
    packet(&h, &[0x28, 0, 0, 0, 0, 2, 0, 0, 1], 2048);
    assert_eq!(sense(&h), (5, 0x21, 0));
    assert_eq!(b.stats().get(Op::Read).failed, 1);
    // stop: held, then resumed with the data.
    b.set_on_error(OnError::Stop, OnError::Report).unwrap();
    inj.add_rule(Rule { op: Some(Op::Read), sectors: None, errno: 5, count: Count::Once });
    h.inb(REG_STATUS);
    h.outb(REG_LCYL, 0);
    h.outb(REG_HCYL, 8);
    h.outb(REG_STATUS, 0xa0);
    h.outsw(&[0x28, 0, 0, 0, 0, 2, 0, 0, 1, 0, 0, 0]);
    assert!(!h.irq() && h.ch.lock().unwrap().has_held_command());
    h.ch.lock().unwrap().resume();
    assert!(h.irq());
    assert_eq!(h.inb(REG_STATUS), DRDY | DSC | DRQ);
    assert_eq!(h.insw(2048), iso_sector(2));
    assert_eq!(h.inb(REG_STATUS), DRDY | DSC);
}

#[test]
fn block_layer_callbacks_do_not_need_the_channel_lock() {
    let (b, _) = iso_backend("cd0", 16);
    let h = Host::new(cd(&b), None);
    // Hold the channel's lock, as a vCPU doing PIO does, and call every
    // callback from another thread: none may wait for it.
    let g = h.ch.lock().unwrap();
    let b2 = b.clone();
    let t = std::thread::spawn(move || {
        b2.is_tray_open();
        b2.is_medium_locked();
        b2.eject_request(false);
        b2.change_media(false);
        b2.change_media(true);
        b2.drain();
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !t.is_finished() {
        assert!(std::time::Instant::now() < deadline, "a callback waits for the channel's lock");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    drop(g);
    t.join().unwrap();
}

#[test]
fn garbage_never_panics() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..6 {
        let (hd, _) = disk_backend("hd");
        let (cdb, _) = iso_backend("cd", 8);
        let (m, s) = match round % 3 {
            0 => (disk(&hd), cd(&cdb)),
            1 => (cd(&cdb), None),
            _ => (disk(&hd), None),
        };
        let h = Host::new(m, s);
        for _ in 0..3000 {
            let r = rnd();
            let v = (r >> 8) as u8;
            match r % 9 {
                0 => h.outb((r >> 16) % 8, v),
                1 => {
                    h.inb((r >> 16) % 8);
                }
                2 => h.devctl(v & !CTL_SRST),
                3 => {
                    h.insw(((r >> 16) % 4096) as usize * 2);
                }
                4 => {
                    let d: Vec<u8> = (0..((r >> 16) % 2048)).map(|_| rnd() as u8).collect();
                    h.outsw(&d);
                }
                5 => {
                    // A packet with a random CDB.
                    let mut cdb = [0u8; 12];
                    for c in &mut cdb {
                        *c = rnd() as u8;
                    }
                    cdb[0] = [0x00, 0x03, 0x12, 0x1b, 0x1e, 0x25, 0x28, 0x2b, 0x43, 0x46, 0x4a, 0x51, 0x5a, 0xa8, 0xad, 0xbb, 0xbd, 0xbe][(r >> 16) as usize % 18];
                    h.outb(REG_LCYL, v);
                    h.outb(REG_HCYL, (r >> 24) as u8);
                    h.outb(REG_STATUS, 0xa0);
                    h.outsw(&cdb);
                }
                6 => {
                    let mut d = [0u8; 4];
                    h.ch.lock().unwrap().read(REG_DATA, &mut d);
                    h.ch.lock().unwrap().write(REG_DATA, &d[..(r >> 16) as usize % 5]);
                }
                7 => match (r >> 16) % 6 {
                    0 => cdb.change_media(v & 1 == 0),
                    1 => cdb.eject_request(v & 1 == 0),
                    2 => h.ch.lock().unwrap().resume(),
                    3 => h.devctl(CTL_SRST),
                    _ => {
                        let mut d = vec![0u8; 64];
                        h.ch.lock().unwrap().read_string((r >> 20) % 8, 1 + (v as usize % 4), &mut d);
                    }
                },
                _ => h.outb(REG_STATUS, v),
            }
        }
    }
}

#[test]
fn through_the_port_bus() {
    // As the VMM maps it: command block at 0x1f0, control at 0x3f6; one
    // `rep insw` of a sector is one string access.
    let (b, d) = disk_backend("hd0");
    d.data()[512..1024].copy_from_slice(&pattern(5, 512));
    let h = Host::new(disk(&b), None);
    let mut bus = devices::Bus::new();
    bus.insert(h.ch.clone(), 0x1f0, 8).unwrap();
    bus.insert(h.ctl.clone(), 0x3f6, 1).unwrap();
    assert!(bus.write(0x3f6, &[CTL_NIEN]));
    for (port, v) in [(0x1f2u64, 1u8), (0x1f3, 1), (0x1f4, 0), (0x1f5, 0), (0x1f6, 0xe0), (0x1f7, 0x20)] {
        assert!(bus.write(port, &[v]));
    }
    let mut st = [0u8];
    assert!(bus.read(0x3f6, &mut st));
    assert_eq!(st[0], DRDY | DSC | DRQ);
    let mut sector = [0u8; 512];
    assert!(bus.read_string(0x1f0, 2, &mut sector));
    assert_eq!(sector.to_vec(), pattern(5, 512));
    assert!(bus.read(0x1f7, &mut st));
    assert_eq!(st[0], DRDY | DSC);
    assert!(!bus.read(0x3f7, &mut st), "0x3f7 is the floppy's");
}

#[test]
fn lba48_past_2_28_on_a_sparse_raw_image() {
    use block::drivers::raw::RawFile;
    use block::CacheMode;
    use std::os::unix::fs::FileExt;
    // 200 GiB, sparse: an LBA past 2^28 needs the HOB bytes.
    let path = std::env::temp_dir().join(format!("ide-lba48-{}", std::process::id()));
    let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    if f.set_len(200 << 30).is_err() {
        eprintln!("SKIPPED: no 200 GiB sparse file in the temp dir");
        return;
    }
    let b = Arc::new(BlockBackend::new("hd0"));
    b.insert_medium(Arc::new(RawFile::open(&path, false, CacheMode::Writeback).unwrap()), "big.img").unwrap();
    let h = Host::new(disk(&b), None);
    let lba: u64 = (1 << 28) + 0x34_5678;
    let data = pattern(77, 1024);
    h.cmd48(0x34, lba, 2);
    h.outsw(&data);
    assert_eq!(h.inb(REG_STATUS), DRDY | DSC);
    let mut on_disk = vec![0u8; 1024];
    f.read_exact_at(&mut on_disk, lba * 512).unwrap();
    assert_eq!(on_disk, data);
    h.cmd48(0x24, lba, 2);
    let got = [h.insw(512), h.insw(512)].concat();
    assert_eq!(got, data);
    // The registers hold the next LBA, high bytes through HOB.
    h.devctl(CTL_HOB);
    let hob = [h.inb(REG_SECTOR), h.inb(REG_LCYL), h.inb(REG_HCYL)];
    h.devctl(0);
    let lo = [h.inb(REG_SECTOR), h.inb(REG_LCYL), h.inb(REG_HCYL)];
    let next = (0..3).fold(0u64, |a, i| a | u64::from(lo[i]) << (8 * i) | u64::from(hob[i]) << (24 + 8 * i));
    assert_eq!(next, lba + 2);
    // IDENTIFY: the 28-bit capacity saturates, the 48-bit one is exact.
    h.outb(REG_STATUS, 0xec);
    let id = h.insw(512);
    assert_eq!((word(&id, 60), word(&id, 61)), (0xffff, 0x0fff));
    let n = (0..4).fold(0u64, |a, i| a | (u64::from(word(&id, 100 + i)) << (16 * i)));
    assert_eq!(n, (200u64 << 30) / 512);
    drop(h);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn device_reset_keeps_the_tray_and_power_reset_unlocks() {
    let (b, _) = iso_backend("cd0", 16);
    let h = Host::new(cd(&b), None);
    h.select(0);
    good(&packet(&h, &[0x1e, 0, 0, 0, 1], 0));
    // DEVICE RESET in the middle of a CDB (DRQ set) is still accepted.
    h.outb(REG_LCYL, 8);
    h.outb(REG_STATUS, 0xa0);
    assert_ne!(h.alt() & DRQ, 0);
    h.inb(REG_STATUS);
    h.outb(REG_STATUS, 0x08);
    assert_eq!(h.alt(), 0, "status 0 after DEVICE RESET");
    assert_eq!((h.inb(REG_LCYL), h.inb(REG_HCYL)), (0x14, 0xeb));
    assert!(!h.irq(), "no IRQ for DEVICE RESET");
    assert!(b.is_medium_locked(), "the lock survives DEVICE RESET");
    good(&packet(&h, &[0x00], 0));
    // A power cycle (system reset) unlocks.
    h.ch.lock().unwrap().reset();
    assert!(!b.is_medium_locked());
    assert!(!h.irq());
}

/// QEMU's four policies on the ATA disk for reads, writes and flushes and
/// both errnos, with a retry that fails again under stop: report aborts
/// the command (ABRT), ignore completes it, stop (and enospc on ENOSPC)
/// holds it with no completion and the matching iostatus until a resume
/// retries it (held again if it fails again); enospc on EIO reports.
#[test]
fn every_policy_for_every_ata_operation_and_errno() {
    use block::IoStatus;
    for op in [Op::Read, Op::Write, Op::Flush] {
        for policy in [OnError::Report, OnError::Ignore, OnError::Stop, OnError::Enospc] {
            if op == Op::Read && policy == OnError::Enospc {
                continue;
            }
            for errno in [libc::EIO, libc::ENOSPC] {
                for failures in [1u32, 2] {
                    let what = format!("{op:?} {policy:?} errno {errno} x{failures}");
                    let d = TestDisk::new(DISK_BYTES, true);
                    let inj = Arc::new(InjectDriver::new(d.clone()));
                    let b = Arc::new(BlockBackend::new("hd0"));
                    b.insert_medium(inj.clone(), "disk.img").unwrap();
                    let (r, w) = if op == Op::Read { (policy, OnError::Report) } else { (OnError::Report, policy) };
                    b.set_on_error(r, w).unwrap();
                    b.iostatus_enable();
                    let h = Host::new(disk(&b), None);
                    h.select(0);
                    let data = pattern(7, 512);
                    d.data()[10 * 512..11 * 512].copy_from_slice(&data);
                    inj.add_rule(Rule { op: Some(op), sectors: None, errno, count: Count::Times(failures) });
                    match op {
                        Op::Read => h.cmd28(0x20, 10, 1),
                        Op::Write => {
                            h.cmd28(0x30, 10, 1);
                            h.outsw(&data);
                        }
                        _ => h.outb(REG_STATUS, 0xe7),
                    }
                    let stops = policy == OnError::Stop || (policy == OnError::Enospc && errno == libc::ENOSPC);
                    if !stops {
                        assert!(h.irq(), "{what}: completes");
                        let (st, err) = (h.inb(REG_STATUS), h.inb(REG_ERROR));
                        if policy == OnError::Ignore {
                            assert_eq!(st & ERR, 0, "{what}: ignored");
                        } else {
                            assert_eq!((st & ERR, err), (ERR, ABRT), "{what}: reported");
                        }
                        continue;
                    }
                    let want_io = if errno == libc::ENOSPC { IoStatus::NoSpace } else { IoStatus::Failed };
                    for round in 0..failures {
                        assert!(h.ch.lock().unwrap().has_held_command(), "{what}: held in round {round}");
                        assert!(!h.irq(), "{what}: no completion while held");
                        assert_eq!(b.iostatus(), Some(want_io), "{what}");
                        b.iostatus_reset();
                        h.ch.lock().unwrap().resume();
                    }
                    assert!(!h.ch.lock().unwrap().has_held_command(), "{what}");
                    assert!(h.irq(), "{what}: completes after the retry");
                    let st = h.inb(REG_STATUS);
                    assert_eq!(st & ERR, 0, "{what}: the guest never sees the error");
                    if op == Op::Read {
                        assert_eq!(st & DRQ, DRQ, "{what}");
                        assert_eq!(h.insw(512), data, "{what}");
                    }
                    if op == Op::Write {
                        assert_eq!(&d.data()[10 * 512..11 * 512], &data[..], "{what}");
                    }
                }
            }
        }
    }
}

/// rerror on the CD-ROM (its only operation is a read): report gives the
/// guest ILLEGAL REQUEST / 0x21, ignore the data, stop holds the command
/// until a resume retries it (held again if it fails again).
#[test]
fn every_read_policy_on_the_cd_rom() {
    use block::IoStatus;
    for policy in [OnError::Report, OnError::Ignore, OnError::Stop] {
        for errno in [libc::EIO, libc::ENOSPC] {
            for failures in [1u32, 2] {
                let what = format!("{policy:?} errno {errno} x{failures}");
                let (_, d) = iso_backend("x", 16);
                let inj = Arc::new(InjectDriver::new(d));
                let b = Arc::new(BlockBackend::new("cd0"));
                b.insert_medium(inj.clone(), "cd.iso").unwrap();
                b.set_on_error(policy, OnError::Report).unwrap();
                b.iostatus_enable();
                let h = Host::new(cd(&b), None);
                h.select(0);
                // Clear the power-on UNIT ATTENTION first.
                sense(&h);
                inj.add_rule(Rule { op: Some(Op::Read), sectors: None, errno, count: Count::Times(failures) });
                h.inb(REG_STATUS);
                h.outb(REG_LCYL, 0);
                h.outb(REG_HCYL, 8);
                h.outb(REG_STATUS, 0xa0);
                h.outsw(&[0x28, 0, 0, 0, 0, 2, 0, 0, 1, 0, 0, 0]);
                if policy != OnError::Stop {
                    assert!(h.irq(), "{what}");
                    let st = h.inb(REG_STATUS);
                    if policy == OnError::Report {
                        assert_eq!(st & ERR, ERR, "{what}: reported");
                        assert_eq!(sense(&h), (5, 0x21, 0), "{what}");
                    } else {
                        assert_eq!(st & (ERR | DRQ), DRQ, "{what}: ignored, data phase");
                    }
                    continue;
                }
                let want = if errno == libc::ENOSPC { IoStatus::NoSpace } else { IoStatus::Failed };
                for round in 0..failures {
                    assert!(h.ch.lock().unwrap().has_held_command() && !h.irq(), "{what}: held in round {round}");
                    assert_eq!(b.iostatus(), Some(want), "{what}");
                    b.iostatus_reset();
                    h.ch.lock().unwrap().resume();
                }
                assert!(h.irq(), "{what}");
                assert_eq!(h.inb(REG_STATUS), DRDY | DSC | DRQ, "{what}");
                assert_eq!(h.insw(2048), iso_sector(2), "{what}");
            }
        }
    }
}
