//! qcow2 images, through the `imago` crate (docs/block.md says why that
//! one): the driver adapts imago's blocking API to `BlockDriver`, and this
//! file opens backing chains the way QEMU does, layer by layer, so that
//! each file is locked, a loop or a missing file is named, and query-block
//! can show the chain.
//!
//! What imago leaves to its user, done here:
//! - a guest flush writes imago's metadata caches back and then syncs the
//!   file (imago's `flush` does not sync); cache=unsafe skips only the sync,
//!   as QEMU, so a killed VMM still leaves consistent metadata;
//! - discard (and write-zeroes with unmap, which discards) changes imago's
//!   mappings, so it takes the image exclusively (an `RwLock`: every other
//!   request, plain write-zeroes included, shares it);
//! - discard follows QEMU's qcow2: whole clusters inside the range read as
//!   zeros afterwards, partial clusters at its edges are left alone;
//!   a version 2 image cannot discard (ENOTSUP, which the block layer
//!   reports as success) and writes zeros for write-zeroes.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use imago::file::File;
use imago::io_buffers::{IoVector, IoVectorMut};
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatCreateBuilder, FormatDriverBuilder, Storage, StorageCreateOptions, StorageOpenOptions};

use crate::driver::{os_reason, BlockDriver, Errno, IoResult};
use crate::drivers::lock::{self, ImageLock};
use crate::drivers::options::CacheMode;
use crate::image::{Format, ImageInfo};
use crate::iov::IoVec;
use crate::Error;

/// The qcow2 magic, "QFI\xfb".
pub const MAGIC: [u8; 4] = *b"QFI\xfb";

/// Longest chain opened (QEMU has no limit; a loop is caught by name, this
/// only bounds a pathological stack of distinct files).
const MAX_DEPTH: usize = 256;

/// Zeros are written in pieces of this size where a format cannot mark
/// them (version 2 images).
const ZERO_CHUNK: usize = 1 << 20;

pub struct Qcow2Image {
    img: RwLock<FormatAccess<File>>,
    info: ImageInfo,
    /// Clusters, where the image can mark them as zeros (version 3).
    zero_granularity: Option<u64>,
    no_flush: bool,
    /// One per file of the chain, held while the image is open.
    _locks: Vec<ImageLock>,
}

fn errno(e: &io::Error) -> Errno {
    match (e.raw_os_error(), e.kind()) {
        (Some(n), _) => Errno(n),
        (None, io::ErrorKind::Unsupported) => Errno::ENOTSUP,
        (None, io::ErrorKind::InvalidInput) => Errno::EINVAL,
        (None, io::ErrorKind::OutOfMemory) => Errno::ENOMEM,
        (None, io::ErrorKind::StorageFull) => Errno::ENOSPC,
        _ => Errno::EIO,
    }
}

/// `reason`, without the "PATH: " imago puts before its messages (the
/// caller names the file already).
fn reason_at(path: &Path, e: &io::Error) -> String {
    let r = os_reason(e);
    r.strip_prefix(&format!("{}: ", path.display())).map(str::to_string).unwrap_or(r)
}

/// Opens a file of a chain as imago storage (never through an implicit
/// open: every file is opened here, explicitly).
fn storage(path: &Path, write: bool, cache: CacheMode) -> io::Result<File> {
    File::open(storage_opts(path, write, cache))
}

/// One file of a chain, from its header.
struct Layer {
    path: PathBuf,
    format: Format,
    size: u64,
    backing_name: Option<String>,
    backing_format: Option<String>,
}

