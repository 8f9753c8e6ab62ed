//! Drives from the command line turned into block backends and virtio-mmio
//! disks: slot i (in command-line order, so vda, vdb, ...) sits at
//! `VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SLOT` with GSI `VIRTIO_GSI_BASE + i`.
//!
//! Everything that can fail on user input (opening images) happens before
//! any thread runs; the error names the drive and the file.

use std::sync::Arc;

use block::BlockBackend;
use devices::virtio::block::{Block, BlockHandle};
use devices::virtio::mmio::MmioTransport;
use devices::virtio::GuestMemory;
use kvm_ioctls::{IoEventAddress, VmFd};
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::acpi::VirtioMmioDesc;
use crate::arch::layout::{VIRTIO_GSI_BASE, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SLOT};
use crate::config::{DriveConfig, Interface};
use crate::{Error, Result};

/// A drive's backend with the options of its `--drive`.
pub fn open_backend(d: &DriveConfig) -> Result<Arc<BlockBackend>> {
    let backend = Arc::new(BlockBackend::new(&d.id));
    backend.set_read_only(d.readonly);
    backend.set_write_cache(d.cache.write_cache());
    backend.set_discard(d.discard);
    backend.set_on_error(d.rerror, d.werror).map_err(|e| Error::Drive(d.id.clone(), e.to_string()))?;
    backend.iostatus_enable();
    // As QEMU's blockdev_init: a group without any limit is no throttling.
    let t = &d.throttling;
    if t.cfg.enabled() {
        backend.set_io_limits(&t.cfg, t.group.as_deref()).map_err(|e| Error::Drive(d.id.clone(), e))?;
    }
    if let Some(path) = &d.file {
        let o = block::image::OpenOptions { format: d.format, read_only: d.readonly, cache: d.cache, snapshot: d.snapshot, no_lock: false };
        let opened = block::image::open(path, &o).map_err(|e| Error::Drive(d.id.clone(), e.to_string()))?;
        if let Some(w) = &opened.warning {
            eprintln!("vmm: warning: drive '{}': {w}", d.id);
        }
        backend.insert_medium(opened.driver, &opened.filename).map_err(|e| Error::Drive(d.id.clone(), e.to_string()))?;
        if !d.inject.is_empty() {
            let inject = backend.injector().ok_or_else(|| Error::Drive(d.id.clone(), "no medium for x-inject".into()))?;
            for r in &d.inject {
                match r {
                    crate::config::InjectRule::Error(rule) => inject.add_rule(rule.clone()),
                    crate::config::InjectRule::Latency(l) => inject.add_latency(l.clone()),
                };
            }
        }
    }
    Ok(backend)
}

pub struct VirtioDisk {
    pub handle: BlockHandle,
    pub transport: Arc<std::sync::Mutex<MmioTransport>>,
    pub desc: VirtioMmioDesc,
}

/// Builds the virtio disks and wires them to KVM: irqfd for the interrupt,
/// ioeventfd for the queue notification.
pub fn create_virtio_disks(vm: &VmFd, mem: &GuestMemory, drives: &[DriveConfig]) -> Result<Vec<VirtioDisk>> {
    let mut disks = Vec::new();
    for (i, d) in drives.iter().filter(|d| d.interface == Interface::Virtio).enumerate() {
        let backend = open_backend(d)?;
        let block = Block::new(backend, d.aio, d.serial.as_deref())?;
        let handle = block.handle();
        let irq = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Io("eventfd", e))?;
        let gsi = VIRTIO_GSI_BASE + i as u32;
        vm.register_irqfd(&irq, gsi).map_err(|e| Error::Kvm("KVM_IRQFD", e))?;
        let transport = MmioTransport::new(Box::new(block), mem.clone(), irq)?;
        let base = VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_SLOT;
        for (q, evt) in transport.queue_notify_eventfds().iter().enumerate() {
            let addr = IoEventAddress::Mmio(base + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY));
            vm.register_ioevent(evt, &addr, q as u32).map_err(|e| Error::Kvm("KVM_IOEVENTFD", e))?;
        }
        disks.push(VirtioDisk {
            handle,
            transport: Arc::new(std::sync::Mutex::new(transport)),
            desc: VirtioMmioDesc { base, len: VIRTIO_MMIO_SLOT as u32, gsi },
        });
    }
    Ok(disks)
}

/// One line per drive with QEMU's blockstats counters, for `--print-blockstats`.
pub fn stats_line(b: &BlockBackend) -> String {
    use block::Op as OpKind;
    let s = b.stats();
    let (r, w, f, d) = (s.get(OpKind::Read), s.get(OpKind::Write), s.get(OpKind::Flush), s.get(OpKind::Discard));
    format!(
        "vmm: blockstats {}: rd_ops={} rd_bytes={} wr_ops={} wr_bytes={} flush_ops={} discard_ops={} discard_bytes={} failed_rd={} failed_wr={}",
        b.name(),
        r.ops,
        r.bytes,
        w.ops,
        w.bytes,
        f.ops,
        d.ops,
        d.bytes,
        r.failed,
        w.failed
    )
}
