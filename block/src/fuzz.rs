//! Fuzz harness for the block layer's request checks (`fuzz/` runs it under
//! libFuzzer; `tests/fuzz_corpus.rs` replays the corpus on stable Rust).
//!
//! `requests` decodes a sequence of read / write / discard / write-zeroes /
//! flush requests with arbitrary offsets, lengths and buffer layouts
//! (several segments, misaligned addresses and lengths) and runs them
//! through `BlockBackend`'s public blocking API on a small raw image opened
//! with O_DIRECT, so that every unaligned request goes through the bounce
//! and read-modify-write paths. An in-memory model says what each request
//! must do:
//! - a request inside the image succeeds (an error there is a bug: O_DIRECT
//!   saw something unaligned, a bounce went wrong);
//! - one that is not is refused with EIO, and a write-like request on a
//!   read-only drive with EPERM (QEMU's check order; a discard with
//!   discard=ignore succeeds before that check); neither changes anything;
//! - every successful read returns the model's bytes and writes nothing
//!   outside its buffers (the gaps between segments are checked);
//! - discarded bytes may read as their old value or as zeros, until they
//!   are read or rewritten;
//! - at the end the file itself (read through a second, buffered
//!   descriptor) holds the model's bytes and has not changed size.
//!
//! Input format (bytes past the end read as zero): one config byte (bit 0:
//! which image, bit 1: discard=unmap rather than ignore), then operations,
//! each a tag byte and its arguments; see `Op` and `Encoder`, which builds
//! inputs for the seed corpus.

#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::fs::File;
use std::io::{IoSlice, IoSliceMut};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::drivers::raw::RawFile;
use crate::{BlockBackend, CacheMode, DiscardMode, Errno};

/// A byte cursor over the fuzz input: reads past the end give zeros, so
/// every input decodes to something.
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// Up to `n` bytes of the input as they are (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = self.pos.saturating_add(n).min(self.data.len());
        self.pos = self.pos.saturating_add(n);
        &self.data[start..end]
    }
}

/// Image sizes the config byte chooses from: whole O_DIRECT blocks, and a
/// size that ends in the middle of one.
pub const IMAGE_SIZES: [u64; 2] = [64 << 10, (64 << 10) - 300];
/// Was a known bug (a bounced write into the last, partial O_DIRECT block
/// of an image whose size is not a multiple of the alignment grew the
/// file); fixed in `io::bounce_write`, reproducer kept as
/// `corpus/block_requests/regression-unaligned-image-tail-write-grows-file`.
/// Setting this skips such writes, for bisecting.
pub const AVOID_TAIL_GROWTH: bool = false;
/// Operations per input, so that one execution stays short.
pub const MAX_OPS: usize = 16;
/// Segments per vectored request.
pub const MAX_SEGS: usize = 8;
/// The largest buffer-backed request: the image and a bit more, so that
/// requests crossing the end are covered.
const MAX_LEN: u64 = IMAGE_SIZES[0] + 4096;
/// Bytes in front of a segment, at most (misalignment and gaps).
const MAX_GAP: usize = 4096;
const BUF_LEN: usize = MAX_LEN as usize + MAX_SEGS * MAX_GAP + 4096;
/// What the buffers hold where no request may write.
const CANARY: u8 = 0xc5;

/// Tags of the operations (the tag byte modulo `TAGS`).
pub mod tag {
    pub const READ: u8 = 0;
    pub const PREADV: u8 = 1;
    pub const WRITE: u8 = 2;
    pub const PWRITEV: u8 = 3;
    pub const DISCARD: u8 = 4;
    pub const WRITE_ZEROES: u8 = 5;
    pub const FLUSH: u8 = 6;
    pub const GETLENGTH: u8 = 7;
    pub const READ_ONLY: u8 = 8;
    pub const VERIFY: u8 = 9;
    pub const TAGS: u8 = 10;
}

