//! ACPI tables for a firmware-less, PCI-less, hardware-reduced machine. The
//! stock Debian cloud kernel has no MP-table parser and no
//! `virtio_mmio.device=` support, so the MADT is how it finds its CPUs and
//! IOAPIC and the DSDT is how it finds every device; the FADT's sleep and
//! reset registers are how it powers off and reboots.
//!
//! Interrupts: ISA IRQs map 1:1 to IOAPIC pins, edge-triggered and active
//! high, which is also what KVM's default GSI routing does; so there is no
//! interrupt source override to state (QEMU microvm lists none either).

use acpi_tables::aml;
use acpi_tables::Aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use devices::legacy::{RESET_VALUE, S5_SLEEP_TYPE};
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

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .dsdt_64(dsdt_addr);
    // No CMOS RTC (Linux would otherwise probe ports 0x70/0x71 for seconds;
    // the wall clock comes from kvmclock) and no VGA. The i8042 is left
    // unannounced on purpose: then Linux skips a one-second keyboard probe,
    // and its reboot path still pulses the reset line through port 0x64.
    f.iapc_boot_arch = (IAPC_NO_VGA | IAPC_NO_CMOS_RTC).into();
    f.sleep_control_reg = io_gas(ACPI_PM_PORT);
    f.sleep_status_reg = io_gas(ACPI_PM_PORT + 1);
    f.reset_reg = io_gas(ACPI_PM_PORT + 2);
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
    // Local APIC NMI on LINT1 for all processors.
    t.append_slice(&[4, 6, 0xff, 0, 0, 1]);
    t.update_checksum();
    t.as_slice().to_vec()
}

fn dsdt(virtio: &[VirtioMmioDesc]) -> Vec<u8> {
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

    let mut sb_children: Vec<&dyn Aml> = vec![&com1];
    for d in &devs {
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

/// Writes RSDP, XSDT, FADT, MADT and DSDT at `ACPI_START`; returns the
/// RSDP's address (also put in boot_params.acpi_rsdp_addr).
pub fn create_tables(mem: &GuestMemoryMmap, cpus: u8, virtio: &[VirtioMmioDesc]) -> Result<u64, AcpiError> {
    let rsdp_addr = ACPI_START;
    let xsdt_addr = align16(rsdp_addr + Rsdp::len() as u64);
    // XSDT with two entries: header 36 + 2 * 8.
    let fadt_addr = align16(xsdt_addr + 36 + 16);
    let dsdt_bytes = dsdt(virtio);
    let madt_bytes = madt(cpus);
    let dsdt_addr = align16(fadt_addr + acpi_tables::fadt::FADT::len() as u64);
    let madt_addr = align16(dsdt_addr + dsdt_bytes.len() as u64);
    let end = madt_addr + madt_bytes.len() as u64;
    if end - ACPI_START > ACPI_MAX {
        return Err(AcpiError::TooBig((end - ACPI_START) as usize));
    }
    let fadt_bytes = fadt(dsdt_addr);
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
        for t in [madt(4), dsdt(&[VirtioMmioDesc { base: VIRTIO_MMIO_BASE, len: 0x1000, gsi: 5 }]), fadt(0x1234)] {
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
        while off < t.len() {
            let (ty, len) = (t[off], t[off + 1] as usize);
            match ty {
                0 => lapics.push(t[off + 3]),
                1 => ioapic = Some(u32::from_le_bytes(t[off + 4..off + 8].try_into().unwrap())),
                _ => {}
            }
            off += len;
        }
        assert_eq!(lapics, vec![0, 1, 2]);
        assert_eq!(ioapic, Some(IOAPIC_ADDR as u32));
    }

    #[test]
    fn fadt_points_at_our_registers() {
        let t = fadt(0xe0100);
        assert_eq!(&t[..4], b"FACP");
        let flags = u32::from_le_bytes(t[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0, "hardware reduced");
        // Reset register GAS at 116, value at 128; sleep control at 244.
        assert_eq!(t[116], 1, "system I/O space");
        assert_eq!(u64::from_le_bytes(t[120..128].try_into().unwrap()), u64::from(ACPI_PM_PORT + 2));
        assert_eq!(t[128], RESET_VALUE);
        assert_eq!(u64::from_le_bytes(t[140..148].try_into().unwrap()), 0xe0100, "X_DSDT");
        assert_eq!(u64::from_le_bytes(t[248..256].try_into().unwrap()), u64::from(ACPI_PM_PORT));
    }

    #[test]
    fn dsdt_names_serial_s5_and_virtio() {
        let t = dsdt(&[VirtioMmioDesc { base: VIRTIO_MMIO_BASE, len: 0x1000, gsi: 5 }]);
        let has = |needle: &[u8]| t.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"COM1"));
        assert!(has(b"_S5_"));
        assert!(has(b"LNRO0005"));
        assert!(has(b"V000"));
    }
}
