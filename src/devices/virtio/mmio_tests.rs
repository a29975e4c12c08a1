//! Tests of the virtio-mmio register file with a dummy device.
use super::*;
use crate::devices::virtio::descriptor::test_util::memory;
use crate::devices::virtio::VIRTIO_RING_F_EVENT_IDX;

#[derive(Default)]
struct Dummy {
    acked: u64,
    activations: usize,
    resets: usize,
    event_idx: bool,
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn avail_features(&self) -> u64 {
        feature(VIRTIO_RING_F_EVENT_IDX) | feature(33)
    }
    fn set_acked_features(&mut self, features: u64) {
        self.acked = features;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = (offset as usize + i) as u8 + 0x10;
        }
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn describe(&self) -> String {
        "dummy".into()
    }
    fn persist(&self) -> crate::devices::virtio::persist::DevicePersist {
        crate::devices::virtio::persist::DevicePersist::Rng
    }
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        _interrupt: Arc<Interrupt>,
        queues: Vec<(Queue, EventFd)>,
    ) -> Result<(), VirtioError> {
        self.event_idx = queues[0].0.event_idx_enabled();
        self.activations += 1;
        Ok(())
    }
    fn reset(&mut self) {
        self.resets += 1;
    }
}

fn transport() -> (MmioTransport, Arc<Mutex<Dummy>>) {
    let dev = Arc::new(Mutex::new(Dummy::default()));
    (MmioTransport::new(memory(), dev.clone()).unwrap(), dev)
}

fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

/// ACKNOWLEDGE, DRIVER, features (VERSION_1 + `low`), FEATURES_OK.
fn negotiate(t: &mut MmioTransport, low: u32) {
    wr(t, 0x70, 1);
    wr(t, 0x70, 3);
    wr(t, 0x24, 0);
    wr(t, 0x20, low);
    wr(t, 0x24, 1);
    wr(t, 0x20, 1);
    wr(t, 0x70, 0xb);
}

/// Configure queue `sel` with `size` and rings at `base`.
fn setup_queue(t: &mut MmioTransport, sel: u32, size: u32, base: u64) {
    wr(t, 0x30, sel);
    wr(t, 0x38, size);
    wr(t, 0x80, base as u32);
    wr(t, 0x90, (base + 0x1000) as u32);
    wr(t, 0xa0, (base + 0x2000) as u32);
    wr(t, 0x44, 1);
}

fn driver_ok(t: &mut MmioTransport) {
    wr(t, 0x70, 0xf);
}

#[test]
fn identity_registers_read_magic_version_and_ids() {
    let (mut t, _) = transport();
    assert_eq!(rd(&mut t, 0x00), 0x7472_6976);
    assert_eq!(rd(&mut t, 0x04), 2);
    assert_eq!(rd(&mut t, 0x08), 42);
    assert_eq!(rd(&mut t, 0x0c), VENDOR_ID);
}

#[test]
fn feature_pages_offer_device_features_and_version_1() {
    let (mut t, _) = transport();
    assert_eq!(rd(&mut t, 0x10), 1 << VIRTIO_RING_F_EVENT_IDX);
    wr(&mut t, 0x14, 1);
    assert_eq!(rd(&mut t, 0x10), 0b11);
}

#[test]
fn queue_num_max_reads_selected_queue() {
    let (mut t, _) = transport();
    wr(&mut t, 0x30, 1);
    assert_eq!(rd(&mut t, 0x34), 8);
    wr(&mut t, 0x30, 9);
    assert_eq!(rd(&mut t, 0x34), 0);
}

#[test]
fn features_ok_is_refused_without_version_1() {
    let (mut t, _) = transport();
    wr(&mut t, 0x70, 1);
    wr(&mut t, 0x70, 3);
    wr(&mut t, 0x70, 0xb);
    assert_eq!(rd(&mut t, 0x70), 3);
}

