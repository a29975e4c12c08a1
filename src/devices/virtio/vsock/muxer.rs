//! Routes vsock packets between the guest queues and host Unix sockets.
//!
//! The muxer owns the listening socket, the connections, a queue of control packets
//! for the guest, and the device's [`Poller`]: every socket it opens is watched there
//! at once, and every socket it closes leaves it first (see `poller.rs` for why the
//! device has an epoll of its own). What the guest can make it hold is bounded by the
//! configured budget (`max_sockets`): host sockets of connections and host clients
//! before their CONNECT line together, and with them the buffers each connection may
//! fill ([`BUF_ALLOC`](super::connection::BUF_ALLOC) at most). A guest connection
//! beyond the budget gets an RST before any socket is opened; a host client beyond it
//! waits in the listener's backlog (the listener is not watched) until a socket is
//! released. Its queue processing runs on any guest memory, so tests drive it with
//! in-memory queues and real socket pairs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use super::config::VsockConfig;
use super::connection::{ConnError, ConnState, Connection};
use super::packet::*;
use super::poller::Poller;
use crate::devices::virtio::descriptor::{read_bytes, total_len, write_bytes, Chain};
use crate::devices::virtio::queues::{add_used, drain, needs_notification, pop, rearm, unpop};
use crate::devices::virtio::queues::{Drained, QueueError};

/// Event data of the listening socket.
pub const LISTENER_TOKEN: u32 = 0x101;
/// Tokens from here on name host sockets; lower ones are the device's own fds.
pub const FIRST_STREAM_TOKEN: u32 = 0x1000;
/// Largest payload of one packet (Linux uses 64 KiB buffers).
pub const MAX_PKT_DATA: usize = 64 * 1024;
/// Most descriptors in one packet.
const MAX_DESCRIPTORS: usize = 64;
/// Control packets that may wait for RX buffers before TX processing pauses.
pub const MAX_CTRL: usize = 1024;
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
    /// The device's epoll could not be created or set up.
    #[error("vsock epoll")]
    Poll(#[source] io::Error),
}

