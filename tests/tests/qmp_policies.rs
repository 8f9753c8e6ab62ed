//! Issue 12 in the real guest, driven from the host with qemu.qmp
//! (tests/qmp/guest_qmp.py, scenario `error_policies`), in one boot with
//! five virtio disks: vda werror=stop,rerror=stop; vdb report; vdc the
//! signal disk (it carries this script, and the host grows it by 1 MiB to
//! tell the guest to go on); vdd ignore; vde werror=enospc; and an IDE
//! disk (rerror=stop) and the CD-ROM.
//! 1. EIO injected on vda's writes while four `dd oflag=direct` write a
//!    pattern: BLOCK_IO_ERROR then STOP, io-error, io-status failed; the
//!    host clears the rule and says cont; every write succeeds, and the
//!    image holds exactly the pattern.
//! 2. report and ignore, on writes and on reads: the guest's dd fails (and
//!    its kernel logs the I/O error) or succeeds.
//! 3. 2 s of latency on vda's reads: one block takes at least 2 s while a
//!    read of vdb meanwhile is fast.
//! 4. stop/cont fifty times during heavy writes: the data is intact.
//! 5. werror=enospc on a real ENOSPC (vde's image on a full tmpfs in L1):
//!    the VM stops with nospace, L1 frees space, cont, the data is
//!    intact; an EIO on the same drive is reported instead.
//! 6. rerror=stop on the IDE disk (stop, clear, cont, the right data) and
//!    rerror=report on the CD-ROM (the guest's read fails).

use std::time::Duration;

use e2e::{md5_line, Script};

const TIMEOUT: Duration = Duration::from_secs(900);

/// Waits until the signal disk has grown to `mib` MiB (the host's go).
fn go(mib: u64) -> String {
    e2e::signal_wait("vdc", mib)
}

