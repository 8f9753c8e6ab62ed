//! The block layer: named drives (`BlockBackend`) over drivers, with QEMU's
//! error policies. At this stage it holds the vocabulary the rest of the VMM
//! already needs to parse and validate drive options; the backend and its
//! drivers build on these types.

pub mod align;
pub mod backend;
pub mod devops;
pub mod driver;
pub mod drivers;
pub mod policy;
pub mod stats;

pub use backend::{BlockBackend, BlockEvent, IoStatus};
pub use devops::BlockDevOps;
pub use driver::{BlockDriver, Errno, IoResult};
pub use policy::{AioEngine, CacheMode, ErrorAction, OnError};

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
    #[error("there already is a medium in device '{0}'")]
    MediumPresent(String),
}
