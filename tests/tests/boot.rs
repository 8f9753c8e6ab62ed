//! The stock Debian cloud kernel boots in our VMM: to the initramfs marker,
//! with the vCPUs and memory asked for, and ends the VMM cleanly on
//! power-off and on reboot, saying which of the two it was.

use std::time::Duration;

use e2e::{run_scenario, vmm_command, Run, Script};

const TIMEOUT: Duration = Duration::from_secs(300);

/// Boots the guest with `extra_args`, running the one command `guest_run`
/// (whose status the guest's init prints as VMM-GUEST-RC), and checks that
/// the VMM exited 0. Its stderr is in the output.
fn boot(extra_args: &str, guest_run: &str) -> Run {
    let mut host = Script::host("H");
    host.ok_as("VMM", format!("{} 2>$WORK/err", vmm_command(extra_args, guest_run)))
        .ok("cat $WORK/err");
    let run = run_scenario(&host.text(), TIMEOUT);
    host.check(&run);
    run
}

/// The guest ran its command to status 0 and powered off, and the VMM said
/// it ended on a power-off.
fn assert_ran_and_powered_off(run: &Run) {
    let log = run.log();
    assert!(run.has_line("VMM-GUEST-READY"), "no init marker:\n{log}");
    assert_eq!(run.status("VMM-GUEST-RC"), Some(0), "the guest's command failed\n{log}");
    assert!(run.has_line("reboot: Power down"), "the guest kernel did not power down\n{log}");
    assert!(run.has_line("vmm: guest powered off"), "{log}");
    assert!(!run.has_line("vmm: guest reset"), "{log}");
}

#[test]
fn boots_to_init_and_powers_off() {
    let run = boot("", "true");
    assert_ran_and_powered_off(&run);
}

#[test]
fn two_cpus_come_online() {
    let run = boot("--cpus 2", "cat /sys/devices/system/cpu/online");
    assert_ran_and_powered_off(&run);
    assert_eq!(run.expect_value("cpus"), "2", "{}", run.log());
    // Both CPUs are online, not merely present.
    assert!(run.lines.iter().any(|l| l.trim() == "0-1"), "cpu/online is not 0-1:\n{}", run.log());
}

#[test]
fn memory_1g_gives_memtotal_near_1g() {
    let run = boot("--memory 1G", "true");
    assert_ran_and_powered_off(&run);
    let kb: u64 = run.expect_value("mem_kb").parse().expect("mem_kb is a number");
    let want = 1024 * 1024;
    assert!(kb > want * 9 / 10 && kb <= want, "MemTotal {kb} kB is not within 10% of 1 GiB");
}

/// Reboot through the FADT's reset register (Linux's default on our PC-style
/// ACPI) and, in a second VMM run, with `reboot=bios`: Linux then jumps to
/// the BIOS reset vector, where only our stub stands between the vCPU and
/// zeros forever (docs/machine.md); `timeout` turns a hang into a failure.
#[test]
fn guest_reboot_ends_the_vmm_with_zero() {
    let mut host = Script::host("H");
    host.ok_as("VMM", format!("{} 2>$WORK/err", vmm_command("", "reboot -f")))
        .ok("cat $WORK/err")
        .ok_as(
            "VMM-BIOS",
            "timeout 120 $VMM --kernel $IMAGES/vmlinuz --initrd $IMAGES/initramfs.cpio.gz \
             --cmdline 'console=ttyS0 panic=-1 quiet reboot=bios run=\"reboot -f\"' </dev/null >$WORK/out2 2>$WORK/err2",
        )
        .ok("sed 's/^/BIOS: /' $WORK/out2 $WORK/err2");
    let run = run_scenario(&host.text(), TIMEOUT);
    host.check(&run);
    let log = run.log();
    assert!(run.has_line("VMM-GUEST-READY"), "{log}");
    // The guest did not come back from `reboot -f`: it reset, and the VMM
    // ended (status 0, checked by the script), saying it was a reset.
    assert_eq!(run.status("VMM-GUEST-RC"), None, "{log}");
    assert!(run.has_line("reboot: Restarting system"), "the guest kernel did not restart\n{log}");
    assert!(run.lines.iter().any(|l| l == "vmm: guest reset"), "{log}");
    assert!(!run.has_line("vmm: guest powered off"), "{log}");
    assert!(run.has_line("BIOS: VMM-GUEST-READY"), "{log}");
    assert!(run.has_line("BIOS: vmm: guest reset"), "{log}");
}
