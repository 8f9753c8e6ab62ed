//! Loading the kernel, initrd and command line into guest memory and filling
//! in boot_params (the "zero page") for the 64-bit boot protocol. The image
//! parsing is linux-loader's; what is ours is where things go.

use std::fs::File;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, ReadVolatile};

use crate::arch::layout::*;
use crate::config::KernelFormat;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open '{0}': {1}")]
    Open(String, std::io::Error),
    #[error("cannot load kernel '{0}': {1}")]
    Kernel(String, linux_loader::loader::Error),
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("initrd '{path}' ({size} bytes) does not fit in guest RAM below {limit:#x}; give the guest more --memory")]
    InitrdTooBig { path: String, size: u64, limit: u64 },
    #[error("cannot read initrd '{0}': {1}")]
    Initrd(String, String),
    #[error("writing boot parameters: {0}")]
    BootParams(String),
}

/// Where the boot vCPU starts.
pub struct BootEntry {
    pub entry: GuestAddress,
}

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x100_0000;
/// The 64-bit entry point is this far into the protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const E820_MAX_ENTRIES: usize = 128;

fn open(path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|e| BootError::Open(path.display().to_string(), e))
}

pub fn load_linux(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &Path,
    format: &KernelFormat,
    initrd: Option<&Path>,
    cmdline: &str,
) -> Result<BootEntry, BootError> {
    let mut kfile = open(kernel)?;
    let kname = || kernel.display().to_string();
    let (result, entry) = match format {
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut kfile, Some(GuestAddress(HIMEM_START)))
                .map_err(|e| BootError::Kernel(kname(), e))?;
            let entry = r.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET);
            (r, entry)
        }
        KernelFormat::Elf => {
            let r = Elf::load(mem, None, &mut kfile, Some(GuestAddress(HIMEM_START)))
                .map_err(|e| BootError::Kernel(kname(), e))?;
            let entry = r.kernel_load;
            (r, entry)
        }
    };

    let mut params = boot_params::default();
    if let Some(hdr) = result.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;

    // Command line: the kernel's own limit when the header states one.
    let max = match params.hdr.cmdline_size {
        0 => CMDLINE_MAX,
        n => (n as usize + 1).min(CMDLINE_MAX),
    };
    let mut cl = Cmdline::new(max).map_err(|e| BootError::Cmdline(e.to_string()))?;
    if !cmdline.is_empty() {
        cl.insert_str(cmdline).map_err(|e| BootError::Cmdline(format!("{e} (at most {} bytes)", max - 1)))?;
    }
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cl).map_err(|e| BootError::Cmdline(e.to_string()))?;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline.len() as u32 + 1;

    if let Some(path) = initrd {
        let (addr, size) = load_initrd(mem, mem_size, path, result.kernel_end, params.hdr.initrd_addr_max)?;
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }

    params.acpi_rsdp_addr = ACPI_START;
    let map = e820_map(mem_size);
    if map.len() > E820_MAX_ENTRIES {
        return Err(BootError::BootParams("too many E820 entries".into()));
    }
    for (i, &(addr, size, type_)) in map.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry { addr, size, r#type: type_ };
    }
    params.e820_entries = map.len() as u8;

    write_reset_stub(mem)?;

    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_ADDR)),
        mem,
    )
    .map_err(|e| BootError::BootParams(e.to_string()))?;
    Ok(BootEntry { entry })
}

/// Linux on a hardware-reduced ACPI machine reboots through "EFI" and,
/// with no EFI, falls back to jumping to the BIOS reset vector in real mode
/// (its reboot=bios path). Without firmware that address holds zeros and the
/// guest would spin there forever, so we put what a firmware would do at
/// reset time there: pulse the i8042 reset line, which the VMM turns into a
/// clean exit.
const RESET_STUB: [u8; 7] = [
    0xb0, 0xfe, // mov al, 0xfe
    0xe6, 0x64, // out 0x64, al
    0xf4, // hlt
    0xeb, 0xfd, // jmp hlt
];

fn write_reset_stub(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    use vm_memory::Bytes;
    mem.write_slice(&RESET_STUB, GuestAddress(RESET_VECTOR))
        .map_err(|e| BootError::BootParams(format!("reset vector: {e}")))
}

/// Puts the initrd as high as the low RAM and the kernel's limit allow, as
/// bootloaders do, leaving the space above the kernel free for it to unpack.
fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    path: &Path,
    kernel_end: u64,
    initrd_addr_max: u32,
) -> Result<(u64, u64), BootError> {
    let mut f = open(path)?;
    let name = || path.display().to_string();
    let size = f.metadata().map_err(|e| BootError::Initrd(name(), e.to_string()))?.len();
    let low_end = mem_size.min(MMIO_HOLE_START);
    let limit = match initrd_addr_max {
        0 => low_end,
        m => low_end.min(u64::from(m) + 1),
    };
    let addr = limit
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= kernel_end && a >= HIMEM_START)
        .ok_or(BootError::InitrdTooBig { path: name(), size, limit })?;
    let region = mem
        .find_region(GuestAddress(addr))
        .ok_or(BootError::InitrdTooBig { path: name(), size, limit })?;
    let off = addr - region.start_addr().raw_value();
    let mut slice = region
        .get_slice(vm_memory::MemoryRegionAddress(off), size as usize)
        .map_err(|e| BootError::Initrd(name(), e.to_string()))?;
    f.read_exact_volatile(&mut slice).map_err(|e| BootError::Initrd(name(), e.to_string()))?;
    Ok((addr, size))
}
