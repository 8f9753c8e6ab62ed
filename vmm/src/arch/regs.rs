//! The vCPU state the 64-bit Linux boot protocol asks for: long mode with an
//! identity map, flat segments, RSI pointing at boot_params. Only the boot
//! vCPU gets it; the others wait in the in-kernel LAPIC for INIT/SIPI.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::*;

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("KVM vCPU ioctl {0}: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    #[error("writing boot page tables or GDT to guest memory: {0}")]
    Memory(vm_memory::GuestMemoryError),
    #[error("KVM accepted only {0} of {1} boot MSRs")]
    Msrs(usize, usize),
}

type Result<T> = std::result::Result<T, RegsError>;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// A GDT entry from flags, base and limit (the layout the CPU reads).
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// The KVM view of a GDT entry.
fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base,
        // With G set the limit counts 4 KiB pages.
        limit: if g == 1 { (limit_raw << 12) | 0xfff } else { limit_raw },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 0 { 1 } else { 0 },
        padding: 0,
    }
}

/// Writes the GDT and identity-mapping page tables, and sets the segment
/// and control registers for 64-bit entry.
pub fn setup_sregs(mem: &GuestMemoryMmap, vcpu: &VcpuFd) -> Result<()> {
    let gdt = [
        gdt_entry(0, 0, 0),            // null
        gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code
        gdt_entry(0xc093, 0, 0xfffff), // data
        gdt_entry(0x808b, 0, 0xfffff), // TSS
    ];
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + 8 * i as u64)).map_err(RegsError::Memory)?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR)).map_err(RegsError::Memory)?;

    // Identity map of the first 1 GiB with 2 MiB pages: enough for the
    // kernel, boot_params and command line; the kernel builds its own tables.
    mem.write_obj(PDPT_ADDR | 0x03, GuestAddress(PML4_ADDR)).map_err(RegsError::Memory)?;
    mem.write_obj(PD_ADDR | 0x03, GuestAddress(PDPT_ADDR)).map_err(RegsError::Memory)?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(PD_ADDR + i * 8)).map_err(RegsError::Memory)?;
    }

    let mut sregs = vcpu.get_sregs().map_err(|e| RegsError::Kvm("KVM_GET_SREGS", e))?;
    let code = kvm_segment_from_gdt(gdt[1], 1);
    let data = kvm_segment_from_gdt(gdt[2], 2);
    let tss = kvm_segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(|e| RegsError::Kvm("KVM_SET_SREGS", e))
}

/// Entry point, stack and the boot_params pointer the kernel expects in RSI.
pub fn setup_regs(vcpu: &VcpuFd, entry: GuestAddress) -> Result<()> {
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry.raw_value(),
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        rsi: ZERO_PAGE_ADDR,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(|e| RegsError::Kvm("KVM_SET_REGS", e))
}

pub fn setup_fpu(vcpu: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
    vcpu.set_fpu(&fpu).map_err(|e| RegsError::Kvm("KVM_SET_FPU", e))
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;

/// Known-clean values for the MSRs a freshly reset CPU would hold, so that
/// a vCPU never starts with whatever KVM left from creation.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<()> {
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    ]
    .iter()
    .map(|&(index, data)| kvm_msr_entry { index, data, ..Default::default() })
    .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::Msrs(0, entries.len()))?;
    let n = vcpu.set_msrs(&msrs).map_err(|e| RegsError::Kvm("KVM_SET_MSRS", e))?;
    if n != entries.len() {
        return Err(RegsError::Msrs(n, entries.len()));
    }
    Ok(())
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn get_reg(state: &kvm_lapic_state, off: usize) -> u32 {
    let b: Vec<u8> = state.regs[off..off + 4].iter().map(|&c| c as u8).collect();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn set_reg(state: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, byte) in v.to_le_bytes().iter().enumerate() {
        state.regs[off + i] = *byte as _;
    }
}

/// LINT0 as ExtINT (the PIC's line) and LINT1 as NMI, as a PC's firmware
/// leaves them: Linux relies on this during early boot.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<()> {
    let mut lapic = vcpu.get_lapic().map_err(|e| RegsError::Kvm("KVM_GET_LAPIC", e))?;
    let lvt0 = get_reg(&lapic, APIC_LVT0);
    set_reg(&mut lapic, APIC_LVT0, (lvt0 & !0x700) | (APIC_MODE_EXTINT << 8));
    let lvt1 = get_reg(&lapic, APIC_LVT1);
    set_reg(&mut lapic, APIC_LVT1, (lvt1 & !0x700) | (APIC_MODE_NMI << 8));
    vcpu.set_lapic(&lapic).map_err(|e| RegsError::Kvm("KVM_SET_LAPIC", e))
}

/// Registers worth seeing when a guest dies: where it was, which mode, which
/// page tables.
pub fn dump(vcpu: &VcpuFd) -> String {
    let mut s = String::new();
    if let Ok(r) = vcpu.get_regs() {
        s += &format!(
            "RIP={:#018x} RSP={:#018x} RFLAGS={:#x}\nRAX={:#x} RBX={:#x} RCX={:#x} RDX={:#x} RSI={:#x} RDI={:#x}\n",
            r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi
        );
    }
    if let Ok(sr) = vcpu.get_sregs() {
        s += &format!(
            "CR0={:#x} CR2={:#x} CR3={:#x} CR4={:#x} EFER={:#x}\n",
            sr.cr0, sr.cr2, sr.cr3, sr.cr4, sr.efer
        );
        for (name, seg) in [("CS", sr.cs), ("DS", sr.ds), ("SS", sr.ss), ("ES", sr.es), ("FS", sr.fs), ("GS", sr.gs), ("TR", sr.tr)] {
            s += &format!(
                "{name}: sel={:#06x} base={:#x} limit={:#x} type={} l={} db={} present={}\n",
                seg.selector, seg.base, seg.limit, seg.type_, seg.l, seg.db, seg.present
            );
        }
        s += &format!("GDT base={:#x} limit={:#x} IDT base={:#x} limit={:#x}", sr.gdt.base, sr.gdt.limit, sr.idt.base, sr.idt.limit);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let code = kvm_segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!((code.selector, code.l, code.db, code.present, code.s, code.type_), (8, 1, 0, 1, 1, 0xb));
        assert_eq!(code.limit, 0xffff_ffff);
        let data = kvm_segment_from_gdt(gdt_entry(0xc093, 0, 0xfffff), 2);
        assert_eq!((data.selector, data.db, data.l, data.type_), (16, 1, 0, 3));
        let null = kvm_segment_from_gdt(0, 0);
        assert_eq!(null.unusable, 1);
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
    }
}
