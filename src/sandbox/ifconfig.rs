//! The host-side interface ioctls of `husk run --net`: an interface's index, the IPv4
//! addresses of every interface (getifaddrs), and an address, netmask and IFF_UP for
//! the sandbox's TAP.
#![expect(
    unsafe_code,
    reason = "if_nametoindex, getifaddrs and SIOCSIF* ioctls have no safe wrappers"
)]

use std::ffi::{CStr, CString};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The index of interface `name`.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c_name = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: c_name is NUL-terminated and outlives the call, which only reads it.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(index)
}

/// Every IPv4 address on this host's interfaces (of this network namespace), with the
/// interface's name.
pub fn ipv4_addresses() -> io::Result<Vec<(String, Ipv4Addr)>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `list`; freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = Vec::new();
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: entry is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*entry };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of the list, valid until freeifaddrs.
            let family = unsafe { (*ifa.ifa_addr).sa_family };
            if i32::from(family) == libc::AF_INET {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let inet = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                // SAFETY: ifa_name is a NUL-terminated string of the list.
                let name = unsafe { CStr::from_ptr(ifa.ifa_name) };
                found.push((
                    name.to_string_lossy().into_owned(),
                    Ipv4Addr::from(u32::from_be(inet.sin_addr.s_addr)),
                ));
            }
        }
        entry = ifa.ifa_next;
    }
    // SAFETY: list came from getifaddrs and is freed once; no reference into it remains.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

/// An AF_INET datagram socket for interface ioctls.
fn inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation; the fd is owned right below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// An `ifreq` naming `name`, the rest zero.
fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.is_empty() || name.len() >= request.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    Ok(request)
}

/// `address` as a `sockaddr` holding a `sockaddr_in`.
fn sockaddr(address: Ipv4Addr) -> libc::sockaddr {
    let inet = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(address).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: both are 16 bytes of plain data; the family says how to read the rest.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(inet) }
}

/// Gives `name` the address and netmask (SIOCSIFADDR resets the mask, so it comes
/// second) and sets IFF_UP.
pub fn set_ipv4_up(name: &str, address: Ipv4Addr, netmask: Ipv4Addr) -> io::Result<()> {
    let socket = inet_socket()?;
    let fd = socket.as_raw_fd();
    let mut request = ifreq(name)?;
    request.ifr_ifru.ifru_addr = sockaddr(address);
    // SAFETY: request is a valid ifreq with an AF_INET address; the kernel only reads it.
    if unsafe { libc::ioctl(fd, libc::SIOCSIFADDR, &request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    request.ifr_ifru.ifru_netmask = sockaddr(netmask);
    // SAFETY: as above, with the netmask member set.
    if unsafe { libc::ioctl(fd, libc::SIOCSIFNETMASK, &request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel fills the flags member of this valid ifreq.
    if unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS just filled the flags member of the union.
    unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: the kernel only reads the request.
    if unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_an_index() {
        assert!(ifindex("lo").unwrap() > 0);
    }

    #[test]
    fn missing_interface_has_no_index() {
        assert!(ifindex("husk-nosuch0").is_err());
    }

    #[test]
    fn loopback_address_is_listed() {
        let addresses = ipv4_addresses().unwrap();
        assert!(
            addresses.contains(&("lo".to_string(), Ipv4Addr::LOCALHOST)),
            "{addresses:?}"
        );
    }
}
