//! vCPU threads: each runs KVM_RUN in a loop and routes port and MMIO exits
//! to the buses. Everything else a running guest does (interrupts, timers,
//! APIC, HLT, INIT/SIPI for the APs) stays inside KVM.
//!
//! The main thread controls vCPUs through `VcpuControl`: pause/resume (the
//! `--paused` start now, QMP stop/cont and werror=stop later) and stop.
//! A vCPU blocked in KVM_RUN is kicked out with a signal; the kick is
//! repeated until the vCPU acknowledges, so a signal that lands just before
//! KVM_RUN is entered cannot be lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use devices::Bus;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch::regs;
use crate::exit::{ExitReason, Shutdown};

/// The signal used to kick vCPUs out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the no-op kick handler: the signal only needs to interrupt the
/// ioctl (EINTR), not to do anything.
pub fn register_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    register_signal_handler(kick_signal(), handle_kick)
}

#[derive(Default)]
struct Gate {
    paused: bool,
    stopping: bool,
    /// vCPUs currently waiting at the gate.
    parked: usize,
}

/// Shared between the main thread and every vCPU thread.
#[derive(Default)]
pub struct VcpuControl {
    /// Fast-path flag checked before each KVM_RUN: set when the gate needs
    /// a look (pause or stop requested).
    attention: AtomicBool,
    gate: Mutex<Gate>,
    cv: Condvar,
}

