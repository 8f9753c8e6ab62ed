//! The timer of an I/O queue's event loop: a timerfd set to absolute
//! CLOCK_MONOTONIC times, the clock of `now_ns`, so that a time already
//! past fires at once and any thread may set it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub struct Timer(OwnedFd);

impl Timer {
    pub fn new() -> std::io::Result<Timer> {
        // SAFETY: plain syscall; the descriptor is owned below.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor that nothing else owns.
        Ok(Timer(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Fires at `at_ns` on the monotonic clock (at once if that is past),
    /// replacing any earlier setting.
    pub fn set_at(&self, at_ns: u64) {
        // 0 would disarm the timer: the earliest time is 1 ns.
        let at = at_ns.max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec { tv_sec: (at / 1_000_000_000) as libc::time_t, tv_nsec: (at % 1_000_000_000) as libc::c_long },
        };
        // SAFETY: sets our own timerfd from a local itimerspec.
        unsafe { libc::timerfd_settime(self.0.as_raw_fd(), libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut()) };
    }

    /// Clears an expiry so that the descriptor stops being readable.
    pub fn clear(&self) {
        let mut n = 0u64;
        // SAFETY: reads 8 bytes into a local from our own non-blocking fd.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
    }
}

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::throttle::now_ns;

    fn readable(t: &Timer, timeout_ms: i32) -> bool {
        let mut p = libc::pollfd { fd: t.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: polls one descriptor we own.
        unsafe { libc::poll(&mut p, 1, timeout_ms) == 1 }
    }

    #[test]
    fn fires_at_the_time_given_and_at_once_for_a_past_one() {
        let t = Timer::new().unwrap();
        assert!(!readable(&t, 0), "unarmed");
        t.set_at(now_ns() + 10_000_000_000);
        assert!(!readable(&t, 10), "not yet");
        t.set_at(now_ns() + 50_000_000);
        assert!(readable(&t, 5000), "fired");
        t.clear();
        assert!(!readable(&t, 0), "cleared");
        t.set_at(1);
        assert!(readable(&t, 0), "a past time fires at once");
    }
}
