//! virtio-blk seen from inside the guest: fio in the guest against
//! /dev/vda, our VMM against QEMU `-M microvm,acpi=on` (virtio-blk-device
//! on virtio-mmio), same kernel, initramfs, image, memory and vCPUs, both in
//! the same L1 VM (directly on a hardware-KVM host), alternating, RUNS times.
//!
//! Jobs (fio 3.33 from the host, appended to the guest initramfs):
//! - `--bs=4k --rw=randread --iodepth=32 --ioengine=libaio --direct=1`
//! - `--bs=1M --rw=read --iodepth=32 --ioengine=libaio --direct=1`
//!
//! The image is a 512 MiB file on L1's tmpfs, written full beforehand so
//! that reads hit allocated pages; both VMMs use the host page cache
//! (cache=writeback: L1's tmpfs refuses O_DIRECT) and io_uring.
//!
//! Usage: cargo run --release -p e2e --bin bench-virtio-blk [-- RUNS SECONDS]

use std::path::Path;
use std::time::Duration;

/// Generous: RUNS x 4 guests of 2 fio jobs, each a few seconds over SECONDS.
const TIMEOUT: Duration = Duration::from_secs(3600);

fn main() {
    let args: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let runs = args.first().copied().unwrap_or(3);
    let secs = args.get(1).copied().unwrap_or(10);
    let fio = Path::new("/usr/bin/fio");
    if !fio.exists() {
        eprintln!("bench-virtio-blk: /usr/bin/fio is missing (apt-get install fio)");
        std::process::exit(1);
    }
    let qemu = Path::new("/usr/bin/qemu-system-x86_64");
    let firmware = [Path::new("/usr/share/qemu/qboot.rom"), Path::new("/usr/share/qemu/bios-microvm.bin")];

    // The benchmark guest: our initramfs plus fio and its libraries.
    let dir = e2e::workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir).expect("creating target/bench");
    let initrd = dir.join("initramfs-fio.cpio");
    let mut archive = std::fs::read(e2e::images().join("initramfs.cpio.gz")).expect("reading the guest initramfs");
    // The kernel's unpacker skips zeros between archives but wants each one
    // to start 4-byte aligned.
    archive.resize(archive.len().next_multiple_of(4), 0);
    archive.extend_from_slice(&e2e::programs_archive(&[fio]));
    std::fs::write(&initrd, archive).expect("writing the benchmark initramfs");

    let job = |name: &str, bs: &str, rw: &str| {
        format!(
            "fio --minimal --name={name} --filename=/dev/vda --direct=1 --ioengine=libaio --iodepth=32 \
             --bs={bs} --rw={rw} --runtime={secs} --time_based"
        )
    };
    let guest = format!("{}; {}", job("randread4k", "4k", "randread"), job("seqread1m", "1M", "read"));
    let cmdline = format!("console=ttyS0 panic=-1 quiet run=\"{guest}\"");
    let script = format!(
        r#"
img=$WORK/disk.raw
dd if=/dev/zero of=$img bs=1M count=512 2>/dev/null
tag() {{ while IFS= read -r line; do case "$line" in 3\;*) echo "FIO vmm=$1 $line";; *rror*|*fio*|*vmm:*|*qemu*) echo "$1: $line";; esac; done; }}
QEMU_ARGS="-M microvm,acpi=on -enable-kvm -cpu host -m 1G -smp 1 -nodefaults -no-user-config -display none -serial stdio -L /usr/share/qemu"
for i in $(seq {runs}); do
    $VMM --kernel $IMAGES/vmlinuz --initrd {initrd} --memory 1G --drive if=virtio,file=$img --cmdline '{cmdline}' </dev/null 2>&1 | tag ours
    qemu-system-x86_64 $QEMU_ARGS -kernel $IMAGES/vmlinuz -initrd {initrd} -append '{cmdline}' \
        -drive file=$img,if=none,id=d0,format=raw,cache=writeback,aio=io_uring -device virtio-blk-device,drive=d0 </dev/null 2>&1 | tag qemu
done
"#,
        initrd = initrd.display()
    );
    let run = e2e::run_scenario_with(&script, TIMEOUT, &[qemu], &[firmware[0], firmware[1], &initrd]);

    // fio terse v3: field 3 job name, 7 read bandwidth (KiB/s), 8 read IOPS.
    let mut rows: Vec<(String, String, f64, f64)> = Vec::new();
    for line in run.lines.iter().filter_map(|l| l.strip_prefix("FIO vmm=")) {
        let (who, terse) = line.split_once(' ').unwrap_or(("", ""));
        let f: Vec<&str> = terse.split(';').collect();
        let (Some(job), Some(bw), Some(iops)) = (f.get(2), f.get(6), f.get(7)) else { continue };
        let (bw, iops) = (bw.parse().unwrap_or(0.0), iops.parse().unwrap_or(0.0));
        println!("{who:5} {job:11} {iops:10.0} IOPS {:9.1} MiB/s", bw / 1024.0);
        rows.push((who.to_string(), job.to_string(), iops, bw));
    }
    let mut ok = true;
    for job in ["randread4k", "seqread1m"] {
        let pick = |who: &str, i: usize| {
            e2e::median(rows.iter().filter(|r| r.0 == who && r.1 == job).map(|r| if i == 0 { r.2 } else { r.3 }).collect())
        };
        match (pick("ours", 0), pick("qemu", 0), pick("ours", 1), pick("qemu", 1)) {
            (Some(oi), Some(qi), Some(ob), Some(qb)) => println!(
                "median {job}: ours {oi:.0} IOPS ({:.1} MiB/s), qemu microvm {qi:.0} IOPS ({:.1} MiB/s), ours/qemu = {:.2}",
                ob / 1024.0,
                qb / 1024.0,
                oi / qi
            ),
            _ => ok = false,
        }
    }
    if !ok {
        eprintln!("bench-virtio-blk: missing results; output:\n{}", run.log());
        std::process::exit(1);
    }
}
