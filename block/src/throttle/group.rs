//! Throttle groups (QEMU's block/throttle-groups.c): drives that share one
//! set of limits and one set of buckets, taking turns round-robin, so that
//! a busy drive cannot starve the others of the group. A drive with limits
//! of its own is a group of one (named after the drive, as in QEMU).
//!
//! The scheduling is QEMU's, decision for decision: a request goes at once
//! when no timer of the group is armed, its drive has nobody waiting, and
//! the buckets have room; otherwise it waits in its drive's queue (one per
//! direction). At most one timer per direction is armed in the whole
//! group, on the drive whose turn it is (the *token*); when it fires, that
//! drive lets its oldest request go, and the next drive with requests
//! waiting gets the token.
//!
//! This file is the state machine alone (`Core`, on a clock the caller
//! passes in, so that tests can drive it) and the group registry. The
//! requests themselves stay with whoever submitted them: an `IoQueue`
//! keeps them in order with their ticket, a blocking caller sleeps on the
//! group's condition variable. A member is told through its `Alarm` when
//! it must look at the group again (a timer of its own was armed, or one of
//! its requests may go); that is a timerfd in the queue's event loop, never
//! a sleeping thread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

use super::{Config, Direction, State};

/// Told the clock time (`now_ns`) by which the member must look at the
/// group again: a timer it owns is due then, or (a time already past) one
/// of its requests may go now.
pub(crate) type Alarm = Arc<dyn Fn(u64) + Send + Sync>;

pub(crate) type MemberId = u64;

/// The monotonic clock the limits run on, in nanoseconds
/// (CLOCK_MONOTONIC, which timerfds with TFD_TIMER_ABSTIME use too).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes the current time into a local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One drive in a group (QEMU's ThrottleGroupMember, minus the requests).
struct Slot {
    id: MemberId,
    /// Sizes of the requests waiting, oldest first; its length is QEMU's
    /// pending_reqs.
    waiting: [VecDeque<u64>; 2],
    /// Requests that ever waited, and those let go since: a waiter holds
    /// ticket `t` (its position in that sequence) and may go once
    /// `released > t`.
    issued: [u64; 2],
    released: [u64; 2],
    /// The member's own timer per direction: when it fires.
    timer: [Option<u64>; 2],
    /// QEMU's io_limits_disabled: while above 0 (a drained section of the
    /// drive), its requests go without waiting, still accounted.
    disabled: Arc<AtomicUsize>,
    alarm: Option<Alarm>,
    /// The earliest time the owner was asked to look by, and has not yet
    /// (`Core::poll`). A timerfd keeps one time, and setting it drops an
    /// expiry not yet read: a later alarm must never replace an earlier
    /// one the owner has not acted on.
    alarm_at: Option<u64>,
}

impl Slot {
    fn pending(&self, d: usize) -> bool {
        !self.waiting[d].is_empty()
    }
    fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::SeqCst) > 0
    }
    fn wake(&mut self, at: u64) {
        let at = self.alarm_at.map_or(at, |t| t.min(at));
        self.alarm_at = Some(at);
        if let Some(a) = &self.alarm {
            a(at);
        }
    }
}

/// What a request learns from `Core::intercept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Accounted: run it now.
    Go,
    /// Wait until `released(member, dir) > ticket`.
    Wait(u64),
}

/// A group's state (QEMU's ThrottleGroup under its lock).
pub(crate) struct Core {
    state: State,
    /// Round-robin order.
    slots: Vec<Slot>,
    tokens: [Option<MemberId>; 2],
    any_timer_armed: [bool; 2],
}

impl Core {
    pub fn new(now: u64) -> Core {
        Core { state: State::new(Config::default(), now), slots: Vec::new(), tokens: [None; 2], any_timer_armed: [false; 2] }
    }

    fn idx(&self, id: MemberId) -> Option<usize> {
        self.slots.iter().position(|s| s.id == id)
    }

    pub fn config(&self) -> Config {
        *self.state.config()
    }

    #[cfg(test)]
    pub fn members(&self) -> usize {
        self.slots.len()
    }

