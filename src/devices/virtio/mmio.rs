//! The virtio-mmio transport, modern interface (version 2), virtio 1.2 §4.2.2.
//!
//! [`MmioTransport`] owns the register file of one device slot: feature negotiation,
//! queue configuration, the status state machine, interrupt status and acknowledgement,
//! and the device configuration space at 0x100. Queue configuration is kept as raw
//! register values and only turned into `virtio_queue::Queue`s, and checked against
//! guest memory, when the driver sets DRIVER_OK; a bad configuration then sets
//! DEVICE_NEEDS_RESET instead of activating the device.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

use super::register_page::PAGE_SIZE;
use super::{feature, Interrupt, VirtioDevice, VirtioError, VIRTIO_F_VERSION_1};
use super::{INTERRUPT_STATUS_OFFSET, STATUS_OFFSET};
use crate::devices::bus::BusDevice;

/// "virt" in little endian.
const MAGIC: u32 = 0x7472_6976;
/// Modern virtio-mmio.
const VERSION: u32 = 2;
/// Vendor id reported to the guest ("HUSK" is not a registered id; any value works).
pub const VENDOR_ID: u32 = 0x4b53_5548;
/// Offset of the device configuration space.
pub const CONFIG_OFFSET: u64 = 0x100;
/// Offset of QueueNotify, where the lead registers the per-queue ioeventfds.
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;
/// Offset of InterruptACK, where the lead registers [`MmioTransport::ack_event`].
pub const INTERRUPT_ACK_OFFSET: u64 = 0x64;

/// Errors creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// An eventfd or the interrupt could not be created.
    #[error("virtio-mmio device type {device_type}")]
    Setup {
        /// The device's virtio id.
        device_type: u32,
        /// The failure.
        #[source]
        source: VirtioError,
    },
}

/// Raw register values of one queue, as the driver wrote them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    /// QueueNumMax.
    pub max_size: u16,
    /// QueueNum.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// QueueDesc.
    pub desc: u64,
    /// QueueDriver (available ring).
    pub avail: u64,
    /// QueueDevice (used ring).
    pub used: u64,
}

/// The transport's registers as plain data (for snapshots and tests).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioState {
    /// Device status register (without NEEDS_RESET, which is derived).
    pub status: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// Features written by the driver.
    pub acked_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// Per-queue registers.
    pub queues: Vec<QueueConfig>,
    /// ConfigGeneration.
    pub config_generation: u32,
}

/// A virtio device exposed through the virtio-mmio register layout.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queue_evts: Vec<EventFd>,
    ack_evt: EventFd,
    state: MmioState,
    activated: bool,
    device_type: u32,
    /// A bad queue configuration was already logged at warn level.
    warned: bool,
}

impl MmioTransport {
    /// File descriptors the transport of a device with `queues` queues holds: the
    /// irqfd, the acknowledgement's eventfd and one notify eventfd per queue.
    pub const fn max_fds(queues: usize) -> usize {
        2 + queues
    }

