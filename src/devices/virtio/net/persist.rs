//! What a network card keeps across a snapshot: the MAC its driver read. A restored VM
//! gets a new TAP (or none); receive state in flight is dropped, as a lost frame.

use serde::{Deserialize, Serialize};

use super::{MacAddr, Net};
use crate::devices::virtio::persist::DevicePersist;

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

    /// After a restore: look at both queues once.
    pub(super) fn restored(&mut self) -> bool {
        self.queues.kick_all();
        false
    }
}
