//! Property tests: random descriptor tables, rings and register writes never panic
//! or hang any device's request processing (the guest is the adversary).

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::block::{self, BlockConfig, Disk};
use super::descriptor::test_util::TempImage;
use super::mmio::MmioTransport;
use super::net::{self, RxState};
use super::queues::Drained;
use super::rng::{self, Rng};
use super::vsock::{Header, Muxer, VsockConfig, HOST_CID};
use crate::devices::bus::BusDevice;
use crate::devices::rate_limiter::Unthrottled;

const SIZE: u16 = 16;
const DESC: u64 = 0;
const AVAIL: u64 = 0x100;
const USED: u64 = 0x200;

/// One random descriptor: (addr, len, flags, next).
type RawDesc = (u64, u32, u16, u16);

/// A random driver: descriptor table, avail ring and index, data bytes, EVENT_IDX.
#[derive(Debug, Clone)]
struct Ring {
    descs: Vec<RawDesc>,
    avail: Vec<u16>,
    avail_idx: u16,
    data: Vec<u8>,
    event_idx: bool,
}

fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        0x1000u64..0x1100,
        0u64..0x10_0000,
        0x7_f000u64..0x9_1000,
        Just(u64::MAX - 8),
        any::<u64>(),
    ]
}

fn len() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..64, 0u32..0x2_0000, Just(u32::MAX), any::<u32>()]
}

fn ring() -> impl Strategy<Value = Ring> {
    let desc = (addr(), len(), 0u16..8, 0u16..20);
    (
        prop::collection::vec(desc, SIZE as usize),
        prop::collection::vec(0u16..20, SIZE as usize),
        prop_oneof![0u16..20, any::<u16>()],
        prop::collection::vec(any::<u8>(), 256),
        any::<bool>(),
    )
        .prop_map(|(descs, avail, avail_idx, data, event_idx)| Ring {
            descs,
            avail,
            avail_idx,
            data,
            event_idx,
        })
}

/// Two RAM regions with a hole at 0x80000..0x90000.
fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x8_0000),
        (GuestAddress(0x9_0000), 0x7_0000),
    ])
    .expect("test memory")
}

/// Write `ring` into `mem` and return the device's queue for it.
fn install(mem: &GuestMemoryMmap, ring: &Ring) -> Queue {
    for (i, &(a, l, f, n)) in ring.descs.iter().enumerate() {
        let at = DESC + 16 * i as u64;
        mem.write_obj(a, GuestAddress(at)).expect("desc");
        mem.write_obj(l, GuestAddress(at + 8)).expect("desc");
        mem.write_obj(f, GuestAddress(at + 12)).expect("desc");
        mem.write_obj(n, GuestAddress(at + 14)).expect("desc");
    }
    mem.write_obj(ring.avail_idx, GuestAddress(AVAIL + 2))
        .expect("avail");
    for (i, &head) in ring.avail.iter().enumerate() {
        mem.write_obj(head, GuestAddress(AVAIL + 4 + 2 * i as u64))
            .expect("avail");
    }
    mem.write_slice(&ring.data, GuestAddress(0x1000))
        .expect("data");
    let mut q = Queue::new(SIZE).expect("queue");
    q.try_set_desc_table_address(GuestAddress(DESC))
        .expect("aligned");
    q.try_set_avail_ring_address(GuestAddress(AVAIL))
        .expect("aligned");
    q.try_set_used_ring_address(GuestAddress(USED))
        .expect("aligned");
    q.set_event_idx(ring.event_idx);
    q.set_ready(true);
    q
}

fn vsock_muxer() -> Muxer {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let uds = std::env::temp_dir().join(format!("husk-prop-{}-{n}.sock", std::process::id()));
    Muxer::new(&VsockConfig::new(3, uds)).expect("muxer")
}

/// Completed chains never exceed what the driver made available.
fn bounded(r: Result<Drained, super::queues::QueueError>) -> bool {
    r.map_or(true, |d| d.used <= usize::from(SIZE))
}

/// Write then read back each (offset, value, width).
fn apply(t: &mut MmioTransport, writes: &[(u64, u32, usize)]) {
    for &(offset, value, width) in writes {
        let bytes = u64::from(value).to_le_bytes();
        t.write(offset, &bytes[..width]);
        let mut out = [0u8; 8];
        t.read(offset, &mut out[..width]);
    }
}