    /// Wrap `device`, whose queues live in `mem`.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<Self, MmioError> {
        let (device_type, max_sizes) = {
            let dev = device.lock().unwrap_or_else(|e| e.into_inner());
            (dev.device_type(), dev.queue_max_sizes().to_vec())
        };
        let setup = |source| MmioError::Setup {
            device_type,
            source,
        };
        let interrupt = Arc::new(Interrupt::new().map_err(setup)?);
        let queue_evts = max_sizes
            .iter()
            .map(|_| {
                EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC).map_err(|e| setup(VirtioError::EventFd(e)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ack_evt =
            EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC).map_err(|e| setup(VirtioError::EventFd(e)))?;
        let queues = max_sizes
            .iter()
            .map(|&max_size| QueueConfig {
                max_size,
                size: max_size,
                ..Default::default()
            })
            .collect();
        let transport = Self {
            device,
            mem,
            interrupt,
            queue_evts,
            ack_evt,
            state: MmioState {
                queues,
                ..Default::default()
            },
            activated: false,
            device_type,
            warned: false,
        };
        transport.render();
        Ok(transport)
    }

    /// Write every register the driver may read, and the configuration space, into
    /// the slot's register page (see `register_page`), but InterruptStatus, which the
    /// interrupt keeps there itself. Called after each change of the registers but
    /// notifications and acknowledgements, which change nothing here.
    pub(super) fn render(&self) {
        let page = self.interrupt.page();
        for offset in (0..CONFIG_OFFSET).step_by(4) {
            if offset != INTERRUPT_STATUS_OFFSET {
                page.store(offset, self.read_register(offset));
            }
        }
        // A device that breaks meanwhile sets its flag, then the bit in the page: it
        // either finds our store done, or we find its flag here.
        if self.interrupt.needs_reset() {
            if let Some(status) = page.word(STATUS_OFFSET) {
                status.fetch_or(VIRTIO_CONFIG_S_NEEDS_RESET, Ordering::SeqCst);
            }
        }
        let mut config = [0u8; PAGE_SIZE - CONFIG_OFFSET as usize];
        self.dev().read_config(0, &mut config);
        page.store_bytes(CONFIG_OFFSET, &config);
    }

    /// The host address of the register page, to map read-only over this slot's
    /// window (`KVM_MEM_READONLY`): the guest then reads registers without an exit.
    pub fn register_page_address(&self) -> u64 {
        self.interrupt.page().host_address()
    }

    /// One notify eventfd per queue: register each as an ioeventfd at
    /// `base + QUEUE_NOTIFY_OFFSET`, 4 bytes, datamatch = its index.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// Register as an ioeventfd at `base + INTERRUPT_ACK_OFFSET`, 4 bytes, datamatch
    /// INT_VRING: that acknowledgement changes nothing (see [`Interrupt::ack`]), so KVM
    /// takes it without an exit and nobody reads the eventfd. Any other value exits.
    pub fn ack_event(&self) -> &EventFd {
        &self.ack_evt
    }

    /// The irqfd to register with KVM on this slot's GSI.
    pub fn interrupt_evt(&self) -> &EventFd {
        self.interrupt.eventfd()
    }

    /// The shared interrupt (status bits and needs-reset flag).
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// The wrapped device.
    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// The register state.
    pub fn state(&self) -> MmioState {
        self.state.clone()
    }

    /// Tell the driver the configuration changed (new generation + config interrupt).
    pub fn notify_config_change(&mut self) {
        self.state.config_generation = self.state.config_generation.wrapping_add(1);
        self.render();
        if let Err(e) = self.interrupt.signal_config_change() {
            log::warn!("virtio-mmio type {}: {e}", self.device_type);
        }
    }

    fn dev(&self) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn status(&self) -> u32 {
        let needs_reset = match self.interrupt.needs_reset() {
            true => VIRTIO_CONFIG_S_NEEDS_RESET,
            false => 0,
        };
        self.state.status | needs_reset
    }

    fn has_status(&self, bits: u32) -> bool {
        self.state.status & bits == bits
    }

    fn offered_features(&self) -> u64 {
        self.dev().avail_features() | feature(VIRTIO_F_VERSION_1)
    }

    fn selected_queue(&self) -> Option<&QueueConfig> {
        self.state.queues.get(self.state.queue_sel as usize)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let q = self.selected_queue();
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.device_type,
            0x0c => VENDOR_ID,
            0x10 => match self.state.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            0x34 => q.map_or(0, |q| u32::from(q.max_size)),
            0x44 => q.map_or(0, |q| u32::from(q.ready)),
            INTERRUPT_STATUS_OFFSET => self.interrupt.status(),
            0x70 => self.status(),
            // No shared memory regions: their length reads as -1 (virtio 1.2 §4.2.2).
            0xb0 | 0xb4 => u32::MAX,
            0xfc => self.state.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        match offset {
            0x14 => self.state.device_features_sel = v,
            0x20 => self.write_driver_features(v),
            0x24 => self.state.driver_features_sel = v,
            0x30 => self.state.queue_sel = v,
            0x38 | 0x44 | 0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 => self.write_queue(offset, v),
            QUEUE_NOTIFY_OFFSET => self.notify_queue(v),
            INTERRUPT_ACK_OFFSET => self.interrupt.ack(v),
            0x70 => self.write_status(v),
            _ => log::debug!("virtio-mmio: write to {offset:#x} ignored"),
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        let negotiating = self.has_status(VIRTIO_CONFIG_S_DRIVER)
            && !self.has_status(VIRTIO_CONFIG_S_FEATURES_OK);
        if !negotiating {
            log::debug!("virtio-mmio: DriverFeatures write outside negotiation ignored");
            return;
        }
        let f = &mut self.state.acked_features;
        match self.state.driver_features_sel {
            0 => *f = (*f & !0xffff_ffff) | u64::from(v),
            1 => *f = (*f & 0xffff_ffff) | (u64::from(v) << 32),
            sel => log::debug!("virtio-mmio: DriverFeaturesSel {sel} ignored"),
        }
    }

    fn write_queue(&mut self, offset: u64, v: u32) {
        let configurable = self.has_status(VIRTIO_CONFIG_S_FEATURES_OK)
            && !self.has_status(VIRTIO_CONFIG_S_DRIVER_OK);
        let sel = self.state.queue_sel;
        let Some(q) = self
            .state
            .queues
            .get_mut(sel as usize)
            .filter(|_| configurable)
        else {
            log::debug!("virtio-mmio: queue {sel} register {offset:#x} not writable now");
            return;
        };
        let lo = |a: u64| (a & !0xffff_ffff) | u64::from(v);
        let hi = |a: u64| (a & 0xffff_ffff) | (u64::from(v) << 32);
        match offset {
            // Truncation is fine: sizes above 0xffff are invalid and caught at DRIVER_OK.
            0x38 => q.size = u16::try_from(v).unwrap_or(0),
            0x44 => q.ready = v == 1,
            0x80 => q.desc = lo(q.desc),
            0x84 => q.desc = hi(q.desc),
            0x90 => q.avail = lo(q.avail),
            0x94 => q.avail = hi(q.avail),
            0xa0 => q.used = lo(q.used),
            _ => q.used = hi(q.used),
        }
    }

    fn notify_queue(&self, index: u32) {
        match self.queue_evts.get(index as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    log::warn!("virtio-mmio: queue {index} notify: {e}");
                }
            }
            None => log::debug!("virtio-mmio: notify of missing queue {index}"),
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // NEEDS_RESET is the device's bit; drivers write back what they read.
        let v = v & !VIRTIO_CONFIG_S_NEEDS_RESET;
        let old = self.state.status;
        if v & old != old {
            log::debug!("virtio-mmio: status {old:#x} -> {v:#x} clears bits; ignored");
            return;
        }
        let new = v & !old;
        let allowed = match new & !VIRTIO_CONFIG_S_FAILED {
            0 => true,
            VIRTIO_CONFIG_S_ACKNOWLEDGE => old == 0,
            VIRTIO_CONFIG_S_DRIVER => old == VIRTIO_CONFIG_S_ACKNOWLEDGE,
            VIRTIO_CONFIG_S_FEATURES_OK => self.features_acceptable(),
            VIRTIO_CONFIG_S_DRIVER_OK => self.has_status(VIRTIO_CONFIG_S_FEATURES_OK),
            _ => false,
        };
        if !allowed {
            log::debug!("virtio-mmio: status {old:#x} -> {v:#x} refused");
            return;
        }
        if new & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let acked = self.state.acked_features;
            self.dev().set_acked_features(acked);
        }
        self.state.status = v;
        if new & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            self.activate();
        }
    }

    /// FEATURES_OK is only accepted for a subset of the offer that includes VERSION_1.
    fn features_acceptable(&self) -> bool {
        let acked = self.state.acked_features;
        self.has_status(VIRTIO_CONFIG_S_DRIVER)
            && acked & !self.offered_features() == 0
            && acked & feature(VIRTIO_F_VERSION_1) != 0
    }

    fn build_queue(&self, index: usize, c: &QueueConfig) -> Result<Queue, String> {
        let err = |what: &str| format!("queue {index} {what}");
        let mut q = Queue::new(c.max_size).map_err(|_| err("max size invalid"))?;
        q.try_set_size(c.size)
            .map_err(|_| err(&format!("size {} invalid", c.size)))?;
        q.try_set_desc_table_address(GuestAddress(c.desc))
            .map_err(|_| err(&format!("descriptor table {:#x} unaligned", c.desc)))?;
        q.try_set_avail_ring_address(GuestAddress(c.avail))
            .map_err(|_| err(&format!("available ring {:#x} unaligned", c.avail)))?;
        q.try_set_used_ring_address(GuestAddress(c.used))
            .map_err(|_| err(&format!("used ring {:#x} unaligned", c.used)))?;
        q.set_event_idx(self.state.acked_features & feature(super::VIRTIO_RING_F_EVENT_IDX) != 0);
        q.set_ready(c.ready);
        if !c.ready {
            return Err(err("not ready"));
        }
        if !q.is_valid(&self.mem) {
            return Err(err("rings outside guest memory"));
        }
        Ok(q)
    }

    fn activate(&mut self) {
        let built: Result<Vec<(Queue, EventFd)>, String> = self
            .state
            .queues
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let q = self.build_queue(i, c)?;
                let evt = self.queue_evts[i]
                    .try_clone()
                    .map_err(|e| format!("queue {i} eventfd: {e}"))?;
                Ok((q, evt))
            })
            .collect();
        let result = built.and_then(|queues| {
            let (mem, irq) = (self.mem.clone(), self.interrupt.clone());
            self.dev()
                .activate(mem, irq, queues)
                .map_err(|e| crate::error_chain(&e))
        });
        match result {
            Ok(()) => self.activated = true,
            Err(why) => {
                // Warn once per transport: a guest could retry forever.
                let ty = self.device_type;
                match std::mem::replace(&mut self.warned, true) {
                    false => log::warn!("virtio-mmio type {ty}: {why}; device needs reset"),
                    true => log::debug!("virtio-mmio type {ty}: {why}; device needs reset"),
                }
                self.interrupt.set_needs_reset();
            }
        }
    }

    fn reset(&mut self) {
        if self.activated {
            self.dev().reset();
            self.activated = false;
        }
        self.interrupt.reset();
        let queues = self
            .state
            .queues
            .iter()
            .map(|q| QueueConfig {
                max_size: q.max_size,
                size: q.max_size,
                ..Default::default()
            })
            .collect();
        self.state = MmioState {
            queues,
            config_generation: self.state.config_generation,
            ..Default::default()
        };
    }
}

impl BusDevice for MmioTransport {
    /// Reads come from the register page, as the guest's own reads do when the page
    /// is mapped over the window.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let page = self.interrupt.page();
        if offset >= CONFIG_OFFSET {
            page.load_bytes(offset, data);
            return;
        }
        match <&mut [u8; 4]>::try_from(&mut *data) {
            Ok(out) if offset.is_multiple_of(4) => *out = page.load(offset).to_le_bytes(),
            _ => {
                log::debug!("virtio-mmio: bad register read {offset:#x}/{}", data.len());
                data.fill(0);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            self.dev().write_config(offset - CONFIG_OFFSET, data);
            self.render();
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(v) if offset.is_multiple_of(4) => {
                self.write_register(offset, u32::from_le_bytes(v));
                // A notification or an acknowledgement (the data path) changes no
                // register the page holds but InterruptStatus, kept by the interrupt.
                if offset != QUEUE_NOTIFY_OFFSET && offset != INTERRUPT_ACK_OFFSET {
                    self.render();
                }
            }
            _ => log::debug!("virtio-mmio: bad register write {offset:#x}/{}", data.len()),
        }
    }
}

#[path = "mmio_persist.rs"]
mod persist;

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
