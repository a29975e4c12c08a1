//! The sandbox network (`husk run --net`): a /30 link between the host and the guest
//! over the TAP husk creates for the VM. The host's end gets the first address of a /30
//! in 10.213.0.0/16 picked from the TAP's interface index (unique among live
//! interfaces, so concurrent sandboxes get different links); the agent gives the guest's
//! eth0 the second address and routes everything through the host. Reaching beyond the
//! host needs forwarding or NAT there, which husk leaves alone; there is no DNS.

use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;

use husk_protocol::{read_message, write_message, Message, ProtocolError};

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
/// restored from a snapshot) and wait for its answer. Right after the handshake, so no
/// other frame can come first.
pub fn configure_guest(
    conn: &mut UnixStream,
    link: &GuestNet,
    mac: Option<String>,
) -> Result<(), NetError> {
    let request = Message::Network {
        interface: GUEST_INTERFACE.into(),
        address: link.guest,
        prefix_len: link.prefix_len,
        gateway: link.host,
        mac,
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
        configure_guest(&mut host, &link, Some("02:00:00:00:00:01".into())).unwrap();
        assert_eq!(
            peer.join().unwrap(),
            Message::Network {
                interface: "eth0".into(),
                address: addr("10.213.0.22"),
                prefix_len: 30,
                gateway: addr("10.213.0.21"),
                mac: Some("02:00:00:00:00:01".into()),
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
        let err = configure_guest(&mut host, &GuestNet::for_ifindex("husk0", 1), None).unwrap_err();
        peer.join().unwrap();
        assert!(err.to_string().contains("no such device"), "{err}");
    }
}
