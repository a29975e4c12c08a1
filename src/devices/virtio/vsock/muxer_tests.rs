//! Tests of the vsock muxer with in-memory queues and real Unix sockets.
use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use vm_memory::GuestAddress;

use super::*;
use crate::devices::virtio::descriptor::test_util::*;
use crate::devices::virtio::vsock::connection::BUF_ALLOC;

const CID: u64 = 3;
const RXBUF: u64 = 0x10000;

pub(super) fn uds() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    std::env::temp_dir().join(format!("husk-vsock-{}-{n}.sock", std::process::id()))
}

fn muxer() -> Muxer {
    Muxer::new(&VsockConfig::new(CID, uds())).unwrap()
}

/// A guest packet header from guest port `src` to host port `dst`.
pub(super) fn guest(op: u16, src: u32, dst: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: src,
        dst_port: dst,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 65536,
        ..Default::default()
    }
}

/// Give the muxer one 4 KiB RX buffer; returns the packet it put there, if any.
fn rx_one(m: &mut Muxer, mem: &GuestMemoryMmap) -> Option<(Header, Vec<u8>)> {
    let (mock, mut q) = queue(mem, 0, 16);
    mock.add_desc_chains(&[w(RXBUF, 4096)], 0).unwrap();
    m.process_rx(&mut q, mem).unwrap();
    let (_, len) = Some(used(&mock, 0)).filter(|_| mock.used().idx().load() == 1)?;
    let mut raw = [0u8; HDR_LEN];
    vm_memory::Bytes::read_slice(mem, &mut raw, GuestAddress(RXBUF)).unwrap();
    let mut data = vec![0u8; len as usize - HDR_LEN];
    vm_memory::Bytes::read_slice(mem, &mut data, GuestAddress(RXBUF + HDR_LEN as u64)).unwrap();
    Some((Header::from_bytes(&raw), data))
}

/// A host client that sent `CONNECT 1024`; returns it and the muxer's token for it.
fn host_client(m: &mut Muxer) -> (UnixStream, u32) {
    let mut client = UnixStream::connect(&m.uds).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    client.write_all(b"CONNECT 1024\n").unwrap();
    m.accept();
    let token = newest_stream(m).expect("the accepted client is readable");
    m.on_stream_event(token, true, false);
    (client, token)
}

/// The token of the newest host socket that is ready (a new socket is writable at
/// once, so every socket the muxer just opened shows up).
pub(super) fn newest_stream(m: &Muxer) -> Option<u32> {
    let ready = m.ready().into_iter().map(|(token, _)| token);
    ready.filter(|&t| t >= FIRST_STREAM_TOKEN).max()
}

/// A host-initiated connection the guest accepted; returns the client and host port.
pub(super) fn established(m: &mut Muxer, mem: &GuestMemoryMmap) -> (UnixStream, u32) {
    let (client, port, _) = established_with_token(m, mem);
    (client, port)
}

/// Like [`established`], with the muxer's token of the host socket.
fn established_with_token(m: &mut Muxer, mem: &GuestMemoryMmap) -> (UnixStream, u32, u32) {
    let (client, token) = host_client(m);
    let (req, _) = rx_one(m, mem).unwrap();
    m.guest_packet(&guest(OP_RESPONSE, 1024, req.src_port), &[]);
    let mut line = String::new();
    BufReader::new(&client).read_line(&mut line).unwrap();
    (client, req.src_port, token)
}

#[test]
fn connect_line_sends_request_to_guest_port() {
    let (mut m, mem) = (muxer(), memory());
    host_client(&mut m);
    let (h, _) = rx_one(&mut m, &mem).unwrap();
    assert_eq!(
        (h.op, h.src_cid, h.dst_cid, h.dst_port),
        (OP_REQUEST, HOST_CID, CID, 1024)
    );
    assert_eq!(h.buf_alloc, BUF_ALLOC);
}

