//! The fixed ACPI power-management registers of a PC (non-hardware-reduced)
//! machine, as few as Linux needs: the PM1a event block (status, enable),
//! the PM1a control block, and the reset register.
//!
//! Why not hardware-reduced ACPI (sleep control/status registers only, as
//! Firecracker and QEMU microvm do): on a hardware-reduced FADT Linux
//! installs no legacy PIC and maps no ISA IRQ 1:1, so drivers that use the
//! fixed ISA lines (`pata_legacy` on IRQ 14/15) find no IRQ and give up.
//! With a PM1 block the FADT describes a legacy PC, as QEMU's `pc` machine's
//! does, and ISA IRQ n is GSI n.
//!
//! Layout (offsets from the base the VMM chooses):
//! - 0-1 PM1a_STS: write 1 to clear; nothing ever sets a bit, as no event
//!   (power button, timer overflow, wake) exists on this machine.
//! - 2-3 PM1a_EN: read/write, kept so that the guest reads back what it set.
//! - 4-5 PM1a_CNT: SCI_EN reads 1 (the machine is always in ACPI mode; the
//!   FADT has no SMI command port), SLP_TYP in bits 10-12, SLP_EN bit 13.
//!   Linux powers off by writing SLP_TYP (from the DSDT's `_S5`) with SLP_EN.
//! - 6 reset register: the FADT's reset value resets.
//!
//! Any access width is taken byte by byte, as the registers' bits never
//! straddle the byte that holds them; SLP_TYP and SLP_EN share the high byte
//! of PM1a_CNT, so a byte or word write of that byte is one action.

use vm_superio::Trigger;

use super::EventFdTrigger;
use crate::BusDevice;

/// SLP_TYP the DSDT's `_S5` package announces for soft-off.
pub const S5_SLEEP_TYPE: u8 = 5;
/// The value the FADT tells the guest to write to the reset register.
pub const RESET_VALUE: u8 = 0x42;

/// Offsets of the blocks, for the FADT.
pub const PM1_EVT_OFFSET: u16 = 0;
pub const PM1_EVT_LEN: u8 = 4;
pub const PM1_CNT_OFFSET: u16 = 4;
pub const PM1_CNT_LEN: u8 = 2;
pub const RESET_OFFSET: u16 = 6;
/// Bytes of port space the device takes.
pub const ACPI_PM_LEN: u16 = 7;

/// In the high byte of PM1a_CNT: SLP_EN is bit 13, SLP_TYP bits 10-12.
const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;
/// In the low byte of PM1a_CNT.
const SCI_EN: u8 = 1;

pub struct AcpiPower {
    poweroff: EventFdTrigger,
    reset: EventFdTrigger,
    /// PM1a_STS, PM1a_EN, PM1a_CNT, byte by byte.
    regs: [u8; 6],
}

impl AcpiPower {
    pub fn new(poweroff: EventFdTrigger, reset: EventFdTrigger) -> Self {
        AcpiPower { poweroff, reset, regs: [0, 0, 0, 0, SCI_EN, 0] }
    }

    fn read_byte(&self, offset: u64) -> u8 {
        match offset {
            // SLP_EN is write-only and reads 0.
            5 => self.regs[5] & !SLP_EN,
            0..=4 => self.regs[offset as usize],
            _ => 0,
        }
    }

    fn write_byte(&mut self, offset: u64, value: u8) {
        match offset {
            0 | 1 => self.regs[offset as usize] &= !value,
            2 | 3 => self.regs[offset as usize] = value,
            4 => self.regs[4] = value | SCI_EN,
            5 => {
                self.regs[5] = value & !SLP_EN;
                if value & SLP_EN != 0 && (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK == S5_SLEEP_TYPE {
                    let _ = self.poweroff.trigger();
                }
            }
            6 if value == RESET_VALUE => {
                let _ = self.reset.trigger();
            }
            _ => {}
        }
    }
}

impl BusDevice for AcpiPower {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.read_byte(offset.saturating_add(i as u64));
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            self.write_byte(offset.saturating_add(i as u64), *b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn dev() -> (AcpiPower, EventFd, EventFd) {
        let off = EventFd::new(EFD_NONBLOCK).unwrap();
        let rst = EventFd::new(EFD_NONBLOCK).unwrap();
        let d = AcpiPower::new(
            EventFdTrigger(off.try_clone().unwrap()),
            EventFdTrigger(rst.try_clone().unwrap()),
        );
        (d, off, rst)
    }

    fn cnt(slp_typ: u16, slp_en: bool) -> [u8; 2] {
        ((slp_typ << 10) | (u16::from(slp_en) << 13) | 1).to_le_bytes()
    }

    #[test]
    fn s5_with_slp_en_powers_off_as_a_word_or_a_byte() {
        let (mut d, off, rst) = dev();
        d.write(4, &cnt(5, true));
        assert_eq!(off.read().unwrap(), 1);
        d.write(5, &[cnt(5, true)[1]]);
        assert_eq!(off.read().unwrap(), 1);
        assert!(rst.read().is_err());
    }

    #[test]
    fn other_sleep_writes_do_nothing() {
        let (mut d, off, _) = dev();
        d.write(4, &cnt(5, false)); // ACPICA writes SLP_TYP first, then SLP_EN
        d.write(4, &cnt(3, true)); // S3
        assert!(off.read().is_err());
    }

    #[test]
    fn control_reads_sci_en_and_slp_typ_but_never_slp_en() {
        let (mut d, _, _) = dev();
        let mut v = [0u8; 2];
        d.read(4, &mut v);
        assert_eq!(u16::from_le_bytes(v), 1, "SCI_EN: always in ACPI mode");
        d.write(4, &[0, 5 << 2]);
        d.read(4, &mut v);
        assert_eq!(u16::from_le_bytes(v), 1 | (5 << 10), "SCI_EN stays, SLP_TYP reads back");
        d.write(4, &cnt(3, true));
        d.read(4, &mut v);
        assert_eq!(u16::from_le_bytes(v) & (1 << 13), 0);
    }

    #[test]
    fn status_is_write_one_to_clear_and_enable_reads_back() {
        let (mut d, _, _) = dev();
        d.write(2, &0x0121u16.to_le_bytes());
        let mut v = [0u8; 4];
        d.read(0, &mut v);
        assert_eq!(v, [0, 0, 0x21, 0x01]);
        d.regs[0] = 0x31;
        d.write(0, &[0x11, 0]);
        d.read(0, &mut v[..2]);
        assert_eq!(v[..2], [0x20, 0]);
    }

    #[test]
    fn reset_value_resets() {
        let (mut d, _, rst) = dev();
        d.write(6, &[0x41]);
        assert!(rst.read().is_err());
        d.write(6, &[RESET_VALUE]);
        assert_eq!(rst.read().unwrap(), 1);
    }

    #[test]
    fn accesses_past_the_end_are_harmless() {
        let (mut d, off, rst) = dev();
        let mut v = [0xffu8; 8];
        d.read(u64::MAX, &mut v);
        assert_eq!(v, [0; 8]);
        d.write(u64::MAX - 1, &[0xff; 8]);
        d.write(7, &[RESET_VALUE]);
        assert!(off.read().is_err() && rst.read().is_err());
    }
}
