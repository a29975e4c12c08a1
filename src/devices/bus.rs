//! A small address bus: port I/O and MMIO exits are routed to devices by address range.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable through a [`Bus`]. `offset` is relative to the device's base.
pub trait BusDevice: Send {
    /// Handle a guest read of `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handle a guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors when building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps one already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// Zero-length ranges cannot be inserted.
    #[error("bus range at {0:#x} has zero length")]
    ZeroLength(u64),
}

/// A shared, lockable bus device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Address ranges mapped to devices. Lookups are `O(log n)`.
#[derive(Default, Clone)]
pub struct Bus {
    ranges: BTreeMap<u64, (u64, SharedDevice)>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Map `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength(base));
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        let overlaps_prev = self
            .ranges
            .range(..end)
            .next_back()
            .is_some_and(|(&b, &(l, _))| b + l > base);
        if overlaps_prev {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.insert(base, (len, device));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let (&base, (len, dev)) = self.ranges.range(..=addr).next_back()?;
        (addr - base < *len).then_some((addr - base, dev))
    }

    /// Route a read; returns false when nothing is mapped at `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((offset, dev)) = self.find(addr) else {
            return false;
        };
        lock(dev).read(offset, data);
        true
    }

    /// Route a write; returns false when nothing is mapped at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((offset, dev)) = self.find(addr) else {
            return false;
        };
        lock(dev).write(offset, data);
        true
    }
}

/// Lock a device, recovering from a poisoned lock: a device that panicked mid-access
/// still has consistent-enough state for the VM to be torn down.
fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    fn dev(v: u8) -> SharedDevice {
        Arc::new(Mutex::new(Echo(v)))
    }

    #[test]
    fn read_routes_to_device_with_relative_offset() {
        let mut bus = Bus::new();
        bus.insert(dev(10), 0x100, 0x10).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x105, &mut b));
        assert_eq!(b[0], 15);
    }

    #[test]
    fn access_past_range_end_is_unhandled() {
        let mut bus = Bus::new();
        bus.insert(dev(0), 0x100, 0x10).unwrap();
        assert!(!bus.read(0x110, &mut [0u8; 1]));
        assert!(!bus.write(0xff, &[1]));
    }

    #[test]
    fn overlapping_insert_is_rejected() {
        let mut bus = Bus::new();
        bus.insert(dev(0), 0x100, 0x10).unwrap();
        assert_eq!(
            bus.insert(dev(0), 0x108, 0x10),
            Err(BusError::Overlap {
                base: 0x108,
                len: 0x10
            })
        );
        assert_eq!(
            bus.insert(dev(0), 0xf8, 0x10),
            Err(BusError::Overlap {
                base: 0xf8,
                len: 0x10
            })
        );
        assert!(bus.insert(dev(0), 0x110, 0x10).is_ok());
    }

    #[test]
    fn write_reaches_device_state() {
        let mut bus = Bus::new();
        bus.insert(dev(0), 0x60, 1).unwrap();
        assert!(bus.write(0x60, &[7]));
        let mut b = [0u8; 1];
        bus.read(0x60, &mut b);
        assert_eq!(b[0], 7);
    }
}
