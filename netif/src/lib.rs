//! IPv4 interface configuration through the classic ioctls, shared by the husk host (the
//! sandbox's TAP) and its guest agent (the guest's eth0): an interface's index, the
//! addresses on this host, an address and netmask, IFF_UP, and a default route.
#![allow(
    unsafe_code,
    reason = "if_nametoindex, getifaddrs and the SIOC* ioctls have no safe wrappers"
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

/// An AF_INET datagram socket, the handle interface and routing ioctls go through.
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
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= request.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(request)
}

/// `address` as a generic `sockaddr` holding a `sockaddr_in` (port 0).
fn sockaddr(address: Ipv4Addr) -> libc::sockaddr {
    let inet = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(address).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr and sockaddr_in are both 16 bytes of plain data; the kernel reads
    // a sockaddr whose family says how to interpret the rest.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(inet) }
}

/// Sets IFF_UP on the interface `name` (e.g. `lo`).
pub fn interface_up(name: &str) -> io::Result<()> {
    let socket = inet_socket()?;
    let mut request = ifreq(name)?;
    // SAFETY: request is a valid ifreq naming the interface; the kernel fills ifru_flags.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; the kernel only reads the request.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives the interface `name` the Ethernet address `mac` (SIOCSIFHWADDR).
pub fn set_mac(name: &str, mac: [u8; 6]) -> io::Result<()> {
    let socket = inet_socket()?;
    let mut request = ifreq(name)?;
    let mut data = [0 as libc::c_char; 14];
    for (d, b) in data.iter_mut().zip(mac) {
        *d = b as libc::c_char;
    }
    request.ifr_ifru.ifru_hwaddr = libc::sockaddr {
        sa_family: libc::ARPHRD_ETHER,
        sa_data: data,
    };
    // SAFETY: request is a valid ifreq with an Ethernet hardware address; the kernel
    // only reads it.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFHWADDR, &request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives the interface `name` the IPv4 `address` and `netmask` (SIOCSIFADDR, then
/// SIOCSIFNETMASK: setting the address resets the mask to its class default).
pub fn set_ipv4(name: &str, address: Ipv4Addr, netmask: Ipv4Addr) -> io::Result<()> {
    let socket = inet_socket()?;
    let mut request = ifreq(name)?;
    request.ifr_ifru.ifru_addr = sockaddr(address);
    // SAFETY: request is a valid ifreq with an AF_INET address; the kernel only reads it.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFADDR, &request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    request.ifr_ifru.ifru_netmask = sockaddr(netmask);
    // SAFETY: as above, with the netmask member set.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFNETMASK, &request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `struct rtentry` of `<linux/route.h>` (x86_64 layout), for SIOCADDRT.
#[repr(C)]
struct RtEntry {
    pad1: libc::c_ulong,
    dst: libc::sockaddr,
    gateway: libc::sockaddr,
    genmask: libc::sockaddr,
    flags: libc::c_ushort,
    pad2: libc::c_short,
    pad3: libc::c_ulong,
    pad4: *mut libc::c_void,
    metric: libc::c_short,
    dev: *mut libc::c_char,
    mtu: libc::c_ulong,
    window: libc::c_ulong,
    irtt: libc::c_ushort,
}

/// Adds the default route (0.0.0.0/0) through `gateway`; the kernel picks the interface
/// whose subnet holds the gateway.
pub fn add_default_route(gateway: Ipv4Addr) -> io::Result<()> {
    let socket = inet_socket()?;
    let route = RtEntry {
        pad1: 0,
        dst: sockaddr(Ipv4Addr::UNSPECIFIED),
        gateway: sockaddr(gateway),
        genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
        flags: libc::RTF_UP | libc::RTF_GATEWAY,
        pad2: 0,
        pad3: 0,
        pad4: std::ptr::null_mut(),
        metric: 0,
        dev: std::ptr::null_mut(),
        mtu: 0,
        window: 0,
        irtt: 0,
    };
    // SAFETY: route is a complete rtentry (no device name: a null rt_dev is allowed);
    // the kernel only reads it.
    if unsafe {
        libc::ioctl(
            socket.as_raw_fd(),
            libc::SIOCADDRT,
            &route as *const RtEntry,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives `name` the address and netmask, then sets IFF_UP.
pub fn set_ipv4_up(name: &str, address: Ipv4Addr, netmask: Ipv4Addr) -> io::Result<()> {
    set_ipv4(name, address, netmask)?;
    interface_up(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtentry_has_the_kernel_size() {
        // struct rtentry on x86_64: pad1 8, three sockaddrs 48, flags + pad2 4, padding
        // 4, pad3 8, pad4 8, metric 2 + padding 6, dev 8, mtu 8, window 8, irtt 2 +
        // padding 6 = 120.
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
    }

    #[test]
    fn sockaddr_holds_the_address_in_network_order() {
        let addr = sockaddr(Ipv4Addr::new(10, 213, 0, 2));
        assert_eq!(addr.sa_family, libc::AF_INET as libc::sa_family_t);
        assert_eq!(&addr.sa_data[2..6], &[10, -43, 0, 2]);
    }

    #[test]
    fn interface_name_of_16_bytes_is_refused() {
        assert!(ifreq("sixteen-bytes-xx").is_err());
    }

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
