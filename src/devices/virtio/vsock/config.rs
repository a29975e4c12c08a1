//! `VsockConfig`: guest CID and host Unix socket path, parsed from `cid=N,uds=PATH`.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Lowest CID a guest may have (0-2 are reserved, virtio 1.2 §5.10.4).
pub const MIN_GUEST_CID: u64 = 3;

/// Errors parsing a vsock description.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VsockConfigError {
    /// A required key is absent.
    #[error("vsock needs {0}=")]
    Missing(&'static str),
    /// A key that is not cid or uds.
    #[error("unknown vsock key {0:?}")]
    UnknownKey(String),
    /// A CID that is not a number of at least 3 (and below 2^32 - 1).
    #[error("bad vsock cid {0:?}: must be a number from 3 to 4294967294")]
    BadCid(String),
    /// An empty socket path.
    #[error("bad vsock uds {0:?}")]
    BadPath(String),
}

/// A vsock device: the guest's CID and the host Unix socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Guest context id (>= 3).
    pub cid: u64,
    /// Host Unix socket path; guest-initiated connections go to `<uds>_<port>`.
    pub uds: PathBuf,
}

impl VsockConfig {
    /// Check the CID range.
    pub fn validate(&self) -> Result<(), VsockConfigError> {
        match self.cid {
            MIN_GUEST_CID..0xffff_ffff => Ok(()),
            _ => Err(VsockConfigError::BadCid(self.cid.to_string())),
        }
    }
}

impl FromStr for VsockConfig {
    type Err = VsockConfigError;

    /// Parse `cid=N,uds=PATH`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (mut cid, mut uds) = (None, None);
        for part in s.split(',') {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            match key {
                "cid" => {
                    let bad = || VsockConfigError::BadCid(value.into());
                    cid = Some(value.parse::<u64>().map_err(|_| bad())?);
                }
                "uds" if value.is_empty() => return Err(VsockConfigError::BadPath(value.into())),
                "uds" => uds = Some(PathBuf::from(value)),
                _ => return Err(VsockConfigError::UnknownKey(key.into())),
            }
        }
        let config = Self {
            cid: cid.ok_or(VsockConfigError::Missing("cid"))?,
            uds: uds.ok_or(VsockConfigError::Missing("uds"))?,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cid_and_uds_parse() {
        let c: VsockConfig = "cid=3,uds=/run/husk/v.sock".parse().unwrap();
        assert_eq!(
            c,
            VsockConfig {
                cid: 3,
                uds: "/run/husk/v.sock".into()
            }
        );
    }

    #[test]
    fn reserved_cid_is_rejected() {
        let e = "cid=2,uds=/x".parse::<VsockConfig>();
        assert_eq!(e, Err(VsockConfigError::BadCid("2".into())));
    }

    #[test]
    fn non_numeric_cid_is_named() {
        let e = "cid=abc,uds=/x".parse::<VsockConfig>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad vsock cid \"abc\": must be a number from 3 to 4294967294"
        );
    }

    #[test]
    fn missing_uds_is_an_error() {
        assert_eq!(
            "cid=5".parse::<VsockConfig>(),
            Err(VsockConfigError::Missing("uds"))
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let e = "cid=5,uds=/x,port=3".parse::<VsockConfig>();
        assert_eq!(e, Err(VsockConfigError::UnknownKey("port".into())));
    }
}
