//! The drivers behind `BlockDriver`, and the options they are opened with.

pub mod inject;
pub mod lock;
pub mod null;
pub mod options;
pub mod qcow2;
pub mod raw;
