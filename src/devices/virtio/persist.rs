//! The state of a virtio-mmio slot as plain data: the transport's registers, the
//! interrupt status, each queue's position, and what the device itself must keep
//! (each device's `persist.rs` defines its part). A restore rebuilds the device from its
//! configuration (with new backends: disk files, a TAP, a vsock socket) in the same
//! slot, then puts this state back and activates it as the driver left it.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};

use super::block::BlockPersist;
use super::mmio::MmioState;
use super::net::NetPersist;
use super::vsock::VsockPersist;

/// One queue's position and layout (virtio-queue's `QueueState`, as plain serde data).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// QueueNumMax.
    pub max_size: u16,
    /// The next available-ring entry the device will take.
    pub next_avail: u16,
    /// The next used-ring entry the device will fill.
    pub next_used: u16,
    /// VIRTIO_RING_F_EVENT_IDX was negotiated.
    pub event_idx: bool,
    /// QueueNum.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
}

impl QueueSnapshot {
    /// The position of `queue`.
    pub fn of(queue: &Queue) -> Self {
        let s = queue.state();
        Self {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }

    /// A queue at this position; its layout is checked as when the driver set it up.
    pub fn to_queue(self) -> Result<Queue, virtio_queue::Error> {
        Queue::try_from(QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        })
    }
}

/// What a device keeps beyond its transport and queues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DevicePersist {
    /// virtio-blk.
    Block(BlockPersist),
    /// virtio-net.
    Net(NetPersist),
    /// virtio-vsock.
    Vsock(VsockPersist),
    /// virtio-rng (nothing beyond its queue).
    Rng,
    /// virtio-fs: its state is the vhost-user daemon's, so a VM with one is never
    /// saved (see `vmm::persist`).
    Fs,
}

impl DevicePersist {
    /// The virtio device id this state belongs to.
    pub fn device_type(&self) -> u32 {
        match self {
            Self::Block(_) => super::TYPE_BLOCK,
            Self::Net(_) => super::TYPE_NET,
            Self::Vsock(_) => super::TYPE_VSOCK,
            Self::Rng => super::TYPE_RNG,
            Self::Fs => super::TYPE_FS,
        }
    }
}

/// One virtio-mmio slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotState {
    /// The transport's registers.
    pub mmio: MmioState,
    /// InterruptStatus (bits the driver has not acknowledged yet).
    pub interrupt_status: u32,
    /// The device was activated (DRIVER_OK) and runs.
    pub activated: bool,
    /// The queues' positions (empty unless activated).
    pub queues: Vec<QueueSnapshot>,
    /// The device's own part.
    pub device: DevicePersist,
}

/// Errors putting a slot's state back.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The snapshot has another kind of device in this slot.
    #[error("slot {slot}: the snapshot has device type {saved} where this VM has {here}")]
    WrongDevice {
        /// Slot index.
        slot: usize,
        /// The snapshot's device id.
        saved: u32,
        /// This VM's.
        here: u32,
    },
    /// The queue count or a queue's layout does not fit.
    #[error("slot {slot}: {what}")]
    Queue {
        /// Slot index.
        slot: usize,
        /// What is wrong.
        what: String,
    },
    /// The device could not be activated again.
    #[error("slot {slot}: activation failed: {message}")]
    Activate {
        /// Slot index.
        slot: usize,
        /// Why.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::QueueT;

    #[test]
    fn a_queue_position_survives_the_round_trip() {
        let mut queue = Queue::new(256).unwrap();
        queue.try_set_size(128).unwrap();
        queue.set_next_avail(17);
        queue.set_next_used(15);
        queue.set_event_idx(true);
        queue
            .try_set_desc_table_address(vm_memory::GuestAddress(0x1000))
            .unwrap();
        queue.set_ready(true);
        let saved = QueueSnapshot::of(&queue);
        let back = saved.to_queue().unwrap();
        assert_eq!(QueueSnapshot::of(&back), saved);
        assert_eq!((back.next_avail(), back.next_used()), (17, 15));
    }

    #[test]
    fn a_queue_size_that_is_no_power_of_two_is_refused() {
        let saved = QueueSnapshot {
            max_size: 256,
            size: 100,
            ..QueueSnapshot::default()
        };
        assert!(saved.to_queue().is_err());
    }
}
