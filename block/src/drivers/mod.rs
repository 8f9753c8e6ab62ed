//! The drivers behind `BlockDriver`.

pub mod inject;
pub mod null;
pub mod raw;
