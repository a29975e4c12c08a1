//! virtio-net driven through its virtio-mmio transport as a driver does: a device that
//! a bad TX chain broke works again once the driver resets it and sets up every queue,
//! and a driver that sets up only some queues gets DEVICE_NEEDS_RESET and a log line.
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::device::Net;
use super::header::NET_HDR_LEN;
use super::tap::Tap;
use super::NetConfig;
use crate::devices::bus::BusDevice;
use crate::devices::virtio::descriptor::test_util::*;
use crate::devices::virtio::mmio::MmioTransport;

type Mock<'m> = MockSplitQueue<'m, GuestMemoryMmap>;

/// A virtio-net device on a datagram socket pair (the host end is returned) behind a
/// transport.
fn net(mem: &GuestMemoryMmap) -> (MmioTransport, Arc<Mutex<Net>>, UnixDatagram) {
    let (dev, host) = UnixDatagram::pair().unwrap();
    dev.set_nonblocking(true).unwrap();
    host.set_nonblocking(true).unwrap();
    let net = Net::with_tap(NetConfig::default(), Tap::from_socket(dev)).unwrap();
    let net = Arc::new(Mutex::new(net));
    (
        MmioTransport::new(mem.clone(), net.clone()).unwrap(),
        net,
        host,
    )
}

fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

/// Reset, then ACKNOWLEDGE, DRIVER, VERSION_1 only, FEATURES_OK.
fn reset_and_negotiate(t: &mut MmioTransport) {
    wr(t, 0x70, 0);
    wr(t, 0x70, 1);
    wr(t, 0x70, 3);
    wr(t, 0x24, 1);
    wr(t, 0x20, 1);
    wr(t, 0x70, 0xb);
}

/// A ring of 16 at `base`, configured as queue `sel`.
fn setup_queue<'m>(
    t: &mut MmioTransport,
    mem: &'m GuestMemoryMmap,
    sel: u32,
    base: u64,
) -> Mock<'m> {
    let mock = MockSplitQueue::create(mem, GuestAddress(base), 16);
    wr(t, 0x30, sel);
    wr(t, 0x38, 16);
    for (lo, addr) in [
        (0x80, mock.desc_table_addr()),
        (0x90, mock.avail_addr()),
        (0xa0, mock.used_addr()),
    ] {
        wr(t, lo, addr.0 as u32);
        wr(t, lo + 4, (addr.0 >> 32) as u32);
    }
    wr(t, 0x44, 1);
    mock
}

fn needs_reset(t: &mut MmioTransport) -> bool {
    rd(t, 0x70) & VIRTIO_CONFIG_S_NEEDS_RESET != 0
}

#[test]
fn driver_that_resets_and_sets_up_all_queues_after_bad_tx_chains_gets_a_working_device() {
    let mem = memory();
    let (mut t, net, host) = net(&mem);
    reset_and_negotiate(&mut t);
    let _rx = setup_queue(&mut t, &mem, 0, 0x10000);
    let tx = setup_queue(&mut t, &mem, 1, 0x20000);
    wr(&mut t, 0x70, 0xf);
    tx.add_desc_chains(&[r(0x20_0000, 64)], 0).unwrap();
    net.lock().unwrap().process_tx();
    let broken = needs_reset(&mut t);
    reset_and_negotiate(&mut t);
    let rx = setup_queue(&mut t, &mem, 0, 0x30000);
    let tx = setup_queue(&mut t, &mem, 1, 0x40000);
    wr(&mut t, 0x70, 0xf);
    mem.write_slice(b"frame", GuestAddress(0x50000 + NET_HDR_LEN as u64))
        .unwrap();
    tx.add_desc_chains(&[r(0x50000, NET_HDR_LEN as u32 + 5)], 0)
        .unwrap();
    rx.add_desc_chains(&[w(0x60000, 2048)], 0).unwrap();
    host.send(&[&[0u8; NET_HDR_LEN][..], b"reply"].concat())
        .unwrap();
    let mut dev = net.lock().unwrap();
    dev.process_tx();
    dev.rx.readable = true;
    dev.process_rx();
    let mut sent = [0u8; 64];
    let n = host.recv(&mut sent).unwrap();
    let mut got = [0u8; 5];
    mem.read_slice(&mut got, GuestAddress(0x60000 + NET_HDR_LEN as u64))
        .unwrap();
    assert!(broken);
    assert_eq!(rd(&mut t, 0x70), 0xf);
    assert_eq!(&sent[NET_HDR_LEN..n], b"frame");
    assert_eq!(used(&rx, 0), (0, NET_HDR_LEN as u32 + 5));
    assert_eq!(&got, b"reply");
}

#[test]
fn driver_that_sets_up_only_the_tx_queue_gets_needs_reset_and_a_log_line() {
    crate::test_log::capture();
    let line = "virtio-mmio type 1: queue 0 not ready; device needs reset";
    let before = crate::test_log::count(line);
    let mem = memory();
    let (mut t, net, _host) = net(&mem);
    reset_and_negotiate(&mut t);
    let _tx = setup_queue(&mut t, &mem, 1, 0x20000);
    wr(&mut t, 0x70, 0xf);
    assert!(needs_reset(&mut t));
    assert!(net.lock().unwrap().queues.active.is_none());
    assert_eq!(crate::test_log::count(line), before + 1);
}

/// Reset, then ACKNOWLEDGE, DRIVER, every feature the device offers, FEATURES_OK.
fn negotiate_everything(t: &mut MmioTransport) {
    wr(t, 0x70, 0);
    wr(t, 0x70, 1);
    wr(t, 0x70, 3);
    wr(t, 0x14, 0);
    let low = rd(t, 0x10);
    wr(t, 0x24, 0);
    wr(t, 0x20, low);
    wr(t, 0x24, 1);
    wr(t, 0x20, 1);
    wr(t, 0x70, 0xb);
}

/// A frame as the TAP hands it over: an empty header, then `payload`.
fn tap_frame(payload: &[u8]) -> Vec<u8> {
    [&[0u8; NET_HDR_LEN][..], payload].concat()
}

#[test]
fn a_snapshot_gives_back_the_rx_chains_the_device_had_taken_and_the_restored_device_fills_them() {
    let mem = memory();
    let (mut t, net, host) = net(&mem);
    negotiate_everything(&mut t);
    let rx = setup_queue(&mut t, &mem, 0, 0x10000);
    let _tx = setup_queue(&mut t, &mem, 1, 0x20000);
    wr(&mut t, 0x70, 0xf);
    let bufs: Vec<_> = (0..16).map(|i| w(0x40000 + i * 0x2000, 0x2000)).collect();
    rx.add_desc_chains(&bufs, 0).unwrap();
    host.send(&tap_frame(b"before")).unwrap();
    {
        let mut dev = net.lock().unwrap();
        dev.rx.readable = true;
        dev.process_rx();
    }
    let held = net.lock().unwrap().rx.held_chains();
    let saved = t.save_with(&*net.lock().unwrap());
    let (mut restored, net2, host2) = self::net(&mem);
    restored.restore(0, &saved).unwrap();
    host2.send(&tap_frame(b"after")).unwrap();
    {
        let mut dev = net2.lock().unwrap();
        dev.rx.readable = true;
        dev.process_rx();
    }
    let mut got = [0u8; 5];
    mem.read_slice(&mut got, GuestAddress(0x42000 + NET_HDR_LEN as u64))
        .unwrap();
    assert!(held > 0);
    assert_eq!(saved.queues[0].next_avail, 1);
    assert_eq!(used(&rx, 1), (1, NET_HDR_LEN as u32 + 5));
    assert_eq!(&got, b"after");
}
