//! qcow2 in the real guest (issue 15), with images made and checked by
//! QEMU's own tools where the VMM runs (in L1 when nested):
//! 1. A chain base.raw ← mid.qcow2 ← top.qcow2 (qemu-img, relative backing
//!    names; mid holds 0x4d over 4-8 MiB, top has 256 KiB clusters). The
//!    guest reads both lower layers' data through vda, writes a whole
//!    cluster and 64 KiB inside a cluster that has backing data, and reads
//!    them back. After exit: `qemu-img check` finds no errors, `qemu-img
//!    convert` of top equals the expected bytes everywhere (`cmp` against
//!    a raw file built on the host), base.raw and mid.qcow2 are byte for
//!    byte unchanged.
//! 2. The same top.qcow2 with snapshot=on (format probed): the guest's
//!    writes succeed and read back; after exit top.qcow2 is unchanged and
//!    the overlay in $TMPDIR is gone.

use std::path::Path;
use std::time::Duration;

use e2e::{md5_line, run_scenario_with, vmm_command, Script};

const TIMEOUT: Duration = Duration::from_secs(600);

fn tool(name: &str) -> Option<std::path::PathBuf> {
    let p = std::path::PathBuf::from("/usr/bin").join(name);
    p.exists().then_some(p)
}

#[test]
fn a_backing_chain_and_snapshot_on_in_the_guest() {
    let (Some(qemu_img), Some(qemu_io)) = (tool("qemu-img"), tool("qemu-io")) else {
        eprintln!("SKIPPED: qemu-img and qemu-io are needed (apt-get install qemu-utils)");
        return;
    };
    // Guest 1: reads of each layer, then the two writes.
    let mut g = Script::guest("G");
    g.ok_as("R-BASE", "dd if=/dev/vda of=/tmp/b bs=1M count=4 iflag=direct status=none")
        .line(md5_line("G-BASE", "/tmp/b"))
        .ok_as("R-MID", "dd if=/dev/vda of=/tmp/m bs=1M skip=4 count=4 iflag=direct status=none")
        .line(md5_line("G-MID", "/tmp/m"))
        .ok("yes whole-cluster | head -c 262144 >/tmp/c")
        .ok("yes inside-a-cluster | head -c 65536 >/tmp/p")
        .line(md5_line("G-C", "/tmp/c"))
        .line(md5_line("G-P", "/tmp/p"))
        // 10 MiB: a whole 256 KiB cluster of top over base's data.
        .ok_as("W-CLUSTER", "dd if=/tmp/c of=/dev/vda bs=256k seek=40 oflag=direct status=none")
        // 4 MiB + 64 KiB: inside the cluster at 4 MiB, over mid's data.
        .ok_as("W-INSIDE", "dd if=/tmp/p of=/dev/vda bs=64k seek=65 oflag=direct status=none")
        .ok_as("RB-CLUSTER", "dd if=/dev/vda of=/tmp/rc bs=256k skip=40 count=1 iflag=direct status=none")
        .ok_as("RB-INSIDE", "dd if=/dev/vda of=/tmp/rp bs=64k skip=65 count=1 iflag=direct status=none")
        .line(md5_line("G-RC", "/tmp/rc"))
        .line(md5_line("G-RP", "/tmp/rp"))
        // The rest of that cluster still reads mid's data.
        .ok_as("R-AROUND", "dd if=/dev/vda of=/tmp/ra bs=64k skip=64 count=1 iflag=direct status=none")
        .line(md5_line("G-AROUND", "/tmp/ra"));
    // No `sync`: what the guest saw complete must be in the image after a
    // plain exit (the VMM flushes its media as QEMU does).
    // Guest 2 (snapshot=on): a write that reads back.
    let mut s = Script::guest("S");
    s.ok("yes snapshot-write | head -c 1048576 >/tmp/s")
        .line(md5_line("S-W", "/tmp/s"))
        .ok_as("SW", "dd if=/tmp/s of=/dev/vda bs=1M oflag=direct status=none")
        .ok_as("SR", "dd if=/dev/vda of=/tmp/sr bs=1M count=1 iflag=direct status=none")
        .line(md5_line("S-R", "/tmp/sr"));

    let mut h = Script::host("H");
    h.ok("cd $WORK")
        .ok("yes base-layer-data | head -c 16777216 >base.raw")
        .ok("qemu-img create -q -f qcow2 -b base.raw -F raw mid.qcow2")
        .ok("qemu-io -f qcow2 -c 'write -P 0x4d 4M 4M' mid.qcow2 >/dev/null")
        .ok("qemu-img create -q -f qcow2 -o cluster_size=262144 -b mid.qcow2 -F qcow2 top.qcow2")
        .line(md5_line("H-BASE0", "base.raw"))
        .line(md5_line("H-MID0", "mid.qcow2"))
        // What the guest must read from each layer.
        .ok("head -c 4194304 base.raw >eb")
        .ok("head -c 4194304 /dev/zero | tr '\\000' M >em")
        .line(md5_line("H-EB", "eb"))
        .line(md5_line("H-EM", "em"))
        .ok("head -c 65536 em >eam")
        .line(md5_line("H-EAM", "eam"))
        .ok_as("VMM1", format!("{} 2>err1", vmm_command("--drive if=virtio,file=$WORK/top.qcow2,format=qcow2", &g.text())))
        .ok("sed 's/^/VMM1-ERR: /' err1")
        .line("echo H-CHECK=$(qemu-img check top.qcow2 2>&1 | grep -c 'No errors were found')")
        .ok_as("CONVERT", "qemu-img convert -f qcow2 -O raw top.qcow2 out.raw")
        // The expected image: base, mid's 4 MiB, the guest's two writes.
        .ok("cp base.raw want.raw")
        .ok("dd if=em of=want.raw bs=1M seek=4 conv=notrunc status=none")
        .ok("yes whole-cluster | head -c 262144 | dd of=want.raw bs=256k seek=40 conv=notrunc status=none")
        .ok("yes inside-a-cluster | head -c 65536 | dd of=want.raw bs=64k seek=65 conv=notrunc status=none")
        .ok_as("CMP", "cmp want.raw out.raw")
        .line(md5_line("H-BASE1", "base.raw"))
        .line(md5_line("H-MID1", "mid.qcow2"))
        // 2. snapshot=on, format probed, overlay in $WORK/tmp.
        .line(md5_line("H-TOP0", "top.qcow2"))
        .ok("mkdir -p $WORK/tmp")
        .ok_as("VMM2", format!("TMPDIR=$WORK/tmp {} 2>err2", vmm_command("--drive if=virtio,file=$WORK/top.qcow2,snapshot=on", &s.text())))
        .ok("sed 's/^/VMM2-ERR: /' err2")
        .line(md5_line("H-TOP1", "top.qcow2"))
        .line("echo H-OVERLAYS=$(ls $WORK/tmp | wc -l)")
        .line("echo H-CHECK2=$(qemu-img check top.qcow2 2>&1 | grep -c 'No errors were found')");
    let bins: [&Path; 2] = [&qemu_img, &qemu_io];
    let run = run_scenario_with(&h.text(), TIMEOUT, &bins, &[]);
    h.check(&run);
    g.check(&run);
    s.check(&run);
    let log = run.log();
    let md5 = |k: &str| run.md5(k);
    assert_eq!(md5("G-BASE"), md5("H-EB"), "base.raw's data through the chain\n{log}");
    assert_eq!(md5("G-MID"), md5("H-EM"), "mid.qcow2's data through the chain\n{log}");
    assert_eq!(md5("G-RC"), md5("G-C"), "{log}");
    assert_eq!(md5("G-RP"), md5("G-P"), "{log}");
    assert_eq!(md5("G-AROUND"), md5("H-EAM"), "copy-on-write kept the rest of the cluster\n{log}");
    assert_eq!(run.expect_value("H-CHECK"), "1", "qemu-img check\n{log}");
    assert_eq!(md5("H-BASE1"), md5("H-BASE0"), "base.raw changed\n{log}");
    assert_eq!(md5("H-MID1"), md5("H-MID0"), "mid.qcow2 changed\n{log}");
    // snapshot=on
    assert_eq!(md5("S-R"), md5("S-W"), "the snapshot read back its write\n{log}");
    assert_eq!(md5("H-TOP1"), md5("H-TOP0"), "snapshot=on changed the image\n{log}");
    assert_eq!(run.expect_value("H-OVERLAYS"), "0", "the overlay was left behind\n{log}");
    assert_eq!(run.expect_value("H-CHECK2"), "1", "{log}");
    assert!(!log.contains("probing guessed raw"), "a qcow2 image was probed as raw\n{log}");
}
