//! What a network card keeps across a snapshot: the MAC its driver read. A restored VM
//! gets a new TAP (or none); receive state in flight is dropped, as a lost frame. The
//! offloads are not kept here: they follow from the acked features, which the
//! transport saves and hands back through `set_acked_features`, and that call sets
//! them up on the new TAP. RX chains the device had taken but not filled are saved as
//! not taken (the RX queue's next available index goes back by their number), so the
//! restored device finds them again.

use serde::{Deserialize, Serialize};

use super::{MacAddr, Net};
use crate::devices::virtio::persist::{DevicePersist, QueueSnapshot};

/// Index of the RX queue.
const RX: usize = 0;

/// The network card's own snapshot state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetPersist {
    /// The MAC address in the configuration space.
    pub mac: MacAddr,
}

impl Net {
    pub(super) fn persist_state(&self) -> DevicePersist {
        DevicePersist::Net(NetPersist {
            mac: self.state().mac,
        })
    }

    /// The queue positions for a snapshot, with the RX chains taken but not filled
    /// given back.
    pub(super) fn snapshot_queues(&self) -> Vec<QueueSnapshot> {
        let mut queues = self.queues.snapshots();
        if let Some(rx) = queues.get_mut(RX) {
            rx.next_avail = rx.next_avail.wrapping_sub(self.rx.held_chains());
        }
        queues
    }

    /// After a restore: look at both queues once.
    pub(super) fn restored(&mut self) -> bool {
        self.queues.kick_all();
        false
    }
}
