//! End-to-end harness: runs a shell scenario that starts our VMM with the
//! real Debian guest and returns what the console printed.
//!
//! Where the host's /dev/kvm is hardware virtualization, the scenario runs
//! directly. Where it is not (our machines: the `kvm_pvm` software
//! hypervisor, on which a stock kernel cannot boot), the scenario runs inside
//! an L1 Linux VM under QEMU TCG that loads kvm-amd and offers a real
//! /dev/kvm; the VMM then boots the L2 guest there. See
//! shared/reference/test-environment.md for the measurements behind this.
//!
//! A scenario sees `$VMM` (our binary), `$IMAGES` (kernel, initramfs, ISO)
//! and a writable `$WORK` directory, and reports with `echo MARKER=...`
//! lines that tests assert on. Tests write their host and guest scripts with
//! [`Script`], which reports and checks the exit status of every command.

pub mod bench;
pub mod cpio;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The guest images, built once per test run by resources/make-images.sh
/// (which reuses its downloads).
pub fn images() -> &'static Path {
    static IMAGES: OnceLock<PathBuf> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let dir = std::env::var_os("VMM_IMAGES")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("resources/out"));
        let status = Command::new("bash")
            .arg(workspace_root().join("resources/make-images.sh"))
            .env("VMM_IMAGES", &dir)
            .status()
            .expect("running resources/make-images.sh");
        assert!(status.success(), "resources/make-images.sh failed");
        dir
    })
}

/// Our VMM, built in release mode: inside L1 every exit costs TCG time, so a
/// debug build would slow the scenarios for nothing.
pub fn vmm_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("VMM_BIN") {
            return PathBuf::from(p);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "-p", "vmm", "--bin", "vmm"])
            .current_dir(workspace_root())
            .status()
            .expect("running cargo build");
        assert!(status.success(), "cargo build --release -p vmm failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        target.join("release/vmm")
    })
}

/// True when /dev/kvm is real hardware virtualization (svm or vmx, and not
/// the kvm_pvm software hypervisor).
pub fn hardware_kvm() -> bool {
    if let Ok(v) = std::env::var("VMM_E2E_MODE") {
        return v == "direct";
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).unwrap_or("");
    let has_vt = flags.split_whitespace().any(|f| f == "svm" || f == "vmx");
    has_vt && !Path::new("/sys/module/kvm_pvm").exists() && Path::new("/dev/kvm").exists()
}

/// What a scenario printed, line by line (console noise included).
pub struct Run {
    pub lines: Vec<String>,
    pub elapsed: Duration,
}

/// A shell line that prints `KEY=<md5 of FILE>`.
pub fn md5_line(key: &str, file: &str) -> String {
    format!("echo {key}=$(md5sum <{file} | cut -c1-32)")
}

impl Run {
    /// The md5 printed under `key`, checked to be one (so that two failed
    /// hashes can never compare equal).
    pub fn md5(&self, key: &str) -> String {
        let v = self.expect_value(key);
        assert!(v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()), "{key}={v} is not an md5\n{}", self.log());
        v
    }

    /// The value of the first `KEY=value` line (or `KEY=value` word).
    ///
    /// A value with a `$` or a backquote in it is skipped: that is a shell
    /// expansion left unexpanded, i.e. the script's own text (should a
    /// console ever echo it), never what the script printed. Markers are
    /// printed with computed values (`KEY=$(...)`, `KEY=$?`) for that reason.
    pub fn value(&self, key: &str) -> Option<String> {
        let prefix = format!("{key}=");
        self.lines.iter().find_map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.strip_prefix(&prefix))
                .find(|v| !v.contains(['$', '`']))
                .map(str::to_string)
        })
    }

    /// The number of the first `KEY=<digits>` word: an exit status the
    /// script printed (`echo KEY=$?`), which its own text cannot fake.
    pub fn status(&self, key: &str) -> Option<i32> {
        let prefix = format!("{key}=");
        self.lines.iter().find_map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.strip_prefix(&prefix))
                .find(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse().ok())
        })
    }

    pub fn has_line(&self, needle: &str) -> bool {
        self.lines.iter().any(|l| l.contains(needle))
    }

    pub fn log(&self) -> String {
        self.lines.join("\n")
    }

    /// `key`'s value, or a failure that shows the whole console log.
    pub fn expect_value(&self, key: &str) -> String {
        self.value(key).unwrap_or_else(|| panic!("no {key}= in the output:\n{}", self.log()))
    }
}

