//! Virtio devices (virtio 1.2) on the virtio-mmio transport.
//!
//! A device implements [`VirtioDevice`]; [`mmio::MmioTransport`] wraps it and exposes it
//! on the bus. Request processing in each device is free of KVM and of file descriptors
//! it does not own, so it is unit-tested on in-memory guest memory with hand-built
//! virtqueues. The [`Interrupt`] is shared by a transport and its device: the device
//! raises it when it used buffers, the transport reads and acknowledges it.
//!
//! # Wiring a device into a VM
//! 1. Build the device (`rng::Rng::new(limits)`, `block::Block::new(cfg)`,
//!    `vsock::Vsock::new(cfg)`, `net::Net::new(cfg)`) and wrap it in `Arc<Mutex<_>>`.
//! 2. Add that same `Arc` to the device event loop (`EventManager::add_subscriber`); its
//!    `init` registers the activation eventfd and the backend fds (listener, TAP).
//! 3. `manager::VirtioManager::attach(mem, device)` returns an `MmioDeviceInfo`: insert
//!    `info.transport` on the MMIO bus at `info.slot.base`/`info.slot.len`, register
//!    `info.irqfd` with `register_irqfd(.., info.slot.irq)`, each `info.ioevents[i]`
//!    with `register_ioevent(fd, IoEventAddress::Mmio(addr), datamatch as u32)`, and
//!    append `info.slot.cmdline()` to the kernel command line.
//! 4. When the driver sets DRIVER_OK (a vCPU thread), the transport activates the
//!    device; the event loop then starts watching the queue eventfds by itself.

pub mod block;
pub mod descriptor;
pub mod fs;
pub mod guest_io;
pub mod manager;
pub mod mmio;
pub mod net;
pub mod persist;
pub mod queues;
pub mod register_page;
pub mod rng;
pub mod vsock;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use crate::devices::rate_limiter::{LimiterKind, RateLimiterConfig, RateLimiterError};
use register_page::RegisterPage;
use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

/// Virtio device id of a network card (virtio 1.2 §5).
pub const TYPE_NET: u32 = 1;
/// Virtio device id of a block device.
pub const TYPE_BLOCK: u32 = 2;
/// Virtio device id of an entropy source.
pub const TYPE_RNG: u32 = 4;
/// Virtio device id of a socket device.
pub const TYPE_VSOCK: u32 = 19;
/// Virtio device id of a file system device (virtio-fs).
pub const TYPE_FS: u32 = 26;

/// Feature bit: the device complies with virtio 1.x (virtio 1.2 §6).
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Feature bit: `used_event`/`avail_event` notification suppression (virtio 1.2 §2.7.10).
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// Interrupt status bit: a used ring was updated (virtio 1.2 §4.2.2, InterruptStatus).
pub const INT_VRING: u32 = 1;
/// Interrupt status bit: the configuration (or device status) changed.
pub const INT_CONFIG: u32 = 2;
/// Device status bit DEVICE_NEEDS_RESET (virtio 1.2 §2.1).
const NEEDS_RESET: u32 = virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;

/// Answer a driver's read of `data.len()` bytes at `offset` of a device configuration
/// space whose contents are `config`; bytes past its end read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(config.len());
    let n = (config.len() - start).min(data.len());
    data[..n].copy_from_slice(&config[start..start + n]);
}

/// The bit for feature number `bit` in a 64-bit feature word.
pub const fn feature(bit: u32) -> u64 {
    1 << bit
}

