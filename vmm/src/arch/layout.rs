//! The guest physical address map. Everything the VMM places in guest RAM
//! before the kernel runs sits below 1 MiB, where the boot protocol expects
//! it; devices live in the hole below 4 GiB.
//!
//! ```text
//! 0x0000_0500  GDT            0x0000_9000  PML4, PDPT, PD (identity map, 1 GiB)
//! 0x0000_7000  boot_params    0x0002_0000  kernel command line
//! 0x0000_8ff0  boot stack     0x000e_0000  ACPI tables (RSDP first)
//! 0x0010_0000  kernel         top of low RAM: initrd
//! 0xc000_0000  MMIO hole: virtio-mmio slots, ACPI registers, IOAPIC, LAPIC
//! 0x1_0000_0000 RAM above 4 GiB, if any
//! ```

use vm_memory::{GuestAddress, GuestMemoryMmap};

pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x520;
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
pub const BOOT_STACK: u64 = 0x8ff0;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
pub const CMDLINE_ADDR: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 0x10000;
/// The Extended BIOS Data Area starts here on a PC: usable RAM ends below it.
pub const EBDA_START: u64 = 0x9fc00;
pub const ACPI_START: u64 = 0xe0000;
pub const ACPI_MAX: u64 = 0x10000;
pub const HIMEM_START: u64 = 0x10_0000;
/// Where a real-mode CPU starts after reset (F000:FFF0).
pub const RESET_VECTOR: u64 = 0xffff0;

/// Start of the device hole below 4 GiB; RAM beyond it moves above 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const FOUR_GIB: u64 = 1 << 32;

/// virtio-mmio device slots (one 4 KiB page each), used by later devices.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SLOT: u64 = 0x1000;
/// virtio-mmio slot i raises IOAPIC pin 16 + i: above the ISA IRQs, so no
/// legacy device can collide, and within the IOAPIC's 24 pins for 8 disks.
pub const VIRTIO_GSI_BASE: u32 = 16;

pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// KVM needs three pages for the TSS and one for the identity map, in a
/// place the guest never uses: just below the BIOS area at the top of 4 GiB.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// Port of the ACPI PM1a event and control blocks and the reset register
/// (devices::legacy::AcpiPower; `ACPI_PM_LEN` bytes).
pub const ACPI_PM_PORT: u16 = 0x600;
/// The SCI's ISA IRQ, as on a PC (QEMU's too). Nothing raises it: this
/// machine has no fixed or general-purpose ACPI events.
pub const SCI_IRQ: u16 = 9;

pub const SERIAL_PORT: u16 = 0x3f8;
pub const SERIAL_IRQ: u32 = 4;
pub const I8042_PORT: u16 = 0x60;

// The fixed areas must not overlap; checked when compiling.
const _: () = {
    assert!(PD_ADDR + 0x1000 <= CMDLINE_ADDR);
    assert!(CMDLINE_ADDR + CMDLINE_MAX as u64 <= EBDA_START);
    assert!(ACPI_START + ACPI_MAX <= RESET_VECTOR);
    assert!(VIRTIO_MMIO_BASE + 32 * VIRTIO_MMIO_SLOT <= IOAPIC_ADDR);
    assert!(KVM_IDENTITY_MAP_ADDR > LAPIC_ADDR && KVM_TSS_ADDR + 3 * 0x1000 <= FOUR_GIB);
};

/// The RAM regions for a guest of `size` bytes.
pub fn ram_regions(size: u64) -> Vec<(GuestAddress, usize)> {
    let low = size.min(MMIO_HOLE_START);
    let mut regions = vec![(GuestAddress(0), low as usize)];
    if size > low {
        regions.push((GuestAddress(FOUR_GIB), (size - low) as usize));
    }
    regions
}

/// Huge-page size on x86: guest RAM is aligned to it in host memory.
const HUGE_PAGE: usize = 2 << 20;

