//! virtio-blk driven the way a guest driver drives it, without a guest: a
//! test "driver" programs the virtio-mmio registers, lays out a split
//! virtqueue in test memory and reads the used ring, while the device's own
//! I/O thread does the work.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use block::drivers::inject::{Count, InjectDriver, Rule};
use block::drivers::raw::RawFile;
use block::testing::TestDisk;
use block::{AioEngine, BlockBackend, BlockEvent, CacheMode, DiscardMode, ErrorAction, OnError, Op};
use devices::virtio::block::QUEUE_SIZE;
use devices::virtio::testing::*;
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::*;
use vm_memory::{Bytes, GuestAddress};

fn image(tag: &str, len: u64) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("vblk-{}-{tag}", std::process::id()));
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(len).unwrap();
    p
}

fn file_backend(tag: &str, read_only: bool) -> (Arc<BlockBackend>, std::path::PathBuf) {
    let p = image(tag, DISK);
    let b = Arc::new(BlockBackend::new(tag));
    b.set_read_only(read_only);
    b.insert_medium(Arc::new(RawFile::open(&p, read_only, CacheMode::Writeback).unwrap()), "img").unwrap();
    (b, p)
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn every_request_type() {
    let (b, path) = file_backend("types", false);
    let mut d = Driver::new(b.clone(), AioEngine::IoUring, Some("serial-123"));
    let f = d.features();
    for bit in [VIRTIO_F_VERSION_1, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_RING_F_EVENT_IDX] {
        assert_ne!(f & (1 << bit), 0, "feature {bit} not offered");
    }
    assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(d.config(0, 8), DISK / 512, "capacity in sectors");
    assert_eq!(d.config(20, 4), 512, "blk_size");
    d.init(0);

    let data = pattern(7, 8192);
    let w = d.request(VIRTIO_BLK_T_OUT, 8, &data, 0);
    let fl = d.request(VIRTIO_BLK_T_FLUSH, 0, &[], 0);
    d.notify();
    d.wait_used(2);
    assert_eq!((d.status(w), d.status(fl)), (S_OK, S_OK));
    let r = d.request(VIRTIO_BLK_T_IN, 8, &[], 8192);
    let id = d.request(VIRTIO_BLK_T_GET_ID, 0, &[], 20);
    d.notify();
    d.wait_used(4);
    assert_eq!(d.status(r), S_OK);
    assert_eq!(d.data(r, 8192), data);
    assert_eq!(d.status(id), S_OK);
    assert_eq!(&d.data(id, 20)[..12], b"serial-123\0\0");
    // The used length covers the writable bytes: data plus status.
    // The used length counts what was written: data and status of a read,
    // 20 ID bytes and the status for GET_ID, the status alone for a write.
    let lens: Vec<(u32, u32)> = (0..4).map(|i| d.used(i)).collect();
    assert!(lens.contains(&(u32::from(r.head), 8193)), "{lens:?}");
    assert!(lens.contains(&(u32::from(id.head), 21)), "{lens:?}");
    assert!(lens.contains(&(u32::from(w.head), 1)), "{lens:?}");
    // The host image holds it.
    let file = std::fs::read(&path).unwrap();
    assert_eq!(&file[4096..4096 + 8192], &data[..]);

    // Write-zeroes with UNMAP and discard, one segment each.
    let seg = |sector: u64, n: u32, flags: u32| {
        let mut s = sector.to_le_bytes().to_vec();
        s.extend_from_slice(&n.to_le_bytes());
        s.extend_from_slice(&flags.to_le_bytes());
        s
    };
    let wz = d.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &seg(8, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP), 0);
    let dc = d.request(VIRTIO_BLK_T_DISCARD, 0, &seg(16, 8, 0), 0);
    let dc_unmap = d.request(VIRTIO_BLK_T_DISCARD, 0, &seg(16, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP), 0);
    d.notify();
    d.wait_used(7);
    assert_eq!((d.status(wz), d.status(dc), d.status(dc_unmap)), (S_OK, S_OK, S_UNSUPP));
    let file = std::fs::read(&path).unwrap();
    assert!(file[4096..8192].iter().all(|&x| x == 0), "write-zeroes left data");

    // Unknown type, out of range, unaligned length.
    let unk = d.request(42, 0, &[], 512);
    let past = d.request(VIRTIO_BLK_T_IN, DISK / 512, &[], 512);
    let wrap = d.request(VIRTIO_BLK_T_IN, u64::MAX / 256, &[], 512);
    let odd = d.request(VIRTIO_BLK_T_OUT, 0, &[1u8; 100], 0);
    d.notify();
    d.wait_used(11);
    assert_eq!([d.status(unk), d.status(past), d.status(wrap), d.status(odd)], [S_UNSUPP, S_IOERR, S_IOERR, S_IOERR]);

    assert_eq!(b.stats().get(Op::Flush).ops, 1);
    assert_eq!(b.stats().get(Op::Discard).ops, 1);
    assert_eq!(b.stats().get(Op::Write).ops, 2, "write and write-zeroes");
    // Refused by the device (out of range, odd length): invalid, as QEMU's
    // block_acct_invalid; the unknown type is not accounted (QEMU neither).
    assert_eq!(b.stats().get(Op::Read).invalid, 2, "past the end and wrapping");
    assert_eq!(b.stats().get(Op::Write).invalid, 1, "odd length");

    // Idle again after io_uring completions: the I/O thread must sleep,
    // not spin on an eventfd it never reads.
    let before = d.handle.wakeups();
    std::thread::sleep(Duration::from_millis(200));
    let woke = d.handle.wakeups() - before;
    assert!(woke <= 2, "the idle I/O thread woke {woke} times in 200 ms");
    let _ = std::fs::remove_file(path);
}