/// Errors shared by all virtio devices.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// An eventfd could not be created.
    #[error("cannot create eventfd")]
    EventFd(#[source] std::io::Error),
    /// The page of a slot's registers could not be mapped.
    #[error("cannot map a page for a device's registers")]
    RegisterPage(#[source] std::io::Error),
    /// The irqfd could not be signalled.
    #[error("cannot signal irqfd")]
    Signal(#[source] std::io::Error),
    /// `activate` was called with the wrong number of queues.
    #[error("device {device} needs {expected} queues, got {got}")]
    QueueCount {
        /// Device name.
        device: &'static str,
        /// Queues the device has.
        expected: usize,
        /// Queues passed to `activate`.
        got: usize,
    },
    /// The device could not stop where a snapshot needs it (it goes on running).
    #[error("cannot hold {device} still for a snapshot")]
    Quiesce {
        /// The device (and its backend, where that helps).
        device: String,
        /// Why not.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The device could not start its backend.
    #[error("cannot activate device {device}")]
    Backend {
        /// Device name.
        device: &'static str,
        /// The backend's error.
        #[source]
        source: std::io::Error,
    },
}

/// The interrupt line of one device: status bits for the guest and an irqfd for KVM.
///
/// The [`EventFd`] lives as long as the transport, so the lead registers it once with
/// `register_irqfd`. The "needs reset" flag is how a device that found the guest
/// misbehaving reports DEVICE_NEEDS_RESET to its transport (virtio 1.2 §2.1.2).
/// InterruptStatus lives in the slot's [`RegisterPage`], where the guest may read it
/// without a VM exit, and a broken device sets DEVICE_NEEDS_RESET there too.
#[derive(Debug)]
pub struct Interrupt {
    page: RegisterPage,
    needs_reset: AtomicBool,
    evt: EventFd,
}

/// InterruptStatus in the register window (virtio 1.2 §4.2.2).
pub const INTERRUPT_STATUS_OFFSET: u64 = 0x60;
/// Status in the register window.
pub const STATUS_OFFSET: u64 = 0x70;

impl Interrupt {
    /// A fresh interrupt with a non-blocking irqfd and a zeroed register page.
    pub fn new() -> Result<Self, VirtioError> {
        Ok(Self {
            page: RegisterPage::new().map_err(VirtioError::RegisterPage)?,
            needs_reset: AtomicBool::new(false),
            evt: EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC).map_err(VirtioError::EventFd)?,
        })
    }

    fn status_word(&self) -> Option<&AtomicU32> {
        self.page.word(INTERRUPT_STATUS_OFFSET)
    }

    fn raise(&self, bit: u32) -> Result<(), VirtioError> {
        if let Some(status) = self.status_word() {
            status.fetch_or(bit, Ordering::SeqCst);
        }
        self.evt.write(1).map_err(VirtioError::Signal)
    }

    /// Set `bits` in InterruptStatus and signal the irqfd (a restore re-raising what
    /// the driver had not acknowledged).
    pub fn raise_bits(&self, bits: u32) {
        if let Err(e) = self.raise(bits) {
            log::warn!("virtio: {e}");
        }
    }

    /// Tell the guest a used ring changed.
    pub fn signal_used_queue(&self) -> Result<(), VirtioError> {
        self.raise(INT_VRING)
    }

    /// Tell the guest the configuration space or device status changed.
    pub fn signal_config_change(&self) -> Result<(), VirtioError> {
        self.raise(INT_CONFIG)
    }

    /// Mark the device broken: the transport then reports DEVICE_NEEDS_RESET.
    pub fn set_needs_reset(&self) {
        // The flag first: a transport that stores Status without the bit looks at the
        // flag after its store (see `MmioTransport::render`), so one of the two sets it.
        self.needs_reset.store(true, Ordering::SeqCst);
        if let Some(status) = self.page.word(STATUS_OFFSET) {
            status.fetch_or(NEEDS_RESET, Ordering::SeqCst);
        }
        if let Err(e) = self.signal_config_change() {
            log::warn!("virtio: {e}");
        }
    }

    /// Whether a device asked for a reset since the last [`Interrupt::reset`].
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status_word().map_or(0, |s| s.load(Ordering::SeqCst))
    }

    /// Clear the bits the guest wrote to InterruptACK, but INT_VRING.
    ///
    /// INT_VRING stays set from the device's first used-buffer notification until a
    /// device reset. Linux's driver looks at each of the device's queues on every
    /// interrupt with it set, as it did on each used-buffer interrupt before; only a
    /// configuration-change interrupt now costs it a read of each used index too. In
    /// exchange, the acknowledgement of INT_VRING alone changes nothing, so KVM absorbs it in an
    /// ioeventfd (see [`MmioTransport::ack_event`](mmio::MmioTransport::ack_event))
    /// rather than exiting to husk once per interrupt, and a backend handed the irqfd
    /// itself needs nobody to set the bit for it.
    pub fn ack(&self, bits: u32) {
        if let Some(status) = self.status_word() {
            status.fetch_and(!(bits & !INT_VRING), Ordering::SeqCst);
        }
    }

    /// Set INT_VRING without interrupting: the queues are handed to a backend that
    /// signals the irqfd itself (it stays set, see [`Interrupt::ack`]).
    pub fn expect_backend_calls(&self) {
        if let Some(status) = self.status_word() {
            status.fetch_or(INT_VRING, Ordering::SeqCst);
        }
    }

    /// Clear status and the needs-reset flag (device reset).
    pub fn reset(&self) {
        self.needs_reset.store(false, Ordering::SeqCst);
        self.page.store(INTERRUPT_STATUS_OFFSET, 0);
    }

    /// The irqfd to register with KVM (`register_irqfd`).
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// The slot's register page (see [`RegisterPage`]).
    pub fn page(&self) -> &RegisterPage {
        &self.page
    }
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// The virtio device id ([`TYPE_BLOCK`], ...).
    fn device_type(&self) -> u32;
    /// The maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Device features offered to the driver (the transport adds VERSION_1).
    fn avail_features(&self) -> u64;
    /// Record the features the driver accepted (a subset of the offered ones).
    fn set_acked_features(&mut self, features: u64);
    /// Read device configuration space at `offset`; bytes past its end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write device configuration space at `offset`; read-only fields are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Start processing: the queues are validated and each comes with its notify eventfd.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<(Queue, EventFd)>,
    ) -> Result<(), VirtioError>;
    /// Return to the state before `activate` (the driver wrote 0 to Status).
    fn reset(&mut self);
    /// Finish every request the device has in flight, so that while its lock is held
    /// neither guest memory nor its queues change (before a snapshot's state is read).
    /// An error refuses the snapshot; [`VirtioDevice::resume`] follows either way.
    fn quiesce(&mut self) -> Result<(), VirtioError> {
        Ok(())
    }
    /// The snapshot's state and memory were taken, or a device's
    /// [`VirtioDevice::quiesce`] failed: go on where this one stopped (before the
    /// device's lock is let go). Called on every device of a hold, quiesced or not.
    fn resume(&mut self) {}
    /// Where the device stands (queues, and device-specific state), for the report of a
    /// guest that failed or hangs.
    fn describe(&self) -> String;
    /// What the device keeps beyond its transport and queues, for a snapshot.
    fn persist(&self) -> persist::DevicePersist;
    /// The device's queue set, when it keeps one (every real device does).
    fn queue_set(&self) -> Option<&queues::QueueSet> {
        None
    }
    /// The positions of the active queues (empty when not activated).
    fn queue_snapshots(&self) -> Vec<persist::QueueSnapshot> {
        self.queue_set().map(|q| q.snapshots()).unwrap_or_default()
    }
    /// Called once a restore has activated the device again, before any vCPU runs;
    /// `saved` is what [`VirtioDevice::persist`] gave in the snapshot. True when the
    /// configuration space the driver read has changed (the transport then tells it).
    fn after_restore(&mut self, _saved: &persist::DevicePersist) -> bool {
        false
    }
    /// Change one of the device's rate limiters while it runs (an API `PATCH`): each
    /// bucket `change` gives replaces the device's, full; the limits then in force.
    /// A device without a limiter of that kind refuses.
    fn update_rate_limiter(
        &mut self,
        kind: LimiterKind,
        _change: &RateLimiterConfig,
    ) -> Result<RateLimiterConfig, RateLimiterError> {
        Err(RateLimiterError::Unsupported {
            device: "this device",
            kind,
        })
    }
}

#[cfg(test)]
mod chain_proptests;

#[cfg(test)]
mod wiring_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_read_past_the_end_is_zero_filled() {
        let mut data = [0xffu8; 4];
        read_config_bytes(&[1, 2, 3], 1, &mut data);
        assert_eq!(data, [2, 3, 0, 0]);
    }

    #[test]
    fn config_read_at_a_huge_offset_is_all_zero() {
        let mut data = [0xffu8; 2];
        read_config_bytes(&[1, 2, 3], u64::MAX, &mut data);
        assert_eq!(data, [0, 0]);
    }
}
