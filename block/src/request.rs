//! What a device asks of its drive, in the one shape the blocking calls,
//! the asynchronous queue, the statistics and the error injection share.

use crate::driver::IoResult;
use crate::iov::{total_len, IoVec};

/// The one operation enum of the crate: requests, statistics (where
/// write-zeroes counts as a write, as in QEMU) and injection rules use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
}

impl Op {
    /// The statistics slot: QEMU accounts write-zeroes as a write.
    pub fn acct(self) -> Op {
        match self {
            Op::WriteZeroes => Op::Write,
            op => op,
        }
    }

    /// For error policies: only reads are reads (flush and discard count
    /// as writes, as in QEMU's BLOCK_IO_ERROR).
    pub fn is_read(self) -> bool {
        self == Op::Read
    }

    /// Changes the medium's contents (refused on a read-only drive).
    pub fn is_write(self) -> bool {
        matches!(self, Op::Write | Op::Discard | Op::WriteZeroes)
    }
}

/// A request. Its length and its buffers agree by construction: reads and
/// writes take their length from the segments, the others carry none.
///
/// The memory behind the segments must stay valid, and not be touched by
/// anyone else, until the request's completion is delivered: building the
/// segments (`IoVec::new`) and submitting are `unsafe` for that.
#[derive(Debug)]
pub struct Request {
    op: Op,
    offset: u64,
    len: u64,
    iov: Vec<IoVec>,
    unmap: bool,
    token: u64,
}

/// A copy for a retry: the same memory, under the same promise (the
/// segments stay valid while any request carrying them can run).
impl Clone for Request {
    fn clone(&self) -> Self {
        Request { iov: self.iov.iter().map(IoVec::dup).collect(), ..*self }
    }
}

impl Request {
    pub fn read(offset: u64, iov: Vec<IoVec>, token: u64) -> Self {
        Request { op: Op::Read, offset, len: total_len(&iov), iov, unmap: false, token }
    }
    pub fn write(offset: u64, iov: Vec<IoVec>, token: u64) -> Self {
        Request { op: Op::Write, offset, len: total_len(&iov), iov, unmap: false, token }
    }
    pub fn flush(token: u64) -> Self {
        Request { op: Op::Flush, offset: 0, len: 0, iov: Vec::new(), unmap: false, token }
    }
    pub fn discard(offset: u64, len: u64, token: u64) -> Self {
        Request { op: Op::Discard, offset, len, iov: Vec::new(), unmap: false, token }
    }
    /// `unmap`: the range may be deallocated (only with discard=unmap).
    pub fn write_zeroes(offset: u64, len: u64, unmap: bool, token: u64) -> Self {
        Request { op: Op::WriteZeroes, offset, len, iov: Vec::new(), unmap, token }
    }

    pub fn op(&self) -> Op {
        self.op
    }
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// Bytes: the segments' total for reads and writes, the range for
    /// discard and write-zeroes, 0 for flush.
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn iov(&self) -> &[IoVec] {
        &self.iov
    }
    pub fn unmap(&self) -> bool {
        self.unmap
    }
    pub fn token(&self) -> u64 {
        self.token
    }
    pub fn set_token(&mut self, token: u64) {
        self.token = token;
    }
    pub(crate) fn into_iov(self) -> Vec<IoVec> {
        self.iov
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub token: u64,
    pub result: IoResult<()>,
}