#[test]
fn guest_response_sends_ok_line_to_host_client() {
    let (mut m, mem) = (muxer(), memory());
    let (client, _) = host_client(&mut m);
    let (req, _) = rx_one(&mut m, &mem).unwrap();
    m.guest_packet(&guest(OP_RESPONSE, 1024, req.src_port), &[]);
    let mut line = String::new();
    BufReader::new(&client).read_line(&mut line).unwrap();
    assert_eq!(line, format!("OK {}\n", req.src_port));
}

#[test]
fn bad_connect_line_closes_client() {
    let (mut m, _mem) = (muxer(), memory());
    let mut client = UnixStream::connect(&m.uds).unwrap();
    client.write_all(b"HELLO\n").unwrap();
    m.accept();
    let token = newest_stream(&m).unwrap();
    m.on_stream_event(token, true, false);
    assert_eq!(m.sockets_held(), 0);
    assert_eq!(client.read(&mut [0u8; 8]).unwrap(), 0);
}

#[test]
fn guest_data_reaches_host_client() {
    let (mut m, mem) = (muxer(), memory());
    let (mut client, port) = established(&mut m, &mem);
    let mut h = guest(OP_RW, 1024, port);
    h.len = 5;
    m.guest_packet(&h, b"hello");
    let mut out = [0u8; 5];
    client.read_exact(&mut out).unwrap();
    assert_eq!(&out, b"hello");
}

#[test]
fn host_data_reaches_guest_as_rw_packet() {
    let (mut m, mem) = (muxer(), memory());
    let (mut client, port) = established(&mut m, &mem);
    client.write_all(b"ping").unwrap();
    let (h, data) = rx_one(&mut m, &mem).unwrap();
    assert_eq!(
        (h.op, h.src_port, h.dst_port, h.len),
        (OP_RW, port, 1024, 4)
    );
    assert_eq!(data, b"ping");
}

#[test]
fn host_data_is_capped_by_guest_credit_which_is_asked_for_once_per_tick() {
    let (mut m, mem) = (muxer(), memory());
    let (mut client, port) = established(&mut m, &mem);
    let mut h = guest(OP_CREDIT_UPDATE, 1024, port);
    h.buf_alloc = 3;
    m.guest_packet(&h, &[]);
    client.write_all(b"ping").unwrap();
    let (first, _) = rx_one(&mut m, &mem).unwrap();
    let (second, _) = rx_one(&mut m, &mem).unwrap();
    assert_eq!((first.op, first.len), (OP_RW, 3));
    assert_eq!(second.op, OP_CREDIT_REQUEST);
    // The guest answers with the same credit: no second request bounces back.
    m.guest_packet(&h, &[]);
    assert!(rx_one(&mut m, &mem).is_none());
    // A housekeeping tick allows one more.
    m.expire(std::time::Instant::now());
    assert_eq!(rx_one(&mut m, &mem).unwrap().0.op, OP_CREDIT_REQUEST);
    assert!(rx_one(&mut m, &mem).is_none());
    // New credit from the guest: the rest of the data flows.
    h.fwd_cnt = 3;
    m.guest_packet(&h, &[]);
    let (third, data) = rx_one(&mut m, &mem).unwrap();
    assert_eq!((third.op, data.as_slice()), (OP_RW, &b"g"[..]));
}

#[test]
fn header_only_rx_buffer_goes_back_empty_and_data_waits_for_the_next() {
    let (mut m, mem) = (muxer(), memory());
    let (mut client, _) = established(&mut m, &mem);
    client.write_all(b"ping").unwrap();
    let (mock, mut q) = queue(&mem, 0, 16);
    mock.add_desc_chains(&[w(RXBUF, HDR_LEN as u32)], 0)
        .unwrap();
    let drained = m.process_rx(&mut q, &mem).unwrap();
    assert_eq!((drained.used, used(&mock, 0).1), (1, 0));
    let (h, data) = rx_one(&mut m, &mem).unwrap();
    assert_eq!((h.op, data.as_slice()), (OP_RW, &b"ping"[..]));
}

#[test]
fn host_eof_sends_shutdown_send() {
    let (mut m, mem) = (muxer(), memory());
    let (client, _) = established(&mut m, &mem);
    drop(client);
    let (h, _) = rx_one(&mut m, &mem).unwrap();
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
}

