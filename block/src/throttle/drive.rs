//! A drive's side of throttling (the throttle_group_member of QEMU's
//! BlockBackend): whether it has limits, its place in a group, the
//! io_limits_disabled count its drained sections raise, and the timers of
//! the I/O queues that submit for it.
//!
//! A drive without limits pays one atomic load per request and nothing
//! else: no lock, no timer, no clock read.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::group::{Admission, Alarm, Group, Member};
use super::timer::Timer;
use super::{now_ns, Config, Direction};
use crate::request::Op;

/// A request that must wait: it may go once its member's `released`
/// count for `dir` is past `ticket`.
#[derive(Clone)]
pub(crate) struct Ticket {
    pub member: Arc<Member>,
    pub dir: Direction,
    pub ticket: u64,
}

/// Which direction a request is throttled in: reads and writes (and
/// write-zeroes, a write in QEMU) are; flush and discard are not.
fn direction(op: Op) -> Option<Direction> {
    match op {
        Op::Read => Some(Direction::Read),
        Op::Write | Op::WriteZeroes => Some(Direction::Write),
        Op::Flush | Op::Discard => None,
    }
}

#[derive(Default)]
pub(crate) struct DriveLimits {
    /// The drive has limits; the request path looks at nothing else
    /// when it has none.
    on: AtomicBool,
    member: Mutex<Option<Arc<Member>>>,
    /// QEMU's io_limits_disabled: raised by each drained section.
    disabled: Arc<AtomicUsize>,
    /// The timers of the drive's I/O queues; the group's alarm sets them.
    timers: Arc<Mutex<Vec<Weak<Timer>>>>,
}

impl DriveLimits {
    fn member(&self) -> MutexGuard<'_, Option<Arc<Member>>> {
        self.member.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current(&self) -> Option<Arc<Member>> {
        if !self.on.load(SeqCst) {
            return None;
        }
        self.member().clone()
    }

    /// Decides whether a request of `op` and `bytes` goes now (None, and it
    /// is accounted) or waits for its ticket. Inlined so that a drive
    /// without limits pays one load and a branch.
    #[inline]
    pub fn intercept(&self, op: Op, bytes: u64) -> Option<Ticket> {
        if !self.on.load(SeqCst) {
            return None;
        }
        self.intercept_limited(op, bytes)
    }

    #[inline(never)]
    fn intercept_limited(&self, op: Op, bytes: u64) -> Option<Ticket> {
        let member = self.member().clone()?;
        let dir = direction(op)?;
        let g = member.group().clone();
        let admission = g.lock().intercept(member.id(), dir, bytes, now_ns());
        // The turn may have passed to someone a blocking caller waits for.
        g.notify();
        match admission {
            Admission::Go => None,
            Admission::Wait(ticket) => Some(Ticket { member, dir, ticket }),
        }
    }

    /// `intercept` for a caller that blocks: returns once the request may
    /// go. The caller holds nothing anyone else needs meanwhile (the
    /// backend's locks are free; a drained section lets it go).
    pub fn wait(&self, op: Op, bytes: u64) {
        if let Some(t) = self.intercept(op, bytes) {
            t.member.group().wait_blocking(t.member.id(), t.dir, t.ticket);
        }
    }

    /// The start of a drained section (or of a stop): from now on the
    /// drive's requests go without waiting, and those waiting go now.
    pub fn disable(&self) {
        if self.disabled.fetch_add(1, SeqCst) == 0 {
            self.restart();
        }
    }

    pub fn enable(&self) {
        let before = self.disabled.fetch_sub(1, SeqCst);
        assert!(before > 0, "block: io limits enabled more often than disabled");
    }

    fn restart(&self) {
        if let Some(m) = self.member().clone() {
            m.group().lock().restart(m.id(), now_ns());
            m.group().notify();
        }
    }

    /// Whether setting `cfg` and `group` takes the drive out of its group
    /// (limits off, or another group): QEMU drains for that
    /// (blk_io_limits_disable), so that nothing waits on a group the drive
    /// has left. New limits in the same group, or a first group, need no
    /// drain: held requests go on under the new limits.
    pub fn leaves_group(&self, cfg: &Config, group: Option<&str>) -> bool {
        match self.member().as_ref() {
            None => false,
            Some(_) if !cfg.enabled() => true,
            Some(m) => group.is_some_and(|g| g != m.group().name()),
        }
    }

    /// Sets the limits, joining `group` (the current group, or else
    /// `default_group`, when None); limits with no rate leave the group.
    /// The group's buckets start empty and its held requests are paced by
    /// the new limits (throttle_group_config).
    pub fn set(&self, cfg: &Config, group: Option<&str>, default_group: &str) {
        let mut member = self.member();
        if !cfg.enabled() {
            self.on.store(false, SeqCst);
            *member = None;
            return;
        }
        let name = group.or(member.as_ref().map(|m| m.group().name())).unwrap_or(default_group).to_string();
        if member.as_ref().is_none_or(|m| m.group().name() != name) {
            // The old place, if any, is left when the last request that
            // waited on it is gone (dropping its Arc).
            *member = Some(Arc::new(Member::join(Group::get(&name), self.disabled.clone(), Some(self.alarm()))));
        }
        if let Some(m) = member.as_ref() {
            m.group().lock().set_config(m.id(), *cfg, now_ns());
            m.group().notify();
        }
        self.on.store(true, SeqCst);
    }

    /// The limits and the group's name, when the drive has limits.
    pub fn get(&self) -> Option<(Config, String)> {
        let m = self.current()?;
        let cfg = m.group().lock().config();
        Some((cfg, m.group().name().to_string()))
    }

    /// The group's alarm for this drive: every queue's timer is set.
    fn alarm(&self) -> Alarm {
        let timers = Arc::downgrade(&self.timers);
        Arc::new(move |at| {
            let Some(timers) = timers.upgrade() else { return };
            for t in timers.lock().unwrap_or_else(|e| e.into_inner()).iter().filter_map(Weak::upgrade) {
                t.set_at(at);
            }
        })
    }

    /// An I/O queue's timer, set whenever the drive's requests may need it.
    pub fn add_timer(&self, t: &Arc<Timer>) {
        let mut timers = self.timers.lock().unwrap_or_else(|e| e.into_inner());
        timers.retain(|w| w.strong_count() > 0);
        timers.push(Arc::downgrade(t));
    }
}
