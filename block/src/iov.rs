//! Caller buffers as the kernel sees them. Asynchronous requests outlive the
//! borrow that made them (a virtio device hands in guest memory, the
//! completion comes later on another thread), so they carry raw segments
//! whose validity the builder promises, not Rust slices. Guest memory can
//! change under us at any time, so no Rust reference to it is ever made:
//! copies go through raw pointers, and drivers hand the segments to the
//! kernel as they are.

use std::io::{IoSlice, IoSliceMut};

/// One buffer segment: `struct iovec`, and by the standard library's
/// guarantee also the layout of `IoSlice`/`IoSliceMut`.
///
/// Neither `Copy` nor `Clone`: a segment viewed from a borrow
/// (`from_mut_slices`) must not outlive it, so owned segments come only
/// from `IoVec::new`, whose caller promises their validity.
#[repr(transparent)]
#[derive(Debug)]
pub struct IoVec(libc::iovec);

// SAFETY: an IoVec is an address and a length; whoever builds it promises
// the memory stays valid until the request completes, on whichever thread
// that happens.
unsafe impl Send for IoVec {}
unsafe impl Sync for IoVec {}

impl IoVec {
    /// # Safety
    /// `base` must be valid for reads and writes of `len` bytes for as long
    /// as any request carrying this segment can run, and nobody may hold a
    /// Rust reference to that memory meanwhile.
    pub unsafe fn new(base: *mut u8, len: usize) -> Self {
        IoVec(libc::iovec { iov_base: base.cast(), iov_len: len })
    }

    pub fn base(&self) -> *mut u8 {
        self.0.iov_base.cast()
    }

    pub fn len(&self) -> usize {
        self.0.iov_len
    }

    pub fn is_empty(&self) -> bool {
        self.0.iov_len == 0
    }

    /// Views borrowed slices as segments (no copy). Only reads may go
    /// through them, since the memory is shared: crate-private, for write
    /// requests, which drivers only read.
    pub(crate) fn from_slices<'a>(iov: &'a [IoSlice<'_>]) -> &'a [IoVec] {
        // SAFETY: IoSlice is ABI-compatible with iovec on Unix, and so is IoVec.
        unsafe { std::slice::from_raw_parts(iov.as_ptr().cast(), iov.len()) }
    }

    /// Views exclusively borrowed slices as segments (no copy).
    pub fn from_mut_slices<'a>(iov: &'a mut [IoSliceMut<'_>]) -> &'a [IoVec] {
        // SAFETY: as above; the exclusive borrow covers every later write.
        unsafe { std::slice::from_raw_parts(iov.as_ptr().cast(), iov.len()) }
    }

    pub fn as_iovec_ptr(iov: &[IoVec]) -> *const libc::iovec {
        iov.as_ptr().cast()
    }

    /// A second handle on the same memory, for requests the crate builds
    /// from one it holds (a retry, a short transfer's rest).
    pub(crate) fn dup(&self) -> IoVec {
        IoVec(self.0)
    }

    /// The segment `n` bytes further on (n <= len).
    fn skip(&self, n: usize) -> IoVec {
        debug_assert!(n <= self.len());
        // n <= len, so the new base stays inside (or one past) the segment.
        IoVec(libc::iovec { iov_base: self.base().wrapping_add(n).cast(), iov_len: self.len() - n })
    }
}

/// Second handles on a list of segments (see `IoVec::dup`).
pub(crate) fn dup_all(iov: &[IoVec]) -> Vec<IoVec> {
    iov.iter().map(IoVec::dup).collect()
}

/// Total bytes of a list of segments.
pub fn total_len(iov: &[IoVec]) -> u64 {
    iov.iter().map(|v| v.len() as u64).sum()
}

/// Drops the first `n` bytes from `iov`: whole segments, then part of one.
/// What a short read or write leaves to do.
pub fn advance(iov: &mut Vec<IoVec>, mut n: usize) {
    let mut done = 0;
    for v in iov.iter_mut() {
        if n >= v.len() {
            n -= v.len();
            done += 1;
        } else {
            *v = v.skip(n);
            break;
        }
    }
    iov.drain(..done);
}

/// Calls `f(segment part, position in src/dst)` for the bytes `pos ..
/// pos + len` of the segments, in order.
fn walk(iov: &[IoVec], mut pos: usize, len: usize, mut f: impl FnMut(*mut u8, usize, usize)) {
    let mut done = 0;
    for v in iov {
        if done == len {
            break;
        }
        if pos >= v.len() {
            pos -= v.len();
            continue;
        }
        let n = (v.len() - pos).min(len - done);
        f(v.base().wrapping_add(pos), n, done);
        done += n;
        pos = 0;
    }
}

/// Copies `src` into the segments, starting `pos` bytes into them (as far
/// as they reach). Returns the bytes copied.
///
/// # Safety
/// The segments must be valid for writes (as `IoVec::new` promises; a
/// driver's `preadv` may rely on it, its `pwritev` may not).
pub unsafe fn copy_to_iov(iov: &[IoVec], pos: usize, src: &[u8]) -> usize {
    let mut copied = 0;
    walk(iov, pos, src.len(), |p, n, at| {
        // SAFETY: the segment is valid for writes (IoVec::new's contract);
        // raw copies make no reference to memory a guest may be changing.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr().add(at), p, n) };
        copied += n;
    });
    copied
}

/// Copies bytes of the segments, starting `pos` bytes into them, into
/// `dst` (as far as they reach). Returns the bytes copied.
///
/// # Safety
/// The segments must be valid for reads.
pub unsafe fn copy_from_iov(iov: &[IoVec], pos: usize, dst: &mut [u8]) -> usize {
    let mut copied = 0;
    walk(iov, pos, dst.len(), |p, n, at| {
        // SAFETY: as in copy_to_iov, for reads.
        unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr().add(at), n) };
        copied += n;
    });
    copied
}