/// What a host stream is watched for: edge-triggered input, output and peer shutdown.
const STREAM_EVENTS: EventSet = EventSet::IN
    .union(EventSet::OUT)
    .union(EventSet::EDGE_TRIGGERED)
    .union(EventSet::READ_HANG_UP);

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
    poller: Poller,
    /// Most host sockets held at once (connections and host clients before CONNECT).
    max_sockets: usize,
    /// The listener is not watched because the budget is spent.
    listener_paused: bool,
    /// The guest met the budget once (logged at warn level only the first time).
    budget_warned: bool,
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
        let poller = Poller::new().map_err(MuxerError::Poll)?;
        let listener = UnixListener::bind(&config.uds).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let fd = listener.as_raw_fd();
        let watched = poller.watch(fd, LISTENER_TOKEN, EventSet::IN);
        // The socket file exists now: the muxer's drop removes it, also on this error.
        let muxer = Self {
            cid: config.cid,
            uds: config.uds.clone(),
            listener,
            conns: BTreeMap::new(),
            tokens: HashMap::new(),
            pending: HashMap::new(),
            ctrl: VecDeque::new(),
            poller,
            max_sockets: config.max_sockets,
            listener_paused: false,
            budget_warned: false,
            next_token: FIRST_STREAM_TOKEN,
            next_local_port: FIRST_LOCAL_PORT,
            last_rx: None,
            tx_throttled: false,
        };
        watched.map_err(MuxerError::Poll)?;
        Ok(muxer)
    }

    /// The device's epoll: the muxer's sockets are in it, and the device adds its
    /// queue eventfds and timer (tokens below [`FIRST_STREAM_TOKEN`]).
    pub fn poller(&self) -> &Poller {
        &self.poller
    }

    /// Events waiting in the device's epoll (see [`Poller::ready`]).
    pub fn ready(&self) -> Vec<(u32, EventSet)> {
        self.poller.ready()
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Host sockets held now: connections and host clients before their CONNECT line.
    pub fn sockets_held(&self) -> usize {
        self.conns.len() + self.pending.len()
    }

    fn has_room(&self) -> bool {
        self.sockets_held() < self.max_sockets
    }

    /// Stop watching `stream` and close it.
    fn release(&mut self, stream: UnixStream) {
        self.poller.unwatch(stream.as_raw_fd());
        drop(stream);
        if self.listener_paused && self.has_room() {
            self.watch_listener(EventSet::IN);
        }
    }

    /// Watch the listener for `set` (empty: paused while the budget is spent).
    fn watch_listener(&mut self, set: EventSet) {
        let fd = self.listener.as_raw_fd();
        match self.poller.rewatch(fd, LISTENER_TOKEN, set) {
            Ok(()) => self.listener_paused = set.is_empty(),
            Err(e) => log::warn!(
                "vsock: cannot change the watch of {}: {e}",
                self.uds.display()
            ),
        }
    }

    /// Say once per device that the guest reached its budget, then quietly.
    fn note_budget_spent(&mut self, what: &str) {
        let (held, max) = (self.sockets_held(), self.max_sockets);
        match std::mem::replace(&mut self.budget_warned, true) {
            false => log::warn!(
                "vsock {}: {held} of {max} host sockets in use; {what} refused (and \
                 further ones, quietly)",
                self.uds.display()
            ),
            true => log::debug!(
                "vsock {}: budget of {max} spent; {what} refused",
                self.uds.display()
            ),
        }
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
            "vsock: {} connection(s), {} host client(s) before CONNECT ({} of {} host \
             sockets), {} control packet(s) for the guest{throttled}",
            self.conns.len(),
            self.pending.len(),
            self.sockets_held(),
            self.max_sockets,
            self.ctrl.len()
        );
        for conn in self.conns.values() {
            out.push_str("\n  ");
            out.push_str(&conn.describe());
        }
        out
    }

    /// Close every connection and host client now, with their buffers (device or
    /// transport reset); only the listener stays.
    pub fn reset(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        keys.into_iter().for_each(|k| self.remove(k));
        let pending = std::mem::take(&mut self.pending);
        pending.into_values().for_each(|p| self.release(p.stream));
        self.tokens.clear();
        self.ctrl = VecDeque::new();
        self.last_rx = None;
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
                self.release(p.stream);
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

    /// A token no live socket has (they wrap after 2^32 - 4096 sockets).
    fn token(&mut self) -> u32 {
        loop {
            let t = self.next_token;
            self.next_token = self.next_token.wrapping_add(1).max(FIRST_STREAM_TOKEN);
            if !self.tokens.contains_key(&t) && !self.pending.contains_key(&t) {
                return t;
            }
        }
    }

    fn remove(&mut self, key: Key) {
        if let Some(conn) = self.conns.remove(&key) {
            self.tokens.retain(|_, k| *k != key);
            self.release(conn.stream);
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

    /// Accept waiting host clients while the budget has room; when it has none, stop
    /// watching the listener (the next release watches it again).
    pub fn accept(&mut self) {
        loop {
            if !self.has_room() {
                self.note_budget_spent("host client");
                return self.watch_listener(EventSet::empty());
            }
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let token = self.token();
                    let fd = stream.as_raw_fd();
                    if let Err(e) = self.poller.watch(fd, token, STREAM_EVENTS) {
                        log::warn!("vsock: cannot watch a host client: {e}");
                        continue;
                    }
                    let (line, deadline) = (Vec::new(), Instant::now() + CONNECT_TIMEOUT);
                    let pending = Pending {
                        stream,
                        line,
                        deadline,
                    };
                    self.pending.insert(token, pending);
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
            self.announce_credit();
        }
    }

    /// A host socket with event data `token` reported a hang-up (or an error): its
    /// connection reads until the end of the stream.
    pub fn on_stream_hang_up(&mut self, token: u32) {
        let Some(key) = self.tokens.get(&token) else {
            return;
        };
        if let Some(conn) = self.conns.get_mut(key) {
            conn.hung_up = true;
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
        // The socket moves from `pending` to `conns`: the budget counts it the same.
        let port = std::str::from_utf8(&p.line)
            .ok()
            .and_then(|l| l.strip_prefix("CONNECT "))
            .and_then(|n| n.trim().parse::<u32>().ok())
            .filter(|_| complete);
        match port {
            Some(port) => self.host_connect(token, p.stream, port),
            None => self.release(p.stream),
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

    /// A guest REQUEST to host port `hdr.dst_port`: connect to `<uds>_<port>` if the
    /// budget has room (checked before the socket exists), else RST.
    fn guest_connect(&mut self, hdr: &Header) {
        if !self.has_room() {
            self.note_budget_spent("guest connection");
            return self.ctrl.push_back(self.rst_reply(hdr));
        }
        let path = format!("{}_{}", self.uds.display(), hdr.dst_port);
        let stream = match UnixStream::connect(&path) {
            Ok(s) if s.set_nonblocking(true).is_ok() => s,
            Ok(_) => return self.ctrl.push_back(self.rst_reply(hdr)),
            Err(e) => {
                log::debug!("vsock: guest connect to {path}: {e}");
                return self.ctrl.push_back(self.rst_reply(hdr));
            }
        };
        let token = self.token();
        if let Err(e) = self.poller.watch(stream.as_raw_fd(), token, STREAM_EVENTS) {
            log::warn!("vsock: cannot watch the socket of {path}: {e}");
            return self.ctrl.push_back(self.rst_reply(hdr));
        }
        let key = (hdr.dst_port, hdr.src_port);
        let mut conn = Connection::new(stream, hdr.dst_port, hdr.src_port, ConnState::Established);
        conn.update_peer_credit(hdr);
        self.ctrl.push_back(conn.header(OP_RESPONSE, self.cid));
        self.conns.insert(key, conn);
        self.tokens.insert(token, key);
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

#[cfg(test)]
#[path = "muxer_budget_tests.rs"]
mod budget_tests;

#[cfg(test)]
#[path = "muxer_stream_tests.rs"]
mod stream_tests;
