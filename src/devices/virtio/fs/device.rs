//! The vhost-user-fs frontend: the connection to `virtiofsd`, feature negotiation,
//! and handing it the memory table and the rings at activation.
//!
//! Message order (vhost-user spec, "Starting and stopping rings"): at creation
//! SET_OWNER, GET_FEATURES and, when offered, GET/SET_PROTOCOL_FEATURES (the offer to
//! the guest is the daemon's device features); at DRIVER_OK SET_FEATURES with what the
//! guest accepted, SET_MEM_TABLE (one region per RAM range, each with the memfd), then
//! per queue SET_VRING_NUM, _ADDR, _BASE, _CALL, _KICK and, with protocol features,
//! SET_VRING_ENABLE. A reset stops each ring with GET_VRING_BASE.

use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::FsConfig;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::persist::DevicePersist;
use crate::devices::virtio::{read_config_bytes, Interrupt, VirtioDevice, VirtioError, TYPE_FS};

/// Queues: one high-priority queue (FUSE_INTERRUPT, FUSE_FORGET) and one request queue.
const QUEUES: usize = 2;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 1024;
/// vhost-user's feature bit for protocol features (not a virtio feature: never offered
/// to the guest).
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// Errors creating or activating the device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The daemon's socket could not be reached or answered badly.
    #[error("vhost-user {step} on {socket}")]
    VhostUser {
        /// The message or step that failed.
        step: &'static str,
        /// The daemon's socket.
        socket: String,
        /// The vhost error.
        #[source]
        source: vhost::Error,
    },
    /// The tag does not fit the configuration space.
    #[error("virtio-fs tag {0:?} is empty or longer than 36 bytes")]
    Tag(String),
    /// Eventfds could not be created.
    #[error("virtio-fs setup")]
    Setup(#[from] VirtioError),
}

/// A virtio-fs device served by a vhost-user daemon.
pub struct Fs {
    config: FsConfig,
    frontend: Frontend,
    /// Device features the daemon offers (without the vhost-user bit).
    features: u64,
    /// Whether the daemon offered protocol features (rings then need enabling).
    protocol: bool,
    acked: u64,
    max_sizes: Vec<u16>,
    /// Queues handed to the daemon (stopped at reset).
    running: usize,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("config", &self.config)
            .field("features", &self.features)
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

impl Fs {
    /// File descriptors the device and its transport hold: the socket and the
    /// transport's.
    pub const MAX_FDS: usize = 1 + MmioTransport::max_fds(QUEUES);

    /// Connect to the daemon on `config.socket` and learn its features.
    pub fn new(config: FsConfig) -> Result<Self, FsError> {
        if config.tag.is_empty() || config.tag.len() > super::TAG_LEN {
            return Err(FsError::Tag(config.tag));
        }
        let socket = config.socket.display().to_string();
        let failed = |step| {
            let socket = socket.clone();
            move |source| FsError::VhostUser {
                step,
                socket,
                source,
            }
        };
        let mut frontend =
            Frontend::connect(&config.socket, QUEUES as u64).map_err(failed("connect"))?;
        frontend.set_owner().map_err(failed("SET_OWNER"))?;
        let offered = frontend.get_features().map_err(failed("GET_FEATURES"))?;
        let protocol = offered & VHOST_USER_F_PROTOCOL_FEATURES != 0;
        if protocol {
            let theirs = frontend
                .get_protocol_features()
                .map_err(failed("GET_PROTOCOL_FEATURES"))?;
            let wanted = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK;
            frontend
                .set_protocol_features(theirs & wanted)
                .map_err(failed("SET_PROTOCOL_FEATURES"))?;
        }
        Ok(Self {
            config,
            frontend,
            features: offered & !VHOST_USER_F_PROTOCOL_FEATURES,
            protocol,
            acked: 0,
            max_sizes: vec![QUEUE_SIZE; QUEUES],
            running: 0,
        })
    }

    /// Send the daemon everything it needs to serve `queues` in `mem`, and `irqfd`
    /// to signal when it used buffers.
    fn start_daemon(
        &mut self,
        mem: &GuestMemoryMmap,
        irqfd: &EventFd,
        queues: &[(Queue, EventFd)],
    ) -> Result<(), vhost::Error> {
        let protocol_bit = if self.protocol {
            VHOST_USER_F_PROTOCOL_FEATURES
        } else {
            0
        };
        self.frontend.set_features(self.acked | protocol_bit)?;
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()?;
        self.frontend.set_mem_table(&regions)?;
        // Ring addresses are the frontend's virtual addresses (vhost-user spec,
        // SET_VRING_ADDR); the daemon maps them back through the memory table.
        let host = |gpa: u64| {
            mem.get_host_address(GuestAddress(gpa))
                .map(|p| p as u64)
                .map_err(|_| vhost::Error::InvalidGuestMemory)
        };
        for (i, (queue, kick)) in queues.iter().enumerate() {
            let rings = VringConfigData {
                queue_max_size: queue.max_size(),
                queue_size: queue.size(),
                flags: 0,
                desc_table_addr: host(queue.desc_table())?,
                used_ring_addr: host(queue.used_ring())?,
                avail_ring_addr: host(queue.avail_ring())?,
                log_addr: None,
            };
            self.frontend.set_vring_num(i, queue.size())?;
            self.frontend.set_vring_addr(i, &rings)?;
            self.frontend.set_vring_base(i, queue.next_avail())?;
            self.frontend.set_vring_call(i, irqfd)?;
            self.frontend.set_vring_kick(i, kick)?;
            self.running = i + 1;
        }
        if self.protocol {
            for i in 0..queues.len() {
                self.frontend.set_vring_enable(i, true)?;
            }
        }
        Ok(())
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }

    fn avail_features(&self) -> u64 {
        self.features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config.config_space(1), offset, data);
    }

    /// The configuration space is read-only.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<(Queue, EventFd)>,
    ) -> Result<(), VirtioError> {
        if queues.len() != QUEUES {
            return Err(VirtioError::QueueCount {
                device: "fs",
                expected: QUEUES,
                got: queues.len(),
            });
        }
        // The daemon signals the irqfd itself: the guest's driver looks at the rings
        // only with INT_VRING set, which nobody but the transport could set later.
        interrupt.expect_backend_calls();
        // The kick eventfds go to the daemon; the transport keeps its own copies.
        self.start_daemon(&mem, interrupt.eventfd(), &queues)
            .map_err(|e| VirtioError::Backend {
                device: "fs",
                source: std::io::Error::other(e.to_string()),
            })
    }

    fn reset(&mut self) {
        for i in 0..std::mem::take(&mut self.running) {
            if let Err(e) = self.frontend.get_vring_base(i) {
                log::warn!("virtio-fs {}: stopping queue {i}: {e}", self.config.tag);
            }
        }
        self.acked = 0;
    }

    fn describe(&self) -> String {
        format!(
            "virtio-fs {}: {} queues with virtiofsd on {}",
            self.config.tag,
            self.running,
            self.config.socket.display()
        )
    }

    /// Never saved: the device's state lives in the daemon (snapshots are refused).
    fn persist(&self) -> DevicePersist {
        DevicePersist::Fs
    }
}

/// Nothing to watch: the daemon reads the kicks and signals the irqfd itself.
impl MutEventSubscriber for Fs {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {}

    fn init(&mut self, _ops: &mut EventOps) {}
}
