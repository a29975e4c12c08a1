//! The muxer's queue side: guest packets from TX, host packets into RX.
//!
//! Payload moves between guest buffers and host sockets without a copy of husk's own:
//! a TX data packet is written to its host socket with one `writev` from the guest's
//! buffers (only what the socket cannot take is buffered), and host data is read with
//! one `readv` into the data parts of as many RX buffers as the guest's credit and the
//! socket fill (a Linux guest posts 4 KiB RX buffers, so one call fills up to
//! [`RX_BATCH`] packets). Credit updates for the guest are sent once per TX pass, for
//! the connections that forwarded enough, not once per packet.

use super::*;
use crate::devices::virtio::descriptor::{sub_range, sub_ranges, Buffer, DescriptorError};
use crate::devices::virtio::guest_io::IoVecs;
use crate::devices::virtio::queues::unpop_many;

/// Most RX buffers one `readv` from a host socket fills.
const RX_BATCH: usize = 64;

/// Index of the RX queue.
const RX: usize = 0;
/// Index of the TX queue.
const TX: usize = 1;

fn request_error(index: usize, e: DescriptorError) -> QueueError {
    QueueError::Request {
        index,
        source: Box::new(e),
    }
}

impl Muxer {
    pub(super) fn can_send(&self, c: &Connection) -> bool {
        c.readable && c.state == ConnState::Established && !c.peer_no_rcv && c.peer_credit() > 0
    }

