//! The guest's network link (the host's `Network` request): an IPv4 address on one
//! interface, the interface and `lo` up, the default route through the host, and the
//! DNS servers the host gives in the guest's `/etc/resolv.conf`. Containers share the
//! guest's network namespace, so they all see this link; each container started
//! afterwards gets a copy of that `/etc/resolv.conf` in its writable layer (as docker
//! gives one), never through a symlink of the image's.

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

/// The guest's resolv.conf once the host gave DNS servers.
static RESOLV_CONF: Mutex<Option<String>> = Mutex::new(None);

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

/// The resolv.conf of `servers` (at most 3 are read by resolvers, MAXNS).
pub fn resolv_conf(servers: &[Ipv4Addr]) -> Option<String> {
    (!servers.is_empty()).then(|| {
        let mut text = String::from("# written by husk-agent: the host's DNS servers\n");
        for server in servers.iter().take(3) {
            text.push_str(&format!("nameserver {server}\n"));
        }
        text
    })
}

/// Writes the guest's `/etc/resolv.conf` for `servers` and keeps it for containers
/// started from now on; no servers leaves everything as it is.
pub fn set_dns(servers: &[Ipv4Addr]) -> Result<(), NetworkError> {
    let Some(text) = resolv_conf(servers) else {
        return Ok(());
    };
    let step = |step| {
        move |source| NetworkError::Step {
            step,
            interface: "/etc/resolv.conf".into(),
            source,
        }
    };
    fs::create_dir_all("/etc").map_err(step("creating /etc"))?;
    write_new(Path::new("/etc/resolv.conf"), &text).map_err(step("writing"))?;
    *RESOLV_CONF.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
    Ok(())
}

/// Gives the container root `root` (mounted, not yet entered) the guest's
/// resolv.conf, if the host gave DNS servers. The image's own entry is replaced, and
/// never written through: a symlink there (or an `etc` that is one) could point
/// anywhere in the agent's view. Best effort: a failure is logged.
pub fn install_resolv_conf(root: &Path) {
    let Some(text) = RESOLV_CONF
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    else {
        return;
    };
    let etc = root.join("etc");
    let result = match fs::symlink_metadata(&etc) {
        Ok(meta) if !meta.is_dir() => Err(std::io::Error::other("/etc is not a directory")),
        Ok(_) => write_new(&etc.join("resolv.conf"), &text),
        Err(_) => fs::create_dir(&etc).and_then(|()| write_new(&etc.join("resolv.conf"), &text)),
    };
    if let Err(e) = result {
        crate::console::log(&format!(
            "no /etc/resolv.conf in the container at {}: {e}",
            root.display()
        ));
    }
}

/// Replaces `path` (whatever it was, a symlink included, never followed) with a new
/// file holding `text`.
fn write_new(path: &Path, text: &str) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => return Err(std::io::Error::other("it is a directory")),
        Ok(_) => fs::remove_file(path)?,
        Err(_) => {}
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.write_all(text.as_bytes())
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
    fn resolv_conf_lists_at_most_three_servers() {
        let servers = [ip(1), ip(2), ip(3), ip(4)];
        let text = resolv_conf(&servers).expect("some");
        assert_eq!(text.matches("nameserver ").count(), 3);
        assert!(text.contains("nameserver 10.213.0.1\n"), "{text}");
        assert_eq!(resolv_conf(&[]), None);
    }

    #[test]
    fn a_symlinked_resolv_conf_is_replaced_not_followed() {
        let dir = tempfile::tempdir().expect("tmp");
        let outside = dir.path().join("outside");
        fs::write(&outside, "keep").expect("write");
        let link = dir.path().join("resolv.conf");
        std::os::unix::fs::symlink(&outside, &link).expect("symlink");
        write_new(&link, "nameserver 10.0.0.1\n").expect("write");
        assert_eq!(fs::read_to_string(&outside).expect("outside"), "keep");
        assert_eq!(
            fs::read_to_string(&link).expect("new"),
            "nameserver 10.0.0.1\n"
        );
    }

    #[test]
    fn missing_interface_fails_naming_it() {
        let err = configure("husk-nosuch0", ip(6), 30, ip(5)).unwrap_err();
        assert!(err.to_string().contains("husk-nosuch0"), "{err}");
    }
}
