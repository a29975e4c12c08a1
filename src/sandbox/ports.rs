//! Published ports (`-p HOST:GUEST`): a listener on the host's port per mapping, each
//! accepted connection joined to the guest's port over the sandbox's link by two
//! copying threads. A proxy in the process that owns the sandbox, as docker's
//! `docker-proxy`, rather than DNAT rules: it serves the host's own loopback (which
//! DNAT cannot reach without `route_localnet`), needs nothing from the host's
//! firewall, and its ports close with the process however that ends. The guest sees
//! connections coming from its gateway (the host's end of the link).
#![allow(
    unsafe_code,
    reason = "shutdown(2) of a listening socket is the only way to wake its accept"
)]

use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::net::NetError;

/// How long a connection to the guest may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One `-p [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    /// The host address to listen on (all of them by default).
    pub host_ip: Ipv4Addr,
    /// The host port.
    pub host_port: u16,
    /// The guest port.
    pub guest_port: u16,
}

impl FromStr for Publish {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "invalid port mapping {text:?}: {why} (want [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp])"
            )
        };
        let mapping = match text.rsplit_once('/') {
            Some((mapping, "tcp")) => mapping,
            Some((_, proto)) => {
                return Err(bad(&format!("protocol {proto} is not supported, only tcp")))
            }
            None => text,
        };
        let parts: Vec<&str> = mapping.split(':').collect();
        let (host_ip, host, guest) = match parts.as_slice() {
            [host, guest] => (Ipv4Addr::UNSPECIFIED, *host, *guest),
            [ip, host, guest] => (
                ip.parse().map_err(|_| bad("not an IPv4 address"))?,
                *host,
                *guest,
            ),
            _ => return Err(bad("wrong number of parts")),
        };
        let port = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("ports are 1 to 65535"))
        };
        Ok(Self {
            host_ip,
            host_port: port(host)?,
            guest_port: port(guest)?,
        })
    }
}

impl std::fmt::Display for Publish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}/tcp",
            self.host_ip, self.host_port, self.guest_port
        )
    }
}

/// The listeners of a sandbox's published ports; closed when dropped.
pub struct Proxies {
    stop: Arc<AtomicBool>,
    listeners: Vec<(TcpListener, Option<JoinHandle<()>>)>,
}

impl Proxies {
    /// Listens on every mapping's host port and forwards to `guest`. Fails, naming the
    /// address, if any port cannot be had; nothing is left listening then.
    pub fn start(mappings: &[Publish], guest: Ipv4Addr) -> Result<Self, NetError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut proxies = Self {
            stop: stop.clone(),
            listeners: Vec::new(),
        };
        for mapping in mappings {
            let addr = SocketAddrV4::new(mapping.host_ip, mapping.host_port);
            let listener = TcpListener::bind(addr).map_err(|source| NetError::Publish {
                address: addr.to_string(),
                source,
            })?;
            let target = SocketAddr::from((guest, mapping.guest_port));
            let accepting = listener.try_clone().map_err(|source| NetError::Publish {
                address: addr.to_string(),
                source,
            })?;
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("husk-port-{}", mapping.host_port))
                .spawn(move || accept_loop(&accepting, target, &stop))
                .map_err(|source| NetError::Publish {
                    address: addr.to_string(),
                    source,
                })?;
            proxies.listeners.push((listener, Some(thread)));
        }
        Ok(proxies)
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for (listener, thread) in &mut self.listeners {
            // SAFETY: the fd is the listener's own, open until it is dropped below;
            // shutdown(2) on a listening socket only makes a blocked accept return.
            unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
            if let Some(thread) = thread.take() {
                drop(thread.join());
            }
        }
    }
}

fn accept_loop(listener: &TcpListener, target: SocketAddr, stop: &AtomicBool) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match conn {
            Ok(client) => {
                // A connection's own threads end with it; they are not joined.
                let spawned = std::thread::Builder::new()
                    .name("husk-port-conn".into())
                    .spawn(move || join(client, target));
                if let Err(e) = spawned {
                    log::warn!("published port to {target}: no thread for a connection: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                if !stop.load(Ordering::SeqCst) {
                    log::warn!("published port to {target}: {e}");
                }
                return;
            }
        }
    }
}

/// Copies both ways between `client` and a new connection to `target`, passing each
/// direction's end on as a half close.
fn join(client: TcpStream, target: SocketAddr) {
    let guest = match TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) {
        Ok(guest) => guest,
        Err(e) => {
            log::debug!("published port: cannot reach {target}: {e}");
            return;
        }
    };
    let (Ok(client_read), Ok(guest_write)) = (client.try_clone(), guest.try_clone()) else {
        return;
    };
    let upstream = std::thread::Builder::new()
        .name("husk-port-up".into())
        .spawn(move || pipe(client_read, guest_write));
    pipe(guest, client);
    if let Ok(upstream) = upstream {
        drop(upstream.join());
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    drop(io::copy(&mut from, &mut to));
    drop(to.shutdown(Shutdown::Write));
    drop(from.shutdown(Shutdown::Read));
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn mappings_parse_with_and_without_address_and_protocol() {
        let p: Publish = "8080:80".parse().unwrap();
        assert_eq!(
            (p.host_ip, p.host_port, p.guest_port),
            (Ipv4Addr::UNSPECIFIED, 8080, 80)
        );
        let p: Publish = "127.0.0.1:8080:80/tcp".parse().unwrap();
        assert_eq!((p.host_ip, p.host_port), (Ipv4Addr::LOCALHOST, 8080));
        assert!("8080:80/udp"
            .parse::<Publish>()
            .unwrap_err()
            .contains("udp is not supported"));
        assert!("0:80".parse::<Publish>().is_err());
        assert!("80".parse::<Publish>().is_err());
    }

    #[test]
    fn a_published_port_carries_both_ways_and_closes_with_its_proxies() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let guest_port = server.local_addr().unwrap().port();
        let echo = std::thread::spawn(move || {
            let (mut conn, _) = server.accept().unwrap();
            let mut got = Vec::new();
            conn.read_to_end(&mut got).unwrap();
            conn.write_all(&got).unwrap();
        });
        let host_port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mapping = Publish {
            host_ip: Ipv4Addr::LOCALHOST,
            host_port,
            guest_port,
        };
        let proxies = Proxies::start(&[mapping], Ipv4Addr::LOCALHOST).unwrap();
        let mut client = TcpStream::connect(("127.0.0.1", host_port)).unwrap();
        client.write_all(b"ping").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut back = String::new();
        client.read_to_string(&mut back).unwrap();
        echo.join().unwrap();
        assert_eq!(back, "ping");
        let taken = Proxies::start(&[mapping], Ipv4Addr::LOCALHOST)
            .err()
            .unwrap()
            .to_string();
        assert!(taken.contains(&format!("127.0.0.1:{host_port}")), "{taken}");
        drop(proxies);
        assert!(TcpStream::connect(("127.0.0.1", host_port)).is_err());
    }
}
