//! What a vsock device keeps across a snapshot: nothing of its connections. The host
//! sockets of the saved VM belong to another process or are gone, so a restored guest
//! gets a transport reset event: Linux drops every connection, reads the (possibly new)
//! guest CID again, and its listeners accept new connections (virtio 1.2 §5.10.6.7).

use serde::{Deserialize, Serialize};

use super::Vsock;
use crate::devices::virtio::persist::DevicePersist;

/// The vsock device's own snapshot state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockPersist {
    /// The guest CID when the snapshot was taken.
    pub cid: u64,
}

impl Vsock {
    pub(super) fn persist_state(&self) -> DevicePersist {
        DevicePersist::Vsock(VsockPersist {
            cid: self.state().config.cid,
        })
    }

    /// After a restore: reset every guest connection, then serve the queues.
    pub(super) fn restored(&mut self) -> bool {
        self.send_transport_reset();
        self.queues.kick_all();
        false
    }
}
