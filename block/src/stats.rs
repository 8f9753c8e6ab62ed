//! Per-drive I/O accounting, as QEMU's query-blockstats reports it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::request::Op;

/// Read, write (with write-zeroes), flush, discard.
const KINDS: usize = 4;

#[derive(Default)]
struct Counters {
    ops: AtomicU64,
    bytes: AtomicU64,
    total_ns: AtomicU64,
    failed: AtomicU64,
    invalid: AtomicU64,
}

/// A snapshot of one operation kind's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpStats {
    /// Completed successfully.
    pub ops: u64,
    pub bytes: u64,
    pub total_time: Duration,
    /// Reached the storage and failed there.
    pub failed: u64,
    /// Refused by the device before reaching the block layer (a bad
    /// sector or range), as QEMU's block_acct_invalid.
    pub invalid: u64,
}

pub struct Stats {
    kinds: [Counters; KINDS],
    start: Instant,
    /// Nanoseconds after `start` of the last request, 0 for never.
    last_access_ns: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats { kinds: Default::default(), start: Instant::now(), last_access_ns: AtomicU64::new(0) }
    }
}

impl Stats {
    fn c(&self, op: Op) -> &Counters {
        let i = match op.acct() {
            Op::Read => 0,
            Op::Write | Op::WriteZeroes => 1,
            Op::Flush => 2,
            Op::Discard => 3,
        };
        &self.kinds[i]
    }

    fn touch(&self) {
        let ns = self.start.elapsed().as_nanos() as u64;
        self.last_access_ns.store(ns.max(1), Ordering::Relaxed);
    }

    pub fn done(&self, k: Op, bytes: u64, took: Duration) {
        let c = self.c(k);
        c.ops.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(bytes, Ordering::Relaxed);
        c.total_ns.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        self.touch();
    }

    pub fn failed(&self, k: Op) {
        self.c(k).failed.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    pub fn invalid(&self, k: Op) {
        self.c(k).invalid.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    pub fn get(&self, k: Op) -> OpStats {
        let c = self.c(k);
        OpStats {
            ops: c.ops.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            total_time: Duration::from_nanos(c.total_ns.load(Ordering::Relaxed)),
            failed: c.failed.load(Ordering::Relaxed),
            invalid: c.invalid.load(Ordering::Relaxed),
        }
    }

    /// Time since the last request, None if there never was one.
    pub fn idle_time(&self) -> Option<Duration> {
        match self.last_access_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(self.start.elapsed().saturating_sub(Duration::from_nanos(ns))),
        }
    }
}
