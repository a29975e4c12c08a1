//! The virtio-rng device: entropy source, queue state and the `VirtioDevice` impl.

use std::fs::File;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::request;
use crate::devices::rate_limiter::{RateLimiter, RateLimiterConfig, RateLimiterError};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::persist::DevicePersist;
use crate::devices::virtio::queues::QueueSet;
use crate::devices::virtio::{
    feature, Interrupt, VirtioDevice, VirtioError, TYPE_RNG, VIRTIO_RING_F_EVENT_IDX,
};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Chains completed per event before yielding to other devices.
const BUDGET: usize = 256;
const ENTROPY_PATH: &str = "/dev/urandom";

/// Errors creating the rng device.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// The entropy source could not be opened.
    #[error("cannot open {path}")]
    Open {
        /// Path of the source.
        path: &'static str,
        /// The open error.
        #[source]
        source: std::io::Error,
    },
    /// Eventfds could not be created.
    #[error("virtio-rng setup")]
    Setup(#[from] VirtioError),
    /// The rate limiter could not be made.
    #[error("virtio-rng rate_limiter")]
    RateLimiter(#[from] RateLimiterError),
}

/// The device's state as plain data.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// Features the driver accepted.
    pub acked_features: u64,
}

/// A virtio entropy device.
#[derive(Debug)]
pub struct Rng {
    pub(super) queues: QueueSet,
    /// Bytes and requests the guest may take (its timer is watched by the event loop).
    pub(super) limiter: RateLimiter,
    source: File,
    state: RngState,
}

impl Rng {
    /// File descriptors the device and its virtio-mmio transport hold at most:
    /// `/dev/urandom`, the rate limiter's timer, the queue set and the transport's
    /// eventfds (one queue).
    pub const MAX_FDS: usize =
        1 + RateLimiter::FDS + QueueSet::max_fds(1) + MmioTransport::max_fds(1);

    /// A device reading from `/dev/urandom`, within `rate_limiter` (none: unlimited).
    pub fn new(rate_limiter: Option<&RateLimiterConfig>) -> Result<Self, RngError> {
        let limiter = RateLimiter::new(rate_limiter)?;
        let source = File::open(ENTROPY_PATH).map_err(|source| RngError::Open {
            path: ENTROPY_PATH,
            source,
        })?;
        Ok(Self {
            queues: QueueSet::new("rng", &[QUEUE_SIZE])?,
            limiter,
            source,
            state: RngState::default(),
        })
    }

    /// The device's state.
    pub fn state(&self) -> RngState {
        self.state.clone()
    }

    /// The limits in force (none: unlimited).
    pub fn rate_limiter(&self) -> Option<RateLimiterConfig> {
        RateLimiterConfig::in_force(Some(&self.limiter.config()))
    }

    /// Serve the request queue (called by the event handler on a notification, and
    /// when the rate limiter's timer fired) as long as the limiter lets requests
    /// through; the rest wait in the ring for the timer.
    pub(super) fn process(&mut self) {
        if !self.queues.is_running() {
            return;
        }
        let Some(active) = self.queues.active.as_mut() else {
            return;
        };
        let (queue, mem) = (&mut active.queues[0], &active.mem);
        let result =
            request::process_queue(queue, mem, &mut self.source, BUDGET, &mut self.limiter);
        self.queues.finish(0, result);
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        self.queues.max_sizes()
    }

    fn avail_features(&self) -> u64 {
        feature(VIRTIO_RING_F_EVENT_IDX)
    }

    fn set_acked_features(&mut self, features: u64) {
        self.state.acked_features = features;
    }

    /// virtio-rng has no configuration space.
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<(Queue, EventFd)>,
    ) -> Result<(), VirtioError> {
        self.queues.activate(mem, interrupt, queues)
    }

    fn reset(&mut self) {
        self.queues.reset();
        self.state = RngState::default();
    }

    fn describe(&self) -> String {
        format!(
            "{} (rate limiter {})",
            self.queues.describe(),
            self.limiter.describe()
        )
    }

    fn persist(&self) -> DevicePersist {
        DevicePersist::Rng
    }

    fn queue_set(&self) -> Option<&QueueSet> {
        Some(&self.queues)
    }

    fn after_restore(&mut self, _saved: &DevicePersist) -> bool {
        self.queues.kick_all();
        false
    }
}
