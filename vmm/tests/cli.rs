//! Bad input on the host: every case is one line on stderr naming the bad
//! value, exit status 1, nothing on stdout, and the terminal as it was.
//! Plus the orderly-stop path: a paused VM ended by a signal restores the
//! terminal and exits 0.
//!
//! Bad input is caught before /dev/kvm is opened, so those tests run (and
//! must pass) anywhere; an error about /dev/kvm is never what they expect.
//! Tests that need a VM say `SKIPPED: ...` and return when /dev/kvm is not
//! usable here.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vmm-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// A file with a valid bzImage header and a few bytes of "kernel". Enough
/// for the loader; never executed (the tests that use it keep vCPUs paused
/// or fail before they start).
fn fake_bzimage(setup_sects: u8, total: usize) -> PathBuf {
    let mut b = vec![0u8; total];
    b[0x1f1] = setup_sects;
    b[0x1fe] = 0x55;
    b[0x1ff] = 0xaa;
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // protocol 2.15
    b[0x211] = 0x01; // LOADED_HIGH
    b[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    b[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
    let p = tmp(&format!("bzImage-{setup_sects}-{total}"));
    std::fs::write(&p, b).unwrap();
    p
}

struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

fn pty() -> Pty {
    let (mut m, mut s) = (0, 0);
    // SAFETY: openpty fills two descriptors we then own.
    let r = unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(r, 0, "openpty");
    unsafe { Pty { master: OwnedFd::from_raw_fd(m), slave: OwnedFd::from_raw_fd(s) } }
}

fn termios(fd: &OwnedFd) -> Vec<u8> {
    // SAFETY: termios is plain data.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) }, 0);
    let p = &t as *const libc::termios as *const u8;
    unsafe { std::slice::from_raw_parts(p, std::mem::size_of::<libc::termios>()) }.to_vec()
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    terminal_restored: bool,
}

/// Runs the VMM with a pseudo-terminal as stdin (as a user at a shell
/// would), optionally sending `signal` once `ready` returns true.
fn run(args: &[&str], signal: Option<i32>) -> Outcome {
    let pty = pty();
    let before = termios(&pty.slave);
    let stdin = pty.slave.try_clone().unwrap();
    let mut child = Command::new(VMM)
        .args(args)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(sig) = signal {
        // Wait until the VMM has put the terminal in raw mode: then its
        // threads and signal handling are up.
        let start = Instant::now();
        while termios(&pty.slave) == before {
            assert!(start.elapsed() < Duration::from_secs(20), "the VMM never set up the terminal");
            assert!(child.try_wait().unwrap().is_none(), "the VMM exited early: {:?}", child.wait_with_output());
            std::thread::sleep(Duration::from_millis(20));
        }
        unsafe { libc::kill(child.id() as i32, sig) };
    }
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the VMM did not exit within 20 s for {args:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let after = termios(&pty.slave);
    drop(pty.master);
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
        terminal_restored: before == after,
    }
}

/// Exit status 1 with one line on stderr that contains `needle` (which
/// must say what is wrong: never empty), nothing on stdout, the terminal
/// untouched.
fn assert_bad_input(args: &[&str], needle: &str) {
    assert!(!needle.is_empty(), "a bad-input test must say what the error names");
    let o = run(args, None);
    assert_eq!(o.code, Some(1), "{args:?}: status; stderr: {}", o.stderr);
    let lines: Vec<&str> = o.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: want one line, got:\n{}", o.stderr);
    assert!(lines[0].starts_with("vmm: "), "{args:?}: '{}'", lines[0]);
    assert!(lines[0].contains(needle), "{args:?}: '{}' does not name '{needle}'", lines[0]);
    assert!(!lines[0].contains("/dev/kvm"), "{args:?}: a KVM error, not the bad input: '{}'", lines[0]);
    assert!(o.stdout.is_empty(), "{args:?}: stdout: {}", o.stdout);
    assert!(o.terminal_restored, "{args:?}: terminal state changed");
}

fn kernel() -> String {
    fake_bzimage(1, 4096).display().to_string()
}

#[test]
fn missing_kernel_argument() {
    assert_bad_input(&[], "--kernel");
}

#[test]
fn kernel_file_missing() {
    assert_bad_input(&["--kernel", "/nonexistent/vmlinuz"], "/nonexistent/vmlinuz");
}

#[test]
fn kernel_that_is_neither_bzimage_nor_elf() {
    let p = tmp("not-a-kernel");
    std::fs::write(&p, b"#!/bin/sh\necho hello\n").unwrap();
    let s = p.display().to_string();
    assert_bad_input(&["--kernel", &s], &s);
    assert_bad_input(&["--kernel", &s], "not a bzImage or ELF");
}

#[test]
fn truncated_bzimage_fails_at_load_time_cleanly() {
    // The header is valid but claims more setup sectors than the file has:
    // caught by the loader, after KVM objects exist, still one clean line.
    if !kvm_usable("truncated_bzimage_fails_at_load_time_cleanly") {
        return;
    }
    let k = fake_bzimage(40, 2048).display().to_string();
    assert_bad_input(&["--kernel", &k], &format!("cannot load kernel '{k}'"));
}

#[test]
fn memory_zero_and_garbage() {
    let k = kernel();
    assert_bad_input(&["--kernel", &k, "--memory", "0"], "--memory '0'");
    assert_bad_input(&["--kernel", &k, "--memory", "lots"], "'lots'");
    assert_bad_input(&["--kernel", &k, "--memory", "1Q"], "'1Q'");
}

#[test]
fn cpus_out_of_range() {
    let k = kernel();
    assert_bad_input(&["--kernel", &k, "--cpus", "0"], "--cpus '0'");
    assert_bad_input(&["--kernel", &k, "--cpus", "33"], "--cpus '33'");
}

#[test]
fn drive_errors() {
    let k = kernel();
    let img = tmp("disk.img");
    std::fs::write(&img, vec![0u8; 4096]).unwrap();
    let f = img.display().to_string();
    let bad_key = format!("file={f},if=virtio,colour=blue");
    assert_bad_input(&["--kernel", &k, "--drive", &bad_key], "unknown key 'colour'");
    let enospc = format!("file={f},rerror=enospc");
    assert_bad_input(&["--kernel", &k, "--drive", &enospc], "enospc");
    let bad_value = format!("file={f},cache=sometimes");
    assert_bad_input(&["--kernel", &k, "--drive", &bad_value], "sometimes");
    assert_bad_input(&["--kernel", &k, "--drive", "file=/nonexistent/disk.img,if=virtio"], "/nonexistent/disk.img");
    let a = format!("file={f},if=ide,index=1");
    assert_bad_input(&["--kernel", &k, "--drive", &a, "--drive", &a], "index 1 is already in use");
    let cd = format!("file={f},index=2");
    assert_bad_input(&["--kernel", &k, "--drive", &cd, "--cdrom", &f], "index 2");
    // Throttling: QEMU's validity rules with its messages, bad numbers by name.
    let both = format!("file={f},if=virtio,throttling.bps-total=1M,throttling.bps-read=1M");
    assert_bad_input(&["--kernel", &k, "--drive", &both], "total values and read/write values cannot be used at the same time");
    let low = format!("file={f},throttling.iops-total=100,throttling.iops-total-max=10");
    assert_bad_input(&["--kernel", &k, "--drive", &low], "bps_max/iops_max cannot be lower than bps/iops");
    let nan = format!("file={f},throttling.bps-write=fast");
    assert_bad_input(&["--kernel", &k, "--drive", &nan], "throttling.bps-write: invalid value 'fast'");
    let typo = format!("file={f},throttling.bps=1");
    assert_bad_input(&["--kernel", &k, "--drive", &typo], "unknown key 'throttling.bps'");
}

/// qcow2 images a user can get wrong, each one line naming the file, exit
/// 1: a missing backing file, a corrupt header, a backing loop, an image
/// another process writes (QEMU's lock).
#[test]
fn image_errors_name_the_file() {
    if !kvm_usable("image_errors_name_the_file") {
        return;
    }
    if !std::process::Command::new("qemu-img").arg("--version").output().is_ok_and(|o| o.status.success()) {
        println!("SKIPPED: image_errors_name_the_file: qemu-img not found");
        return;
    }
    let k = kernel();
    let d = tmp("images");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let img = |args: &[&str]| {
        let o = std::process::Command::new("qemu-img").args(args).current_dir(&d).output().unwrap();
        assert!(o.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let drive = |name: &str| format!("if=virtio,format=qcow2,file={}", d.join(name).display());
    std::fs::write(d.join("gone.raw"), vec![0u8; 65536]).unwrap();
    img(&["create", "-q", "-f", "qcow2", "-b", "gone.raw", "-F", "raw", "orphan.qcow2"]);
    std::fs::remove_file(d.join("gone.raw")).unwrap();
    assert_bad_input(&["--kernel", &k, "--drive", &drive("orphan.qcow2")], "could not open backing file");
    assert_bad_input(&["--kernel", &k, "--drive", &drive("orphan.qcow2")], "gone.raw");
    let mut bad = b"QFI\xfb".to_vec();
    bad.extend(std::iter::repeat_n(0xffu8, 4092));
    std::fs::write(d.join("bad.qcow2"), &bad).unwrap();
    assert_bad_input(&["--kernel", &k, "--drive", &drive("bad.qcow2")], "bad.qcow2");
    img(&["create", "-q", "-f", "qcow2", "a.qcow2", "1M"]);
    img(&["create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2"]);
    img(&["rebase", "-u", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2"]);
    assert_bad_input(&["--kernel", &k, "--drive", &drive("a.qcow2")], "backing file loop");
    img(&["create", "-q", "-f", "qcow2", "used.qcow2", "1M"]);
    let held = block::image::open(&d.join("used.qcow2"), &block::image::OpenOptions::default()).expect("the first writer");
    assert_bad_input(&["--kernel", &k, "--drive", &drive("used.qcow2")], "Failed to get \"write\" lock");
    drop(held);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn initrd_and_serial_errors() {
    let k = kernel();
    assert_bad_input(&["--kernel", &k, "--initrd", "/nonexistent/initrd"], "/nonexistent/initrd");
    assert_bad_input(&["--kernel", &k, "--serial", "telnet:1"], "telnet:1");
    assert_bad_input(&["--kernel", &k, "--serial", "file:/nonexistent/dir/log"], "/nonexistent/dir/log");
}

/// Whether /dev/kvm opens and answers KVM_GET_API_VERSION with 12, as the
/// VMM needs. When not, says `SKIPPED: <test>: <why>` on stdout (seen with
/// --nocapture) and stderr, for the caller to return.
fn kvm_usable(test: &str) -> bool {
    const KVM_GET_API_VERSION: libc::c_ulong = 0xae00;
    let why = match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Err(e) => format!("/dev/kvm cannot be opened ({e})"),
        // SAFETY: an ioctl without argument on a descriptor we own.
        Ok(f) => match unsafe { libc::ioctl(f.as_raw_fd(), KVM_GET_API_VERSION, 0) } {
            12 => return true,
            -1 => format!("/dev/kvm is not KVM (KVM_GET_API_VERSION: {})", std::io::Error::last_os_error()),
            v => format!("/dev/kvm speaks KVM API {v}, not 12"),
        },
    };
    println!("SKIPPED: {test}: {why}");
    eprintln!("SKIPPED: {test}: {why}");
    false
}

#[test]
fn sigterm_on_a_paused_vm_exits_zero_and_restores_the_terminal() {
    if !kvm_usable("sigterm_on_a_paused_vm_exits_zero_and_restores_the_terminal") {
        return;
    }
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let k = kernel();
        let o = run(&["--kernel", &k, "--paused", "--cpus", "2"], Some(sig));
        assert_eq!(o.code, Some(0), "signal {sig}: {}", o.stderr);
        assert!(o.stderr.contains(&format!("terminating on signal {sig}")), "{}", o.stderr);
        assert!(o.terminal_restored, "signal {sig}: terminal left in raw mode");
    }
}

/// A minimal ELF64 "kernel" whose first instruction is `ud2`. With no
/// usable IDT the #UD escalates to a triple fault.
fn triple_fault_elf() -> PathBuf {
    let mut f = vec![0u8; 0x1002];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // 64-bit
    f[5] = 1; // little endian
    f[6] = 1; // version
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes()); // entry
    f[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
    f[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
    f[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
    f[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
    let ph = 64;
    f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    f[ph + 8..ph + 16].copy_from_slice(&0x1000u64.to_le_bytes()); // offset
    f[ph + 16..ph + 24].copy_from_slice(&0x10_0000u64.to_le_bytes()); // vaddr
    f[ph + 24..ph + 32].copy_from_slice(&0x10_0000u64.to_le_bytes()); // paddr
    f[ph + 32..ph + 40].copy_from_slice(&2u64.to_le_bytes()); // filesz
    f[ph + 40..ph + 48].copy_from_slice(&2u64.to_le_bytes()); // memsz
    f[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes()); // align
    f[0x1000..0x1002].copy_from_slice(&[0x0f, 0x0b]); // ud2
    let p = tmp("triple-fault.elf");
    std::fs::write(&p, f).unwrap();
    p
}

#[test]
fn guest_triple_fault_exits_2_and_prints_registers() {
    if !kvm_usable("guest_triple_fault_exits_2_and_prints_registers") {
        return;
    }
    let k = triple_fault_elf().display().to_string();
    let o = run(&["--kernel", &k, "--serial", "none"], None);
    assert_eq!(o.code, Some(2), "stderr: {}", o.stderr);
    assert!(o.stderr.contains("triple fault"), "{}", o.stderr);
    // The registers show where it died: at the ud2 we loaded.
    assert!(o.stderr.contains("RIP=0x0000000000100000"), "{}", o.stderr);
    assert!(o.stderr.contains("CR0=") && o.stderr.contains("EFER="), "{}", o.stderr);
    assert!(o.terminal_restored);
}
