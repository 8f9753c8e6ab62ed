//! QMP on a running guest, driven from the host with qemu.qmp
//! (tests/qmp/guest_qmp.py), in one guest boot:
//! 1. the guest reads CD one; the host changes the medium to CD two; the
//!    guest remounts and reads CD two's file;
//! 2. the guest locks the door (`eject -i on`); the host's eject fails with
//!    QEMU's message and the guest sees the eject request (GET EVENT STATUS
//!    NOTIFICATION); a forced eject opens the tray and the guest finds no
//!    medium;
//! 3. stop/cont: the guest's clock-driven ticks stall and go on, and
//!    query-status says paused, then running;
//! 4. block_resize of a virtio disk: the guest sees the new size;
//! 5. a hundred media changes while the guest reads the CD in a loop (the
//!    host waits for a good read after every fifth change, so reads and
//!    changes interleave): no read returns wrong data, the only sense keys
//!    are NOT READY and UNIT ATTENTION;
//! 6. werror=stop on a real ENOSPC: BLOCK_IO_ERROR then STOP; space is
//!    freed; `cont` retries the held write and the data is intact in the
//!    guest and in the image.
//!
//! Nested, the VMM's socket reaches the host through L1's second UART and
//! `qmp-bridge` (e2e::qmp_scenario). Every guest command's exit status is
//! checked (`e2e::Script`).

use std::time::Duration;

use e2e::{md5_line, Script};

const TIMEOUT: Duration = Duration::from_secs(900);

fn guest_script() -> Script {
    // Retries `cond` for up to a minute; the step's status is `last`'s.
    let wait = |cond: &str, last: &str| {
        format!(
            "n=0; until {cond}; do n=$((n+1)); [ $n -gt 600 ] && break; sleep 0.1; done; {last}"
        )
    };
    let mut g = Script::guest("G");
    // The kernel must neither close an open tray on open (autoclose) nor
    // lock the door while the device is open (lock): the host moves it.
    g.ok_as("AUTOCLOSE", "echo 0 >/proc/sys/dev/cdrom/autoclose")
        .ok_as("NOLOCK", "echo 0 >/proc/sys/dev/cdrom/lock")
        .line("mkdir -p /mnt")
        // 1. CD one, then CD two after the host's change.
        .ok_as("MOUNT1", "mount -t iso9660 -o ro /dev/sr0 /mnt")
        .line("echo ONE=$(tr -c a-zA-Z- _ </mnt/hello.txt)")
        .ok_as("UMOUNT1", "umount /mnt")
        .line("echo G-WAIT-CHANGE")
        .ok_as("MOUNT2", wait("mount -t iso9660 -o ro /dev/sr0 /mnt 2>/dev/null", "test -f /mnt/two.txt"))
        .line("echo TWO=$(tr -c a-zA-Z- _ </mnt/two.txt)")
        .ok_as("UMOUNT2", "umount /mnt")
        // 2. The door locked from the guest; the host's eject request seen
        //    through GET EVENT STATUS NOTIFICATION (polled, media class) on
        //    the bsg node, which does not go through sr's own event check.
        .ok_as("LOCK", "eject -i on /dev/sr0")
        .line("echo G-LOCKED")
        .line("b=$(ls -d /dev/bsg/* | head -n1); e=0")
        .ok_as(
            "GESN",
            wait(
                "{ sg_raw -r 8 -o /tmp/gesn $b 4a 01 00 00 10 00 00 00 08 00 >/dev/null 2>&1; v=$(od -An -tu1 -j4 -N1 /tmp/gesn 2>/dev/null); e=$(( ${v:-0} % 16 )); [ $e = 1 ]; }",
                "[ $e = 1 ]",
            ),
        )
        .line("echo GESN-EVENT=$e")
        .ok_as("NOMEDIUM", wait("! dd if=/dev/sr0 of=/dev/null bs=2048 count=1 iflag=direct 2>/tmp/e1", "grep -q No.medium.found /tmp/e1"))
        .line("echo G-NOMEDIUM-DONE")
        // 3. Ticks on the guest's clock, for the host's stop/cont.
        .line("i=0; while [ $i -lt 40 ]; do read up idle </proc/uptime; echo TICK=$i:$up; i=$((i+1)); sleep 0.25; done")
        // 4. The host grows vda from 16 MiB to 32 MiB.
        .line("echo VDA-BEFORE=$(cat /sys/block/vda/size)")
        .line("echo G-RESIZE-WAIT")
        .ok_as("RESIZE", wait("[ $(cat /sys/block/vda/size) = 65536 ]", "[ $(cat /sys/block/vda/size) = 65536 ]"))
        .line("echo VDA-SECTORS=$(cat /sys/block/vda/size)")
        // 5. Read 64 KiB inside pattern.bin (all C on CD one, all D on CD
        //    two) until the medium reads as zeros, the host's last one.
        .line("cm=$(head -c 65536 /dev/zero | tr -c C C | md5sum | cut -c1-32)")
        .line("dm=$(head -c 65536 /dev/zero | tr -c D D | md5sum | cut -c1-32)")
        .line("zm=$(head -c 65536 /dev/zero | md5sum | cut -c1-32)")
        .ok_as("DMESG-CLEAR", "dmesg -c >/dev/null")
        .line("reads=0; errs=0; bad=0; n=0; m=none")
        .line("echo G-CHANGES-START")
        .line(
            "while [ $n -lt 20000 ]; do n=$((n+1)); \
             if dd if=/dev/sr0 of=/tmp/r bs=64k skip=16 count=1 iflag=direct status=none 2>>/tmp/dderr; then \
             m=$(md5sum </tmp/r | cut -c1-32); \
             if [ $m = $zm ]; then break; elif [ $m = $cm ] || [ $m = $dm ]; then reads=$((reads+1)); echo READ-OK=$reads; else bad=$((bad+1)); fi; \
             else errs=$((errs+1)); fi; done",
        )
        .line("echo CHANGE-READS=$reads")
        .line("echo CHANGE-ERRS=$errs")
        .line("echo CHANGE-BAD=$bad")
        .line("echo CHANGE-LAST-IS-ZEROS=$([ $m = $zm ] && echo 1)")
        .line("echo OTHER-SENSE=$(dmesg | grep Sense.Key | grep -v -c -e Not.Ready -e Unit.Attention)")
        .line("echo OTHER-DD-ERRORS=$(grep -v -c -e No.medium.found -e Input/output.error /tmp/dderr)")
        // 6. werror=stop: the write pauses the VM until the host frees
        //    space and says cont.
        .ok("yes werr | head -c 4194304 >/tmp/w")
        .line(md5_line("W-PATTERN", "/tmp/w"))
        .ok_as("W-WRITE", "dd if=/tmp/w of=/dev/vdb bs=1M oflag=direct status=none")
        .ok_as("W-READ", "dd if=/dev/vdb of=/tmp/wr bs=1M count=4 iflag=direct status=none")
        .line(md5_line("W-BACK", "/tmp/wr"))
        .line("echo GUEST-END=$((40+2))");
    g
}

