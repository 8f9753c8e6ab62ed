//! Turns one descriptor chain into a block request, trusting nothing.
//!
//! Framing follows the spec rather than Linux's habits: the 16-byte header
//! and the data may be split across descriptors in any way; the readable
//! descriptors come first, the writable ones after, and the very last
//! writable byte is the status. Two outcomes for a bad chain:
//! - the status byte is usable (the last descriptor is writable and in
//!   RAM): the request completes with IOERR (or UNSUPP for unknown types);
//! - it is not (loop, bad index, bad indirect table, too long, no writable
//!   tail, status outside RAM): nothing can be reported, so the device is
//!   marked DEVICE_NEEDS_RESET by the caller.
//!
//! Every buffer handed to the block layer is a host pointer obtained from
//! `GuestMemory::get_slice`, which only succeeds for a range inside one RAM
//! region: no request can reach memory outside guest RAM.

use ::block::{IoVec, Op, Request};
use virtio_bindings::virtio_blk::*;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::super::GuestMemory;

pub const SECTOR: u64 = 512;
const HEADER_LEN: u64 = 16;
/// Longer chains are refused (the device offers SEG_MAX = queue size - 2;
/// indirect tables could otherwise carry 65535 entries).
pub const MAX_DESCRIPTORS: usize = 1024;
/// GET_ID answers with at most this many bytes (VIRTIO_BLK_ID_BYTES).
pub const ID_BYTES: usize = 20;

/// Where the request's completion goes.
#[derive(Debug, Clone, Copy)]
pub struct Head {
    pub index: u16,
    pub status: GuestAddress,
    /// Bytes written into the chain: the status byte, plus the data of a
    /// read (all of it, even when the read fails part way, as QEMU) or the
    /// ID of GET_ID.
    pub used_len: u32,
}

#[derive(Debug)]
pub enum Parsed {
    /// Needs the block layer (its token is set by the caller).
    Io(Request),
    /// Answered without I/O (GET_ID, UNSUPP, IOERR for a bad chain).
    Done(u8),
    /// A bad sector or range: IOERR, accounted as an invalid request of
    /// this kind (QEMU's block_acct_invalid).
    Invalid(Op),
}

/// The chain cannot be answered: the device needs a reset.
#[derive(Debug, PartialEq, Eq)]
pub struct Broken;

/// What a request is checked against.
pub struct Limits<'a> {
    pub capacity: u64,
    pub serial: &'a [u8],
}

type Seg = (GuestAddress, u64);

/// Buffers `parse` reuses from one request to the next, so that parsing
/// allocates nothing once they have grown (the I/O thread owns one).
#[derive(Default)]
pub struct Scratch {
    descs: Vec<Descriptor>,
    readable: Vec<Seg>,
    writable: Vec<Seg>,
    out: Vec<Seg>,
}

fn ioerr() -> Parsed {
    Parsed::Done(VIRTIO_BLK_S_IOERR as u8)
}

/// `segs` without their first `n` bytes, into `out`.
fn skip(segs: &[Seg], mut n: u64, out: &mut Vec<Seg>) {
    out.clear();
    for &(a, l) in segs {
        if n >= l {
            n -= l;
            continue;
        }
        // n < l and a + l is in RAM (checked), so no overflow.
        out.push((a.unchecked_add(n), l - n));
        n = 0;
    }
}

fn total(segs: &[Seg]) -> u64 {
    segs.iter().map(|s| s.1).sum()
}

/// Copies the first `buf.len()` bytes of `segs` into `buf`.
fn gather(mem: &GuestMemory, segs: &[Seg], buf: &mut [u8]) -> Option<()> {
    let mut done = 0;
    for &(a, l) in segs {
        if done == buf.len() {
            break;
        }
        let n = (buf.len() - done).min(l as usize);
        mem.read_slice(&mut buf[done..done + n], a).ok()?;
        done += n;
    }
    (done == buf.len()).then_some(())
}

/// Copies `data` to the start of `segs` (as far as they reach).
fn scatter(mem: &GuestMemory, segs: &[Seg], data: &[u8]) -> Option<()> {
    let mut done = 0;
    for &(a, l) in segs {
        if done == data.len() {
            break;
        }
        let n = (data.len() - done).min(l as usize);
        mem.write_slice(&data[done..done + n], a).ok()?;
        done += n;
    }
    Some(())
}

/// Host iovecs for `segs`; None when any byte is outside guest RAM.
fn host_iov(mem: &GuestMemory, segs: &[Seg]) -> Option<Vec<IoVec>> {
    let mut iov = Vec::with_capacity(segs.len());
    for &(a, l) in segs {
        let s = mem.get_slice(a, l as usize).ok()?;
        // SAFETY: the range is inside one RAM region, which stays mapped for
        // the VM's life; the block layer reaches it only through raw
        // pointers and the kernel, never Rust references.
        iov.push(unsafe { IoVec::new(s.ptr_guard_mut().as_ptr(), l as usize) });
    }
    Some(iov)
}

/// Reads the chain's descriptors. Broken when the chain does not end
/// properly: the iterator stops silently on loops (its TTL), bad indexes
/// and bad indirect tables, and what it yielded last still says NEXT.
fn descriptors<M>(chain: DescriptorChain<M>, v: &mut Vec<Descriptor>) -> Result<(), Broken>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    v.clear();
    for d in chain {
        if v.len() == MAX_DESCRIPTORS {
            return Err(Broken);
        }
        v.push(d);
    }
    match v.last() {
        Some(d) if !d.has_next() => Ok(()),
        _ => Err(Broken),
    }
}

