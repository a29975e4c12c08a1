//! `VsockConfig`: guest CID, host Unix socket path and the budget of host sockets,
//! parsed from `cid=N,uds=PATH[,max_sockets=N]`.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Lowest CID a guest may have (0-2 are reserved, virtio 1.2 §5.10.4).
pub const MIN_GUEST_CID: u64 = 3;
/// Host sockets a guest may make husk hold at once unless configured otherwise.
pub const DEFAULT_MAX_SOCKETS: usize = 128;
/// The highest budget allowed: with [`BUF_ALLOC`] per connection that is up to 256 MiB
/// of host buffers a guest could fill.
///
/// [`BUF_ALLOC`]: super::connection::BUF_ALLOC
pub const MAX_SOCKETS_LIMIT: usize = 1024;

/// Errors parsing a vsock description.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VsockConfigError {
    /// A required key is absent.
    #[error("vsock needs {0}=")]
    Missing(&'static str),
    /// A key that is not cid, uds or max_sockets.
    #[error("unknown vsock key {0:?}")]
    UnknownKey(String),
    /// A budget that is not a number from 1 to [`MAX_SOCKETS_LIMIT`].
    #[error("bad vsock max_sockets {0:?}: must be a number from 1 to {MAX_SOCKETS_LIMIT}")]
    BadMaxSockets(String),
    /// A CID that is not a number of at least 3 (and below 2^32 - 1).
    #[error("bad vsock cid {0:?}: must be a number from 3 to 4294967294")]
    BadCid(String),
    /// An empty socket path.
    #[error("bad vsock uds {0:?}")]
    BadPath(String),
}

/// A vsock device: the guest's CID, the host Unix socket, and how many host sockets
/// the guest may make husk hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Guest context id (>= 3).
    pub cid: u64,
    /// Host Unix socket path; guest-initiated connections go to `<uds>_<port>`.
    pub uds: PathBuf,
    /// Most host sockets held at once: connections either way and host clients that
    /// have not sent their CONNECT line yet. Each is one file descriptor of the VMM
    /// and up to 256 KiB of buffered guest bytes; guest connections beyond it get an
    /// RST, host clients beyond it wait in the listener's backlog.
    #[serde(default = "default_max_sockets")]
    pub max_sockets: usize,
}

fn default_max_sockets() -> usize {
    DEFAULT_MAX_SOCKETS
}

impl VsockConfig {
    /// A device for guest `cid` on `uds` with the default budget.
    pub fn new(cid: u64, uds: impl Into<PathBuf>) -> Self {
        Self {
            cid,
            uds: uds.into(),
            max_sockets: DEFAULT_MAX_SOCKETS,
        }
    }

    /// Check the CID range and the budget.
    pub fn validate(&self) -> Result<(), VsockConfigError> {
        if !(MIN_GUEST_CID..0xffff_ffff).contains(&self.cid) {
            return Err(VsockConfigError::BadCid(self.cid.to_string()));
        }
        if !(1..=MAX_SOCKETS_LIMIT).contains(&self.max_sockets) {
            return Err(VsockConfigError::BadMaxSockets(
                self.max_sockets.to_string(),
            ));
        }
        Ok(())
    }
}

impl FromStr for VsockConfig {
    type Err = VsockConfigError;

    /// Parse `cid=N,uds=PATH[,max_sockets=N]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (mut cid, mut uds, mut max_sockets) = (None, None, DEFAULT_MAX_SOCKETS);
        for part in s.split(',') {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            match key {
                "cid" => {
                    let bad = || VsockConfigError::BadCid(value.into());
                    cid = Some(value.parse::<u64>().map_err(|_| bad())?);
                }
                "uds" if value.is_empty() => return Err(VsockConfigError::BadPath(value.into())),
                "uds" => uds = Some(PathBuf::from(value)),
                "max_sockets" => {
                    let bad = || VsockConfigError::BadMaxSockets(value.into());
                    max_sockets = value.parse::<usize>().map_err(|_| bad())?;
                }
                _ => return Err(VsockConfigError::UnknownKey(key.into())),
            }
        }
        let config = Self {
            cid: cid.ok_or(VsockConfigError::Missing("cid"))?,
            uds: uds.ok_or(VsockConfigError::Missing("uds"))?,
            max_sockets,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cid_and_uds_parse_with_the_default_budget() {
        let c: VsockConfig = "cid=3,uds=/run/husk/v.sock".parse().unwrap();
        assert_eq!(
            c,
            VsockConfig {
                cid: 3,
                uds: "/run/husk/v.sock".into(),
                max_sockets: DEFAULT_MAX_SOCKETS,
            }
        );
    }

    #[test]
    fn max_sockets_parses() {
        let c: VsockConfig = "cid=3,uds=/x,max_sockets=16".parse().unwrap();
        assert_eq!(c.max_sockets, 16);
    }

    #[test]
    fn zero_max_sockets_is_refused_with_the_range() {
        let e = "cid=3,uds=/x,max_sockets=0"
            .parse::<VsockConfig>()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad vsock max_sockets \"0\": must be a number from 1 to 1024"
        );
    }

    #[test]
    fn max_sockets_above_the_limit_is_refused() {
        let e = "cid=3,uds=/x,max_sockets=1025".parse::<VsockConfig>();
        assert_eq!(e, Err(VsockConfigError::BadMaxSockets("1025".into())));
    }

    #[test]
    fn non_numeric_max_sockets_is_named() {
        let e = "cid=3,uds=/x,max_sockets=many".parse::<VsockConfig>();
        assert_eq!(e, Err(VsockConfigError::BadMaxSockets("many".into())));
    }

    #[test]
    fn json_without_max_sockets_gets_the_default() {
        let c: VsockConfig = serde_json::from_str(r#"{"cid":3,"uds":"/x"}"#).unwrap();
        assert_eq!(c, VsockConfig::new(3, "/x"));
    }

    #[test]
    fn json_with_an_unknown_field_is_refused() {
        let e = serde_json::from_str::<VsockConfig>(r#"{"cid":3,"uds":"/x","max":1}"#);
        assert!(e.unwrap_err().to_string().contains("unknown field `max`"));
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
