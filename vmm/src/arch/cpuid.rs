//! CPUID for each vCPU: what KVM supports, with the APIC IDs and a topology
//! of `n` single-threaded cores in one socket, on Intel and AMD leaves alike,
//! so the guest's SMP and scheduler code see one consistent story.

use kvm_bindings::CpuId;

const HYPERVISOR_BIT: u32 = 1 << 31; // leaf 1 ECX
const HTT_BIT: u32 = 1 << 28; // leaf 1 EDX
const CMP_LEGACY_BIT: u32 = 1 << 1; // leaf 0x8000_0001 ECX
const TSC_DEADLINE_BIT: u32 = 1 << 24; // leaf 1 ECX

/// Bits needed to number `n` things (x2APIC ID shift widths).
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// XSAVE components 0 and 1 (x87, SSE) live in the 576-byte legacy area
/// plus header; the others are described by leaf 0xD subleaves.
const XSAVE_LEGACY_SIZE: u32 = 576;

/// Makes leaf 0xD agree with itself: a component is offered in XCR0 only if
/// its subleaf says where it lives. Nested under TCG, KVM reports AVX in
/// 0xD.0 without a subleaf for it, and Linux then warns "XSAVE consistency
/// problem" at boot.
fn fix_xsave(cpuid: &mut CpuId) {
    let mut described = 0b11u32;
    let mut max_end = XSAVE_LEGACY_SIZE;
    for e in cpuid.as_slice() {
        if e.function == 0xd && (2..32).contains(&e.index) && e.eax != 0 {
            described |= 1 << e.index;
            max_end = max_end.max(e.ebx + e.eax);
        }
    }
    for e in cpuid.as_mut_slice().iter_mut() {
        if e.function == 0xd && e.index == 0 {
            e.eax &= described;
            let mut end = XSAVE_LEGACY_SIZE;
            for other in 2..32 {
                if e.eax & (1 << other) != 0 {
                    end = end.max(max_end);
                }
            }
            e.ecx = end;
        }
    }
}

/// Adjusts `cpuid` (from KVM_GET_SUPPORTED_CPUID) for vCPU `id` of `count`.
///
/// `tsc_deadline`: KVM emulates the local APIC's TSC-deadline timer
/// (KVM_CAP_TSC_DEADLINE_TIMER), which KVM_GET_SUPPORTED_CPUID does not
/// report, so it is offered here as QEMU and Firecracker do. Linux then
/// programs its timer with one MSR write and skips calibrating the APIC
/// timer against the PIT at boot.
pub fn patch(cpuid: &mut CpuId, id: u8, count: u8, tsc_deadline: bool) {
    fix_xsave(cpuid);
    let (id, n) = (u32::from(id), u32::from(count));
    for e in cpuid.as_mut_slice().iter_mut() {
        match e.function {
            0x1 => {
                // Initial APIC ID, logical processor count, CLFLUSH size 8.
                e.ebx = (id << 24) | (n << 16) | (8 << 8);
                e.ecx |= HYPERVISOR_BIT;
                if tsc_deadline {
                    e.ecx |= TSC_DEADLINE_BIT;
                }
                if n > 1 {
                    e.edx |= HTT_BIT;
                } else {
                    e.edx &= !HTT_BIT;
                }
            }
            0x4 => {
                // Cores per package - 1 in EAX[31:26]; each cache is per core
                // except the last level, shared by the package.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { n - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | (sharing << 14) | ((n - 1) << 26);
            }
            0xb | 0x1f => {
                e.edx = id;
                match e.index {
                    0 => {
                        // SMT level: one thread per core.
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (1 << 8) | e.index;
                    }
                    1 => {
                        // Core level: all vCPUs in one package.
                        e.eax = id_bits(n);
                        e.ebx = n;
                        e.ecx = (2 << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            0x8000_0001 => {
                if n > 1 {
                    e.ecx |= CMP_LEGACY_BIT;
                } else {
                    e.ecx &= !CMP_LEGACY_BIT;
                }
            }
            0x8000_0008 => {
                // NC = cores - 1, ApicIdCoreIdSize.
                e.ecx = (e.ecx & !0xf0ff) | (id_bits(n) << 12) | (n - 1);
            }
            0x8000_001e => {
                // Extended APIC ID, core ID with one thread per core, node 0.
                e.eax = id;
                e.ebx = id & 0xff;
                e.ecx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 { function, index, ..Default::default() }
    }

    #[test]
    fn apic_ids_and_counts() {
        let mut c = CpuId::from_entries(&[entry(1, 0), entry(0xb, 0), entry(0xb, 1), entry(0x8000_0008, 0), entry(0x8000_001e, 0)]).unwrap();
        patch(&mut c, 3, 4, true);
        let s = c.as_slice();
        assert_ne!(s[0].ecx & TSC_DEADLINE_BIT, 0);
        assert_eq!(s[0].ebx >> 24, 3);
        assert_eq!((s[0].ebx >> 16) & 0xff, 4);
        assert_ne!(s[0].ecx & HYPERVISOR_BIT, 0);
        assert_ne!(s[0].edx & HTT_BIT, 0);
        assert_eq!((s[1].edx, s[1].ebx), (3, 1));
        assert_eq!((s[2].eax, s[2].ebx, s[2].ecx >> 8), (2, 4, 2));
        assert_eq!(s[3].ecx & 0xff, 3);
        assert_eq!(s[4].eax, 3);
    }

    #[test]
    fn xsave_components_need_a_subleaf() {
        let mut d0 = entry(0xd, 0);
        d0.eax = 0b111;
        d0.ecx = 832;
        let mut c = CpuId::from_entries(&[d0]).unwrap();
        fix_xsave(&mut c);
        assert_eq!((c.as_slice()[0].eax, c.as_slice()[0].ecx), (0b11, 576));
        let mut avx = entry(0xd, 2);
        avx.eax = 256;
        avx.ebx = 576;
        let mut c = CpuId::from_entries(&[d0, avx]).unwrap();
        fix_xsave(&mut c);
        assert_eq!((c.as_slice()[0].eax, c.as_slice()[0].ecx), (0b111, 832));
    }

    #[test]
    fn id_widths() {
        assert_eq!([id_bits(1), id_bits(2), id_bits(3), id_bits(4), id_bits(5), id_bits(32)], [0, 1, 2, 2, 3, 5]);
    }
}
