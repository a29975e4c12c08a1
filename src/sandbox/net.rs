//! The sandbox network (`husk run --net link|nat`): a /30 link between the host and
//! the guest over the TAP husk creates for the VM. The host's end gets the first
//! address of a /30 in 10.213.0.0/16 picked from the TAP's interface index (unique
//! among live interfaces, so concurrent sandboxes get different links); the agent gives
//! the guest's eth0 the second address and routes everything through the host.
//!
//! `link` stops there: the guest reaches the host, nothing beyond (an nftables table
//! drops whatever would be forwarded to or from it). `nat` adds the host's side of a
//! way out ([`super::nat`]: masquerade, forwarding, an optional allowlist) and DNS
//! servers for the guest ([`super::dns`]). Either may publish ports
//! ([`super::ports`]). Everything the host sets up for a sandbox lives in its
//! [`HostNet`] and goes when that is dropped.

use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::str::FromStr;

use husk_protocol::{read_message, write_message, Message, ProtocolError};

use super::nat::{self, Egress, Rules};
use super::ports::Proxies;
use super::SandboxConfig;
use husk_netif as ifconfig;

/// The network all links are cut from: 10.213.0.0/16.
pub const LINK_NETWORK: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 0);
/// Every link is a /30: network, host, guest, broadcast.
pub const LINK_PREFIX_LEN: u8 = 30;
/// How many /30 links the /16 holds.
const LINKS: u32 = 1 << (LINK_PREFIX_LEN - 16);
/// The guest's interface: the sandbox's card is the VM's first.
pub const GUEST_INTERFACE: &str = "eth0";

/// Errors of setting up a sandbox's network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The VM has no network card to configure.
    #[error("the VM has no network card")]
    NoTap,
    /// The TAP's index could not be read.
    #[error("cannot find the index of TAP {tap}")]
    Index {
        /// The TAP.
        tap: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The host's addresses could not be listed.
    #[error("cannot list the host's IPv4 addresses")]
    Addresses(#[source] std::io::Error),
    /// Another interface already has an address in the link's /30.
    #[error(
        "the link {network}/{LINK_PREFIX_LEN} for TAP {tap} is already in use on this host: \
         {interface} has {address}; remove that address or free the subnet"
    )]
    InUse {
        /// The link's network address.
        network: Ipv4Addr,
        /// The TAP.
        tap: String,
        /// The interface holding a conflicting address.
        interface: String,
        /// That address.
        address: Ipv4Addr,
    },
    /// The TAP could not be configured.
    #[error("cannot give TAP {tap} the address {address}/{LINK_PREFIX_LEN} and bring it up")]
    Configure {
        /// The TAP.
        tap: String,
        /// The host's address.
        address: Ipv4Addr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The agent could not be told, or answered out of turn.
    #[error("sending the network configuration to the guest agent")]
    Protocol(#[from] ProtocolError),
    /// The agent could not configure the guest's interface.
    #[error("the guest agent could not configure {GUEST_INTERFACE}: {0}")]
    Guest(String),
    /// NAT, published ports or DNS were asked for without a network.
    #[error("NAT, published ports and DNS servers need a network (--net link or nat)")]
    NoNetwork,
    /// The host's NAT rules could not be set up.
    #[error("--net nat: {0}")]
    Nat(String),
    /// A published port's host address could not be had.
    #[error("cannot publish {address}")]
    Publish {
        /// The host address and port.
        address: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// An IPv4 network, `a.b.c.d/n` (`--allow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Net {
    /// The network's address (host bits cleared).
    pub address: Ipv4Addr,
    /// The prefix length, 0 to 32.
    pub prefix_len: u8,
}

impl FromStr for Ipv4Net {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("invalid network {text:?}: want a.b.c.d/n or a.b.c.d");
        let (addr, len) = text.split_once('/').unwrap_or((text, "32"));
        let address: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix_len: u8 = len.parse().ok().filter(|l| *l <= 32).ok_or_else(bad)?;
        let mask = u32::MAX
            .checked_shl(32 - u32::from(prefix_len))
            .unwrap_or(0);
        Ok(Self {
            address: Ipv4Addr::from(u32::from(address) & mask),
            prefix_len,
        })
    }
}

impl TryFrom<String> for Ipv4Net {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<Ipv4Net> for String {
    fn from(net: Ipv4Net) -> String {
        net.to_string()
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

/// `--net nat`: the guest gets a way out through the host.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nat {
    /// The guest's DNS servers (empty: the host's own that it can reach).
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// The only networks the guest may reach beyond the host (empty: any).
    #[serde(default)]
    pub allow: Vec<Ipv4Net>,
}

/// What the host set up for one sandbox's network: the link's address on the TAP, the
/// nftables table, the published ports. Dropping it removes the table and closes the
/// ports (the TAP goes with the VM).
pub struct HostNet {
    /// The link.
    pub link: GuestNet,
    /// The guest's DNS servers.
    pub dns: Vec<Ipv4Addr>,
    rules: Option<Rules>,
    _proxies: Option<Proxies>,
}

impl HostNet {
    /// The host's side of `config`'s network for the VM's first card (of `taps`): the link, stale
    /// tables of killed sandboxes removed, this one's table (NAT or isolation), its
    /// published ports.
    pub fn set_up(taps: &[String], config: &SandboxConfig) -> Result<Self, NetError> {
        let link = configure_host_side(taps)?;
        nat::remove_stale(&link.tap);
        let (rules, dns) = match &config.nat {
            Some(nat) => {
                let dns = match nat.dns.is_empty() {
                    true => super::dns::host_servers(),
                    false => nat.dns.clone(),
                };
                let egress = Egress {
                    allow: nat.allow.clone(),
                    dns: dns.clone(),
                };
                (Some(nat::install_nat(&link, &egress)?), dns)
            }
            None => (nat::install_isolation(&link), Vec::new()),
        };
        let proxies = match config.publish.is_empty() {
            true => None,
            false => Some(Proxies::start(&config.publish, link.guest)?),
        };
        Ok(Self {
            link,
            dns,
            rules,
            _proxies: proxies,
        })
    }

    /// The name of the sandbox's nftables table, if it has one.
    pub fn table(&self) -> Option<&str> {
        self.rules.as_ref().map(Rules::table)
    }
}

/// Checks that `config` asks for NAT, ports or DNS only with a network.
pub fn validate(config: &SandboxConfig) -> Result<(), NetError> {
    let wants = config.nat.is_some() || !config.publish.is_empty();
    match wants && !config.network {
        true => Err(NetError::NoNetwork),
        false => Ok(()),
    }
}

/// The addresses of one sandbox's host/guest link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNet {
    /// The TAP on the host.
    pub tap: String,
    /// The host's end (the TAP's address), the guest's gateway.
    pub host: Ipv4Addr,
    /// The guest's address on eth0.
    pub guest: Ipv4Addr,
    /// Prefix length of the link.
    pub prefix_len: u8,
}

impl GuestNet {
    /// The link of the TAP `tap` whose interface index is `ifindex`.
    pub fn for_ifindex(tap: &str, ifindex: u32) -> Self {
        let network = u32::from(LINK_NETWORK) + (ifindex % LINKS) * 4;
        Self {
            tap: tap.to_string(),
            host: Ipv4Addr::from(network + 1),
            guest: Ipv4Addr::from(network + 2),
            prefix_len: LINK_PREFIX_LEN,
        }
    }

    /// The link's network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.host) & u32::from(self.netmask()))
    }

    /// The link's netmask.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX << (32 - u32::from(self.prefix_len)))
    }

    /// The first of `addresses` (interface, address) that lies in this link.
    pub fn conflict<'a>(
        &self,
        addresses: &'a [(String, Ipv4Addr)],
    ) -> Option<&'a (String, Ipv4Addr)> {
        let mask = u32::from(self.netmask());
        let network = u32::from(self.network());
        addresses
            .iter()
            .find(|(_, address)| u32::from(*address) & mask == network)
    }
}

