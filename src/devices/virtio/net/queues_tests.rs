//! Tests of virtio-net frame movement with a datagram socket pair as the backend.
use std::os::unix::net::UnixDatagram;

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use crate::devices::virtio::net::header::{F_NEEDS_CSUM, GSO_TCPV4};

use super::*;
use crate::devices::rate_limiter::{Allow, Unthrottled};
use crate::devices::virtio::descriptor::test_util::*;
use crate::devices::virtio::net::header::OFFERED;

fn rx_state(offloads: Offloads) -> RxState {
    let mut st = RxState::default();
    st.readable = true;
    st.offloads = offloads;
    st
}

fn all_offloads() -> Offloads {
    Offloads::from_acked(OFFERED)
}

fn pair() -> (UnixDatagram, UnixDatagram) {
    let (a, b) = UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    (a, b)
}

/// One TX pass (budget 16, no rate limiter) that must not fail.
fn tx(q: &mut Queue, mem: &GuestMemoryMmap, dev: &mut UnixDatagram, offloads: Offloads) -> Drained {
    process_tx(q, mem, dev, offloads, 16, &mut Unthrottled).unwrap()
}

/// One RX pass (budget 16, no rate limiter).
fn rx(
    q: &mut Queue,
    mem: &GuestMemoryMmap,
    dev: &mut UnixDatagram,
    st: &mut RxState,
) -> Result<Drained, QueueError> {
    process_rx(q, mem, dev, st, 16, &mut Unthrottled)
}

/// A frame as the TAP hands it over: garbage header (to be overwritten) + payload.
fn tap_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0xee; NET_HDR_LEN];
    f.extend_from_slice(payload);
    f
}

#[test]
fn guest_frame_reaches_backend_with_zero_header() {
    let (mem, (mut dev, host)) = (memory(), pair());
    mem.write_slice(&[9u8; NET_HDR_LEN], GuestAddress(0x10000))
        .unwrap();
    mem.write_slice(b"frame", GuestAddress(0x10000 + NET_HDR_LEN as u64))
        .unwrap();
    let (mock, mut q) = queue(&mem, 0, 16);
    mock.add_desc_chains(&[r(0x10000, 17)], 0).unwrap();
    let d = tx(&mut q, &mem, &mut dev, Offloads::default());
    let mut out = [0u8; 64];
    let n = host.recv(&mut out).unwrap();
    assert_eq!(d.used, 1);
    assert_eq!(&out[..n], [&[0u8; NET_HDR_LEN][..], b"frame"].concat());
}

#[test]
fn tx_chain_with_writable_buffer_is_dropped() {
    let (mem, (mut dev, host)) = (memory(), pair());
    let (mock, mut q) = queue(&mem, 0, 16);
    mock.add_desc_chains(&linked(&[r(0x10000, 20), w(0x11000, 20)], 0), 0)
        .unwrap();
    tx(&mut q, &mem, &mut dev, Offloads::default());
    assert_eq!(used(&mock, 0), (0, 0));
    assert!(host.recv(&mut [0u8; 64]).is_err());
}

#[test]
fn tx_chain_shorter_than_header_is_dropped() {
    let (mem, (mut dev, host)) = (memory(), pair());
    let (mock, mut q) = queue(&mem, 0, 16);
    mock.add_desc_chains(&[r(0x10000, 4)], 0).unwrap();
    tx(&mut q, &mem, &mut dev, Offloads::default());
    assert!(host.recv(&mut [0u8; 64]).is_err());
}

#[test]
fn backend_frame_reaches_guest_with_num_buffers_one() {
    let (mem, (mut dev, host)) = (memory(), pair());
    host.send(&tap_frame(b"hello")).unwrap();
    let (mock, mut q) = queue(&mem, 0, 16);
    mock.add_desc_chains(&[w(0x10000, 2048)], 0).unwrap();
    let mut st = rx_state(Offloads::default());
    let d = rx(&mut q, &mem, &mut dev, &mut st).unwrap();
    let mut got = [0u8; 17];
    mem.read_slice(&mut got, GuestAddress(0x10000)).unwrap();
    assert_eq!(
        d,
        Drained {
            used: 1,
            notify: true,
            more: false
        }
    );
    assert_eq!(used(&mock, 0), (0, 17));
    assert_eq!(got, *b"\0\0\0\0\0\0\0\0\0\0\x01\0hello");
}

#[test]
fn frame_without_guest_buffer_waits() {
    let (mem, (mut dev, host)) = (memory(), pair());
    host.send(&tap_frame(b"hello")).unwrap();
    let (mock, mut q) = queue(&mem, 0, 16);
    let mut st = rx_state(Offloads::default());
    rx(&mut q, &mem, &mut dev, &mut st).unwrap();
    mock.add_desc_chains(&[w(0x10000, 2048)], 0).unwrap();
    rx(&mut q, &mem, &mut dev, &mut st).unwrap();
    assert_eq!(used(&mock, 0), (0, 17));
}

