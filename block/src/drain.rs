//! Drained sections and in-flight accounting, as one handshake (QEMU's
//! in_flight counter, quiesce_counter and blk_wait_while_drained).
//!
//! The rule: a request is *in flight* from the moment it is admitted until
//! its completion has been handed back to whoever submitted it, and no
//! request is admitted while a drained section is open. Admission and the
//! section count change under one lock, so "is a section open?" and "count
//! me in" are a single step: once `begin` has opened a section and seen the
//! count at zero, nothing can start until the section ends. Requests that
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

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::devops::BlockDevOps;

/// Called when the last open section ends, to resubmit parked requests.
pub(crate) type Waker = Arc<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct State {
    /// Open sections (nested and from any thread).
    sections: usize,
    in_flight: usize,
    /// Queues with parked requests, woken when the last section ends.
    wakers: Vec<Waker>,
}

#[derive(Default)]
pub(crate) struct Drain {
    state: Mutex<State>,
    /// Signalled when `in_flight` drops to zero inside a section.
    idle: Condvar,
    /// Signalled when the last section ends.
    open: Condvar,
    /// Serialises section changes together with the device callbacks.
    section: Mutex<()>,
}

impl Drain {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a blocking request, waiting while a section is open.
    pub fn enter_blocking(&self) {
        let mut s = self.lock();
        while s.sections > 0 {
            s = self.open.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.in_flight += 1;
    }

    /// Admits an asynchronous request, or registers `waker` (once per
    /// section, however often it is refused) and returns false.
    pub fn try_enter(&self, waker: &Waker) -> bool {
        let mut s = self.lock();
        if s.sections == 0 {
            s.in_flight += 1;
            return true;
        }
        if !s.wakers.iter().any(|w| Arc::ptr_eq(w, waker)) {
            s.wakers.push(waker.clone());
        }
        false
    }

    /// `n` admitted requests have been handed back.
    pub fn leave(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut s = self.lock();
        assert!(s.in_flight >= n, "block: more requests ended than began");
        s.in_flight -= n;
        if s.in_flight == 0 {
            self.idle.notify_all();
        }
    }

    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    pub fn is_drained(&self) -> bool {
        self.lock().sections > 0
    }

    /// Opens a section; on the first one the device (`dev()`, looked up
    /// under the section lock so a begin and its end reach the same one) is
    /// told to stop submitting. Does not wait: see `wait_idle`.
    pub fn begin(&self, dev: impl FnOnce() -> Option<Arc<dyn BlockDevOps>>) {
        let _section = self.section.lock().unwrap_or_else(|e| e.into_inner());
        let first = {
            let mut s = self.lock();
            s.sections += 1;
            s.sections == 1
        };
        if first {
            if let Some(d) = dev() {
                d.drained_begin();
            }
        }
    }

    /// Runs `f(sections open?)` with no section beginning or ending
    /// meanwhile: attaching a device inside a section must stop it too.
    pub fn with_sections<T>(&self, f: impl FnOnce(bool) -> T) -> T {
        let _section = self.section.lock().unwrap_or_else(|e| e.into_inner());
        let open = self.lock().sections > 0;
        f(open)
    }

    /// Closes a section; on the last one the device resumes, blocked
    /// callers go on and parked requests are resubmitted. An end without a
    /// begin is a bug in the caller and panics.
    pub fn end(&self, dev: impl FnOnce() -> Option<Arc<dyn BlockDevOps>>) {
        let _section = self.section.lock().unwrap_or_else(|e| e.into_inner());
        let wakers = {
            let mut s = self.lock();
            assert!(s.sections > 0, "block: drained_end without drained_begin");
            s.sections -= 1;
            if s.sections > 0 {
                return;
            }
            self.open.notify_all();
            std::mem::take(&mut s.wakers)
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
        let mut s = self.lock();
        while s.in_flight > 0 {
            s = self.idle.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }
}
