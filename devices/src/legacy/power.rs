//! The sleep-control, sleep-status and reset registers that a hardware-reduced
//! ACPI FADT points at. Linux powers off by writing SLP_TYP (from the DSDT's
//! `_S5`) with SLP_EN to the sleep control register, and resets by writing the
//! FADT's reset value to the reset register.
//!
//! Layout (offsets from the base the VMM chooses): 0 sleep control, 1 sleep
//! status, 2 reset.

use vm_superio::Trigger;

use super::EventFdTrigger;
use crate::BusDevice;

/// SLP_TYP the DSDT's `_S5` package announces for soft-off.
pub const S5_SLEEP_TYPE: u8 = 5;
/// The value the FADT tells the guest to write to the reset register.
pub const RESET_VALUE: u8 = 0x42;

const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;

pub struct AcpiPower {
    poweroff: EventFdTrigger,
    reset: EventFdTrigger,
}

impl AcpiPower {
    pub fn new(poweroff: EventFdTrigger, reset: EventFdTrigger) -> Self {
        AcpiPower { poweroff, reset }
    }
}

impl BusDevice for AcpiPower {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: "wake" is never set; the other registers read as 0.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else { return };
        match offset {
            0 if value & SLP_EN != 0 && (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK == S5_SLEEP_TYPE => {
                let _ = self.poweroff.trigger();
            }
            2 if *value == RESET_VALUE => {
                let _ = self.reset.trigger();
            }
            _ => {}
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

    #[test]
    fn s5_with_slp_en_powers_off() {
        let (mut d, off, rst) = dev();
        d.write(0, &[(S5_SLEEP_TYPE << 2) | SLP_EN]);
        assert_eq!(off.read().unwrap(), 1);
        assert!(rst.read().is_err());
    }

    #[test]
    fn other_sleep_writes_do_nothing() {
        let (mut d, off, _) = dev();
        d.write(0, &[S5_SLEEP_TYPE << 2]); // no SLP_EN
        d.write(0, &[(3 << 2) | SLP_EN]); // S3
        d.write(0, &[0x34, 0]); // wrong width
        assert!(off.read().is_err());
    }

    #[test]
    fn reset_value_resets() {
        let (mut d, _, rst) = dev();
        d.write(2, &[0x41]);
        assert!(rst.read().is_err());
        d.write(2, &[RESET_VALUE]);
        assert_eq!(rst.read().unwrap(), 1);
    }
}
