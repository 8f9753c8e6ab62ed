//! IDE drives from the command line turned into the two ISA IDE channels:
//! primary at 0x1f0-0x1f7 + 0x3f6 on IRQ 14 (`index=0` master, `1` slave),
//! secondary at 0x170-0x177 + 0x376 on IRQ 15 (`index=2`, `3`; `--cdrom` is
//! 2). Linux's `pata_legacy` probes exactly these ports when there is no PCI
//! bus. 0x3f7/0x377 are not claimed (the floppy controller's), and a
//! channel without drives is not mapped at all, so its ports read 0xff and
//! the driver moves on.
//!
//! The interrupt is a level (the channel keeps INTRQ up until the guest
//! reads the status register); KVM's irqfd only pulses, so the channel's
//! callback sets the line with KVM_IRQ_LINE on a duplicate of the VM fd.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use block::BlockBackend;
use devices::ide::{self, IdeChannel};
use devices::{Bus, BusDevice};
use kvm_ioctls::{Kvm, VmFd};

use crate::config::{DriveConfig, Media};
use crate::{disks, Error, Result};

/// (command block base, control port, IRQ) of the primary and secondary
/// channels.
pub const CHANNELS: [(u16, u16, u32); 2] = [(0x1f0, 0x3f6, 14), (0x170, 0x376, 15)];

/// Port-I/O exits of one channel, for `--print-blockstats`: single
/// register accesses (control port included), string (`rep insw/outsw`) exits and the bytes they
/// moved.
#[derive(Default)]
pub struct ExitCounts {
    pub register: AtomicU64,
    pub string: AtomicU64,
    pub string_bytes: AtomicU64,
}

/// The channel as the port bus sees it: counts the exits, then hands them
/// to the channel.
struct Counted {
    dev: Arc<Mutex<dyn BusDevice>>,
    counts: Arc<ExitCounts>,
}

impl Counted {
    fn reg(&self) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
        self.counts.register.fetch_add(1, Ordering::Relaxed);
        devices::bus::lock(&self.dev)
    }

    fn string(&self, bytes: usize) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
        self.counts.string.fetch_add(1, Ordering::Relaxed);
        self.counts.string_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        devices::bus::lock(&self.dev)
    }
}

impl BusDevice for Counted {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.reg().read(offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.reg().write(offset, data);
    }
    fn read_string(&mut self, offset: u64, size: usize, data: &mut [u8]) {
        self.string(data.len()).read_string(offset, size, data);
    }
    fn write_string(&mut self, offset: u64, size: usize, data: &[u8]) {
        self.string(data.len()).write_string(offset, size, data);
    }
}

pub struct IdeBus {
    /// The mapped channels: (channel number, device, exit counters).
    pub channels: Vec<(usize, Arc<Mutex<IdeChannel>>, Arc<ExitCounts>)>,
    /// Every IDE drive's backend, for the event sink and the flush at exit.
    pub backends: Vec<Arc<BlockBackend>>,
}

impl IdeBus {
    /// One line per mapped channel with its port-I/O exit counts.
    pub fn exit_lines(&self) -> Vec<String> {
        self.channels
            .iter()
            .map(|(n, _, c)| {
                format!(
                    "vmm: ide{n} pio exits: register={} string={} string_bytes={}",
                    c.register.load(Ordering::Relaxed),
                    c.string.load(Ordering::Relaxed),
                    c.string_bytes.load(Ordering::Relaxed)
                )
            })
            .collect()
    }
}

/// A second `VmFd` on the same VM (a dup of its fd), owned by the IRQ
/// callbacks, which outlive the borrow of the machine's own.
fn vm_fd_clone(kvm: &Kvm, vm: &VmFd) -> Result<VmFd> {
    // SAFETY: dup of a valid, open fd; the new fd is owned by the VmFd.
    let fd = unsafe { libc::fcntl(vm.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::Io("dup of the VM fd", std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh duplicate of a KVM VM fd, owned by nobody else.
    unsafe { kvm.create_vmfd_from_rawfd(fd) }.map_err(|e| Error::Kvm("VM fd", e))
}

/// Opens the IDE drives and maps their channels on `pio`.
pub fn create_ide(kvm: &Kvm, vm: &VmFd, pio: &mut Bus, drives: &[DriveConfig]) -> Result<IdeBus> {
    let mut bus = IdeBus { channels: Vec::new(), backends: Vec::new() };
    let ide: Vec<&DriveConfig> = drives.iter().filter(|d| d.interface == crate::config::Interface::Ide).collect();
    if ide.is_empty() {
        return Ok(bus);
    }
    let irq_vm = Arc::new(vm_fd_clone(kvm, vm)?);
    for (n, &(base, ctl, irq)) in CHANNELS.iter().enumerate() {
        let mut slots: [Option<ide::DriveConfig>; 2] = [None, None];
        for d in ide.iter().filter(|d| d.index.map(|i| usize::from(i) / 2) == Some(n)) {
            let backend = disks::open_backend(d)?;
            bus.backends.push(backend.clone());
            let media = match d.media {
                Media::Disk => ide::Media::Disk,
                Media::Cdrom => ide::Media::Cdrom,
            };
            let serial = d.serial.clone().unwrap_or_else(|| format!("QM0000{}", usize::from(d.index.unwrap_or(0)) + 1));
            slots[usize::from(d.index.unwrap_or(0)) % 2] = Some(ide::DriveConfig { backend, media, serial });
        }
        if slots.iter().all(Option::is_none) {
            continue;
        }
        let line_vm = irq_vm.clone();
        let line = Box::new(move |level: bool| {
            if let Err(e) = line_vm.set_irq_line(irq, level) {
                eprintln!("vmm: KVM_IRQ_LINE {irq}: {e}");
            }
        });
        let [master, slave] = slots;
        let channel = Arc::new(Mutex::new(IdeChannel::new(line, master, slave)?));
        let counts = Arc::new(ExitCounts::default());
        let counted = |dev: Arc<Mutex<dyn BusDevice>>| Arc::new(Mutex::new(Counted { dev, counts: counts.clone() }));
        pio.insert(counted(channel.clone()), u64::from(base), 8)?;
        pio.insert(counted(IdeChannel::control(channel.clone())), u64::from(ctl), 1)?;
        bus.channels.push((n, channel, counts));
    }
    Ok(bus)
}
