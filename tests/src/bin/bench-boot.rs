//! Boot time of our VMM against QEMU `-M microvm,acpi=on`, side by side in
//! one L1 VM (the nested setup the tests use on hosts without hardware KVM;
//! directly on a hardware-KVM host), same kernel, initramfs, memory and
//! command line, alternating, N runs each (default 3).
//!
//! Boot-to-init is measured on the L1 clock (/proc/uptime, 10 ms steps) from
//! just before the VMM starts to the moment the guest's init prints its
//! ready marker on the console. Peak RSS (VmHWM) of each VMM process is read
//! at that moment too.
//!
//! Usage: cargo run --release -p e2e --bin bench-boot [-- RUNS]

use std::path::Path;
use std::time::Duration;

/// Generous: each boot takes seconds, L1 itself about 20 s.
const TIMEOUT: Duration = Duration::from_secs(3600);

fn main() {
    let runs: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let qemu = Path::new("/usr/bin/qemu-system-x86_64");
    let firmware = [Path::new("/usr/share/qemu/qboot.rom"), Path::new("/usr/share/qemu/bios-microvm.bin")];
    let cmdline = "console=ttyS0 panic=-1 quiet run=true";
    // `watch NAME PROG` runs a VMM command with its console piped through a
    // reader that timestamps the ready marker and samples the VMM's VmHWM.
    let script = format!(
        r#"
now() {{ cut -d' ' -f1 /proc/uptime; }}
watch() {{
    name=$1; prog=$2; shift 2
    t0=$(now)
    "$@" </dev/null 2>&1 | while IFS= read -r line; do
        case "$line" in
        *VMM-GUEST-READY*)
            t1=$(now)
            pid=$(pidof "$prog" | cut -d' ' -f1)
            hwm=$(awk '/VmHWM/ {{print $2}}' /proc/$pid/status 2>/dev/null)
            echo "BENCH name=$name start=$t0 ready=$t1 hwm_kb=$hwm";;
        esac
    done
}}
QEMU_ARGS="-M microvm,acpi=on -enable-kvm -cpu host -m 512M -smp 1 -nodefaults -no-user-config -display none -serial stdio -L /usr/share/qemu"
for i in $(seq {runs}); do
    watch ours vmm $VMM --kernel $IMAGES/vmlinuz --initrd $IMAGES/initramfs.cpio.gz --memory 512M --cmdline '{cmdline}'
    watch qemu qemu-system-x86_64 qemu-system-x86_64 $QEMU_ARGS -kernel $IMAGES/vmlinuz -initrd $IMAGES/initramfs.cpio.gz -append '{cmdline}'
done
"#
    );
    let run = e2e::run_scenario_with(&script, TIMEOUT, &[qemu], &firmware);
    let mut rows: Vec<(String, f64, u64)> = Vec::new();
    for line in run.lines.iter().filter(|l| l.starts_with("BENCH ")) {
        let get = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{k}=")).map(str::to_string));
        let (Some(name), Some(t0), Some(t1)) = (get("name"), get("start"), get("ready")) else { continue };
        let secs = t1.parse::<f64>().unwrap_or(0.0) - t0.parse::<f64>().unwrap_or(0.0);
        let hwm: Option<u64> = get("hwm_kb").and_then(|h| h.parse().ok());
        let rss = hwm.map(|h| format!("{:7.1} MiB", h as f64 / 1024.0)).unwrap_or_else(|| "    n/a (process not found)".into());
        println!("{name:5} boot-to-init {secs:6.2} s   peak RSS {rss}");
        rows.push((name, secs, hwm.unwrap_or(0)));
    }
    let median = |name: &str| e2e::median(rows.iter().filter(|r| r.0 == name).map(|r| r.1).collect());
    match (median("ours"), median("qemu")) {
        (Some(o), Some(q)) => println!("median boot-to-init: ours {o:.2} s, qemu microvm {q:.2} s, ours/qemu = {:.2}", o / q),
        _ => {
            eprintln!("bench-boot: missing results; output:\n{}", run.log());
            std::process::exit(1);
        }
    }
}
