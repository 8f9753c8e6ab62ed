//! x86_64 specifics: where things live in guest physical memory, the boot
//! register state, CPUID.

pub mod cpuid;
pub mod layout;
pub mod regs;
