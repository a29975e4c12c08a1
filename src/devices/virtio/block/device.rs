//! The virtio-blk device: configuration space, features and the `VirtioDevice` impl.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::config::BlockConfig;
use super::disk::{Disk, DiskError, WriteZeroes};
use super::inflight;
use super::request::{self, MAX_DESCRIPTORS, MAX_DISCARD_SECTORS, SECTOR_SIZE};
use super::ring::Ring;
use crate::devices::rate_limiter::{LimiterKind, RateLimiter, RateLimiterConfig, RateLimiterError};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::persist::DevicePersist;
use crate::devices::virtio::queues::QueueSet;
use crate::devices::virtio::{
    feature, Interrupt, VirtioDevice, VirtioError, TYPE_BLOCK, VIRTIO_RING_F_EVENT_IDX,
};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Requests served per event before yielding to other devices.
const BUDGET: usize = 256;
/// Size of `struct virtio_blk_config` up to `write_zeroes_may_unmap` (+3 bytes padding).
const CONFIG_LEN: usize = 60;

/// Errors creating a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image could not be opened.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// Eventfds could not be created.
    #[error("virtio-blk setup")]
    Setup(#[from] VirtioError),
    /// The rate limiter could not be made.
    #[error("virtio-blk rate_limiter")]
    RateLimiter(#[from] RateLimiterError),
}

/// The device's state as plain data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// The configuration it was built from.
    pub config: BlockConfig,
    /// Features offered.
    pub avail_features: u64,
    /// Features the driver accepted.
    pub acked_features: u64,
}

/// A virtio block device.
#[derive(Debug)]
pub struct Block {
    pub(super) queues: QueueSet,
    /// Requests in flight, when io_uring is available (else each is served whole on
    /// the event loop). Declared before `disk`, so it is dropped (waiting for the
    /// kernel) before the file closes.
    pub(super) ring: Option<Ring>,
    /// Bytes and requests the guest may use (its timer is watched by the event loop).
    pub(super) limiter: RateLimiter,
    disk: Disk,
    config_space: [u8; CONFIG_LEN],
    state: BlockState,
}

fn put(space: &mut [u8], offset: usize, bytes: &[u8]) {
    space[offset..offset + bytes.len()].copy_from_slice(bytes);
}

/// `struct virtio_blk_config` (virtio 1.2 §5.2.4), little endian.
fn config_space(disk: &Disk) -> [u8; CONFIG_LEN] {
    let mut s = [0u8; CONFIG_LEN];
    let seg_max = u32::try_from(MAX_DESCRIPTORS - 2).expect("small");
    put(&mut s, 0, &disk.sectors().to_le_bytes());
    put(&mut s, 12, &seg_max.to_le_bytes());
    put(&mut s, 20, &(SECTOR_SIZE as u32).to_le_bytes());
    put(&mut s, 36, &MAX_DISCARD_SECTORS.to_le_bytes());
    put(&mut s, 40, &1u32.to_le_bytes());
    put(&mut s, 44, &1u32.to_le_bytes());
    put(&mut s, 48, &MAX_DISCARD_SECTORS.to_le_bytes());
    put(&mut s, 52, &1u32.to_le_bytes());
    s[56] = u8::from(disk.write_zeroes() == WriteZeroes::PunchHole || disk.discard());
    s
}

fn features(disk: &Disk) -> u64 {
    let mut f = feature(VIRTIO_RING_F_EVENT_IDX)
        | feature(VIRTIO_BLK_F_FLUSH)
        | feature(VIRTIO_BLK_F_SEG_MAX)
        | feature(VIRTIO_BLK_F_BLK_SIZE);
    if disk.read_only() {
        f |= feature(VIRTIO_BLK_F_RO);
    }
    if disk.discard() {
        f |= feature(VIRTIO_BLK_F_DISCARD);
    }
    if disk.write_zeroes() != WriteZeroes::Unsupported {
        f |= feature(VIRTIO_BLK_F_WRITE_ZEROES);
    }
    f
}