fn guest_script() -> Script {
    let mut g = Script::guest("G");
    g.ok("yes stop-pattern | head -c 8388608 >/tmp/p")
        .line(md5_line("P", "/tmp/p"))
        // 1. Four writers, 2 MiB each, while the host fails every write.
        .line("echo G-READY-STOP")
        .ok_as("GO1", go(2))
        .line("for i in 0 1 2 3; do dd if=/tmp/p of=/dev/vda bs=64k count=32 skip=$((i*32)) seek=$((i*32)) oflag=direct status=none & eval p$i=$!; done")
        .ok_as("W0", "wait $p0")
        .ok_as("W1", "wait $p1")
        .ok_as("W2", "wait $p2")
        .ok_as("W3", "wait $p3")
        .line("echo STOP-WRITES-DONE")
        .ok_as("RB", "dd if=/dev/vda of=/tmp/rb bs=1M count=8 iflag=direct status=none")
        .line(md5_line("RB", "/tmp/rb"))
        // 2. report: the guest sees the error (and its kernel says so).
        .ok_as("DMESG-CLEAR", "dmesg -c >/dev/null")
        .line("echo G-READY-REPORT-WRITE")
        .ok_as("GO2", go(3))
        .fails_as("REPORT-W", "dd if=/tmp/p of=/dev/vdb bs=4k count=1 oflag=direct status=none")
        .line("echo REPORT-WRITE-DONE")
        .line("echo G-READY-REPORT-READ")
        .ok_as("GO3", go(4))
        .fails_as("REPORT-R", "dd if=/dev/vdb of=/dev/null bs=4k count=1 iflag=direct status=none")
        .line("echo REPORT-READ-DONE")
        .line("echo KLOG-VDB=$(dmesg | grep -c I/O.error,.dev.vdb)")
        // ignore: the guest sees success.
        .line("echo G-READY-IGNORE-WRITE")
        .ok_as("GO4", go(5))
        .ok_as("IGNORE-W", "dd if=/tmp/p of=/dev/vdd bs=4k count=1 oflag=direct status=none")
        .line("echo IGNORE-WRITE-DONE")
        .line("echo G-READY-IGNORE-READ")
        .ok_as("GO5", go(6))
        .ok_as("IGNORE-R", "dd if=/dev/vdd of=/dev/null bs=4k count=1 iflag=direct status=none")
        .line("echo IGNORE-READ-DONE")
        // 3. A slow read of vda, and meanwhile a fast one of vdb.
        .line("echo G-READY-SLOW")
        .ok_as("GO6", go(7))
        .line("read up idle </proc/uptime; t0=${up%.*}${up#*.}")
        .line("dd if=/dev/vda of=/dev/null bs=4k count=1 skip=300 iflag=direct status=none & sp=$!")
        .line("sleep 0.3; read up idle </proc/uptime; t1=${up%.*}${up#*.}")
        .ok_as("FAST", "dd if=/dev/vdb of=/dev/null bs=4k count=1 skip=300 iflag=direct status=none")
        .line("read up idle </proc/uptime; t2=${up%.*}${up#*.}")
        .ok_as("SLOW", "wait $sp")
        .line("read up idle </proc/uptime; t3=${up%.*}${up#*.}")
        .line("echo SLOW-CS=$((t3-t0))")
        .line("echo FAST-CS=$((t2-t1))")
        .line("echo SLOW-DONE")
        // 4. Writes while the host stops and continues the VM, until the
        //    host says it is done (and at least eight rounds).
        .line("echo G-READY-FLAP")
        .ok_as("GO7", go(8))
        .line("i=0; ferr=0; while [ $i -lt 8 ] || [ $(cat /sys/block/vdc/size) -lt 18432 ]; do dd if=/tmp/p of=/dev/vda bs=64k count=16 skip=$(( (i%8)*16 )) seek=$((256 + (i%8)*16)) oflag=direct status=none || ferr=$((ferr+1)); i=$((i+1)); [ $i -gt 5000 ] && break; done")
        .line("echo FLAP-ROUNDS=$i")
        .line("echo FLAP-ERRORS=$ferr")
        .ok_as("FLAP-RB", "dd if=/dev/vda of=/tmp/fb bs=1M skip=16 count=8 iflag=direct status=none")
        .line(md5_line("FLAP-RB", "/tmp/fb"))
        // 5. werror=enospc on a real ENOSPC (vde on a full tmpfs in L1):
        //    stops; L1 frees space; cont; the data is intact. An EIO on the
        //    same drive is reported instead.
        .ok("yes enospc | head -c 4194304 >/tmp/e")
        .line(md5_line("E", "/tmp/e"))
        .line("echo G-READY-ENOSPC")
        .ok_as("GO8", go(10))
        .ok_as("E-WRITE", "dd if=/tmp/e of=/dev/vde bs=1M oflag=direct status=none")
        .ok_as("E-READ", "dd if=/dev/vde of=/tmp/er bs=1M count=4 iflag=direct status=none")
        .line(md5_line("ER", "/tmp/er"))
        .line("echo ENOSPC-DONE")
        .line("echo G-READY-ENOSPC-EIO")
        .ok_as("GO9", go(11))
        .fails_as("E-EIO", "dd if=/tmp/e of=/dev/vde bs=4k count=1 oflag=direct status=none")
        .line("echo ENOSPC-EIO-DONE")
        // 6. rerror=stop on the IDE disk; rerror=report on the CD-ROM.
        .ok_as("IDE-PREP", "dd if=/tmp/p of=/dev/sda bs=64k count=1 oflag=direct status=none")
        .ok("head -c 65536 /tmp/p >/tmp/p64")
        .line(md5_line("P64", "/tmp/p64"))
        .line("echo G-READY-IDE")
        .ok_as("GO10", go(12))
        .ok_as("IDE-R", "dd if=/dev/sda of=/tmp/ir bs=64k count=1 iflag=direct status=none")
        .line(md5_line("IR", "/tmp/ir"))
        .line("echo IDE-DONE")
        .line("echo G-READY-CD")
        .ok_as("GO11", go(13))
        .fails_as("CD-R", "dd if=/dev/sr0 of=/dev/null bs=2048 count=1 iflag=direct status=none")
        .line("echo CD-DONE")
        .line("echo GUEST-END=$((40+2))");
    g
}

