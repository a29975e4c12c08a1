//! End-to-end tests of the wiring the VMM uses: manager, transport registers, device,
//! event loop, ioeventfd duplicate and irqfd, with a simulated driver.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::block::{Block, BlockConfig};
use super::descriptor::test_util::*;
use super::manager::{MmioDeviceInfo, VirtioManager};
use super::VirtioDevice;
use crate::devices::bus::BusDevice;

fn wr(info: &MmioDeviceInfo, offset: u64, v: u32) {
    info.transport
        .lock()
        .unwrap()
        .write(offset, &v.to_le_bytes());
}

fn rd(info: &MmioDeviceInfo, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    info.transport.lock().unwrap().read(offset, &mut b);
    u32::from_le_bytes(b)
}

/// What Linux's virtio-mmio driver does up to DRIVER_OK, for one queue.
fn driver_init(info: &MmioDeviceInfo, mock: &MockSplitQueue<'_, GuestMemoryMmap>) {
    wr(info, 0x70, 1);
    wr(info, 0x70, 3);
    wr(info, 0x24, 1);
    wr(info, 0x20, 1);
    wr(info, 0x70, 0xb);
    wr(info, 0x30, 0);
    wr(info, 0x38, 16);
    wr(info, 0x80, mock.desc_table_addr().0 as u32);
    wr(info, 0x90, mock.avail_addr().0 as u32);
    wr(info, 0xa0, mock.used_addr().0 as u32);
    wr(info, 0x44, 1);
    wr(info, 0x70, 0xf);
}

fn attach<T: VirtioDevice + MutEventSubscriber + 'static>(
    mem: &GuestMemoryMmap,
    dev: T,
) -> (MmioDeviceInfo, EventManager<Arc<Mutex<T>>>) {
    let dev = Arc::new(Mutex::new(dev));
    let mut manager = EventManager::<Arc<Mutex<T>>>::new().unwrap();
    manager.add_subscriber(dev.clone());
    (
        VirtioManager::default().attach(mem.clone(), dev).unwrap(),
        manager,
    )
}

#[test]
fn block_read_through_transport_event_loop_and_irqfd() {
    let mem = memory();
    let img = TempImage::new(4096, 0x77);
    let config = BlockConfig {
        path: img.0.clone(),
        read_only: true,
        id: None,
        root: false,
        rate_limiter: None,
    };
    let (info, mut manager) = attach(&mem, Block::new(config).unwrap());
    let mock = MockSplitQueue::create(&mem, GuestAddress(0x4000), 16);
    driver_init(&info, &mock);
    mem.write_obj(VIRTIO_BLK_T_IN, GuestAddress(0x8000))
        .unwrap();
    mock.add_desc_chains(
        &linked(&[r(0x8000, 16), w(0x10000, 512), w(0x9000, 1)], 0),
        0,
    )
    .unwrap();
    manager.run_with_timeout(50).unwrap();
    info.ioevents[0].fd.write(1).unwrap();
    manager.run_with_timeout(50).unwrap();
    assert_eq!(rd(&info, 0x70), 0xf);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(0x9000)).unwrap(),
        VIRTIO_BLK_S_OK as u8
    );
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x101ff)).unwrap(), 0x77);
    assert_eq!(info.irqfd.read().unwrap(), 1);
    assert_eq!(rd(&info, 0x60), 1);
}

#[test]
fn hostile_chain_sets_needs_reset_through_transport() {
    let mem = memory();
    let img = TempImage::new(4096, 0);
    let config = BlockConfig {
        path: img.0.clone(),
        read_only: false,
        id: None,
        root: false,
        rate_limiter: None,
    };
    let (info, mut manager) = attach(&mem, Block::new(config).unwrap());
    let mock = MockSplitQueue::create(&mem, GuestAddress(0x4000), 16);
    driver_init(&info, &mock);
    let looping = raw(0x8000, 16, 1, 0);
    mock.add_desc_chains(&[looping], 0).unwrap();
    manager.run_with_timeout(50).unwrap();
    wr(&info, 0x50, 0);
    manager.run_with_timeout(50).unwrap();
    assert_eq!(rd(&info, 0x70), 0xf | 0x40);
    assert_eq!(rd(&info, 0x60), 2);
    wr(&info, 0x70, 0);
    assert_eq!(rd(&info, 0x70), 0);
}

