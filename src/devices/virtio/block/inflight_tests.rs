//! Tests of the block queue served through io_uring, on in-memory queues and tmpfs
//! images: several requests in flight at once, their data and status, a flush after
//! writes, and a device that finishes them before a snapshot or a reset.
use std::sync::Arc;

use virtio_bindings::virtio_blk::*;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::devices::rate_limiter::LimiterKind;
use crate::devices::rate_limiter::{Allow, BucketConfig, RateLimiterConfig, Unthrottled};
use crate::devices::virtio::block::{Block, BlockConfig};
use crate::devices::virtio::descriptor::test_util::*;
use crate::devices::virtio::{Interrupt, VirtioDevice};

fn config(img: &TempImage) -> BlockConfig {
    BlockConfig {
        path: img.0.clone(),
        read_only: false,
        id: None,
        root: false,
        rate_limiter: None,
    }
}

/// Request `i`: its header at 0x8000 + 32i, data at 0x20000 + 4 KiB i, status at
/// 0x9000 + i; a 4 KiB read or write of sector 8i.
fn request(mem: &GuestMemoryMmap, i: u64, kind: u32) -> Vec<virtio_queue::desc::RawDescriptor> {
    let (hdr, data, status) = (0x8000 + 32 * i, 0x20000 + 4096 * i, 0x9000 + i);
    mem.write_obj(kind, GuestAddress(hdr)).unwrap();
    mem.write_obj(8 * i, GuestAddress(hdr + 8)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
    let data = match kind {
        VIRTIO_BLK_T_IN => w(data, 4096),
        VIRTIO_BLK_T_FLUSH => return vec![r(hdr, 16), w(status, 1)],
        _ => r(data, 4096),
    };
    vec![r(hdr, 16), data, w(status, 1)]
}

/// Chains for `kinds`, linked one after the other in the descriptor table.
fn chains(mem: &GuestMemoryMmap, kinds: &[u32]) -> Vec<virtio_queue::desc::RawDescriptor> {
    let mut all = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let descs = request(mem, i as u64, *kind);
        let first = u16::try_from(all.len()).unwrap();
        all.extend(linked(&descs, first));
    }
    all
}

fn statuses(mem: &GuestMemoryMmap, n: u64) -> Vec<u8> {
    (0..n)
        .map(|i| mem.read_obj::<u8>(GuestAddress(0x9000 + i)).unwrap())
        .collect()
}

#[test]
fn every_available_request_goes_on_the_ring_in_one_pass_and_all_complete_with_their_data() {
    let (mem, img) = (memory(), TempImage::new(1 << 16, 0x6b));
    let disk = Disk::open(&config(&img)).unwrap();
    let (mock, mut q) = queue(&mem, 0, 16);
    mock.add_desc_chains(&chains(&mem, &[VIRTIO_BLK_T_IN; 4]), 0)
        .unwrap();
    let mut ring = Ring::new(16).unwrap();
    let d = start(&mut q, &mem, &disk, &mut ring, 64, &mut Unthrottled).unwrap();
    let queued = ring.in_flight();
    let done = ring.wait_all(disk.file());
    let notify = finish(&mut q, &mem, done).unwrap();
    assert_eq!((d.used, queued), (0, 4));
    assert!(notify);
    assert_eq!(mock.used().idx().load(), 4);
    assert_eq!(statuses(&mem, 4), [VIRTIO_BLK_S_OK as u8; 4]);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x23fff)).unwrap(), 0x6b);
}

#[test]
fn writes_then_a_flush_in_one_pass_all_succeed_and_land_in_the_image() {
    let (mem, img) = (memory(), TempImage::new(1 << 16, 0));
    let disk = Disk::open(&config(&img)).unwrap();
    mem.write_slice(&[0x3c; 3 * 4096], GuestAddress(0x20000))
        .unwrap();
    let (mock, mut q) = queue(&mem, 0, 16);
    let kinds = [
        VIRTIO_BLK_T_OUT,
        VIRTIO_BLK_T_OUT,
        VIRTIO_BLK_T_OUT,
        VIRTIO_BLK_T_FLUSH,
    ];
    mock.add_desc_chains(&chains(&mem, &kinds), 0).unwrap();
    let mut ring = Ring::new(16).unwrap();
    start(&mut q, &mem, &disk, &mut ring, 64, &mut Unthrottled).unwrap();
    let done = ring.wait_all(disk.file());
    finish(&mut q, &mem, done).unwrap();
    let image = std::fs::read(&img.0).unwrap();
    assert_eq!(statuses(&mem, 4), [VIRTIO_BLK_S_OK as u8; 4]);
    assert!(image[..3 * 4096].iter().all(|&b| b == 0x3c));
    assert!(image[3 * 4096..].iter().all(|&b| b == 0));
}