/// A decoded operation, kept for the failure message.
#[derive(Debug, Clone)]
enum Op {
    Read { off: u64, segs: Vec<(usize, usize)>, vectored: bool },
    Write { off: u64, segs: Vec<(usize, usize)>, vectored: bool, seed: u8 },
    Discard { off: u64, len: u64 },
    WriteZeroes { off: u64, len: u64, unmap: bool },
    Flush,
    GetLength,
    ReadOnly(bool),
    Verify,
}

/// Offsets: mostly inside the image, some just past it, some that overflow.
fn offset(inp: &mut Input, size: u64) -> u64 {
    let k = inp.u8();
    match k % 8 {
        0..=2 => u64::from(inp.u16()) % (size + 1),
        3 => u64::from(inp.u8()) % (size / 512 + 1) * 512,
        4 => size.saturating_sub(u64::from(inp.u8())),
        5 => size + u64::from(inp.u8()),
        6 => inp.u64(),
        _ => u64::MAX - u64::from(inp.u8()),
    }
}

/// Lengths of buffer-backed requests: bounded by `MAX_LEN`.
fn length(inp: &mut Input, size: u64) -> u64 {
    let k = inp.u8();
    match k % 8 {
        0 | 1 => u64::from(inp.u8()),
        2 | 3 => u64::from(inp.u8() % 17) * 512,
        4 => u64::from(inp.u16()) % 8192,
        5 => u64::from(inp.u16()) % (size + 1),
        6 => (size + u64::from(inp.u16())).min(MAX_LEN),
        _ => 0,
    }
}

/// Lengths of discard and write-zeroes, which need no buffer: any value.
fn big_length(inp: &mut Input, size: u64) -> u64 {
    let k = inp.u8();
    match k % 8 {
        0..=5 => length(inp, size),
        6 => inp.u64(),
        _ => u64::MAX - u64::from(inp.u8()),
    }
}

/// The gap in front of a segment: none, a few bytes, or just short of a
/// 512-byte or 4 KiB boundary.
fn gap(inp: &mut Input) -> usize {
    let b = inp.u8();
    let small = usize::from(b >> 2);
    match b % 4 {
        0 => 0,
        1 => small,
        2 => 512 - small,
        _ => MAX_GAP - small,
    }
}

/// `len` bytes cut into segments, each after a gap: (start in the buffer,
/// length) pairs that never overlap.
fn segments(inp: &mut Input, len: u64, vectored: bool) -> Vec<(usize, usize)> {
    let n = if vectored { 1 + usize::from(inp.u8()) % MAX_SEGS } else { 1 };
    let mut left = len as usize;
    let mut at = 0;
    let mut segs = Vec::with_capacity(n);
    for i in 0..n {
        at += gap(inp);
        let l = if i + 1 == n { left } else { usize::from(inp.u16()) % (left + 1) };
        segs.push((at, l));
        at += l;
        left -= l;
    }
    segs
}

/// What writes write: a stretch of this, from an offset the input picks.
fn pattern() -> Vec<u8> {
    (0..MAX_LEN as usize + 256 * 64).map(|i| (i as u8).wrapping_mul(29).wrapping_add((i >> 8) as u8) ^ 0x5a).collect()
}

/// The image's contents at the start of every execution: no zero byte, a
/// different pattern in each sector, so a misplaced or zeroed byte shows.
fn initial_byte(i: usize) -> u8 {
    ((i % 251) + (i >> 9) * 7) as u8 % 255 + 1
}

struct Image {
    size: u64,
    /// What O_DIRECT needs here (1 with the page cache).
    align: u64,
    backend: BlockBackend,
    /// The same file through the page cache, to reset and check it
    /// without going through the code under test.
    side: File,
    initial: Vec<u8>,
}

struct State {
    images: Vec<Image>,
    /// 4 KiB-aligned backing store for request buffers.
    buf: Vec<u8>,
    base: usize,
    /// Where the images are and how they were opened, for the docs/tests.
    info: String,
    pattern: Vec<u8>,
}