/// What a step's exit status must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    Zero,
    NonZero,
}

struct Step {
    label: String,
    cmd: String,
    want: Want,
}

/// A scenario script (host side) or a guest's `run=` script in which every
/// command's exit status is checked, not only the last one's.
///
/// A step `cmd` becomes `cmd; echo LABEL-RC=$?`; [`Script::check`] then
/// asserts that every step printed its status (so the script got that far)
/// and that the status is 0 for [`ok`](Script::ok) steps and not 0 for
/// [`fails`](Script::fails) steps (a write to a read-only disk). Only a
/// number after `LABEL-RC=` counts (see [`Run::status`]): the script's own
/// text has `$?` there, so only the shell that ran the step can print it.
/// For a pipeline the status is its last command's (`yes | head -c N >f`:
/// head's, which is the one writing the file).
///
/// [`line`](Script::line) adds a line verbatim, with no status of its own:
/// a value report `echo KEY=$(...)` whose value the test asserts, or shell
/// plumbing (`cmd &`, `pid=$!`, a polling loop) whose outcome a later step
/// checks (`wait $pid`).
///
/// Guest scripts are joined with `; ` and travel on the kernel command line
/// inside `run="..."`, itself inside single quotes on the host: they must
/// not contain quotes of either kind.
pub struct Script {
    tag: String,
    guest: bool,
    lines: Vec<String>,
    steps: Vec<Step>,
}

impl Script {
    /// A host script; labels are `TAG-1`, `TAG-2`, ... unless named.
    pub fn host(tag: &str) -> Script {
        Script { tag: tag.into(), guest: false, lines: Vec::new(), steps: Vec::new() }
    }

    /// A guest script (one line, for `vmm_command`'s `guest_run`). Its tag
    /// must differ from the other scripts' of the scenario.
    pub fn guest(tag: &str) -> Script {
        Script { guest: true, ..Script::host(tag) }
    }

    /// A command that must succeed.
    pub fn ok(&mut self, cmd: impl Into<String>) -> &mut Self {
        self.step(None, Want::Zero, cmd.into())
    }

    /// `ok`, with a label that says what the step is (`TAG-LABEL-RC=`).
    pub fn ok_as(&mut self, label: &str, cmd: impl Into<String>) -> &mut Self {
        self.step(Some(label), Want::Zero, cmd.into())
    }

    /// A command that must fail (exit status not 0).
    pub fn fails(&mut self, cmd: impl Into<String>) -> &mut Self {
        self.step(None, Want::NonZero, cmd.into())
    }

    /// `fails`, with a label.
    pub fn fails_as(&mut self, label: &str, cmd: impl Into<String>) -> &mut Self {
        self.step(Some(label), Want::NonZero, cmd.into())
    }

    /// A line without a status check of its own (see the type's doc).
    pub fn line(&mut self, text: impl Into<String>) -> &mut Self {
        let text = text.into();
        self.check_quotes(&text);
        self.lines.push(text);
        self
    }

    /// The key a step's status is printed under: `TAG-LABEL-RC`.
    pub fn status_key(&self, label: &str) -> String {
        format!("{}-{label}-RC", self.tag)
    }