/// A running block device with `kinds` made available (not yet notified).
fn device_with_requests<'m>(
    mem: &'m GuestMemoryMmap,
    img: &TempImage,
    kinds: &[u32],
) -> (
    Block,
    virtio_queue::mock::MockSplitQueue<'m, GuestMemoryMmap>,
    Arc<Interrupt>,
) {
    let mut dev = Block::new(config(img)).unwrap();
    let (mock, mut q) = queue(mem, 0, 32);
    q.set_event_idx(false);
    mock.add_desc_chains(&chains(mem, kinds), 0).unwrap();
    let irq = Arc::new(Interrupt::new().unwrap());
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    dev.activate(mem.clone(), irq.clone(), vec![(q, evt)])
        .unwrap();
    (dev, mock, irq)
}

#[test]
fn a_device_held_for_a_snapshot_finishes_its_requests_in_flight_first() {
    let (mem, img) = (memory(), TempImage::new(1 << 16, 0x5e));
    let (mut dev, mock, irq) = device_with_requests(&mem, &img, &[VIRTIO_BLK_T_IN; 8]);
    dev.process();
    dev.quiesce().expect("quiesce");
    assert_eq!(dev.ring.as_ref().map(Ring::in_flight), Some(0));
    assert_eq!(mock.used().idx().load(), 8);
    assert_eq!(statuses(&mem, 8), [VIRTIO_BLK_S_OK as u8; 8]);
    assert_ne!(irq.status(), 0);
}

#[test]
fn a_reset_waits_for_requests_in_flight_and_touches_the_queue_no_more() {
    let (mem, img) = (memory(), TempImage::new(1 << 16, 0x5e));
    let (mut dev, mock, _irq) = device_with_requests(&mem, &img, &[VIRTIO_BLK_T_IN; 8]);
    dev.process();
    let used_before = mock.used().idx().load();
    dev.reset();
    assert_eq!(dev.ring.as_ref().map(Ring::in_flight), Some(0));
    assert_eq!(mock.used().idx().load(), used_before);
}

#[test]
fn served_one_by_one_a_blocked_throttle_leaves_requests_in_the_ring_each_charged_its_data() {
    let (mem, img) = (memory(), TempImage::new(1 << 16, 0x11));
    let mut disk = Disk::open(&config(&img)).unwrap();
    let (mock, mut q) = queue(&mem, 0, 16);
    let kinds = [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN];
    mock.add_desc_chains(&chains(&mem, &kinds), 0).unwrap();
    let mut allow = Allow {
        left: 2,
        ..Allow::default()
    };
    let d = crate::devices::virtio::block::process_queue(&mut q, &mem, &mut disk, 16, &mut allow)
        .unwrap();
    assert_eq!((d.used, d.more, q.next_avail()), (2, false, 2));
    assert_eq!(allow.charged, [4096, 0]);
    allow.left = 1;
    crate::devices::virtio::block::process_queue(&mut q, &mem, &mut disk, 16, &mut allow).unwrap();
    assert_eq!(mock.used().idx().load(), 3);
    assert_eq!(statuses(&mem, 3), [VIRTIO_BLK_S_OK as u8; 3]);
}

#[test]
fn on_the_ring_a_blocked_throttle_stops_the_pass_and_each_request_is_charged_its_data() {
    let (mem, img) = (memory(), TempImage::new(1 << 16, 0x22));
    let disk = Disk::open(&config(&img)).unwrap();
    let (mock, mut q) = queue(&mem, 0, 16);
    let kinds = [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_IN];
    mock.add_desc_chains(&chains(&mem, &kinds), 0).unwrap();
    let mut ring = Ring::new(16).unwrap();
    let mut allow = Allow {
        left: 2,
        ..Allow::default()
    };
    let d = start(&mut q, &mem, &disk, &mut ring, 64, &mut allow).unwrap();
    assert_eq!((d.more, q.next_avail(), ring.in_flight()), (false, 2, 2));
    assert_eq!(allow.charged, [4096, 4096]);
    ring.wait_all(disk.file());
}

/// A byte bucket of one byte refilled over a minute: the first request takes it into
/// a debt of hours.
fn starved() -> RateLimiterConfig {
    RateLimiterConfig {
        bandwidth: Some(BucketConfig {
            size: 1,
            one_time_burst: None,
            refill_time: 60_000,
        }),
        ops: None,
    }
}

