//! Tests of virtio-net frame movement with a datagram socket pair as the backend.
use std::os::unix::net::UnixDatagram;

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::descriptor::test_util::*;

fn pair() -> (UnixDatagram, UnixDatagram) {
    let (a, b) = UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    (a, b)
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
    let d = process_tx(&mut q, &mem, &mut dev, 16).unwrap();
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
    process_tx(&mut q, &mem, &mut dev, 16).unwrap();
    assert_eq!(used(&mock, 0), (0, 0));
    assert!(host.recv(&mut [0u8; 64]).is_err());
}

#[test]
fn tx_chain_shorter_than_header_is_dropped() {
    let (mem, (mut dev, host)) = (memory(), pair());
    let (mock, mut q) = queue(&mem, 0, 16);
    mock.add_desc_chains(&[r(0x10000, 4)], 0).unwrap();
    process_tx(&mut q, &mem, &mut dev, 16).unwrap();
    assert!(host.recv(&mut [0u8; 64]).is_err());
}

#[test]
fn backend_frame_reaches_guest_with_num_buffers_one() {
    let (mem, (mut dev, host)) = (memory(), pair());
    host.send(&tap_frame(b"hello")).unwrap();
    let (mock, mut q) = queue(&mem, 0, 16);
    mock.add_desc_chains(&[w(0x10000, 2048)], 0).unwrap();
    let mut st = RxState {
        readable: true,
        ..Default::default()
    };
    let d = process_rx(&mut q, &mem, &mut dev, &mut st, 16).unwrap();
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
    let mut st = RxState {
        readable: true,
        ..Default::default()
    };
    process_rx(&mut q, &mem, &mut dev, &mut st, 16).unwrap();
    mock.add_desc_chains(&[w(0x10000, 2048)], 0).unwrap();
    process_rx(&mut q, &mem, &mut dev, &mut st, 16).unwrap();
    assert_eq!(used(&mock, 0), (0, 17));
}

#[test]
fn frame_larger_than_buffer_is_dropped_and_buffer_returned_empty() {
    let (mem, (mut dev, host)) = (memory(), pair());
    host.send(&tap_frame(&[1u8; 100])).unwrap();
    let (mock, mut q) = queue(&mem, 0, 16);
    mock.add_desc_chains(&[w(0x10000, 50)], 0).unwrap();
    let mut st = RxState {
        readable: true,
        ..Default::default()
    };
    process_rx(&mut q, &mem, &mut dev, &mut st, 16).unwrap();
    assert_eq!(used(&mock, 0), (0, 0));
}

#[test]
fn rx_buffer_outside_memory_is_a_queue_error() {
    let (mem, (mut dev, host)) = (memory(), pair());
    host.send(&tap_frame(b"x")).unwrap();
    let (mock, mut q) = queue(&mem, 0, 16);
    mock.add_desc_chains(&[w(0xfff00, 0x1000)], 0).unwrap();
    let mut st = RxState {
        readable: true,
        ..Default::default()
    };
    assert!(process_rx(&mut q, &mem, &mut dev, &mut st, 16).is_err());
}