/// Where O_DIRECT works: `BLOCK_FUZZ_DIR` if set, then /dev/shm (tmpfs
/// takes O_DIRECT since Linux 6.6, and is much faster than a disk), then
/// the temp dir. Falls back to the page cache when none does, and says so.
fn open_image(size: u64, idx: usize) -> (RawFile, File, String) {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("BLOCK_FUZZ_DIR") {
        dirs.push(d.into());
    }
    dirs.push("/dev/shm".into());
    dirs.push(std::env::temp_dir());
    let name = format!("block-fuzz-{}-{idx}-{:?}", std::process::id(), std::thread::current().id());
    let name: String = name.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    let create = |p: &PathBuf| -> Option<File> {
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(p).ok()?;
        f.set_len(size).ok()?;
        Some(f)
    };
    for cache in [CacheMode::None, CacheMode::Writeback] {
        for d in &dirs {
            let p = d.join(&name);
            let Some(side) = create(&p) else { continue };
            let opened = RawFile::open(&p, false, cache);
            // The descriptors keep the file; nothing is left behind.
            let _ = std::fs::remove_file(&p);
            if let Ok(raw) = opened {
                let how = if cache == CacheMode::None { "cache=none (O_DIRECT)" } else { "cache=writeback (no filesystem took O_DIRECT)" };
                return (raw, side, format!("{} in {}, {how}", size, d.display()));
            }
        }
    }
    panic!("block fuzz: cannot create an image in any of {dirs:?}");
}

impl State {
    fn new() -> State {
        let mut images = Vec::new();
        let mut info = Vec::new();
        for (i, &size) in IMAGE_SIZES.iter().enumerate() {
            let (raw, side, what) = open_image(size, i);
            let align = crate::BlockDriver::request_alignment(&raw) as u64;
            let backend = BlockBackend::new(&format!("fuzz{i}"));
            backend.insert_medium(Arc::new(raw), "fuzz").unwrap();
            let initial = (0..size as usize).map(initial_byte).collect();
            images.push(Image { size, align, backend, side, initial });
            info.push(format!("{what}, alignment {align}"));
        }
        let buf = vec![0u8; BUF_LEN + 4096];
        let base = buf.as_ptr().align_offset(4096);
        State { images, buf, base, info: info.join("; "), pattern: pattern() }
    }
}

/// The repository's corpus of a fuzz target, `fuzz/corpus/TARGET`, which
/// every crate's corpus test replays (block, devices and vmm alike).
pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

/// Runs `harness` on every file of the target's corpus, in name order,
/// and returns how many there were. An empty corpus fails (nothing would
/// be replayed), and a failing input is named.
pub fn replay(target: &str, harness: fn(&[u8])) -> usize {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap_or_else(|e| panic!("{}: {e}", dir.display())).path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty: nothing would be replayed", dir.display());
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let r = std::panic::catch_unwind(|| harness(&data));
        assert!(r.is_ok(), "{} fails", f.display());
    }
    files.len()
}

