//! One vsock stream between a guest port and a host Unix socket: state and credit.
//!
//! Credit (virtio 1.2 §5.10.6.3): each side advertises its receive buffer size
//! (`buf_alloc`) and how much of it it has consumed (`fwd_cnt`); a sender may have at
//! most `buf_alloc - (sent - fwd_cnt)` bytes in flight. Guest bytes the host socket
//! cannot take right away wait in `tx_buf`, which never exceeds [`BUF_ALLOC`]; a guest
//! that sends beyond its credit gets the connection reset.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use super::packet::{Header, HOST_CID, TYPE_STREAM};
use crate::devices::virtio::descriptor::{read_bytes, total_len, Buffer};
use crate::devices::virtio::guest_io::{set_send_buffer, IoVecs};

/// Receive buffer the host side advertises per connection.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Send buffer asked for on each host socket: more than [`BUF_ALLOC`] with the
/// kernel's overhead per buffer, so a host reader that keeps up takes every packet
/// the guest's credit allows straight from guest memory, and `tx_buf` (a copy, then a
/// `send` on the next writable event) is only for a reader that falls behind. The
/// kernel caps it at `net.core.wmem_max` (208 KiB on Debian) and doubles that: 416 KiB.
pub const SEND_BUFFER: usize = 2 * BUF_ALLOC as usize;
/// Forwarded bytes after which the host announces its credit unasked.
const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnState {
    /// Host-initiated: REQUEST sent to the guest, waiting for RESPONSE.
    Connecting,
    /// Data flows both ways.
    Established,
    /// The host socket reached EOF; SHUTDOWN(SEND) was sent to the guest.
    HostClosed,
}

