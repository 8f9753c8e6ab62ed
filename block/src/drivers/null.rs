//! QEMU's null-co: a sized device that reads zeros and drops writes. It
//! measures the block layer's own per-request cost.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::driver::{AsyncMode, BlockDriver, IoResult};
use crate::iov::{zero, IoVec};

pub struct NullDriver {
    size: AtomicU64,
}

impl NullDriver {
    pub fn new(size: u64) -> Self {
        NullDriver { size: AtomicU64::new(size) }
    }
}

impl BlockDriver for NullDriver {
    fn name(&self) -> &'static str {
        "null"
    }
    fn size(&self) -> IoResult<u64> {
        Ok(self.size.load(Ordering::Relaxed))
    }
    fn preadv(&self, _offset: u64, iov: &[IoVec]) -> IoResult<()> {
        // SAFETY: a read's segments are valid for writes (IoVec::new).
        unsafe { zero(iov) };
        Ok(())
    }
    fn pwritev(&self, _offset: u64, _iov: &[IoVec]) -> IoResult<()> {
        Ok(())
    }
    fn flush(&self) -> IoResult<()> {
        Ok(())
    }
    fn discard(&self, _offset: u64, _len: u64) -> IoResult<()> {
        Ok(())
    }
    fn write_zeroes(&self, _offset: u64, _len: u64, _unmap: bool) -> IoResult<()> {
        Ok(())
    }
    fn truncate(&self, size: u64) -> IoResult<()> {
        self.size.store(size, Ordering::Relaxed);
        Ok(())
    }
    fn async_mode(&self) -> AsyncMode {
        AsyncMode::Inline
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{IoSlice, IoSliceMut};

    #[test]
    fn reads_zeros_and_resizes() {
        let d = NullDriver::new(4096);
        let mut buf = [7u8; 16];
        d.preadv(0, IoVec::from_mut_slices(&mut [IoSliceMut::new(&mut buf)])).unwrap();
        assert_eq!(buf, [0u8; 16]);
        d.pwritev(0, IoVec::from_slices(&[IoSlice::new(&[1, 2, 3])])).unwrap();
        d.truncate(8192).unwrap();
        assert_eq!(d.size().unwrap(), 8192);
    }
}