    fn step(&mut self, label: Option<&str>, want: Want, cmd: String) -> &mut Self {
        let label = label.map_or_else(|| (self.steps.len() + 1).to_string(), str::to_string);
        let key = self.status_key(&label);
        assert!(self.steps.iter().all(|s| s.label != label), "two steps labelled {key}");
        self.check_quotes(&cmd);
        self.lines.push(format!("{cmd}; echo {key}=$?"));
        self.steps.push(Step { label, cmd, want });
        self
    }

    fn check_quotes(&self, text: &str) {
        assert!(!self.guest || !text.contains(['"', '\'']), "a guest script cannot hold quotes: {text}");
    }

    /// The script's text.
    pub fn text(&self) -> String {
        self.lines.join(if self.guest { "; " } else { "\n" })
    }

    /// Asserts that every step printed its status and that each is what
    /// the step wants; the failure lists every bad step and the whole log.
    pub fn check(&self, run: &Run) {
        let mut bad = Vec::new();
        for s in &self.steps {
            let key = self.status_key(&s.label);
            match (run.status(&key), s.want) {
                (None, _) => bad.push(format!("{key}: no status (the script stopped before `{}`)", s.cmd)),
                (Some(0), Want::NonZero) => bad.push(format!("{key}: `{}` succeeded, but must fail", s.cmd)),
                (Some(rc), Want::Zero) if rc != 0 => bad.push(format!("{key}: `{}` failed with status {rc}", s.cmd)),
                _ => {}
            }
        }
        assert!(bad.is_empty(), "{}\n--- output:\n{}", bad.join("\n"), run.log());
    }
}

const DONE_MARKER: &str = "E2E-SCENARIO-DONE";

/// Runs `script` and returns its output once it printed the done marker.
/// Fails (with the log) when it does not within `timeout`.
pub fn run_scenario(script: &str, timeout: Duration) -> Run {
    run_scenario_with(script, timeout, &[], &[])
}

/// `run_scenario` for scenarios that need more host programs or files
/// (QEMU and its firmware for side-by-side benchmarks): nested, they are
/// copied into L1 at their host paths; directly, they are already there.
pub fn run_scenario_with(script: &str, timeout: Duration, extra_bins: &[&Path], extra_files: &[&Path]) -> Run {
    let body = format!("{script}\necho {DONE_MARKER}\n");
    if hardware_kvm() {
        run_direct(&body, timeout)
    } else {
        run_nested(&body, timeout, extra_bins, extra_files)
    }
}

/// The median of `v` (the upper one for an even count); None when empty.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied()
}

fn run_direct(body: &str, timeout: Duration) -> Run {
    let work = tempdir("direct");
    let child = Command::new("sh")
        .arg("-c")
        .arg(body)
        .env("VMM", vmm_binary())
        .env("IMAGES", images())
        .env("WORK", &work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning sh");
    let run = collect(child, timeout);
    let _ = std::fs::remove_dir_all(&work);
    run
}

fn tempdir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("vmm-e2e-{}-{tag}-{n}", std::process::id()));
    std::fs::create_dir_all(&d).expect("creating a temp dir");
    d
}

/// The shared libraries `ldd` says a binary needs, as absolute paths.
fn shared_libraries(bin: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(bin).output().expect("running ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect()
}

type Files = Vec<(String, Vec<u8>)>;

fn as_dest(p: &Path) -> String {
    p.to_string_lossy().trim_start_matches('/').to_string()
}

/// Adds `src` to the archive's files at `dest` (once).
fn add_file(files: &mut Files, src: &Path, dest: String) {
    if files.iter().any(|(d, _)| *d == dest) {
        return;
    }
    let data = std::fs::read(src).unwrap_or_else(|e| panic!("reading {}: {e}", src.display()));
    files.push((dest, data));
}

/// Adds the shared libraries of each binary at their host paths.
fn add_libraries(files: &mut Files, bins: &[&Path]) {
    for bin in bins {
        for lib in shared_libraries(bin) {
            add_file(files, &lib, as_dest(&lib));
        }
    }
}

/// A newc archive of `files`, with the directories they need.
fn to_cpio(files: &Files) -> Vec<u8> {
    let mut c = cpio::Cpio::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (name, _) in files {
        let mut p = Path::new(name).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_string_lossy().to_string());
            p = d.parent();
        }
    }
    for d in dirs {
        c.dir(&d).expect("cpio");
    }
    for (name, data) in files {
        c.file(name, data, true).expect("cpio");
    }
    c.finish().expect("cpio")
}

