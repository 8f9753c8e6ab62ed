//! The seam between a drive and its storage. A driver does byte-addressed
//! I/O and nothing else: request checking, alignment for O_DIRECT, error
//! policies and accounting live in `BlockBackend`, once for every driver.

use crate::iov::IoVec;

/// A failed request, as the errno the guest-facing policy decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub const EIO: Errno = Errno(libc::EIO);
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const ENOMEDIUM: Errno = Errno(libc::ENOMEDIUM);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const ENOTSUP: Errno = Errno(libc::ENOTSUP);
    pub const ENOMEM: Errno = Errno(libc::ENOMEM);

    pub fn last() -> Errno {
        Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO))
    }
}

/// The plain strerror text ("No space left on device"), as QEMU's
/// BLOCK_IO_ERROR `reason` carries it: without Rust's " (os error N)".
impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&os_reason(&std::io::Error::from_raw_os_error(self.0)))
    }
}

/// An I/O error's text without Rust's " (os error N)" suffix, for
/// messages that name the file themselves (QEMU's wording).
pub fn os_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

pub type IoResult<T> = Result<T, Errno>;

/// How an asynchronous queue may run a driver's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsyncMode {
    /// Never blocks and costs little: run at submission, on the caller's
    /// thread (null). A thread hop would cost more than the request.
    Inline,
    /// A plain file: a read or write at offset N is exactly a read or write
    /// of this descriptor at N, so io_uring may do it directly; `flush` says
    /// whether a flush must reach the file (false for cache=unsafe).
    File { fd: std::os::fd::RawFd, flush: bool },
    /// May block: run on the thread pool.
    Blocking,
}

/// Byte-addressed storage. Calls may come from several threads at once.
///
/// `preadv` and `pwritev` transfer the whole request or fail; a read past
/// the end of the storage returns zeros for the missing part (as a raw
/// file's does in QEMU). Offsets and lengths are already checked against the
/// size by the backend, and aligned to `request_alignment` when the driver
/// asks for it.
pub trait BlockDriver: Send + Sync {
    /// Short name for messages and statistics ("raw", "null", "inject").
    fn name(&self) -> &'static str;
    /// Current size in bytes.
    fn size(&self) -> IoResult<u64>;
    /// Reads into the segments (valid for writes by `IoVec::new`'s
    /// contract, and only ever reached through raw pointers).
    fn preadv(&self, offset: u64, iov: &[IoVec]) -> IoResult<()>;
    fn pwritev(&self, offset: u64, iov: &[IoVec]) -> IoResult<()>;
    /// Makes completed writes durable.
    fn flush(&self) -> IoResult<()>;
    /// Hints that a range is unused; reads may then return zeros or the old
    /// data. ENOTSUP when the storage cannot.
    fn discard(&self, offset: u64, len: u64) -> IoResult<()>;
    /// Makes a range read as zeros; `unmap` allows deallocating it.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> IoResult<()>;
    /// Changes the size.
    fn truncate(&self, size: u64) -> IoResult<()>;
    /// The largest discard the driver takes in one call; the backend
    /// splits longer ones (QEMU's max_pdiscard).
    fn max_discard(&self) -> u64 {
        crate::backend::MAX_REQUEST_BYTES
    }
    /// Offset, length and memory alignment that requests must have
    /// (O_DIRECT: the logical block size). 1 when anything goes.
    fn request_alignment(&self) -> usize {
        1
    }
    /// A write that an engine did without the driver (io_uring on the
    /// file) ended at `end`: a driver that caches its size grows it.
    fn grown_to(&self, _end: u64) {}
    /// Blocking unless the driver knows better.
    fn async_mode(&self) -> AsyncMode {
        AsyncMode::Blocking
    }
    /// The image format and its backing chain, for query-block; None for a
    /// driver that is its own storage (a raw file, null), which `name` and
    /// `size` describe.
    fn image_info(&self) -> Option<crate::image::ImageInfo> {
        None
    }
}
