//! BlockBackend against QEMU's rules: request checks, read-only errors,
//! error policies and iostatus, statistics, media and trays through a mock
//! device, and a randomized comparison of an O_DIRECT raw file with an
//! in-memory model.

use std::io::{IoSlice, IoSliceMut};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use block::drivers::inject::{Count, InjectDriver, Rule};
use block::drivers::null::NullDriver;
use block::drivers::raw::RawFile;
use block::{BlockBackend, BlockDevOps, BlockDriver, BlockEvent, CacheMode, DiscardMode, ErrorAction, Errno, IoStatus, IoVec, OnError, Op, Outcome};
use std::time::Instant;

fn null_backend(size: u64) -> BlockBackend {
    let b = BlockBackend::new("d0");
    b.insert_medium(Arc::new(NullDriver::new(size)), "null").unwrap();
    b
}

#[test]
fn range_checks_follow_blk_check_byte_request() {
    let b = null_backend(1 << 20);
    let mut buf = [0u8; 512];
    assert_eq!(b.read(0, &mut buf), Ok(()));
    assert_eq!(b.read((1 << 20) - 512, &mut buf), Ok(()), "last sector");
    assert_eq!(b.read((1 << 20) - 511, &mut buf), Err(Errno::EIO), "crosses the end");
    assert_eq!(b.read(1 << 20, &mut []), Ok(()), "empty at the end is fine");
    assert_eq!(b.read((1 << 20) + 1, &mut []), Err(Errno::EIO), "past the end");
    assert_eq!(b.read(u64::MAX - 10, &mut buf), Err(Errno::EIO), "overflow");
    assert_eq!(b.write(1 << 20, &buf), Err(Errno::EIO));
    b.set_allow_write_beyond_eof(true);
    assert_eq!(b.write(1 << 20, &buf), Ok(()), "allowed beyond EOF");
    assert_eq!(b.read(1 << 20, &mut buf), Err(Errno::EIO), "reads are still checked");
    // Refusals of the block layer are failures for the blocking calls; only
    // a device's own refusals count as invalid (QEMU's block_acct_invalid).
    assert_eq!((b.stats().get(Op::Read).failed, b.stats().get(Op::Read).invalid), (4, 0));
}

#[test]
fn check_order_is_qemus() {
    // blk_check_byte_request: too large → EIO before no medium → ENOMEDIUM
    // before out of range → EIO; read-only's EPERM only after all of those.
    let empty = BlockBackend::new("e");
    empty.set_read_only(true);
    let huge = block::backend::MAX_REQUEST_BYTES + 512;
    assert_eq!(empty.discard(0, huge), Err(Errno::EIO), "oversized beats no medium");
    assert_eq!(empty.discard(0, 512), Err(Errno::ENOMEDIUM), "no medium beats read-only");
    assert_eq!(empty.write_zeroes(u64::MAX - 10, 512, false), Err(Errno::ENOMEDIUM), "no medium beats range");
    let b = null_backend(1 << 20);
    b.set_read_only(true);
    assert_eq!(b.discard(1 << 20, 512), Err(Errno::EIO), "range beats read-only");
    assert_eq!(b.write(u64::MAX - 10, &[0u8; 512]), Err(Errno::EIO), "overflow beats read-only");
    assert_eq!(b.write(0, &[0u8; 512]), Err(Errno::EPERM));
    // Flush of a read-only drive: a successful no-op; without medium ENOMEDIUM.
    assert_eq!(b.flush(), Ok(()));
    assert_eq!(empty.flush(), Err(Errno::ENOMEDIUM));
}

#[test]
fn flush_and_truncate_with_the_tray_open_are_enomedium() {
    let b = null_backend(1 << 20);
    let cd = Arc::new(MockCd::default());
    b.attach_dev(cd.clone());
    cd.tray_open.store(true, Ordering::SeqCst);
    assert_eq!(b.flush(), Err(Errno::ENOMEDIUM));
    assert_eq!(b.truncate(4096), Err(Errno::ENOMEDIUM));
    assert_eq!(b.getlength(), Err(Errno::ENOMEDIUM));
    assert_eq!(b.read(0, &mut [0u8; 512]), Err(Errno::ENOMEDIUM));
    cd.tray_open.store(false, Ordering::SeqCst);
    assert_eq!(b.flush(), Ok(()));
    assert_eq!(b.truncate(4096), Ok(()));
}

