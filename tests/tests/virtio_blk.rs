//! virtio-blk as the stock Linux driver uses it: data written in the guest
//! with O_DIRECT is in the host image byte for byte, `sync` reaches the
//! block layer as FLUSH, readonly=on is enforced and visible, discard frees
//! host blocks, GET_ID carries the serial, the driver can be unloaded and
//! loaded again (device reset and re-activation), eight disks work, and
//! werror=report/ignore/enospc do what QEMU's do on a real ENOSPC.

use std::time::Duration;

use e2e::{run_scenario, vmm_command};

const TIMEOUT: Duration = Duration::from_secs(300);

/// md5 of what a shell pipeline prints, as a `KEY=hash` line.
fn md5_line(key: &str, pipeline: &str) -> String {
    format!("echo {key}=$({pipeline} | md5sum | cut -c1-32)")
}

#[test]
fn data_flush_readonly_and_serial() {
    // Guest side: two patterns, written with O_DIRECT at a 1 MiB offset on
    // vda and at 0 on vdb, read back with O_DIRECT; a buffered write and
    // `sync` for FLUSH; a write to the read-only vdc must fail.
    let guest = [
        "yes vda-pattern | head -c 1048576 >/tmp/a",
        "yes vdb-other-pattern | head -c 1048576 >/tmp/b",
        "echo G-A=$(md5sum </tmp/a | cut -c1-32)",
        "echo G-B=$(md5sum </tmp/b | cut -c1-32)",
        "dd if=/tmp/a of=/dev/vda bs=64k seek=16 oflag=direct 2>/dev/null",
        "dd if=/tmp/b of=/dev/vdb bs=64k oflag=direct 2>/dev/null",
        "echo R-A=$(dd if=/dev/vda bs=64k skip=16 count=16 iflag=direct 2>/dev/null | md5sum | cut -c1-32)",
        "echo R-B=$(dd if=/dev/vdb bs=64k count=16 iflag=direct 2>/dev/null | md5sum | cut -c1-32)",
        "dd if=/tmp/a of=/dev/vdb bs=4k count=1 seek=4096 2>/dev/null",
        "sync /dev/vdb",
        "echo SERIAL-A=$(cat /sys/block/vda/serial)",
        "echo RO-A=$(blockdev --getro /dev/vda)",
        "echo RO-C=$(blockdev --getro /dev/vdc)",
        "dd if=/tmp/a of=/dev/vdc bs=4k count=1 oflag=direct 2>/dev/null; echo WRITE-C-RC=$?",
        "echo SIZE-A=$(blockdev --getsize64 /dev/vda)",
    ]
    .join("; ");
    let drives = "--drive if=virtio,file=$WORK/a.raw,serial=vmm-serial-a \
                  --drive if=virtio,file=$WORK/b.raw \
                  --drive if=virtio,file=$WORK/c.raw,readonly=on --print-blockstats";
    let script = [
        "truncate -s 64M $WORK/a.raw".to_string(),
        "truncate -s 32M $WORK/b.raw".to_string(),
        "yes read-only-disk | head -c 8388608 >$WORK/c.raw".to_string(),
        md5_line("H-C0", "cat $WORK/c.raw"),
        format!("{} 2>$WORK/err", vmm_command(drives, &guest)),
        "echo VMM-EXIT=$?".to_string(),
        "cat $WORK/err".to_string(),
        md5_line("H-A", "dd if=$WORK/a.raw bs=64k skip=16 count=16 2>/dev/null"),
        md5_line("H-A0", "dd if=$WORK/a.raw bs=64k count=16 2>/dev/null"),
        md5_line("H-B", "dd if=$WORK/b.raw bs=64k count=16 2>/dev/null"),
        md5_line("H-ZERO", "head -c 1048576 /dev/zero"),
        md5_line("H-C", "cat $WORK/c.raw"),
    ]
    .join("\n");
    let run = run_scenario(&script, TIMEOUT);
    let v = |k: &str| run.expect_value(k);
    let log = run.log();
    assert_eq!(v("VMM-EXIT"), "0", "{log}");
    assert_eq!(v("VMM-GUEST-RC"), "0", "{log}");

    // What the guest wrote is what it read, and what the host file holds.
    assert_ne!(v("G-A"), v("G-B"), "the two patterns must differ");
    assert_eq!(v("R-A"), v("G-A"), "vda read back\n{log}");
    assert_eq!(v("R-B"), v("G-B"), "vdb read back\n{log}");
    assert_eq!(v("H-A"), v("G-A"), "host a.raw at 1 MiB\n{log}");
    assert_eq!(v("H-B"), v("G-B"), "host b.raw at 0\n{log}");
    // The offset was honoured: the first MiB of a.raw is still zeros.
    assert_eq!(v("H-A0"), v("H-ZERO"), "{log}");
    assert_eq!(v("SIZE-A"), (64u64 << 20).to_string(), "{log}");

    // Read-only: flagged to the guest, writes fail, the image is intact.
    assert_eq!(v("RO-A"), "0", "{log}");
    assert_eq!(v("RO-C"), "1", "{log}");
    assert_ne!(v("WRITE-C-RC"), "0", "a write to a readonly=on disk succeeded\n{log}");
    assert_eq!(v("H-C"), v("H-C0"), "the read-only image changed\n{log}");

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
    // The host fills 16 MiB of a sparse 64 MiB image; the guest discards
    // the whole disk; the host file's allocation must shrink.
    // Then the driver is unloaded (device reset) and loaded again
    // (re-activation), and the disk must still answer.
    // Seven more disks make eight, the maximum: the last one (GSI 23) must
    // answer too.
    let guest = "blkdiscard /dev/vda; echo DISCARD-RC=$?; rmmod virtio_blk; insmod /lib/modules/virtio_blk.ko; \
                 dd if=/dev/vda of=/dev/null bs=4k count=16 iflag=direct 2>/dev/null; echo REREAD-RC=$?; \
                 echo DISKS=$(ls /sys/block | grep -c vd); echo SERIAL-H=$(cat /sys/block/vdh/serial); \
                 dd if=/dev/vdh of=/dev/null bs=4k count=16 iflag=direct 2>/dev/null; echo VDH-RC=$?";
    let mut drives = "--drive if=virtio,file=$WORK/d.raw --print-blockstats".to_string();
    for i in 1..8 {
        drives += &format!(" --drive if=virtio,file=$WORK/e{i}.raw,serial=extra{i}");
    }
    let script = [
        "truncate -s 64M $WORK/d.raw".to_string(),
        "for i in 1 2 3 4 5 6 7; do truncate -s 1M $WORK/e$i.raw; done".to_string(),
        "yes data | head -c 16777216 | dd of=$WORK/d.raw conv=notrunc 2>/dev/null".to_string(),
        "echo ALLOC-BEFORE=$(du -k $WORK/d.raw | cut -f1)".to_string(),
        format!("{} 2>$WORK/err", vmm_command(&drives, guest)),
        "echo VMM-EXIT=$?".to_string(),
        "cat $WORK/err".to_string(),
        "echo ALLOC-AFTER=$(du -k $WORK/d.raw | cut -f1)".to_string(),
    ]
    .join("\n");
    let run = run_scenario(&script, TIMEOUT);
    let log = run.log();
    assert_eq!(run.expect_value("VMM-EXIT"), "0", "{log}");
    assert_eq!(run.expect_value("DISCARD-RC"), "0", "{log}");
    assert_eq!(run.expect_value("REREAD-RC"), "0", "no I/O after reloading virtio_blk\n{log}");
    assert_eq!(run.expect_value("DISKS"), "8", "{log}");
    assert_eq!(run.expect_value("SERIAL-H"), "extra7", "{log}");
    assert_eq!(run.expect_value("VDH-RC"), "0", "{log}");
    let before: u64 = run.expect_value("ALLOC-BEFORE").parse().expect("number");
    let after: u64 = run.expect_value("ALLOC-AFTER").parse().expect("number");
    assert!(before >= 16 * 1024, "the image was not filled: {before} KiB\n{log}");
    assert!(after < before / 4, "discard did not free host blocks: {before} KiB -> {after} KiB\n{log}");
}