/// Writes hand-made seeds into the target's corpus as `seed-NAME`, when
/// FUZZ_WRITE_SEEDS is set (the ignored `write_seeds` tests; see
/// docs/fuzzing.md).
pub fn write_seeds(target: &str, seeds: Vec<(&str, Vec<u8>)>) {
    if std::env::var_os("FUZZ_WRITE_SEEDS").is_none() {
        return;
    }
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for (name, data) in seeds {
        let f = dir.join(format!("seed-{name}"));
        std::fs::write(&f, data).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// How the harness opened its images (directory, cache mode), as a line
/// for logs and docs.
pub fn image_info() -> String {
    STATE.with(|s| s.borrow_mut().get_or_insert_with(State::new).info.clone())
}

/// The model of the image: known bytes, and bytes a discard may have
/// zeroed.
struct Model {
    bytes: Vec<u8>,
    maybe_zero: Vec<bool>,
}

impl Model {
    /// The first byte of `got` (read at `off`) the model does not allow.
    /// Compares in blocks (memcmp) first: byte loops are slow under ASan.
    fn matches(&self, off: usize, got: &[u8]) -> Option<usize> {
        let want = &self.bytes[off..off + got.len()];
        for (c, (g, w)) in got.chunks(256).zip(want.chunks(256)).enumerate() {
            if g == w {
                continue;
            }
            let maybe = &self.maybe_zero[off + c * 256..];
            if let Some(i) = (0..g.len()).find(|&i| g[i] != w[i] && !(maybe[i] && g[i] == 0)) {
                return Some(c * 256 + i);
            }
        }
        None
    }

    /// What was read is what the file holds from now on.
    fn learn(&mut self, off: usize, got: &[u8]) {
        self.bytes[off..off + got.len()].copy_from_slice(got);
        self.maybe_zero[off..off + got.len()].fill(false);
    }
}

struct Run<'a> {
    img: &'a Image,
    pattern: &'a [u8],
    buf: &'a mut [u8],
    model: Model,
    read_only: bool,
    /// discard=unmap (else discard=ignore).
    unmap: bool,
    log: Vec<Op>,
}

impl Run<'_> {
    fn fail(&self, what: std::fmt::Arguments) -> ! {
        panic!("block fuzz: {what}\nimage size {}, operations so far:\n{:#?}", self.img.size, self.log);
    }

    fn in_range(&self, off: u64, len: u64) -> bool {
        off.checked_add(len).is_some_and(|end| end <= self.img.size)
    }

    /// The result a request must have, in QEMU's check order: EIO outside
    /// the image, then EPERM for a write-like request on a read-only drive,
    /// else Ok.
    fn expected(&self, off: u64, len: u64, write: bool) -> Result<(), Errno> {
        if !self.in_range(off, len) {
            Err(Errno::EIO)
        } else if write && self.read_only {
            Err(Errno::EPERM)
        } else {
            Ok(())
        }
    }

    /// A write-like request the known tail bug would make fail.
    fn hits_tail_bug(&self, off: u64, len: u64) -> bool {
        let tail = self.img.size - self.img.size % self.img.align;
        AVOID_TAIL_GROWTH && !self.read_only && tail < self.img.size && self.in_range(off, len) && off + len > tail
    }

    fn check_result(&self, what: &str, got: Result<(), Errno>, want: Result<(), Errno>) {
        if got != want {
            self.fail(format_args!("{what}: got {got:?}, want {want:?}"));
        }
    }

    fn read(&mut self, off: u64, segs: &[(usize, usize)], vectored: bool) {
        let len: usize = segs.iter().map(|s| s.1).sum();
        // The canary covers the segments and a block beyond the last one.
        let used = segs.last().map_or(0, |&(at, l)| at + l);
        let checked = (used + MAX_GAP).min(self.buf.len());
        self.buf[..checked].fill(CANARY);
        let r = if vectored {
            let mut rest: &mut [u8] = &mut *self.buf;
            let mut consumed = 0;
            let mut iov = Vec::with_capacity(segs.len());
            for &(at, l) in segs {
                let tail = std::mem::take(&mut rest);
                let (_, tail) = tail.split_at_mut(at - consumed);
                let (seg, tail) = tail.split_at_mut(l);
                iov.push(IoSliceMut::new(seg));
                rest = tail;
                consumed = at + l;
            }
            self.img.backend.preadv(off, &mut iov)
        } else {
            let (at, l) = segs[0];
            self.img.backend.read(off, &mut self.buf[at..at + l])
        };
        let want = self.expected(off, len as u64, false);
        self.check_result("read", r, want);
        // Nothing outside the segments changed, whatever the result.
        let mut prev = 0;
        for &(at, l) in segs.iter().chain(std::iter::once(&(checked, 0))) {
            let canary = [CANARY; 256];
            for (c, chunk) in self.buf[prev..at].chunks(256).enumerate() {
                if chunk != &canary[..chunk.len()] {
                    let i = prev + c * 256 + chunk.iter().position(|&b| b != CANARY).unwrap_or(0);
                    self.fail(format_args!("read at {off} wrote byte {i} of the buffer, outside its segments {segs:?}"));
                }
            }
            prev = at + l;
        }
        if r.is_err() {
            return;
        }
        let mut pos = off as usize;
        for &(at, l) in segs {
            let got = &self.buf[at..at + l];
            if let Some(i) = self.model.matches(pos, got) {
                let j = pos + i;
                self.fail(format_args!(
                    "read at {off}: image byte {j} read as {:#x}, model says {:#x}{}",
                    got[i],
                    self.model.bytes[j],
                    if self.model.maybe_zero[j] { " or 0" } else { "" }
                ));
            }
            let got = got.to_vec();
            self.model.learn(pos, &got);
            pos += l;
        }
    }

    fn write(&mut self, off: u64, segs: &[(usize, usize)], vectored: bool, seed: u8) {
        let len: usize = segs.iter().map(|s| s.1).sum();
        if self.hits_tail_bug(off, len as u64) {
            return;
        }
        let start = usize::from(seed) * 64;
        let data = &self.pattern[start..start + len];
        let mut pos = 0;
        for &(at, l) in segs {
            self.buf[at..at + l].copy_from_slice(&data[pos..pos + l]);
            pos += l;
        }
        let iov: Vec<IoSlice> = segs.iter().map(|&(at, l)| IoSlice::new(&self.buf[at..at + l])).collect();
        let r = if vectored { self.img.backend.pwritev(off, &iov) } else { self.img.backend.write(off, &iov[0]) };
        let want = self.expected(off, len as u64, true);
        self.check_result("write", r, want);
        if r.is_ok() {
            let o = off as usize;
            self.model.bytes[o..o + len].copy_from_slice(data);
            self.model.maybe_zero[o..o + len].fill(false);
        }
    }

    fn discard(&mut self, off: u64, len: u64) {
        let r = self.img.backend.discard(off, len);
        let mut want = self.expected(off, len, true);
        if !self.unmap && self.in_range(off, len) {
            // discard=ignore returns before the read-only check, as
            // QEMU's bdrv_co_pdiscard does.
            want = Ok(());
        }
        self.check_result("discard", r, want);
        if r.is_ok() {
            let (o, l) = (off as usize, len as usize);
            for j in o..o + l {
                self.model.maybe_zero[j] = true;
            }
        }
    }

    fn write_zeroes(&mut self, off: u64, len: u64, unmap: bool) {
        if self.hits_tail_bug(off, len) {
            return;
        }
        let r = self.img.backend.write_zeroes(off, len, unmap);
        let want = self.expected(off, len, true);
        self.check_result("write_zeroes", r, want);
        if r.is_ok() {
            let (o, l) = (off as usize, len as usize);
            self.model.bytes[o..o + l].fill(0);
            self.model.maybe_zero[o..o + l].fill(false);
        }
    }

    /// The whole image through the backend, in one aligned buffer.
    fn verify(&mut self) {
        let size = self.img.size as usize;
        self.read(0, &[(0, size)], false);
    }

    /// The file itself, through the page cache: the model's bytes, and the
    /// size it had.
    fn verify_file(&mut self) {
        let size = self.img.size as usize;
        let len = self.img.side.metadata().map(|m| m.len()).unwrap_or(0);
        if len != self.img.size {
            self.fail(format_args!("the image file is now {len} bytes long"));
        }
        self.img.side.read_exact_at(&mut self.buf[..size], 0).unwrap();
        if let Some(i) = self.model.matches(0, &self.buf[..size]) {
            let g = self.buf[i];
            self.fail(format_args!("the file holds {g:#x} at {i}, the model {:#x}", self.model.bytes[i]));
        }
    }
}

