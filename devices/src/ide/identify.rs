//! IDENTIFY DEVICE (ATA disk) and IDENTIFY PACKET DEVICE (ATAPI CD-ROM)
//! data, built on every command from the current settings (QEMU caches
//! them, so its word 59 does not follow SET MULTIPLE; ours does).
//!
//! The words that would make Linux send commands we do not implement are
//! kept clear: word 2 (spin-up), 48 (trusted computing), 76 (SATA/NCQ),
//! 82 bit 10 (HPA → READ NATIVE MAX is implemented anyway), 84 bit 5 (GPL →
//! READ LOG EXT), 119/120 (sense reporting); word 80 says ATA-4..7.

use super::MAX_MULT_SECTORS;

pub const MODEL_DISK: &str = "RVMM HARDDISK";
pub const MODEL_CD: &str = "RVMM CD-ROM";
pub const FIRMWARE: &str = "1.0";

fn put(id: &mut [u8], word: usize, v: u16) {
    id[word * 2..word * 2 + 2].copy_from_slice(&v.to_le_bytes());
}

/// ATA strings: space padded, bytes swapped within each word (QEMU's
/// padstr writes character i at byte i^1).
fn put_str(id: &mut [u8], word: usize, words: usize, s: &str) {
    let b = s.as_bytes();
    for i in 0..words * 2 {
        id[word * 2 + (i ^ 1)] = b.get(i).copied().unwrap_or(b' ');
    }
}

/// IDENTIFY DEVICE for a PIO-only LBA48 disk of `sectors` 512-byte sectors.
pub fn ata(id: &mut [u8], serial: &str, sectors: u64, mult: u32, write_cache: bool) {
    id[..512].fill(0);
    let (cyls, heads, spt) = geometry(sectors);
    put(id, 0, 0x0040);
    put(id, 1, cyls as u16);
    put(id, 3, heads as u16);
    put(id, 6, spt as u16);
    put(id, 4, (512 * spt) as u16);
    put(id, 5, 512);
    put_str(id, 10, 10, serial);
    put(id, 20, 3);
    put(id, 21, 512);
    put(id, 22, 4);
    put_str(id, 23, 4, FIRMWARE);
    put_str(id, 27, 20, MODEL_DISK);
    put(id, 47, 0x8000 | MAX_MULT_SECTORS as u16);
    put(id, 49, 0x0a00); // IORDY, LBA
    put(id, 51, 0x0200);
    put(id, 52, 0x0200);
    put(id, 53, 0x0003); // words 54-58 and 64-70 valid
    put(id, 54, cyls as u16);
    put(id, 55, heads as u16);
    put(id, 56, spt as u16);
    let chs = u64::from(cyls) * u64::from(heads) * u64::from(spt);
    put(id, 57, chs as u16);
    put(id, 58, (chs >> 16) as u16);
    put(id, 59, 0x0100 | (mult as u16 & 0xff));
    let lba28 = sectors.min(0x0fff_ffff);
    put(id, 60, lba28 as u16);
    put(id, 61, (lba28 >> 16) as u16);
    put(id, 64, 0x0003); // PIO3, PIO4
    for w in 65..=68 {
        put(id, w, 120);
    }
    put(id, 80, 0x00f0); // ATA-4..7
    put(id, 81, 0x0016);
    put(id, 82, 0x4020); // NOP... write cache supported (bit 5), no HPA
    put(id, 83, 0x7400); // FLUSH EXT, FLUSH, LBA48
    put(id, 84, 0x4000);
    put(id, 85, 0x4000 | if write_cache { 0x20 } else { 0 });
    put(id, 86, 0x3400);
    put(id, 87, 0x4000);
    put(id, 93, 0x4001);
    for i in 0..4 {
        put(id, 100 + i, (sectors >> (16 * i)) as u16);
    }
    checksum(id);
}

/// IDENTIFY PACKET DEVICE for the CD-ROM (QEMU's ide_atapi_identify,
/// PIO only).
pub fn atapi(id: &mut [u8], serial: &str) {
    id[..512].fill(0);
    // ATAPI, CD-ROM, removable, accelerated DRQ (no CDB interrupt), 12-byte packets.
    put(id, 0, 0x85c0);
    put_str(id, 10, 10, serial);
    put(id, 20, 3);
    put(id, 21, 512);
    put(id, 22, 4);
    put_str(id, 23, 4, FIRMWARE);
    put_str(id, 27, 20, MODEL_CD);
    put(id, 49, 0x0200); // LBA, no DMA
    put(id, 53, 0x0003);
    put(id, 64, 0x0003);
    put(id, 65, 0xb4);
    put(id, 66, 0xb4);
    put(id, 67, 0x12c);
    put(id, 68, 0xb4);
    put(id, 71, 30);
    put(id, 72, 30);
    put(id, 80, 0x001e); // ATA/ATAPI-1..4
    checksum(id);
}

/// Word 255: signature 0xa5 and a checksum byte so that the 512 bytes sum
/// to 0 mod 256 (`hdparm -I` checks it).
fn checksum(id: &mut [u8]) {
    id[510] = 0xa5;
    let sum = id[..511].iter().fold(0u8, |a, b| a.wrapping_add(*b));
    id[511] = 0u8.wrapping_sub(sum);
}

/// The default logical geometry: (cylinders, heads, sectors per track).
pub fn geometry(sectors: u64) -> (u32, u32, u32) {
    let cyls = (sectors / (16 * 63)).clamp(1, 16383) as u32;
    (cyls, 16, 63)
}
