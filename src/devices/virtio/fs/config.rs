//! The configuration of one shared folder, and its configuration space.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Bytes of the tag field in the configuration space (virtio 1.2 §5.11.4).
pub const TAG_LEN: usize = 36;

/// One virtio-fs device: the daemon's socket and the tag the guest mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The vhost-user socket `virtiofsd` listens on.
    pub socket: PathBuf,
    /// The tag the guest mounts (`mount -t virtiofs TAG DIR`); at most 36 bytes.
    pub tag: String,
}

impl FsConfig {
    /// The configuration space: the tag, NUL padded, then `num_request_queues`.
    pub fn config_space(&self, request_queues: u32) -> Vec<u8> {
        let mut space = vec![0u8; TAG_LEN + 4];
        let tag = self.tag.as_bytes();
        let n = tag.len().min(TAG_LEN);
        space[..n].copy_from_slice(&tag[..n]);
        space[TAG_LEN..].copy_from_slice(&request_queues.to_le_bytes());
        space
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_holds_the_tag_then_the_queue_count() {
        let config = FsConfig {
            socket: "/s".into(),
            tag: "vol0".into(),
        };
        let space = config.config_space(1);
        assert_eq!(&space[..5], b"vol0\0");
        assert_eq!(&space[TAG_LEN..], &[1, 0, 0, 0]);
    }
}
