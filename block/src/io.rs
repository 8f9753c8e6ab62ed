//! Running one checked request on a driver (the role of QEMU's io.c):
//! O_DIRECT bounce buffers and read-modify-write for what the medium cannot
//! take as it is, the write gate around writes, discard split to the
//! driver's limit, and the flush that makes a write stable when the write
//! cache is off.
//!
//! Bounce memory is bounded: an unaligned request is moved through one
//! buffer of at most `BOUNCE_CHUNK` bytes, piece by piece, whatever its
//! length, so a guest sending 2 GiB with a misaligned buffer costs 1 MiB of
//! host memory per request in flight, not 2 GiB. An allocation that fails
//! is ENOMEM for that request.

use std::io::IoSliceMut;

use crate::align::AlignedBuf;
use crate::driver::{BlockDriver, Errno, IoResult};
use crate::gate::WriteGate;
use crate::iov::{copy_from_iov, copy_to_iov, IoVec};
use crate::request::Op;

/// The most bounce memory one request uses.
pub const BOUNCE_CHUNK: u64 = 1 << 20;

/// A request as the backend has decided to run it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Job {
    pub op: Op,
    pub offset: u64,
    pub len: u64,
    /// Write-zeroes may deallocate (the request asked and discard=unmap).
    pub unmap: bool,
    /// Make a write stable before it completes (write cache off).
    pub fua: bool,
}

/// Runs `job` to its end on this thread.
pub(crate) fn exec(gate: &WriteGate, drv: &dyn BlockDriver, job: Job, iov: &[IoVec]) -> IoResult<()> {
    let align = drv.request_alignment();
    let Job { op, offset, len, unmap, fua } = job;
    match op {
        // Nothing to move, so nothing to align: a zero-length request at an
        // odd offset must not read-modify-write a block (QEMU returns early
        // too).
        Op::Read | Op::Write if len == 0 => Ok(()),
        Op::Read if needs_bounce(align, offset, iov) => bounce_read(drv, offset, len, iov),
        Op::Read => drv.preadv(offset, iov),
        Op::Write if needs_bounce(align, offset, iov) => {
            let _excl = gate.exclusive(align);
            bounce_write(drv, offset, len, &|pos, dst| {
                // SAFETY: a write's segments are valid for reads.
                unsafe { copy_from_iov(iov, pos, dst) };
            })
        }
        Op::Write => {
            let _shared = gate.shared(align);
            drv.pwritev(offset, iov)
        }
        Op::Flush => drv.flush(),
        // Nothing to do, as in QEMU (fallocate would call it EINVAL).
        Op::Discard | Op::WriteZeroes if len == 0 => Ok(()),
        Op::Discard => {
            let _shared = gate.shared(align);
            discard(drv, offset, len)
        }
        // Unaligned edges are written as data so the bytes outside the
        // range stay intact.
        Op::WriteZeroes if !offset.is_multiple_of(align as u64) || !len.is_multiple_of(align as u64) => {
            let _excl = gate.exclusive(align);
            zeroes_unaligned(drv, offset, len, align as u64, unmap)
        }
        Op::WriteZeroes => {
            let _shared = gate.shared(align);
            drv.write_zeroes(offset, len, unmap)
        }
    }?;
    if fua && matches!(op, Op::Write | Op::WriteZeroes) {
        drv.flush()?;
    }
    Ok(())
}

/// Discard in pieces the driver takes. A host file system that cannot
/// discard (ENOTSUP) is success, as in QEMU: a discard is a hint, and a
/// guest's TRIM must never stop a VM under werror=stop.
fn discard(drv: &dyn BlockDriver, offset: u64, len: u64) -> IoResult<()> {
    let max = drv.max_discard().max(1);
    let mut done = 0;
    while done < len {
        let n = (len - done).min(max);
        match drv.discard(offset + done, n) {
            Ok(()) => {}
            Err(Errno::ENOTSUP) => return Ok(()),
            Err(e) => return Err(e),
        }
        done += n;
    }
    Ok(())
}

/// O_DIRECT wants offset, length and every buffer aligned.
pub(crate) fn needs_bounce(align: usize, offset: u64, iov: &[IoVec]) -> bool {
    if align <= 1 {
        return false;
    }
    let a = align as u64;
    if !offset.is_multiple_of(a) {
        return true;
    }
    let mut total = 0u64;
    for v in iov {
        if !(v.base() as usize).is_multiple_of(align) || !v.len().is_multiple_of(align) {
            return true;
        }
        total += v.len() as u64;
    }
    !total.is_multiple_of(a)
}

