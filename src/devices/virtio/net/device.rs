//! The virtio-net device: TAP, MAC configuration space, features and queues.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::config::{MacAddr, NetConfig};
use super::header::{Offloads, NET_HDR_LEN, OFFERED};
use super::queues::{self, FrameIo};
use super::rx::RxState;
use super::tap::{Tap, TapError};
use super::vhost::{KernelPath, VhostNetError};
use crate::devices::rate_limiter::{LimiterKind, RateLimiter, RateLimiterConfig, RateLimiterError};
use crate::devices::virtio::guest_io::IoVecs;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::persist::DevicePersist;
use crate::devices::virtio::queues::QueueSet;
use crate::devices::virtio::{
    feature, Interrupt, VirtioDevice, VirtioError, TYPE_NET, VIRTIO_RING_F_EVENT_IDX,
};

/// Size of the RX and TX queues.
pub const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
const BUDGET: usize = 256;

/// Errors creating a network device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The TAP could not be opened.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// Eventfds could not be created.
    #[error("virtio-net setup")]
    Setup(#[from] VirtioError),
    /// The kernel data path could not be set up.
    #[error(transparent)]
    Vhost(#[from] VhostNetError),
    /// `vhost=on` with something it cannot do.
    #[error("virtio-net vhost=on: {0}")]
    VhostConflict(&'static str),
    /// A rate limiter could not be made.
    #[error("virtio-net {which}")]
    RateLimiter {
        /// `rx_rate_limiter` or `tx_rate_limiter`.
        which: &'static str,
        /// Why.
        #[source]
        source: RateLimiterError,
    },
}

/// The device's state as plain data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// The configuration it was built from.
    pub config: NetConfig,
    /// The TAP in use.
    pub tap_name: String,
    /// The guest's MAC address.
    pub mac: MacAddr,
    /// Features the driver accepted.
    pub acked_features: u64,
}

/// Where a card's frames go.
#[derive(Debug)]
pub(super) enum Backend {
    /// A TAP on the host.
    Tap(Tap),
    /// Nowhere: sent frames are dropped, none arrive.
    Unplugged,
}

impl FrameIo for Backend {
    fn read_frame(&mut self, iov: &IoVecs) -> std::io::Result<usize> {
        match self {
            Self::Tap(tap) => tap.read_frame(iov),
            Self::Unplugged => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_frame(&mut self, hdr: &[u8; NET_HDR_LEN], iov: &IoVecs) -> std::io::Result<usize> {
        match self {
            Self::Tap(tap) => tap.write_frame(hdr, iov),
            Self::Unplugged => Ok(hdr.len() + iov.len()),
        }
    }
}

/// A virtio network card on a TAP.
#[derive(Debug)]
pub struct Net {
    pub(super) queues: QueueSet,
    pub(super) tap: Backend,
    pub(super) rx: RxState,
    /// Frames to the guest: the TAP is not read while it blocks.
    pub(super) rx_limiter: RateLimiter,
    /// Frames from the guest: TX chains are not taken while it blocks.
    pub(super) tx_limiter: RateLimiter,
    /// `vhost=on`: the kernel moves the frames, and `queues` stays inactive.
    pub(super) kernel: Option<KernelPath>,
    state: NetState,
}

impl Net {
    /// File descriptors the device and its virtio-mmio transport hold at most: the
    /// TAP, the two rate limiters' timers, the queue set, the kernel path's
    /// `/dev/vhost-net` and the transport's eventfds (two queues).
    pub const MAX_FDS: usize = 1
        + 2 * RateLimiter::FDS
        + QueueSet::max_fds(2)
        + KernelPath::FDS
        + MmioTransport::max_fds(2);

    /// Open (or create) the TAP of `config` and pick the MAC.
    pub fn new(config: NetConfig) -> Result<Self, NetError> {
        let tap = match config.unplugged {
            true => Backend::Unplugged,
            false => {
                let tap = Tap::open(config.tap.as_deref())?;
                if config.claim {
                    tap.claim()?;
                }
                Backend::Tap(tap)
            }
        };
        Self::with_backend(config, tap)
    }

    /// A device on `tap`, already open.
    #[cfg(test)]
    pub(crate) fn with_tap(config: NetConfig, tap: Tap) -> Result<Self, NetError> {
        Self::with_backend(config, Backend::Tap(tap))
    }

    fn with_backend(mut config: NetConfig, tap: Backend) -> Result<Self, NetError> {
        let tap_name = match &tap {
            Backend::Tap(tap) => tap.name().to_string(),
            Backend::Unplugged => String::new(),
        };
        let limiter = |which, config: Option<&RateLimiterConfig>| {
            RateLimiter::new(config).map_err(|source| NetError::RateLimiter { which, source })
        };
        let kernel = match (config.vhost, &tap) {
            (false, _) => None,
            (true, Backend::Unplugged) => {
                return Err(NetError::VhostConflict("an unplugged card has no TAP"))
            }
            (true, Backend::Tap(_))
                if config.rx_rate_limiter.is_some() || config.tx_rate_limiter.is_some() =>
            {
                return Err(NetError::VhostConflict(
                    "no rate limiter (husk never sees the frames)",
                ))
            }
            (true, Backend::Tap(_)) if !crate::vmm::seccomp::allows_vhost_net() => {
                return Err(NetError::VhostConflict(
                    "this filtered husk vmm was not started with --vhost-net",
                ))
            }
            (true, Backend::Tap(_)) => Some(KernelPath::open()?),
        };
        let rx_limiter = limiter("rx_rate_limiter", config.rx_rate_limiter.as_ref())?;
        let tx_limiter = limiter("tx_rate_limiter", config.tx_rate_limiter.as_ref())?;
        config.rx_rate_limiter = RateLimiterConfig::in_force(Some(&rx_limiter.config()));
        config.tx_rate_limiter = RateLimiterConfig::in_force(Some(&tx_limiter.config()));
        let state = NetState {
            tap_name,
            mac: config.mac.unwrap_or_else(MacAddr::random),
            acked_features: 0,
            config,
        };
        Ok(Self {
            queues: QueueSet::new("net", &[QUEUE_SIZE; 2])?,
            tap,
            rx: RxState::default(),
            rx_limiter,
            tx_limiter,
            kernel,
            state,
        })
    }

    /// The device's state.
    pub fn state(&self) -> NetState {
        self.state.clone()
    }

    /// The TAP interface name (to configure on the host); empty when unplugged.
    pub fn tap_name(&self) -> &str {
        &self.state.tap_name
    }

    /// Send guest frames to the TAP, as far as the TX limiter lets them.
    pub(super) fn process_tx(&mut self) {
        if !self.queues.is_running() {
            return;
        }
        let Some(active) = self.queues.active.as_mut() else {
            return;
        };
        let offloads = self.rx.offloads;
        let q = &mut active.queues[TX];
        let limiter = &mut self.tx_limiter;
        let result = queues::process_tx(q, &active.mem, &mut self.tap, offloads, BUDGET, limiter);
        self.queues.finish(TX, result);
    }

    /// Set the offloads for both directions: TX headers are checked against them, and
    /// the TAP learns what RX may carry. A TAP that refuses keeps handing over plain
    /// frames, which every guest takes.
    fn apply_offloads(&mut self, offloads: Offloads) {
        self.rx.offloads = offloads;
        if let Backend::Tap(tap) = &self.tap {
            if let Err(e) = tap.set_offloads(offloads.tap_flags()) {
                log::warn!("virtio-net: TUNSETOFFLOAD on {}: {e}", tap.name());
            }
        }
    }

    /// Deliver TAP frames to the guest, as far as the RX limiter lets them.
    pub(super) fn process_rx(&mut self) {
        if !self.queues.is_running() {
            return;
        }
        let Some(active) = self.queues.active.as_mut() else {
            return;
        };
        let q = &mut active.queues[RX];
        let (rx, limiter) = (&mut self.rx, &mut self.rx_limiter);
        let result = queues::process_rx(q, &active.mem, &mut self.tap, rx, BUDGET, limiter);
        self.queues.finish(RX, result);
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        self.queues.max_sizes()
    }

    /// The MAC, EVENT_IDX, checksum and TCP segmentation offloads both ways, and
    /// merged RX buffers.
    fn avail_features(&self) -> u64 {
        feature(VIRTIO_NET_F_MAC) | feature(VIRTIO_RING_F_EVENT_IDX) | OFFERED
    }

    /// Also tells the TAP what the guest takes (at FEATURES_OK, and at a restore from
    /// the transport's saved state, for the new TAP).
    fn set_acked_features(&mut self, features: u64) {
        self.state.acked_features = features;
        self.apply_offloads(Offloads::from_acked(features));
    }

    /// `struct virtio_net_config` up to `mac` (no STATUS, MQ or MTU features).
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::read_config_bytes(&self.state.mac.0, offset, data);
    }

    /// The MAC is read-only without VIRTIO_NET_F_CTRL_MAC_ADDR.
    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::debug!("virtio-net: config write at {offset:#x} ignored");
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<(Queue, EventFd)>,
    ) -> Result<(), VirtioError> {
        let (Some(kernel), Backend::Tap(tap)) = (self.kernel.as_mut(), &self.tap) else {
            return self.queues.activate(mem, interrupt, queues);
        };
        let acked = self.state.acked_features;
        kernel
            .start(mem, &interrupt, &queues, acked, tap.file())
            .map_err(|e| VirtioError::Backend {
                device: "net",
                source: std::io::Error::other(crate::error_chain(&e)),
            })
    }

    fn reset(&mut self) {
        if let Some(kernel) = self.kernel.as_mut() {
            kernel.stop();
        }
        self.queues.reset();
        self.rx.clear();
        self.state.acked_features = 0;
        self.apply_offloads(Offloads::default());
    }

    fn describe(&self) -> String {
        if let Some(kernel) = &self.kernel {
            return format!(
                "virtio-net on TAP {} through the kernel's vhost-net (rings handed over: {})",
                self.state.tap_name,
                kernel.is_running()
            );
        }
        format!(
            "{} (TAP {}, {} RX chains taken and not filled, a frame waiting: {}, RX limiter \
             {}, TX limiter {})",
            self.queues.describe(),
            self.state.tap_name,
            self.rx.held_chains(),
            self.rx.has_pending(),
            self.rx_limiter.describe(),
            self.tx_limiter.describe()
        )
    }

    fn persist(&self) -> DevicePersist {
        self.persist_state()
    }

    fn queue_set(&self) -> Option<&QueueSet> {
        Some(&self.queues)
    }

    fn queue_snapshots(&self) -> Vec<crate::devices::virtio::persist::QueueSnapshot> {
        match &self.kernel {
            Some(kernel) => kernel.snapshots(),
            None => self.snapshot_queues(),
        }
    }

    /// On the kernel path: take the rings back from the kernel, where they stand.
    fn quiesce(&mut self) -> Result<(), VirtioError> {
        match self.kernel.as_mut().map(KernelPath::pause) {
            Some(Err(e)) => Err(VirtioError::Quiesce {
                device: format!("virtio-net on TAP {}", self.state.tap_name),
                source: Box::new(e),
            }),
            _ => Ok(()),
        }
    }

    fn resume(&mut self) {
        let (Some(kernel), Backend::Tap(tap)) = (self.kernel.as_mut(), &self.tap) else {
            return;
        };
        if let Err(e) = kernel.resume(tap.file()) {
            log::error!(
                "virtio-net on TAP {}: {}",
                self.state.tap_name,
                crate::error_chain(&e)
            );
        }
    }

    fn after_restore(&mut self, _saved: &DevicePersist) -> bool {
        self.restored()
    }

    /// New limits for one direction; its queue is looked at again, in case they let
    /// through what waited.
    fn update_rate_limiter(
        &mut self,
        kind: LimiterKind,
        change: &RateLimiterConfig,
    ) -> Result<RateLimiterConfig, RateLimiterError> {
        if self.kernel.is_some() {
            return Err(RateLimiterError::Unsupported {
                device: "virtio-net on vhost-net",
                kind,
            });
        }
        let (limiter, saved, queue) = match kind {
            LimiterKind::Receive => (
                &mut self.rx_limiter,
                &mut self.state.config.rx_rate_limiter,
                RX,
            ),
            LimiterKind::Transmit => (
                &mut self.tx_limiter,
                &mut self.state.config.tx_rate_limiter,
                TX,
            ),
            LimiterKind::Disk => {
                return Err(RateLimiterError::Unsupported {
                    device: "virtio-net",
                    kind,
                })
            }
        };
        let config = limiter.update(change)?;
        *saved = RateLimiterConfig::in_force(Some(&config));
        self.queues.requeue(queue);
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_on_new_tap_needs_root_and_exposes_mac_in_config() {
        let mac: MacAddr = "02:11:22:33:44:55".parse().unwrap();
        let net = Net::new(NetConfig {
            tap: None,
            mac: Some(mac),
            unplugged: false,
            id: None,
            claim: false,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
            vhost: false,
        })
        .unwrap();
        let mut b = [0u8; 6];
        net.read_config(0, &mut b);
        assert_eq!(b, mac.0);
        assert!(net.tap_name().starts_with("husk"));
    }

    #[test]
    fn vhost_on_an_unplugged_card_or_with_a_rate_limiter_is_refused_before_opening() {
        let unplugged = NetConfig {
            vhost: true,
            ..NetConfig::unplugged()
        };
        let e = Net::new(unplugged).unwrap_err();
        assert!(e.to_string().contains("unplugged card"), "{e}");
        let limited = NetConfig {
            vhost: true,
            tx_rate_limiter: Some(RateLimiterConfig {
                bandwidth: None,
                ops: Some(crate::devices::rate_limiter::BucketConfig {
                    size: 100,
                    one_time_burst: None,
                    refill_time: 1000,
                }),
            }),
            ..NetConfig::default()
        };
        // On a new TAP (root): the conflict is named whether or not the host has
        // /dev/vhost-net, which is never opened.
        let e = Net::new(limited).unwrap_err();
        assert!(e.to_string().contains("no rate limiter"), "{e}");
    }

    #[test]
    fn an_unplugged_card_drops_what_it_sends_and_receives_nothing() {
        let mut net = Net::new(NetConfig::unplugged()).unwrap();
        assert_eq!(net.tap_name(), "");
        let mut buf = [0u8; 64];
        let hdr = [0u8; NET_HDR_LEN];
        assert_eq!(
            net.tap
                .write_frame(&hdr, &IoVecs::from_host(&mut buf))
                .unwrap(),
            76
        );
        let err = net
            .tap
            .read_frame(&IoVecs::from_host(&mut buf))
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    }
}
