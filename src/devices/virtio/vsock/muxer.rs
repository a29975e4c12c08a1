//! Routes vsock packets between the guest queues and host Unix sockets.
//!
//! The muxer owns the listening socket, the connections and a queue of control
//! packets for the guest. It never touches epoll: sockets it opens or closes are
//! reported as [`FdChange`]s, which the event handler applies (a socket is only
//! dropped after it left the epoll set). Its queue processing runs on any guest
//! memory, so tests drive it with in-memory queues and real socket pairs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::config::VsockConfig;
use super::connection::{ConnError, ConnState, Connection};
use super::packet::*;
use crate::devices::virtio::descriptor::{read_bytes, total_len, write_bytes, Chain};
use crate::devices::virtio::queues::{add_used, drain, needs_notification, pop, rearm, unpop};
use crate::devices::virtio::queues::{Drained, QueueError};

/// Event data of the listening socket.
pub const LISTENER_TOKEN: u32 = 0x101;
const FIRST_STREAM_TOKEN: u32 = 0x1000;
/// Largest payload of one packet (Linux uses 64 KiB buffers).
pub const MAX_PKT_DATA: usize = 64 * 1024;
/// Most descriptors in one packet.
const MAX_DESCRIPTORS: usize = 64;
/// Control packets that may wait for RX buffers before TX processing pauses.
pub const MAX_CTRL: usize = 1024;
/// Most connections at once.
pub const MAX_CONNS: usize = 1024;
const MAX_CONNECT_LINE: usize = 32;
const FIRST_LOCAL_PORT: u32 = 1 << 30;
const TX_BUDGET: usize = 256;
/// How long a host client may take to send its CONNECT line, and the guest to
/// answer a host-initiated REQUEST. Generous: a guest under emulation or on a loaded
/// host can take seconds to answer, and a timeout that fires first makes every retry
/// fail the same way.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const RX_BUDGET: usize = 256;

/// Errors creating the muxer.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// The host socket could not be bound.
    #[error("cannot listen on vsock socket {path}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// A socket the event loop must start or stop watching.
#[derive(Debug)]
pub enum FdChange {
    /// Watch `fd` (edge-triggered, in and out) with event data `token`.
    Add {
        /// The socket.
        fd: RawFd,
        /// Event data.
        token: u32,
    },
    /// Stop watching this socket, then drop it.
    Remove(UnixStream),
}

type Key = (u32, u32);

/// A host client that has not finished its `CONNECT <port>\n` line.
#[derive(Debug)]
struct Pending {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

/// The host side of a vsock device.
#[derive(Debug)]
pub struct Muxer {
    cid: u64,
    uds: PathBuf,
    listener: UnixListener,
    conns: BTreeMap<Key, Connection>,
    tokens: HashMap<u32, Key>,
    pending: HashMap<u32, Pending>,
    ctrl: VecDeque<Header>,
    fd_changes: Vec<FdChange>,
    next_token: u32,
    next_local_port: u32,
    last_rx: Option<Key>,
    /// TX processing stopped because too many control packets wait.
    pub tx_throttled: bool,
}

enum RxSource {
    Ctrl,
    Conn(Key),
}

impl Muxer {
    /// Listen on `config.uds` for host clients.
    pub fn new(config: &VsockConfig) -> Result<Self, MuxerError> {
        let bind = |source| MuxerError::Bind {
            path: config.uds.clone(),
            source,
        };
        let listener = UnixListener::bind(&config.uds).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        Ok(Self {
            cid: config.cid,
            uds: config.uds.clone(),
            listener,
            conns: BTreeMap::new(),
            tokens: HashMap::new(),
            pending: HashMap::new(),
            ctrl: VecDeque::new(),
            fd_changes: Vec::new(),
            next_token: FIRST_STREAM_TOKEN,
            next_local_port: FIRST_LOCAL_PORT,
            last_rx: None,
            tx_throttled: false,
        })
    }

    /// The listening socket (the event handler watches it for input).
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Sockets opened or closed since the last call.
    pub fn take_fd_changes(&mut self) -> Vec<FdChange> {
        std::mem::take(&mut self.fd_changes)
    }

    /// Whether packets wait for the guest.
    pub fn has_rx(&self) -> bool {
        !self.ctrl.is_empty() || self.conns.values().any(|c| self.can_send(c))
    }

    /// A report for a guest that hangs: every connection's credit and buffers, and
    /// what waits for the guest.
    pub fn describe(&self) -> String {
        let throttled = if self.tx_throttled { ", TX paused" } else { "" };
        let mut out = format!(
            "vsock: {} connection(s), {} host client(s) before CONNECT, {} control \
             packet(s) for the guest{throttled}",
            self.conns.len(),
            self.pending.len(),
            self.ctrl.len()
        );
        for conn in self.conns.values() {
            out.push_str("\n  ");
            out.push_str(&conn.describe());
        }
        out
    }

    /// Drop every connection (device or transport reset).
    pub fn reset(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        keys.into_iter().for_each(|k| self.remove(k));
        let pending = std::mem::take(&mut self.pending);
        self.fd_changes
            .extend(pending.into_values().map(|p| FdChange::Remove(p.stream)));
        self.ctrl.clear();
        self.tx_throttled = false;
    }

