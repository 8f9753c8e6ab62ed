//! The i8042 keyboard controller at 0x60-0x64, kept for the one thing a
//! headless guest uses it for: pulsing the CPU reset line (command 0xFE to
//! port 0x64), one of the ways Linux reboots.

use super::EventFdTrigger;
use crate::BusDevice;

pub struct I8042 {
    inner: vm_superio::I8042Device<EventFdTrigger>,
}

impl I8042 {
    /// `reset` is signalled when the guest asks for a CPU reset.
    pub fn new(reset: EventFdTrigger) -> Self {
        I8042 { inner: vm_superio::I8042Device::new(reset) }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (data.len(), offset) {
            (1, 0 | 4) => data[0] = self.inner.read(offset as u8),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (1, 0 | 4) = (data.len(), offset) {
            let _ = self.inner.write(offset as u8, data[0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[test]
    fn command_fe_resets() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(EventFdTrigger(evt.try_clone().unwrap()));
        dev.write(4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn other_ports_read_open_bus() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(EventFdTrigger(evt.try_clone().unwrap()));
        let mut d = [0u8];
        dev.read(2, &mut d);
        assert_eq!(d[0], 0xff);
        dev.write(2, &[0xfe]);
        assert!(evt.read().is_err(), "no reset from a write to another port");
    }
}
