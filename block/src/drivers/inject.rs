//! Error and latency injection on top of another driver (QEMU's blkdebug,
//! simplified): error rules fail matching requests with a chosen errno,
//! once, N times or until removed; latency rules delay matching requests
//! and then let them through; everything else passes through untouched.
//! Rules can be added and removed while I/O runs, which is how the
//! werror/rerror tests drive a guest into and out of errors.
//!
//! A delay sleeps in whatever thread runs the request: an I/O queue's pool
//! thread for virtio-blk (so other drives, with their own pools, are not
//! held up), the vCPU thread for IDE's synchronous PIO.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::driver::{AsyncMode, BlockDriver, Errno, IoResult};
use crate::iov::{total_len, IoVec};
use crate::request::Op;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Once,
    Times(u32),
    UntilRemoved,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The operation it fails; None: any. Write-zeroes matches a Write
    /// rule too, as in QEMU's error accounting.
    pub op: Option<Op>,
    /// Inclusive 512-byte sector range the request must touch; None: any.
    /// A rule with a range never matches a flush, which has none.
    pub sectors: Option<(u64, u64)>,
    pub errno: i32,
    pub count: Count,
}

/// Slow storage: matching requests wait `delay`, then run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latency {
    pub op: Option<Op>,
    pub sectors: Option<(u64, u64)>,
    pub delay: Duration,
}

pub type RuleId = u64;

struct Armed {
    id: RuleId,
    rule: Rule,
    hits: u32,
}

/// An armed rule as `rules()` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArmedRule {
    Error { id: RuleId, rule: Rule, hits: u32 },
    Latency { id: RuleId, latency: Latency, hits: u32 },
}

struct Rules {
    next: RuleId,
    errors: Vec<Armed>,
    latencies: Vec<(RuleId, Latency, u32)>,
}

pub struct InjectDriver {
    inner: Arc<dyn BlockDriver>,
    rules: Mutex<Rules>,
}

fn overlaps(rule: Option<(u64, u64)>, range: Option<(u64, u64)>) -> bool {
    match (rule, range) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some((s, e)), Some((off, len))) => {
            let first = off / 512;
            let last = (off + len.max(1) - 1) / 512;
            first <= e && last >= s
        }
    }
}

impl InjectDriver {
    pub fn new(inner: Arc<dyn BlockDriver>) -> Self {
        InjectDriver { inner, rules: Mutex::new(Rules { next: 0, errors: Vec::new(), latencies: Vec::new() }) }
    }

