//! The 16550 UART at 0x3f8 (vm-superio's model) on the port bus.

use std::io::Write;

use super::EventFdTrigger;
use crate::BusDevice;

type Uart = vm_superio::Serial<EventFdTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>;

pub struct Serial {
    uart: Uart,
}

impl Serial {
    /// `irq` is the interrupt line (an irqfd on GSI 4); `out` receives what
    /// the guest transmits.
    pub fn new(irq: EventFdTrigger, out: Box<dyn Write + Send>) -> Self {
        Serial { uart: vm_superio::Serial::new(irq, out) }
    }

    /// Queues host input for the guest. Returns how many bytes fit: the FIFO
    /// is 64 bytes and the caller keeps the rest for later rather than
    /// dropping keystrokes.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.uart.fifo_capacity());
        if n == 0 {
            return 0;
        }
        self.uart.enqueue_raw_bytes(&bytes[..n]).unwrap_or(0)
    }

    /// Room left in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (data.len(), u8::try_from(offset)) {
            (1, Ok(off)) => data[0] = self.uart.read(off),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (1, Ok(off)) = (data.len(), u8::try_from(offset)) {
            // A failed host write (closed stdout) must not stop the guest.
            let _ = self.uart.write(off, data[0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_and_receives() {
        let sink = Sink::default();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut s = Serial::new(EventFdTrigger(irq.try_clone().unwrap()), Box::new(sink.clone()));
        s.write(0, b"A");
        assert_eq!(&*sink.0.lock().unwrap(), b"A");
        // Enable the received-data interrupt, then feed input.
        s.write(1, &[1]);
        assert_eq!(s.enqueue_input(b"hi"), 2);
        assert_eq!(irq.read().unwrap(), 1);
        let mut d = [0u8];
        s.read(0, &mut d);
        assert_eq!(d[0], b'h');
    }

    #[test]
    fn input_beyond_the_fifo_is_left_to_the_caller() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut s = Serial::new(EventFdTrigger(irq), Box::new(std::io::sink()));
        let big = [b'x'; 100];
        let n = s.enqueue_input(&big);
        assert!(n < 100 && n > 0);
        assert_eq!(s.enqueue_input(&big), 0);
        assert_eq!(s.input_capacity(), 0);
    }

    #[test]
    fn odd_sized_accesses_read_open_bus() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut s = Serial::new(EventFdTrigger(irq), Box::new(std::io::sink()));
        let mut d = [0u8; 2];
        s.read(0, &mut d);
        assert_eq!(d, [0xff, 0xff]);
        s.write(0, &[1, 2]); // ignored, must not panic
    }
}