/// One execution: see the module documentation.
pub fn requests(data: &[u8]) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let State { images, buf, base, pattern, .. } = s.get_or_insert_with(State::new);
        let mut inp = Input::new(data);
        let config = inp.u8();
        let img = &images[usize::from(config & 1)];
        let size = img.size;
        img.backend.set_discard(if config & 2 != 0 { DiscardMode::Unmap } else { DiscardMode::Ignore });
        img.backend.set_read_only(false);
        img.side.set_len(size).unwrap();
        img.side.write_all_at(&img.initial, 0).unwrap();
        let buf = &mut buf[*base..*base + BUF_LEN];
        let model = Model { bytes: img.initial.clone(), maybe_zero: vec![false; size as usize] };
        let unmap = config & 2 != 0;
        let mut run = Run { img, pattern, buf, model, read_only: false, unmap, log: Vec::new() };
        for _ in 0..MAX_OPS {
            if inp.is_empty() {
                break;
            }
            let op = match inp.u8() % tag::TAGS {
                t @ (tag::READ | tag::PREADV) => {
                    let vectored = t == tag::PREADV;
                    let off = offset(&mut inp, size);
                    let len = length(&mut inp, size);
                    Op::Read { off, segs: segments(&mut inp, len, vectored), vectored }
                }
                t @ (tag::WRITE | tag::PWRITEV) => {
                    let vectored = t == tag::PWRITEV;
                    let off = offset(&mut inp, size);
                    let len = length(&mut inp, size);
                    let segs = segments(&mut inp, len, vectored);
                    Op::Write { off, segs, vectored, seed: inp.u8() }
                }
                tag::DISCARD => Op::Discard { off: offset(&mut inp, size), len: big_length(&mut inp, size) },
                tag::WRITE_ZEROES => {
                    let off = offset(&mut inp, size);
                    let len = big_length(&mut inp, size);
                    Op::WriteZeroes { off, len, unmap: inp.u8() & 1 != 0 }
                }
                tag::FLUSH => Op::Flush,
                tag::GETLENGTH => Op::GetLength,
                tag::READ_ONLY => Op::ReadOnly(inp.u8() & 1 != 0),
                _ => Op::Verify,
            };
            run.log.push(op.clone());
            match op {
                Op::Read { off, segs, vectored } => run.read(off, &segs, vectored),
                Op::Write { off, segs, vectored, seed } => run.write(off, &segs, vectored, seed),
                Op::Discard { off, len } => run.discard(off, len),
                Op::WriteZeroes { off, len, unmap } => run.write_zeroes(off, len, unmap),
                Op::Flush => {
                    let r = run.img.backend.flush();
                    run.check_result("flush", r, Ok(()));
                }
                Op::GetLength => {
                    let r = run.img.backend.getlength();
                    if r != Ok(size) {
                        run.fail(format_args!("getlength: {r:?}"));
                    }
                }
                Op::ReadOnly(ro) => {
                    run.img.backend.set_read_only(ro);
                    run.read_only = ro;
                }
                Op::Verify => run.verify(),
            }
        }
        run.log.push(Op::Verify);
        run.verify();
        run.verify_file();
        img.backend.set_read_only(false);
    });
}