#[test]
fn qmp_drives_a_running_guest() {
    let Some(python) = e2e::python_with_qemu_qmp() else {
        eprintln!(
            "SKIPPED: no Python with the qemu.qmp package (resources/install-deps.sh installs it)"
        );
        return;
    };
    let g = guest_script();
    let script = g.text() + "\n";
    let run_cmd = format!("head -c {} /dev/vda >/tmp/g.sh; sh /tmp/g.sh", script.len());
    let mut h = Script::host("H");
    h.ok("truncate -s 16M $WORK/vda.raw")
        .line(format!("cat >$WORK/g.sh <<'EOS'\n{script}EOS"))
        .ok("dd if=$WORK/g.sh of=$WORK/vda.raw conv=notrunc status=none")
        .ok("mkdir -p $WORK/small")
        .ok("mount -t tmpfs -o size=8m tmpfs $WORK/small")
        .ok("head -c 6291456 /dev/zero >$WORK/small/filler")
        .ok("truncate -s 64M $WORK/small/vdb.raw")
        .ok("truncate -s 2M $WORK/stop.iso")
        .line(format!(
            "$VMM --kernel $IMAGES/vmlinuz --initrd $IMAGES/initramfs.cpio.gz \
             --drive if=virtio,file=$WORK/vda.raw --drive if=virtio,file=$WORK/small/vdb.raw,werror=stop \
             --cdrom $IMAGES/cd.iso --qmp $QMP \
             --cmdline 'console=ttyS0 panic=-1 quiet run=\"{run_cmd}\"' </dev/null 2>$WORK/err &"
        ))
        .line("vmm=$!")
        // Frees the space once the VMM has paused on the error.
        .line(
            "( n=0; until grep -q 'VM paused (io-error)' $WORK/err; do n=$((n+1)); [ $n -gt 3000 ] && exit 1; sleep 0.2; done; \
             rm -f $WORK/small/filler; echo L1-SPACE-FREED ) &",
        )
        .line("qmp_bridge $QMP")
        .line("wait $vmm; echo H-VMM-RC=$?")
        .ok("sed 's/^/VMM-ERR: /' $WORK/err")
        .ok("dd if=$WORK/small/vdb.raw of=$WORK/w bs=1M count=4 status=none")
        .line(md5_line("H-W-IMAGE", "$WORK/w"));

    let scenario = e2e::qmp_scenario(&h.text(), std::path::Path::new(env!("CARGO_BIN_EXE_qmp-bridge")));
    let (run, log) = e2e::run_qmp_guest(&python, &scenario, "media_and_run_state", TIMEOUT);
    h.check(&run);
    g.check(&run);
    let v = |k: &str| run.value(k).unwrap_or_else(|| panic!("no {k}=\n{log}"));
    assert_eq!(run.status("H-VMM-RC"), Some(0), "{log}");
    assert_eq!(v("GUEST-END"), "42", "{log}");
    assert_eq!(v("ONE"), "hello_from_the_CD-ROM_", "{log}");
    assert_eq!(v("TWO"), "second_disc_", "{log}");
    assert_eq!(v("GESN-EVENT"), "1", "eject request\n{log}");
    assert_eq!(v("VDA-BEFORE"), "32768", "{log}");
    assert_eq!(v("VDA-SECTORS"), "65536", "{log}");
    let reads: u32 = v("CHANGE-READS").parse().expect("reads");
    assert!(
        reads >= 20,
        "the guest read too little during the changes\n{log}"
    );
    assert_eq!(v("CHANGE-BAD"), "0", "a read returned wrong data\n{log}");
    assert_eq!(v("CHANGE-LAST-IS-ZEROS"), "1", "{log}");
    assert_eq!(v("OTHER-SENSE"), "0", "{log}");
    assert_eq!(v("OTHER-DD-ERRORS"), "0", "{log}");
    assert_eq!(run.md5("W-BACK"), run.md5("W-PATTERN"), "{log}");
    assert_eq!(
        run.md5("H-W-IMAGE"),
        run.md5("W-PATTERN"),
        "the image after cont\n{log}"
    );
    eprintln!(
        "qmp guest: {reads} good reads and {} errors during 100 media changes",
        v("CHANGE-ERRS")
    );
}