#[test]
fn guest_connect_to_listening_host_port_gets_response() {
    let (mut m, mem) = (muxer(), memory());
    let path = format!("{}_52", m.uds.display());
    let _host = UnixListener::bind(&path).unwrap();
    m.guest_packet(&guest(OP_REQUEST, 2000, 52), &[]);
    let (h, _) = rx_one(&mut m, &mem).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RESPONSE, 52, 2000));
    assert_eq!(m.connection_count(), 1);
}

#[test]
fn guest_connect_to_absent_host_port_gets_rst() {
    let (mut m, mem) = (muxer(), memory());
    m.guest_packet(&guest(OP_REQUEST, 2000, 53), &[]);
    let (h, _) = rx_one(&mut m, &mem).unwrap();
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RST, 53, 2000));
}

#[test]
fn packet_for_unknown_connection_gets_rst() {
    let (mut m, mem) = (muxer(), memory());
    m.guest_packet(&guest(OP_RW, 2000, 99), b"x");
    let (h, _) = rx_one(&mut m, &mem).unwrap();
    assert_eq!(h.op, OP_RST);
}

#[test]
fn packet_with_foreign_source_cid_is_dropped() {
    let (mut m, mem) = (muxer(), memory());
    let mut h = guest(OP_REQUEST, 2000, 99);
    h.src_cid = 7;
    m.guest_packet(&h, &[]);
    assert_eq!(rx_one(&mut m, &mem), None);
}

/// Send `count` full RW packets from guest port 1024 to host port `port`.
fn flood(m: &mut Muxer, port: u32, count: usize) {
    let big = vec![0u8; MAX_PKT_DATA];
    let h = Header {
        len: MAX_PKT_DATA as u32,
        ..guest(OP_RW, 1024, port)
    };
    (0..count).for_each(|_| m.guest_packet(&h, &big));
}

/// Operations of everything waiting for the guest.
fn rx_ops(m: &mut Muxer, mem: &GuestMemoryMmap) -> Vec<u16> {
    std::iter::from_fn(|| rx_one(m, mem).map(|(h, _)| h.op)).collect()
}

/// Give every host socket of `m` the smallest send buffer: a host reader that falls
/// behind at once, whatever `net.core.wmem_max` allows (see `SEND_BUFFER`).
fn slow_host_sockets(m: &Muxer) {
    m.conns.values().for_each(|c| {
        crate::devices::virtio::guest_io::set_send_buffer(&c.stream, 0).unwrap();
    });
}

#[test]
fn guest_sending_past_credit_gets_rst() {
    let (mut m, mem) = (muxer(), memory());
    let (_client, port) = established(&mut m, &mem);
    slow_host_sockets(&m);
    flood(&mut m, port, 2 * BUF_ALLOC as usize / MAX_PKT_DATA + 4);
    assert_eq!(m.connection_count(), 0);
    assert!(rx_ops(&mut m, &mem).contains(&OP_RST));
}

#[test]
fn guest_full_shutdown_resets_and_closes() {
    let (mut m, mem) = (muxer(), memory());
    let (_client, port) = established(&mut m, &mem);
    let h = Header {
        flags: SHUTDOWN_BOTH,
        ..guest(OP_SHUTDOWN, 1024, port)
    };
    m.guest_packet(&h, &[]);
    let (rst, _) = rx_one(&mut m, &mem).unwrap();
    assert_eq!(rst.op, OP_RST);
    assert_eq!(m.connection_count(), 0);
}

