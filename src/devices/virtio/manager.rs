//! Hands out virtio-mmio slots and IRQ lines, and lists what KVM must be told.
//!
//! The device code never calls KVM: [`VirtioManager::attach`] wraps a device in its
//! transport and returns a [`MmioDeviceInfo`] with the bus range, the command-line
//! fragment and the eventfds the lead registers (`register_irqfd` on the GSI,
//! `register_ioevent` on each queue's notify address with a 4-byte datamatch).

use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::mmio::{MmioError, MmioTransport, INTERRUPT_ACK_OFFSET, QUEUE_NOTIFY_OFFSET};
use super::{VirtioDevice, INT_VRING};
use crate::arch::x86_64::layout::{
    IOAPIC_START, IRQ_DEVICES_END, IRQ_DEVICES_START, MMIO_DEVICES_START, MMIO_SLOT_SIZE,
};

/// Errors attaching a device.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// All MMIO slots are taken.
    #[error("no virtio-mmio slot left after {0} devices")]
    NoSlot(usize),
    /// All device IRQ lines are taken.
    #[error("no IRQ left for a virtio device (last is {0})")]
    NoIrq(u32),
    /// The transport could not be built.
    #[error(transparent)]
    Transport(#[from] MmioError),
    /// An eventfd could not be duplicated for the caller.
    #[error("cannot duplicate eventfd of the device at {base:#x}")]
    EventFd {
        /// Base of the device's slot.
        base: u64,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A slot: its MMIO window and IRQ line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioSlot {
    /// Guest physical base of the register window.
    pub base: u64,
    /// Window length.
    pub len: u64,
    /// IRQ line (GSI) of the device.
    pub irq: u32,
}

impl MmioSlot {
    /// The kernel command-line fragment that announces this slot to Linux.
    pub fn cmdline(&self) -> String {
        format!("virtio_mmio.device=4K@{:#x}:{}", self.base, self.irq)
    }
}

/// An ioeventfd to register: KVM signals `fd` when the guest writes `datamatch`
/// (4 bytes) at `addr`.
#[derive(Debug)]
pub struct IoEvent {
    /// A duplicate of the transport's eventfd.
    pub fd: EventFd,
    /// QueueNotify or InterruptACK of the slot.
    pub addr: u64,
    /// The queue's index, or INT_VRING for InterruptACK.
    pub datamatch: u32,
}

/// Everything the VM code needs to wire one virtio-mmio device.
pub struct MmioDeviceInfo {
    /// Slot (bus range and IRQ).
    pub slot: MmioSlot,
    /// The transport, to insert on the MMIO bus at `slot.base`, `slot.len`.
    pub transport: Arc<Mutex<MmioTransport>>,
    /// The irqfd to register on `slot.irq` (a duplicate of the transport's).
    pub irqfd: EventFd,
    /// One ioeventfd per queue, then InterruptACK's.
    pub ioevents: Vec<IoEvent>,
}

/// Allocates slots upward from `MMIO_DEVICES_START` and IRQs from `IRQ_DEVICES_START`.
#[derive(Debug)]
pub struct VirtioManager {
    next_base: u64,
    end: u64,
    next_irq: u32,
    last_irq: u32,
    count: usize,
}

impl Default for VirtioManager {
    fn default() -> Self {
        Self::new(
            MMIO_DEVICES_START,
            IOAPIC_START,
            IRQ_DEVICES_START,
            IRQ_DEVICES_END,
        )
    }
}

impl VirtioManager {
    /// Slots in `[start, end)` and IRQs in `first_irq..=last_irq`.
    pub fn new(start: u64, end: u64, first_irq: u32, last_irq: u32) -> Self {
        Self {
            next_base: start,
            end,
            next_irq: first_irq,
            last_irq,
            count: 0,
        }
    }

    /// Take the next free slot.
    pub fn allocate(&mut self) -> Result<MmioSlot, ManagerError> {
        let fits = self
            .next_base
            .checked_add(MMIO_SLOT_SIZE)
            .is_some_and(|end| end <= self.end);
        if !fits {
            return Err(ManagerError::NoSlot(self.count));
        }
        if self.next_irq > self.last_irq {
            return Err(ManagerError::NoIrq(self.last_irq));
        }
        let slot = MmioSlot {
            base: self.next_base,
            len: MMIO_SLOT_SIZE,
            irq: self.next_irq,
        };
        self.next_base += MMIO_SLOT_SIZE;
        self.next_irq += 1;
        self.count += 1;
        Ok(slot)
    }

    /// Put `device` behind a transport in the next slot.
    pub fn attach(
        &mut self,
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<MmioDeviceInfo, ManagerError> {
        let slot = self.allocate()?;
        let transport = MmioTransport::new(mem, device)?;
        let dup = |fd: &EventFd| {
            fd.try_clone().map_err(|source| ManagerError::EventFd {
                base: slot.base,
                source,
            })
        };
        let irqfd = dup(transport.interrupt_evt())?;
        let mut ioevents = transport
            .queue_events()
            .iter()
            .enumerate()
            .map(|(i, fd)| {
                Ok(IoEvent {
                    fd: dup(fd)?,
                    addr: slot.base + QUEUE_NOTIFY_OFFSET,
                    datamatch: u32::try_from(i).expect("a device has few queues"),
                })
            })
            .collect::<Result<Vec<_>, ManagerError>>()?;
        ioevents.push(IoEvent {
            fd: dup(transport.ack_event())?,
            addr: slot.base + INTERRUPT_ACK_OFFSET,
            datamatch: INT_VRING,
        });
        Ok(MmioDeviceInfo {
            slot,
            transport: Arc::new(Mutex::new(transport)),
            irqfd,
            ioevents,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::descriptor::test_util::memory;
    use crate::devices::virtio::rng::Rng;

    #[test]
    fn first_slot_is_at_devices_start_with_first_irq() {
        let slot = VirtioManager::default().allocate().unwrap();
        assert_eq!(
            slot,
            MmioSlot {
                base: 0xd000_0000,
                len: 0x1000,
                irq: 5
            }
        );
        assert_eq!(slot.cmdline(), "virtio_mmio.device=4K@0xd0000000:5");
    }

    #[test]
    fn second_slot_follows_first() {
        let mut m = VirtioManager::default();
        m.allocate().unwrap();
        assert_eq!(
            m.allocate().unwrap(),
            MmioSlot {
                base: 0xd000_1000,
                len: 0x1000,
                irq: 6
            }
        );
    }

    #[test]
    fn running_out_of_irqs_is_an_error() {
        let mut m = VirtioManager::new(0x1000, 0x10_0000, 5, 6);
        m.allocate().unwrap();
        m.allocate().unwrap();
        assert!(matches!(m.allocate(), Err(ManagerError::NoIrq(6))));
    }

    #[test]
    fn running_out_of_slots_is_an_error() {
        let mut m = VirtioManager::new(0x1000, 0x3000, 5, 23);
        m.allocate().unwrap();
        m.allocate().unwrap();
        assert!(matches!(m.allocate(), Err(ManagerError::NoSlot(2))));
    }

    #[test]
    fn attach_returns_ioevents_at_queue_notify_and_interrupt_ack() {
        let mut m = VirtioManager::default();
        let rng = Arc::new(Mutex::new(Rng::new(None).unwrap()));
        let info = m.attach(memory(), rng).unwrap();
        assert_eq!(info.ioevents.len(), 2);
        assert_eq!(info.ioevents[0].addr, 0xd000_0050);
        assert_eq!(info.ioevents[0].datamatch, 0);
        assert_eq!(info.ioevents[1].addr, 0xd000_0064);
        assert_eq!(info.ioevents[1].datamatch, INT_VRING);
    }

    #[test]
    fn ioevent_duplicate_reaches_transport_queue_eventfd() {
        let mut m = VirtioManager::default();
        let rng = Arc::new(Mutex::new(Rng::new(None).unwrap()));
        let info = m.attach(memory(), rng).unwrap();
        info.ioevents[0].fd.write(3).unwrap();
        let t = info.transport.lock().unwrap();
        assert_eq!(t.queue_events()[0].read().unwrap(), 3);
    }
}