/// Builds inputs in the harness's format, for the seed corpus and tests.
#[derive(Default)]
pub struct Encoder {
    pub bytes: Vec<u8>,
}

impl Encoder {
    /// `image`: index into `IMAGE_SIZES`; `unmap`: discard=unmap (else
    /// discard=ignore, the default).
    pub fn new(image: u8, unmap: bool) -> Self {
        Encoder { bytes: vec![(image & 1) | (u8::from(unmap) << 1)] }
    }

    fn offset(&mut self, off: u16) {
        self.bytes.push(0);
        self.bytes.extend_from_slice(&off.to_le_bytes());
    }

    fn length(&mut self, len: u16) {
        self.bytes.push(5);
        self.bytes.extend_from_slice(&len.to_le_bytes());
    }

    /// Segments of `lens` (the last one takes what is left) after gaps
    /// that are `gaps` bytes (each < 64, or 0).
    fn segments(&mut self, lens: &[u16], gaps: &[u8]) {
        self.bytes.push(lens.len().saturating_sub(1) as u8);
        for (i, l) in lens.iter().enumerate() {
            let g = gaps.get(i).copied().unwrap_or(0).min(63);
            self.bytes.push(if g == 0 { 0 } else { 1 | (g << 2) });
            if i + 1 < lens.len() {
                self.bytes.extend_from_slice(&l.to_le_bytes());
            }
        }
    }

