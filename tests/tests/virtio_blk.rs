//! virtio-blk as the stock Linux driver uses it: data written in the guest
//! with O_DIRECT is in the host image byte for byte, `sync` reaches the
//! block layer as FLUSH, readonly=on is enforced and visible, discard frees
//! host blocks, GET_ID carries the serial, the driver can be unloaded and
//! loaded again (device reset and re-activation), eight disks work, and
//! werror=report/ignore/enospc do what QEMU's do on a real ENOSPC.
//!
//! Every command, in the guest and on the host, has its exit status checked
//! (`e2e::Script`): a failing `dd` or `sync` fails the test, not only a
//! wrong final value.

use std::time::Duration;

use e2e::{md5_line, run_scenario, vmm_command, Script};

const TIMEOUT: Duration = Duration::from_secs(300);

#[test]
fn data_flush_readonly_and_serial() {
    // Guest side: two patterns, written with O_DIRECT at a 1 MiB offset on
    // vda and at 0 on vdb, read back with O_DIRECT; a buffered write and
    // `sync` for FLUSH; a write to the read-only vdc must fail.
    let mut guest = Script::guest("G");
    guest
        .ok("yes vda-pattern | head -c 1048576 >/tmp/a")
        .ok("yes vdb-other-pattern | head -c 1048576 >/tmp/b")
        .line(md5_line("G-A", "/tmp/a"))
        .line(md5_line("G-B", "/tmp/b"))
        .ok("dd if=/tmp/a of=/dev/vda bs=64k seek=16 oflag=direct status=none")
        .ok("dd if=/tmp/b of=/dev/vdb bs=64k oflag=direct status=none")
        .ok("dd if=/dev/vda of=/tmp/ra bs=64k skip=16 count=16 iflag=direct status=none")
        .ok("dd if=/dev/vdb of=/tmp/rb bs=64k count=16 iflag=direct status=none")
        .line(md5_line("R-A", "/tmp/ra"))
        .line(md5_line("R-B", "/tmp/rb"))
        .ok("dd if=/tmp/a of=/dev/vdb bs=4k count=1 seek=4096 status=none")
        .ok("sync /dev/vdb")
        .line("echo SERIAL-A=$(cat /sys/block/vda/serial)")
        .line("echo RO-A=$(blockdev --getro /dev/vda)")
        .line("echo RO-C=$(blockdev --getro /dev/vdc)")
        .fails_as("WRITE-C", "dd if=/tmp/a of=/dev/vdc bs=4k count=1 oflag=direct status=none")
        .line("echo SIZE-A=$(blockdev --getsize64 /dev/vda)");
    let drives = "--drive if=virtio,file=$WORK/a.raw,serial=vmm-serial-a \
                  --drive if=virtio,file=$WORK/b.raw \
                  --drive if=virtio,file=$WORK/c.raw,readonly=on --print-blockstats";
    let mut host = Script::host("H");
    host.ok("truncate -s 64M $WORK/a.raw")
        .ok("truncate -s 32M $WORK/b.raw")
        .ok("yes read-only-disk | head -c 8388608 >$WORK/c.raw")
        .line(md5_line("H-C0", "$WORK/c.raw"))
        .ok_as("VMM", format!("{} 2>$WORK/err", vmm_command(drives, &guest.text())))
        .ok("cat $WORK/err")
        .ok("dd if=$WORK/a.raw of=$WORK/ha bs=64k skip=16 count=16 status=none")
        .ok("dd if=$WORK/a.raw of=$WORK/ha0 bs=64k count=16 status=none")
        .ok("dd if=$WORK/b.raw of=$WORK/hb bs=64k count=16 status=none")
        .ok("head -c 1048576 /dev/zero >$WORK/zero")
        .line(md5_line("H-A", "$WORK/ha"))
        .line(md5_line("H-A0", "$WORK/ha0"))
        .line(md5_line("H-B", "$WORK/hb"))
        .line(md5_line("H-ZERO", "$WORK/zero"))
        .line(md5_line("H-C", "$WORK/c.raw"));
    let run = run_scenario(&host.text(), TIMEOUT);
    // Every command on both sides did what it must: the VMM exited 0, the
    // guest's writes, reads and sync succeeded, the write to vdc failed.
    host.check(&run);
    guest.check(&run);
    let v = |k: &str| run.expect_value(k);
    let md5 = |k: &str| run.md5(k);
    let log = run.log();
    assert_eq!(run.status("VMM-GUEST-RC"), Some(0), "{log}");
    assert!(run.has_line("vmm: guest powered off"), "{log}");

    // What the guest wrote is what it read, and what the host file holds.
    assert_ne!(md5("G-A"), md5("G-B"), "the two patterns must differ");
    assert_eq!(md5("R-A"), md5("G-A"), "vda read back\n{log}");
    assert_eq!(md5("R-B"), md5("G-B"), "vdb read back\n{log}");
    assert_eq!(md5("H-A"), md5("G-A"), "host a.raw at 1 MiB\n{log}");
    assert_eq!(md5("H-B"), md5("G-B"), "host b.raw at 0\n{log}");
    // The offset was honoured: the first MiB of a.raw is still zeros.
    assert_eq!(md5("H-A0"), md5("H-ZERO"), "{log}");
    assert_eq!(v("SIZE-A"), (64u64 << 20).to_string(), "{log}");

    // Read-only: flagged to the guest, writes fail (the WRITE-C step,
    // checked above), the image is intact.
    assert_eq!(v("RO-A"), "0", "{log}");
    assert_eq!(v("RO-C"), "1", "{log}");
    assert_eq!(md5("H-C"), md5("H-C0"), "the read-only image changed\n{log}");

    assert_eq!(v("SERIAL-A"), "vmm-serial-a", "{log}");

    // Block stats: `sync` reached vdb as a flush; vdc saw none and no write.
    let stat = |dev: &str, key: &str| -> u64 {
        let line = run
            .lines
            .iter()
            .find(|l| l.contains(&format!("blockstats {dev}:")))
            .unwrap_or_else(|| panic!("no blockstats for {dev}\n{log}"));
        let word = line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{key}="))).expect("counter");
        word.parse().expect("number")
    };
    assert!(stat("virtio1", "flush_ops") >= 1, "no FLUSH after sync\n{log}");
    assert_eq!(stat("virtio2", "flush_ops"), 0, "{log}");
    assert_eq!(stat("virtio2", "wr_ops"), 0, "{log}");
    assert!(stat("virtio0", "wr_bytes") >= 1 << 20, "{log}");
}