#[test]
fn frame_larger_than_buffer_is_dropped_and_buffer_returned_empty() {
    let (mem, (mut dev, host)) = (memory(), pair());
    host.send(&tap_frame(&[1u8; 100])).unwrap();
    let (mock, mut q) = queue(&mem, 0, 16);
    mock.add_desc_chains(&[w(0x10000, 50)], 0).unwrap();
    let mut st = rx_state(Offloads::default());
    rx(&mut q, &mem, &mut dev, &mut st).unwrap();
    assert_eq!(used(&mock, 0), (0, 0));
}

#[test]
fn rx_buffer_outside_memory_is_a_queue_error() {
    let (mem, (mut dev, host)) = (memory(), pair());
    host.send(&tap_frame(b"x")).unwrap();
    let (mock, mut q) = queue(&mem, 0, 16);
    mock.add_desc_chains(&[w(0xfff00, 0x1000)], 0).unwrap();
    let mut st = rx_state(Offloads::default());
    assert!(rx(&mut q, &mem, &mut dev, &mut st).is_err());
}

/// A TSO header as Linux's virtio-net sends it for a 64 KiB TCP/IPv4 frame.
fn tso_header() -> NetHeader {
    NetHeader {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 66,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    }
}

#[test]
fn a_tso_frame_reaches_the_backend_with_its_header_when_negotiated() {
    let (mem, (mut dev, host)) = (memory(), pair());
    mem.write_slice(&tso_header().to_bytes(), GuestAddress(0x10000))
        .unwrap();
    let payload: Vec<u8> = (0..60000u32).map(|i| (i % 251) as u8).collect();
    mem.write_slice(&payload, GuestAddress(0x20000)).unwrap();
    let (mock, mut q) = queue(&mem, 0, 16);
    let chain = linked(&[r(0x10000, 12), r(0x20000, 60000)], 0);
    mock.add_desc_chains(&chain, 0).unwrap();
    tx(&mut q, &mem, &mut dev, all_offloads());
    let mut out = vec![0u8; 70000];
    let n = host.recv(&mut out).unwrap();
    assert_eq!(&out[..NET_HDR_LEN], &tso_header().to_bytes());
    assert_eq!(&out[NET_HDR_LEN..n], &payload[..]);
}

#[test]
fn a_tso_frame_of_a_guest_without_offloads_goes_out_with_an_empty_header() {
    let (mem, (mut dev, host)) = (memory(), pair());
    mem.write_slice(&tso_header().to_bytes(), GuestAddress(0x10000))
        .unwrap();
    let (mock, mut q) = queue(&mem, 0, 16);
    mock.add_desc_chains(&[r(0x10000, 100)], 0).unwrap();
    tx(&mut q, &mem, &mut dev, Offloads::default());
    let mut out = [0u8; 128];
    let n = host.recv(&mut out).unwrap();
    assert_eq!((n, &out[..NET_HDR_LEN]), (100, &[0u8; NET_HDR_LEN][..]));
}

#[test]
fn a_gso_frame_beyond_the_negotiated_offloads_is_dropped_and_completed() {
    let (mem, (mut dev, host)) = (memory(), pair());
    let csum_only = Offloads::from_acked(OFFERED & !(1 << 11));
    mem.write_slice(&tso_header().to_bytes(), GuestAddress(0x10000))
        .unwrap();
    let (mock, mut q) = queue(&mem, 0, 16);
    mock.add_desc_chains(&[r(0x10000, 1000)], 0).unwrap();
    let d = tx(&mut q, &mem, &mut dev, csum_only);
    assert_eq!((d.used, used(&mock, 0)), (1, (0, 0)));
    assert!(host.recv(&mut [0u8; 64]).is_err());
}

/// `count` writable chains of `len` bytes from 0x10000, one descriptor each.
fn rx_chains(
    mock: &virtio_queue::mock::MockSplitQueue<'_, vm_memory::GuestMemoryMmap>,
    count: u64,
    len: u32,
) {
    let descs: Vec<_> = (0..count)
        .map(|i| w(0x10000 + i * u64::from(len), len))
        .collect();
    mock.add_desc_chains(&descs, 0).unwrap();
}

/// The guest's view of a received frame spread over chains of `len` bytes from 0x10000.
fn received(mem: &vm_memory::GuestMemoryMmap, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    mem.read_slice(&mut out, GuestAddress(0x10000)).unwrap();
    out
}

#[test]
fn a_large_frame_fills_merged_buffers_in_place_with_num_buffers() {
    let (mem, (mut dev, host)) = (memory(), pair());
    let payload: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
    let mut frame = tso_header().to_bytes().to_vec();
    frame.extend_from_slice(&payload);
    host.send(&frame).unwrap();
    let (mock, mut q) = queue(&mem, 0, 64);
    rx_chains(&mock, 40, 2048);
    let mut st = rx_state(all_offloads());
    let d = process_rx(&mut q, &mem, &mut dev, &mut st, 64, &mut Unthrottled).unwrap();
    let got = received(&mem, frame.len());
    let hdr = NetHeader::from_bytes(got[..NET_HDR_LEN].try_into().unwrap());
    assert_eq!(d.used, 3);
    assert_eq!(
        (used(&mock, 0), used(&mock, 1), used(&mock, 2)),
        ((0, 2048), (1, 2048), (2, 5012 - 4096))
    );
    assert_eq!(
        hdr,
        NetHeader {
            num_buffers: 3,
            ..tso_header()
        }
    );
    assert_eq!(&got[NET_HDR_LEN..], &payload[..]);
    assert_eq!(st.held_chains(), 33);
}