    /// throttle_group_register_tgm: the first member holds both tokens.
    pub fn join(&mut self, id: MemberId, disabled: Arc<AtomicUsize>, alarm: Option<Alarm>) {
        for t in &mut self.tokens {
            t.get_or_insert(id);
        }
        self.slots.push(Slot {
            id,
            waiting: Default::default(),
            issued: [0; 2],
            released: [0; 2],
            timer: [None; 2],
            disabled,
            alarm,
            alarm_at: None,
        });
    }

    /// throttle_group_unregister_tgm. The caller has let the member's
    /// requests go first (a drained section); a timer it still had is
    /// disarmed, and the token passes to the next member, so the group
    /// never waits for a timer nobody will fire.
    pub fn leave(&mut self, id: MemberId) {
        let Some(i) = self.idx(id) else { return };
        debug_assert!(!self.slots[i].pending(0) && !self.slots[i].pending(1), "a member left its group with requests waiting");
        for d in 0..2 {
            if self.slots[i].timer[d].take().is_some() {
                self.any_timer_armed[d] = false;
            }
            if self.tokens[d] == Some(id) {
                let next = self.slots[(i + 1) % self.slots.len()].id;
                self.tokens[d] = (next != id).then_some(next);
            }
        }
        self.slots.remove(i);
    }

    /// throttle_group_config: new limits with empty buckets, then the
    /// member's queue is restarted so nothing waits on the old ones.
    pub fn set_config(&mut self, id: MemberId, cfg: Config, now: u64) {
        self.state = State::new(cfg, now);
        self.restart(id, now);
    }

    pub fn released(&self, id: MemberId, dir: Direction) -> u64 {
        self.idx(id).map_or(u64::MAX, |i| self.slots[i].released[dir as usize])
    }

    /// The earliest timer the member owns.
    pub fn next_timer(&self, id: MemberId) -> Option<u64> {
        let i = self.idx(id)?;
        self.slots[i].timer.iter().flatten().min().copied()
    }

    /// Whether the member has requests waiting (either direction).
    #[cfg(test)]
    pub fn has_waiting(&self, id: MemberId) -> bool {
        self.idx(id).is_some_and(|i| self.slots[i].pending(0) || self.slots[i].pending(1))
    }

    /// next_throttle_token: the next member after the token with requests
    /// waiting, or `i` when there is none.
    fn next_token(&self, i: usize, d: usize) -> usize {
        if self.slots[i].pending(d) && self.slots[i].is_disabled() {
            return i;
        }
        let n = self.slots.len();
        let start = self.tokens[d].and_then(|t| self.idx(t)).unwrap_or(i);
        let mut t = (start + 1) % n;
        while t != start && !self.slots[t].pending(d) {
            t = (t + 1) % n;
        }
        if t == start && !self.slots[t].pending(d) {
            t = i;
        }
        t
    }

    /// throttle_group_schedule_timer: must member `i`'s next request wait?
    /// If it must and no timer of the group is armed, arms `i`'s.
    fn schedule_timer(&mut self, i: usize, d: usize, now: u64) -> bool {
        if self.slots[i].is_disabled() {
            return false;
        }
        if self.any_timer_armed[d] {
            return true;
        }
        let Some(at) = self.state.next_time(dir(d), now) else { return false };
        if self.slots[i].timer[d].is_none() {
            self.arm(i, d, at);
        }
        self.tokens[d] = Some(self.slots[i].id);
        self.any_timer_armed[d] = true;
        true
    }

    fn arm(&mut self, i: usize, d: usize, at: u64) {
        self.slots[i].timer[d] = Some(at);
        self.slots[i].wake(at);
    }

    /// The woken request's side of throttle_group_co_io_limits_intercept:
    /// it stops waiting and is accounted.
    fn release_one(&mut self, i: usize, d: usize, now: u64) {
        let s = &mut self.slots[i];
        let Some(bytes) = s.waiting[d].pop_front() else { return };
        s.released[d] += 1;
        s.wake(now);
        self.state.account(dir(d), bytes);
    }

