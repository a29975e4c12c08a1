//! The sandbox network (`husk run --net`): host side of the TAP link and the guest's
//! interface configuration. Work in progress.

use super::SandboxError;

/// The addresses of one sandbox's host/guest link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNet {
    /// The host's end (the TAP's address), the guest's gateway.
    pub host: std::net::Ipv4Addr,
    /// The guest's address on eth0.
    pub guest: std::net::Ipv4Addr,
    /// Prefix length of the link.
    pub prefix_len: u8,
}

/// Give the TAP `tap` its host address and bring it up; returns the link's addresses.
pub fn configure_host_side(tap: &str) -> Result<GuestNet, SandboxError> {
    Err(SandboxError::Agent(format!(
        "networking on {tap} is not implemented yet"
    )))
}