/// Reads the chain from the headers, top down: each layer's backing file
/// (relative names are relative to the directory of the image that names
/// them, as in QEMU) and format (from the header, or probed). Every error
/// names the top image and, for a backing file, that file.
fn read_chain(top: &Path, top_format: Format) -> Result<Vec<Layer>, Error> {
    let fail = |reason: String| Error::Open { path: top.to_path_buf(), reason };
    let mut layers: Vec<Layer> = Vec::new();
    let mut seen: Vec<(u64, u64)> = Vec::new();
    let (mut path, mut format) = (top.to_path_buf(), top_format);
    loop {
        let backing = !layers.is_empty();
        let what = |r: String| if backing { format!("could not open backing file '{}': {r}", path.display()) } else { r };
        // A file is known by device and inode: hard links and symlinks to
        // one image are one image.
        let canon = std::fs::metadata(&path).map(|m| (m.dev(), m.ino())).map_err(|e| fail(what(os_reason(&e))))?;
        if seen.contains(&canon) {
            return Err(fail(format!("backing file loop: '{}' is in its own backing chain", path.display())));
        }
        if layers.len() == MAX_DEPTH {
            return Err(fail(format!("backing chain deeper than {MAX_DEPTH} images")));
        }
        seen.push(canon);
        let layer = match format {
            Format::Raw => {
                // The end of the file, or of a block device (whose
                // metadata says 0).
                let size = std::fs::File::open(&path)
                    .and_then(|mut f| std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0)))
                    .map_err(|e| fail(what(os_reason(&e))))?;
                Layer { path: path.clone(), format, size, backing_name: None, backing_format: None }
            }
            Format::Qcow2 => {
                let q = storage(&path, false, CacheMode::Writeback)
                    .and_then(|f| Qcow2::<File>::builder(f).write(false).backing(None).open(DenyImplicitOpenGate::default()))
                    .map_err(|e| fail(what(reason_at(&path, &e))))?;
                if q.requires_external_data_file() {
                    return Err(fail(what("external data files are not supported".into())));
                }
                let (name, fmt) = (q.implicit_backing_file().cloned(), q.implicit_backing_format().cloned());
                let size = FormatAccess::new(q).size();
                Layer { path: path.clone(), format, size, backing_name: name, backing_format: fmt }
            }
        };
        let next = layer.backing_name.clone().map(|n| {
            let p = PathBuf::from(&n);
            if p.is_absolute() {
                p
            } else {
                layer.path.parent().unwrap_or(Path::new(".")).join(p)
            }
        });
        let next_format = layer.backing_format.clone();
        layers.push(layer);
        let Some(next) = next else { return Ok(layers) };
        format = match next_format.as_deref() {
            Some("qcow2") => Format::Qcow2,
            Some("raw") | Some("file") => Format::Raw,
            Some(other) => return Err(fail(format!("backing file '{}': format '{other}' is not supported (raw or qcow2)", next.display()))),
            // QEMU probes a backing file whose format the header omits.
            None => crate::image::probe(&next).map_err(|e| fail(format!("could not open backing file '{}': {}", next.display(), os_reason(&e))))?,
        };
        path = next;
    }
}

/// How each file is opened: O_DIRECT for cache=none/directsync.
fn storage_opts(path: &Path, write: bool, cache: CacheMode) -> StorageOpenOptions {
    StorageOpenOptions::new().filename(path).write(write).direct(cache.direct())
}

/// Opens `layers` bottom up, each explicitly over the one below it, the
/// top one writable unless `read_only`. Locks every file.
fn open_layers(layers: &[Layer], read_only: bool, cache: CacheMode, top: &Path, locking: bool) -> Result<(FormatAccess<File>, Vec<ImageLock>), Error> {
    let fail = |reason: String| Error::Open { path: top.to_path_buf(), reason };
    let mut locks = Vec::new();
    let mut below: Option<FormatAccess<File>> = None;
    for (i, l) in layers.iter().enumerate().rev() {
        let write = i == 0 && !read_only;
        let name = |r: String| if i == 0 { r } else { format!("backing file '{}': {r}", l.path.display()) };
        if locking {
            locks.push(lock::lock(&l.path, write).map_err(|e| fail(name(e)))?);
        }
        let file = storage(&l.path, write, cache).map_err(|e| fail(name(reason_at(&l.path, &e))))?;
        let access = match l.format {
            Format::Raw => Raw::<File>::builder(file).write(write).open(DenyImplicitOpenGate::default()).map(FormatAccess::new),
            Format::Qcow2 => Qcow2::<File>::builder(file)
                .write(write)
                .backing(below.take())
                .open(DenyImplicitOpenGate::default())
                .map(FormatAccess::new),
        };
        below = Some(access.map_err(|e| fail(name(reason_at(&l.path, &e))))?);
    }
    let top_access = below.ok_or_else(|| fail("empty backing chain".into()))?;
    Ok((top_access, locks))
}