#[test]
fn no_medium_is_enomedium() {
    let b = BlockBackend::new("cd");
    let mut buf = [0u8; 2048];
    assert_eq!(b.read(0, &mut buf), Err(Errno::ENOMEDIUM));
    assert_eq!(b.write(0, &buf), Err(Errno::ENOMEDIUM));
    assert_eq!(b.flush(), Err(Errno::ENOMEDIUM));
    assert_eq!(b.getlength(), Err(Errno::ENOMEDIUM));
    assert!(!b.is_inserted());
}

#[test]
fn read_only_is_eperm_for_writes_and_eacces_for_truncate() {
    let b = null_backend(1 << 20);
    b.set_read_only(true);
    let mut buf = [0u8; 512];
    assert_eq!(b.read(0, &mut buf), Ok(()));
    assert_eq!(b.write(0, &buf), Err(Errno::EPERM));
    // discard=ignore returns before the write check, as QEMU's
    // bdrv_co_pdiscard; with unmap it is a write like any other.
    assert_eq!(b.discard(0, 512), Ok(()));
    b.set_discard(DiscardMode::Unmap);
    assert_eq!(b.discard(0, 512), Err(Errno::EPERM));
    assert_eq!(b.write_zeroes(0, 512, false), Err(Errno::EPERM));
    assert_eq!(b.truncate(4096), Err(Errno::EACCES));
    assert_eq!(b.flush(), Ok(()));
}

#[test]
fn error_actions_for_every_policy_and_errno() {
    let b = null_backend(4096);
    let errnos = [Errno::EIO, Errno::ENOSPC, Errno::EROFS, Errno::EPERM];
    for (write_policy, expect) in [
        (OnError::Report, [ErrorAction::Report; 4]),
        (OnError::Ignore, [ErrorAction::Ignore; 4]),
        (OnError::Stop, [ErrorAction::Stop; 4]),
        (OnError::Enospc, [ErrorAction::Report, ErrorAction::Stop, ErrorAction::Report, ErrorAction::Report]),
    ] {
        b.set_on_error(OnError::Report, write_policy).unwrap();
        for (e, want) in errnos.iter().zip(expect) {
            assert_eq!(b.error_action(false, *e), want, "werror={write_policy} errno={e:?}");
            assert_eq!(b.error_action(true, *e), ErrorAction::Report, "rerror=report");
        }
    }
    // QEMU's table for rerror, written out: enospc is refused for reads.
    for (read_policy, want) in
        [(OnError::Report, ErrorAction::Report), (OnError::Ignore, ErrorAction::Ignore), (OnError::Stop, ErrorAction::Stop)]
    {
        b.set_on_error(read_policy, OnError::Report).unwrap();
        for e in errnos {
            assert_eq!(b.error_action(true, e), want, "rerror={read_policy} errno={e:?}");
            assert_eq!(b.error_action(false, e), ErrorAction::Report, "werror=report");
        }
    }
    assert!(b.set_on_error(OnError::Enospc, OnError::Report).is_err());
}