    /// The driver underneath.
    pub fn inner(&self) -> &Arc<dyn BlockDriver> {
        &self.inner
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rules> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add_rule(&self, rule: Rule) -> RuleId {
        let mut g = self.lock();
        g.next += 1;
        let id = g.next;
        g.errors.push(Armed { id, rule, hits: 0 });
        id
    }

    pub fn add_latency(&self, latency: Latency) -> RuleId {
        let mut g = self.lock();
        g.next += 1;
        let id = g.next;
        g.latencies.push((id, latency, 0));
        id
    }

    /// False when no such rule is armed (it may have run out).
    pub fn remove_rule(&self, id: RuleId) -> bool {
        let mut g = self.lock();
        let before = g.errors.len() + g.latencies.len();
        g.errors.retain(|a| a.id != id);
        g.latencies.retain(|l| l.0 != id);
        g.errors.len() + g.latencies.len() != before
    }

    pub fn clear(&self) {
        let mut g = self.lock();
        g.errors.clear();
        g.latencies.clear();
    }

    /// How many rules (error and latency) are still armed.
    pub fn armed(&self) -> usize {
        let g = self.lock();
        g.errors.len() + g.latencies.len()
    }

    /// The armed rules, error rules first, each in the order added.
    pub fn rules(&self) -> Vec<ArmedRule> {
        let g = self.lock();
        let errors = g.errors.iter().map(|a| ArmedRule::Error { id: a.id, rule: a.rule.clone(), hits: a.hits });
        let lat = g.latencies.iter().map(|(id, l, hits)| ArmedRule::Latency { id: *id, latency: l.clone(), hits: *hits });
        errors.chain(lat).collect()
    }

    /// Waits out the first matching latency rule (outside the lock), then
    /// returns the first matching error rule's errno, counting the hit and
    /// disarming the rule when its count is used up.
    fn check(&self, op: Op, range: Option<(u64, u64)>) -> IoResult<()> {
        let matches = |rop: Option<Op>, sectors| rop.is_none_or(|r| r == op || r == op.acct()) && overlaps(sectors, range);
        let delay = {
            let mut g = self.lock();
            g.latencies.iter_mut().find(|(_, l, _)| matches(l.op, l.sectors)).map(|(_, l, hits)| {
                *hits += 1;
                l.delay
            })
        };
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        let mut g = self.lock();
        let Some(i) = g.errors.iter().position(|a| matches(a.rule.op, a.rule.sectors)) else { return Ok(()) };
        let armed = &mut g.errors[i];
        armed.hits += 1;
        let errno = armed.rule.errno;
        let done = match armed.rule.count {
            Count::Once => true,
            Count::Times(n) => armed.hits >= n,
            Count::UntilRemoved => false,
        };
        if done {
            g.errors.remove(i);
        }
        Err(Errno(errno))
    }
}

impl BlockDriver for InjectDriver {
    fn name(&self) -> &'static str {
        "inject"
    }
    fn size(&self) -> IoResult<u64> {
        self.inner.size()
    }
    fn preadv(&self, offset: u64, iov: &[IoVec]) -> IoResult<()> {
        self.check(Op::Read, Some((offset, total_len(iov))))?;
        self.inner.preadv(offset, iov)
    }
    fn pwritev(&self, offset: u64, iov: &[IoVec]) -> IoResult<()> {
        self.check(Op::Write, Some((offset, total_len(iov))))?;
        self.inner.pwritev(offset, iov)
    }
    fn flush(&self) -> IoResult<()> {
        self.check(Op::Flush, None)?;
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        self.check(Op::Discard, Some((offset, len)))?;
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> IoResult<()> {
        self.check(Op::WriteZeroes, Some((offset, len)))?;
        self.inner.write_zeroes(offset, len, unmap)
    }
    fn truncate(&self, size: u64) -> IoResult<()> {
        self.inner.truncate(size)
    }
    fn request_alignment(&self) -> usize {
        self.inner.request_alignment()
    }
    /// The rules must see every request, so a file underneath is never
    /// handed to io_uring directly; over an inline driver the rule check is
    /// cheap enough to stay inline.
    fn async_mode(&self) -> AsyncMode {
        match self.inner.async_mode() {
            AsyncMode::Inline => AsyncMode::Inline,
            _ => AsyncMode::Blocking,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::null::NullDriver;
    use std::io::{IoSlice, IoSliceMut};

    fn dev() -> InjectDriver {
        InjectDriver::new(Arc::new(NullDriver::new(1 << 20)))
    }

    fn read(d: &InjectDriver, off: u64, len: usize) -> IoResult<()> {
        let mut b = vec![0u8; len];
        d.preadv(off, IoVec::from_mut_slices(&mut [IoSliceMut::new(&mut b)]))
    }

    fn write(d: &InjectDriver, off: u64, len: usize) -> IoResult<()> {
        let b = vec![0u8; len];
        d.pwritev(off, IoVec::from_slices(&[IoSlice::new(&b)]))
    }

    #[test]
    fn once_fails_exactly_one_request() {
        let d = dev();
        d.add_rule(Rule { op: Some(Op::Write), sectors: None, errno: libc::EIO, count: Count::Once });
        assert_eq!(read(&d, 0, 512), Ok(()), "reads pass");
        assert_eq!(write(&d, 0, 512), Err(Errno::EIO));
        assert_eq!(write(&d, 0, 512), Ok(()));
        assert_eq!(d.armed(), 0);
    }

    #[test]
    fn n_times_and_until_removed() {
        let d = dev();
        d.add_rule(Rule { op: Some(Op::Read), sectors: None, errno: libc::ENOSPC, count: Count::Times(2) });
        assert_eq!(read(&d, 0, 1), Err(Errno::ENOSPC));
        assert_eq!(read(&d, 0, 1), Err(Errno::ENOSPC));
        assert_eq!(read(&d, 0, 1), Ok(()));
        let id = d.add_rule(Rule { op: Some(Op::Flush), sectors: None, errno: libc::EIO, count: Count::UntilRemoved });
        for _ in 0..5 {
            assert_eq!(d.flush(), Err(Errno::EIO));
        }
        assert!(d.remove_rule(id));
        assert!(!d.remove_rule(id));
        assert_eq!(d.flush(), Ok(()));
    }

    #[test]
    fn sector_ranges_match_overlapping_requests_only() {
        let d = dev();
        d.add_rule(Rule { op: None, sectors: Some((8, 9)), errno: libc::EPERM, count: Count::UntilRemoved });
        assert_eq!(write(&d, 0, 4096), Ok(()), "sectors 0-7");
        assert_eq!(write(&d, 4096 + 511, 1), Err(Errno::EPERM), "sector 8");
        assert_eq!(read(&d, 10 * 512, 512), Ok(()), "sector 10");
        assert_eq!(d.discard(0, 8192), Err(Errno::EPERM), "0-15 covers 8");
        assert_eq!(d.write_zeroes(9 * 512, 512, false), Err(Errno::EPERM));
        assert_eq!(d.flush(), Ok(()), "a ranged rule never matches a flush");
    }

    #[test]
    fn latency_delays_matching_requests_only_and_is_listed() {
        let d = dev();
        let id = d.add_latency(Latency { op: Some(Op::Read), sectors: None, delay: Duration::from_millis(50) });
        let t = std::time::Instant::now();
        assert_eq!(write(&d, 0, 512), Ok(()));
        assert!(t.elapsed() < Duration::from_millis(50), "writes are not delayed");
        let t = std::time::Instant::now();
        assert_eq!(read(&d, 0, 512), Ok(()));
        assert!(t.elapsed() >= Duration::from_millis(50));
        d.add_rule(Rule { op: Some(Op::Read), sectors: None, errno: libc::EIO, count: Count::Once });
        let t = std::time::Instant::now();
        assert_eq!(read(&d, 0, 512), Err(Errno::EIO), "a slow request can fail too");
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert!(matches!(&d.rules()[..], [ArmedRule::Latency { id: i, hits: 2, .. }] if *i == id));
        assert!(d.remove_rule(id));
        assert_eq!(d.armed(), 0);
    }

    #[test]
    fn errno_is_passed_through_as_given() {
        let d = dev();
        for e in [libc::EIO, libc::ENOSPC, libc::EROFS, libc::EPERM] {
            d.add_rule(Rule { op: Some(Op::Discard), sectors: None, errno: e, count: Count::Once });
            assert_eq!(d.discard(0, 512), Err(Errno(e)));
        }
    }
}