#[test]
fn guest_close_delivers_bytes_the_host_socket_could_not_take_yet_then_resets() {
    let (mut m, mem) = (muxer(), memory());
    let (mut client, port, token) = established_with_token(&mut m, &mem);
    slow_host_sockets(&m);
    // Fill the host socket: up to the host's credit, in 4 KiB packets, until bytes wait.
    let chunk: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
    let mut sent = 0usize;
    while sent < BUF_ALLOC as usize {
        let mut h = guest(OP_RW, 1024, port);
        h.len = chunk.len() as u32;
        m.guest_packet(&h, &chunk);
        sent += chunk.len();
        if m.conns.values().any(|c| c.pending_to_host() > 0) {
            break;
        }
    }
    assert!(m.conns.values().any(|c| c.pending_to_host() > 0));
    let close = Header {
        flags: SHUTDOWN_BOTH,
        ..guest(OP_SHUTDOWN, 1024, port)
    };
    m.guest_packet(&close, &[]);
    // The bytes still wait: no RST yet, the connection stays.
    assert_eq!(m.connection_count(), 1);
    assert!(!rx_ops(&mut m, &mem).contains(&OP_RST));
    // The host reads; each writable event moves more, and the last one ends it.
    client.set_nonblocking(true).unwrap();
    let mut received = Vec::new();
    let mut buf = vec![0u8; 65536];
    for _ in 0..1000 {
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                m.on_stream_event(token, false, true);
            }
            Err(e) => panic!("host read: {e}"),
        }
    }
    assert_eq!(received.len(), sent);
    assert!(received.chunks(4096).all(|c| c == &chunk[..]));
    assert_eq!(m.connection_count(), 0);
    assert!(rx_ops(&mut m, &mem).contains(&OP_RST));
}

#[test]
fn credit_request_gets_credit_update() {
    let (mut m, mem) = (muxer(), memory());
    let (_client, port) = established(&mut m, &mem);
    m.guest_packet(&guest(OP_CREDIT_REQUEST, 1024, port), &[]);
    let (h, _) = rx_one(&mut m, &mem).unwrap();
    assert_eq!((h.op, h.buf_alloc), (OP_CREDIT_UPDATE, BUF_ALLOC));
}

#[test]
fn tx_packet_with_oversized_length_gets_rst() {
    let (mut m, mem) = (muxer(), memory());
    let h = Header {
        len: 1 << 20,
        ..guest(OP_RW, 2000, 99)
    };
    vm_memory::Bytes::write_slice(&mem, &h.to_bytes(), GuestAddress(0x20000)).unwrap();
    let (mock, mut q) = queue(&mem, 0x8000, 16);
    mock.add_desc_chains(&[r(0x20000, HDR_LEN as u32)], 0)
        .unwrap();
    m.process_tx(&mut q, &mem).unwrap();
    let (rst, _) = rx_one(&mut m, &mem).unwrap();
    assert_eq!(rst.op, OP_RST);
}

#[test]
fn rx_buffer_smaller_than_header_is_returned_empty_and_packet_kept() {
    let (mut m, mem) = (muxer(), memory());
    m.guest_packet(&guest(OP_RW, 2000, 99), b"x");
    let (mock, mut q) = queue(&mem, 0, 16);
    mock.add_desc_chains(&[w(RXBUF, 8)], 0).unwrap();
    m.process_rx(&mut q, &mem).unwrap();
    assert_eq!(used(&mock, 0), (0, 0));
    assert!(m.has_rx());
}

#[test]
fn dropping_muxer_removes_socket_file() {
    let m = muxer();
    let path = m.uds.clone();
    drop(m);
    assert!(!path.exists());
}

#[test]
fn tx_chain_with_writable_buffer_is_dropped_silently() {
    let (mut m, mem) = (muxer(), memory());
    let h = guest(OP_REQUEST, 2000, 99);
    vm_memory::Bytes::write_slice(&mem, &h.to_bytes(), GuestAddress(0x20000)).unwrap();
    let (mock, mut q) = queue(&mem, 0x8000, 16);
    mock.add_desc_chains(&linked(&[r(0x20000, HDR_LEN as u32), w(0x21000, 8)], 0), 0)
        .unwrap();
    m.process_tx(&mut q, &mem).unwrap();
    assert_eq!(used(&mock, 0), (0, 0));
    assert!(!m.has_rx());
}