pub fn parse<M>(
    mem: &GuestMemory,
    chain: DescriptorChain<M>,
    limits: &Limits,
    scratch: &mut Scratch,
) -> Result<(Head, Parsed), Broken>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    let index = chain.head_index();
    let Scratch { descs, readable, writable, out } = scratch;
    descriptors(chain, descs)?;

    // The status byte: the last byte of the last descriptor, which must be
    // writable and in RAM.
    let last = descs.last().ok_or(Broken)?;
    if !last.is_write_only() || last.len() == 0 {
        return Err(Broken);
    }
    let status = last.addr().checked_add(u64::from(last.len()) - 1).ok_or(Broken)?;
    if mem.get_slice(status, 1).is_err() {
        return Err(Broken);
    }
    let first_writable = descs.iter().position(|d| d.is_write_only()).unwrap_or(descs.len());
    let mut head = Head { index, status, used_len: 1 };

    // From here on, every problem is reported through the status byte.
    // Buffers outside RAM are found where they are used: `host_iov`,
    // `gather` and `scatter` fail on them.
    let seg = |d: &Descriptor| (d.addr(), u64::from(d.len()));
    readable.clear();
    readable.extend(descs[..first_writable].iter().map(seg));
    writable.clear();
    for d in &descs[first_writable..] {
        if !d.is_write_only() {
            // A readable descriptor after a writable one: wrong direction.
            return Ok((head, ioerr()));
        }
        writable.push(seg(d));
    }
    // Without the status byte.
    if let Some(l) = writable.last_mut() {
        l.1 -= 1;
    }
    writable.retain(|s| s.1 > 0);
    let (readable, writable) = (&*readable, &*writable);

    let mut hdr = [0u8; HEADER_LEN as usize];
    if gather(mem, readable, &mut hdr).is_none() {
        return Ok((head, ioerr()));
    }
    let req_type = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let sector = u64::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15]]);
    skip(readable, HEADER_LEN, out);
    let out = &*out;

    let in_range = |offset: u64, len: u64| {
        len <= ::block::backend::MAX_REQUEST_BYTES
            && offset.checked_add(len).is_some_and(|end| end <= limits.capacity)
    };
    let parsed = match req_type {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            let (op, data) = if req_type == VIRTIO_BLK_T_IN { (Op::Read, writable) } else { (Op::Write, out) };
            let len = total(data);
            let offset = sector.checked_mul(SECTOR);
            // A write to a read-only drive goes to the block layer, whose
            // EPERM then meets the error policy and the accounting, as in
            // QEMU; only a bad range is refused here.
            match offset {
                Some(offset) if len.is_multiple_of(SECTOR) && in_range(offset, len) => match host_iov(mem, data) {
                    Some(iov) if op == Op::Read => {
                        // len <= MAX_REQUEST_BYTES, which fits in u32.
                        head.used_len += len as u32;
                        Parsed::Io(Request::read(offset, iov, 0))
                    }
                    Some(iov) => Parsed::Io(Request::write(offset, iov, 0)),
                    None => ioerr(),
                },
                _ => Parsed::Invalid(op),
            }
        }
        VIRTIO_BLK_T_FLUSH => Parsed::Io(Request::flush(0)),
        VIRTIO_BLK_T_GET_ID => {
            let mut id = [0u8; ID_BYTES];
            let n = limits.serial.len().min(ID_BYTES);
            id[..n].copy_from_slice(&limits.serial[..n]);
            let room = (total(writable) as usize).min(ID_BYTES);
            match scatter(mem, writable, &id[..room]) {
                Some(()) => {
                    head.used_len += room as u32;
                    Parsed::Done(VIRTIO_BLK_S_OK as u8)
                }
                None => ioerr(),
            }
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let zeroes = req_type == VIRTIO_BLK_T_WRITE_ZEROES;
            let mut seg = [0u8; 16];
            // One segment only (max_*_seg = 1 in the config space).
            if total(out) != 16 || gather(mem, out, &mut seg).is_none() {
                ioerr()
            } else {
                let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
                let count = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
                let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or_default());
                let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
                let offset = sector.checked_mul(SECTOR);
                let len = u64::from(count) * SECTOR;
                if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 || (!zeroes && unmap) {
                    // Unknown flags, or UNMAP on a discard: the spec says UNSUPP.
                    Parsed::Done(VIRTIO_BLK_S_UNSUPP as u8)
                } else {
                    match offset {
                        Some(offset) if in_range(offset, len) && zeroes => {
                            Parsed::Io(Request::write_zeroes(offset, len, unmap, 0))
                        }
                        Some(offset) if in_range(offset, len) => Parsed::Io(Request::discard(offset, len, 0)),
                        _ => Parsed::Invalid(if zeroes { Op::WriteZeroes } else { Op::Discard }),
                    }
                }
            }
        }
        _ => Parsed::Done(VIRTIO_BLK_S_UNSUPP as u8),
    };
    Ok((head, parsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_drops_whole_and_partial_segments() {
        let segs = [(GuestAddress(0x1000), 10), (GuestAddress(0x2000), 20)];
        let skipped = |n| {
            let mut out = vec![(GuestAddress(0), 1)];
            skip(&segs, n, &mut out);
            out
        };
        assert_eq!(skipped(0), segs.to_vec());
        assert_eq!(skipped(10), vec![(GuestAddress(0x2000), 20)]);
        assert_eq!(skipped(16), vec![(GuestAddress(0x2006), 14)]);
        assert!(skipped(30).is_empty());
        assert!(skipped(31).is_empty());
    }
}