/// Anonymous memory of `len` bytes whose host address is 2 MiB aligned and
/// advised for transparent huge pages, so that KVM can map the guest's RAM
/// with 2 MiB pages (host address and guest address congruent modulo
/// 2 MiB; guest RAM regions start on 2 MiB boundaries). With 4 KiB pages
/// every first touch of guest memory is a fault KVM must service, and
/// nested under TCG each costs thousands of instructions: this halved the
/// boot (issue 13; QEMU aligns and advises its RAM the same way). Linux
/// only aligns large anonymous mappings by itself from 6.7 on.
///
/// The mapping is never unmapped: guest RAM lives as long as the VM, which
/// is the process (vm-memory does not own raw mappings, and clones of the
/// guest memory are held by device threads until the end).
fn map_aligned(len: usize) -> std::io::Result<*mut u8> {
    let total = len.checked_add(HUGE_PAGE).ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
    // SAFETY: a fresh private anonymous mapping; no existing memory is
    // touched, and the parts trimmed below are parts of this mapping.
    unsafe {
        let base = libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let start = base as usize;
        let aligned = (start + HUGE_PAGE - 1) & !(HUGE_PAGE - 1);
        if aligned > start {
            libc::munmap(base, aligned - start);
        }
        let end = aligned + len;
        if start + total > end {
            libc::munmap(end as *mut libc::c_void, start + total - end);
        }
        // Advice only: without THP (or with it off) the memory still works.
        libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        Ok(aligned as *mut u8)
    }
}

pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, String> {
    use vm_memory::mmap::MmapRegionBuilder;
    use vm_memory::GuestRegionMmap;
    let mut regions = Vec::new();
    for (gpa, len) in ram_regions(size) {
        let ptr = map_aligned(len).map_err(|e| e.to_string())?;
        // SAFETY: `ptr` starts a live mapping of `len` bytes that nothing
        // else uses and that is never unmapped (see map_aligned).
        let region = unsafe { MmapRegionBuilder::new(len).with_raw_mmap_pointer(ptr) }
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| e.to_string())?;
        regions.push(GuestRegionMmap::new(region, gpa).ok_or_else(|| "guest region overflows".to_string())?);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| e.to_string())
}

/// E820 entry types.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// The E820 map the guest sees: RAM except the legacy BIOS areas (where the
/// ACPI tables are), and the RAM above 4 GiB.
pub fn e820_map(size: u64) -> Vec<(u64, u64, u32)> {
    let low_end = size.min(MMIO_HOLE_START);
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
        (HIMEM_START, low_end - HIMEM_START, E820_RAM),
    ];
    if size > low_end {
        map.push((FOUR_GIB, size - low_end, E820_RAM));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_ram_is_huge_page_aligned_in_host_memory() {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        let mem = create_guest_memory((3u64 << 30) + (6 << 20)).unwrap();
        let mut n = 0;
        for r in mem.iter() {
            assert_eq!(r.as_ptr() as usize % HUGE_PAGE, 0);
            assert_eq!(r.start_addr().0 % HUGE_PAGE as u64, 0);
            n += 1;
        }
        assert_eq!(n, 1 + usize::from((3u64 << 30) + (6 << 20) > MMIO_HOLE_START));
    }

    #[test]
    fn small_guest_has_one_region() {
        assert_eq!(ram_regions(512 << 20), vec![(GuestAddress(0), 512 << 20)]);
        let map = e820_map(512 << 20);
        let ram: u64 = map.iter().filter(|e| e.2 == E820_RAM).map(|e| e.1).sum();
        assert_eq!(ram, (512 << 20) - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn large_guest_skips_the_hole() {
        let size = 4u64 << 30;
        let r = ram_regions(size);
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].0, GuestAddress(FOUR_GIB));
        assert_eq!(r[0].1 as u64 + r[1].1 as u64, size);
        let map = e820_map(size);
        assert!(map.iter().all(|&(a, l, _)| a + l <= MMIO_HOLE_START || a >= FOUR_GIB));
    }
}
