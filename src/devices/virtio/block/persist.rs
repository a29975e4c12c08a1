//! What a block device keeps across a snapshot: the capacity its driver last read. The
//! backing file is chosen anew at restore (a template's empty slot gets the sandbox's
//! image), and a capacity that differs is announced with a configuration change, after
//! which Linux reads the new size (virtio 1.2 §5.2.6.2, `virtblk_config_changed`).

use serde::{Deserialize, Serialize};

use super::Block;
use crate::devices::virtio::persist::DevicePersist;

/// The block device's own snapshot state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockPersist {
    /// Capacity in sectors when the snapshot was taken.
    pub capacity_sectors: u64,
    /// Whether the disk was offered read-only (VIRTIO_BLK_F_RO, fixed at negotiation).
    pub read_only: bool,
}

impl Block {
    pub(super) fn persist_state(&self) -> DevicePersist {
        DevicePersist::Block(BlockPersist {
            capacity_sectors: self.disk().sectors(),
            read_only: self.disk().read_only(),
        })
    }

    /// After a restore: look at the queue once; true when the capacity changed.
    pub(super) fn restored(&mut self, saved: &DevicePersist) -> bool {
        self.queues.kick_all();
        match saved {
            DevicePersist::Block(b) => b.capacity_sectors != self.disk().sectors(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::block::BlockConfig;
    use crate::devices::virtio::descriptor::test_util::TempImage;

    #[test]
    fn a_disk_of_another_size_reports_a_changed_capacity() {
        let img = TempImage::new(1 << 20, 0);
        let config = BlockConfig {
            path: img.0.clone(),
            read_only: true,
            id: None,
            root: false,
            rate_limiter: None,
        };
        let mut block = Block::new(config).unwrap();
        let empty = DevicePersist::Block(BlockPersist {
            capacity_sectors: 0,
            read_only: true,
        });
        assert!(block.restored(&empty));
        let same = block.persist_state();
        assert!(!block.restored(&same));
    }
}
