//! Caller buffers as the kernel sees them. Asynchronous requests outlive the
//! borrow that made them (a virtio device hands in guest memory, the
//! completion comes later on another thread), so they carry raw segments
//! whose validity the submitter promises, not Rust slices.

use std::io::{IoSlice, IoSliceMut};

/// One buffer segment: `struct iovec`, and by the standard library's
/// guarantee also the layout of `IoSlice`/`IoSliceMut`.
#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
pub struct IoVec(libc::iovec);

// SAFETY: an IoVec is an address and a length; whoever builds a request from
// it promises the memory stays valid until the request completes, on
// whichever thread that happens.
unsafe impl Send for IoVec {}
unsafe impl Sync for IoVec {}

impl IoVec {
    pub fn new(base: *mut u8, len: usize) -> Self {
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

    /// Views borrowed slices as segments (no copy).
    pub fn from_slices<'a>(iov: &'a [IoSlice<'_>]) -> &'a [IoVec] {
        // SAFETY: IoSlice is ABI-compatible with iovec on Unix, and so is IoVec.
        unsafe { std::slice::from_raw_parts(iov.as_ptr().cast(), iov.len()) }
    }

    /// Views borrowed mutable slices as segments (no copy).
    pub fn from_mut_slices<'a>(iov: &'a mut [IoSliceMut<'_>]) -> &'a [IoVec] {
        // SAFETY: as above; the exclusive borrow covers every later write.
        unsafe { std::slice::from_raw_parts(iov.as_ptr().cast(), iov.len()) }
    }

    /// The segments as `IoSlice`s for a driver call.
    ///
    /// # Safety
    /// Every segment must be valid for reads for the returned lifetime.
    pub unsafe fn as_slices<'a>(iov: &'a [IoVec]) -> &'a [IoSlice<'a>] {
        std::slice::from_raw_parts(iov.as_ptr().cast(), iov.len())
    }

    /// The segments as `IoSliceMut`s for a driver call.
    ///
    /// # Safety
    /// Every segment must be valid for writes, and not otherwise accessed,
    /// for the returned lifetime.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slices<'a>(iov: &'a [IoVec]) -> &'a mut [IoSliceMut<'a>] {
        std::slice::from_raw_parts_mut(iov.as_ptr() as *mut IoSliceMut<'a>, iov.len())
    }

    pub fn as_iovec_ptr(iov: &[IoVec]) -> *const libc::iovec {
        iov.as_ptr().cast()
    }
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
            // SAFETY: n < len, so the new base stays inside the segment.
            *v = IoVec::new(unsafe { v.base().add(n) }, v.len() - n);
            break;
        }
    }
    iov.drain(..done);
}

/// Copies `src` into the segments one after another. `src` must hold at
/// least as many bytes as the segments together (a bounce buffer).
pub fn scatter(src: &[u8], iov: &mut [IoSliceMut<'_>]) {
    let mut pos = 0;
    for v in iov {
        let n = v.len();
        v.copy_from_slice(&src[pos..pos + n]);
        pos += n;
    }
}

/// Copies the segments one after another into the start of `dst`, which
/// must have room for all of them.
pub fn gather(iov: &[IoSlice<'_>], dst: &mut [u8]) {
    let mut pos = 0;
    for v in iov {
        dst[pos..pos + v.len()].copy_from_slice(v);
        pos += v.len();
    }
}

/// Fills every segment with zeros: the unread tail past end of file.
///
/// # Safety
/// Every segment must be valid for writes.
pub unsafe fn zero(iov: &[IoVec]) {
    for v in iov {
        std::ptr::write_bytes(v.base(), 0, v.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_drops_whole_and_partial_segments() {
        let mut a = [0u8; 4];
        let mut b = [0u8; 6];
        let mut v = vec![IoVec::new(a.as_mut_ptr(), 4), IoVec::new(b.as_mut_ptr(), 6)];
        advance(&mut v, 5);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].base() as usize, b.as_ptr() as usize + 1);
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
        // SAFETY: buf is live and not otherwise used meanwhile.
        unsafe { zero(v) };
        assert_eq!(buf, [0, 0, 0]);
    }

    #[test]
    fn scatter_and_gather_cross_segments() {
        let (mut a, mut b) = ([0u8; 2], [0u8; 3]);
        scatter(&[1, 2, 3, 4, 5, 6], &mut [IoSliceMut::new(&mut a), IoSliceMut::new(&mut b)]);
        assert_eq!((a, b), ([1, 2], [3, 4, 5]));
        let mut dst = [0u8; 6];
        gather(&[IoSlice::new(&a), IoSlice::new(&b)], &mut dst);
        assert_eq!(dst, [1, 2, 3, 4, 5, 0]);
    }
}