fn info_of(layers: &[Layer]) -> ImageInfo {
    let mut info: Option<ImageInfo> = None;
    for l in layers.iter().rev() {
        info = Some(ImageInfo {
            filename: l.path.display().to_string(),
            format: l.format,
            virtual_size: l.size,
            backing_filename: l.backing_name.clone(),
            backing_format: l.backing_format.clone(),
            backing: info.take().map(Box::new),
        });
    }
    info.unwrap_or_else(|| ImageInfo {
        filename: String::new(),
        format: Format::Qcow2,
        virtual_size: 0,
        backing_filename: None,
        backing_format: None,
        backing: None,
    })
}

impl Qcow2Image {
    /// Opens a qcow2 image and its backing chain from the headers.
    /// `locking`: QEMU's image locks on every file of the chain.
    pub fn open(path: &Path, read_only: bool, cache: CacheMode, locking: bool) -> Result<Qcow2Image, Error> {
        let layers = read_chain(path, Format::Qcow2)?;
        let (access, locks) = open_layers(&layers, read_only, cache, path, locking)?;
        Ok(Qcow2Image::new(access, info_of(&layers), cache, locks))
    }

    fn new(access: FormatAccess<File>, info: ImageInfo, cache: CacheMode, locks: Vec<ImageLock>) -> Qcow2Image {
        let zero_granularity = access.inner().zero_granularity();
        Qcow2Image { img: RwLock::new(access), info, zero_granularity, no_flush: cache.no_flush(), _locks: locks }
    }

    /// QEMU's snapshot=on: a new qcow2 overlay in `dir` over the image at
    /// `path` (opened read-only, raw or qcow2), whose writes go to the
    /// overlay only. The overlay's file is unlinked once open, so it goes
    /// with the process however it ends. Returns the image and the
    /// overlay's (removed) file name.
    pub fn snapshot(path: &Path, format: Format, cache: CacheMode, dir: &Path, locking: bool) -> Result<(Qcow2Image, PathBuf), Error> {
        let fail = |reason: String| Error::Open { path: path.to_path_buf(), reason };
        let layers = read_chain(path, format)?;
        let (base, locks) = open_layers(&layers, true, cache, path, locking)?;
        let base_info = info_of(&layers);
        let abs = std::fs::canonicalize(path).map_err(|e| fail(os_reason(&e)))?;
        let size = base.size();
        let tmp = temp_name(dir);
        let file = File::create_open(StorageCreateOptions::new().filename(&tmp).overwrite(false))
            .map_err(|e| fail(format!("cannot create the snapshot overlay '{}': {}", tmp.display(), os_reason(&e))))?;
        let overlay = Qcow2::<File>::create_builder(file)
            .backing(abs.display().to_string(), format.name().to_string())
            .size(size)
            .create_open(DenyImplicitOpenGate::default(), |f| Ok(Qcow2::<File>::builder(f).write(true).backing(Some(base))));
        // The overlay is ours alone: gone from the directory at once.
        let _ = std::fs::remove_file(&tmp);
        let overlay = overlay.map_err(|e| fail(format!("cannot create the snapshot overlay '{}': {}", tmp.display(), os_reason(&e))))?;
        let info = ImageInfo {
            filename: tmp.display().to_string(),
            format: Format::Qcow2,
            virtual_size: size,
            backing_filename: Some(abs.display().to_string()),
            backing_format: Some(format.name().to_string()),
            backing: Some(Box::new(base_info)),
        };
        Ok((Qcow2Image::new(FormatAccess::new(overlay), info, cache, locks), tmp))
    }

