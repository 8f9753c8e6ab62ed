//! ACPI tables for a firmware-less, PCI-less PC. The stock Debian cloud
//! kernel has no MP-table parser and no `virtio_mmio.device=` support, so
//! the MADT is how it finds its CPUs and IOAPIC and the DSDT is how it finds
//! every device; the FADT's PM1 control and reset registers are how it
//! powers off and reboots.
//!
//! The FADT is not hardware-reduced (as QEMU's `pc` machine's, unlike
//! Firecracker's and QEMU microvm's): on a hardware-reduced machine Linux
//! sets up no legacy PIC and does not map ISA IRQs 1:1, and then the IDE
//! channels' fixed IRQs 14 and 15 do not exist for `pata_legacy`
//! (docs/machine.md). The price is a PM1 event and control block
//! (devices::legacy::AcpiPower), a FACS, and an SCI that never fires.
//!
//! Interrupts: ISA IRQs map 1:1 to IOAPIC pins, edge-triggered and active
//! high, which is also what KVM's default GSI routing does; the one
//! interrupt source override is the SCI's (level, active high, as QEMU
//! states it), since ACPI's default for the SCI is level, active low.

use acpi_tables::aml;
use acpi_tables::Aml;
use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use devices::legacy::{PM1_CNT_LEN, PM1_CNT_OFFSET, PM1_EVT_LEN, PM1_EVT_OFFSET, RESET_OFFSET, RESET_VALUE, S5_SLEEP_TYPE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::layout::*;

const OEM_ID: [u8; 6] = *b"RVMMVM";
const OEM_TABLE_ID: [u8; 8] = *b"RVMMTBL0";
const OEM_REVISION: u32 = 1;

/// A virtio-mmio device to describe in the DSDT (LNRO0005).
#[derive(Debug, Clone, Copy)]
pub struct VirtioMmioDesc {
    pub base: u64,
    pub len: u32,
    pub gsi: u32,
}

/// An ISA IDE channel to describe in the DSDT (PNP0600): command block,
/// control port, IRQ.
#[derive(Debug, Clone, Copy)]
pub struct IdeChannelDesc {
    pub cmd: u16,
    pub ctl: u16,
    pub irq: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI tables ({0} bytes) do not fit in their {ACPI_MAX:#x}-byte area")]
    TooBig(usize),
    #[error("writing ACPI tables to guest memory: {0}")]
    Memory(vm_memory::GuestMemoryError),
}

fn bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

fn io_gas(port: u16) -> GAS {
    GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, u64::from(port))
}

fn fadt(dsdt_addr: u64, facs_addr: u32) -> Vec<u8> {
    // No fixed-hardware power or sleep button: the PM1 block has no events.
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .firmware_ctrl_32(facs_addr)
        .dsdt_64(dsdt_addr);
    // No CMOS RTC (Linux would otherwise probe ports 0x70/0x71 for seconds;
    // the wall clock comes from kvmclock) and no VGA. The i8042 is left
    // unannounced on purpose: then Linux skips a one-second keyboard probe,
    // and its reboot path still pulses the reset line through port 0x64.
    f.iapc_boot_arch = (IAPC_NO_VGA | IAPC_NO_CMOS_RTC).into();
    // The SMI command port stays 0: the machine is always in ACPI mode, so
    // ACPICA never tries to switch it. No PM timer and no GPE blocks, both
    // optional; the 32-bit block fields are enough, ACPICA fills the
    // 64-bit ones from them.
    f.sci_int = SCI_IRQ.into();
    f.pm1a_evt_blk = u32::from(ACPI_PM_PORT + PM1_EVT_OFFSET).into();
    f.pm1_evt_len = PM1_EVT_LEN;
    f.pm1a_cnt_blk = u32::from(ACPI_PM_PORT + PM1_CNT_OFFSET).into();
    f.pm1_cnt_len = PM1_CNT_LEN;
    f.reset_reg = io_gas(ACPI_PM_PORT + RESET_OFFSET);
    f.reset_value = RESET_VALUE;
    bytes(&f.finalize())
}

const IAPC_NO_VGA: u16 = 1 << 2;
const IAPC_NO_CMOS_RTC: u16 = 1 << 5;

const MADT_PCAT_COMPAT: u32 = 1;

/// Built by hand on `Sdt` because acpi_tables' MADT type has no NMI entry
/// and cannot set PCAT_COMPAT (we do have the 8259 pair, in KVM).
fn madt(cpus: u8) -> Vec<u8> {
    let mut t = Sdt::new(*b"APIC", 44, 3, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    t.write_u32(36, LAPIC_ADDR as u32);
    t.write_u32(40, MADT_PCAT_COMPAT);
    for id in 0..cpus {
        // Processor Local APIC: uid = APIC id = index, enabled.
        t.append_slice(&[0, 8, id, id, 1, 0, 0, 0]);
    }
    // I/O APIC 0 at its usual address, GSI base 0.
    let mut ioapic = vec![1, 12, 0, 0];
    ioapic.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    ioapic.extend_from_slice(&0u32.to_le_bytes());
    t.append_slice(&ioapic);
    // Interrupt source override: ISA IRQ 9 (the SCI) is GSI 9, level,
    // active high (flags: polarity 01, trigger mode 11).
    let mut iso = vec![2, 10, 0, SCI_IRQ as u8];
    iso.extend_from_slice(&u32::from(SCI_IRQ).to_le_bytes());
    iso.extend_from_slice(&0x000du16.to_le_bytes());
    t.append_slice(&iso);
    // Local APIC NMI on LINT1 for all processors.
    t.append_slice(&[4, 6, 0xff, 0, 0, 1]);
    t.update_checksum();
    t.as_slice().to_vec()
}

fn dsdt(virtio: &[VirtioMmioDesc], ide: &[IdeChannelDesc]) -> Vec<u8> {
    let mut body: Vec<u8> = Vec::new();

    let com1_io = aml::IO::new(SERIAL_PORT, SERIAL_PORT, 1, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, SERIAL_IRQ);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let com1_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let com1_crs = aml::Name::new("_CRS".into(), &com1_crs);
    let com1 = aml::Device::new("COM1".into(), vec![&com1_hid, &com1_uid, &com1_crs]);

    // virtio-mmio slots: edge-triggered, so irqfd needs no resample fd.
    let names: Vec<String> = (0..virtio.len()).map(|i| format!("V{i:03}")).collect();
    let mems: Vec<aml::Memory32Fixed> = virtio.iter().map(|d| aml::Memory32Fixed::new(true, d.base as u32, d.len)).collect();
    let irqs: Vec<aml::Interrupt> = virtio.iter().map(|d| aml::Interrupt::new(true, true, false, false, d.gsi)).collect();
    let templates: Vec<aml::ResourceTemplate> =
        mems.iter().zip(irqs.iter()).map(|(m, i)| aml::ResourceTemplate::new(vec![m, i])).collect();
    let uids: Vec<u32> = (0..virtio.len() as u32).collect();
    let hid = aml::Name::new("_HID".into(), &"LNRO0005");
    let cca = aml::Name::new("_CCA".into(), &aml::ONE);
    let uid_names: Vec<aml::Name> = uids.iter().map(|u| aml::Name::new("_UID".into(), u)).collect();
    let crs_names: Vec<aml::Name> = templates.iter().map(|t| aml::Name::new("_CRS".into(), t)).collect();
    let devs: Vec<aml::Device> = names
        .iter()
        .enumerate()
        .map(|(i, n)| aml::Device::new(n.as_str().into(), vec![&hid, &uid_names[i], &cca, &crs_names[i]]))
        .collect();

    // ISA IDE channels, as a PC whose IDE is not on PCI lists them. Linux
    // binds no driver to PNP0600 (pata_legacy probes the fixed ports), but
    // the guest can see there which channels exist before it probes them
    // (resources/guest-init.sh does).
    let ide_names: Vec<String> = (0..ide.len()).map(|i| format!("IDE{i}")).collect();
    let ide_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0600"));
    let ide_cmd: Vec<aml::IO> = ide.iter().map(|c| aml::IO::new(c.cmd, c.cmd, 1, 8)).collect();
    let ide_ctl: Vec<aml::IO> = ide.iter().map(|c| aml::IO::new(c.ctl, c.ctl, 1, 1)).collect();
    let ide_irq: Vec<aml::Interrupt> = ide.iter().map(|c| aml::Interrupt::new(true, true, false, false, c.irq)).collect();
    let ide_crs: Vec<aml::ResourceTemplate> =
        (0..ide.len()).map(|i| aml::ResourceTemplate::new(vec![&ide_cmd[i], &ide_ctl[i], &ide_irq[i]])).collect();
    let ide_crs_names: Vec<aml::Name> = ide_crs.iter().map(|t| aml::Name::new("_CRS".into(), t)).collect();
    let ide_uids: Vec<aml::Name> = (0..ide.len() as u32).map(|u| aml::Name::new("_UID".into(), &u)).collect();
    let ide_devs: Vec<aml::Device> = ide_names
        .iter()
        .enumerate()
        .map(|(i, n)| aml::Device::new(n.as_str().into(), vec![&ide_hid, &ide_uids[i], &ide_crs_names[i]]))
        .collect();

    let mut sb_children: Vec<&dyn Aml> = vec![&com1];
    for d in devs.iter().chain(ide_devs.iter()) {
        sb_children.push(d);
    }
    aml::Scope::new("\\_SB_".into(), sb_children).to_aml_bytes(&mut body);

    // Soft-off: SLP_TYP for the sleep control register.
    let zero = 0u8;
    let s5 = aml::Package::new(vec![&S5_SLEEP_TYPE, &zero, &zero, &zero]);
    aml::Name::new("_S5_".into(), &s5).to_aml_bytes(&mut body);

    let mut t = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    t.append_slice(&body);
    t.update_checksum();
    t.as_slice().to_vec()
}

fn align16(x: u64) -> u64 {
    (x + 15) & !15
}

/// Writes RSDP, XSDT, FADT, FACS, MADT and DSDT at `ACPI_START`; returns
/// the RSDP's address (also put in boot_params.acpi_rsdp_addr).
pub fn create_tables(
    mem: &GuestMemoryMmap,
    cpus: u8,
    virtio: &[VirtioMmioDesc],
    ide: &[IdeChannelDesc],
) -> Result<u64, AcpiError> {
    let rsdp_addr = ACPI_START;
    let xsdt_addr = align16(rsdp_addr + Rsdp::len() as u64);
    // XSDT with two entries: header 36 + 2 * 8.
    let fadt_addr = align16(xsdt_addr + 36 + 16);
    // The FACS must be 64-byte aligned.
    let facs_addr = (fadt_addr + acpi_tables::fadt::FADT::len() as u64 + 63) & !63;
    let dsdt_bytes = dsdt(virtio, ide);
    let madt_bytes = madt(cpus);
    let dsdt_addr = align16(facs_addr + FACS::len() as u64);
    let madt_addr = align16(dsdt_addr + dsdt_bytes.len() as u64);
    let end = madt_addr + madt_bytes.len() as u64;
    if end - ACPI_START > ACPI_MAX {
        return Err(AcpiError::TooBig((end - ACPI_START) as usize));
    }
    // ACPI_START + ACPI_MAX is below 1 MiB (checked in layout.rs).
    let fadt_bytes = fadt(dsdt_addr, facs_addr as u32);
    let facs_bytes = bytes(&FACS::new());
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt_bytes = bytes(&xsdt);
    debug_assert_eq!(xsdt_bytes.len(), 52);
    let rsdp = bytes(&Rsdp::new(OEM_ID, xsdt_addr));

    for (addr, data) in [
        (rsdp_addr, &rsdp),
        (xsdt_addr, &xsdt_bytes),
        (fadt_addr, &fadt_bytes),
        (facs_addr, &facs_bytes),
        (dsdt_addr, &dsdt_bytes),
        (madt_addr, &madt_bytes),
    ] {
        mem.write_slice(data, GuestAddress(addr)).map_err(AcpiError::Memory)?;
    }
    Ok(rsdp_addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(t: &[u8]) -> bool {
        t.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    #[test]
    fn tables_have_valid_checksums_and_lengths() {
        for t in [madt(4), dsdt(&[VirtioMmioDesc { base: VIRTIO_MMIO_BASE, len: 0x1000, gsi: 5 }], &[IDE1]), fadt(0x1234, 0x5640)] {
            assert!(checksum_ok(&t), "{:?}", &t[..4]);
            let len = u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as usize;
            assert_eq!(len, t.len());
        }
    }

    #[test]
    fn madt_lists_each_cpu_and_the_ioapic() {
        let t = madt(3);
        assert_eq!(&t[..4], b"APIC");
        let mut off = 44;
        let mut lapics = vec![];
        let mut ioapic = None;
        let mut overrides = vec![];
        while off < t.len() {
            let (ty, len) = (t[off], t[off + 1] as usize);
            match ty {
                0 => lapics.push(t[off + 3]),
                1 => ioapic = Some(u32::from_le_bytes(t[off + 4..off + 8].try_into().unwrap())),
                2 => overrides.push((t[off + 3], t[off + 4], u16::from_le_bytes([t[off + 8], t[off + 9]]))),
                _ => {}
            }
            off += len;
        }
        assert_eq!(off, t.len());
        assert_eq!(lapics, vec![0, 1, 2]);
        assert_eq!(ioapic, Some(IOAPIC_ADDR as u32));
        assert_eq!(overrides, vec![(9, 9, 0x000d)], "only the SCI, level and active high");
    }

    #[test]
    fn fadt_describes_a_pc_with_our_registers() {
        let t = fadt(0xe0100, 0xe00c0);
        assert_eq!(&t[..4], b"FACP");
        let u32_at = |o: usize| u32::from_le_bytes(t[o..o + 4].try_into().unwrap());
        let flags = u32_at(112);
        assert_eq!(flags & (1 << 20), 0, "not hardware-reduced: Linux keeps the ISA IRQs");
        assert_ne!(flags & (1 << 10), 0, "reset register supported");
        assert_eq!(u32_at(36), 0xe00c0, "FIRMWARE_CTRL (FACS)");
        assert_eq!(u16::from_le_bytes([t[46], t[47]]), SCI_IRQ, "SCI_INT");
        assert_eq!(u32_at(48), 0, "no SMI command port: always in ACPI mode");
        assert_eq!(u32_at(56), u32::from(ACPI_PM_PORT), "PM1a_EVT_BLK");
        assert_eq!(u32_at(64), u32::from(ACPI_PM_PORT + 4), "PM1a_CNT_BLK");
        assert_eq!((t[88], t[89]), (4, 2), "PM1_EVT_LEN, PM1_CNT_LEN");
        // Reset register GAS at 116, value at 128.
        assert_eq!(t[116], 1, "system I/O space");
        assert_eq!(u64::from_le_bytes(t[120..128].try_into().unwrap()), u64::from(ACPI_PM_PORT + 6));
        assert_eq!(t[128], RESET_VALUE);
        assert_eq!(u64::from_le_bytes(t[140..148].try_into().unwrap()), 0xe0100, "X_DSDT");
    }

    #[test]
    fn tables_in_memory_chain_from_the_rsdp() {
        let mem = crate::arch::layout::create_guest_memory(64 << 20).unwrap();
        let rsdp = create_tables(&mem, 2, &[], &[]).unwrap();
        let read = |a: u64, n: usize| {
            let mut v = vec![0u8; n];
            mem.read_slice(&mut v, GuestAddress(a)).unwrap();
            v
        };
        let r = read(rsdp, 36);
        assert_eq!(&r[..8], b"RSD PTR ");
        let xsdt = u64::from_le_bytes(r[24..32].try_into().unwrap());
        let x = read(xsdt, 52);
        let fadt_addr = u64::from_le_bytes(x[36..44].try_into().unwrap());
        let f = read(fadt_addr, acpi_tables::fadt::FADT::len());
        assert!(checksum_ok(&f));
        let facs = u64::from(u32::from_le_bytes(f[36..40].try_into().unwrap()));
        assert_eq!(facs % 64, 0, "FACS alignment");
        assert_eq!(&read(facs, 4)[..], b"FACS");
        let dsdt = u64::from_le_bytes(f[140..148].try_into().unwrap());
        assert_eq!(&read(dsdt, 4)[..], b"DSDT");
    }

    #[test]
    fn dsdt_names_serial_s5_and_virtio() {
        let t = dsdt(&[VirtioMmioDesc { base: VIRTIO_MMIO_BASE, len: 0x1000, gsi: 5 }], &[IDE1]);
        let has = |needle: &[u8]| t.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"COM1"));
        assert!(has(b"_S5_"));
        assert!(has(b"LNRO0005"));
        assert!(has(b"V000"));
        assert!(has(b"IDE0"));
        // PNP0600 as an EISA id, then the channel's resources: I/O 0x170
        // length 8, I/O 0x376 length 1, IRQ 15.
        assert!(has(&[0x0c, 0x41, 0xd0, 0x06, 0x00]));
        assert!(has(&[0x47, 1, 0x70, 0x01, 0x70, 0x01, 1, 8]));
        assert!(has(&[0x47, 1, 0x76, 0x03, 0x76, 0x03, 1, 1]));
        assert!(has(&[0x89, 6, 0, 0x03, 1, 15, 0, 0, 0]));
    }

    const IDE1: IdeChannelDesc = IdeChannelDesc { cmd: 0x170, ctl: 0x376, irq: 15 };
}
