//! `NetConfig` and `MacAddr`, parsed from `tap=NAME[,mac=aa:bb:cc:dd:ee:ff][,vhost=on]`.

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::devices::rate_limiter::RateLimiterConfig;

/// Longest interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// Errors parsing a network device description.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetConfigError {
    /// A key that is not tap or mac.
    #[error("unknown net key {0:?}")]
    UnknownKey(String),
    /// An interface name that Linux would refuse.
    #[error("bad tap name {0:?}: 1 to 15 characters, no '/', ':' or whitespace")]
    BadTapName(String),
    /// A MAC address that is not six hex bytes separated by ':'.
    #[error("bad mac address {0:?}")]
    BadMac(String),
    /// A multicast MAC cannot be a station address.
    #[error("mac address {0} is multicast")]
    MulticastMac(String),
    /// `vhost=` takes `on` or `off`.
    #[error("bad vhost value {0:?}: on or off")]
    BadVhost(String),
}

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A random, locally administered, unicast address.
    pub fn random() -> Self {
        let mut b = [0u8; 6];
        let filled = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
        if filled.is_err() {
            // Fallback entropy: unique enough per process and time for a MAC.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id()) << 32;
            b.copy_from_slice(&t.to_le_bytes()[..6]);
        }
        b[0] = (b[0] & 0xfe) | 0x02;
        Self(b)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = NetConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetConfigError::BadMac(s.into());
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
            return Err(bad());
        }
        let mut b = [0u8; 6];
        for (out, p) in b.iter_mut().zip(parts) {
            *out = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if b[0] & 1 != 0 {
            return Err(NetConfigError::MulticastMac(s.into()));
        }
        Ok(Self(b))
    }
}

/// A network device: TAP name (None: a new TAP with a generated name) and MAC
/// (None: random, locally administered).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// TAP interface to attach to or create.
    pub tap: Option<String>,
    /// Guest MAC address.
    pub mac: Option<MacAddr>,
    /// No TAP at all: the card exists for the guest, but its frames go nowhere and none
    /// arrive (a template's network slot, kept for a sandbox without a network).
    #[serde(default)]
    pub unplugged: bool,
    /// The card's name for an API client (`iface_id`), so that a restore can give it a
    /// new TAP by name.
    #[serde(default)]
    pub id: Option<String>,
    /// `tap` is a persistent TAP made for this VM (by the sandbox that jails it): once
    /// attached, its persistence is cleared, so it goes when the VM closes it.
    #[serde(default)]
    pub claim: bool,
    /// Limits on frames to the guest (bytes and frames).
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Limits on frames from the guest (bytes and frames).
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
    /// Frames move through the host kernel's vhost-net instead of husk's device
    /// thread (see `vhost.rs`): no rate limits.
    #[serde(default)]
    pub vhost: bool,
}

impl NetConfig {
    /// A card on the persistent TAP `tap` made for it, which it claims
    /// ([`NetConfig::claim`]), or on a new TAP when `None`.
    pub fn claiming(tap: Option<&str>) -> Self {
        Self {
            tap: tap.map(str::to_string),
            claim: tap.is_some(),
            ..Self::default()
        }
    }

    /// A card without a TAP (see [`NetConfig::unplugged`]).
    pub fn unplugged() -> Self {
        Self {
            unplugged: true,
            ..Self::default()
        }
    }
}

/// Check an interface name the way Linux's `dev_valid_name` does.
pub fn validate_ifname(name: &str) -> Result<(), NetConfigError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name != "."
        && name != ".."
        && !name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace());
    match ok {
        true => Ok(()),
        false => Err(NetConfigError::BadTapName(name.into())),
    }
}

impl FromStr for NetConfig {
    type Err = NetConfigError;

    /// Parse `tap=NAME[,mac=aa:bb:cc:dd:ee:ff][,vhost=on]`; every key is optional.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut config = NetConfig::default();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            match key {
                // `tap=` with no name asks for a new TAP, as `--net tap=` documents.
                "tap" if value.is_empty() => config.tap = None,
                "tap" => {
                    validate_ifname(value)?;
                    config.tap = Some(value.into());
                }
                "mac" => config.mac = Some(value.parse()?),
                "vhost" => {
                    config.vhost = match value {
                        "on" => true,
                        "off" => false,
                        _ => return Err(NetConfigError::BadVhost(value.into())),
                    }
                }
                _ => return Err(NetConfigError::UnknownKey(key.into())),
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_and_mac_parse() {
        let c: NetConfig = "tap=husk0,mac=02:00:00:aa:bb:0c".parse().unwrap();
        assert_eq!(c.tap.as_deref(), Some("husk0"));
        assert_eq!(c.mac, Some(MacAddr([2, 0, 0, 0xaa, 0xbb, 0x0c])));
    }

    #[test]
    fn empty_description_means_generated_tap_and_mac() {
        assert_eq!("".parse::<NetConfig>(), Ok(NetConfig::default()));
    }

    #[test]
    fn empty_tap_name_with_mac_means_generated_tap() {
        let c: NetConfig = "tap=,mac=52:54:00:12:34:56".parse().unwrap();
        assert_eq!(c.tap, None);
        assert_eq!(c.mac, Some(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56])));
    }

    #[test]
    fn long_tap_name_is_rejected() {
        let e = "tap=abcdefghijklmnop".parse::<NetConfig>();
        assert_eq!(
            e,
            Err(NetConfigError::BadTapName("abcdefghijklmnop".into()))
        );
    }

    #[test]
    fn tap_name_with_slash_is_rejected() {
        assert!("tap=a/b".parse::<NetConfig>().is_err());
    }

    #[test]
    fn malformed_mac_is_named() {
        let e = "mac=02:00:zz:00:00:01".parse::<NetConfig>().unwrap_err();
        assert_eq!(e.to_string(), "bad mac address \"02:00:zz:00:00:01\"");
    }

    #[test]
    fn multicast_mac_is_rejected() {
        let e = "mac=01:00:5e:00:00:01".parse::<NetConfig>();
        assert_eq!(
            e,
            Err(NetConfigError::MulticastMac("01:00:5e:00:00:01".into()))
        );
    }

    #[test]
    fn random_mac_is_local_unicast() {
        let m = MacAddr::random();
        assert_eq!(m.0[0] & 0x03, 0x02);
    }

    #[test]
    fn mac_displays_as_colon_hex() {
        assert_eq!(
            MacAddr([2, 0xab, 0, 0, 0, 1]).to_string(),
            "02:ab:00:00:00:01"
        );
    }

    #[test]
    fn vhost_is_on_or_off() {
        let c: NetConfig = "tap=husk0,vhost=on".parse().unwrap();
        assert!(c.vhost);
        assert!(!"vhost=off".parse::<NetConfig>().unwrap().vhost);
        assert!(!"".parse::<NetConfig>().unwrap().vhost);
        let e = "vhost=yes".parse::<NetConfig>();
        assert_eq!(e, Err(NetConfigError::BadVhost("yes".into())));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = "queues=2".parse::<NetConfig>();
        assert_eq!(e, Err(NetConfigError::UnknownKey("queues".into())));
    }
}