#[test]
fn transport_on_bus_answers_magic_at_slot_base() {
    let mem = memory();
    let (info, _manager) = attach(&mem, super::rng::Rng::new(None).unwrap());
    let mut bus = crate::devices::bus::Bus::new();
    bus.insert(info.transport.clone(), info.slot.base, info.slot.len)
        .unwrap();
    let mut magic = [0u8; 4];
    assert!(bus.read(info.slot.base, &mut magic));
    assert_eq!(&magic, b"virt");
}

/// Serves one read of sector 0 into 0x10000 and returns its status byte.
fn read_sector(
    mem: &GuestMemoryMmap,
    info: &MmioDeviceInfo,
    mock: &MockSplitQueue<'_, GuestMemoryMmap>,
    manager: &mut EventManager<Arc<Mutex<Block>>>,
) -> u8 {
    mem.write_obj(VIRTIO_BLK_T_IN, GuestAddress(0x8000))
        .unwrap();
    mem.write_obj(0xffu8, GuestAddress(0x9000)).unwrap();
    mock.add_desc_chains(
        &linked(&[r(0x8000, 16), w(0x10000, 512), w(0x9000, 1)], 0),
        0,
    )
    .unwrap();
    manager.run_with_timeout(50).unwrap();
    info.ioevents[0].fd.write(1).unwrap();
    manager.run_with_timeout(50).unwrap();
    mem.read_obj::<u8>(GuestAddress(0x9000)).unwrap()
}

#[test]
fn a_restored_block_slot_goes_on_where_it_was_on_its_new_disk() {
    let mem = memory();
    let small = TempImage::new(4096, 0x11);
    let config = |path: &std::path::Path| BlockConfig {
        path: path.to_path_buf(),
        read_only: true,
        id: None,
        root: false,
        rate_limiter: None,
    };
    let (info, mut manager) = attach(&mem, Block::new(config(&small.0)).unwrap());
    let mock = MockSplitQueue::create(&mem, GuestAddress(0x4000), 16);
    driver_init(&info, &mock);
    assert_eq!(
        read_sector(&mem, &info, &mock, &mut manager),
        VIRTIO_BLK_S_OK as u8
    );
    let saved = {
        let transport = info.transport.lock().unwrap();
        let dev = transport.device().clone();
        let dev = dev.lock().unwrap();
        transport.save_with(&*dev)
    };
    assert_eq!(saved.queues[0].next_avail, 1);
    // The same slot rebuilt on a larger disk with other bytes, as a restore does.
    let big = TempImage::new(8192, 0x22);
    let (restored, mut manager) = attach(&mem, Block::new(config(&big.0)).unwrap());
    restored
        .transport
        .lock()
        .unwrap()
        .restore(0, &saved)
        .unwrap();
    assert_eq!(rd(&restored, 0x70), 0xf);
    // The capacity change is announced: config generation bumped, config interrupt.
    assert_eq!(rd(&restored, 0xfc), 1);
    assert_eq!(rd(&restored, 0x60) & super::INT_CONFIG, super::INT_CONFIG);
    // The next request is served from the saved queue position, on the new disk.
    assert_eq!(
        read_sector(&mem, &restored, &mock, &mut manager),
        VIRTIO_BLK_S_OK as u8
    );
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x101ff)).unwrap(), 0x22);
}

#[test]
fn a_snapshot_of_another_device_kind_is_refused() {
    let mem = memory();
    let img = TempImage::new(4096, 0);
    let block = Block::new(BlockConfig {
        path: img.0.clone(),
        read_only: true,
        id: None,
        root: false,
        rate_limiter: None,
    })
    .unwrap();
    let (info, _manager) = attach(&mem, block);
    let (rng, _rng_manager) = attach(&mem, super::rng::Rng::new(None).unwrap());
    let saved = {
        let transport = rng.transport.lock().unwrap();
        let dev = transport.device().clone();
        let dev = dev.lock().unwrap();
        transport.save_with(&*dev)
    };
    let err = info
        .transport
        .lock()
        .unwrap()
        .restore(3, &saved)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "slot 3: the snapshot has device type 4 where this VM has 2"
    );
}