#[test]
fn injected_faults_and_the_four_policies_in_a_running_guest() {
    let Some(python) = e2e::python_with_qemu_qmp() else {
        eprintln!("SKIPPED: no Python with the qemu.qmp package (resources/install-deps.sh installs it)");
        return;
    };
    let g = guest_script();
    let script = g.text() + "\n";
    assert!(script.len() < 1 << 20);
    let run_cmd = format!("head -c {} /dev/vdc >/tmp/g.sh; sh /tmp/g.sh", script.len());
    let mut h = Script::host("H");
    h.ok("truncate -s 64M $WORK/stop.raw")
        .ok("truncate -s 16M $WORK/hd.raw")
        .ok("mkdir -p $WORK/small")
        .ok("mount -t tmpfs -o size=8m tmpfs $WORK/small")
        .ok("head -c 6291456 /dev/zero >$WORK/small/filler")
        .ok("truncate -s 64M $WORK/small/enospc.raw")
        .ok("truncate -s 16M $WORK/report.raw")
        .ok("truncate -s 16M $WORK/ignore.raw")
        .ok("truncate -s 1M $WORK/signal.raw")
        .line(format!("cat >$WORK/g.sh <<'EOS'\n{script}EOS"))
        .ok("dd if=$WORK/g.sh of=$WORK/signal.raw conv=notrunc status=none")
        .line(format!(
            "$VMM --kernel $IMAGES/vmlinuz --initrd $IMAGES/initramfs.cpio.gz \
             --drive if=virtio,file=$WORK/stop.raw,werror=stop,rerror=stop \
             --drive if=virtio,file=$WORK/report.raw,werror=report,rerror=report \
             --drive if=virtio,file=$WORK/signal.raw \
             --drive if=virtio,file=$WORK/ignore.raw,werror=ignore,rerror=ignore \
             --drive if=virtio,file=$WORK/small/enospc.raw,werror=enospc \
             --drive if=ide,file=$WORK/hd.raw,rerror=stop --cdrom $IMAGES/cd.iso \
             --qmp $QMP --cmdline 'console=ttyS0 panic=-1 quiet run=\"{run_cmd}\"' </dev/null 2>$WORK/err &"
        ))
        .line("vmm=$!")
        // Frees the space once vde's write has failed for lack of it.
        .line(
            "( n=0; until grep -q \"virtio4.*No space left\" $WORK/err; do n=$((n+1)); [ $n -gt 3000 ] && exit 1; sleep 0.2; done; \
             rm -f $WORK/small/filler; echo L1-SPACE-FREED ) &",
        )
        .line("qmp_bridge $QMP")
        .line("wait $vmm; echo H-VMM-RC=$?")
        .ok("sed 's/^/VMM-ERR: /' $WORK/err")
        .ok("dd if=$WORK/stop.raw of=$WORK/a bs=1M count=8 status=none")
        .line(md5_line("H-STOP-IMG", "$WORK/a"))
        .ok("dd if=$WORK/stop.raw of=$WORK/b bs=1M skip=16 count=8 status=none")
        .line(md5_line("H-FLAP-IMG", "$WORK/b"));
    let scenario = e2e::qmp_scenario(&h.text(), std::path::Path::new(env!("CARGO_BIN_EXE_qmp-bridge")));
    let (run, log) = e2e::run_qmp_guest(&python, &scenario, "error_policies", TIMEOUT);
    h.check(&run);
    g.check(&run);
    let v = |k: &str| run.value(k).unwrap_or_else(|| panic!("no {k}=\n{log}"));
    assert_eq!(run.status("H-VMM-RC"), Some(0), "{log}");
    assert_eq!(v("GUEST-END"), "42", "{log}");
    assert_eq!(run.md5("RB"), run.md5("P"), "read back after cont\n{log}");
    assert_eq!(run.md5("H-STOP-IMG"), run.md5("P"), "the image after the stop\n{log}");
    assert_ne!(v("KLOG-VDB"), "0", "the guest kernel logged no I/O error\n{log}");
    let slow: u32 = v("SLOW-CS").parse().expect("SLOW-CS");
    let fast: u32 = v("FAST-CS").parse().expect("FAST-CS");
    assert!(slow >= 200, "the slow read took {slow} cs\n{log}");
    assert!(fast < 150, "the other drive's read took {fast} cs\n{log}");
    assert_eq!(v("FLAP-ERRORS"), "0", "{log}");
    assert_eq!(run.md5("FLAP-RB"), run.md5("P"), "data written across the stops\n{log}");
    assert_eq!(run.md5("H-FLAP-IMG"), run.md5("P"), "{log}");
    assert_eq!(run.md5("ER"), run.md5("E"), "enospc: data after cont\n{log}");
    assert_eq!(run.md5("IR"), run.md5("P64"), "IDE read after cont\n{log}");
    eprintln!("qmp policies: slow read {slow} cs, other drive {fast} cs, {} write rounds across 50 stops", v("FLAP-ROUNDS"));
}
