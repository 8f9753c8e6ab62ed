//! virtio-blk seen from inside the guest: fio in the guest against
//! /dev/vda, our VMM against QEMU `-M microvm,acpi=on` (virtio-blk-device on
//! virtio-mmio) with an iothread (`-object iothread` and `iothread=` on the
//! device, QEMU's best configuration) and without, same kernel, initramfs,
//! image, cache mode, engine, memory and vCPUs, runs alternating, RUNS of
//! each; nested, with 1 and with 2 L1 CPUs (one L1 VM each).
//!
//! Jobs (fio from the host, appended to the guest initramfs), each SECONDS:
//! `--direct=1 --ioengine=libaio --iodepth=32` with 4k randread, 4k
//! randwrite and 1M sequential read.
//!
//! The image is a 512 MiB file on L1's tmpfs, written full beforehand so
//! that reads hit allocated pages; every VMM uses the host page cache
//! (cache=writeback: L1's tmpfs refuses O_DIRECT) and io_uring.
//!
//! With `BENCH_FORMAT=qcow2` the image is a 512 MiB qcow2 image with every
//! cluster written (`qemu-img create` and `qemu-io`) and every VMM opens it
//! as qcow2 (ours through imago, QEMU its own driver): the section is then
//! "qcow2", with no target.
//!
//! Usage: cargo run --release -p e2e --bin bench-virtio-blk [-- RUNS SECONDS]
//! (`VMM_L1_CPUS=N` in the environment: only that L1 size.)

use std::path::Path;
use std::time::Duration;

use e2e::bench::{field, where_guests_run, Section, Stats};

/// Generous: RUNS x 3 guests of 3 fio jobs, each a few seconds over SECONDS.
const TIMEOUT: Duration = Duration::from_secs(3600);
/// The issue's target (13): ours / QEMU microvm with an iothread.
const GOAL: f64 = 1.1;

const JOBS: [(&str, &str, &str); 3] =
    [("randread4k", "4k", "randread"), ("randwrite4k", "4k", "randwrite"), ("seqread1m", "1M", "read")];

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
    let (qemu_img, qemu_io) = (Path::new("/usr/bin/qemu-img"), Path::new("/usr/bin/qemu-io"));
    let qcow2 = std::env::var("BENCH_FORMAT").is_ok_and(|f| f == "qcow2");
    let fmt = if qcow2 { "qcow2" } else { "raw" };
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

    // Each job's exit status is checked in the guest: a failed fio prints
    // FIO-FAILED and the run has no result for it.
    let guest: Vec<String> = JOBS
        .iter()
        .map(|(name, bs, rw)| {
            format!(
                "fio --minimal --name={name} --filename=/dev/vda --direct=1 --ioengine=libaio --iodepth=32 \
                 --bs={bs} --rw={rw} --runtime={secs} --time_based || echo FIO-FAILED {name}"
            )
        })
        .collect();
    let cmdline = format!("console=ttyS0 panic=-1 quiet run=\"{}\"", guest.join("; "));
    let script = format!(
        r#"
if [ {fmt} = qcow2 ]; then
    # L1's tmpfs has no room for a raw copy too: every cluster written by
    # qemu-io instead.
    img=$WORK/disk.qcow2
    qemu-img create -q -f qcow2 $img 512M && qemu-io -f qcow2 -c 'write -P 0x5a 0 512M' $img >/dev/null || echo "IMAGE-FAILED error"
else
    img=$WORK/disk.raw
    dd if=/dev/urandom of=$img bs=1M count=512 2>/dev/null
fi
tag() {{ while IFS= read -r line; do case "$line" in 3\;*) echo "FIO vmm=$1 $line";; *rror*|*fio*|*FIO*|*vmm:*|*qemu*) echo "$1: $line";; esac; done; }}
# run NAME CMD...: one guest, bounded, so that a hang costs one run (said
# as HUNG, and counted as runs without a result), not the whole benchmark.
run() {{
    name=$1; shift
    set -o pipefail
    timeout {limit} "$@" </dev/null 2>&1 | tag $name
    rc=$?
    set +o pipefail
    case $rc in
    0) ;;
    124|137|143) echo "HUNG $name";;
    *) echo "EXIT $name status $rc";;
    esac
}}
# -no-reboot: a guest that resets ends its run, as ours does (a reset
# ends our VMM), instead of rerunning the jobs until the time limit.
Q="qemu-system-x86_64 -M microvm,acpi=on -enable-kvm -cpu host -m 1G -smp 1 -nodefaults -no-user-config -display none -serial stdio -no-reboot"
D="-drive file=$img,if=none,id=d0,format={fmt},cache=writeback,aio=io_uring"
for i in $(seq {runs}); do
    run ours $VMM --kernel $IMAGES/vmlinuz --initrd {initrd} --memory 1G --drive if=virtio,file=$img,format={fmt},cache=writeback,aio=io_uring --cmdline '{cmdline}'
    run qemu-iothread $Q -kernel $IMAGES/vmlinuz -initrd {initrd} -append '{cmdline}' $D -object iothread,id=io0 \
        -device virtio-blk-device,drive=d0,iothread=io0
    run qemu $Q -kernel $IMAGES/vmlinuz -initrd {initrd} -append '{cmdline}' $D -device virtio-blk-device,drive=d0