#[test]
fn blkdiscard_reload_and_eight_disks() {
    // The host fills 16 MiB of a sparse 64 MiB image on a discard=unmap
    // drive; the guest discards the whole disk; the host file's allocation
    // must shrink. On vdb (discard=ignore, the default, as QEMU's) the
    // guest's discard succeeds and the 1 MiB written there stays allocated.
    // Then the driver is unloaded (device reset) and loaded again
    // (re-activation), and the disk must still answer.
    // Seven more disks make eight, the maximum: the last one (GSI 23) must
    // answer too.
    let mut guest = Script::guest("G");
    guest
        .ok_as("DISCARD", "blkdiscard /dev/vda")
        .ok_as("DISCARD-IGNORED", "blkdiscard /dev/vdb")
        .ok("rmmod virtio_blk")
        .ok("insmod /lib/modules/virtio_blk.ko")
        // I/O after reloading virtio_blk.
        .ok_as("REREAD", "dd if=/dev/vda of=/dev/null bs=4k count=16 iflag=direct status=none")
        .line("echo DISKS=$(ls /sys/block | grep -c vd)")
        .line("echo SERIAL-H=$(cat /sys/block/vdh/serial)")
        .ok_as("VDH", "dd if=/dev/vdh of=/dev/null bs=4k count=16 iflag=direct status=none");
    let mut drives = "--drive if=virtio,file=$WORK/d.raw,discard=unmap --print-blockstats".to_string();
    let mut extra = "truncate -s 1M".to_string();
    for i in 1..8 {
        drives += &format!(" --drive if=virtio,file=$WORK/e{i}.raw,serial=extra{i}");
        extra += &format!(" $WORK/e{i}.raw");
    }
    let mut host = Script::host("H");
    host.ok("truncate -s 64M $WORK/d.raw")
        .ok(extra)
        .ok("yes data | head -c 16777216 >$WORK/fill")
        .ok("dd if=$WORK/fill of=$WORK/d.raw conv=notrunc status=none")
        .ok("rm $WORK/fill")
        .ok("dd if=/dev/urandom of=$WORK/e1.raw bs=64k count=16 conv=notrunc status=none")
        .line("echo ALLOC-BEFORE=$(du -k $WORK/d.raw | cut -f1)")
        .ok_as("VMM", format!("{} 2>$WORK/err", vmm_command(&drives, &guest.text())))
        .ok("cat $WORK/err")
        .line("echo ALLOC-AFTER=$(du -k $WORK/d.raw | cut -f1)")
        .line("echo ALLOC-IGNORED=$(du -k $WORK/e1.raw | cut -f1)");
    let run = run_scenario(&host.text(), TIMEOUT);
    host.check(&run);
    guest.check(&run);
    let log = run.log();
    assert_eq!(run.status("VMM-GUEST-RC"), Some(0), "{log}");
    assert!(run.has_line("vmm: guest powered off"), "{log}");
    assert_eq!(run.expect_value("DISKS"), "8", "{log}");
    assert_eq!(run.expect_value("SERIAL-H"), "extra7", "{log}");
    let before: u64 = run.expect_value("ALLOC-BEFORE").parse().expect("number");
    let after: u64 = run.expect_value("ALLOC-AFTER").parse().expect("number");
    assert!(before >= 16 * 1024, "the image was not filled: {before} KiB\n{log}");
    assert!(after < before / 4, "discard did not free host blocks: {before} KiB -> {after} KiB\n{log}");
    let ignored: u64 = run.expect_value("ALLOC-IGNORED").parse().expect("number");
    assert!(ignored >= 1024, "discard=ignore freed host blocks: {ignored} KiB left of 1024\n{log}");
}