#[test]
fn handle_error_sets_iostatus_once_and_reports_events() {
    let b = null_backend(4096);
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    b.set_event_sink(Some(Box::new(move |e| sink.lock().unwrap().push(e))));
    b.set_on_error(OnError::Stop, OnError::Enospc).unwrap();
    assert_eq!(b.iostatus(), None, "not enabled yet");
    b.iostatus_enable();
    assert_eq!(b.iostatus(), Some(IoStatus::Ok));
    assert_eq!(b.handle_error(false, Errno::EIO), ErrorAction::Report, "enospc policy, EIO: report");
    assert_eq!(b.iostatus(), Some(IoStatus::Ok), "report leaves iostatus alone");
    assert_eq!(b.handle_error(false, Errno::ENOSPC), ErrorAction::Stop);
    assert_eq!(b.iostatus(), Some(IoStatus::NoSpace));
    assert_eq!(b.handle_error(true, Errno::EIO), ErrorAction::Stop);
    assert_eq!(b.iostatus(), Some(IoStatus::NoSpace), "the first failure wins");
    b.iostatus_reset();
    assert_eq!(b.iostatus(), Some(IoStatus::Ok));
    let ev = events.lock().unwrap();
    assert_eq!(ev.len(), 3);
    let node = b.node_name().unwrap();
    assert!(node.starts_with("#block"), "{node}");
    assert_eq!(
        ev[1],
        BlockEvent::IoError {
            device: "d0".into(),
            node_name: Some(node),
            operation: "write",
            action: ErrorAction::Stop,
            nospace: Some(true),
            reason: "No space left on device".into(),
        }
    );
    assert!(matches!(ev[2], BlockEvent::IoError { operation: "read", nospace: Some(false), .. }));
    // With policies that cannot stop, iostatus is not shown, nor `nospace`
    // in the event (QEMU's blk_iostatus_is_enabled).
    b.set_on_error(OnError::Report, OnError::Report).unwrap();
    assert_eq!(b.iostatus(), None);
    drop(ev);
    b.handle_error(false, Errno::ENOSPC);
    assert!(matches!(events.lock().unwrap()[3], BlockEvent::IoError { nospace: None, .. }));
    // Without a medium the event has no node name.
    b.remove_medium();
    b.handle_error(false, Errno::EIO);
    assert!(matches!(events.lock().unwrap()[4], BlockEvent::IoError { node_name: None, .. }));
}

#[test]
fn stats_count_ops_bytes_failures() {
    let inject = Arc::new(InjectDriver::new(Arc::new(NullDriver::new(1 << 20))));
    let b = BlockBackend::new("d1");
    b.insert_medium(inject.clone(), "x").unwrap();
    assert!(b.stats().idle_time().is_none());
    let mut buf = [0u8; 4096];
    b.read(0, &mut buf).unwrap();
    b.read(4096, &mut buf[..512]).unwrap();
    b.write(0, &buf).unwrap();
    b.flush().unwrap();
    b.discard(0, 8192).unwrap();
    inject.add_rule(Rule { op: Some(Op::Read), sectors: None, errno: libc::EIO, count: Count::Once });
    assert_eq!(b.read(0, &mut buf), Err(Errno::EIO));
    let r = b.stats().get(Op::Read);
    assert_eq!((r.ops, r.bytes, r.failed, r.invalid), (2, 4608, 1, 0));
    let w = b.stats().get(Op::Write);
    assert_eq!((w.ops, w.bytes), (1, 4096));
    assert_eq!(b.stats().get(Op::Flush).ops, 1);
    assert_eq!(b.stats().get(Op::Discard).bytes, 8192);
    assert!(b.stats().idle_time().is_some());
}

#[derive(Default)]
struct MockCd {
    tray_open: AtomicBool,
    locked: AtomicBool,
    eject_requests: AtomicU32,
    resizes: AtomicU32,
}

impl BlockDevOps for MockCd {
    fn change_media(&self, load: bool) {
        self.tray_open.store(!load, Ordering::SeqCst);
    }
    fn eject_request(&self, force: bool) {
        self.eject_requests.fetch_add(1, Ordering::SeqCst);
        if force {
            self.locked.store(false, Ordering::SeqCst);
        }
    }
    fn is_tray_open(&self) -> bool {
        self.tray_open.load(Ordering::SeqCst)
    }
    fn is_medium_locked(&self) -> bool {
        self.locked.load(Ordering::SeqCst)
    }
    fn resize(&self) {
        self.resizes.fetch_add(1, Ordering::SeqCst);
    }
    fn removable(&self) -> bool {
        true
    }
    fn has_tray(&self) -> bool {
        true
    }
}

