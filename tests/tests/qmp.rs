//! QMP with the reference client: tests/qmp/test_qmp.py drives `vmm
//! --paused` (no guest needs to run, so this runs on the host, nested or
//! not) with the `qemu.qmp` package and with a raw socket.
//!
//! The client comes from `$VMM_PYTHON`, else the venv that
//! resources/install-deps.sh makes (`~/.cache/rvmm/venv`), else `python3`;
//! without `qemu.qmp` in any of them, or without /dev/kvm, the test says
//! SKIPPED and why.

use std::process::Command;
use std::time::Duration;

#[test]
fn qmp_with_qemu_qmp_against_a_paused_vmm() {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("SKIPPED: /dev/kvm cannot be opened here");
        return;
    }
    let Some(python) = e2e::python_with_qemu_qmp() else {
        eprintln!(
            "SKIPPED: no Python with the qemu.qmp package (resources/install-deps.sh installs it)"
        );
        return;
    };
    let work = std::env::temp_dir().join(format!("vmm-qmp-test-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    let script = e2e::workspace_root().join("tests/qmp/test_qmp.py");
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .arg(e2e::vmm_binary())
        .arg(e2e::images().join("vmlinuz"))
        .arg(&work);
    let out = e2e::output_within(&mut cmd, Duration::from_secs(300));
    let _ = std::fs::remove_dir_all(&work);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.lines().any(|l| l.starts_with("QMP-TESTS-PASSED ")),
        "{} {}: {}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}",
        python.display(),
        script.display(),
        out.status
    );
    eprint!("{stdout}");
}
