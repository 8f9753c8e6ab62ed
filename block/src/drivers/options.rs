//! How a drive's medium is opened: QEMU's `cache=`, `aio=` and `discard=`
//! drive keys. They belong to the storage, not to the error policies.

use std::str::FromStr;

use crate::Error;

/// QEMU's `cache=` shorthand: whether the host page cache is bypassed
/// (O_DIRECT), whether the guest sees a volatile write cache, and whether
/// flushes are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Page cache, write cache on (QEMU's default).
    #[default]
    Writeback,
    /// Page cache, write cache off: every write is stable when it completes.
    Writethrough,
    /// O_DIRECT, write cache on.
    None,
    /// O_DIRECT, write cache off.
    Directsync,
    /// Page cache, flushes dropped: fast, and unsafe on a host crash.
    Unsafe,
}

impl CacheMode {
    /// O_DIRECT.
    pub fn direct(self) -> bool {
        matches!(self, CacheMode::None | CacheMode::Directsync)
    }
    /// The guest sees a write cache (and must flush it); off means each
    /// write is made stable before it completes.
    pub fn write_cache(self) -> bool {
        !matches!(self, CacheMode::Writethrough | CacheMode::Directsync)
    }
    /// Flushes never reach the file.
    pub fn no_flush(self) -> bool {
        self == CacheMode::Unsafe
    }
}

impl FromStr for CacheMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "writeback" => Ok(CacheMode::Writeback),
            "writethrough" => Ok(CacheMode::Writethrough),
            "none" => Ok(CacheMode::None),
            "directsync" => Ok(CacheMode::Directsync),
            "unsafe" => Ok(CacheMode::Unsafe),
            _ => Err(Error::InvalidValue {
                what: "cache mode",
                value: s.to_string(),
                expected: "writeback, writethrough, none, directsync, unsafe",
            }),
        }
    }
}

/// How a raw file's requests reach the host kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AioEngine {
    #[default]
    IoUring,
    Threads,
}

impl FromStr for AioEngine {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "io_uring" => Ok(AioEngine::IoUring),
            "threads" => Ok(AioEngine::Threads),
            _ => Err(Error::InvalidValue { what: "aio engine", value: s.to_string(), expected: "io_uring, threads" }),
        }
    }
}

/// QEMU's `discard=`: whether a guest's discard (and the unmap flag of
/// write-zeroes) may deallocate host blocks. QEMU's default is `ignore`,
/// and so is ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiscardMode {
    /// Discards succeed without touching the image.
    #[default]
    Ignore,
    /// Discards punch holes in the image.
    Unmap,
}

impl FromStr for DiscardMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "ignore" | "off" => Ok(DiscardMode::Ignore),
            "unmap" | "on" => Ok(DiscardMode::Unmap),
            _ => Err(Error::InvalidValue { what: "discard mode", value: s.to_string(), expected: "ignore, unmap" }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_modes_are_qemus_table() {
        // QEMU's table (qemu-options.hx): cache.writeback, cache.direct,
        // cache.no-flush for each shorthand, written out.
        let table = [
            ("writeback", true, false, false),
            ("none", true, true, false),
            ("writethrough", false, false, false),
            ("directsync", false, true, false),
            ("unsafe", true, false, true),
        ];
        for (name, wce, direct, no_flush) in table {
            let m: CacheMode = name.parse().unwrap();
            assert_eq!((m.write_cache(), m.direct(), m.no_flush()), (wce, direct, no_flush), "{name}");
        }
        assert!("bogus".parse::<CacheMode>().is_err());
    }

    #[test]
    fn parses_aio_and_discard() {
        assert_eq!("threads".parse::<AioEngine>(), Ok(AioEngine::Threads));
        assert!("native".parse::<AioEngine>().is_err());
        assert_eq!("unmap".parse::<DiscardMode>(), Ok(DiscardMode::Unmap));
        assert_eq!("ignore".parse::<DiscardMode>(), Ok(DiscardMode::Ignore));
        assert!("trim".parse::<DiscardMode>().is_err());
        assert_eq!(DiscardMode::default(), DiscardMode::Ignore);
    }
}