#[test]
fn tx_chain_outside_memory_is_a_queue_error() {
    let (mut m, mem) = (muxer(), memory());
    let (mock, mut q) = queue(&mem, 0x8000, 16);
    mock.add_desc_chains(&[r(0x4000_0000, HDR_LEN as u32)], 0)
        .unwrap();
    assert!(m.process_tx(&mut q, &mem).is_err());
}

#[test]
fn rx_chain_with_readable_buffer_is_returned_empty() {
    let (mut m, mem) = (muxer(), memory());
    m.guest_packet(&guest(OP_RW, 2000, 99), b"x");
    let (mock, mut q) = queue(&mem, 0, 16);
    mock.add_desc_chains(&[r(RXBUF, 4096)], 0).unwrap();
    m.process_rx(&mut q, &mem).unwrap();
    assert_eq!(used(&mock, 0), (0, 0));
}

/// Make the muxer queue `n` RST packets for the guest.
fn queue_rsts(m: &mut Muxer, n: usize) {
    let h = guest(OP_RW, 2000, 99);
    (0..n).for_each(|_| m.guest_packet(&h, &[]));
}

#[test]
fn too_many_control_packets_throttle_tx() {
    let (mut m, mem) = (muxer(), memory());
    queue_rsts(&mut m, MAX_CTRL);
    let (mock, mut q) = queue(&mem, 0x8000, 16);
    mock.add_desc_chains(&[r(0x20000, HDR_LEN as u32)], 0)
        .unwrap();
    m.process_tx(&mut q, &mem).unwrap();
    assert!(m.tx_throttled);
    assert_eq!(mock.used().idx().load(), 0);
}

#[test]
fn unanswered_host_connect_is_reset_after_timeout() {
    let (mut m, mem) = (muxer(), memory());
    let (mut client, _) = host_client(&mut m);
    rx_one(&mut m, &mem).unwrap();
    m.expire(std::time::Instant::now() + CONNECT_TIMEOUT);
    let (rst, _) = rx_one(&mut m, &mem).unwrap();
    assert_eq!(rst.op, OP_RST);
    assert_eq!(m.connection_count(), 0);
    assert_eq!(client.read(&mut [0u8; 8]).unwrap(), 0);
}

#[test]
fn answered_host_connect_survives_timeout() {
    let (mut m, mem) = (muxer(), memory());
    let (_client, _port) = established(&mut m, &mem);
    m.expire(std::time::Instant::now() + CONNECT_TIMEOUT);
    assert_eq!(m.connection_count(), 1);
}

#[test]
fn silent_host_client_is_dropped_after_timeout() {
    let (mut m, _mem) = (muxer(), memory());
    let mut client = UnixStream::connect(&m.uds).unwrap();
    m.accept();
    m.expire(std::time::Instant::now() + CONNECT_TIMEOUT);
    assert_eq!(m.sockets_held(), 0);
    assert_eq!(client.read(&mut [0u8; 8]).unwrap(), 0);
}

/// Apply random guest packets, then drain what the muxer wants to send.
fn replay(m: &mut Muxer, mem: &GuestMemoryMmap, pkts: &[(u16, u32, u32, u32, u32, u32)]) {
    for &(op, src, dst, flags, buf_alloc, fwd_cnt) in pkts {
        let h = Header {
            flags,
            buf_alloc,
            fwd_cnt,
            len: 3,
            ..guest(op, src, dst)
        };
        m.guest_packet(&h, b"abc");
    }
    let _ = rx_ops(m, mem);
}

proptest::proptest! {
    #[test]
    fn random_guest_packet_sequences_never_panic(
        pkts in proptest::collection::vec(
            (0u16..9, 0u32..3, 0u32..3, 0u32..4, proptest::prelude::any::<u32>(), proptest::prelude::any::<u32>()),
            0..40,
        )
    ) {
        let (mut m, mem) = (muxer(), memory());
        let _host = UnixListener::bind(format!("{}_1", m.uds.display())).unwrap();
        replay(&mut m, &mem, &pkts);
        let _ = std::fs::remove_file(format!("{}_1", m.uds.display()));
        proptest::prop_assert!(m.connection_count() <= 9);
    }
}