    /// schedule_next_request. Where QEMU hands the turn straight to the
    /// current member's next waiting request (the coroutine case), that
    /// request is let go here and the loop schedules the one after it.
    fn schedule_next(&mut self, i: usize, d: usize, now: u64) {
        loop {
            let t = self.next_token(i, d);
            if !self.slots[t].pending(d) {
                return;
            }
            if self.schedule_timer(t, d, now) {
                return;
            }
            if self.slots[i].pending(d) {
                self.tokens[d] = Some(self.slots[i].id);
                self.release_one(i, d, now);
                continue;
            }
            // Another member's request may go: its timer fires now.
            self.arm(t, d, now);
            self.any_timer_armed[d] = true;
            self.tokens[d] = Some(self.slots[t].id);
            return;
        }
    }

    /// throttle_group_co_io_limits_intercept for a request of `bytes`.
    /// A member with limits disabled (a drained section) never waits: QEMU
    /// may still queue such a request behind another member's armed
    /// timer, and then the drain would wait for the throttle.
    pub fn intercept(&mut self, id: MemberId, d: Direction, bytes: u64, now: u64) -> Admission {
        let Some(i) = self.idx(id) else { return Admission::Go };
        let d = d as usize;
        if self.slots[i].is_disabled() {
            self.state.account(dir(d), bytes);
            self.schedule_next(i, d, now);
            return Admission::Go;
        }
        let t = self.next_token(i, d);
        let must_wait = self.schedule_timer(t, d, now);
        if must_wait || self.slots[i].pending(d) {
            let s = &mut self.slots[i];
            s.waiting[d].push_back(bytes);
            s.issued[d] += 1;
            return Admission::Wait(s.issued[d] - 1);
        }
        self.state.account(dir(d), bytes);
        self.schedule_next(i, d, now);
        Admission::Go
    }

    /// What the owner of a member's queue does when it looks (its timer
    /// fired, or it polls): fires the due timers, returns how many of the
    /// member's requests of direction `d` have been let go, and asks for
    /// the next look at the member's earliest timer, all under one lock so
    /// that no alarm raised meanwhile is lost.
    pub fn poll(&mut self, id: MemberId, d: Direction, now: u64) -> u64 {
        let Some(i) = self.idx(id) else { return u64::MAX };
        self.fire(id, now);
        // What the fire let go is acted on now, by the caller.
        self.slots[i].alarm_at = None;
        if let Some(at) = self.next_timer(id) {
            self.slots[i].wake(at);
        }
        self.slots[i].released[d as usize]
    }

    /// Fires the member's due timers (timer_cb and the restart that
    /// follows it). True if any was due.
    pub fn fire(&mut self, id: MemberId, now: u64) -> bool {
        let Some(i) = self.idx(id) else { return false };
        let mut fired = false;
        for d in 0..2 {
            if self.slots[i].timer[d].is_some_and(|at| at <= now) {
                self.slots[i].timer[d] = None;
                self.any_timer_armed[d] = false;
                self.restart_queue(i, d, now);
                fired = true;
            }
        }
        fired
    }

    /// throttle_group_restart_queue_entry: the oldest waiting request goes
    /// (and schedules the next), or, with none waiting, the next member's.
    fn restart_queue(&mut self, i: usize, d: usize, now: u64) {
        if self.slots[i].pending(d) {
            self.release_one(i, d, now);
        }
        self.schedule_next(i, d, now);
    }

    /// throttle_group_restart_tgm: a pending timer fires now, otherwise
    /// the queue restarts. With the member's limits disabled (a drained
    /// section), this lets all its requests go.
    pub fn restart(&mut self, id: MemberId, now: u64) {
        let Some(i) = self.idx(id) else { return };
        for d in 0..2 {
            if self.slots[i].timer[d].take().is_some() {
                self.any_timer_armed[d] = false;
            }
            self.restart_queue(i, d, now);
        }
    }
}

fn dir(d: usize) -> Direction {
    if d == 0 {
        Direction::Read
    } else {
        Direction::Write
    }
}

/// A named group. Blocking waiters of every member sleep on `cv`.
pub struct Group {
    name: String,
    core: Mutex<Core>,
    cv: Condvar,
}

/// Groups by name, alive while a member holds them (throttle_group_incref
/// and unref).
static GROUPS: Mutex<Vec<Weak<Group>>> = Mutex::new(Vec::new());