/// werror in the real VMM with a real ENOSPC: the image lives on a 2 MiB
/// tmpfs and the guest writes 8 MiB. report: the guest's write fails and it
/// carries on; ignore: the guest sees success; enospc (the default, like
/// stop for ENOSPC): the VM pauses in the io-error state, and a signal
/// still ends the VMM cleanly.
#[test]
fn werror_policies_on_a_full_host_filesystem() {
    // The guest writes 8 MiB with O_DIRECT: under report that write must
    // fail, under ignore succeed; under enospc the VM pauses on it, so that
    // guest's dd must never report.
    let guest = |tag: &str, dd_fails: bool| {
        let mut g = Script::guest(tag);
        g.ok("yes enospc | head -c 8388608 >/tmp/p");
        let dd = "dd if=/tmp/p of=/dev/vda bs=1M oflag=direct status=none";
        if dd_fails {
            g.fails_as("DD", dd);
        } else {
            g.ok_as("DD", dd);
        }
        g
    };
    let (report, ignore, stop) = (guest("REPORT", true), guest("IGNORE", false), guest("STOP", false));
    let vmm = |werror: &str, g: &Script| {
        vmm_command(&format!("--drive if=virtio,file=$WORK/small/d.raw,werror={werror}"), &g.text())
    };
    let mut host = Script::host("H");
    host.ok("mkdir -p $WORK/small").ok("mount -t tmpfs -o size=2M tmpfs $WORK/small");
    // Each run's console and stderr are shown with a prefix, to tell the
    // runs apart.
    for (werror, name, g) in [("report", "REPORT", &report), ("ignore", "IGNORE", &ignore)] {
        host.ok("rm -f $WORK/small/d.raw")
            .ok("truncate -s 64M $WORK/small/d.raw")
            .ok_as(&format!("VMM-{name}"), format!("{} >$WORK/out-{werror} 2>$WORK/err-{werror}", vmm(werror, g)))
            .ok(format!("sed 's/^/{name}: /' $WORK/out-{werror}"))
            .ok(format!("sed 's/^/{name}-ERR: /' $WORK/err-{werror}"));
    }
    host.ok("rm -f $WORK/small/d.raw")
        .ok("truncate -s 64M $WORK/small/d.raw")
        .line(format!("{} 2>$WORK/err-stop >$WORK/out-stop &", vmm("enospc", &stop)))
        .line("pid=$!")
        .line("for i in $(seq 120); do grep -q 'VM paused' $WORK/err-stop && break; sleep 1; done")
        .ok_as("STOP-PAUSED", "grep -q 'VM paused' $WORK/err-stop")
        .ok("kill -TERM $pid")
        .ok_as("VMM-STOP", "wait $pid")
        .ok("sed 's/^/STOP: /' $WORK/out-stop")
        .ok("sed 's/^/STOP-ERR: /' $WORK/err-stop");
    let run = run_scenario(&host.text(), TIMEOUT);
    // The VMM exited 0 under every policy (under enospc on the SIGTERM),
    // the VM paused under enospc, and each guest's dd did what its policy
    // says.
    host.check(&run);
    report.check(&run);
    ignore.check(&run);
    let log = run.log();
    let with_prefix = |prefix: &str| -> Vec<&str> { run.lines.iter().filter_map(|l| l.strip_prefix(prefix)).collect() };
    let line_value = |prefix: &str, key: &str| {
        with_prefix(prefix)
            .iter()
            .find_map(|l| l.trim().strip_prefix(&format!("{key}=")).map(str::to_string))
            .unwrap_or_else(|| panic!("no {prefix}{key}=\n{log}"))
    };
    for name in ["REPORT", "IGNORE"] {
        assert_eq!(line_value(&format!("{name}: "), "VMM-GUEST-RC"), "0", "{log}");
        assert!(with_prefix(&format!("{name}-ERR: ")).contains(&"vmm: guest powered off"), "{name}\n{log}");
    }
    let report_events = with_prefix("REPORT-ERR: ").iter().filter(|l| l.contains("write error")).count();
    assert!(report_events >= 1, "no BLOCK_IO_ERROR\n{log}");

    // enospc: the guest was running its script, and it stopped at the dd.
    assert_eq!(run.status(&stop.status_key("1")), Some(0), "the enospc guest never ran\n{log}");
    assert_eq!(run.status(&stop.status_key("DD")), None, "the guest ran on after the stop\n{log}");
    let stop_err = with_prefix("STOP-ERR: ");
    assert!(stop_err.iter().any(|l| l.contains("action Stop")), "{log}");
    assert!(stop_err.contains(&"vmm: terminating on signal 15"), "{log}");
}