#[test]
fn without_negotiated_flush_writes_are_flushed_before_completing() {
    // The storage fails its next flush: a write that is flushed before it
    // completes then fails, one that is not succeeds and leaves the rule.
    let disk = TestDisk::new(DISK as usize, true);
    let inject = Arc::new(InjectDriver::new(disk.clone()));
    let b = Arc::new(BlockBackend::new("wt"));
    b.insert_medium(inject.clone(), "inject").unwrap();
    b.set_on_error(OnError::Report, OnError::Report).unwrap();
    let mut d = Driver::new(b.clone(), AioEngine::IoUring, None);
    assert_ne!(d.features() & (1 << VIRTIO_BLK_F_FLUSH), 0, "FLUSH offered");
    inject.add_rule(Rule { op: Some(Op::Flush), sectors: None, errno: libc::EIO, count: Count::Once });
    d.init(1 << VIRTIO_BLK_F_FLUSH);
    assert_eq!(d.config(32, 1), 0, "config writeback shows the cache off");
    let w = d.request(VIRTIO_BLK_T_OUT, 0, &pattern(3, 4096), 0);
    d.notify();
    d.wait_used(1);
    assert_eq!(d.status(w), S_IOERR, "the write's flush failed, so must the write");
    assert_eq!(inject.armed(), 0);
    // With FLUSH negotiated the cache is on again and writes are not flushed.
    inject.add_rule(Rule { op: Some(Op::Flush), sectors: None, errno: libc::EIO, count: Count::Once });
    d.init(0);
    assert_eq!(d.config(32, 1), 1, "config writeback shows the cache on");
    let w = d.request(VIRTIO_BLK_T_OUT, 0, &pattern(4, 4096), 0);
    d.notify();
    d.wait_used(1);
    assert_eq!(d.status(w), S_OK);
    assert_eq!(inject.armed(), 1, "no flush reached the storage");
    assert_eq!(&disk.data()[..4096], &pattern(4, 4096)[..]);
}