done
"#,
        initrd = initrd.display(),
        fmt = fmt,
        // Three jobs of `secs` plus a boot: four times that is a hang.
        limit = 4 * (3 * secs + 20),
    );

    let mut s = Section::default();
    s.line(if qcow2 { "## virtio-blk on qcow2 in the guest" } else { "## virtio-blk in the guest" }).line("");
    s.line(format!(
        "Command: `cargo run --release -p e2e --bin bench-virtio-blk -- {runs} {secs}`. Guests run {}. \
         fio 3.33 in the guest on /dev/vda, `--direct=1 --ioengine=libaio --iodepth=32`, {secs} s per job; \
         ours against QEMU `-M microvm,acpi=on` with virtio-blk-device, with an iothread (`-object iothread`, \
         `iothread=` on the device) and without. All three: 1 vCPU, 1 GiB, the same kernel and initramfs, a \
         512 MiB {} on L1's tmpfs, cache=writeback, aio=io_uring. Medians (min - max) \
         of {runs} alternating runs.",
        where_guests_run(),
        if qcow2 { "qcow2 image (64 KiB clusters, every one written by `qemu-io` beforehand; ours through imago)" } else { "raw image of random data" }
    ));
    s.line("");
    let mut rows = Vec::new();
    let mut worst: Option<(f64, String)> = None;
    let mut missing = Vec::new();
    // VMM_L1_CPUS in the environment measures that L1 size only.
    let only: Option<u32> = std::env::var("VMM_L1_CPUS").ok().and_then(|c| c.parse().ok());
    let cpu_counts: Vec<u32> = if e2e::hardware_kvm() { vec![0] } else { only.map_or(vec![1, 2], |c| vec![c]) };
    for cpus in cpu_counts {
        if cpus > 0 {
            // SAFETY: no other thread runs yet that reads the environment.
            unsafe { std::env::set_var("VMM_L1_CPUS", cpus.to_string()) };
        }
        let run = e2e::run_scenario_with(&script, TIMEOUT, &[qemu, qemu_img, qemu_io], &[firmware[0], firmware[1], &initrd]);
        for l in run.lines.iter().filter(|l| l.contains("FIO-FAILED") || l.contains("rror") || l.starts_with("HUNG") || l.starts_with("EXIT")) {
            eprintln!("L1 CPUs {cpus}: {l}");
        }
        let hung: Vec<&str> = run.lines.iter().filter_map(|l| l.strip_prefix("HUNG ")).collect();
        if !hung.is_empty() {
            s.line(format!("With {cpus} L1 CPUs, guests that did not finish within the time limit and were killed: {}.", hung.join(", ")));
            s.line("");
        }
        // fio terse v3: field 3 job name, 7 read bandwidth (KiB/s), 8 read
        // IOPS, 48 write bandwidth, 49 write IOPS.
        let mut samples: Vec<(String, String, f64, f64)> = Vec::new();
        for line in run.lines.iter().filter(|l| l.starts_with("FIO ")) {
            let (Some(who), Some(terse)) = (field(line, "vmm"), line.split_whitespace().nth(2)) else { continue };
            let f: Vec<&str> = terse.split(';').collect();
            let Some(job) = f.get(2) else { continue };
            let (bw, iops) = if job.contains("write") { (f.get(47), f.get(48)) } else { (f.get(6), f.get(7)) };
            let (Some(Ok(bw)), Some(Ok(iops))) = (bw.map(|b| b.parse::<f64>()), iops.map(|i| i.parse::<f64>())) else { continue };
            samples.push((who, job.to_string(), iops, bw / 1024.0));
        }
        let label = if cpus == 0 { "-".to_string() } else { cpus.to_string() };
        for (job, bs, _) in JOBS {
            let pick = |who: &str| {
                let v: Vec<f64> = samples.iter().filter(|r| r.0 == who && r.1 == job).map(|r| if bs == "1M" { r.3 } else { r.2 }).collect();
                Stats::of(&v)
            };
            let unit = if bs == "1M" { "MiB/s" } else { "IOPS" };
            for who in ["ours", "qemu-iothread", "qemu"] {
                let n = samples.iter().filter(|r| r.0 == who && r.1 == job).count();
                s.expect_runs(&format!("{who} {job}, {label} L1 CPUs"), n, runs as usize);
            }
            let (Some(o), Some(qi), Some(q)) = (pick("ours"), pick("qemu-iothread"), pick("qemu")) else {
                missing.push(format!("{job} with {label} L1 CPUs"));
                continue;
            };
            let r = o.median / qi.median;
            if worst.as_ref().is_none_or(|w| r < w.0) {
                worst = Some((r, format!("{job}, {label} L1 CPU")));
            }
            rows.push(vec![
                label.clone(),
                format!("{job} ({unit})"),
                o.show(0),
                qi.show(0),
                q.show(0),
                format!("**{:.2}**", r),
                format!("{:.2}", o.median / q.median),
            ]);
        }
        if !missing.is_empty() {
            eprintln!("bench-virtio-blk: no results for {}; output:\n{}", missing.join(", "), run.log());
            std::process::exit(1);
        }
    }
    s.table(
        &["L1 CPUs", "job", "ours", "QEMU iothread", "QEMU no iothread", "ours / QEMU iothread", "ours / QEMU no iothread"],
        &rows,
    );
    if let Some((r, case)) = worst.filter(|_| !qcow2) {
        s.target("in-guest fio vs QEMU microvm with an iothread (lowest case)", format!("{r:.2}x ({case})"), ">= 1.1x", r >= GOAL);
    }
    s.finish(if qcow2 { "qcow2" } else { "virtio" });
}