#[test]
fn media_and_tray_through_a_mock_device() {
    let b = BlockBackend::new("ide1-cd0");
    assert!(b.has_removable_media(), "no device: removable, as QEMU says");
    let cd = Arc::new(MockCd::default());
    b.attach_dev(cd.clone());
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    b.set_event_sink(Some(Box::new(move |e| sink.lock().unwrap().push(e))));
    assert!(b.has_removable_media() && b.has_tray());
    b.insert_medium(Arc::new(NullDriver::new(2048 * 100)), "a.iso").unwrap();
    assert!(b.insert_medium(Arc::new(NullDriver::new(1)), "b.iso").is_err(), "already a medium");
    assert!(b.is_available());
    let mut buf = [0u8; 2048];
    assert_eq!(b.read(0, &mut buf), Ok(()));

    b.change_media(false); // open the tray
    assert!(b.is_tray_open() && b.is_inserted() && !b.is_available());
    assert_eq!(b.read(0, &mut buf), Err(Errno::ENOMEDIUM), "tray open: no medium for I/O");
    b.change_media(false); // already open: no second event
    assert!(b.remove_medium().is_some());
    assert_eq!(b.medium_filename(), None);
    b.insert_medium(Arc::new(NullDriver::new(2048 * 10)), "b.iso").unwrap();
    b.change_media(true);
    assert!(b.is_available());
    assert_eq!(b.medium_filename().as_deref(), Some("b.iso"));
    assert_eq!(
        *events.lock().unwrap(),
        vec![
            BlockEvent::TrayMoved { device: "ide1-cd0".into(), tray_open: true },
            BlockEvent::TrayMoved { device: "ide1-cd0".into(), tray_open: false },
        ]
    );

    cd.locked.store(true, Ordering::SeqCst);
    assert!(b.is_medium_locked());
    b.eject_request(false);
    assert!(b.is_medium_locked());
    b.eject_request(true);
    assert!(!b.is_medium_locked());
    assert_eq!(cd.eject_requests.load(Ordering::SeqCst), 2);

    b.truncate(2048 * 20).unwrap();
    assert_eq!(cd.resizes.load(Ordering::SeqCst), 1);
    assert_eq!(b.getlength(), Ok(2048 * 20));
}

/// A file on a filesystem that takes O_DIRECT: the target directory, or
/// /dev/shm (tmpfs does since Linux 6.6).
fn direct_file(tag: &str, len: u64) -> Option<PathBuf> {
    for dir in [PathBuf::from(env!("CARGO_TARGET_TMPDIR")), PathBuf::from("/dev/shm")] {
        let p = dir.join(format!("backend-direct-{}-{tag}", std::process::id()));
        std::fs::write(&p, vec![0u8; len as usize]).ok()?;
        if RawFile::open(&p, false, CacheMode::None).is_ok() {
            return Some(p);
        }
        let _ = std::fs::remove_file(&p);
    }
    None
}

/// xorshift64*: deterministic, so a failure reproduces from the seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn o_direct_raw_file_matches_a_memory_model_under_random_io() {
    const SIZE: u64 = 256 * 1024;
    let path = direct_file("model", SIZE).expect("no filesystem here accepts O_DIRECT");
    let drv = Arc::new(RawFile::open(&path, false, CacheMode::None).unwrap());
    assert!(drv.request_alignment() >= 512, "O_DIRECT alignment {}", drv.request_alignment());
    let b = BlockBackend::new("prop");
    b.insert_medium(drv, "prop").unwrap();
    // The model zeroes discarded ranges: punch holes.
    b.set_discard(DiscardMode::Unmap);
    let mut model = vec![0u8; SIZE as usize];
    for seed in [1u64, 0xdead_beef, 42, 7_777_777] {
        let mut rng = Rng(seed);
        for step in 0..400 {
            let aligned = rng.below(2) == 0;
            let (off, len) = if aligned {
                let off = rng.below(SIZE / 512) * 512;
                (off, (rng.below(16) + 1) * 512)
            } else {
                (rng.below(SIZE), rng.below(9000) + 1)
            };
            let len = len.min(SIZE - off);
            let ctx = format!("seed {seed} step {step} off {off} len {len}");
            match rng.below(5) {
                0 | 1 => {
                    // A write split over two buffers, one of them at an odd address.
                    let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    let cut = rng.below(len + 1) as usize;
                    b.pwritev(off, &[IoSlice::new(&data[..cut]), IoSlice::new(&data[cut..])]).expect(&ctx);
                    model[off as usize..(off + len) as usize].copy_from_slice(&data);
                }
                2 => {
                    b.discard(off - off % 4096, (len / 4096) * 4096).expect(&ctx);
                    let (s, l) = (off - off % 4096, (len / 4096) * 4096);
                    model[s as usize..(s + l) as usize].fill(0);
                }
                3 => {
                    b.write_zeroes(off, len, rng.below(2) == 0).expect(&ctx);
                    model[off as usize..(off + len) as usize].fill(0);
                }
                _ => {}
            }
            // Read back a random range, also through an odd split.
            let (roff, rlen) = (rng.below(SIZE), rng.below(10000) + 1);
            let rlen = rlen.min(SIZE - roff) as usize;
            let mut got = vec![0u8; rlen + 1];
            let (head, tail) = got[1..].split_at_mut(rng.below(rlen as u64 + 1) as usize);
            b.preadv(roff, &mut [IoSliceMut::new(head), IoSliceMut::new(tail)]).expect(&ctx);
            assert!(got[1..] == model[roff as usize..roff as usize + rlen], "{ctx}: read {roff}+{rlen} differs");
        }
    }
    let on_disk = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(on_disk == model, "file differs from the model at the end");
}