/// Errors moving guest bytes to the host socket.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The guest sent more than its credit allows.
    #[error("guest port {port} exceeded its credit")]
    Credit {
        /// Guest port.
        port: u32,
    },
    /// The host socket failed.
    #[error("host socket of guest port {port}")]
    Io {
        /// Guest port.
        port: u32,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// A connection between guest port `peer_port` and host port `local_port`.
#[derive(Debug)]
pub struct Connection {
    /// The host socket (non-blocking).
    pub stream: UnixStream,
    /// Host-side port.
    pub local_port: u32,
    /// Guest-side port.
    pub peer_port: u32,
    /// Life-cycle state.
    pub state: ConnState,
    /// The host socket may have bytes to read (edge-triggered readiness seen).
    pub readable: bool,
    /// The host socket reported a hang-up: it stays readable until a read finds the
    /// end of the stream, however much the last read took (see
    /// [`Connection::note_read`]).
    pub hung_up: bool,
    /// A CREDIT_REQUEST went out and the guest has not announced new credit since. The
    /// guest answers a request even when it has nothing new, so asking again on that
    /// answer would bounce packets for as long as its reader is slow; the housekeeping
    /// tick allows one more request instead (see [`Connection::retry_credit_request`]).
    pub credit_requested: bool,
    /// The guest will not receive more (SHUTDOWN with RCV).
    pub peer_no_rcv: bool,
    /// The guest will not send more: shut the host socket's write side once drained.
    pub peer_no_send: bool,
    /// When an unanswered host-initiated request gives up.
    pub deadline: Option<Instant>,
    tx_buf: VecDeque<u8>,
    /// Bytes the next read takes RX buffers for ([`Connection::read_want`]).
    read_hint: usize,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
}

impl Connection {
    /// A connection over `stream` (already non-blocking). Its send buffer is raised
    /// so that the socket can take the guest's whole credit window
    /// ([`SEND_BUFFER`]).
    pub fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: ConnState) -> Self {
        if let Err(e) = set_send_buffer(&stream, SEND_BUFFER) {
            // The default buffer works; guest bytes then wait in `tx_buf` more often.
            log::debug!("vsock: SO_SNDBUF for guest port {peer_port}: {e}");
        }
        Self {
            stream,
            local_port,
            peer_port,
            state,
            readable: state == ConnState::Established,
            hung_up: false,
            credit_requested: false,
            peer_no_rcv: false,
            peer_no_send: false,
            deadline: None,
            tx_buf: VecDeque::new(),
            read_hint: 0,
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
        }
    }

    /// Take the guest's credit fields from any packet it sent on this connection. New
    /// credit ends an outstanding request.
    pub fn update_peer_credit(&mut self, hdr: &Header) {
        if hdr.buf_alloc != self.peer_buf_alloc || hdr.fwd_cnt != self.peer_fwd_cnt.0 {
            self.credit_requested = false;
        }
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
    }

    /// Allow another CREDIT_REQUEST if the guest still gives no credit (called once per
    /// housekeeping tick): a guest that never announces credit unasked stalls the
    /// stream for at most a tick, and one that does costs nothing.
    pub fn retry_credit_request(&mut self) {
        if self.peer_credit() == 0 {
            self.credit_requested = false;
        }
    }

    /// Bytes the host may still send to the guest.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Count `n` bytes sent to the guest.
    pub fn record_sent(&mut self, n: u32) {
        self.rx_cnt += Wrapping(n);
    }

    /// A header from the host side of this connection to the guest `cid`.
    pub fn header(&mut self, op: u16, cid: u64) -> Header {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
            ..Default::default()
        }
    }

    /// Whether enough was forwarded since the last announcement to tell the guest.
    pub fn needs_credit_update(&self) -> bool {
        (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD
    }

    /// Send guest bytes to the host socket, buffering what it cannot take now.
    pub fn send_to_host(&mut self, data: &[u8]) -> Result<(), ConnError> {
        let port = self.peer_port;
        if self.tx_buf.len() + data.len() > BUF_ALLOC as usize {
            return Err(ConnError::Credit { port });
        }
        self.tx_buf.extend(data);
        self.flush_to_host()
    }

    /// Send a packet's payload straight from the guest's buffers `bufs` to the host
    /// socket (one `writev`); only what the socket cannot take now is copied into the
    /// connection's buffer. Bytes already buffered go first, so then all is buffered.
    pub fn send_from_guest(
        &mut self,
        mem: &GuestMemoryMmap,
        bufs: &[Buffer],
    ) -> Result<(), ConnError> {
        let port = self.peer_port;
        let len = total_len(bufs);
        if self.tx_buf.len() + len > BUF_ALLOC as usize {
            return Err(ConnError::Credit { port });
        }
        let mut sent = 0;
        if self.tx_buf.is_empty() {
            let io = |source| ConnError::Io { port, source };
            let mut iov = IoVecs::new(mem, bufs).map_err(|e| io(io::Error::other(e)))?;
            while !iov.is_empty() {
                match iov.write_to(&self.stream, None) {
                    Ok(0) => return Err(io(io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        iov.advance(n);
                        sent += n;
                        self.fwd_cnt += Wrapping(u32::try_from(n).expect("below BUF_ALLOC"));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io(e)),
                }
            }
        }
        if sent < len {
            let mut rest = vec![0u8; len - sent];
            read_bytes(mem, bufs, sent, &mut rest).map_err(|e| ConnError::Io {
                port,
                source: io::Error::other(e),
            })?;
            self.tx_buf.extend(rest);
        }
        Ok(())
    }

    /// Write buffered guest bytes until the host socket would block.
    pub fn flush_to_host(&mut self) -> Result<(), ConnError> {
        let port = self.peer_port;
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match self.stream.write(front) {
                Ok(0) => {
                    let source = io::ErrorKind::WriteZero.into();
                    return Err(ConnError::Io { port, source });
                }
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt += Wrapping(u32::try_from(n).expect("below BUF_ALLOC"));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(ConnError::Io { port, source }),
            }
        }
        if self.peer_no_send {
            // Best effort: the host reader sees EOF; a failure here changes nothing.
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }

    /// One line for a hang report: state and both directions' credit.
    pub fn describe(&self) -> String {
        let flag = |on: bool, text: &str| {
            if on {
                format!(", {text}")
            } else {
                String::new()
            }
        };
        format!(
            "host port {} <-> guest port {}: {:?}; to the guest: {} bytes sent, credit {} of \
             {}{}{}; from the guest: {} bytes forwarded ({} announced), {} waiting for the \
             host socket{}{}",
            self.local_port,
            self.peer_port,
            self.state,
            self.rx_cnt,
            self.peer_credit(),
            self.peer_buf_alloc,
            flag(self.readable, "host socket readable"),
            flag(self.credit_requested, "credit requested"),
            self.fwd_cnt,
            self.last_fwd_cnt_sent,
            self.tx_buf.len(),
            flag(self.peer_no_rcv, "guest receives no more"),
            flag(self.peer_no_send, "guest sends no more"),
        )
    }

    /// Bytes waiting for the host socket.
    pub fn pending_to_host(&self) -> usize {
        self.tx_buf.len()
    }

    /// How many bytes of RX buffers to take for the next read: twice what the last
    /// read brought (a burst that keeps coming gets room to grow into; a 64-byte message
    /// takes one buffer), never less than one byte. Buffers taken beyond what the read
    /// fills go back to the ring.
    pub fn read_want(&self) -> usize {
        self.read_hint.max(1)
    }

    /// Note a read of `n` bytes (n > 0) into buffers with room for `room`: a read
    /// that left room emptied the host socket (a Unix stream socket's `recvmsg` copies
    /// until the buffers are full or nothing waits), so the socket is not tried again
    /// (a `readv` that would fail with EAGAIN, and the RX buffers popped for it) until
    /// bytes that came later raise a new edge-triggered event. Not after a hang-up,
    /// whose event came already: the end of the stream is found by reading until a
    /// read returns 0. This replaces a `FIONREAD` per read: one system call less for
    /// each message the host sends.
    pub fn note_read(&mut self, n: usize, room: usize) {
        self.readable = n >= room || self.hung_up;
        self.read_hint = n.saturating_mul(2);
    }

    /// Read from the host socket straight into guest buffers (one `readv`).
    pub fn read_into_guest(&mut self, iov: &IoVecs) -> io::Result<usize> {
        iov.read_from(&self.stream, None)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::devices::virtio::vsock::packet::OP_RW;

    fn pair() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Connection::new(a, 1000, 2000, ConnState::Established), b)
    }

    #[test]
    fn credit_is_buffer_minus_in_flight() {
        let (mut c, _b) = pair();
        c.update_peer_credit(&Header {
            buf_alloc: 100,
            fwd_cnt: 10,
            ..Default::default()
        });
        c.record_sent(30);
        assert_eq!(c.peer_credit(), 80);
    }

    #[test]
    fn credit_never_goes_negative() {
        let (mut c, _b) = pair();
        c.update_peer_credit(&Header {
            buf_alloc: 10,
            fwd_cnt: 0,
            ..Default::default()
        });
        c.record_sent(30);
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn sent_bytes_reach_host_and_count_forwarded() {
        let (mut c, mut b) = pair();
        c.send_to_host(b"hello").unwrap();
        let mut out = [0u8; 5];
        b.read_exact(&mut out).unwrap();
        assert_eq!(&out, b"hello");
        assert_eq!(c.header(OP_RW, 3).fwd_cnt, 5);
    }

    #[test]
    fn sending_past_buffer_is_a_credit_error() {
        let (mut c, _b) = pair();
        set_send_buffer(&c.stream, 0).unwrap();
        let big = vec![0u8; BUF_ALLOC as usize];
        assert!(c.send_to_host(&big).is_ok());
        assert!(matches!(
            c.send_to_host(&big),
            Err(ConnError::Credit { port: 2000 })
        ));
    }

    #[test]
    fn credit_update_is_due_after_threshold_and_cleared_by_header() {
        let (mut c, _b) = pair();
        c.send_to_host(&vec![1u8; CREDIT_UPDATE_THRESHOLD as usize])
            .unwrap();
        assert_eq!(c.pending_to_host(), 0);
        assert!(c.needs_credit_update());
        c.header(OP_RW, 3);
        assert!(!c.needs_credit_update());
    }

    #[test]
    fn a_read_that_fills_its_buffers_leaves_the_socket_readable_and_asks_for_more() {
        let (mut c, _b) = pair();
        c.note_read(4096, 4096);
        assert_eq!((c.readable, c.read_want()), (true, 8192));
    }

    #[test]
    fn a_short_read_marks_the_socket_drained_unless_it_hung_up() {
        let (mut c, _b) = pair();
        c.note_read(64, 4096);
        let drained = !c.readable;
        c.hung_up = true;
        c.note_read(64, 4096);
        assert_eq!((drained, c.readable, c.read_want()), (true, true, 128));
    }
}