/// One aligned piece of a bounced request: it covers `[at, at + n)` of the
/// medium, of which `[lo, hi)` belongs to the request.
struct Piece {
    at: u64,
    n: u64,
    lo: u64,
    hi: u64,
}

/// Moves the request `[offset, offset + len)` through one bounce buffer of
/// at most `BOUNCE_CHUNK` bytes, in aligned pieces: `f(piece, its part of
/// the buffer)` for each, in order.
fn for_each_piece(
    drv: &dyn BlockDriver,
    offset: u64,
    len: u64,
    mut f: impl FnMut(&Piece, &mut [u8]) -> IoResult<()>,
) -> IoResult<()> {
    let align = drv.request_alignment() as u64;
    let start = offset - offset % align;
    let span = (offset + len).div_ceil(align) * align - start;
    // A power-of-two alignment up to 1 MiB divides BOUNCE_CHUNK.
    let chunk = BOUNCE_CHUNK.max(align).min(span);
    let mut buf = AlignedBuf::new(chunk as usize, align as usize)?;
    let end = offset + len;
    let mut at = start;
    while at < start + span {
        let n = chunk.min(start + span - at);
        let piece = Piece { at, n, lo: at.max(offset), hi: (at + n).min(end) };
        f(&piece, &mut buf.as_mut_slice()[..n as usize])?;
        at += n;
    }
    Ok(())
}

fn read_into(drv: &dyn BlockDriver, at: u64, buf: &mut [u8]) -> IoResult<()> {
    drv.preadv(at, IoVec::from_mut_slices(&mut [IoSliceMut::new(buf)]))
}

fn bounce_read(drv: &dyn BlockDriver, offset: u64, len: u64, iov: &[IoVec]) -> IoResult<()> {
    for_each_piece(drv, offset, len, |p, b| {
        read_into(drv, p.at, b)?;
        // SAFETY: a read's segments are valid for writes.
        unsafe { copy_to_iov(iov, (p.lo - offset) as usize, &b[(p.lo - p.at) as usize..(p.hi - p.at) as usize]) };
        Ok(())
    })
}

/// Writes `len` bytes at `offset` through aligned pieces: partial head and
/// tail blocks are read first so their other bytes survive, then
/// `fill(position in the request, destination)` supplies the data.
///
/// O_DIRECT writes whole blocks, so a write into the last, partial block of
/// a file whose size is not a multiple of the alignment writes past the
/// end; the file is then cut back to its size (or to the end of the write,
/// when writing beyond EOF is allowed), so a guest never grows its image.
/// The caller holds the write gate exclusively, so no other write can be
/// between the two.
fn bounce_write(drv: &dyn BlockDriver, offset: u64, len: u64, fill: &dyn Fn(usize, &mut [u8])) -> IoResult<()> {
    let align = drv.request_alignment() as u64;
    let end = offset + len;
    let size = drv.size()?;
    let written_end = (end.div_ceil(align) * align).max(end);
    bounce_pieces(drv, offset, len, align, fill)?;
    if written_end > size.max(end) {
        drv.truncate(size.max(end))?;
    }
    Ok(())
}

fn bounce_pieces(drv: &dyn BlockDriver, offset: u64, len: u64, align: u64, fill: &dyn Fn(usize, &mut [u8])) -> IoResult<()> {
    let end = offset + len;
    for_each_piece(drv, offset, len, |p, b| {
        let head = p.at < offset;
        if head {
            read_into(drv, p.at, &mut b[..align as usize])?;
        }
        // One block holding both ends was already read as the head.
        if p.at + p.n > end && !(head && p.n == align) {
            read_into(drv, p.at + p.n - align, &mut b[(p.n - align) as usize..])?;
        }
        fill((p.lo - offset) as usize, &mut b[(p.lo - p.at) as usize..(p.hi - p.at) as usize]);
        drv.pwritev(p.at, IoVec::from_mut_slices(&mut [IoSliceMut::new(b)]))
    })
}

fn zeroes_unaligned(drv: &dyn BlockDriver, offset: u64, len: u64, align: u64, unmap: bool) -> IoResult<()> {
    let zeros = |_: usize, dst: &mut [u8]| dst.fill(0);
    let end = offset + len;
    let inner_start = offset.div_ceil(align) * align;
    let inner_end = end - end % align;
    if inner_start >= inner_end {
        return bounce_write(drv, offset, len, &zeros);
    }
    if offset < inner_start {
        bounce_write(drv, offset, inner_start - offset, &zeros)?;
    }
    drv.write_zeroes(inner_start, inner_end - inner_start, unmap)?;
    if inner_end < end {
        bounce_write(drv, inner_end, end - inner_end, &zeros)?;
    }
    Ok(())
}