/// Storage that logs every call, fails discards with a chosen errno, and
/// takes at most `max_discard` bytes per discard.
#[derive(Default)]
struct LogDisk {
    calls: Mutex<Vec<(&'static str, u64, u64, bool)>>,
    discard_errno: Option<i32>,
    max_discard: u64,
}

impl BlockDriver for LogDisk {
    fn name(&self) -> &'static str {
        "log"
    }
    fn size(&self) -> block::IoResult<u64> {
        Ok(1 << 30)
    }
    fn preadv(&self, off: u64, iov: &[IoVec]) -> block::IoResult<()> {
        self.calls.lock().unwrap().push(("read", off, block::iov::total_len(iov), false));
        Ok(())
    }
    fn pwritev(&self, off: u64, iov: &[IoVec]) -> block::IoResult<()> {
        self.calls.lock().unwrap().push(("write", off, block::iov::total_len(iov), false));
        Ok(())
    }
    fn flush(&self) -> block::IoResult<()> {
        self.calls.lock().unwrap().push(("flush", 0, 0, false));
        Ok(())
    }
    fn discard(&self, off: u64, len: u64) -> block::IoResult<()> {
        self.calls.lock().unwrap().push(("discard", off, len, false));
        self.discard_errno.map_or(Ok(()), |e| Err(Errno(e)))
    }
    fn write_zeroes(&self, off: u64, len: u64, unmap: bool) -> block::IoResult<()> {
        self.calls.lock().unwrap().push(("zeroes", off, len, unmap));
        Ok(())
    }
    fn truncate(&self, _: u64) -> block::IoResult<()> {
        Ok(())
    }
    fn max_discard(&self) -> u64 {
        if self.max_discard == 0 {
            block::backend::MAX_REQUEST_BYTES
        } else {
            self.max_discard
        }
    }
}

fn log_backend(disk: LogDisk) -> (BlockBackend, Arc<LogDisk>) {
    let disk = Arc::new(disk);
    let b = BlockBackend::new("log");
    b.insert_medium(disk.clone(), "log").unwrap();
    (b, disk)
}

#[test]
fn discard_follows_the_discard_key() {
    // discard=ignore (the default, as QEMU's): success, nothing reaches the
    // storage, and write-zeroes never deallocates.
    let (b, disk) = log_backend(LogDisk::default());
    assert_eq!(b.discard_mode(), DiscardMode::Ignore);
    assert_eq!(b.discard(0, 8192), Ok(()));
    assert_eq!(b.write_zeroes(0, 4096, true), Ok(()));
    assert_eq!(*disk.calls.lock().unwrap(), vec![("zeroes", 0, 4096, false)]);
    // discard=unmap: split to the driver's limit, and unmap honoured.
    let (b, disk) = log_backend(LogDisk { max_discard: 4096, ..Default::default() });
    b.set_discard(DiscardMode::Unmap);
    assert_eq!(b.discard(512, 10000), Ok(()));
    assert_eq!(b.write_zeroes(0, 4096, true), Ok(()));
    assert_eq!(
        *disk.calls.lock().unwrap(),
        vec![("discard", 512, 4096, false), ("discard", 4608, 4096, false), ("discard", 8704, 1808, false), ("zeroes", 0, 4096, true)]
    );
}