impl Block {
    /// File descriptors the device and its virtio-mmio transport hold at most: the
    /// image, the io_uring and its eventfd, the rate limiter's timer, the queue set and
    /// the transport's eventfds (one queue).
    pub const MAX_FDS: usize =
        3 + RateLimiter::FDS + QueueSet::max_fds(1) + MmioTransport::max_fds(1);

    /// Open the image of `config`.
    pub fn new(mut config: BlockConfig) -> Result<Self, BlockError> {
        let disk = Disk::open(&config)?;
        let limiter = RateLimiter::new(config.rate_limiter.as_ref())?;
        config.rate_limiter = RateLimiterConfig::in_force(Some(&limiter.config()));
        let state = BlockState {
            avail_features: features(&disk),
            acked_features: 0,
            config,
        };
        let ring = Ring::new(QUEUE_SIZE)
            .inspect_err(|e| log::debug!("virtio-blk: no io_uring ({e}); one request at a time"))
            .ok();
        Ok(Self {
            queues: QueueSet::new("blk", &[QUEUE_SIZE])?,
            ring,
            limiter,
            config_space: config_space(&disk),
            disk,
            state,
        })
    }

    /// The device's state.
    pub fn state(&self) -> BlockState {
        self.state.clone()
    }

    /// The open image.
    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// Serve the request queue (called by the event handler on a notification, and when
    /// the rate limiter's timer fired): start every request on the ring, or serve them
    /// one by one without one, as long as the limiter lets them through.
    pub(super) fn process(&mut self) {
        if !self.queues.is_running() {
            return;
        }
        let Some(active) = self.queues.active.as_mut() else {
            return;
        };
        let (queue, mem) = (&mut active.queues[0], &active.mem);
        let limiter = &mut self.limiter;
        let result = match self.ring.as_mut() {
            Some(ring) => inflight::start(queue, mem, &self.disk, ring, BUDGET, limiter),
            None => request::process_queue(queue, mem, &mut self.disk, BUDGET, limiter),
        };
        self.queues.finish(0, result);
        // Requests on data in the page cache completed during the submission: answer
        // them now rather than on the next turn of the loop.
        if let Some(ring) = self.ring.as_mut() {
            let done = ring.reap(self.disk.file());
            self.complete(done);
        }
    }

    /// Put what the ring finished in the used ring, then start what waited for room.
    pub(super) fn on_completions(&mut self) {
        let Some(ring) = self.ring.as_mut() else {
            return;
        };
        let done = ring.reap(self.disk.file());
        self.complete(done);
        // Requests that waited for room in the ring.
        self.process();
    }

    /// Put finished requests in the used ring and interrupt the driver if it asks.
    fn complete(&mut self, done: Vec<super::ring::Completed>) {
        if !self.queues.is_running() {
            return;
        }
        let Some(active) = self.queues.active.as_mut() else {
            return;
        };
        match inflight::finish(&mut active.queues[0], &active.mem, done) {
            Ok(true) => self.queues.signal_used(),
            Ok(false) => {}
            Err(e) => self.queues.mark_broken(&e),
        }
    }

    /// Wait for every request in flight and complete it (a snapshot: afterwards guest
    /// memory and the queue change no more while the device is held).
    fn drain_in_flight(&mut self) {
        if let Some(ring) = self.ring.as_mut() {
            let done = ring.wait_all(self.disk.file());
            self.complete(done);
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        self.queues.max_sizes()
    }

    fn avail_features(&self) -> u64 {
        self.state.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.state.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::read_config_bytes(&self.config_space, offset, data);
    }

    /// The block configuration is read-only for the driver (no CONFIG_WCE).
    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::debug!("virtio-blk: config write at {offset:#x} ignored");
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<(Queue, EventFd)>,
    ) -> Result<(), VirtioError> {
        self.queues.activate(mem, interrupt, queues)
    }

