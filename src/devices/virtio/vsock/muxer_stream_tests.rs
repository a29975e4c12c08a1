//! Tests of the vsock muxer's data path through real queues: host data read straight
//! into several RX buffers at once, guest data written from guest memory, and credit
//! announced once per TX pass; a socket read dry is not tried again before its next event.
use std::io::{Read, Write};

use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::tests::{established, guest, newest_stream, uds};
use super::*;
use crate::devices::virtio::descriptor::test_util::*;

const CID: u64 = 3;

fn muxer() -> Muxer {
    Muxer::new(&VsockConfig::new(CID, uds())).unwrap()
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// An RX queue offering four 4 KiB buffers from 0x10000.
fn rx_queue(mem: &GuestMemoryMmap) -> (MockSplitQueue<'_, GuestMemoryMmap>, Queue) {
    let (mock, q) = queue(mem, 0, 16);
    let bufs: Vec<_> = (0..4).map(|i| w(0x10000 + i * 4096, 4096)).collect();
    mock.add_desc_chains(&bufs, 0).unwrap();
    (mock, q)
}

/// The header and payload the muxer put in RX buffer `i` (4 KiB each from 0x10000).
fn rx_packet(mem: &GuestMemoryMmap, i: u64, len: u32) -> (Header, Vec<u8>) {
    let addr = 0x10000 + i * 4096;
    let mut raw = [0u8; HDR_LEN];
    mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
    let mut data = vec![0u8; len as usize - HDR_LEN];
    mem.read_slice(&mut data, GuestAddress(addr + HDR_LEN as u64))
        .unwrap();
    (Header::from_bytes(&raw), data)
}

#[test]
fn host_data_fills_several_rx_buffers_with_one_pass_in_order() {
    let (mut m, mem) = (muxer(), memory());
    let (mut client, port) = established(&mut m, &mem);
    let sent = pattern(10_000);
    client.write_all(&sent).unwrap();
    let (mock, mut q) = rx_queue(&mem);
    let d = m.process_rx(&mut q, &mem).unwrap();
    let lens: Vec<u32> = (0..3).map(|i| used(&mock, i).1).collect();
    let packets: Vec<(Header, Vec<u8>)> = (0..3)
        .map(|i| rx_packet(&mem, i, lens[i as usize]))
        .collect();
    let heads: Vec<(u16, u32, usize)> = packets
        .iter()
        .map(|(h, d)| (h.op, h.src_port, h.len as usize - d.len()))
        .collect();
    let got: Vec<u8> = packets.into_iter().flat_map(|(_, d)| d).collect();
    assert_eq!(d.used, 3);
    assert_eq!(lens, [4096, 4096, (10_000 - 2 * 4052 + HDR_LEN) as u32]);
    assert_eq!(heads, [(OP_RW, port, 0); 3]);
    assert_eq!(got, sent);
}

#[test]
fn rx_buffers_a_read_did_not_fill_stay_available() {
    let (mut m, mem) = (muxer(), memory());
    let (mut client, _) = established(&mut m, &mem);
    client.write_all(b"small").unwrap();
    let (mock, mut q) = rx_queue(&mem);
    m.process_rx(&mut q, &mem).unwrap();
    client.write_all(b"later").unwrap();
    let token = newest_stream(&m).expect("the host socket became readable");
    m.on_stream_event(token, true, false);
    m.process_rx(&mut q, &mem).unwrap();
    let (h, data) = rx_packet(&mem, 1, used(&mock, 1).1);
    assert_eq!(mock.used().idx().load(), 2);
    assert_eq!((h.op, data.as_slice()), (OP_RW, &b"later"[..]));
}

/// Four 32 KiB data packets from guest port 1024 to `port`, header and payload in
/// separate descriptors; returns the payload.
fn four_packets(
    mem: &GuestMemoryMmap,
    mock: &virtio_queue::mock::MockSplitQueue<'_, GuestMemoryMmap>,
    port: u32,
) -> Vec<u8> {
    let payload = pattern(4 * 32768);
    mem.write_slice(&payload, GuestAddress(0x40000)).unwrap();
    let mut descs = Vec::new();
    for i in 0..4u64 {
        let h = Header {
            len: 32768,
            ..guest(OP_RW, 1024, port)
        };
        mem.write_slice(&h.to_bytes(), GuestAddress(0x30000 + i * 64))
            .unwrap();
        descs.push(r(0x30000 + i * 64, HDR_LEN as u32));
        descs.push(r(0x40000 + i * 32768, 32768));
    }
    let chains: Vec<_> = descs
        .chunks(2)
        .enumerate()
        .flat_map(|(i, d)| linked(d, 2 * i as u16))
        .collect();
    mock.add_desc_chains(&chains, 0).unwrap();
    payload
}

#[test]
fn guest_data_reaches_the_host_socket_intact_and_credit_is_announced_once_per_pass() {
    let (mut m, mem) = (muxer(), memory());
    let (mut client, port) = established(&mut m, &mem);
    let (mock, mut q) = queue(&mem, 0x8000, 16);
    let sent = four_packets(&mem, &mock, port);
    let d = m.process_tx(&mut q, &mem).unwrap();
    let mut got = vec![0u8; sent.len()];
    client.read_exact(&mut got).unwrap();
    let ops: Vec<u16> = m.ctrl.iter().map(|h| h.op).collect();
    assert_eq!(d.used, 4);
    assert!(got == sent, "the host read other bytes than the guest sent");
    assert_eq!(ops, [OP_CREDIT_UPDATE]);
    assert_eq!(m.ctrl[0].fwd_cnt, 4 * 32768);
}

#[test]
fn a_read_of_every_waiting_byte_leaves_the_socket_unread_until_its_next_event() {
    let (mut m, mem) = (muxer(), memory());
    let (mut client, _) = established(&mut m, &mem);
    client.write_all(b"small").unwrap();
    let (_mock, mut q) = rx_queue(&mem);
    let d = m.process_rx(&mut q, &mem).unwrap();
    assert_eq!((d.used, m.has_rx()), (1, false));
}

#[test]
fn end_of_stream_behind_the_last_bytes_reaches_the_guest_after_a_hang_up() {
    let (mut m, mem) = (muxer(), memory());
    let (mut client, _) = established(&mut m, &mem);
    client.write_all(b"bye").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let token = newest_stream(&m).expect("the host socket reported its hang-up");
    m.on_stream_hang_up(token);
    let (mock, mut q) = rx_queue(&mem);
    m.process_rx(&mut q, &mem).unwrap();
    let (data, _) = rx_packet(&mem, 0, used(&mock, 0).1);
    let (end, _) = rx_packet(&mem, 1, used(&mock, 1).1);
    assert_eq!((data.op, data.len, end.op), (OP_RW, 3, OP_SHUTDOWN));
}