#[test]
fn discard_enotsup_is_success_and_other_errors_are_not() {
    // A host file system without hole punching must never make a guest's
    // TRIM fail (and so never stop a VM under werror=stop), as in QEMU.
    let (b, _) = log_backend(LogDisk { discard_errno: Some(libc::EOPNOTSUPP), ..Default::default() });
    b.set_discard(DiscardMode::Unmap);
    assert_eq!(b.discard(0, 4096), Ok(()));
    let (b, _) = log_backend(LogDisk { discard_errno: Some(libc::EIO), ..Default::default() });
    b.set_discard(DiscardMode::Unmap);
    assert_eq!(b.discard(0, 4096), Err(Errno::EIO));
}

#[test]
fn write_cache_off_makes_every_write_stable_before_it_completes() {
    // cache=writethrough and directsync: a write is followed by a flush
    // before it completes; with the cache on it is not.
    let (b, disk) = log_backend(LogDisk::default());
    b.set_write_cache(CacheMode::Writethrough.write_cache());
    b.write(0, &[1u8; 512]).unwrap();
    b.write_zeroes(4096, 4096, false).unwrap();
    b.read(0, &mut [0u8; 512]).unwrap();
    assert_eq!(
        *disk.calls.lock().unwrap(),
        vec![("write", 0, 512, false), ("flush", 0, 0, false), ("zeroes", 4096, 4096, false), ("flush", 0, 0, false), ("read", 0, 512, false)]
    );
    let (b, disk) = log_backend(LogDisk::default());
    b.set_write_cache(CacheMode::Writeback.write_cache());
    b.write(0, &[1u8; 512]).unwrap();
    assert_eq!(*disk.calls.lock().unwrap(), vec![("write", 0, 512, false)]);
}

#[test]
fn complete_request_accounts_as_qemus_devices() {
    let b = null_backend(1 << 20);
    b.set_on_error(OnError::Ignore, OnError::Stop).unwrap();
    let t = Instant::now();
    assert_eq!(b.complete_request(Op::Read, 512, t, Ok(())), Outcome::Ok);
    // Ignored: done, with its bytes.
    assert_eq!(b.complete_request(Op::Read, 1024, t, Err(Errno::EIO)), Outcome::Ok);
    // Stopped: not accounted at all; its retry is, once.
    assert_eq!(b.complete_request(Op::Write, 4096, t, Err(Errno::EIO)), Outcome::Stop);
    assert_eq!(b.stats().get(Op::Write), Default::default());
    assert_eq!(b.complete_request(Op::Write, 4096, t, Ok(())), Outcome::Ok);
    b.set_on_error(OnError::Report, OnError::Report).unwrap();
    assert_eq!(b.complete_request(Op::WriteZeroes, 8192, t, Err(Errno::ENOSPC)), Outcome::Error(Errno::ENOSPC));
    let (r, w) = (b.stats().get(Op::Read), b.stats().get(Op::Write));
    assert_eq!((r.ops, r.bytes, r.failed), (2, 1536, 0));
    assert_eq!((w.ops, w.bytes, w.failed), (1, 4096, 1), "write-zeroes counts as a write");
}

#[test]
#[should_panic(expected = "drained_end without drained_begin")]
fn an_unbalanced_drained_end_is_caught() {
    let b = null_backend(4096);
    b.drained_begin();
    b.drained_end();
    b.drained_end();
}

