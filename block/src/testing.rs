//! Storage for tests of the block layer and of the devices above it:
//! RAM-backed, able to hold reads in flight until released (drain, reset
//! in the middle of I/O), and logging every request in arrival order
//! (retry order). Not for production use: it panics on a poisoned lock.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::driver::{AsyncMode, BlockDriver, Errno, IoResult};
use crate::iov::{copy_from_iov, copy_to_iov, total_len, IoVec};

/// Makes the block layer yield between the steps of its concurrency
/// handshakes (drain admission), for stress tests.
pub static WIDEN_RACES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[derive(Default)]
struct Gate {
    hold: bool,
    entered: usize,
}

pub struct TestDisk {
    data: Mutex<Vec<u8>>,
    log: Mutex<Vec<(char, u64)>>,
    gate: Mutex<Gate>,
    cv: Condvar,
    inline: bool,
}

impl TestDisk {
    /// `size` bytes of zeros. `inline`: requests run at submission on the
    /// submitting thread (deterministic order); otherwise on the pool.
    pub fn new(size: usize, inline: bool) -> Arc<TestDisk> {
        Arc::new(TestDisk {
            data: Mutex::new(vec![0; size]),
            log: Mutex::new(Vec::new()),
            gate: Mutex::new(Gate::default()),
            cv: Condvar::new(),
            inline,
        })
    }

    /// While set, reads wait before they touch the data.
    pub fn hold_reads(&self, hold: bool) {
        self.gate.lock().unwrap().hold = hold;
        self.cv.notify_all();
    }

    /// Waits until `n` reads have arrived (held or not); false on timeout.
    pub fn wait_reads(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.gate.lock().unwrap();
        while g.entered < n {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { return false };
            g = self.cv.wait_timeout(g, left).unwrap().0;
        }
        true
    }

    /// Every read ('r') and write ('w') so far, with its offset.
    pub fn log(&self) -> Vec<(char, u64)> {
        self.log.lock().unwrap().clone()
    }

    pub fn data(&self) -> MutexGuard<'_, Vec<u8>> {
        self.data.lock().unwrap()
    }
}

impl BlockDriver for TestDisk {
    fn name(&self) -> &'static str {
        "test"
    }
    fn size(&self) -> IoResult<u64> {
        Ok(self.data().len() as u64)
    }
    fn preadv(&self, offset: u64, iov: &[IoVec]) -> IoResult<()> {
        self.log.lock().unwrap().push(('r', offset));
        {
            let mut g = self.gate.lock().unwrap();
            g.entered += 1;
            self.cv.notify_all();
            while g.hold {
                g = self.cv.wait(g).unwrap();
            }
        }
        // SAFETY: a read's segments are valid for writes.
        unsafe { copy_to_iov(iov, 0, &self.data()[offset as usize..]) };
        Ok(())
    }
    fn pwritev(&self, offset: u64, iov: &[IoVec]) -> IoResult<()> {
        self.log.lock().unwrap().push(('w', offset));
        let end = offset as usize + total_len(iov) as usize;
        // SAFETY: a write's segments are valid for reads.
        unsafe { copy_from_iov(iov, 0, &mut self.data()[offset as usize..end]) };
        Ok(())
    }
    fn flush(&self) -> IoResult<()> {
        Ok(())
    }
    fn discard(&self, _: u64, _: u64) -> IoResult<()> {
        Ok(())
    }
    fn write_zeroes(&self, _: u64, _: u64, _: bool) -> IoResult<()> {
        Ok(())
    }
    fn truncate(&self, _: u64) -> IoResult<()> {
        Err(Errno::ENOTSUP)
    }
    fn async_mode(&self) -> AsyncMode {
        if self.inline {
            AsyncMode::Inline
        } else {
            AsyncMode::Blocking
        }
    }
}