#[test]
fn features_ok_is_refused_for_unoffered_feature() {
    let (mut t, _) = transport();
    negotiate(&mut t, 1 << 5);
    assert_eq!(rd(&mut t, 0x70), 3);
}

#[test]
fn features_ok_passes_acked_features_to_device() {
    let (mut t, dev) = transport();
    negotiate(&mut t, 1 << VIRTIO_RING_F_EVENT_IDX);
    assert_eq!(rd(&mut t, 0x70), 0xb);
    assert_eq!(
        dev.lock().unwrap().acked,
        (1 << 32) | (1 << VIRTIO_RING_F_EVENT_IDX)
    );
}

#[test]
fn driver_ok_with_valid_queues_activates_device_with_event_idx() {
    let (mut t, dev) = transport();
    negotiate(&mut t, 1 << VIRTIO_RING_F_EVENT_IDX);
    setup_queue(&mut t, 0, 16, 0x10000);
    setup_queue(&mut t, 1, 8, 0x20000);
    driver_ok(&mut t);
    assert_eq!(rd(&mut t, 0x70), 0xf);
    assert_eq!(dev.lock().unwrap().activations, 1);
    assert!(dev.lock().unwrap().event_idx);
}

#[test]
fn queue_size_not_power_of_two_sets_needs_reset() {
    let (mut t, dev) = transport();
    negotiate(&mut t, 0);
    setup_queue(&mut t, 0, 12, 0x10000);
    setup_queue(&mut t, 1, 8, 0x20000);
    driver_ok(&mut t);
    assert_eq!(rd(&mut t, 0x70), 0xf | VIRTIO_CONFIG_S_NEEDS_RESET);
    assert_eq!(dev.lock().unwrap().activations, 0);
}

#[test]
fn queue_size_above_max_sets_needs_reset() {
    let (mut t, dev) = transport();
    negotiate(&mut t, 0);
    setup_queue(&mut t, 0, 16, 0x10000);
    setup_queue(&mut t, 1, 16, 0x20000);
    driver_ok(&mut t);
    assert_eq!(
        rd(&mut t, 0x70) & VIRTIO_CONFIG_S_NEEDS_RESET,
        VIRTIO_CONFIG_S_NEEDS_RESET
    );
    assert_eq!(dev.lock().unwrap().activations, 0);
}

#[test]
fn unaligned_descriptor_table_sets_needs_reset() {
    let (mut t, dev) = transport();
    negotiate(&mut t, 0);
    setup_queue(&mut t, 0, 16, 0x10004);
    setup_queue(&mut t, 1, 8, 0x20000);
    driver_ok(&mut t);
    assert_eq!(
        rd(&mut t, 0x70) & VIRTIO_CONFIG_S_NEEDS_RESET,
        VIRTIO_CONFIG_S_NEEDS_RESET
    );
    assert_eq!(dev.lock().unwrap().activations, 0);
}

#[test]
fn rings_outside_memory_set_needs_reset() {
    let (mut t, dev) = transport();
    negotiate(&mut t, 0);
    setup_queue(&mut t, 0, 16, 0x10000);
    setup_queue(&mut t, 1, 8, 0xff000);
    driver_ok(&mut t);
    assert_eq!(
        rd(&mut t, 0x70) & VIRTIO_CONFIG_S_NEEDS_RESET,
        VIRTIO_CONFIG_S_NEEDS_RESET
    );
    assert_eq!(dev.lock().unwrap().activations, 0);
}

#[test]
fn queue_not_ready_sets_needs_reset() {
    let (mut t, dev) = transport();
    negotiate(&mut t, 0);
    setup_queue(&mut t, 0, 16, 0x10000);
    driver_ok(&mut t);
    assert_eq!(
        rd(&mut t, 0x70) & VIRTIO_CONFIG_S_NEEDS_RESET,
        VIRTIO_CONFIG_S_NEEDS_RESET
    );
    assert_eq!(dev.lock().unwrap().activations, 0);
}