/// Fills every segment with zeros: the unread tail past end of file, the
/// null driver's reads.
///
/// # Safety
/// The segments must be valid for writes.
pub unsafe fn zero(iov: &[IoVec]) {
    for v in iov {
        // SAFETY: the segment is valid for writes (IoVec::new's contract).
        unsafe { std::ptr::write_bytes(v.base(), 0, v.len()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(b: &mut [u8]) -> IoVec {
        // SAFETY: the test's buffers outlive the segments and are only
        // reached through them meanwhile.
        unsafe { IoVec::new(b.as_mut_ptr(), b.len()) }
    }

    #[test]
    fn advance_drops_whole_and_partial_segments() {
        let mut a = [0u8; 4];
        let mut b = [0u8; 6];
        let bp = b.as_ptr() as usize;
        let mut v = vec![seg(&mut a), seg(&mut b)];
        advance(&mut v, 5);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].base() as usize, bp + 1);
        assert_eq!(v[0].len(), 5);
        advance(&mut v, 5);
        assert!(v.is_empty());
    }

    #[test]
    fn slices_round_trip_through_iovecs() {
        let mut buf = [1u8, 2, 3];
        let mut s = [IoSliceMut::new(&mut buf)];
        let v = IoVec::from_mut_slices(&mut s);
        assert_eq!((v[0].len(), total_len(v)), (3, 3));
        // SAFETY: the segment views the exclusively borrowed buf.
        unsafe { zero(v) };
        assert_eq!(buf, [0, 0, 0]);
    }

    #[test]
    fn copies_cross_segments_at_any_position() {
        let (mut a, mut b) = ([0u8; 2], [0u8; 3]);
        let v = [seg(&mut a), seg(&mut b)];
        // SAFETY: the segments cover a and b, which are only reached
        // through them until the last copy.
        unsafe {
            assert_eq!(copy_to_iov(&v, 0, &[1, 2, 3, 4, 5, 6]), 5);
            let mut dst = [0u8; 6];
            assert_eq!(copy_from_iov(&v, 0, &mut dst), 5);
            assert_eq!(dst, [1, 2, 3, 4, 5, 0]);
            assert_eq!(copy_to_iov(&v, 1, &[9, 8]), 2);
            let mut dst = [0u8; 3];
            assert_eq!(copy_from_iov(&v, 2, &mut dst), 3);
            assert_eq!(dst, [8, 4, 5]);
            assert_eq!(copy_from_iov(&v, 7, &mut dst), 0, "past the end");
        }
        assert_eq!((a, b), ([1, 9], [8, 4, 5]));
    }
}