#[test]
fn a_large_frame_waits_for_enough_merged_buffers_then_is_copied() {
    let (mem, (mut dev, host)) = (memory(), pair());
    let payload = vec![0x5au8; 5000];
    host.send(&tap_frame(&payload)).unwrap();
    let (mock, mut q) = queue(&mem, 0, 16);
    rx_chains(&mock, 2, 2048);
    let mut st = rx_state(all_offloads());
    let first = process_rx(&mut q, &mem, &mut dev, &mut st, 64, &mut Unthrottled).unwrap();
    mock.add_desc_chains(&[w(0x11000, 2048)], 2).unwrap();
    let second = process_rx(&mut q, &mem, &mut dev, &mut st, 64, &mut Unthrottled).unwrap();
    let got = received(&mem, 5012);
    assert_eq!((first.used, second.used), (0, 3));
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3);
    assert_eq!(&got[NET_HDR_LEN..], &payload[..]);
}

#[test]
fn without_guest_csum_the_tap_header_reaches_the_guest_emptied() {
    let (mem, (mut dev, host)) = (memory(), pair());
    let mut frame = tso_header().to_bytes().to_vec();
    frame.extend_from_slice(b"data");
    host.send(&frame).unwrap();
    let (mock, mut q) = queue(&mem, 0, 16);
    mock.add_desc_chains(&[w(0x10000, 2048)], 0).unwrap();
    let mut st = rx_state(Offloads::default());
    rx(&mut q, &mem, &mut dev, &mut st).unwrap();
    assert_eq!(&received(&mem, 16)[..], b"\0\0\0\0\0\0\0\0\0\0\x01\0data");
}

#[test]
fn one_big_chain_takes_a_frame_in_place_without_merged_buffers() {
    let (mem, (mut dev, host)) = (memory(), pair());
    let tso_no_mrg = Offloads::from_acked(OFFERED & !(1 << 15));
    host.send(&tap_frame(&[3u8; 30000])).unwrap();
    let (mock, mut q) = queue(&mem, 0, 16);
    mock.add_desc_chains(&[w(0x10000, 0x11000)], 0).unwrap();
    let mut st = rx_state(tso_no_mrg);
    let d = rx(&mut q, &mem, &mut dev, &mut st).unwrap();
    assert_eq!((d.used, used(&mock, 0)), (1, (0, 30012)));
    assert_eq!(received(&mem, 30012)[30011], 3);
    assert_eq!(st.held_chains(), 0);
}

#[test]
fn a_blocked_tx_throttle_leaves_frames_in_the_ring_and_each_sent_one_is_charged_its_bytes() {
    let (mem, (mut dev, host)) = (memory(), pair());
    for i in 0..3u64 {
        let at = 0x10000 + 0x1000 * i;
        mem.write_slice(&[0u8; NET_HDR_LEN], GuestAddress(at))
            .unwrap();
    }
    let (mock, mut q) = queue(&mem, 0, 16);
    let chains = [r(0x10000, 17), r(0x11000, 112), r(0x12000, 13)];
    mock.add_desc_chains(&chains, 0).unwrap();
    let mut allow = Allow {
        left: 2,
        ..Allow::default()
    };
    let d = process_tx(&mut q, &mem, &mut dev, Offloads::default(), 16, &mut allow).unwrap();
    assert_eq!((d.used, d.more, q.next_avail()), (2, false, 2));
    assert_eq!(allow.charged, [5, 100]);
    let mut out = [0u8; 256];
    assert_eq!(host.recv(&mut out).unwrap(), 17);
    assert_eq!(host.recv(&mut out).unwrap(), 112);
    assert!(host.recv(&mut out).is_err());
}

#[test]
fn a_blocked_rx_throttle_leaves_frames_in_the_backend_and_each_read_one_is_charged_its_bytes() {
    let (mem, (mut dev, host)) = (memory(), pair());
    host.send(&tap_frame(b"first")).unwrap();
    host.send(&tap_frame(b"second")).unwrap();
    let (mock, mut q) = queue(&mem, 0, 16);
    mock.add_desc_chains(&[w(0x10000, 2048), w(0x11000, 2048)], 0)
        .unwrap();
    let mut st = rx_state(Offloads::default());
    let mut allow = Allow {
        left: 1,
        ..Allow::default()
    };
    let d = process_rx(&mut q, &mem, &mut dev, &mut st, 16, &mut allow).unwrap();
    assert_eq!((d.used, d.more), (1, false));
    assert_eq!(allow.charged, [5]);
    // The second frame is still in the backend, and the backend still readable.
    assert!(st.readable && !st.has_pending());
    allow.left = 1;
    process_rx(&mut q, &mem, &mut dev, &mut st, 16, &mut allow).unwrap();
    assert_eq!(allow.charged, [5, 6]);
    assert_eq!(used(&mock, 1), (1, 18));
}