/// Give the VM's first TAP its host address and bring it up; returns the link. Fails
/// when another interface already has an address in the link's /30.
pub fn configure_host_side(taps: &[String]) -> Result<GuestNet, NetError> {
    configure_tap(taps.first().ok_or(NetError::NoTap)?)
}

/// Give `tap` the host address of its link and bring it up; returns the link.
pub fn configure_tap(tap: &str) -> Result<GuestNet, NetError> {
    let index = ifconfig::ifindex(tap).map_err(|source| NetError::Index {
        tap: tap.to_string(),
        source,
    })?;
    let link = GuestNet::for_ifindex(tap, index);
    let addresses = ifconfig::ipv4_addresses().map_err(NetError::Addresses)?;
    if let Some((interface, address)) = link.conflict(&addresses) {
        return Err(NetError::InUse {
            network: link.network(),
            tap: tap.to_string(),
            interface: interface.clone(),
            address: *address,
        });
    }
    ifconfig::set_ipv4_up(tap, link.host, link.netmask()).map_err(|source| {
        NetError::Configure {
            tap: tap.to_string(),
            address: link.host,
            source,
        }
    })?;
    Ok(link)
}

/// Ask the agent to configure the guest's end of `link` (with `mac` first, for a guest
/// restored from a snapshot, and `dns` for its resolv.conf) and wait for its answer.
/// Right after the handshake, so no other frame can come first.
pub fn configure_guest(
    conn: &mut UnixStream,
    link: &GuestNet,
    mac: Option<String>,
    dns: Vec<Ipv4Addr>,
) -> Result<(), NetError> {
    let request = Message::Network {
        interface: GUEST_INTERFACE.into(),
        address: link.guest,
        prefix_len: link.prefix_len,
        gateway: link.host,
        mac,
        dns,
    };
    write_message(conn, &request)?;
    match read_message(conn)? {
        Message::NetworkReady => Ok(()),
        Message::Error { message } => Err(NetError::Guest(message)),
        other => {
            Err(ProtocolError::Unexpected(format!("{other:?} instead of NetworkReady")).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn ifindex_5_gets_the_sixth_slash_30() {
        let link = GuestNet::for_ifindex("husk0", 5);
        assert_eq!(
            (link.network(), link.host, link.guest, link.prefix_len),
            (
                addr("10.213.0.20"),
                addr("10.213.0.21"),
                addr("10.213.0.22"),
                30
            )
        );
    }

    #[test]
    fn ifindex_wraps_within_the_slash_16() {
        let link = GuestNet::for_ifindex("husk0", 16384 + 64);
        assert_eq!(link.host, addr("10.213.1.1"));
        let last = GuestNet::for_ifindex("husk0", 16383);
        assert_eq!(
            (last.host, last.guest),
            (addr("10.213.255.253"), addr("10.213.255.254"))
        );
    }

    #[test]
    fn networks_parse_with_host_bits_cleared_and_a_bare_address_is_a_slash_32() {
        let net: Ipv4Net = "192.0.2.77/24".parse().unwrap();
        assert_eq!(net.to_string(), "192.0.2.0/24");
        assert_eq!(
            "10.1.2.3".parse::<Ipv4Net>().unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert_eq!(
            "0.0.0.0/0".parse::<Ipv4Net>().unwrap().to_string(),
            "0.0.0.0/0"
        );
        assert!("10.0.0.0/33".parse::<Ipv4Net>().is_err());
        assert!("example.com".parse::<Ipv4Net>().is_err());
    }

    #[test]
    fn netmask_of_the_link_is_slash_30() {
        assert_eq!(
            GuestNet::for_ifindex("husk0", 1).netmask(),
            addr("255.255.255.252")
        );
    }

    #[test]
    fn address_inside_the_link_is_a_conflict() {
        let link = GuestNet::for_ifindex("husk0", 5);
        let addresses = vec![
            ("lo".to_string(), addr("127.0.0.1")),
            ("eth9".to_string(), addr("10.213.0.23")),
        ];
        assert_eq!(
            link.conflict(&addresses),
            Some(&("eth9".to_string(), addr("10.213.0.23")))
        );
    }

    #[test]
    fn neighbouring_links_are_no_conflict() {
        let link = GuestNet::for_ifindex("husk0", 5);
        let addresses = vec![
            ("husk1".to_string(), addr("10.213.0.17")),
            ("husk2".to_string(), addr("10.213.0.25")),
        ];
        assert_eq!(link.conflict(&addresses), None);
    }

    #[test]
    fn conflict_error_names_the_subnet_and_the_interface() {
        let err = NetError::InUse {
            network: addr("10.213.0.20"),
            tap: "husk3".into(),
            interface: "eth9".into(),
            address: addr("10.213.0.21"),
        };
        let text = err.to_string();
        assert!(text.contains("10.213.0.20/30"), "{text}");
        assert!(text.contains("eth9 has 10.213.0.21"), "{text}");
    }

    #[test]
    fn tap_gets_the_host_address_and_a_second_claim_of_its_link_conflicts() {
        let tap = crate::devices::virtio::net::Tap::open(None).unwrap();
        let link = configure_tap(tap.name()).unwrap();
        let addresses = ifconfig::ipv4_addresses().unwrap();
        assert!(
            addresses.contains(&(tap.name().to_string(), link.host)),
            "{addresses:?}"
        );
        let again = configure_tap(tap.name()).unwrap_err().to_string();
        assert!(
            again.contains(&format!("{} has {}", tap.name(), link.host)),
            "{again}"
        );
    }

    #[test]
    fn guest_is_sent_network_and_ready_ends_the_exchange() {
        let (mut host, mut agent) = UnixStream::pair().unwrap();
        let link = GuestNet::for_ifindex("husk0", 5);
        let peer = std::thread::spawn(move || {
            let request = read_message(&mut agent).unwrap();
            write_message(&mut agent, &Message::NetworkReady).unwrap();
            request
        });
        let dns = vec![addr("10.99.0.2")];
        configure_guest(&mut host, &link, Some("02:00:00:00:00:01".into()), dns).unwrap();
        assert_eq!(
            peer.join().unwrap(),
            Message::Network {
                interface: "eth0".into(),
                address: addr("10.213.0.22"),
                prefix_len: 30,
                gateway: addr("10.213.0.21"),
                mac: Some("02:00:00:00:00:01".into()),
                dns: vec![addr("10.99.0.2")],
            }
        );
    }

    #[test]
    fn guest_error_is_reported_with_its_message() {
        let (mut host, mut agent) = UnixStream::pair().unwrap();
        let peer = std::thread::spawn(move || {
            read_message(&mut agent).unwrap();
            let message = "no such device".to_string();
            write_message(&mut agent, &Message::Error { message }).unwrap();
        });
        let link = GuestNet::for_ifindex("husk0", 1);
        let err = configure_guest(&mut host, &link, None, vec![]).unwrap_err();
        peer.join().unwrap();
        assert!(err.to_string().contains("no such device"), "{err}");
    }
}