proptest! {
    #[test]
    fn rng_survives_random_rings(ring in ring()) {
        let mem = memory();
        let mut q = install(&mem, &ring);
        let src = vec![7u8; 1 << 17];
        prop_assert!(bounded(rng::process_queue(&mut q, &mem, &mut src.as_slice(), 64, &mut Unthrottled)));
    }

    #[test]
    fn block_survives_random_rings(ring in ring()) {
        let (mem, img) = (memory(), TempImage::new(8192, 1));
        let config = BlockConfig { path: img.0.clone(), read_only: false, id: None, root: false, rate_limiter: None };
        let mut disk = Disk::open(&config).expect("disk");
        let mut q = install(&mem, &ring);
        prop_assert!(bounded(block::process_queue(&mut q, &mem, &mut disk, 64, &mut Unthrottled)));
    }

    #[test]
    fn block_on_io_uring_survives_random_rings_and_finishes_what_it_took(ring in ring()) {
        let (mem, img) = (memory(), TempImage::new(8192, 1));
        let config = BlockConfig { path: img.0.clone(), read_only: false, id: None, root: false, rate_limiter: None };
        let disk = Disk::open(&config).expect("disk");
        let mut q = install(&mem, &ring);
        let mut uring = block::Ring::new(SIZE).expect("io_uring");
        let started = block::start_in_flight(&mut q, &mem, &disk, &mut uring, 64, &mut Unthrottled);
        let done = uring.wait_all(disk.file());
        let finished = done.len();
        let _ = block::finish_in_flight(&mut q, &mem, done);
        prop_assert!(bounded(started));
        prop_assert!(finished <= usize::from(SIZE));
        prop_assert_eq!(uring.in_flight(), 0);
    }

    #[test]
    fn vsock_tx_survives_random_rings(ring in ring()) {
        let (mem, mut muxer) = (memory(), vsock_muxer());
        let mut q = install(&mem, &ring);
        prop_assert!(bounded(muxer.process_tx(&mut q, &mem)));
    }

    #[test]
    fn vsock_rx_survives_random_rings(ring in ring()) {
        let (mem, mut muxer) = (memory(), vsock_muxer());
        let h = Header { src_cid: 3, dst_cid: HOST_CID, type_: 1, op: 5, ..Default::default() };
        let mut raw = [0u8; 44];
        raw.copy_from_slice(&h.to_bytes());
        mem.write_slice(&raw, GuestAddress(0x7_0000)).expect("hdr");
        let mut tx = install(&mem, &Ring { descs: vec![(0x7_0000, 44, 0, 0); 16], avail: vec![0; 16], avail_idx: 3, ..ring.clone() });
        muxer.process_tx(&mut tx, &mem).expect("tx");
        let mut q = install(&mem, &ring);
        prop_assert!(bounded(muxer.process_rx(&mut q, &mem)));
    }

    #[test]
    fn net_tx_survives_random_rings(ring in ring(), acked in any::<u64>()) {
        let mem = memory();
        let (mut dev, _host) = UnixDatagram::pair().expect("pair");
        dev.set_nonblocking(true).expect("nonblocking");
        let mut q = install(&mem, &ring);
        prop_assert!(bounded(net::process_tx(&mut q, &mem, &mut dev, net::Offloads::from_acked(acked), 64, &mut Unthrottled)));
    }

    #[test]
    fn net_rx_survives_random_rings(ring in ring(), acked in any::<u64>(), big in any::<bool>()) {
        let mem = memory();
        let (mut dev, host) = UnixDatagram::pair().expect("pair");
        dev.set_nonblocking(true).expect("nonblocking");
        host.send(&[0u8; 60]).expect("send");
        host.send(&[0u8; 1500]).expect("send");
        host.send(&vec![0xffu8; if big { 65000 } else { 8 }]).expect("send");
        let mut q = install(&mem, &ring);
        let mut st = RxState::default();
        st.readable = true;
        st.offloads = net::Offloads::from_acked(acked);
        let r = net::process_rx(&mut q, &mem, &mut dev, &mut st, 64, &mut Unthrottled);
        // Chains held for later plus chains used never exceed what was made available.
        let held = usize::from(st.held_chains());
        prop_assert!(r.map_or(true, |d| d.used + held <= usize::from(SIZE)));
    }

    #[test]
    fn config_parsers_never_panic(s in "[a-z=,:/0-9.]{0,40}") {
        let _ = s.parse::<BlockConfig>();
        let _ = s.parse::<VsockConfig>();
        let _ = s.parse::<super::net::NetConfig>();
        let _ = s.parse::<super::net::MacAddr>();
    }

    #[test]
    fn mmio_survives_random_register_writes(
        writes in prop::collection::vec((0u64..0x110, any::<u32>(), 1usize..9), 0..64)
    ) {
        let rng = Arc::new(Mutex::new(Rng::new(None).expect("rng")));
        let mut t = MmioTransport::new(memory(), rng).expect("transport");
        apply(&mut t, &writes);
        let mut status = [0u8; 4];
        t.read(0x70, &mut status);
        prop_assert!(u32::from_le_bytes(status) < 0x100);
    }
}