/// An archive with host programs at their host paths and the libraries
/// they link, to append to an initramfs (e.g. fio for a benchmark guest).
pub fn programs_archive(bins: &[&Path]) -> Vec<u8> {
    let mut files = Files::new();
    for b in bins {
        add_file(&mut files, b, as_dest(b));
    }
    add_libraries(&mut files, bins);
    to_cpio(&files)
}

/// The archive appended to the L1 base: /bin/vmm, its libraries at the
/// paths the dynamic loader expects, and /scenario.sh.
fn overlay(body: &str, extra_bins: &[&Path], extra_files: &[&Path]) -> Vec<u8> {
    let mut files = Files::new();
    add_file(&mut files, vmm_binary(), "bin/vmm".into());
    let mut bins = vec![vmm_binary()];
    for b in extra_bins {
        add_file(&mut files, b, as_dest(b));
        bins.push(b);
    }
    add_libraries(&mut files, &bins);
    for f in extra_files {
        add_file(&mut files, f, as_dest(f));
    }
    let script = format!("VMM=/bin/vmm\nIMAGES=/images\nWORK=/tmp/work\nmkdir -p $WORK\n{body}");
    files.push(("scenario.sh".into(), script.into_bytes()));
    to_cpio(&files)
}

/// The QEMU command line of an L1 VM whose init runs `body` (with `$VMM`,
/// `$IMAGES`, `$WORK` set) and powers off. Returns the command and the
/// directory holding its initrd, for the caller to remove.
pub fn l1_command(body: &str) -> (Command, PathBuf) {
    l1_command_with(body, &[], &[])
}

/// `l1_command` with more host programs (and the libraries they link) and
/// files copied into L1 at their host paths, e.g. QEMU for side-by-side
/// benchmarks.
pub fn l1_command_with(body: &str, extra_bins: &[&Path], extra_files: &[&Path]) -> (Command, PathBuf) {
    let work = tempdir("l1");
    let initrd = work.join("l1.cpio");
    let mut archive = std::fs::read(images().join("l1-base.cpio")).expect("reading l1-base.cpio");
    archive.extend_from_slice(&overlay(body, extra_bins, extra_files));
    std::fs::write(&initrd, archive).expect("writing the L1 initrd");
    // One vCPU for tests; benchmarks may ask for more (VMM_L1_CPUS) so that
    // a VMM's I/O thread need not share L1's only CPU with the guest.
    let cpus = std::env::var("VMM_L1_CPUS").ok().filter(|c| c.parse::<u8>().is_ok_and(|n| n > 0)).unwrap_or("1".into());
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg,thread=multi", "-M", "q35", "-cpu", "EPYC", "-smp", &cpus, "-m", "2G"])
        .args(["-display", "none", "-no-reboot", "-nodefaults", "-serial", "stdio"])
        .arg("-kernel")
        .arg(images().join("vmlinuz"))
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"]);
    (cmd, work)
}

fn run_nested(body: &str, timeout: Duration, extra_bins: &[&Path], extra_files: &[&Path]) -> Run {
    let (mut cmd, work) = l1_command_with(body, extra_bins, extra_files);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting qemu-system-x86_64 (apt-get install qemu-system-x86)");
    let run = collect(child, timeout);
    let _ = std::fs::remove_dir_all(&work);
    run
}