/// werror in the real VMM with a real ENOSPC: the image lives on a 2 MiB
/// tmpfs and the guest writes 8 MiB. report: the guest's write fails and it
/// carries on; ignore: the guest sees success; enospc (the default, like
/// stop for ENOSPC): the VM pauses in the io-error state, and a signal
/// still ends the VMM cleanly.
#[test]
fn werror_policies_on_a_full_host_filesystem() {
    let guest = "yes enospc | head -c 8388608 >/tmp/p; dd if=/tmp/p of=/dev/vda bs=1M oflag=direct 2>/dev/null; \
                 echo DD-RC=$?";
    let vmm = |werror: &str| vmm_command(&format!("--drive if=virtio,file=$WORK/small/d.raw,werror={werror}"), guest);
    let script = format!(
        r#"mkdir -p $WORK/small && mount -t tmpfs -o size=2M tmpfs $WORK/small
fresh() {{ rm -f $WORK/small/d.raw; truncate -s 64M $WORK/small/d.raw; }}
fresh; {report} 2>$WORK/err-report | sed 's/^/REPORT: /'
grep -c "write error" $WORK/err-report | sed 's/^/REPORT-EVENTS=/'
fresh; {ignore} 2>$WORK/err-ignore | sed 's/^/IGNORE: /'
fresh; {stop} 2>$WORK/err-stop >$WORK/out-stop &
pid=$!
for i in $(seq 120); do grep -q "VM paused" $WORK/err-stop && break; sleep 1; done
grep -q "VM paused" $WORK/err-stop && echo STOP-PAUSED=yes
grep -q "DD-RC" $WORK/out-stop && echo STOP-GUEST-FINISHED=yes
kill -TERM $pid; wait $pid; echo STOP-EXIT=$?
cat $WORK/err-stop"#,
        report = vmm("report"),
        ignore = vmm("ignore"),
        stop = vmm("enospc"),
    );
    let run = run_scenario(&script, TIMEOUT);
    let log = run.log();
    let line_value = |prefix: &str, key: &str| {
        run.lines
            .iter()
            .filter_map(|l| l.strip_prefix(prefix))
            .find_map(|l| l.trim().strip_prefix(&format!("{key}=")).map(str::to_string))
            .unwrap_or_else(|| panic!("no {prefix}{key}=\n{log}"))
    };
    assert_ne!(line_value("REPORT: ", "DD-RC"), "0", "werror=report: the guest's write must fail\n{log}");
    assert_eq!(line_value("REPORT: ", "VMM-GUEST-RC"), "0", "{log}");
    assert!(run.expect_value("REPORT-EVENTS").parse::<u32>().unwrap_or(0) >= 1, "no BLOCK_IO_ERROR\n{log}");
    assert_eq!(line_value("IGNORE: ", "DD-RC"), "0", "werror=ignore: the guest must see success\n{log}");
    assert_eq!(run.expect_value("STOP-PAUSED"), "yes", "{log}");
    assert_eq!(run.value("STOP-GUEST-FINISHED"), None, "the guest ran on after the stop\n{log}");
    assert_eq!(run.expect_value("STOP-EXIT"), "0", "{log}");
    assert!(run.has_line("action Stop"), "{log}");
}
