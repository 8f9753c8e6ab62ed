//! The PC platform devices a Linux guest needs to boot and stop: the 16550
//! console, the i8042 (for its CPU-reset line) and the ACPI PM1 and reset
//! registers.

mod i8042;
mod power;
mod serial;

pub use i8042::I8042;
pub use power::{
    AcpiPower, ACPI_PM_LEN, PM1_CNT_LEN, PM1_CNT_OFFSET, PM1_EVT_LEN, PM1_EVT_OFFSET, RESET_OFFSET, RESET_VALUE,
    S5_SLEEP_TYPE,
};
pub use serial::Serial;

use vmm_sys_util::eventfd::EventFd;

/// A vm-superio interrupt or notification line backed by an eventfd, which
/// KVM (irqfd) or the VMM's event loop watches.
pub struct EventFdTrigger(pub EventFd);

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

impl EventFdTrigger {
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(EventFdTrigger(self.0.try_clone()?))
    }
}