#[test]
fn queue_registers_before_features_ok_are_ignored() {
    let (mut t, _) = transport();
    wr(&mut t, 0x44, 1);
    assert_eq!(rd(&mut t, 0x44), 0);
}

#[test]
fn driver_ok_without_features_ok_is_refused() {
    let (mut t, dev) = transport();
    wr(&mut t, 0x70, 1);
    wr(&mut t, 0x70, 3);
    wr(&mut t, 0x70, 7);
    assert_eq!(rd(&mut t, 0x70), 3);
    assert_eq!(dev.lock().unwrap().activations, 0);
}

#[test]
fn queue_notify_write_signals_queue_eventfd() {
    let (mut t, _) = transport();
    wr(&mut t, 0x50, 1);
    assert_eq!(t.queue_events()[1].read().unwrap(), 1);
    wr(&mut t, 0x50, 7);
}

#[test]
fn interrupt_ack_clears_the_config_bit_and_keeps_the_vring_bit_until_reset() {
    let (mut t, _) = transport();
    assert_eq!(rd(&mut t, 0x60), 0);
    t.interrupt().signal_used_queue().unwrap();
    t.interrupt().signal_config_change().unwrap();
    assert_eq!(rd(&mut t, 0x60), 3);
    wr(&mut t, 0x64, 3);
    assert_eq!(rd(&mut t, 0x60), 1);
    wr(&mut t, 0x64, 1);
    assert_eq!(rd(&mut t, 0x60), 1);
    assert_eq!(t.interrupt_evt().read().unwrap(), 2);
    wr(&mut t, 0x70, 0);
    assert_eq!(rd(&mut t, 0x60), 0);
}

#[test]
fn a_backend_handed_the_irqfd_finds_the_vring_bit_set() {
    let (mut t, _) = transport();
    t.interrupt().expect_backend_calls();
    assert_eq!(rd(&mut t, 0x60), 1);
    assert!(t.interrupt_evt().read().is_err(), "no interrupt of its own");
}

#[test]
fn status_zero_resets_device_and_registers() {
    let (mut t, dev) = transport();
    negotiate(&mut t, 0);
    setup_queue(&mut t, 0, 16, 0x10000);
    setup_queue(&mut t, 1, 8, 0x20000);
    driver_ok(&mut t);
    wr(&mut t, 0x70, 0);
    assert_eq!(rd(&mut t, 0x70), 0);
    assert_eq!(dev.lock().unwrap().resets, 1);
    assert_eq!(
        t.state().queues[0],
        QueueConfig {
            max_size: 16,
            size: 16,
            ..Default::default()
        }
    );
}

#[test]
fn reset_clears_needs_reset() {
    let (mut t, _) = transport();
    t.interrupt().set_needs_reset();
    wr(&mut t, 0x70, 0);
    assert_eq!(rd(&mut t, 0x70), 0);
}

#[test]
fn config_space_reads_reach_device() {
    let (mut t, _) = transport();
    let mut b = [0u8; 2];
    t.read(0x102, &mut b);
    assert_eq!(b, [0x12, 0x13]);
}

#[test]
fn misaligned_register_read_returns_zero() {
    let (mut t, _) = transport();
    let mut b = [0xffu8; 2];
    t.read(0x00, &mut b);
    assert_eq!(b, [0, 0]);
    assert_eq!(rd(&mut t, 0x02), 0);
}

#[test]
fn config_generation_changes_on_config_notification() {
    let (mut t, _) = transport();
    t.notify_config_change();
    assert_eq!(rd(&mut t, 0xfc), 1);
    assert_eq!(rd(&mut t, 0x60), 2);
}

#[test]
fn driver_can_set_failed_after_needs_reset() {
    let (mut t, _) = transport();
    negotiate(&mut t, 0);
    t.interrupt().set_needs_reset();
    let status = rd(&mut t, 0x70);
    wr(&mut t, 0x70, status | VIRTIO_CONFIG_S_FAILED);
    assert_eq!(
        rd(&mut t, 0x70),
        0xb | VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED
    );
}
