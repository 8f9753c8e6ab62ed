//! Why the VMM is stopping, decided once: the first reason wins, later ones
//! (a second vCPU hitting the same triple fault, a signal during power-off)
//! are dropped.

use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// ACPI soft-off from the guest.
    PowerOff,
    /// The guest asked for a reset; like QEMU's -no-reboot, we end instead.
    Reset,
    /// SIGINT, SIGTERM or SIGHUP.
    Signal(i32),
    /// Ctrl-A x on the console.
    Quit,
    /// Triple fault, KVM internal error, failed entry: the message carries
    /// the vCPU registers.
    GuestCrash(String),
    /// QMP `quit`.
    QmpQuit,
    /// QMP `system_reset`: like a guest reset, the VMM ends.
    QmpReset,
}

impl ExitReason {
    /// 0 for every orderly end; 2 when the guest died.
    /// QEMU's ShutdownCause name and whether the guest caused it, for the
    /// SHUTDOWN event.
    pub fn qmp_cause(&self) -> (bool, &'static str) {
        match self {
            ExitReason::PowerOff => (true, "guest-shutdown"),
            ExitReason::Reset => (true, "guest-reset"),
            ExitReason::Signal(_) => (false, "host-signal"),
            ExitReason::Quit => (false, "host-ui"),
            ExitReason::GuestCrash(_) => (false, "host-error"),
            ExitReason::QmpQuit => (false, "host-qmp-quit"),
            ExitReason::QmpReset => (false, "host-qmp-system-reset"),
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::GuestCrash(_) => 2,
            _ => 0,
        }
    }
}

pub struct Shutdown {
    reason: Mutex<Option<ExitReason>>,
    /// Readable once a reason is set, for the main event loop.
    pub evt: EventFd,
}

impl Shutdown {
    pub fn new() -> std::io::Result<Self> {
        Ok(Shutdown { reason: Mutex::new(None), evt: EventFd::new(EFD_NONBLOCK)? })
    }

    pub fn request(&self, r: ExitReason) {
        let mut g = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(r);
            let _ = self.evt.write(1);
        }
    }

    pub fn reason(&self) -> Option<ExitReason> {
        self.reason.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let s = Shutdown::new().unwrap();
        assert_eq!(s.reason(), None);
        s.request(ExitReason::PowerOff);
        s.request(ExitReason::GuestCrash("x".into()));
        assert_eq!(s.reason(), Some(ExitReason::PowerOff));
        assert_eq!(s.evt.read().unwrap(), 1);
        assert_eq!(ExitReason::GuestCrash(String::new()).exit_code(), 2);
        assert_eq!(ExitReason::Signal(15).exit_code(), 0);
    }
}
