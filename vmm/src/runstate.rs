//! The VM's run state, with QEMU's names (`query-status`) and the subset of
//! QEMU's transition table (system/runstate.c) that this VMM can reach.
//! One place decides which changes are legal, so that a QMP command, a
//! werror=stop pause and a guest power-off cannot leave the machine in a
//! state QEMU would never report.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Started with `--paused` (QEMU's `-S`): the guest has not run yet.
    Prelaunch,
    Running,
    /// Stopped by QMP `stop`.
    Paused,
    /// Stopped by a werror/rerror=stop policy; `cont` retries the requests.
    IoError,
    /// The guest or the host ended the VM; the VMM is exiting.
    Shutdown,
    /// KVM could not go on (triple fault, internal error).
    InternalError,
}

impl RunState {
    /// The name `query-status` reports.
    pub fn name(self) -> &'static str {
        match self {
            RunState::Prelaunch => "prelaunch",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::IoError => "io-error",
            RunState::Shutdown => "shutdown",
            RunState::InternalError => "internal-error",
        }
    }

    pub fn is_running(self) -> bool {
        self == RunState::Running
    }

    /// States `cont` refuses (QEMU's runstate_needs_reset).
    pub fn needs_reset(self) -> bool {
        matches!(self, RunState::Shutdown | RunState::InternalError)
    }

    /// Whether QEMU allows going from `self` to `to`. Staying in a state is
    /// not a transition and is always allowed.
    pub fn can_go(self, to: RunState) -> bool {
        use RunState::*;
        self == to
            || matches!(
                (self, to),
                (Prelaunch, Running | Shutdown | InternalError)
                    | (Running, Paused | IoError | Shutdown | InternalError)
                    | (Paused, Running | Shutdown)
                    | (IoError, Running | Paused | Shutdown)
                    | (InternalError, Shutdown)
            )
    }
}

#[cfg(test)]
mod tests {
    use super::RunState::{self, *};

    const ALL: [RunState; 6] = [Prelaunch, Running, Paused, IoError, Shutdown, InternalError];

    #[test]
    fn names_are_qemus() {
        let names: Vec<&str> = ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["prelaunch", "running", "paused", "io-error", "shutdown", "internal-error"]);
    }

    #[test]
    fn shutdown_is_final_and_nothing_returns_to_prelaunch() {
        for s in ALL {
            assert_eq!(Shutdown.can_go(s), s == Shutdown, "{s:?}");
            assert_eq!(s.can_go(Prelaunch), s == Prelaunch, "{s:?}");
            assert!(s.can_go(Shutdown), "{s:?} must be able to end");
        }
    }

    #[test]
    fn only_a_running_vm_stops_or_fails_on_io() {
        for s in ALL {
            assert_eq!(s.can_go(Paused), matches!(s, Running | Paused | IoError), "{s:?}");
            assert_eq!(s.can_go(IoError), matches!(s, Running | IoError), "{s:?}");
        }
        assert!(!InternalError.can_go(Running));
        assert!(InternalError.needs_reset() && Shutdown.needs_reset() && !IoError.needs_reset());
    }
}
