//! The stock Debian cloud kernel boots in our VMM: to the initramfs marker,
//! with the vCPUs and memory asked for, and ends the VMM cleanly on
//! power-off and on reboot.

use std::time::Duration;

use e2e::{run_scenario, vmm_command};

const TIMEOUT: Duration = Duration::from_secs(300);

#[test]
fn boots_to_init_and_powers_off() {
    let run = run_scenario(&format!("{}\necho VMM-EXIT=$?", vmm_command("", "true")), TIMEOUT);
    assert!(run.has_line("VMM-GUEST-READY"), "no init marker:\n{}", run.log());
    assert_eq!(run.expect_value("VMM-GUEST-RC"), "0", "{}", run.log());
    assert_eq!(run.expect_value("VMM-EXIT"), "0", "{}", run.log());
    assert!(run.has_line("reboot: Power down") || run.has_line("VMM-EXIT=0"));
}

#[test]
fn two_cpus_come_online() {
    let run = run_scenario(
        &format!("{}\necho VMM-EXIT=$?", vmm_command("--cpus 2", "cat /sys/devices/system/cpu/online")),
        TIMEOUT,
    );
    assert_eq!(run.expect_value("cpus"), "2", "{}", run.log());
    // Both CPUs are online, not merely present.
    assert!(run.lines.iter().any(|l| l.trim() == "0-1"), "cpu/online is not 0-1:\n{}", run.log());
    assert_eq!(run.expect_value("VMM-EXIT"), "0", "{}", run.log());
}

#[test]
fn memory_1g_gives_memtotal_near_1g() {
    let run = run_scenario(&format!("{}\necho VMM-EXIT=$?", vmm_command("--memory 1G", "true")), TIMEOUT);
    let kb: u64 = run.expect_value("mem_kb").parse().expect("mem_kb is a number");
    let want = 1024 * 1024;
    assert!(kb > want * 9 / 10 && kb <= want, "MemTotal {kb} kB is not within 10% of 1 GiB");
    assert_eq!(run.expect_value("VMM-EXIT"), "0", "{}", run.log());
}

#[test]
fn guest_reboot_ends_the_vmm_with_zero() {
    let run = run_scenario(&format!("{}\necho VMM-EXIT=$?", vmm_command("", "reboot -f")), TIMEOUT);
    assert!(run.has_line("VMM-GUEST-READY"), "{}", run.log());
    // The guest did not come back from `reboot -f`: it reset, and the VMM ended.
    assert_eq!(run.value("VMM-GUEST-RC"), None, "{}", run.log());
    assert_eq!(run.expect_value("VMM-EXIT"), "0", "{}", run.log());
}
