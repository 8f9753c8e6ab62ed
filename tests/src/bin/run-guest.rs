//! Boots the demo guest with our VMM, interactively: the README's
//! "see it work" command. Arguments after `--` go to the VMM (default: the
//! Debian kernel and our initramfs, which drops to a shell).
//!
//! On a host with hardware KVM this simply runs the VMM. On a host without
//! it (a software /dev/kvm such as kvm_pvm), it runs the VMM inside an L1
//! Linux VM under QEMU TCG with nested KVM, console passed through: type in
//! the guest shell as usual; `poweroff -f` or Ctrl-A x leaves.

use std::process::Command;

fn main() {
    let user_args: Vec<String> = std::env::args().skip(1).collect();
    let images = e2e::images();
    let vmm = e2e::vmm_binary();
    let default_args = vec![
        "--kernel".to_string(),
        "$IMAGES/vmlinuz".into(),
        "--initrd".into(),
        "$IMAGES/initramfs.cpio.gz".into(),
        "--cmdline".into(),
        "console=ttyS0 panic=-1 quiet".into(),
    ];
    let args = if user_args.is_empty() { default_args } else { user_args };
    let status = if e2e::hardware_kvm() {
        let args: Vec<String> = args.iter().map(|a| a.replace("$IMAGES", &images.display().to_string())).collect();
        Command::new(vmm).args(&args).status()
    } else {
        eprintln!("run-guest: /dev/kvm here is not hardware virtualization; running the VMM nested in an L1 VM under QEMU TCG");
        let quoted: Vec<String> = args
            .iter()
            .map(|a| if a.starts_with("$IMAGES") { a.clone() } else { format!("'{}'", a.replace('\'', "'\\''")) })
            .collect();
        let body = format!("$VMM {}\necho \"vmm exited with status $?\"", quoted.join(" "));
        let (mut cmd, work) = e2e::l1_command(&body);
        let s = cmd.status();
        let _ = std::fs::remove_dir_all(work);
        s
    };
    match status {
        Ok(s) => std::process::exit(s.code().unwrap_or(1)),
        Err(e) => {
            eprintln!("run-guest: {e}");
            std::process::exit(1);
        }
    }
}