    pub fn read(mut self, off: u16, len: u16, gap: u8) -> Self {
        self.bytes.push(tag::READ);
        self.offset(off);
        self.length(len);
        self.bytes.push(if gap == 0 { 0 } else { 1 | (gap.min(63) << 2) });
        self
    }

    /// `lens` must add up to `len`.
    pub fn preadv(mut self, off: u16, len: u16, lens: &[u16], gaps: &[u8]) -> Self {
        self.bytes.push(tag::PREADV);
        self.offset(off);
        self.length(len);
        self.segments(lens, gaps);
        self
    }

    pub fn write(mut self, off: u16, len: u16, gap: u8, seed: u8) -> Self {
        self.bytes.push(tag::WRITE);
        self.offset(off);
        self.length(len);
        self.bytes.push(if gap == 0 { 0 } else { 1 | (gap.min(63) << 2) });
        self.bytes.push(seed);
        self
    }

    pub fn pwritev(mut self, off: u16, len: u16, lens: &[u16], gaps: &[u8], seed: u8) -> Self {
        self.bytes.push(tag::PWRITEV);
        self.offset(off);
        self.length(len);
        self.segments(lens, gaps);
        self.bytes.push(seed);
        self
    }

    pub fn discard(mut self, off: u16, len: u16) -> Self {
        self.bytes.push(tag::DISCARD);
        self.offset(off);
        self.bytes.push(0);
        self.length(len);
        self
    }

    pub fn write_zeroes(mut self, off: u16, len: u16, unmap: bool) -> Self {
        self.bytes.push(tag::WRITE_ZEROES);
        self.offset(off);
        self.bytes.push(0);
        self.length(len);
        self.bytes.push(u8::from(unmap));
        self
    }

    /// A read at an offset far past the end (offset kind 7: u64::MAX - 8).
    pub fn read_overflowing(mut self) -> Self {
        self.bytes.extend_from_slice(&[tag::READ, 7, 8, 0, 16, 0]);
        self
    }

    pub fn flush(mut self) -> Self {
        self.bytes.push(tag::FLUSH);
        self
    }

    pub fn getlength(mut self) -> Self {
        self.bytes.push(tag::GETLENGTH);
        self
    }

    pub fn read_only(mut self, ro: bool) -> Self {
        self.bytes.push(tag::READ_ONLY);
        self.bytes.push(u8::from(ro));
        self
    }

    pub fn verify(mut self) -> Self {
        self.bytes.push(tag::VERIFY);
        self
    }
}

/// Hand-made inputs that reach the deep paths (aligned and bounced reads
/// and writes, read-modify-write at both ends, discard, write-zeroes with
/// unaligned edges, refusals), for the seed corpus.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let e = |image| Encoder::new(image, false);
    let unmap = |image| Encoder::new(image, true);
    vec![
        ("aligned-read-write", e(0).write(4096, 8192, 0, 1).read(4096, 8192, 0).flush().bytes),
        ("unaligned-write-rmw", e(0).write(1000, 3000, 3, 2).read(512, 4096, 0).verify().bytes),
        ("vectored-misaligned", e(0).pwritev(700, 5000, &[100, 1900, 3000], &[1, 17, 63], 3).preadv(0, 8192, &[511, 4097, 3584], &[5, 0, 9]).bytes),
        ("discard-then-read", unmap(0).discard(4096, 12288).read(0, 20000, 0).write(8192, 512, 0, 4).discard(1000, 3000).verify().bytes),
        ("discard-ignored", e(0).discard(0, 8192).verify().bytes),
        ("write-zeroes-edges", unmap(0).write_zeroes(100, 9000, false).write_zeroes(16384, 8192, true).verify().bytes),
        ("read-only-refusals", e(0).read_only(true).write(0, 512, 0, 5).discard(0, 4096).write_zeroes(0, 512, false).read_only(false).verify().bytes),
        ("out-of-range", e(0).read(65000, 1024, 0).write(65535, 2, 0, 6).read_overflowing().getlength().bytes),
        ("unaligned-tail-image", e(1).read(64900, 336, 1).write(60000, 1000, 0, 7).verify().bytes),
    ]
}
