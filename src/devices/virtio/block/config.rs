//! `BlockConfig`: what a block device is made of, parsed from `path=...,ro=...,id=...`.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::devices::rate_limiter::RateLimiterConfig;

/// Length of a virtio-blk serial id (VIRTIO_BLK_ID_BYTES).
pub const ID_BYTES: usize = 20;

/// Errors parsing a block device description.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockConfigError {
    /// `path=` is required.
    #[error("block device needs path=")]
    MissingPath,
    /// A key that is not path, ro or id.
    #[error("unknown block key {0:?}")]
    UnknownKey(String),
    /// A value that does not parse for its key.
    #[error("bad block value {key}={value:?}")]
    BadValue {
        /// The key.
        key: String,
        /// The rejected value.
        value: String,
    },
    /// The serial id does not fit in 20 bytes.
    #[error("block id {0:?} is longer than 20 bytes")]
    IdTooLong(String),
}

/// A block device: a raw image file, optionally read-only, with an optional serial id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    /// Image file (or block device) path.
    pub path: PathBuf,
    /// Expose the disk read-only (VIRTIO_BLK_F_RO).
    #[serde(default)]
    pub read_only: bool,
    /// Serial id returned by VIRTIO_BLK_T_GET_ID (at most 20 bytes).
    #[serde(default)]
    pub id: Option<String>,
    /// Boot the guest with this disk as its root filesystem (`root=/dev/vdX`).
    #[serde(default)]
    pub root: bool,
    /// Limits on the guest's requests: bytes read or written, and requests.
    #[serde(default)]
    pub rate_limiter: Option<RateLimiterConfig>,
}

fn parse_bool(key: &str, value: &str) -> Result<bool, BlockConfigError> {
    match value {
        "true" | "on" | "1" => Ok(true),
        "false" | "off" | "0" => Ok(false),
        _ => Err(BlockConfigError::BadValue {
            key: key.into(),
            value: value.into(),
        }),
    }
}

impl FromStr for BlockConfig {
    type Err = BlockConfigError;

    /// Parse `path=PATH[,ro=true|false][,id=SERIAL][,root=true|false]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (mut path, mut read_only, mut id, mut root) = (None, false, None, false);
        for part in s.split(',') {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            match key {
                "path" if !value.is_empty() => path = Some(PathBuf::from(value)),
                "ro" => read_only = parse_bool(key, value)?,
                "root" => root = parse_bool(key, value)?,
                "id" if value.len() > ID_BYTES => {
                    return Err(BlockConfigError::IdTooLong(value.into()))
                }
                "id" => id = Some(value.to_string()),
                "path" => {
                    return Err(BlockConfigError::BadValue {
                        key: key.into(),
                        value: value.into(),
                    })
                }
                _ => return Err(BlockConfigError::UnknownKey(key.into())),
            }
        }
        let path = path.ok_or(BlockConfigError::MissingPath)?;
        Ok(Self {
            path,
            read_only,
            id,
            root,
            rate_limiter: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_description_parses() {
        let c: BlockConfig = "path=/img/root.ext4,ro=true,id=rootfs".parse().unwrap();
        assert_eq!(
            c,
            BlockConfig {
                path: "/img/root.ext4".into(),
                read_only: true,
                id: Some("rootfs".into()),
                root: false,
                rate_limiter: None,
            }
        );
    }

    #[test]
    fn path_alone_is_read_write_without_id() {
        let c: BlockConfig = "path=disk.img".parse().unwrap();
        assert!(!c.read_only);
        assert_eq!(c.id, None);
    }

    #[test]
    fn missing_path_is_an_error() {
        assert_eq!(
            "ro=true".parse::<BlockConfig>(),
            Err(BlockConfigError::MissingPath)
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let e = "path=a,cache=none".parse::<BlockConfig>();
        assert_eq!(e, Err(BlockConfigError::UnknownKey("cache".into())));
    }

    #[test]
    fn bad_bool_names_key_and_value() {
        let e = "path=a,ro=yes".parse::<BlockConfig>().unwrap_err();
        assert_eq!(e.to_string(), "bad block value ro=\"yes\"");
    }

    #[test]
    fn long_id_is_rejected() {
        let e = "path=a,id=0123456789abcdefghijk".parse::<BlockConfig>();
        assert_eq!(
            e,
            Err(BlockConfigError::IdTooLong("0123456789abcdefghijk".into()))
        );
    }
}