    fn shared(&self) -> RwLockReadGuard<'_, FormatAccess<File>> {
        self.img.read().unwrap_or_else(|e| e.into_inner())
    }

    fn exclusive(&self) -> RwLockWriteGuard<'_, FormatAccess<File>> {
        self.img.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Zeros written as data, in pieces (an image that cannot mark them).
    fn write_zero_data(&self, offset: u64, len: u64) -> IoResult<()> {
        let zeros = vec![0u8; ZERO_CHUNK.min(len as usize)];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.shared().write(&zeros[..n], offset + done).map_err(|e| errno(&e))?;
            done += n as u64;
        }
        Ok(())
    }
}

/// `$dir/vmm-snapshot.PID.N.qcow2`, a name no other process of ours uses.
fn temp_name(dir: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!("vmm-snapshot.{}.{n}.qcow2", std::process::id()))
}

impl BlockDriver for Qcow2Image {
    fn name(&self) -> &'static str {
        "qcow2"
    }

    fn size(&self) -> IoResult<u64> {
        Ok(self.shared().size())
    }

    fn preadv(&self, offset: u64, iov: &[IoVec]) -> IoResult<()> {
        let mut v = IoVectorMut::with_capacity(iov.len());
        for s in iov {
            // SAFETY: the segments are valid for writes until the request
            // completes (IoVec::new's contract), and nothing else touches
            // them meanwhile.
            v.push(unsafe { std::slice::from_raw_parts_mut(s.base(), s.len()) });
        }
        self.shared().readv(v, offset).map_err(|e| errno(&e))
    }

    fn pwritev(&self, offset: u64, iov: &[IoVec]) -> IoResult<()> {
        let mut v = IoVector::with_capacity(iov.len());
        for s in iov {
            // SAFETY: as above; a write only reads them.
            v.push(unsafe { std::slice::from_raw_parts(s.base(), s.len()) });
        }
        self.shared().writev(v, offset).map_err(|e| errno(&e))
    }

    fn flush(&self) -> IoResult<()> {
        let img = self.shared();
        img.flush().map_err(|e| errno(&e))?;
        if self.no_flush {
            return Ok(());
        }
        img.sync().map_err(|e| errno(&e))
    }

    fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        let Some(g) = self.zero_granularity.filter(|g| *g > 0) else { return Err(Errno::ENOTSUP) };
        let start = offset.div_ceil(g) * g;
        let end = (offset + len) / g * g;
        if start >= end {
            return Ok(());
        }
        self.exclusive().discard_to_zero(start, end - start).map_err(|e| errno(&e))
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> IoResult<()> {
        let r = if unmap {
            self.exclusive().discard_to_zero(offset, len)
        } else {
            self.shared().write_zeroes(offset, len)
        };
        match r {
            Err(e) if e.kind() == io::ErrorKind::Unsupported => self.write_zero_data(offset, len),
            r => r.map_err(|e| errno(&e)),
        }
    }

    fn truncate(&self, size: u64) -> IoResult<()> {
        let img = self.exclusive();
        let now = img.size();
        if size == now {
            return Ok(());
        }
        if size < now {
            // QEMU refuses to shrink qcow2 without --shrink too.
            return Err(Errno::ENOTSUP);
        }
        img.resize_grow(size, imago::format::PreallocateMode::None).map_err(|e| errno(&e))
    }

    fn image_info(&self) -> Option<ImageInfo> {
        let mut info = self.info.clone();
        info.virtual_size = self.shared().size();
        Some(info)
    }
}
