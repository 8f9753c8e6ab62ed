//! Opening a drive's image as QEMU's bdrv_open does: the format given or
//! probed (with QEMU's warning for a raw image), a qcow2 backing chain from
//! the headers, image locking, and snapshot=on's throw-away overlay.
//! Raw images stay on the raw driver (io_uring); qcow2 goes through imago.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::driver::{os_reason, BlockDriver};
use crate::drivers::lock;
use crate::drivers::options::CacheMode;
use crate::drivers::qcow2::{Qcow2Image, MAGIC};
use crate::drivers::raw::RawFile;
use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            _ => Err(Error::InvalidValue { what: "format", value: s.to_string(), expected: "raw, qcow2" }),
        }
    }
}

/// One image of a chain, as query-block shows it (QEMU's ImageInfo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub filename: String,
    pub format: Format,
    pub virtual_size: u64,
    /// The backing file's name as the header has it, and its format.
    pub backing_filename: Option<String>,
    pub backing_format: Option<String>,
    pub backing: Option<Box<ImageInfo>>,
}

impl ImageInfo {
    /// Backing images below this one (QEMU's backing_file_depth).
    pub fn depth(&self) -> usize {
        self.backing.as_ref().map_or(0, |b| 1 + b.depth())
    }
}

/// How to open an image (the drive's `format=`, `readonly=`, `cache=` and
/// `snapshot=`).
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// None: probe, as QEMU does.
    pub format: Option<Format>,
    pub read_only: bool,
    pub cache: CacheMode,
    pub snapshot: bool,
    /// QEMU's locking=off (or force-share): no image locks taken or
    /// checked.
    pub no_lock: bool,
}

pub struct Opened {
    pub driver: Arc<dyn BlockDriver>,
    /// The name the medium goes by (the overlay's, with snapshot=on).
    pub filename: String,
    /// QEMU's warning for a probed raw image, for the caller to print.
    pub warning: Option<String>,
}

/// The format a file's first bytes say: qcow2's magic, else raw.
pub fn probe(path: &Path) -> std::io::Result<Format> {
    let mut head = [0u8; 4];
    let mut f = std::fs::File::open(path)?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(if n == 4 && head == MAGIC { Format::Qcow2 } else { Format::Raw })
}

/// Where snapshot=on puts its overlay: $TMPDIR, else /var/tmp (QEMU's).
pub fn snapshot_dir() -> PathBuf {
    std::env::var_os("TMPDIR").filter(|d| !d.is_empty()).map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from)
}

/// Opens `path` as a drive's medium.
pub fn open(path: &Path, o: &OpenOptions) -> Result<Opened, Error> {
    let fail = |reason: String| Error::Open { path: path.to_path_buf(), reason };
    // The first bytes, read once: to probe, or to check that an image
    // given as qcow2 is one.
    let head = match o.format {
        Some(Format::Raw) => None,
        _ => Some(probe(path).map_err(|e| fail(os_reason(&e)))?),
    };
    let (format, warning) = match o.format {
        Some(f) => (f, None),
        None => match head.unwrap_or(Format::Raw) {
            Format::Raw => (
                Format::Raw,
                Some(format!(
                    "image format was not specified for '{}' and probing guessed raw; automatically detecting the format is dangerous for raw images (a guest can write a header into it): specify format=raw",
                    path.display()
                )),
            ),
            f => (f, None),
        },
    };
    let filename = path.display().to_string();
    if o.snapshot && !o.read_only {
        let (img, overlay) = Qcow2Image::snapshot(path, format, o.cache, &snapshot_dir(), !o.no_lock)?;
        return Ok(Opened { driver: Arc::new(img), filename: overlay.display().to_string(), warning });
    }
    let driver: Arc<dyn BlockDriver> = match format {
        Format::Raw => {
            let mut raw = RawFile::open(path, o.read_only, o.cache)?;
            if !o.no_lock {
                raw.set_lock(lock::lock(path, !o.read_only).map_err(fail)?);
            }
            Arc::new(raw)
        }
        Format::Qcow2 => {
            if head != Some(Format::Qcow2) {
                return Err(fail("not a qcow2 image (no qcow2 header)".into()));
            }
            Arc::new(Qcow2Image::open(path, o.read_only, o.cache, !o.no_lock)?)
        }
    };
    Ok(Opened { driver, filename, warning })
}
