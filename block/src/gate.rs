//! The write gate: read-modify-write of a partial O_DIRECT block must not
//! interleave with another write to the same block, or one of the two is
//! lost (QEMU serialises such requests for the same reason). Unaligned
//! writes pass the gate exclusively, every other write shared.
//!
//! A lock guard cannot be held across an io_uring submission that completes
//! later on the queue's thread, so the gate is a counter the async path can
//! take without blocking (`try_shared`) and release at completion. Waiting
//! exclusive holders win over new shared ones, so a stream of aligned writes
//! cannot starve an unaligned one.

use std::sync::{Condvar, Mutex, MutexGuard};

#[derive(Default)]
struct State {
    shared: usize,
    exclusive: bool,
    waiting_exclusive: usize,
}

#[derive(Default)]
pub struct WriteGate {
    state: Mutex<State>,
    cv: Condvar,
}

/// Holds the gate until dropped. `None` inside: the medium needs no gate.
pub struct GateGuard<'a> {
    gate: Option<&'a WriteGate>,
    exclusive: bool,
}

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        if let Some(g) = self.gate {
            if self.exclusive {
                g.unlock_exclusive();
            } else {
                g.unlock_shared();
            }
        }
    }
}

impl WriteGate {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Without O_DIRECT (alignment 1) nothing is ever read-modify-written,
    /// so the gate is skipped.
    pub fn shared(&self, align: usize) -> GateGuard<'_> {
        if align <= 1 {
            return GateGuard { gate: None, exclusive: false };
        }
        let mut s = self.lock();
        while s.exclusive || s.waiting_exclusive > 0 {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.shared += 1;
        GateGuard { gate: Some(self), exclusive: false }
    }

    pub fn exclusive(&self, align: usize) -> GateGuard<'_> {
        if align <= 1 {
            return GateGuard { gate: None, exclusive: true };
        }
        let mut s = self.lock();
        s.waiting_exclusive += 1;
        while s.exclusive || s.shared > 0 {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.waiting_exclusive -= 1;
        s.exclusive = true;
        GateGuard { gate: Some(self), exclusive: true }
    }

    /// Takes the gate shared if that needs no wait; the caller releases it
    /// with `unlock_shared`.
    pub fn try_shared(&self) -> bool {
        let mut s = self.lock();
        if s.exclusive || s.waiting_exclusive > 0 {
            return false;
        }
        s.shared += 1;
        true
    }

    pub fn unlock_shared(&self) {
        let mut s = self.lock();
        s.shared -= 1;
        if s.shared == 0 {
            self.cv.notify_all();
        }
    }

    fn unlock_exclusive(&self) {
        self.lock().exclusive = false;
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn exclusive_waits_for_shared_and_blocks_new_shared() {
        let g = Arc::new(WriteGate::default());
        assert!(g.try_shared());
        let got = Arc::new(AtomicBool::new(false));
        let (g2, got2) = (g.clone(), got.clone());
        let t = std::thread::spawn(move || {
            let _x = g2.exclusive(512);
            got2.store(true, Ordering::SeqCst);
        });
        // The exclusive taker is queued behind our shared hold...
        while g.lock().waiting_exclusive == 0 {
            std::thread::yield_now();
        }
        assert!(!got.load(Ordering::SeqCst));
        // ...and new shared takers must not overtake it.
        assert!(!g.try_shared());
        g.unlock_shared();
        t.join().unwrap();
        assert!(got.load(Ordering::SeqCst));
        assert!(g.try_shared());
        g.unlock_shared();
        // Alignment 1: no gate at all, nothing to wait for.
        let _a = g.exclusive(1);
        let _b = g.exclusive(1);
    }
}
