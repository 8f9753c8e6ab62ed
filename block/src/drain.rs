//! Drained sections and in-flight accounting, as one handshake (QEMU's
//! in_flight counter, quiesce_counter and blk_wait_while_drained).
//!
//! The rule: a request is *in flight* from the moment it is admitted until
//! its completion has been handed back to whoever submitted it, and no
//! request is admitted while a drained section is open. Admission counts
//! the request in first and then looks for an open section (backing out if
//! there is one); `begin` counts the section first and then waits for the
//! in-flight count to reach zero. Both are sequentially consistent atomics,
//! so one of the two always sees the other: either the section sees the
//! request and waits for it, or the request sees the section and backs out
//! (QEMU's in_flight and quiesce_counter work the same way). The fast path
//! of a request is one atomic add and one load, no lock. Requests that
//! arrive inside a section wait: blocking callers sleep until it ends,
//! asynchronous queues park them and are woken (through the waker they
//! registered) when it ends.
//!
//! Opening and closing sections, and calling the device's
//! drained_begin/drained_end, happen under a second lock (`section`), so
//! two threads beginning and ending concurrently cannot leave the device
//! stopped outside a section or running inside one. The device callbacks
//! must therefore not begin or end sections themselves, and must not wait
//! for a thread that is trying to.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::devops::BlockDevOps;

/// Called when the last open section ends, to resubmit parked requests.
pub(crate) type Waker = Arc<dyn Fn() + Send + Sync>;

/// Test builds can widen the window between the two steps of admission, so
/// that the stress test meets the interleavings a wrong order would get
/// wrong (without it, they need a preemption inside a few nanoseconds).
#[inline]
fn between_admission_steps() {
    #[cfg(feature = "testing")]
    if crate::testing::WIDEN_RACES.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::yield_now();
    }
}

#[derive(Default)]
pub(crate) struct Drain {
    /// Open sections (nested and from any thread).
    sections: AtomicUsize,
    in_flight: AtomicUsize,
    /// Queues with parked requests, woken when the last section ends; also
    /// the mutex the condition variables below sleep on.
    wakers: Mutex<Vec<Waker>>,
    /// Signalled when `in_flight` drops to zero inside a section.
    idle: Condvar,
    /// Signalled when the last section ends.
    open: Condvar,
    /// Serialises section changes together with the device callbacks.
    section: Mutex<()>,
}

impl Drain {
    fn lock(&self) -> MutexGuard<'_, Vec<Waker>> {
        self.wakers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a request in unless a section is open.
    fn try_admit(&self) -> bool {
        self.in_flight.fetch_add(1, SeqCst);
        between_admission_steps();
        if self.sections.load(SeqCst) == 0 {
            return true;
        }
        self.leave(1);
        false
    }

    /// Admits a blocking request, waiting while a section is open.
    pub fn enter_blocking(&self) {
        while !self.try_admit() {
            let mut g = self.lock();
            while self.sections.load(SeqCst) > 0 {
                g = self.open.wait(g).unwrap_or_else(|e| e.into_inner());
            }
        }
    }

    /// Admits an asynchronous request, or registers `waker` (once per
    /// section, however often it is refused) and returns false.
    pub fn try_enter(&self, waker: &Waker) -> bool {
        loop {
            if self.try_admit() {
                return true;
            }
            let mut wakers = self.lock();
            // The section may have ended since: then try again, or the
            // waker would wait for an end that already happened.
            if self.sections.load(SeqCst) > 0 {
                if !wakers.iter().any(|w| Arc::ptr_eq(w, waker)) {
                    wakers.push(waker.clone());
                }
                return false;
            }
        }
    }

    /// `n` admitted requests have been handed back.
    pub fn leave(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self.in_flight.fetch_sub(n, SeqCst);
        assert!(before >= n, "block: more requests ended than began");
        if before == n && self.sections.load(SeqCst) > 0 {
            // Taking the lock orders this after a waiter's check.
            let _g = self.lock();
            self.idle.notify_all();
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(SeqCst)
    }

    pub fn is_drained(&self) -> bool {
        self.sections.load(SeqCst) > 0
    }

    /// Opens a section; on the first one the device (`dev()`, looked up
    /// under the section lock so a begin and its end reach the same one) is
    /// told to stop submitting. Does not wait: see `wait_idle`.
    pub fn begin(&self, dev: impl FnOnce() -> Option<Arc<dyn BlockDevOps>>) {
        let _section = self.section.lock().unwrap_or_else(|e| e.into_inner());
        if self.sections.fetch_add(1, SeqCst) == 0 {
            if let Some(d) = dev() {
                d.drained_begin();
            }
        }
    }

    /// Runs `f(sections open?)` with no section beginning or ending
    /// meanwhile: attaching a device inside a section must stop it too.
    pub fn with_sections<T>(&self, f: impl FnOnce(bool) -> T) -> T {
        let _section = self.section.lock().unwrap_or_else(|e| e.into_inner());
        f(self.sections.load(SeqCst) > 0)
    }

    /// Closes a section; on the last one the device resumes, blocked
    /// callers go on and parked requests are resubmitted. An end without a
    /// begin is a bug in the caller and panics.
    pub fn end(&self, dev: impl FnOnce() -> Option<Arc<dyn BlockDevOps>>) {
        let _section = self.section.lock().unwrap_or_else(|e| e.into_inner());
        let open = self.sections.load(SeqCst);
        assert!(open > 0, "block: drained_end without drained_begin");
        self.sections.store(open - 1, SeqCst);
        if open > 1 {
            return;
        }
        let wakers = {
            let mut g = self.lock();
            self.open.notify_all();
            std::mem::take(&mut *g)
        };
        if let Some(d) = dev() {
            d.drained_end();
        }
        for w in wakers {
            w();
        }
    }

    /// Waits until nothing admitted is still in flight.
    pub fn wait_idle(&self) {
        let mut g = self.lock();
        while self.in_flight.load(SeqCst) > 0 {
            g = self.idle.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// `wait_idle` until `deadline`; false if requests are still in flight.
    pub fn wait_idle_until(&self, deadline: std::time::Instant) -> bool {
        let mut g = self.lock();
        while self.in_flight.load(SeqCst) > 0 {
            let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else { return false };
            g = self.idle.wait_timeout(g, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }
}
