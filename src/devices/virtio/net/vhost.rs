//! A card's kernel data path (`vhost=on`): the host kernel's vhost-net moves frames
//! between the TAP and the guest's rings itself, woken by the queues' notify eventfds
//! (KVM's ioeventfds, so a guest's kick never leaves the kernel). husk opens
//! `/dev/vhost-net` with the card, hands it the memory table and the rings at
//! DRIVER_OK, and takes them back at a reset. Its "used" signals go straight to the
//! transport's irqfd, so an interrupt never passes through husk: the transport keeps
//! INT_VRING set from the hand-over on (see `Interrupt::ack`), which virtio-mmio's
//! InterruptStatus must show for the guest to look at its rings.
//!
//! The TAP keeps its virtio-net header (12 bytes, as the TAP was opened with), so
//! vhost-net passes headers through untouched (`VHOST_NET_F_VIRTIO_NET_HDR` is never
//! set) and the checksum and TSO offloads are the TAP's, set from the acked features
//! as on the user-space path. Rate limits cannot apply (husk never sees a frame). The
//! rings' positions live in the kernel: for a snapshot, `pause` detaches the TAP and
//! reads them back, and `resume` attaches it again.
#![expect(
    unsafe_code,
    reason = "VHOST_NET_SET_BACKEND has no safe wrapper in the vhost crate"
)]

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use vhost::vhost_kern::vhost_binding::{vhost_vring_file, VHOST_NET_SET_BACKEND};
use vhost::vhost_kern::VhostKernBackend;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::{Queue, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::ioctl::ioctl_with_ref;

use crate::devices::virtio::persist::QueueSnapshot;
use crate::devices::virtio::{feature, Interrupt, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

/// The kernel's vhost-net device.
const VHOST_NET_PATH: &str = "/dev/vhost-net";
/// vhost-net's own bit: the kernel adds and strips the virtio-net header (husk leaves
/// that to the TAP). The same bit as VIRTIO_F_ANY_LAYOUT, which the card never offers.
const VHOST_NET_F_VIRTIO_NET_HDR: u64 = 1 << 27;
/// What the card offers that the kernel path must carry out itself.
const NEEDED: u64 = feature(VIRTIO_F_VERSION_1)
    | feature(VIRTIO_RING_F_EVENT_IDX)
    | feature(VIRTIO_NET_F_MRG_RXBUF);

/// Errors of the kernel path.
#[derive(Debug, thiserror::Error)]
pub enum VhostNetError {
    /// `/dev/vhost-net` could not be opened.
    #[error("cannot open {VHOST_NET_PATH} (is the vhost_net module loaded?)")]
    Open(#[source] std::io::Error),
    /// A vhost request failed.
    #[error("vhost-net {step}")]
    Request {
        /// The request.
        step: &'static str,
        /// The error.
        #[source]
        source: vhost::Error,
    },
    /// The kernel's vhost-net lacks a feature the card offers.
    #[error("the kernel's vhost-net lacks features {0:#x} (VERSION_1, EVENT_IDX, MRG_RXBUF)")]
    Features(u64),
    /// A vhost request about one ring failed.
    #[error("vhost-net {step} on queue {queue}")]
    Ring {
        /// The request.
        step: &'static str,
        /// The ring (0: receive, 1: transmit).
        queue: usize,
        /// The error.
        #[source]
        source: vhost::Error,
    },
    /// A ring's notify eventfd could not be copied.
    #[error("cannot copy the notify eventfd of queue {queue}")]
    Kick {
        /// The ring.
        queue: usize,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A ring's used index is outside guest memory.
    #[error("the used ring of queue {queue} at {addr:#x} is outside guest memory")]
    UsedIndex {
        /// The ring.
        queue: usize,
        /// Where the driver placed its used ring.
        addr: u64,
    },
}

fn failed(step: &'static str) -> impl FnOnce(vhost::Error) -> VhostNetError {
    move |source| VhostNetError::Request { step, source }
}

fn failed_on(step: &'static str, queue: usize) -> impl FnOnce(vhost::Error) -> VhostNetError {
    move |source| VhostNetError::Ring {
        step,
        queue,
        source,
    }
}

/// An open `/dev/vhost-net` and the guest memory it was last given (which the vhost
/// crate reads to turn ring addresses into host addresses).
struct Handle {
    file: File,
    mem: Arc<GuestMemoryMmap>,
}

impl AsRawFd for Handle {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl VhostKernBackend for Handle {
    type AS = Arc<GuestMemoryMmap>;

    fn mem(&self) -> &Self::AS {
        &self.mem
    }
}

impl Handle {
    /// Attach `tap` to queue `index`, or detach it (`None`: the kernel stops the ring
    /// once it has finished what it was doing).
    fn set_backend(&self, index: usize, tap: Option<&File>) -> Result<(), VhostNetError> {
        let request = vhost_vring_file {
            index: u32::try_from(index).expect("a card has two queues"),
            fd: tap.map_or(-1, AsRawFd::as_raw_fd),
        };
        // SAFETY: VHOST_NET_SET_BACKEND reads one `vhost_vring_file` through the
        // pointer, which is valid for the call; the result is checked.
        let ret = unsafe { ioctl_with_ref(self, VHOST_NET_SET_BACKEND(), &request) };
        if ret < 0 {
            let source = vhost::Error::IoctlError(std::io::Error::last_os_error());
            return Err(failed_on("SET_BACKEND", index)(source));
        }
        Ok(())
    }
}

/// The kernel path of one card.
pub(super) struct KernelPath {
    handle: Handle,
    /// What the kernel supports.
    features: u64,
    /// The rings handed over, as they were then; [`KernelPath::pause`] brings their
    /// positions up to date.
    rings: Vec<QueueSnapshot>,
    /// Their notify eventfds, to look at each ring again after a pause.
    kicks: Vec<EventFd>,
    /// Queues handed to the kernel (taken back at reset).
    running: usize,
    /// The TAP is detached for a snapshot (see [`KernelPath::pause`]).
    paused: bool,
}

impl std::fmt::Debug for KernelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelPath")
            .field("features", &self.features)
            .field("running", &self.running)
            .field("paused", &self.paused)
            .finish_non_exhaustive()
    }
}

impl KernelPath {
    /// File descriptors it holds: `/dev/vhost-net` and a copy of each ring's notify
    /// eventfd.
    pub(super) const FDS: usize = 3;

    /// Open `/dev/vhost-net`, become its owner (the kernel starts its worker for this
    /// process) and check that it carries what the card offers.
    pub(super) fn open() -> Result<Self, VhostNetError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(VHOST_NET_PATH)
            .map_err(VhostNetError::Open)?;
        let handle = Handle {
            file,
            mem: Arc::new(GuestMemoryMmap::default()),
        };
        handle.set_owner().map_err(failed("SET_OWNER"))?;
        let features = handle.get_features().map_err(failed("GET_FEATURES"))?;
        if features & NEEDED != NEEDED {
            return Err(VhostNetError::Features(NEEDED & !features));
        }
        Ok(Self {
            handle,
            features,
            rings: Vec::new(),
            kicks: Vec::new(),
            running: 0,
            paused: false,
        })
    }

    /// Hand the kernel the memory, the rings of `queues` (with their notify eventfds),
    /// the interrupt's irqfd and `tap`; it serves them from here on. On an error
    /// (rings outside RAM, say) the kernel is left serving none.
    pub(super) fn start(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: &Interrupt,
        queues: &[(Queue, EventFd)],
        acked: u64,
        tap: &File,
    ) -> Result<(), VhostNetError> {
        self.stop();
        interrupt.expect_backend_calls();
        let started = self.hand_over(mem, interrupt.eventfd(), queues, acked, tap);
        if started.is_err() {
            self.stop();
        }
        started
    }

    fn hand_over(
        &mut self,
        mem: GuestMemoryMmap,
        irqfd: &EventFd,
        queues: &[(Queue, EventFd)],
        acked: u64,
        tap: &File,
    ) -> Result<(), VhostNetError> {
        let regions: Vec<VhostUserMemoryRegionInfo> = mem
            .iter()
            .map(|r| VhostUserMemoryRegionInfo {
                guest_phys_addr: r.start_addr().raw_value(),
                memory_size: r.len(),
                userspace_addr: r.as_ptr() as u64,
                // The kernel maps nothing: it reads this process's own mapping.
                mmap_offset: 0,
                mmap_handle: -1,
            })
            .collect();
        self.handle.mem = Arc::new(mem);
        self.rings = queues
            .iter()
            .map(|(queue, _)| QueueSnapshot::of(queue))
            .collect();
        self.kicks = queues
            .iter()
            .enumerate()
            .map(|(queue, (_, kick))| {
                kick.try_clone()
                    .map_err(|source| VhostNetError::Kick { queue, source })
            })
            .collect::<Result<_, _>>()?;
        let features = acked & self.features & !VHOST_NET_F_VIRTIO_NET_HDR;
        let h = &self.handle;
        h.set_features(features).map_err(failed("SET_FEATURES"))?;
        h.set_mem_table(&regions).map_err(failed("SET_MEM_TABLE"))?;
        for (i, (queue, kick)) in queues.iter().enumerate() {
            // The vhost crate turns these guest addresses into host ones through the
            // memory above, and refuses rings outside it.
            let rings = VringConfigData {
                queue_max_size: queue.max_size(),
                queue_size: queue.size(),
                flags: 0,
                desc_table_addr: queue.desc_table(),
                used_ring_addr: queue.used_ring(),
                avail_ring_addr: queue.avail_ring(),
                log_addr: None,
            };
            h.set_vring_num(i, queue.size())
                .map_err(failed_on("SET_VRING_NUM", i))?;
            h.set_vring_addr(i, &rings)
                .map_err(failed_on("SET_VRING_ADDR", i))?;
            h.set_vring_base(i, queue.next_avail())
                .map_err(failed_on("SET_VRING_BASE", i))?;
            h.set_vring_call(i, irqfd)
                .map_err(failed_on("SET_VRING_CALL", i))?;
            h.set_vring_kick(i, kick)
                .map_err(failed_on("SET_VRING_KICK", i))?;
            self.running = i + 1;
            h.set_backend(i, Some(tap))?;
        }
        // A kick the driver gave before DRIVER_OK would otherwise wait for its next
        // one; one too many only makes the kernel look at a ring with nothing new.
        self.kick_all();
        Ok(())
    }

    fn kick_all(&self) {
        for kick in &self.kicks {
            let _ = kick.write(1);
        }
    }

    /// Detach the TAP from every ring (the kernel finishes what it was doing and then
    /// touches neither guest memory nor the TAP), and read where each ring stands: the
    /// next available entry from the kernel (GET_VRING_BASE), the used index from
    /// guest memory. For a snapshot, until [`KernelPath::resume`].
    pub(super) fn pause(&mut self) -> Result<(), VhostNetError> {
        if self.paused || self.running == 0 {
            return Ok(());
        }
        self.paused = true;
        for i in 0..self.running {
            self.handle.set_backend(i, None)?;
        }
        for (i, ring) in self.rings.iter_mut().enumerate().take(self.running) {
            let base = self
                .handle
                .get_vring_base(i)
                .map_err(failed_on("GET_VRING_BASE", i))?;
            // The used ring's index follows its flags (virtio 1.2 §2.7.8).
            let at = GuestAddress(ring.used_ring).checked_add(2);
            let used = at
                .and_then(|at| self.handle.mem.read_obj::<u16>(at).ok())
                .ok_or(VhostNetError::UsedIndex {
                    queue: i,
                    addr: ring.used_ring,
                })?;
            // The kernel's index is a u16 in a u32.
            ring.next_avail = base as u16;
            ring.next_used = u16::from_le(used);
        }
        Ok(())
    }

    /// The rings as [`KernelPath::pause`] found them (empty when not paused).
    pub(super) fn snapshots(&self) -> Vec<QueueSnapshot> {
        match self.paused {
            true => self.rings.iter().take(self.running).copied().collect(),
            false => Vec::new(),
        }
    }

    /// Attach `tap` again after [`KernelPath::pause`], and make the kernel look at each
    /// ring once: a kick it took while detached was dropped.
    pub(super) fn resume(&mut self, tap: &File) -> Result<(), VhostNetError> {
        if !std::mem::take(&mut self.paused) {
            return Ok(());
        }
        for i in 0..self.running {
            self.handle.set_backend(i, Some(tap))?;
        }
        self.kick_all();
        Ok(())
    }

    /// Take the rings back (at a reset): the kernel finishes what it was doing and
    /// touches the guest's memory no more.
    pub(super) fn stop(&mut self) {
        for i in 0..std::mem::take(&mut self.running) {
            if let Err(e) = self.handle.set_backend(i, None) {
                log::warn!("virtio-net: stopping vhost-net: {}", crate::error_chain(&e));
            }
        }
        self.paused = false;
        self.rings.clear();
        self.kicks.clear();
    }

    /// Whether the kernel serves the rings now.
    pub(super) fn is_running(&self) -> bool {
        self.running > 0
    }
}