    /// Waits for requests in flight first (the kernel may still be writing guest
    /// memory); their results are dropped with the queue.
    fn reset(&mut self) {
        if let Some(ring) = self.ring.as_mut() {
            ring.wait_all(self.disk.file());
        }
        self.queues.reset();
        self.state.acked_features = 0;
    }

    /// A request the kernel still has (its wait failed) refuses the snapshot: it
    /// could write guest memory while that is copied.
    fn quiesce(&mut self) -> Result<(), VirtioError> {
        self.drain_in_flight();
        match self.ring.as_ref().map_or(0, |r| r.in_flight()) {
            0 => Ok(()),
            n => Err(VirtioError::Quiesce {
                device: format!("virtio-blk on {}", self.state.config.path.display()),
                source: format!("{n} request(s) still in flight on io_uring").into(),
            }),
        }
    }

    fn describe(&self) -> String {
        let in_flight = match &self.ring {
            Some(ring) => format!("{} request(s) in flight on io_uring", ring.in_flight()),
            None => "no io_uring".to_string(),
        };
        format!(
            "{} ({}, {in_flight}, rate limiter {})",
            self.queues.describe(),
            self.state.config.path.display(),
            self.limiter.describe()
        )
    }

    fn persist(&self) -> DevicePersist {
        self.persist_state()
    }

    fn queue_set(&self) -> Option<&QueueSet> {
        Some(&self.queues)
    }

    fn after_restore(&mut self, saved: &DevicePersist) -> bool {
        self.restored(saved)
    }

    /// New limits for the guest's requests; the queue is looked at again, in case they
    /// let through what waited.
    fn update_rate_limiter(
        &mut self,
        kind: LimiterKind,
        change: &RateLimiterConfig,
    ) -> Result<RateLimiterConfig, RateLimiterError> {
        if kind != LimiterKind::Disk {
            return Err(RateLimiterError::Unsupported {
                device: "virtio-blk",
                kind,
            });
        }
        let config = self.limiter.update(change)?;
        self.state.config.rate_limiter = RateLimiterConfig::in_force(Some(&config));
        self.queues.requeue(0);
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::descriptor::test_util::TempImage;

    fn block(read_only: bool) -> (Block, TempImage) {
        let img = TempImage::new(1 << 20, 0);
        let config = BlockConfig {
            path: img.0.clone(),
            read_only,
            id: None,
            root: false,
            rate_limiter: None,
        };
        (Block::new(config).unwrap(), img)
    }

    #[test]
    fn capacity_is_file_size_in_sectors() {
        let (b, _img) = block(false);
        let mut cap = [0u8; 8];
        b.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 2048);
    }

    #[test]
    fn read_only_disk_offers_ro_and_no_discard() {
        let (b, _img) = block(true);
        assert_ne!(b.avail_features() & feature(VIRTIO_BLK_F_RO), 0);
        assert_eq!(b.avail_features() & feature(VIRTIO_BLK_F_DISCARD), 0);
        assert_eq!(b.avail_features() & feature(VIRTIO_BLK_F_WRITE_ZEROES), 0);
    }

    #[test]
    fn tmpfs_disk_offers_discard_and_write_zeroes() {
        let (b, _img) = block(false);
        assert_ne!(b.avail_features() & feature(VIRTIO_BLK_F_DISCARD), 0);
        assert_ne!(b.avail_features() & feature(VIRTIO_BLK_F_WRITE_ZEROES), 0);
    }

    #[test]
    fn config_read_past_end_is_zero() {
        let (b, _img) = block(false);
        let mut d = [0xffu8; 4];
        b.read_config(200, &mut d);
        assert_eq!(d, [0; 4]);
    }

    #[test]
    fn missing_image_names_path() {
        let config: BlockConfig = "path=/nonexistent/husk.img".parse().unwrap();
        let e = Block::new(config).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot open disk image /nonexistent/husk.img"
        );
    }
}