impl VcpuControl {
    pub fn new(paused: bool) -> Self {
        let c = VcpuControl::default();
        if paused {
            c.gate.lock().unwrap_or_else(|e| e.into_inner()).paused = true;
            c.attention.store(true, Ordering::SeqCst);
        }
        c
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits while paused. Returns false when the vCPU must exit.
    /// `on_park` runs once as the vCPU stops, before it is counted parked.
    fn checkpoint(&self, on_park: impl FnOnce()) -> bool {
        if !self.attention.load(Ordering::SeqCst) {
            return true;
        }
        let mut g = self.lock();
        if g.paused && !g.stopping {
            on_park();
            g.parked += 1;
            self.cv.notify_all();
            while g.paused && !g.stopping {
                g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            g.parked -= 1;
        }
        !g.stopping
    }

    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Stops every vCPU at its next checkpoint and waits until all are
    /// parked, kicking those still in the guest. Bounded: after `limit`
    /// it returns the number of vCPUs that have not stopped (they will
    /// park when they next leave KVM_RUN, and run no guest code until a
    /// resume), for the caller to report rather than hang the VMM.
    pub fn pause(&self, threads: &[JoinHandle<()>], limit: Duration) -> usize {
        {
            let mut g = self.lock();
            g.paused = true;
            self.attention.store(true, Ordering::SeqCst);
            if g.parked == threads.len() {
                return 0;
            }
        }
        let deadline = std::time::Instant::now() + limit;
        loop {
            for t in threads.iter().filter(|t| !t.is_finished()) {
                let _ = t.kill(kick_signal());
            }
            let g = self.lock();
            let live = threads.iter().filter(|t| !t.is_finished()).count();
            let (g, _) = self.cv.wait_timeout(g, Duration::from_millis(5)).unwrap_or_else(|e| e.into_inner());
            if g.parked >= live || g.stopping {
                return 0;
            }
            if std::time::Instant::now() >= deadline {
                return live - g.parked;
            }
        }
    }

    pub fn resume(&self) {
        let mut g = self.lock();
        g.paused = false;
        if !g.stopping {
            self.attention.store(false, Ordering::SeqCst);
        }
        self.cv.notify_all();
    }

    /// Makes every vCPU thread return, and joins them.
    pub fn stop_and_join(&self, threads: Vec<JoinHandle<()>>) {
        {
            let mut g = self.lock();
            g.stopping = true;
            self.attention.store(true, Ordering::SeqCst);
            self.cv.notify_all();
        }
        for t in &threads {
            while !t.is_finished() {
                let _ = t.kill(kick_signal());
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        for t in threads {
            let _ = t.join();
        }
    }
}

/// The size of one item of the current port-I/O exit (1, 2 or 4 bytes);
/// the exit's data is `count` such items (`rep ins/outs`).
fn io_size(run: *const kvm_bindings::kvm_run) -> usize {
    // SAFETY: `run` is the vCPU's mapped kvm_run page and the exit is
    // KVM_EXIT_IO, so `io` is the union's live member; the fields are read
    // by value and do not overlap the data area the exit's slice covers.
    let size = unsafe { std::ptr::addr_of!((*run).__bindgen_anon_1.io.size).read() };
    usize::from(size).max(1)
}

pub struct Vcpu {
    pub id: u8,
    pub fd: VcpuFd,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub control: Arc<VcpuControl>,
    pub shutdown: Arc<Shutdown>,
}

impl Vcpu {
    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        block::thread::spawn(format!("vcpu{}", self.id), move || self.run())
    }

    fn crash(&self, what: String) {
        let msg = format!("vCPU {}: {what}\n{}", self.id, regs::dump(&self.fd));
        self.shutdown.request(ExitReason::GuestCrash(msg));
    }

    fn run(mut self) {
        // The kvm_run page stays mapped as long as the vCPU fd: the size of
        // one port access is read from it, since `VcpuExit::IoIn/IoOut` only
        // give the whole string.
        let kvm_run: *const kvm_bindings::kvm_run = self.fd.get_kvm_run();
        // A vCPU stopping for a pause tells KVM (KVM_KVMCLOCK_CTRL), so that
        // the guest's soft-lockup and RCU-stall watchdogs do not count the
        // pause as a hang. EINVAL (the guest has no kvmclock) is fine.
        while self.control.checkpoint(|| {
            let _ = self.fd.kvmclock_ctrl();
        }) {
            match self.fd.run() {
                Ok(exit) => match exit {
                    VcpuExit::IoIn(port, data) => {
                        let size = io_size(kvm_run);
                        let claimed = if data.len() > size {
                            self.pio.read_string(u64::from(port), size, data)
                        } else {
                            self.pio.read(u64::from(port), data)
                        };
                        if !claimed {
                            data.fill(0xff);
                        }
                    }
                    VcpuExit::IoOut(port, data) => {
                        let size = io_size(kvm_run);
                        if data.len() > size {
                            self.pio.write_string(u64::from(port), size, data);
                        } else {
                            self.pio.write(u64::from(port), data);
                        }
                    }
                    VcpuExit::MmioRead(addr, data) => {
                        if !self.mmio.read(addr, data) {
                            data.fill(0xff);
                        }
                    }
                    VcpuExit::MmioWrite(addr, data) => {
                        self.mmio.write(addr, data);
                    }
                    VcpuExit::Hlt => {}
                    VcpuExit::Shutdown => {
                        self.crash("triple fault (KVM_EXIT_SHUTDOWN)".into());
                        return;
                    }
                    VcpuExit::SystemEvent(kind, _) => {
                        let reason = match kind {
                            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                            kvm_bindings::KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                            other => ExitReason::GuestCrash(format!("vCPU {}: system event {other}", self.id)),
                        };
                        self.shutdown.request(reason);
                        return;
                    }
                    VcpuExit::FailEntry(reason, cpu) => {
                        self.crash(format!("KVM_EXIT_FAIL_ENTRY, hardware reason {reason:#x} on host CPU {cpu}"));
                        return;
                    }
                    VcpuExit::InternalError => {
                        self.crash("KVM internal error".into());
                        return;
                    }
                    other => {
                        let what = format!("unexpected exit {other:?}");
                        self.crash(what);
                        return;
                    }
                },
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => {
                    self.crash(format!("KVM_RUN failed: {e}"));
                    return;
                }
            }
        }
    }
}
