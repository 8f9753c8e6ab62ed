//! The VMM as a library: `config` turns the command line into a checked
//! `VmConfig`, `machine` turns that into a running KVM guest, and `run`
//! maps the result to a process exit status. The binary is a thin shell
//! around `run` so that tests can reach every part.

pub mod acpi;
pub mod arch;
pub mod boot;
pub mod cli;
pub mod config;
pub mod console;
pub mod disks;
pub mod exit;
#[cfg(feature = "testing")]
pub mod fuzz;
pub mod ide;
pub mod machine;
pub mod qmp;
pub mod runstate;
pub mod throttling;
pub mod vcpu;

use std::path::PathBuf;

/// Everything that can stop the VMM before or while it starts a guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(kvm_ioctls::Error),
    #[error("KVM lacks a capability this VMM needs: {0}")]
    KvmCapability(&'static str),
    #[error("KVM {0}: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    #[error("cannot allocate {0} bytes of guest memory: {1}")]
    GuestMemory(u64, String),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    #[error(transparent)]
    Regs(#[from] arch::regs::RegsError),
    #[error("device setup: {0}")]
    Device(#[from] devices::Error),
    #[error("--serial file:{0}: {1}")]
    SerialFile(PathBuf, std::io::Error),
    #[error("drive '{0}': {1}")]
    Drive(String, String),
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    #[error("event loop: {0}")]
    EventManager(event_manager::Error),
    #[error(transparent)]
    Qmp(#[from] qmp::server::BindError),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Parses, boots and runs; returns the process exit status.
/// 0: the guest powered off or reset, or a signal or Ctrl-A x ended it;
///    stderr says which (`vmm: guest powered off`, `vmm: guest reset`,
///    `vmm: terminating on signal N`, `vmm: quit from the console (Ctrl-A x)`).
/// 1: bad input or a host-side failure (one line on stderr).
/// 2: the guest crashed (triple fault, KVM internal error); registers on stderr.
pub fn run(cli: &cli::Cli) -> i32 {
    let config = match config::VmConfig::from_cli(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vmm: {e}");
            return 1;
        }
    };
    match machine::run(&config) {
        Ok(reason) => {
            // Every end says which it was: a power-off and a reset both exit
            // 0, and callers (the tests among them) need to tell them apart.
            match &reason {
                exit::ExitReason::PowerOff => eprintln!("vmm: guest powered off"),
                exit::ExitReason::Reset => eprintln!("vmm: guest reset"),
                exit::ExitReason::Quit => eprintln!("vmm: quit from the console (Ctrl-A x)"),
                exit::ExitReason::GuestCrash(msg) => eprintln!("vmm: guest crashed: {msg}"),
                exit::ExitReason::Signal(sig) => eprintln!("vmm: terminating on signal {sig}"),
                exit::ExitReason::QmpQuit => eprintln!("vmm: quit by QMP"),
                exit::ExitReason::QmpReset => eprintln!("vmm: reset by QMP (the VMM ends on a reset)"),
            }
            reason.exit_code()
        }
        Err(e) => {
            eprintln!("vmm: {e}");
            1
        }
    }
}
