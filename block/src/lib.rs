//! The block layer: named drives (`BlockBackend`) over drivers (raw file,
//! null, error injection), with QEMU's request checks, error policies,
//! iostatus, statistics, media and drain; requests run blocking on the
//! caller's thread or asynchronously through an `IoQueue` (io_uring or a
//! thread pool). No KVM and no guest memory here: devices hand in buffers.

pub mod aio;
pub mod align;
pub mod backend;
pub mod devops;
mod drain;
pub mod driver;
pub mod drivers;
mod gate;
pub mod image;
pub mod io;
pub mod iov;
pub mod policy;
pub mod request;
pub mod stats;
pub mod throttle;
pub mod thread;
#[cfg(feature = "testing")]
pub mod fuzz;
#[cfg(feature = "testing")]
pub mod testing;

pub use aio::IoQueue;
pub use backend::{BlockBackend, BlockEvent, IoStatus, Outcome};
pub use devops::BlockDevOps;
pub use driver::{AsyncMode, BlockDriver, Errno, IoResult};
pub use iov::IoVec;
pub use drivers::options::{AioEngine, CacheMode, DiscardMode};
pub use policy::{ErrorAction, OnError};
pub use request::{Completion, Op, Request};

/// Errors of the block crate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A policy, cache mode or engine name that is not one of the known words.
    #[error("invalid {what} '{value}' (expected one of: {expected})")]
    InvalidValue {
        what: &'static str,
        value: String,
        expected: &'static str,
    },
    /// `enospc` makes no sense for reads: QEMU rejects it too, and accepting it
    /// would let a read error set a "no space" iostatus.
    #[error("'enospc' is not a valid read error action")]
    EnospcForRead,
    /// An image that cannot be opened as asked, named in the message.
    #[error("cannot open '{path}': {reason}")]
    Open { path: std::path::PathBuf, reason: String },
    #[error("cannot set up an I/O queue: {0}")]
    Queue(String),
    #[error("there already is a medium in device '{0}'")]
    MediumPresent(String),
}
