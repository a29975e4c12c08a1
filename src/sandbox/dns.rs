//! The DNS servers a `--net nat` guest gets when none are given (`--dns`): the host's
//! own, from `/etc/resolv.conf`, less those on loopback (the guest cannot reach the
//! host's 127.0.0.0/8). A host whose resolver is a local stub (systemd-resolved's
//! 127.0.0.53) has its upstream servers in `/run/systemd/resolve/resolv.conf`, which
//! is read then, as docker does.

use std::net::Ipv4Addr;
use std::path::Path;

/// The host's resolver configuration.
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// systemd-resolved's list of upstream servers.
const RESOLVED_UPSTREAM: &str = "/run/systemd/resolve/resolv.conf";

/// The IPv4 `nameserver`s of a resolv.conf text, in order.
pub fn nameservers(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|addr| addr.parse().ok())
        .collect()
}

/// The host's DNS servers a guest can reach (none when the host has only loopback
/// ones, with a warning saying so).
pub fn host_servers() -> Vec<Ipv4Addr> {
    let read = |path: &str| std::fs::read_to_string(Path::new(path)).unwrap_or_default();
    let own = nameservers(&read(RESOLV_CONF));
    let mut usable: Vec<Ipv4Addr> = own.iter().copied().filter(|a| !a.is_loopback()).collect();
    if usable.is_empty() && !own.is_empty() {
        usable = nameservers(&read(RESOLVED_UPSTREAM))
            .into_iter()
            .filter(|a| !a.is_loopback())
            .collect();
    }
    if usable.is_empty() {
        log::warn!(
            "the host has no DNS server a guest can reach in {RESOLV_CONF} (only loopback ones, or none): \
             the sandbox gets no DNS; pass --dns"
        );
    }
    usable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_are_read_in_order_skipping_comments_and_ipv6() {
        let text = "# comment\nsearch example\nnameserver 10.0.0.2\nnameserver ::1\n\
                    nameserver 127.0.0.53\n  nameserver   192.0.2.1 # trailing\n";
        assert_eq!(
            nameservers(text),
            vec![
                Ipv4Addr::new(10, 0, 0, 2),
                Ipv4Addr::new(127, 0, 0, 53),
                Ipv4Addr::new(192, 0, 2, 1)
            ]
        );
    }
}
