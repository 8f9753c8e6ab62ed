//! Builds the KVM machine from a `VmConfig`, runs it, and tears it down.
//!
//! Order matters for "nothing half-started": everything that can fail
//! (KVM, memory, kernel, devices, vCPU state) happens before the terminal
//! changes mode and before any thread starts. Once threads run, every exit
//! path goes through `stop_and_join` and the terminal guard.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use block::{BlockBackend, BlockEvent, ErrorAction};
use devices::ide::IdeChannel;
use devices::virtio::block::BlockHandle;
use serde_json::{json, Value};

use devices::legacy::{AcpiPower, EventFdTrigger, Serial, ACPI_PM_LEN, I8042};
use devices::Bus;
use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::{cpuid, layout::*, regs};
use crate::config::{SerialOutput, VmConfig};
use crate::console::{self, Escape, Input, RawStdout, RawTerminal};
use crate::exit::{ExitReason, Shutdown};
use crate::vcpu::{self, Vcpu, VcpuControl};
use crate::qmp::{self, QmpError, Server};
use crate::runstate::RunState;
use crate::{acpi, boot, disks, ide, Error, Result};

/// How long `stop` waits for the vCPUs to acknowledge a pause.
const PAUSE_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long `stop` waits for the drives' requests in flight.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |e| Error::Kvm(what, e)
}

fn evt() -> Result<EventFd> {
    EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Io("eventfd", e))
}

fn check_kvm(kvm: &Kvm) -> Result<()> {
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
        (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
        (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(Error::KvmCapability(name));
        }
    }
    Ok(())
}

fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<()> {
    for (slot, region) in mem.iter().enumerate() {
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mmap owned by `mem`, which outlives
        // the VM (both are dropped together at the end of `run`).
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

fn serial_output(cfg: &SerialOutput) -> Result<Box<dyn Write + Send>> {
    Ok(match cfg {
        SerialOutput::Stdio => Box::new(RawStdout),
        SerialOutput::None => Box::new(std::io::sink()),
        SerialOutput::File(p) => Box::new(File::create(p).map_err(|e| Error::SerialFile(p.clone(), e))?),
    })
}

/// SIGINT, SIGTERM and SIGHUP, blocked in every thread and read from a
/// signalfd by the event loop, so that a signal means an orderly stop.
fn block_exit_signals() -> Result<OwnedFd> {
    // SAFETY: sigset manipulation on a local, zero-initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(Error::Io("pthread_sigmask", std::io::Error::last_os_error()));
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(Error::Io("signalfd", std::io::Error::last_os_error()));
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// The running machine's owner, on the main thread: it handles host
/// signals, guest power events, console input, block-layer events and the
/// QMP socket, and it alone changes the run state.
struct Controller {
    shutdown: Arc<Shutdown>,
    signals: OwnedFd,
    poweroff: EventFd,
    reset: EventFd,
    serial: Arc<Mutex<Serial>>,
    stdin: Option<RawFd>,
    escape: Escape,
    /// Keyboard input the UART's FIFO had no room for yet.
    pending: Vec<u8>,
    /// Block-layer events (I/O errors), readable when `block_evt` is.
    block_evt: EventFd,
    block_rx: mpsc::Receiver<BlockEvent>,
    vcpus: Vec<JoinHandle<()>>,
    control: Arc<VcpuControl>,
    state: RunState,
    qmp: Option<Server>,
    /// Every drive (virtio and IDE), in command-line order.
    drives: Vec<qmp::Drive>,
    virtio: Vec<BlockHandle>,
    ide: Vec<Arc<Mutex<IdeChannel>>>,
    /// Events caused by the command being run, for the QMP server to send
    /// before its reply.
    events: Vec<Value>,
    nodes: qmp::media::Nodes,
}

impl Controller {
    /// QEMU's BLOCK_IO_ERROR: said on stderr; with action stop the VM
    /// pauses in the io-error state until resumed (QMP `cont`).
    fn block_events(&mut self) {
        let _ = self.block_evt.read();
        while let Ok(ev) = self.block_rx.try_recv() {
            match ev {
                BlockEvent::IoError { device, node_name, operation, action, nospace, reason } => {
                    eprintln!("vmm: drive '{device}': {operation} error ({reason}), action {action:?}");
                    let mut data = json!({
                        "device": device,
                        "operation": operation,
                        "action": match action {
                            ErrorAction::Report => "report",
                            ErrorAction::Ignore => "ignore",
                            ErrorAction::Stop => "stop",
                        },
                        "reason": reason,
                    });
                    if let Some(n) = node_name {
                        data["node-name"] = json!(n);
                    }
                    if let Some(n) = nospace {
                        data["nospace"] = json!(n);
                    }
                    // BLOCK_IO_ERROR before STOP, as QEMU sends them.
                    self.event("BLOCK_IO_ERROR", Some(data));
                    if action == ErrorAction::Stop && self.state.is_running() {
                        self.vm_stop(RunState::IoError);
                        eprintln!("vmm: VM paused (io-error)");
                    }
                }
                BlockEvent::TrayMoved { device, tray_open } => {
                    self.event("DEVICE_TRAY_MOVED", Some(json!({"device": device, "id": device, "tray-open": tray_open})));
                }
            }
        }
    }

    /// Every drive's backend, in command-line order.
    fn backends(&self) -> Vec<Arc<BlockBackend>> {
        self.drives.iter().map(|d| d.backend.clone()).collect()
    }

    fn event(&mut self, name: &str, data: Option<Value>) {
        self.events.push(qmp::protocol::event(name, data));
    }

    fn set_state(&mut self, to: RunState) {
        debug_assert!(self.state.can_go(to), "{:?} -> {to:?}", self.state);
        if self.state.can_go(to) {
            self.state = to;
        }
    }

    /// QEMU's vm_stop: a running VM pauses its vCPUs, enters `to` and says
    /// STOP; in any state every drive is then drained and flushed, so that
    /// a stopped VM has nothing in flight and everything written is on
    /// disk.
    fn vm_stop(&mut self, to: RunState) {
        // A vCPU may be waiting in a throttled IDE request: its drive's
        // limits are lifted until the drain is done, as QEMU's drain
        // lifts them, so the vCPU can finish its exit and stop.
        let backends = self.backends();
        let _lifted = BlockBackend::lift_limits(&backends);
        if self.state.is_running() {
            let stuck = self.control.pause(&self.vcpus, PAUSE_LIMIT);
            if stuck > 0 {
                eprintln!(
                    "vmm: {stuck} vCPU(s) did not stop within {} s; they stop when they next leave the guest",
                    PAUSE_LIMIT.as_secs()
                );
            }
            self.set_state(to);
            self.event("STOP", None);
        }
        // virtio-blk takes nothing new from its rings until `cont` (IDE is
        // idle once its vCPUs are parked: its requests are synchronous PIO).
        for h in &self.virtio {
            h.vm_stop();
        }
        let busy = BlockBackend::drain_all_for(&backends, DRAIN_LIMIT);
        for (drive, n) in &busy {
            eprintln!(
                "vmm: drive '{drive}': {n} request(s) still in flight after {} s; stopped without waiting for them",
                DRAIN_LIMIT.as_secs()
            );
        }
        // A drive still busy is not flushed: its storage is what hangs.
        for b in backends.iter().filter(|b| !busy.iter().any(|(n, _)| n == b.name())) {
            if let Err(e) = b.flush_medium() {
                eprintln!("vmm: drive '{}': flush on stop failed: {e}", b.name());
            }
        }
    }

    /// Sends the queued events to the QMP clients and applies what that
    /// changed to the watched fds.
    fn send_events(&mut self, ops: &mut EventOps) {
        let events = std::mem::take(&mut self.events);
        if let Some(q) = &mut self.qmp {
            let ch = q.broadcast_events(&events);
            self.apply(ch, ops);
        }
    }

    fn apply(&mut self, ch: qmp::server::Changes, ops: &mut EventOps) {
        for fd in &ch.added {
            if ops.add(Events::new_raw(*fd, EventSet::IN)).is_err() {
                eprintln!("vmm: qmp: cannot watch client fd {fd}");
            }
        }
        for (fd, want) in &ch.want_write {
            let set = if *want { EventSet::IN | EventSet::OUT } else { EventSet::IN };
            let _ = ops.modify(Events::new_raw(*fd, set));
        }
        for fd in &ch.removed {
            let _ = ops.remove(Events::empty_raw(*fd));
        }
        let Some(q) = &mut self.qmp else { return };
        let listener = q.listener_fd();
        let relisten = q.close(&ch.removed);
        match ch.listen {
            Some(false) => {
                let _ = ops.remove(Events::empty_raw(listener));
            }
            _ if relisten => {
                let _ = ops.add(Events::new_raw(listener, EventSet::IN));
            }
            _ => {}
        }
    }

    fn qmp_ready(&mut self, fd: RawFd, set: EventSet, ops: &mut EventOps) {
        let Some(mut q) = self.qmp.take() else { return };
        let ch = if fd == q.listener_fd() {
            q.accept()
        } else {
            let mut ch = qmp::server::Changes::default();
            if set.contains(EventSet::OUT) {
                ch = ch.merge(q.writable(fd));
            }
            if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP) {
                // Commands run here, with the machine (self) borrowed.
                ch = ch.merge(q.readable(fd, self));
            }
            ch
        };
        self.qmp = Some(q);
        self.apply(ch, ops);
        // Events raised outside a command meanwhile (none today) go out too.
        self.send_events(ops);
    }

    /// The last word to the QMP clients: SHUTDOWN with QEMU's cause.
    fn announce_shutdown(&mut self) {
        let Some(reason) = self.shutdown.reason() else { return };
        self.set_state(RunState::Shutdown);
        let (guest, cause) = reason.qmp_cause();
        if let Some(q) = &mut self.qmp {
            let _ = q.send_event("SHUTDOWN", Some(json!({"guest": guest, "reason": cause})));
        }
    }

    fn feed_serial(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let n = devices::bus::lock(&self.serial).enqueue_input(&self.pending);
        self.pending.drain(..n);
    }

    fn read_stdin(&mut self, fd: RawFd, ops: &mut EventOps) {
        let mut buf = [0u8; 256];
        // SAFETY: reads into a local buffer of the given size.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 || (n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock) {
            // End of input (or a dead terminal): stop watching it.
            let _ = ops.remove(Events::empty_raw(fd));
            self.stdin = None;
            return;
        }
        if n < 0 {
            return;
        }
        match self.escape.feed(&buf[..n as usize]) {
            Input::Quit => self.shutdown.request(ExitReason::Quit),
            Input::Guest(bytes) => {
                self.pending.extend_from_slice(&bytes);
                self.feed_serial();
            }
        }
    }
}

impl qmp::Machine for Controller {
    fn run_state(&self) -> RunState {
        self.state
    }

    fn stop(&mut self) {
        self.vm_stop(RunState::Paused);
    }

    /// QEMU's qmp_cont: every drive's iostatus is reset; a stopped VM
    /// first has its drives retry what a stop policy held (in order), then
    /// its vCPUs run.
    fn cont(&mut self) -> std::result::Result<(), QmpError> {
        if self.state.needs_reset() {
            return Err(QmpError::generic("Resetting the Virtual Machine is required"));
        }
        for d in &self.drives {
            d.backend.iostatus_reset();
        }
        if self.state.is_running() {
            return Ok(());
        }
        for h in &self.virtio {
            h.resume();
        }
        // IDE retries run here, on the control thread: not held by the
        // throttle, which would stall the control socket (they are still
        // accounted).
        {
            let _lifted = BlockBackend::lift_limits(&self.backends());
            for c in &self.ide {
                devices::bus::lock(c).resume();
            }
        }
        self.control.resume();
        self.set_state(RunState::Running);
        self.event("RESUME", None);
        Ok(())
    }

    fn system_reset(&mut self) {
        self.shutdown.request(ExitReason::QmpReset);
    }

    fn quit(&mut self) {
        self.shutdown.request(ExitReason::QmpQuit);
    }

    fn drives(&self) -> Vec<qmp::Drive> {
        self.drives.clone()
    }

    fn nodes(&mut self) -> &mut qmp::media::Nodes {
        &mut self.nodes
    }

    /// The block layer's events of the command just run (tray moves, I/O
    /// errors) are collected first, so that they go out before the reply.
    fn take_events(&mut self) -> Vec<Value> {
        self.block_events();
        std::mem::take(&mut self.events)
    }
}

impl MutEventSubscriber for Controller {
    fn init(&mut self, ops: &mut EventOps) {
        let watched = [
            self.signals.as_raw_fd(),
            self.poweroff.as_raw_fd(),
            self.reset.as_raw_fd(),
            self.shutdown.evt.as_raw_fd(),
            self.block_evt.as_raw_fd(),
        ];
        for fd in watched {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                eprintln!("vmm: event loop: cannot watch fd {fd}: {e:?}");
                self.shutdown.request(ExitReason::GuestCrash(format!("event loop setup failed: {e:?}")));
            }
        }
        if let Some(fd) = self.qmp.as_ref().map(Server::listener_fd) {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                eprintln!("vmm: event loop: cannot watch the QMP socket: {e:?}");
            }
        }
        if let Some(fd) = self.stdin {
            // epoll refuses regular files (stdin redirected from a file):
            // then there is simply no console input.
            if ops.add(Events::new_raw(fd, EventSet::IN)).is_err() {
                self.stdin = None;
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.signals.as_raw_fd() {
            // SAFETY: signalfd_siginfo is plain data; read fills it.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            let n = unsafe { libc::read(fd, (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
            if n == size as isize {
                self.shutdown.request(ExitReason::Signal(info.ssi_signo as i32));
            }
        } else if fd == self.poweroff.as_raw_fd() {
            let _ = self.poweroff.read();
            self.shutdown.request(ExitReason::PowerOff);
        } else if fd == self.reset.as_raw_fd() {
            let _ = self.reset.read();
            self.shutdown.request(ExitReason::Reset);
        } else if fd == self.shutdown.evt.as_raw_fd() {
            let _ = self.shutdown.evt.read();
        } else if fd == self.block_evt.as_raw_fd() {
            self.block_events();
            self.send_events(ops);
        } else if Some(fd) == self.stdin {
            self.read_stdin(fd, ops);
        } else if self.qmp.as_ref().is_some_and(|q| fd == q.listener_fd() || q.is_client(fd)) {
            self.qmp_ready(fd, events.event_set(), ops);
        }
    }
}

/// Boots the configured guest and runs it to the end.
pub fn run(cfg: &VmConfig) -> Result<ExitReason> {
    // Before anything can spawn a thread (each inherits the mask) and before
    // the QMP socket exists (a client may signal us as soon as it can
    // connect): a signal from now on is an orderly stop, read by the event
    // loop.
    let signals = block_exit_signals()?;
    let serial_out = serial_output(&cfg.serial)?;
    // Bound first: a bad path is user input, refused before anything else
    // starts; the socket is removed on every way out (Server's Drop).
    let qmp_server = cfg.qmp.as_deref().map(Server::bind).transpose()?;

    let kvm = Kvm::new().map_err(Error::KvmOpen)?;
    check_kvm(&kvm)?;
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_ADDR as usize).map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR).map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.create_irq_chip().map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    // The dummy speaker lets KVM own port 0x61, which Linux polls to
    // calibrate the TSC against PIT channel 2.
    let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
    vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;

    let mem = create_guest_memory(cfg.memory).map_err(|e| Error::GuestMemory(cfg.memory, e))?;
    register_memory(&vm, &mem)?;

    // Devices.
    let shutdown = Arc::new(Shutdown::new().map_err(|e| Error::Io("eventfd", e))?);
    let poweroff = evt()?;
    let reset = evt()?;
    let serial_irq = evt()?;
    vm.register_irqfd(&serial_irq, SERIAL_IRQ).map_err(kvm_err("KVM_IRQFD"))?;
    let serial = Arc::new(Mutex::new(Serial::new(EventFdTrigger(serial_irq), serial_out)));
    let trigger = |e: &EventFd| e.try_clone().map(EventFdTrigger).map_err(|e| Error::Io("eventfd", e));
    let mut pio = Bus::new();
    pio.insert(serial.clone(), u64::from(SERIAL_PORT), 8)?;
    pio.insert(Arc::new(Mutex::new(I8042::new(trigger(&reset)?))), u64::from(I8042_PORT), 5)?;
    pio.insert(
        Arc::new(Mutex::new(AcpiPower::new(trigger(&poweroff)?, trigger(&reset)?))),
        u64::from(ACPI_PM_PORT),
        u64::from(ACPI_PM_LEN),
    )?;
    let ide = ide::create_ide(&kvm, &vm, &mut pio, &cfg.drives)?;
    let pio = Arc::new(pio);
    let disks = disks::create_virtio_disks(&vm, &mem, &cfg.drives)?;
    let mut mmio = Bus::new();
    for d in &disks {
        mmio.insert(d.transport.clone(), d.desc.base, u64::from(d.desc.len))?;
    }
    let mmio = Arc::new(mmio);
    let mut backends: Vec<Arc<BlockBackend>> = disks.iter().map(|d| d.handle.backend().clone()).collect();
    backends.extend(ide.backends.iter().cloned());
    let block_evt = evt()?;
    let (block_tx, block_rx) = mpsc::channel();
    for b in &backends {
        let tx = block_tx.clone();
        let wake = block_evt.try_clone().map_err(|e| Error::Io("eventfd", e))?;
        b.set_event_sink(Some(Box::new(move |ev| {
            let _ = tx.send(ev);
            let _ = wake.write(1);
        })));
    }

    // Guest memory contents and boot state.
    let descs: Vec<acpi::VirtioMmioDesc> = disks.iter().map(|d| d.desc).collect();
    let ide_descs: Vec<acpi::IdeChannelDesc> = ide
        .channels
        .iter()
        .map(|(n, _, _)| {
            let (cmd, ctl, irq) = ide::CHANNELS[*n];
            acpi::IdeChannelDesc { cmd, ctl, irq }
        })
        .collect();
    acpi::create_tables(&mem, cfg.cpus, &descs, &ide_descs)?;
    let entry = boot::load_linux(&mem, cfg.memory, &cfg.kernel, &cfg.kernel_format, cfg.initrd.as_deref(), &cfg.cmdline)?;

    let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let tsc_deadline = kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
    let control = Arc::new(VcpuControl::new(cfg.paused));
    let mut vcpus = Vec::with_capacity(cfg.cpus as usize);
    for id in 0..cfg.cpus {
        let fd = vm.create_vcpu(u64::from(id)).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        let mut c = supported.clone();
        cpuid::patch(&mut c, id, cfg.cpus, tsc_deadline);
        fd.set_cpuid2(&c).map_err(kvm_err("KVM_SET_CPUID2"))?;
        regs::setup_msrs(&fd)?;
        regs::setup_fpu(&fd)?;
        regs::setup_lint(&fd)?;
        if id == 0 {
            regs::setup_regs(&fd, entry.entry)?;
            regs::setup_sregs(&mem, &fd)?;
        }
        vcpus.push(Vcpu { id, fd, pio: pio.clone(), mmio: mmio.clone(), control: control.clone(), shutdown: shutdown.clone() });
    }

    // From here on: terminal, threads. Every path below ends in
    // stop_and_join and drops the terminal guard.
    vcpu::register_kick_handler().map_err(|e| Error::Io("sigaction", std::io::Error::from_raw_os_error(e.errno())))?;
    let interactive = cfg.serial == SerialOutput::Stdio && console::is_tty(0);
    let terminal = if interactive { RawTerminal::enable().ok() } else { None };

    let mut threads = Vec::with_capacity(vcpus.len());
    let mut spawn_error = None;
    for v in vcpus {
        match v.spawn() {
            Ok(t) => threads.push(t),
            Err(e) => {
                spawn_error = Some(Error::Io("spawning a vCPU thread", e));
                break;
            }
        }
    }

    let (result, threads) = match spawn_error {
        Some(e) => (Err(e), threads),
        None => event_loop(Controller {
            shutdown: shutdown.clone(),
            signals,
            poweroff,
            reset,
            serial,
            stdin: (cfg.serial == SerialOutput::Stdio).then_some(0),
            escape: Escape::new(interactive),
            pending: Vec::new(),
            block_evt,
            block_rx,
            vcpus: threads,
            control: control.clone(),
            state: if cfg.paused { RunState::Prelaunch } else { RunState::Running },
            qmp: qmp_server,
            drives: backends
                .iter()
                .map(|b| qmp::Drive {
                    backend: b.clone(),
                    qdev: b.name().to_string(),
                    cache: cfg.drives.iter().find(|d| d.id == b.name()).map(|d| d.cache).unwrap_or_default(),
                })
                .collect(),
            virtio: disks.iter().map(|d| d.handle.clone()).collect(),
            ide: ide.channels.iter().map(|(_, c, _)| c.clone()).collect(),
            events: Vec::new(),
            nodes: Default::default(),
        }),
    };
    // A vCPU may be waiting in a throttled IDE request: its drive's limits
    // are lifted for good, or the join would wait for the throttle.
    for b in &backends {
        b.io_limits_disable();
    }
    control.stop_and_join(threads);
    drop(terminal);
    // The vCPUs are gone: stop the disks' I/O threads (each waits for its
    // requests in flight), then flush what the host still caches, as QEMU
    // does at exit.
    drop(mmio);
    drop(disks);
    if cfg.print_blockstats {
        for l in ide.exit_lines() {
            eprintln!("{l}");
        }
    }
    for (n, c, _) in &ide.channels {
        if devices::bus::lock(c).has_held_command() {
            eprintln!("vmm: ide{n}: 1 request held by a stop policy was dropped at exit");
        }
    }
    drop(pio);
    drop(ide);
    for b in &backends {
        // The guest's own counters, before the flush below adds one.
        if cfg.print_blockstats {
            eprintln!("{}", disks::stats_line(b));
        }
        // An empty CD drive has nothing to flush (QEMU's blk_flush on a
        // drive without a medium does nothing either).
        if !b.is_inserted() {
            continue;
        }
        if let Err(e) = b.flush() {
            eprintln!("vmm: drive '{}': flush at exit failed: {e}", b.name());
        }
    }
    result?;
    Ok(shutdown.reason().unwrap_or(ExitReason::Quit))
}

/// Runs until a shutdown reason is set; hands back the vCPU threads (which
/// the controller needs for pausing) for the caller to stop and join.
fn event_loop(controller: Controller) -> (Result<()>, Vec<JoinHandle<()>>) {
    let shutdown = controller.shutdown.clone();
    let controller = Arc::new(Mutex::new(controller));
    let result = (|| {
        let mut em = EventManager::<Arc<Mutex<Controller>>>::new().map_err(Error::EventManager)?;
        em.add_subscriber(controller.clone());
        while shutdown.reason().is_none() {
            // Poll while keyboard input waits for FIFO room, block otherwise.
            let timeout = if devices::bus::lock(&controller).pending.is_empty() { -1 } else { 10 };
            em.run_with_timeout(timeout).map_err(Error::EventManager)?;
            devices::bus::lock(&controller).feed_serial();
        }
        Ok(())
    })();
    let mut c = devices::bus::lock(&controller);
    c.announce_shutdown();
    let threads = std::mem::take(&mut c.vcpus);
    (result, threads)
}