#[test]
fn a_limited_disk_serves_one_request_then_a_patch_with_room_lets_the_rest_through() {
    let (mem, img) = (memory(), TempImage::new(1 << 16, 0x5e));
    let limited = BlockConfig {
        rate_limiter: Some(starved()),
        ..config(&img)
    };
    let mut dev = Block::new(limited).unwrap();
    let (mock, mut q) = queue(&mem, 0, 32);
    q.set_event_idx(false);
    mock.add_desc_chains(&chains(&mem, &[VIRTIO_BLK_T_IN; 4]), 0)
        .unwrap();
    let irq = Arc::new(Interrupt::new().unwrap());
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    let notify = evt.try_clone().unwrap();
    dev.activate(mem.clone(), irq, vec![(q, evt)]).unwrap();
    dev.process();
    dev.quiesce().expect("quiesce");
    assert_eq!(mock.used().idx().load(), 1);
    assert!(dev.describe().contains("blocked for"), "{}", dev.describe());
    let roomy = RateLimiterConfig {
        bandwidth: Some(BucketConfig {
            size: 1 << 20,
            one_time_burst: None,
            refill_time: 1000,
        }),
        ops: None,
    };
    let now = dev.update_rate_limiter(LimiterKind::Disk, &roomy).unwrap();
    // The device asks the loop to look at its queue again.
    assert_eq!(notify.read().unwrap(), 1);
    dev.process();
    dev.quiesce().expect("quiesce");
    assert_eq!(now, roomy);
    assert_eq!(dev.state().config.rate_limiter, Some(roomy));
    assert_eq!(mock.used().idx().load(), 4);
}

#[test]
fn a_disk_refuses_a_network_limiter() {
    let img = TempImage::new(1 << 16, 0);
    let mut dev = Block::new(config(&img)).unwrap();
    let e = dev
        .update_rate_limiter(LimiterKind::Transmit, &starved())
        .unwrap_err();
    assert_eq!(e.to_string(), "virtio-blk has no transmit rate limiter");
}

/// A byte bucket of one 4 KiB read per 20 ms.
fn one_read_per_20ms() -> RateLimiterConfig {
    RateLimiterConfig {
        bandwidth: Some(BucketConfig {
            size: 4096,
            one_time_burst: None,
            refill_time: 20,
        }),
        ops: None,
    }
}

/// Serve `dev` as its event loop does, on each event of its rate limiter's timer,
/// until the driver's used index reaches `n`; each event is waited for at most 10 s.
fn serve_on_timer_events(dev: &mut Block, used: impl Fn() -> u16, n: u16) {
    use std::os::fd::AsRawFd;
    use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
    let epoll = Epoll::new().unwrap();
    let fd = dev.limiter.timer().as_raw_fd();
    epoll
        .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, 1))
        .unwrap();
    let mut events = [EpollEvent::default(); 1];
    while used() < n {
        assert_eq!(
            epoll.wait(10_000, &mut events).unwrap(),
            1,
            "no timer event"
        );
        dev.limiter.on_timer();
        dev.process();
        dev.quiesce().expect("quiesce");
    }
}

#[test]
fn a_queue_blocked_at_a_reset_is_dropped_and_the_next_activations_queue_is_served_on_the_timer() {
    let (mem, img) = (memory(), TempImage::new(1 << 16, 0x33));
    let limited = BlockConfig {
        rate_limiter: Some(one_read_per_20ms()),
        ..config(&img)
    };
    let mut dev = Block::new(limited).unwrap();
    let (first, mut q) = queue(&mem, 0, 32);
    q.set_event_idx(false);
    first
        .add_desc_chains(&chains(&mem, &[VIRTIO_BLK_T_IN; 6]), 0)
        .unwrap();
    let irq = Arc::new(Interrupt::new().unwrap());
    let evt = || EventFd::new(EFD_NONBLOCK).unwrap();
    dev.activate(mem.clone(), irq.clone(), vec![(q, evt())])
        .unwrap();
    dev.process();
    dev.quiesce().expect("quiesce");
    let served_before_reset = first.used().idx().load();
    assert!(served_before_reset < 6, "{}", dev.describe());
    dev.reset();
    // The driver sets the device up again, with a new ring elsewhere in its memory.
    let (second, mut q) = queue(&mem, 0x4000, 32);
    q.set_event_idx(false);
    second
        .add_desc_chains(&chains(&mem, &[VIRTIO_BLK_T_IN; 4]), 0)
        .unwrap();
    dev.activate(mem.clone(), irq, vec![(q, evt())]).unwrap();
    dev.process();
    serve_on_timer_events(&mut dev, || second.used().idx().load(), 4);
    assert_eq!(statuses(&mem, 4), [VIRTIO_BLK_S_OK as u8; 4]);
    assert_eq!(first.used().idx().load(), served_before_reset);
}
