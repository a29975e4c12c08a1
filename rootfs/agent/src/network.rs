//! The guest's network link (the host's `Network` request): an IPv4 address on one
//! interface, the interface and `lo` up, the default route through the host. Containers
//! share the guest's network namespace, so they all see this link. No DNS: nothing is
//! written into images.

use std::net::Ipv4Addr;

/// Errors of configuring the link.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The request itself makes no sense.
    #[error("bad network request: {0}")]
    Invalid(String),
    /// A step failed in the kernel.
    #[error("{step} on {interface}")]
    Step {
        /// What was being done.
        step: &'static str,
        /// The interface.
        interface: String,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
}

/// The netmask of a `prefix_len`-bit prefix; None beyond 32.
pub fn netmask(prefix_len: u8) -> Option<Ipv4Addr> {
    match prefix_len {
        0 => Some(Ipv4Addr::UNSPECIFIED),
        1..=32 => Some(Ipv4Addr::from(u32::MAX << (32 - u32::from(prefix_len)))),
        _ => None,
    }
}

/// Checks that `address/prefix_len` is a usable host address and that `gateway` is
/// another host on the same link; returns the netmask.
pub fn validate(
    address: Ipv4Addr,
    prefix_len: u8,
    gateway: Ipv4Addr,
) -> Result<Ipv4Addr, NetworkError> {
    let invalid = |why: String| Err(NetworkError::Invalid(why));
    let Some(mask) = netmask(prefix_len).filter(|_| (1..=30).contains(&prefix_len)) else {
        return invalid(format!("prefix length {prefix_len} (want 1 to 30)"));
    };
    let (m, a, g) = (u32::from(mask), u32::from(address), u32::from(gateway));
    let host_part = |x: u32| x & !m;
    if host_part(a) == 0 || host_part(a) == !m {
        return invalid(format!("{address}/{prefix_len} is not a host address"));
    }
    if a & m != g & m || host_part(g) == 0 || host_part(g) == !m {
        return invalid(format!(
            "gateway {gateway} is not a host of {address}/{prefix_len}"
        ));
    }
    if a == g {
        return invalid(format!("address and gateway are both {address}"));
    }
    Ok(mask)
}

/// Gives `interface` the MAC address `mac` (`aa:bb:cc:dd:ee:ff`), if one is asked for.
pub fn set_mac(interface: &str, mac: Option<&str>) -> Result<(), NetworkError> {
    let Some(text) = mac else {
        return Ok(());
    };
    let bytes: Vec<u8> = text
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| NetworkError::Invalid(format!("mac address {text:?}")))?;
    let mac: [u8; 6] = bytes
        .try_into()
        .map_err(|_| NetworkError::Invalid(format!("mac address {text:?}")))?;
    if mac[0] & 1 != 0 {
        return Err(NetworkError::Invalid(format!(
            "mac address {text} is multicast"
        )));
    }
    husk_netif::set_mac(interface, mac).map_err(|source| NetworkError::Step {
        step: "setting the MAC address",
        interface: interface.to_string(),
        source,
    })
}

/// Configures `interface` with `address/prefix_len`, brings it and `lo` up and routes
/// everything through `gateway`. A default route left by an earlier request is kept.
pub fn configure(
    interface: &str,
    address: Ipv4Addr,
    prefix_len: u8,
    gateway: Ipv4Addr,
) -> Result<(), NetworkError> {
    let mask = validate(address, prefix_len, gateway)?;
    let step = |step: &'static str, interface: &str| {
        let interface = interface.to_string();
        move |source| NetworkError::Step {
            step,
            interface,
            source,
        }
    };
    husk_netif::set_ipv4(interface, address, mask)
        .map_err(step("setting the address", interface))?;
    husk_netif::interface_up(interface).map_err(step("bringing the link up", interface))?;
    husk_netif::interface_up("lo").map_err(step("bringing the link up", "lo"))?;
    match husk_netif::add_default_route(gateway) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other.map_err(step("adding the default route", interface)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ip(d: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, 0, d)
    }

    #[test]
    fn prefix_30_is_mask_fffffffc() {
        assert_eq!(netmask(30), Some(Ipv4Addr::new(255, 255, 255, 252)));
    }

    #[test]
    fn prefix_0_and_32_are_the_edges_and_33_is_none() {
        assert_eq!(netmask(0), Some(Ipv4Addr::UNSPECIFIED));
        assert_eq!(netmask(32), Some(Ipv4Addr::BROADCAST));
        assert_eq!(netmask(33), None);
    }

    #[test]
    fn host_and_gateway_of_one_slash_30_are_valid() {
        assert_eq!(
            validate(ip(6), 30, ip(5)).expect("valid"),
            Ipv4Addr::new(255, 255, 255, 252)
        );
    }

    #[test]
    fn gateway_outside_the_link_is_refused_naming_it() {
        let err = validate(ip(6), 30, ip(9)).unwrap_err().to_string();
        assert!(err.contains("gateway 10.213.0.9"), "{err}");
    }

    #[test]
    fn network_address_is_refused() {
        assert!(validate(ip(4), 30, ip(5)).is_err());
    }

    #[test]
    fn broadcast_gateway_is_refused() {
        assert!(validate(ip(5), 30, ip(7)).is_err());
    }

    #[test]
    fn same_address_and_gateway_is_refused() {
        assert!(validate(ip(5), 24, ip(5)).is_err());
    }

    #[test]
    fn prefix_31_is_refused() {
        assert!(validate(ip(5), 31, ip(4)).is_err());
    }

    #[test]
    fn missing_interface_fails_naming_it() {
        let err = configure("husk-nosuch0", ip(6), 30, ip(5)).unwrap_err();
        assert!(err.to_string().contains("husk-nosuch0"), "{err}");
    }
}