impl Group {
    /// The group called `name`, made (without limits) if there is none.
    pub fn get(name: &str) -> Arc<Group> {
        let mut all = GROUPS.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|g| g.strong_count() > 0);
        if let Some(g) = all.iter().filter_map(Weak::upgrade).find(|g| g.name == name) {
            return g;
        }
        let g = Arc::new(Group { name: name.to_string(), core: Mutex::new(Core::new(now_ns())), cv: Condvar::new() });
        all.push(Arc::downgrade(&g));
        g
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the blocking waiters after a change that may let them go.
    pub(crate) fn notify(&self) {
        self.cv.notify_all();
    }

    /// Blocks until the request with `ticket` may go, firing the member's
    /// timers as they fall due (a member without a queue has nobody else
    /// to fire them).
    pub(crate) fn wait_blocking(&self, id: MemberId, d: Direction, ticket: u64) {
        let mut core = self.lock();
        loop {
            let now = now_ns();
            if core.fire(id, now) {
                self.notify();
            }
            if core.released(id, d) > ticket {
                return;
            }
            core = match core.next_timer(id) {
                Some(at) => {
                    let left = std::time::Duration::from_nanos(at.saturating_sub(now));
                    self.cv.wait_timeout(core, left).unwrap_or_else(|e| e.into_inner()).0
                }
                None => self.cv.wait(core).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}

static NEXT_MEMBER: AtomicUsize = AtomicUsize::new(1);

/// A drive's place in its group; leaving it is dropping this.
pub struct Member {
    group: Arc<Group>,
    id: MemberId,
}

impl Member {
    pub(crate) fn join(group: Arc<Group>, disabled: Arc<AtomicUsize>, alarm: Option<Alarm>) -> Member {
        let id = NEXT_MEMBER.fetch_add(1, Ordering::Relaxed) as MemberId;
        group.lock().join(id, disabled, alarm);
        Member { group, id }
    }

    pub fn group(&self) -> &Arc<Group> {
        &self.group
    }

    pub(crate) fn id(&self) -> MemberId {
        self.id
    }

    /// `Core::poll` for the owner of this member's queue: how many of its
    /// requests of direction `d` may go.
    pub(crate) fn poll(&self, d: Direction) -> u64 {
        let released = self.group.lock().poll(self.id, d, now_ns());
        self.group.notify();
        released
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.group.lock().leave(self.id);
        self.group.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Bucket, Config};
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn bps(rate: u64) -> Config {
        let mut c = Config::default();
        c.bucket_mut(Bucket::BpsTotal).avg = rate;
        c
    }

    fn member(core: &mut Core, id: MemberId) -> Arc<AtomicUsize> {
        let disabled = Arc::new(AtomicUsize::new(0));
        core.join(id, disabled.clone(), None);
        disabled
    }

    /// Runs the group until every request of `reqs` (member, bytes) has
    /// gone, firing the earliest timer each time nothing can go; returns
    /// the member and the time of each request's start, in order of start.
    fn run(core: &mut Core, reqs: &[(MemberId, u64)]) -> Vec<(MemberId, u64)> {
        let mut now = 0;
        let mut waiting: Vec<(MemberId, u64)> = Vec::new();
        let mut started = Vec::new();
        for &(m, bytes) in reqs {
            match core.intercept(m, Direction::Read, bytes, now) {
                Admission::Go => started.push((m, now)),
                Admission::Wait(t) => waiting.push((m, t)),
            }
        }
        let mut guard = 0;
        while !waiting.is_empty() {
            guard += 1;
            assert!(guard < 100_000, "the group stopped making progress");
            waiting.retain(|&(m, t)| {
                let go = core.released(m, Direction::Read) > t;
                if go {
                    started.push((m, now));
                }
                !go
            });
            let ids: Vec<MemberId> = core.slots.iter().map(|s| s.id).collect();
            let next = ids.iter().filter_map(|&m| core.next_timer(m).map(|t| (t, m))).min();
            match next {
                Some((t, m)) => {
                    now = now.max(t);
                    core.fire(m, now);
                }
                None if waiting.is_empty() => {}
                None => panic!("requests wait and no timer is armed: {waiting:?}"),
            }
        }
        started
    }

    #[test]
    fn one_member_paces_its_requests_at_the_rate_in_order() {
        let mut c = Core::new(0);
        member(&mut c, 1);
        c.set_config(1, bps(1 << 20), 0);
        // 64 requests of 64 KiB at 1 MiB/s: the first tenth of a second's
        // worth goes at once, the rest follow at the rate.
        let started = run(&mut c, &[(1, 65536); 64]);
        assert_eq!(started.len(), 64);
        let last = started.last().unwrap().1;
        let expect = (64.0 * 65536.0 - (1 << 20) as f64 / 10.0) / (1 << 20) as f64;
        let got = last as f64 / SEC as f64;
        assert!((got - expect).abs() < 0.1, "last request started at {got} s, expected about {expect} s");
        assert!(started.windows(2).all(|w| w[0].1 <= w[1].1), "in order of time");
    }

    #[test]
    fn members_of_a_group_share_the_rate_and_take_turns() {
        let mut c = Core::new(0);
        member(&mut c, 1);
        member(&mut c, 2);
        c.set_config(1, bps(1 << 20), 0);
        let mut reqs = Vec::new();
        for _ in 0..32 {
            reqs.push((1, 65536));
            reqs.push((2, 65536));
        }
        let started = run(&mut c, &reqs);
        // Shared: 64 requests take as long as one member's 64 alone.
        let last = started.last().unwrap().1 as f64 / SEC as f64;
        assert!((last - 3.9).abs() < 0.1, "all started by {last} s");
        // Round-robin: once waiting, no member gets two turns in a row
        // while the other has requests waiting.
        let waited: Vec<MemberId> = started.iter().filter(|s| s.1 > 0).map(|s| s.0).collect();
        let runs = waited.windows(2).filter(|w| w[0] == w[1]).count();
        assert!(runs <= 1, "turns: {waited:?}");
        // Each finished at about the same time.
        let end = |m| started.iter().rev().find(|s| s.0 == m).unwrap().1 as f64 / SEC as f64;
        assert!((end(1) - end(2)).abs() < 0.2, "member 1 ended at {}, member 2 at {}", end(1), end(2));
    }

    #[test]
    fn a_member_with_limits_disabled_lets_everything_go_and_is_still_accounted() {
        let mut c = Core::new(0);
        let disabled = member(&mut c, 1);
        c.set_config(1, bps(1 << 20), 0);
        let mut tickets = Vec::new();
        for _ in 0..10 {
            if let Admission::Wait(t) = c.intercept(1, Direction::Read, 65536, 0) {
                tickets.push(t);
            }
        }
        assert!(!tickets.is_empty(), "over budget, some wait");
        disabled.store(1, Ordering::SeqCst);
        c.restart(1, 0);
        assert!(!c.has_waiting(1));
        assert_eq!(c.released(1, Direction::Read), tickets.len() as u64);
        assert_eq!(c.intercept(1, Direction::Read, 65536, 0), Admission::Go);
        // Accounted: with limits back, the next request waits for all of
        // it (11 x 64 KiB at 1 MiB/s, less the tenth-second allowance).
        disabled.store(0, Ordering::SeqCst);
        let Admission::Wait(_) = c.intercept(1, Direction::Read, 65536, 0) else { panic!("must wait") };
        let at = c.next_timer(1).unwrap() as f64 / SEC as f64;
        assert!((at - (11.0 * 65536.0 / 1048576.0 - 0.1)).abs() < 0.01, "timer at {at}");
    }

    #[test]
    fn leaving_passes_the_token_and_disarms_the_timer() {
        let mut c = Core::new(0);
        member(&mut c, 1);
        member(&mut c, 2);
        c.set_config(1, bps(1 << 20), 0);
        // Member 1 exhausts the budget; member 2's request waits on a
        // timer armed on member 2.
        assert_eq!(c.intercept(1, Direction::Read, 1 << 20, 0), Admission::Go);
        assert_eq!(c.intercept(2, Direction::Read, 4096, 0), Admission::Wait(0));
        assert!(c.next_timer(2).is_some());
        // Member 2 is drained (its request goes) and leaves.
        c.slots[1].disabled.store(1, Ordering::SeqCst);
        c.restart(2, 0);
        c.leave(2);
        assert_eq!(c.tokens, [Some(1), Some(1)]);
        assert_eq!(c.any_timer_armed, [false, false]);
        // Member 1 alone: it waits, and its timer gets armed.
        assert_eq!(c.intercept(1, Direction::Read, 4096, 0), Admission::Wait(0));
        assert!(c.next_timer(1).is_some());
        c.slots[0].disabled.store(1, Ordering::SeqCst);
        c.restart(1, 0);
        c.leave(1);
        assert_eq!(c.tokens, [None, None]);
    }

    #[test]
    fn new_limits_restart_a_waiting_queue() {
        let mut c = Core::new(0);
        member(&mut c, 1);
        c.set_config(1, bps(1 << 20), 0);
        assert_eq!(c.intercept(1, Direction::Write, 1 << 21, 0), Admission::Go);
        assert_eq!(c.intercept(1, Direction::Write, 4096, 0), Admission::Wait(0));
        // Much higher limits: the waiting request goes at once (empty
        // buckets), not when the old timer would have fired.
        c.set_config(1, bps(1 << 30), 0);
        assert_eq!(c.released(1, Direction::Write), 1);
        assert_eq!(c.next_timer(1), None);
    }

    #[test]
    fn a_later_alarm_never_replaces_an_earlier_one_not_yet_acted_on() {
        let mut c = Core::new(0);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        c.join(1, Arc::new(AtomicUsize::new(0)), Some(Arc::new(move |at| s2.lock().unwrap().push(at))));
        member(&mut c, 2);
        let mut cfg = Config::default();
        cfg.bucket_mut(Bucket::BpsRead).avg = 1 << 20;
        cfg.bucket_mut(Bucket::OpsWrite).avg = 1;
        c.set_config(1, cfg, 0);
        // Member 1's read waits on its timer at 0.4 s.
        assert_eq!(c.intercept(2, Direction::Read, 1 << 19, 0), Admission::Go);
        assert_eq!(c.intercept(1, Direction::Read, 4096, 0), Admission::Wait(0));
        let read_at = c.next_timer(1).unwrap();
        // Member 2 fills the write budget; member 1's write then waits on
        // a write timer at 0.9 s, also member 1's: its queue's timer must
        // still fire for the read first.
        assert_eq!(c.intercept(2, Direction::Write, 4096, 0), Admission::Go);
        assert_eq!(c.intercept(1, Direction::Write, 4096, 0), Admission::Wait(0));
        assert!(c.slots[0].timer[1].unwrap() > read_at);
        assert_eq!(*seen.lock().unwrap().last().unwrap(), read_at);
        // The owner looks at the read time: the read goes, and the next
        // alarm is the write timer.
        assert_eq!(c.poll(1, Direction::Read, read_at), 1);
        assert_eq!(*seen.lock().unwrap().last().unwrap(), c.slots[0].timer[1].unwrap());
    }

    #[test]
    fn a_drained_member_never_waits_for_another_members_timer() {
        let mut c = Core::new(0);
        member(&mut c, 1);
        let disabled = member(&mut c, 2);
        c.set_config(1, bps(1 << 20), 0);
        assert_eq!(c.intercept(1, Direction::Read, 1 << 20, 0), Admission::Go);
        assert_eq!(c.intercept(1, Direction::Read, 4096, 0), Admission::Wait(0));
        assert!(c.any_timer_armed[0], "member 1 holds the group's read timer");
        disabled.store(1, Ordering::SeqCst);
        assert_eq!(c.intercept(2, Direction::Read, 4096, 0), Admission::Go);
    }

    #[test]
    fn groups_are_shared_by_name_and_go_when_unused() {
        let a = Group::get("test-group-shared");
        let b = Group::get("test-group-shared");
        assert!(Arc::ptr_eq(&a, &b));
        let m = Member::join(a.clone(), Arc::new(AtomicUsize::new(0)), None);
        assert_eq!(a.lock().members(), 1);
        drop(m);
        assert_eq!(a.lock().members(), 0);
        let weak = Arc::downgrade(&a);
        drop((a, b));
        assert!(weak.upgrade().is_none());
        assert_eq!(Group::get("test-group-shared").lock().members(), 0);
    }
}