#[test]
fn rings_at_address_zero_are_refused() {
    let (b, path) = file_backend("zero", false);
    let mut d = Driver::new(b, AioEngine::IoUring, None);
    for rings in [[0, AVAIL, USED], [DESC, 0, USED], [DESC, AVAIL, 0]] {
        d.init_rings(0, rings);
        assert_ne!(d.r(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0, "{rings:x?} accepted");
    }
    // DRIVER_OK without FEATURES_OK.
    d.w(VIRTIO_MMIO_STATUS, 0);
    d.w(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
    d.w(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK);
    assert_ne!(d.r(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    d.check_alive_after_reset();
    let _ = std::fs::remove_file(path);
}

#[test]
fn read_only_disk_refuses_writes() {
    // As QEMU: the write reaches the block layer, whose EPERM meets the
    // error policy (werror=enospc: report) and counts as failed, with a
    // BLOCK_IO_ERROR; one past the end is refused by the device (invalid).
    let (b, path) = file_backend("ro", true);
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev2 = events.clone();
    b.set_event_sink(Some(Box::new(move |e| ev2.lock().unwrap().push(e))));
    let mut d = Driver::new(b.clone(), AioEngine::IoUring, None);
    assert_ne!(d.features() & (1 << VIRTIO_BLK_F_RO), 0);
    d.init(0);
    let w = d.request(VIRTIO_BLK_T_OUT, 0, &[1u8; 512], 0);
    let past = d.request(VIRTIO_BLK_T_OUT, DISK / 512, &[1u8; 512], 0);
    let id = d.request(VIRTIO_BLK_T_GET_ID, 0, &[], 20);
    d.notify();
    d.wait_used(3);
    assert_eq!((d.status(w), d.status(past)), (S_IOERR, S_IOERR));
    let s = b.stats().get(Op::Write);
    assert_eq!((s.ops, s.failed, s.invalid), (0, 1, 1));
    assert!(
        matches!(&events.lock().unwrap()[..], [BlockEvent::IoError { operation: "write", action: ErrorAction::Report, reason, .. }] if reason == "Operation not permitted"),
        "{:?}",
        events.lock().unwrap()
    );
    assert_eq!(d.data(id, 20), vec![0u8; 20], "no serial: zeros");
    assert!(std::fs::read(&path).unwrap().iter().all(|&x| x == 0));
    let _ = std::fs::remove_file(path);
}

/// Each malformed chain either completes with IOERR (status byte usable)
/// or makes the device ask for a reset; the device never panics, and works
/// again after a reset.
#[test]
fn malformed_chains() {
    let (b, path) = file_backend("bad", false);
    let mut d = Driver::new(b, AioEngine::IoUring, None);
    let outside = MEM_SIZE as u64 + 0x1000;

    // Reported through the status byte.
    type Build = fn(&mut Driver, u64) -> Req;
    let ioerr_cases: [(&str, Build); 4] = [
        ("data outside RAM", |d, outside| {
            let h = d.request(VIRTIO_BLK_T_IN, 0, &[], 512);
            // Point the data descriptor out of RAM.
            d.put_desc(h.head + 1, outside, 512, (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16, h.head + 2);
            h
        }),
        ("header too short", |d, _| {
            let hdr = d.alloc(16);
            let st = d.alloc(1);
            let head = d.chain(&[(hdr, 8, false), (st, 1, true)]);
            d.publish(head);
            Req { head, status: st, data: 0 }
        }),
        ("readable after writable", |d, _| {
            let hdr = d.alloc(16);
            let buf = d.alloc(512);
            let st = d.alloc(1);
            let head = d.chain(&[(hdr, 16, false), (buf, 512, true), (buf, 512, false), (st, 1, true)]);
            d.publish(head);
            Req { head, status: st, data: 0 }
        }),
        ("data straddling the end of RAM", |d, _| {
            let h = d.request(VIRTIO_BLK_T_IN, 0, &[], 512);
            d.put_desc(h.head + 1, MEM_SIZE as u64 - 256, 512, (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16, h.head + 2);
            h
        }),
    ];
    for (what, build) in ioerr_cases {
        d.init(0);
        let r = build(&mut d, outside);
        d.notify();
        d.wait_used(1);
        assert_eq!(d.status(r), S_IOERR, "{what}");
        d.check_alive();
    }

    // Nothing to report through: DEVICE_NEEDS_RESET, no used entry.
    type Break = fn(&mut Driver, u64);
    let reset_cases: [(&str, Break); 7] = [
        ("loop", |d, _| {
            let hdr = d.alloc(16);
            d.put_desc(0, hdr, 16, VRING_DESC_F_NEXT as u16, 1);
            d.put_desc(1, hdr, 16, VRING_DESC_F_NEXT as u16, 0);
            d.publish(0);
        }),
        ("next index out of range", |d, _| {
            let hdr = d.alloc(16);
            d.put_desc(0, hdr, 16, VRING_DESC_F_NEXT as u16, 300);
            d.publish(0);
        }),
        ("status outside RAM", |d, outside| {
            let h = d.request(VIRTIO_BLK_T_IN, 0, &[], 512);
            d.put_desc(h.head + 2, outside, 1, VRING_DESC_F_WRITE as u16, 0);
        }),
        ("status not writable", |d, _| {
            let h = d.request(VIRTIO_BLK_T_IN, 0, &[], 512);
            let st = h.status;
            d.put_desc(h.head + 2, st, 1, 0, 0);
        }),
        ("zero-length status", |d, _| {
            let h = d.request(VIRTIO_BLK_T_IN, 0, &[], 512);
            let st = h.status;
            d.put_desc(h.head + 2, st, 0, VRING_DESC_F_WRITE as u16, 0);
        }),
        ("indirect table too long", |d, _| {
            // 2000 entries chained in a table: over the device's limit.
            let n = 2000u64;
            let table = d.alloc(16 * n);
            let buf = d.alloc(512);
            for i in 0..n {
                let a = table + 16 * i;
                d.mem.write_obj(buf, GuestAddress(a)).unwrap();
                d.mem.write_obj(512u32, GuestAddress(a + 8)).unwrap();
                let flags = if i + 1 < n { VRING_DESC_F_NEXT | VRING_DESC_F_WRITE } else { VRING_DESC_F_WRITE };
                d.mem.write_obj(flags as u16, GuestAddress(a + 12)).unwrap();
                d.mem.write_obj((i + 1) as u16, GuestAddress(a + 14)).unwrap();
            }
            d.put_desc(0, table, (16 * n) as u32, VRING_DESC_F_INDIRECT as u16, 0);
            d.publish(0);
        }),
        ("avail index far ahead", |d, _| {
            d.mem.write_obj(1000u16, GuestAddress(AVAIL + 2)).unwrap();
        }),
    ];
    for (what, build) in reset_cases {
        d.init(0);
        build(&mut d, outside);
        d.notify();
        d.wait_needs_reset();
        assert_eq!(d.used_idx(), 0, "{what}: a used entry for a broken chain");
        // Broken stays broken until the driver resets the device.
        d.check_alive_after_reset();
    }
    let _ = std::fs::remove_file(path);
}

#[test]
fn event_idx_suppresses_interrupts() {
    let b = Arc::new(BlockBackend::new("null"));
    b.insert_medium(Arc::new(block::drivers::null::NullDriver::new(DISK)), "null").unwrap();
    let mut d = Driver::new(b, AioEngine::IoUring, None);
    d.init(0);
    // used_event (after the avail ring): interrupt once used idx passes 2.
    d.mem.write_obj(2u16, GuestAddress(AVAIL + 4 + 2 * u64::from(QUEUE_SIZE))).unwrap();
    let _ = d.irq.read();
    for n in 1..=2u16 {
        d.request(VIRTIO_BLK_T_IN, 0, &[], 512);
        d.notify();
        d.wait_used(n);
    }
    assert!(d.irq.read().is_err(), "interrupted before used_event was passed");
    d.request(VIRTIO_BLK_T_IN, 0, &[], 512);
    d.notify();
    d.wait_used(3);
    assert_eq!(d.irq.read().unwrap(), 1, "one interrupt once used_event was passed");

    // Without EVENT_IDX every batch interrupts.
    d.init(1 << VIRTIO_RING_F_EVENT_IDX);
    let _ = d.irq.read();
    d.request(VIRTIO_BLK_T_IN, 0, &[], 512);
    d.notify();
    d.wait_used(1);
    assert_eq!(d.irq.read().unwrap(), 1);
}

#[test]
fn reset_waits_for_requests_in_flight_and_reactivation_works() {
    let disk = TestDisk::new(DISK as usize, false);
    disk.hold_reads(true);
    let b = Arc::new(BlockBackend::new("stuck"));
    b.insert_medium(disk.clone(), "t").unwrap();
    let mut d = Driver::new(b.clone(), AioEngine::IoUring, None);
    d.init(0);
    for i in 0..4 {
        d.request(VIRTIO_BLK_T_IN, i * 8, &[], 4096);
    }
    d.notify();
    assert!(disk.wait_reads(4, WAIT), "the reads never reached the driver");
    assert_eq!(b.in_flight(), 4);
    // The driver resets while the reads are stuck in the storage: the reset
    // must not return before they are done (they write guest memory).
    let d = Arc::new(Mutex::new(d));
    let d2 = d.clone();
    let resetter = std::thread::spawn(move || d2.lock().unwrap().w(VIRTIO_MMIO_STATUS, 0));
    let deadline = Instant::now() + Duration::from_millis(200);
    while Instant::now() < deadline {
        assert!(!resetter.is_finished(), "reset returned with requests in flight");
        std::thread::yield_now();
    }
    disk.hold_reads(false);
    resetter.join().unwrap();
    assert_eq!(b.in_flight(), 0);
    let mut d = Arc::try_unwrap(d).ok().unwrap().into_inner().unwrap();
    assert_eq!(d.used_idx(), 0, "completions after reset reached the ring");
    d.check_alive_after_reset();
}

#[test]
fn stop_policy_holds_and_retries_in_order() {
    let disk = TestDisk::new(DISK as usize, true);
    let inject = Arc::new(InjectDriver::new(disk.clone()));
    inject.add_rule(Rule { op: Some(Op::Write), sectors: Some((8, 8)), errno: libc::ENOSPC, count: Count::Once });
    let b = Arc::new(BlockBackend::new("stopper"));
    b.insert_medium(inject, "inject").unwrap();
    b.set_on_error(OnError::Report, OnError::Stop).unwrap();
    b.iostatus_enable();
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev2 = events.clone();
    b.set_event_sink(Some(Box::new(move |e| ev2.lock().unwrap().push(e))));
    let mut d = Driver::new(b.clone(), AioEngine::IoUring, None);
    d.init(0);

    let a = pattern(1, 4096);
    let c = pattern(2, 4096);
    let w1 = d.request(VIRTIO_BLK_T_OUT, 8, &a, 0); // fails once: held
    let w2 = d.request(VIRTIO_BLK_T_OUT, 32, &c, 0); // was already taken: completes
    d.notify();
    d.wait_used(1);
    assert_eq!(d.used(0).0, u32::from(w2.head));
    assert_eq!(d.handle.held_requests(), 1);
    assert_eq!(b.iostatus(), Some(block::IoStatus::NoSpace));
    assert!(matches!(
        events.lock().unwrap().as_slice(),
        [BlockEvent::IoError { action: ErrorAction::Stop, operation: "write", .. }]
    ));
    // While stopped, new requests stay in the ring.
    let w3 = d.request(VIRTIO_BLK_T_OUT, 8, &c, 0);
    d.notify();
    let log_len = disk.log().len();
    // A resume inside a drained section waits for its end.
    b.drained_begin();
    b.iostatus_reset();
    d.handle.resume();
    let until = Instant::now() + Duration::from_millis(100);
    while Instant::now() < until {
        assert_eq!(disk.log().len(), log_len, "resubmitted inside a drained section");
        std::thread::yield_now();
    }
    // Then w1 is resubmitted before w3 is taken.
    b.drained_end();
    d.wait_used(3);
    assert_eq!(d.handle.held_requests(), 0);
    let log = disk.log();
    assert_eq!(log.len(), log_len + 2, "{log:?}");
    assert_eq!(&log[log_len..], &[('w', 4096), ('w', 4096)], "{log:?}");
    let order: Vec<u32> = (0..3).map(|i| d.used(i).0).collect();
    assert_eq!(order, vec![u32::from(w2.head), u32::from(w1.head), u32::from(w3.head)]);
    assert_eq!([d.status(w1), d.status(w2), d.status(w3)], [S_OK; 3]);
    // Each completed once; w3 (same sector, later) is what the disk holds.
    assert_eq!(d.used_idx(), 3);
    assert_eq!(&disk.data()[4096..8192], &c[..]);
    assert_eq!(&disk.data()[16384..20480], &c[..]);
}

#[test]
fn resize_updates_capacity_and_raises_config_interrupt() {
    let (b, path) = file_backend("resize", false);
    let mut d = Driver::new(b.clone(), AioEngine::IoUring, None);
    d.init(0);
    let gen = d.r(VIRTIO_MMIO_CONFIG_GENERATION);
    let _ = d.irq.read();
    b.truncate(2 * DISK).unwrap();
    assert_eq!(d.config(0, 8), 2 * DISK / 512);
    assert_ne!(d.r(VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG, 0);
    assert_eq!(d.irq.read().unwrap(), 1);
    assert_ne!(d.r(VIRTIO_MMIO_CONFIG_GENERATION), gen);
    // A read past the old end now works.
    let r = d.request(VIRTIO_BLK_T_IN, DISK / 512, &[], 512);
    d.notify();
    d.wait_used(1);
    assert_eq!(d.status(r), S_OK);
    let _ = std::fs::remove_file(path);
}

#[test]
fn drained_section_takes_no_new_requests() {
    let b = Arc::new(BlockBackend::new("drain"));
    b.insert_medium(Arc::new(block::drivers::null::NullDriver::new(DISK)), "null").unwrap();
    let mut d = Driver::new(b.clone(), AioEngine::IoUring, None);
    d.init(0);
    b.drained_begin();
    let r = d.request(VIRTIO_BLK_T_IN, 0, &[], 512);
    d.notify();
    // A device that ignored the drained section would complete this
    // null-driver read within microseconds.
    let until = Instant::now() + Duration::from_millis(200);
    while Instant::now() < until {
        assert_eq!(d.used_idx(), 0, "a request was taken inside a drained section");
        std::thread::yield_now();
    }
    b.drained_end();
    d.wait_used(1);
    assert_eq!(d.status(r), S_OK);
}

#[test]
fn a_stopped_vm_takes_nothing_from_the_ring_until_it_resumes() {
    let disk = TestDisk::new(DISK as usize, true);
    let b = Arc::new(BlockBackend::new("vmstop"));
    b.insert_medium(disk.clone(), "test").unwrap();
    let mut d = Driver::new(b.clone(), AioEngine::IoUring, None);
    d.init(0);
    d.handle.vm_stop();
    let a = pattern(3, 4096);
    let w = d.request(VIRTIO_BLK_T_OUT, 8, &a, 0);
    d.notify();
    // Stopped: the kick is ignored and the image stays as it was, however
    // long we look (a drain now finds nothing in flight).
    let until = Instant::now() + Duration::from_millis(200);
    while Instant::now() < until {
        assert!(disk.log().is_empty(), "a stopped VM's request reached the disk");
        std::thread::yield_now();
    }
    b.drain();
    assert!(disk.log().is_empty());
    d.handle.resume();
    d.wait_used(1);
    assert_eq!(d.status(w), S_OK);
    assert_eq!(&disk.data()[4096..8192], &a[..]);
}

#[test]
fn a_device_reset_drops_held_requests_and_counts_them() {
    let disk = TestDisk::new(DISK as usize, true);
    let inject = Arc::new(InjectDriver::new(disk.clone()));
    inject.add_rule(Rule { op: Some(Op::Write), sectors: None, errno: libc::EIO, count: Count::UntilRemoved });
    let b = Arc::new(BlockBackend::new("dropper"));
    b.insert_medium(inject, "inject").unwrap();
    b.set_on_error(OnError::Report, OnError::Stop).unwrap();
    b.iostatus_enable();
    let mut d = Driver::new(b.clone(), AioEngine::IoUring, None);
    d.init(0);
    let a = pattern(4, 4096);
    d.request(VIRTIO_BLK_T_OUT, 8, &a, 0);
    d.request(VIRTIO_BLK_T_OUT, 16, &a, 0);
    d.notify();
    let until = Instant::now() + Duration::from_secs(10);
    while d.handle.held_requests() < 2 {
        assert!(Instant::now() < until, "the writes were not held");
        std::thread::yield_now();
    }
    d.w(VIRTIO_MMIO_STATUS, 0);
    let until = Instant::now() + Duration::from_secs(10);
    while d.handle.dropped_requests() < 2 {
        assert!(Instant::now() < until, "the reset did not drop them");
        std::thread::yield_now();
    }
    assert_eq!((d.handle.held_requests(), d.handle.dropped_requests()), (0, 2));
}

/// QEMU's four policies on virtio-blk for every operation (discard
/// counts as a write) and both errnos, with a retry that fails again under stop: report gives the
/// guest an error, ignore a success, stop (and enospc on ENOSPC) holds the
/// request with the matching iostatus until a resume, which retries it
/// (and holds it again if it fails again); enospc on another errno reports.
#[test]
fn every_policy_for_every_operation_and_errno() {
    use block::IoStatus;
    let ops = [
        (Op::Read, VIRTIO_BLK_T_IN),
        (Op::Write, VIRTIO_BLK_T_OUT),
        (Op::Flush, VIRTIO_BLK_T_FLUSH),
        (Op::Discard, VIRTIO_BLK_T_DISCARD),
    ];
    let policies = [OnError::Report, OnError::Ignore, OnError::Stop, OnError::Enospc];
    for (op, ty) in ops {
        for policy in policies {
            if op == Op::Read && policy == OnError::Enospc {
                continue; // refused for reads, as by QEMU
            }
            for errno in [libc::EIO, libc::ENOSPC] {
                for failures in [1u32, 2] {
                    let what = format!("{op:?} {policy:?} errno {errno} x{failures}");
                    let disk = TestDisk::new(DISK as usize, true);
                    let inject = Arc::new(InjectDriver::new(disk.clone()));
                    inject.add_rule(Rule { op: Some(op), sectors: None, errno, count: Count::Times(failures) });
                    let b = Arc::new(BlockBackend::new("matrix"));
                    b.insert_medium(inject, "inject").unwrap();
                    let (r, w) = if op == Op::Read { (policy, OnError::Report) } else { (OnError::Report, policy) };
                    b.set_on_error(r, w).unwrap();
                    b.iostatus_enable();
                    // discard=ignore (the default) would never reach the disk.
                    b.set_discard(DiscardMode::Unmap);
                    let errors = Arc::new(std::sync::atomic::AtomicU32::new(0));
                    let e2 = errors.clone();
                    b.set_event_sink(Some(Box::new(move |_| {
                        e2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    })));
                    let mut d = Driver::new(b.clone(), AioEngine::IoUring, None);
                    d.init(0);
                    let data = pattern(5, 4096);
                    let req = match op {
                        Op::Read => d.request(ty, 8, &[], 4096),
                        Op::Write => d.request(ty, 8, &data, 0),
                        // One discard segment: sector 8, 8 sectors, flags 0.
                        Op::Discard => d.request(ty, 0, &[8, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0], 0),
                        _ => d.request(ty, 0, &[], 0),
                    };
                    d.notify();
                    let stops = policy == OnError::Stop || (policy == OnError::Enospc && errno == libc::ENOSPC);
                    if !stops {
                        d.wait_used(1);
                        let want = if policy == OnError::Ignore { S_OK } else { S_IOERR };
                        assert_eq!(d.status(req), want, "{what}");
                        assert_eq!(d.handle.held_requests(), 0, "{what}");
                        continue;
                    }
                    let want_io = if errno == libc::ENOSPC { IoStatus::NoSpace } else { IoStatus::Failed };
                    for round in 0..failures {
                        // Held again each time it fails: one BLOCK_IO_ERROR each.
                        let until = Instant::now() + WAIT;
                        while errors.load(std::sync::atomic::Ordering::SeqCst) <= round || d.handle.held_requests() != 1 {
                            assert!(Instant::now() < until, "{what}: not held in round {round}");
                            std::thread::yield_now();
                        }
                        assert_eq!(d.used_idx(), 0, "{what}: completed while held");
                        assert_eq!(b.iostatus(), Some(want_io), "{what}");
                        b.iostatus_reset();
                        d.handle.resume();
                    }
                    d.wait_used(1);
                    assert_eq!(d.status(req), S_OK, "{what}: the guest never sees the error");
                    assert_eq!(d.used_idx(), 1, "{what}: completed once");
                    if op == Op::Write {
                        assert_eq!(&disk.data()[4096..8192], &data[..], "{what}");
                    }
                }
            }
        }
    }
}

/// When one drive stops the VM, a request in flight on another drive
/// completes normally: stop drains it, it is not dropped or held.
#[test]
fn a_request_in_flight_on_another_drive_completes_through_a_stop() {
    use block::drivers::inject::Latency;
    let disk = TestDisk::new(DISK as usize, true);
    let inject = Arc::new(InjectDriver::new(disk.clone()));
    inject.add_latency(Latency { op: Some(Op::Write), sectors: None, delay: Duration::from_millis(200) });
    let b = Arc::new(BlockBackend::new("other"));
    b.insert_medium(inject, "slow").unwrap();
    let mut d = Driver::new(b.clone(), AioEngine::IoUring, None);
    d.init(0);
    let a = pattern(9, 4096);
    let w = d.request(VIRTIO_BLK_T_OUT, 8, &a, 0);
    d.notify();
    let until = Instant::now() + WAIT;
    while b.in_flight() == 0 {
        assert!(Instant::now() < until, "never in flight");
        std::thread::yield_now();
    }
    // What the VMM's stop does to every drive: stop taking, drain, flush.
    d.handle.vm_stop();
    assert!(BlockBackend::drain_all_for(std::slice::from_ref(&b), WAIT).is_empty());
    d.wait_used(1);
    assert_eq!(d.status(w), S_OK);
    assert_eq!(&disk.data()[4096..8192], &a[..]);
    d.handle.resume();
}
