//! Device models. Each sits on an address bus (`bus::Bus`) and is reached by
//! vCPU exits; interrupts and host notifications go through eventfds so that
//! no device needs to know about KVM.

pub mod bus;
pub mod ide;
#[cfg(feature = "testing")]
pub mod fuzz;
pub mod legacy;
pub mod virtio;

pub use bus::{Bus, BusDevice};

/// Errors of the devices crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two devices claim overlapping address ranges: a VMM bug, caught at start.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
    #[error("bus range of zero length at {0:#x}")]
    EmptyRange(u64),
    #[error("eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("virtio queue: {0}")]
    Queue(String),
    #[error("drive '{0}': {1}")]
    Block(String, String),
}

pub type Result<T> = std::result::Result<T, Error>;