    /// Drop host clients that never sent their CONNECT line and host-initiated
    /// connections the guest never answered (RST to the guest), as of `now`; let
    /// connections the guest gives no credit ask for it once more.
    pub fn expire(&mut self, now: Instant) {
        let late: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            if let Some(p) = self.pending.remove(&token) {
                self.fd_changes.push(FdChange::Remove(p.stream));
            }
        }
        let unanswered: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        unanswered.into_iter().for_each(|k| self.reset_conn(k));
        self.conns
            .values_mut()
            .for_each(Connection::retry_credit_request);
    }

    fn token(&mut self) -> u32 {
        let t = self.next_token;
        self.next_token = self.next_token.wrapping_add(1).max(FIRST_STREAM_TOKEN);
        t
    }

    fn remove(&mut self, key: Key) {
        if let Some(conn) = self.conns.remove(&key) {
            self.tokens.retain(|_, k| *k != key);
            self.fd_changes.push(FdChange::Remove(conn.stream));
        }
    }

    /// Reset `key`: RST to the guest and close the host socket.
    fn reset_conn(&mut self, key: Key) {
        if let Some(conn) = self.conns.get_mut(&key) {
            self.ctrl.push_back(conn.header(OP_RST, self.cid));
        }
        self.remove(key);
    }

    fn rst_reply(&self, hdr: &Header) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Default::default()
        }
    }

    /// Accept every waiting host client.
    pub fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() || self.pending.len() >= MAX_CONNS {
                        continue;
                    }
                    let token = self.token();
                    let fd = stream.as_raw_fd();
                    let (line, deadline) = (Vec::new(), Instant::now() + CONNECT_TIMEOUT);
                    let pending = Pending {
                        stream,
                        line,
                        deadline,
                    };
                    self.pending.insert(token, pending);
                    self.fd_changes.push(FdChange::Add { fd, token });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        log::warn!("vsock: accept on {}: {e}", self.uds.display());
                    }
                    return;
                }
            }
        }
    }

    /// A host socket with event data `token` became readable and/or writable.
    pub fn on_stream_event(&mut self, token: u32, readable: bool, writable: bool) {
        if self.pending.contains_key(&token) {
            self.read_connect_line(token);
            return;
        }
        let Some(&key) = self.tokens.get(&token) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        conn.readable |= readable;
        if writable {
            let flushed = conn.flush_to_host();
            self.after_flush(key, flushed);
        }
    }

    /// Read `CONNECT <port>\n` byte by byte, so no payload byte is consumed.
    fn read_connect_line(&mut self, token: u32) {
        let Some(p) = self.pending.get_mut(&token) else {
            return;
        };
        let mut byte = [0u8; 1];
        let done = loop {
            match p.stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break Some(true),
                Ok(1) if p.line.len() < MAX_CONNECT_LINE => p.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => break Some(false),
            }
        };
        let Some(complete) = done else {
            return;
        };
        let Some(p) = self.pending.remove(&token) else {
            return;
        };
        let port = std::str::from_utf8(&p.line)
            .ok()
            .and_then(|l| l.strip_prefix("CONNECT "))
            .and_then(|n| n.trim().parse::<u32>().ok())
            .filter(|_| complete && self.conns.len() < MAX_CONNS);
        match port {
            Some(port) => self.host_connect(token, p.stream, port),
            None => self.fd_changes.push(FdChange::Remove(p.stream)),
        }
    }

    fn host_connect(&mut self, token: u32, stream: UnixStream, peer_port: u32) {
        let mut local_port = self.next_local_port;
        while self.conns.contains_key(&(local_port, peer_port)) {
            local_port = local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
        }
        self.next_local_port = local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
        let key = (local_port, peer_port);
        let mut conn = Connection::new(stream, local_port, peer_port, ConnState::Connecting);
        conn.deadline = Some(Instant::now() + CONNECT_TIMEOUT);
        self.ctrl.push_back(conn.header(OP_REQUEST, self.cid));
        self.conns.insert(key, conn);
        self.tokens.insert(token, key);
    }

    fn guest_connect(&mut self, hdr: &Header) {
        let path = format!("{}_{}", self.uds.display(), hdr.dst_port);
        let stream = match UnixStream::connect(&path) {
            Ok(s) if self.conns.len() < MAX_CONNS && s.set_nonblocking(true).is_ok() => s,
            Ok(_) => return self.ctrl.push_back(self.rst_reply(hdr)),
            Err(e) => {
                log::debug!("vsock: guest connect to {path}: {e}");
                return self.ctrl.push_back(self.rst_reply(hdr));
            }
        };
        let key = (hdr.dst_port, hdr.src_port);
        let token = self.token();
        let fd = stream.as_raw_fd();
        let mut conn = Connection::new(stream, hdr.dst_port, hdr.src_port, ConnState::Established);
        conn.update_peer_credit(hdr);
        self.ctrl.push_back(conn.header(OP_RESPONSE, self.cid));
        self.conns.insert(key, conn);
        self.tokens.insert(token, key);
        self.fd_changes.push(FdChange::Add { fd, token });
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.uds) {
            log::warn!("vsock: cannot remove {}: {e}", self.uds.display());
        }
    }
}

#[path = "muxer_queues.rs"]
mod queues;

#[cfg(test)]
#[path = "muxer_tests.rs"]
mod tests;
