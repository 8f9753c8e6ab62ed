//! An address bus (port I/O or MMIO) that routes guest accesses to devices.
//!
//! Lookups happen on every vCPU exit, so the bus is built once before the
//! vCPUs start and then only read: each device has its own lock and two vCPUs
//! touching different devices never contend.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::{Error, Result};

/// A device on a bus. `offset` is relative to the base the device was
/// inserted at; `data` is the access (1, 2, 4 or 8 bytes).
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
    /// A string read (`rep insw` and friends): `data` holds `data.len() /
    /// size` items of `size` bytes, all from the same port, in order. One
    /// KVM exit brings a whole string, so a device that moves blocks (the
    /// IDE data port) can take it at once; by default each item is one
    /// `read`.
    fn read_string(&mut self, offset: u64, size: usize, data: &mut [u8]) {
        for item in data.chunks_mut(size.max(1)) {
            self.read(offset, item);
        }
    }
    /// A string write (`rep outsw`); see `read_string`.
    fn write_string(&mut self, offset: u64, size: usize, data: &[u8]) {
        for item in data.chunks(size.max(1)) {
            self.write(offset, item);
        }
    }
}

#[derive(Clone)]
struct Entry {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Address ranges mapped to devices.
#[derive(Default, Clone)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `[base, base + len)` to `device`; overlapping ranges are refused.
    pub fn insert(&mut self, device: Arc<Mutex<dyn BusDevice>>, base: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Err(Error::EmptyRange(base));
        }
        let end = base.checked_add(len).ok_or(Error::Overlap { base, len })?;
        if let Some((&b, e)) = self.ranges.range(..end).next_back() {
            if b + e.len > base {
                return Err(Error::Overlap { base, len });
            }
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &Entry)> {
        let (&base, entry) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fall inside the device's range.
        if offset.checked_add(size as u64)? <= entry.len {
            Some((offset, entry))
        } else {
            None
        }
    }

    /// Reads from the device at `addr`. Returns false when nothing claims the
    /// address; the caller then gives the guest all-ones, as an open bus does.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, entry)) => {
                lock(&entry.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes to the device at `addr`. Returns false when nothing claims it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, entry)) => {
                lock(&entry.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

impl Bus {
    /// A string read of items of `size` bytes at `addr` (one KVM exit for
    /// `rep ins`): the device is looked up and locked once for the whole
    /// string. Returns false when nothing claims the address.
    pub fn read_string(&self, addr: u64, size: usize, data: &mut [u8]) -> bool {
        match self.find(addr, size.max(1)) {
            Some((offset, entry)) => {
                lock(&entry.device).read_string(offset, size, data);
                true
            }
            None => false,
        }
    }

    /// A string write (`rep outs`); see `read_string`.
    pub fn write_string(&self, addr: u64, size: usize, data: &[u8]) -> bool {
        match self.find(addr, size.max(1)) {
            Some((offset, entry)) => {
                lock(&entry.device).write_string(offset, size, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device even if another vCPU thread panicked while holding it: a
/// device model's state stays usable and the VMM can still shut down cleanly.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg {
        value: u8,
        last_offset: u64,
    }
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            self.last_offset = offset;
            data.fill(self.value);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_offset = offset;
            self.value = data[0];
        }
    }

    fn reg() -> Arc<Mutex<Reg>> {
        Arc::new(Mutex::new(Reg { value: 7, last_offset: 0 }))
    }

    #[test]
    fn routes_by_range_and_offset() {
        let mut bus = Bus::new();
        let a = reg();
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        let mut d = [0u8; 1];
        assert!(bus.read(0x3fd, &mut d));
        assert_eq!(d[0], 7);
        assert_eq!(a.lock().unwrap().last_offset, 5);
        assert!(bus.write(0x3f8, &[9]));
        assert_eq!(a.lock().unwrap().value, 9);
    }

    #[test]
    fn unclaimed_and_straddling_accesses_are_not_routed() {
        let mut bus = Bus::new();
        bus.insert(reg(), 0x60, 1).unwrap();
        let mut d = [0u8; 1];
        assert!(!bus.read(0x61, &mut d));
        assert!(!bus.read(0x5f, &mut d));
        let mut w = [0u8; 2];
        assert!(!bus.read(0x60, &mut w), "a 2-byte access over a 1-byte device");
        assert!(!bus.read(u64::MAX, &mut w));
    }

    /// Counts accesses and their sizes, as a data port would see them.
    #[derive(Default)]
    struct Port {
        reads: Vec<usize>,
        writes: Vec<usize>,
        next: u16,
    }
    impl BusDevice for Port {
        fn read(&mut self, _: u64, data: &mut [u8]) {
            self.reads.push(data.len());
            data.copy_from_slice(&self.next.to_le_bytes()[..data.len()]);
            self.next += 1;
        }
        fn write(&mut self, _: u64, data: &[u8]) {
            self.writes.push(data.len());
        }
    }

    #[test]
    fn a_string_read_reaches_the_device_item_by_item() {
        // One `rep insw` of a 512-byte sector: 256 word reads, in order.
        let mut bus = Bus::new();
        let port = Arc::new(Mutex::new(Port::default()));
        bus.insert(port.clone(), 0x1f0, 8).unwrap();
        let mut sector = [0u8; 512];
        assert!(bus.read_string(0x1f0, 2, &mut sector));
        let p = port.lock().unwrap();
        assert_eq!(p.reads, vec![2; 256]);
        assert_eq!(&sector[..6], &[0, 0, 1, 0, 2, 0]);
        assert_eq!(&sector[510..], &255u16.to_le_bytes());
        drop(p);
        assert!(bus.write_string(0x1f0, 2, &sector));
        assert_eq!(port.lock().unwrap().writes, vec![2; 256]);
        assert!(!bus.read_string(0x1f8, 2, &mut sector), "unclaimed");
    }

    #[test]
    fn refuses_overlaps() {
        let mut bus = Bus::new();
        bus.insert(reg(), 0x100, 0x10).unwrap();
        assert!(bus.insert(reg(), 0x10f, 1).is_err());
        assert!(bus.insert(reg(), 0xf8, 0x10).is_err());
        assert!(bus.insert(reg(), 0x110, 1).is_ok());
        assert!(bus.insert(reg(), 0xf0, 0x10).is_ok());
        assert!(bus.insert(reg(), 0x200, 0).is_err());
    }
}