    /// Serve the TX queue: every guest packet is consumed (used length 0).
    pub fn process_tx(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<Drained, QueueError> {
        let budget = TX_BUDGET.min(MAX_CTRL.saturating_sub(self.ctrl.len()));
        self.tx_throttled = budget == 0;
        if budget == 0 {
            return Ok(Drained {
                used: 0,
                notify: false,
                more: false,
            });
        }
        let drained = drain(queue, mem, TX, budget, |chain| {
            let chain =
                Chain::parse(chain, mem, MAX_DESCRIPTORS).map_err(|e| request_error(TX, e))?;
            self.tx_packet(mem, &chain);
            Ok(0)
        })?;
        self.announce_credit();
        self.tx_throttled = drained.more && self.ctrl.len() >= MAX_CTRL;
        Ok(drained)
    }

    /// Tell the guest of freed buffer space on every connection that forwarded enough
    /// since its last announcement: once per pass, however many packets it took.
    pub(super) fn announce_credit(&mut self) {
        let cid = self.cid;
        for conn in self.conns.values_mut() {
            if conn.state != ConnState::Connecting && conn.needs_credit_update() {
                self.ctrl.push_back(conn.header(OP_CREDIT_UPDATE, cid));
            }
        }
    }

    /// A data packet for an established connection, sent from guest memory; false
    /// when the packet is not for one (the caller takes the general way).
    fn rw_in_place(&mut self, mem: &GuestMemoryMmap, hdr: &Header, bufs: &[Buffer]) -> bool {
        if hdr.src_cid != self.cid || hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM {
            return false;
        }
        let key = (hdr.dst_port, hdr.src_port);
        let Some(conn) = self.conns.get_mut(&key) else {
            return false;
        };
        if conn.state == ConnState::Connecting {
            return false;
        }
        conn.update_peer_credit(hdr);
        let sent = conn.send_from_guest(mem, bufs);
        self.after_flush(key, sent);
        true
    }

    /// Decode one TX chain; malformed packets are dropped (the guest gets an RST
    /// when there is a connection to name).
    fn tx_packet(&mut self, mem: &GuestMemoryMmap, chain: &Chain) {
        let mut raw = [0u8; HDR_LEN];
        if !chain.writable.is_empty() || read_bytes(mem, &chain.readable, 0, &mut raw).is_err() {
            log::debug!("vsock: malformed TX chain {} dropped", chain.head);
            return;
        }
        let hdr = Header::from_bytes(&raw);
        let len = hdr.len as usize;
        let payload = sub_range(&chain.readable, HDR_LEN, len).ok();
        let Some(payload) = payload.filter(|_| len <= MAX_PKT_DATA) else {
            log::debug!("vsock: TX packet {} has a bad length {len}", chain.head);
            return self.ctrl.push_back(self.rst_reply(&hdr));
        };
        if hdr.op == OP_RW && self.rw_in_place(mem, &hdr, &payload) {
            return;
        }
        let mut data = vec![0u8; len];
        if read_bytes(mem, &payload, 0, &mut data).is_err() {
            return self.ctrl.push_back(self.rst_reply(&hdr));
        }
        self.guest_packet(&hdr, &data);
    }

    /// Act on one packet from the guest.
    pub(in crate::devices::virtio::vsock) fn guest_packet(&mut self, hdr: &Header, data: &[u8]) {
        if hdr.src_cid != self.cid || hdr.dst_cid != HOST_CID {
            log::debug!("vsock: packet {}->{} dropped", hdr.src_cid, hdr.dst_cid);
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.type_ != TYPE_STREAM || !self.conns.contains_key(&key) {
            match hdr.op {
                OP_REQUEST if hdr.type_ == TYPE_STREAM => self.guest_connect(hdr),
                OP_RST => {}
                _ => self.ctrl.push_back(self.rst_reply(hdr)),
            }
            return;
        }
        self.conn_packet(key, hdr, data);
    }

    /// Act on a packet for the existing connection `key` (virtio 1.2 §5.10.6.5).
    fn conn_packet(&mut self, key: Key, hdr: &Header, data: &[u8]) {
        let cid = self.cid;
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        conn.update_peer_credit(hdr);
        let established = conn.state != ConnState::Connecting;
        match hdr.op {
            OP_RESPONSE if !established => {
                conn.state = ConnState::Established;
                conn.readable = true;
                conn.deadline = None;
                let line = format!("OK {}\n", conn.local_port);
                if conn.stream.write_all(line.as_bytes()).is_err() {
                    self.reset_conn(key);
                }
            }
            OP_RW if established => {
                let sent = conn.send_to_host(data);
                self.after_flush(key, sent);
            }
            // update_peer_credit above took its credit.
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => self.ctrl.push_back(conn.header(OP_CREDIT_UPDATE, cid)),
            // A guest that closes sends both flags, possibly while its last bytes still
            // wait for a slow host reader: they are delivered first (see
            // `after_flush`), and only then does the connection end.
            OP_SHUTDOWN => {
                conn.peer_no_rcv |= hdr.flags & SHUTDOWN_RCV != 0;
                conn.peer_no_send |= hdr.flags & SHUTDOWN_SEND != 0;
                let flushed = conn.flush_to_host();
                self.after_flush(key, flushed);
            }
            OP_RST => self.remove(key),
            _ => self.reset_conn(key),
        }
    }

    /// Act on the outcome of moving guest bytes to the host socket of `key`: a failed
    /// socket resets the connection; a connection the guest closed both ways ends
    /// (RST) once its last bytes reached the host socket; otherwise the guest hears of
    /// freed buffer space when enough was forwarded.
    pub(super) fn after_flush(&mut self, key: Key, flushed: Result<(), ConnError>) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        match flushed {
            Err(e) => {
                log::debug!("vsock: {e}");
                self.reset_conn(key);
            }
            Ok(()) if conn.peer_no_send && conn.peer_no_rcv => {
                if conn.pending_to_host() == 0 {
                    self.reset_conn(key);
                }
            }
            // Credit is announced by `announce_credit`, once per pass.
            Ok(()) => {}
        }
    }

    /// The next thing to send to the guest, fair among connections: the first
    /// connection after the last one served that can send, or that is blocked on the
    /// guest's credit and has not asked for more (a CREDIT_REQUEST is queued for it).
    fn next_rx_source(&mut self) -> Option<RxSource> {
        if !self.ctrl.is_empty() {
            return Some(RxSource::Ctrl);
        }
        let start = self.last_rx.map_or((0, 0), |(l, p)| (l, p.wrapping_add(1)));
        let after = self.conns.range(start..);
        let before = self.conns.range(..start);
        let (key, send) = after.chain(before).find_map(|(key, c)| {
            let blocked = c.readable && c.state == ConnState::Established && c.peer_credit() == 0;
            if blocked && !c.credit_requested && !c.peer_no_rcv {
                Some((*key, false))
            } else {
                self.can_send(c).then_some((*key, true))
            }
        })?;
        if send {
            self.last_rx = Some(key);
            return Some(RxSource::Conn(key));
        }
        let cid = self.cid;
        let c = self.conns.get_mut(&key)?;
        c.credit_requested = true;
        let request = c.header(OP_CREDIT_REQUEST, cid);
        self.ctrl.push_back(request);
        Some(RxSource::Ctrl)
    }

    /// Serve the RX queue with control packets and host data.
    pub fn process_rx(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<Drained, QueueError> {
        let mut used = 0;
        loop {
            while let Some(source) = self.next_rx_source() {
                if used >= RX_BUDGET {
                    let notify = needs_notification(queue, mem, RX)?;
                    return Ok(Drained {
                        used,
                        notify,
                        more: true,
                    });
                }
                let Some(chain) = pop(queue, mem, RX)? else {
                    break;
                };
                let head = chain.head_index();
                let chain =
                    Chain::parse(chain, mem, MAX_DESCRIPTORS).map_err(|e| request_error(RX, e))?;
                let bufs = chain.writable;
                let len = match source {
                    _ if !chain.readable.is_empty() || total_len(&bufs) < HDR_LEN => 0,
                    // No room for a byte of data: the buffer goes back empty (the driver
                    // drops it) rather than being offered to this connection forever.
                    RxSource::Conn(_) if total_len(&bufs) == HDR_LEN => 0,
                    RxSource::Ctrl => self.write_ctrl(mem, &bufs),
                    RxSource::Conn(key) => {
                        let first = RxBuf { head, bufs };
                        match self.fill_from_conn(queue, mem, key, first)? {
                            Some(n) => used += n,
                            None => unpop(queue),
                        }
                        continue;
                    }
                };
                add_used(queue, mem, RX, head, len)?;
                used += 1;
            }
            if !self.has_rx() || !rearm(queue, mem, RX)? {
                break;
            }
        }
        let notify = used > 0 && needs_notification(queue, mem, RX)?;
        Ok(Drained {
            used,
            notify,
            more: false,
        })
    }

    fn write_ctrl(&mut self, mem: &GuestMemoryMmap, bufs: &[Buffer]) -> u32 {
        let Some(hdr) = self.ctrl.pop_front() else {
            return 0;
        };
        match write_bytes(mem, bufs, 0, &hdr.to_bytes()) {
            Ok(()) => HDR_LEN as u32,
            Err(_) => 0,
        }
    }

    /// Pop more RX buffers after `first` for one read, while they can take data and
    /// their room does not cover `want` bytes (at most `credit`, the guest's); each
    /// gets its data capacity, the last ones less so that the room stays within
    /// `credit`.
    fn gather_rx(
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        first: RxBuf,
        credit: usize,
        want: usize,
    ) -> Result<Vec<(RxBuf, usize)>, QueueError> {
        let cap = |b: &RxBuf| (total_len(&b.bufs) - HDR_LEN).min(MAX_PKT_DATA);
        let mut room = cap(&first).min(credit);
        let mut batch = vec![(first, room)];
        while batch.len() < RX_BATCH && room < want.min(credit) {
            let Some(chain) = pop(queue, mem, RX)? else {
                break;
            };
            let head = chain.head_index();
            let chain =
                Chain::parse(chain, mem, MAX_DESCRIPTORS).map_err(|e| request_error(RX, e))?;
            if !chain.readable.is_empty() || total_len(&chain.writable) <= HDR_LEN {
                // Left for the loop, which returns it empty on its own.
                unpop(queue);
                break;
            }
            let buf = RxBuf {
                head,
                bufs: chain.writable,
            };
            let take = cap(&buf).min(credit - room);
            room += take;
            batch.push((buf, take));
        }
        Ok(batch)
    }

    /// Move host bytes of `key` into RX buffers, `first` and more (one `readv`); the
    /// number used, or None when the socket had nothing (every buffer is given back
    /// but `first`, which the caller gives back).
    fn fill_from_conn(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        key: Key,
        first: RxBuf,
    ) -> Result<Option<usize>, QueueError> {
        let cid = self.cid;
        let Some(conn) = self.conns.get_mut(&key) else {
            return Ok(None);
        };
        // Take about as many buffers as the last read needed: a 64-byte message does
        // not pop (and give back) a whole batch.
        let credit = conn.peer_credit() as usize;
        let batch = Self::gather_rx(queue, mem, first, credit, conn.read_want())?;
        let room: usize = batch.iter().map(|(_, take)| take).sum();
        let give_back = |queue: &mut Queue, n: usize| {
            unpop_many(queue, u16::try_from(n).expect("at most RX_BATCH"));
        };
        let mut data = Vec::with_capacity(batch.len());
        for (buf, take) in &batch {
            data.extend(sub_ranges(&buf.bufs, HDR_LEN, *take).map_err(|e| request_error(RX, e))?);
        }
        let iov = IoVecs::new(mem, &data).map_err(|e| request_error(RX, e))?;
        let hdr = match conn.read_into_guest(&iov) {
            Ok(0) => {
                conn.readable = false;
                conn.state = ConnState::HostClosed;
                let mut h = conn.header(OP_SHUTDOWN, cid);
                h.flags = SHUTDOWN_SEND;
                h
            }
            Ok(n) => {
                conn.note_read(n, room);
                let used = self.complete_rx(queue, mem, key, &batch, n)?;
                give_back(queue, batch.len() - used);
                return Ok(Some(used));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.readable = false;
                give_back(queue, batch.len() - 1);
                return Ok(None);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                give_back(queue, batch.len() - 1);
                return Ok(None);
            }
            Err(e) => {
                log::debug!("vsock: read from host port {}: {e}", key.0);
                let h = conn.header(OP_RST, cid);
                self.remove(key);
                h
            }
        };
        // A control packet in the first buffer; the others go back.
        give_back(queue, batch.len() - 1);
        let (first, _) = &batch[0];
        let len = match write_bytes(mem, &first.bufs, 0, &hdr.to_bytes()) {
            Ok(()) => HDR_LEN as u32,
            Err(_) => 0,
        };
        add_used(queue, mem, RX, first.head, len)?;
        Ok(Some(1))
    }

    /// Give the guest the `n` bytes a read put into the data parts of `batch`: each
    /// buffer that got some gets its RW header; returns how many did.
    fn complete_rx(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        key: Key,
        batch: &[(RxBuf, usize)],
        n: usize,
    ) -> Result<usize, QueueError> {
        let cid = self.cid;
        let mut left = n;
        let mut used = 0;
        for (buf, take) in batch {
            if left == 0 {
                break;
            }
            let len = left.min(*take);
            left -= len;
            let Some(conn) = self.conns.get_mut(&key) else {
                break;
            };
            let len32 = u32::try_from(len).expect("at most 64 KiB");
            conn.record_sent(len32);
            let mut h = conn.header(OP_RW, cid);
            h.len = len32;
            // Buffers were checked inside guest memory: the header always fits.
            write_bytes(mem, &buf.bufs, 0, &h.to_bytes()).map_err(|e| request_error(RX, e))?;
            add_used(queue, mem, RX, buf.head, len32 + HDR_LEN as u32)?;
            used += 1;
        }
        Ok(used)
    }
}

/// A popped RX chain's head and writable buffers.
struct RxBuf {
    head: u16,
    bufs: Vec<Buffer>,
}