/// A device that logs its drained_begin/end calls.
#[derive(Default)]
struct Seen(Mutex<Vec<&'static str>>);

impl BlockDevOps for Seen {
    fn drained_begin(&self) {
        self.0.lock().unwrap().push("begin");
    }
    fn drained_end(&self) {
        self.0.lock().unwrap().push("end");
    }
}

#[test]
fn a_device_attached_inside_a_section_is_stopped_and_let_go_on_detach() {
    let b = null_backend(4096);
    b.drained_begin();
    let first = Arc::new(Seen::default());
    b.attach_dev(first.clone());
    assert_eq!(*first.0.lock().unwrap(), ["begin"], "stopped as it is attached inside the section");
    b.detach_dev();
    assert_eq!(*first.0.lock().unwrap(), ["begin", "end"], "let go as it leaves");
    let second = Arc::new(Seen::default());
    b.attach_dev(second.clone());
    b.drained_end();
    assert_eq!(*second.0.lock().unwrap(), ["begin", "end"]);
    assert_eq!(*first.0.lock().unwrap(), ["begin", "end"], "nothing more for the detached one");
}

#[test]
fn media_operations_drain_first() {
    // A drained section seen by the device around each media operation.
    let b = BlockBackend::new("m");
    let dev = Arc::new(Seen::default());
    b.attach_dev(dev.clone());
    b.insert_medium(Arc::new(NullDriver::new(4096)), "a").unwrap();
    let old = b.change_medium(Arc::new(NullDriver::new(8192)), "b");
    assert_eq!(old.map(|d| d.size()), Some(Ok(4096)));
    assert_eq!(b.getlength(), Ok(8192));
    assert!(b.remove_medium().is_some());
    assert_eq!(*dev.0.lock().unwrap(), ["begin", "end"].repeat(3));
    assert!(!b.is_drained());
}

#[test]
fn an_empty_request_at_an_odd_offset_touches_nothing() {
    // Read-modify-write of the block around an empty write would extend a
    // file whose size is not a multiple of the O_DIRECT block.
    let Some(path) = direct_file("empty", 4096) else {
        println!("SKIPPED: no filesystem here accepts O_DIRECT");
        eprintln!("SKIPPED: no filesystem here accepts O_DIRECT");
        return;
    };
    std::fs::write(&path, vec![7u8; 1000]).unwrap();
    let b = BlockBackend::new("empty");
    b.insert_medium(Arc::new(RawFile::open(&path, false, CacheMode::None).unwrap()), "e").unwrap();
    let mut odd = [0u8; 2];
    assert_eq!(b.write(999, &odd[1..1]), Ok(()));
    assert_eq!(b.read(999, &mut odd[1..1]), Ok(()));
    let on_disk = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(on_disk, vec![7u8; 1000], "the file changed");
}

#[test]
fn an_unaligned_write_into_the_partial_last_block_does_not_grow_the_file() {
    // 1000 bytes: the last 512-byte block is partial. Writing into it goes
    // through a whole-block O_DIRECT write, which must not leave the file
    // (or the drive's length) grown.
    let Some(path) = direct_file("tail", 4096) else {
        println!("SKIPPED: no filesystem here accepts O_DIRECT");
        eprintln!("SKIPPED: no filesystem here accepts O_DIRECT");
        return;
    };
    std::fs::write(&path, vec![7u8; 1000]).unwrap();
    let b = BlockBackend::new("tail");
    b.insert_medium(Arc::new(RawFile::open(&path, false, CacheMode::None).unwrap()), "t").unwrap();
    assert_eq!(b.write(990, &[1u8; 10]), Ok(()));
    assert_eq!(b.getlength(), Ok(1000));
    let mut back = [0u8; 12];
    assert_eq!(b.read(988, &mut back), Ok(()));
    assert_eq!(back, [7, 7, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
    let on_disk = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(on_disk.len(), 1000, "the file grew");
    assert!(on_disk[..990].iter().all(|&x| x == 7) && on_disk[990..].iter().all(|&x| x == 1));
}

#[test]
fn an_injection_layer_comes_and_goes_at_runtime_keeping_the_medium() {
    use block::drivers::inject::{Count, Latency, Rule};
    let b = BlockBackend::new("inj");
    b.insert_medium(Arc::new(block::drivers::null::NullDriver::new(1 << 20)), "null-co://").unwrap();
    let node = b.node_name();
    assert!(b.injection().is_none(), "no layer until a rule is wanted");
    let i = b.injector().unwrap();
    assert!(Arc::ptr_eq(&i, &b.injector().unwrap()), "one layer");
    i.add_rule(Rule { op: Some(block::Op::Write), sectors: None, errno: libc::EIO, count: Count::UntilRemoved });
    i.add_latency(Latency { op: Some(block::Op::Read), sectors: None, delay: std::time::Duration::from_millis(20) });
    assert_eq!(b.write(0, &[1u8; 512]), Err(block::Errno::EIO));
    let t = std::time::Instant::now();
    assert_eq!(b.read(0, &mut [0u8; 512]), Ok(()));
    assert!(t.elapsed() >= std::time::Duration::from_millis(20));
    assert_eq!((b.node_name(), b.medium_driver(), b.medium_filename().as_deref()), (node.clone(), Some("null"), Some("null-co://")));
    b.clear_injection();
    assert!(b.injection().is_none());
    assert_eq!(b.write(0, &[1u8; 512]), Ok(()), "the rules went with the layer");
    assert_eq!(b.node_name(), node);
}
