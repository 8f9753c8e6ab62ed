//! What a device asks of its drive, in the one shape both the blocking
//! calls and the asynchronous queue use.

use crate::driver::IoResult;
use crate::iov::{total_len, IoVec};
use crate::stats::OpKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReqOp {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes { unmap: bool },
}

impl ReqOp {
    /// How QEMU accounts it: write-zeroes is a write.
    pub fn kind(self) -> OpKind {
        match self {
            ReqOp::Read => OpKind::Read,
            ReqOp::Write | ReqOp::WriteZeroes { .. } => OpKind::Write,
            ReqOp::Flush => OpKind::Flush,
            ReqOp::Discard => OpKind::Discard,
        }
    }

    /// For error policies: only reads are reads (flush and discard count
    /// as writes, as in QEMU's BLOCK_IO_ERROR).
    pub fn is_read(self) -> bool {
        self == ReqOp::Read
    }
}

/// An asynchronous request. `token` comes back in its `Completion`.
///
/// The memory behind `iov` must stay valid, and not be touched by anyone
/// else, until the completion is delivered: submitting is `unsafe` for that.
#[derive(Debug, Clone)]
pub struct Request {
    pub op: ReqOp,
    pub offset: u64,
    /// Bytes: the sum of `iov` for reads and writes, the range for discard
    /// and write-zeroes, 0 for flush.
    pub len: u64,
    pub iov: Vec<IoVec>,
    pub token: u64,
}

impl Request {
    pub fn read(offset: u64, iov: Vec<IoVec>, token: u64) -> Self {
        Request { op: ReqOp::Read, offset, len: total_len(&iov), iov, token }
    }
    pub fn write(offset: u64, iov: Vec<IoVec>, token: u64) -> Self {
        Request { op: ReqOp::Write, offset, len: total_len(&iov), iov, token }
    }
    pub fn flush(token: u64) -> Self {
        Request { op: ReqOp::Flush, offset: 0, len: 0, iov: Vec::new(), token }
    }
    pub fn discard(offset: u64, len: u64, token: u64) -> Self {
        Request { op: ReqOp::Discard, offset, len, iov: Vec::new(), token }
    }
    pub fn write_zeroes(offset: u64, len: u64, unmap: bool, token: u64) -> Self {
        Request { op: ReqOp::WriteZeroes { unmap }, offset, len, iov: Vec::new(), token }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub token: u64,
    pub result: IoResult<()>,
}