/// Reads the child's stdout until the done marker or the deadline; the child
/// is always killed and reaped before returning.
fn collect(mut child: Child, timeout: Duration) -> Run {
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line).trim_end_matches('\r').to_string();
            if tx.send(text).is_err() {
                break;
            }
        }
    });
    let mut stderr = child.stderr.take().expect("piped stderr");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut lines = Vec::new();
    let mut done = false;
    while let Some(left) = timeout.checked_sub(start.elapsed()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let end = line.contains(DONE_MARKER);
                lines.push(line);
                if end {
                    done = true;
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let elapsed = start.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    let stderr = err_reader.join().unwrap_or_default();
    let run = Run { lines, elapsed };
    if !done {
        panic!(
            "scenario did not finish within {timeout:?}; output so far:\n{}\n--- stderr:\n{stderr}",
            run.log()
        );
    }
    run
}

/// A guest command that waits (up to two minutes) until the signal disk
/// `/dev/DEV` has grown to `mib` MiB, the host's go-ahead: QMP scenarios
/// grow it with block_resize between steps.
pub fn signal_wait(dev: &str, mib: u64) -> String {
    let sectors = mib * 2048;
    let size = format!("$(cat /sys/block/{dev}/size)");
    format!("n=0; until [ {size} -ge {sectors} ]; do n=$((n+1)); [ $n -gt 1200 ] && break; sleep 0.1; done; [ {size} -ge {sectors} ]")
}

/// Guest lines that time `cmd` (a checked step labelled `label`) on the
/// guest's own clock and print `LABEL-CS=` centiseconds.
pub fn timed_step(g: &mut Script, label: &str, cmd: &str) {
    g.line("read up idle </proc/uptime; t0=${up%.*}${up#*.}");
    g.ok_as(label, cmd);
    g.line(format!("read up idle </proc/uptime; echo {label}-CS=$(( ${{up%.*}}${{up#*.}} - t0 ))"));
}

/// The usual way to start the demo guest in a scenario: `$VMM` with the
/// Debian kernel and our initramfs, running `run` in the guest.
pub fn vmm_command(extra_args: &str, guest_run: &str) -> String {
    format!(
        "$VMM --kernel $IMAGES/vmlinuz --initrd $IMAGES/initramfs.cpio.gz {extra_args} \
         --cmdline 'console=ttyS0 panic=-1 quiet run=\"{guest_run}\"' </dev/null"
    )
}

/// A scenario whose VMM a host-side QMP client drives (tests/qmp/guest_qmp.py).
/// The script starts the VMM with `--qmp $QMP` in the background and then
/// calls `qmp_bridge`; the client connects to `qmp_path`:
/// - nested, `$QMP` is inside L1 and `qmp_bridge` joins it to L1's second
///   UART, which QEMU offers on the host as the unix socket `qmp_path`;
/// - directly, `$QMP` is `qmp_path` itself and `qmp_bridge` does nothing.
pub struct QmpScenario {
    /// Prints the console (the guest's, through L1 when nested) on stdout.
    pub command: Command,
    pub qmp_path: PathBuf,
    /// Remove when done.
    pub work: PathBuf,
}

/// Builds a `QmpScenario` running `script`; `bridge` is the qmp-bridge
/// binary (`env!("CARGO_BIN_EXE_qmp-bridge")` in a test).
pub fn qmp_scenario(script: &str, bridge: &Path) -> QmpScenario {
    let body = |qmp: &str, bridge_fn: &str| format!("QMP={qmp}\nqmp_bridge() {{\n{bridge_fn}\n}}\n{script}\necho {DONE_MARKER}\n");
    if hardware_kvm() {
        let work = tempdir("qmp-direct");
        let qmp_path = work.join("qmp.sock");
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(body(&qmp_path.to_string_lossy(), ":"))
            .env("VMM", vmm_binary())
            .env("IMAGES", images())
            .env("WORK", &work);
        QmpScenario { command, qmp_path, work }
    } else {
        let bridge_fn = format!("{} /dev/ttyS1 \"$1\" 2>&1 | sed 's/^/L1: /' &", bridge.display());
        let (mut command, work) = l1_command_with(&body("$WORK/qmp.sock", &bridge_fn), &[bridge], &[]);
        let qmp_path = work.join("qmp-bridge.sock");
        command.arg("-serial").arg(format!("unix:{},server=on,wait=off", qmp_path.display()));
        QmpScenario { command, qmp_path, work }
    }
}

/// Runs `cmd` to completion with its output captured, killing it after
/// `timeout` (then the test fails, with what it printed so far), so that a
/// hung VMM or client cannot hang `cargo test`.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning");
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting") {
            break Some(s);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = t_out.join().unwrap_or_default();
    let stderr = t_err.join().unwrap_or_default();
    match status {
        Some(status) => std::process::Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{cmd:?} did not finish within {timeout:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// A Python with the `qemu.qmp` package: `$VMM_PYTHON`, else the venv that
/// resources/install-deps.sh makes (`~/.cache/rvmm/venv`), else `python3`.
/// None when none has it (the QMP tests then say SKIPPED).
pub fn python_with_qemu_qmp() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("VMM_PYTHON") {
        candidates.push(p.into());
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    if let Some(c) = cache {
        candidates.push(c.join("rvmm/venv/bin/python3"));
    }
    candidates.push("python3".into());
    candidates
        .into_iter()
        .find(|p| Command::new(p).args(["-c", "import qemu.qmp"]).output().is_ok_and(|o| o.status.success()))
}

/// The spec tests/qmp/guest_qmp.py reads: the scenario's command, its QMP
/// socket, where the VMM sees the images and the work directory, which
/// scenario to run. JSON written by hand (the values are paths and words).
pub fn qmp_spec(s: &QmpScenario, scenario: &str, timeout: Duration) -> String {
    let q = |v: &str| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
    let argv: Vec<String> =
        std::iter::once(s.command.get_program()).chain(s.command.get_args()).map(|a| q(&a.to_string_lossy())).collect();
    let env: Vec<String> = s
        .command
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}: {}", q(&k.to_string_lossy()), q(&v.to_string_lossy()))))
        .collect();
    let (images, work) = if hardware_kvm() {
        (images().display().to_string(), s.work.display().to_string())
    } else {
        ("/images".to_string(), "/tmp/work".to_string())
    };
    format!(
        "{{\"argv\": [{}], \"env\": {{{}}}, \"qmp\": {}, \"images\": {}, \"stop_iso\": {}, \"scenario\": {}, \"done\": \"{DONE_MARKER}\", \"timeout\": {}}}",
        argv.join(", "),
        env.join(", "),
        q(&s.qmp_path.to_string_lossy()),
        q(&images),
        q(&format!("{work}/stop.iso")),
        q(scenario),
        timeout.as_secs()
    )
}

/// Runs tests/qmp/guest_qmp.py on `scenario`'s spec; returns its console
/// lines as a `Run` (every line it echoed as `CONSOLE: ...`) and its whole
/// output for failure messages. Fails when the host side failed.
pub fn run_qmp_guest(python: &Path, scenario: &QmpScenario, name: &str, timeout: Duration) -> (Run, String) {
    let spec_path = scenario.work.join("spec.json");
    std::fs::write(&spec_path, qmp_spec(scenario, name, timeout)).expect("writing the spec");
    let mut cmd = Command::new(python);
    cmd.arg(workspace_root().join("tests/qmp/guest_qmp.py")).arg(&spec_path);
    let out = output_within(&mut cmd, timeout + Duration::from_secs(60));
    let _ = std::fs::remove_dir_all(&scenario.work);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let run = Run {
        lines: stdout.lines().filter_map(|l| l.strip_prefix("CONSOLE: ")).map(str::to_string).collect(),
        elapsed: Duration::ZERO,
    };
    let log = format!("{stdout}\n--- stderr:\n{stderr}");
    assert!(out.status.success() && stdout.contains("QMP-GUEST-PASSED"), "the host side failed:\n{log}");
    (run, log)
}
