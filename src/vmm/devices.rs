//! The virtio devices of one VM and the event loop thread that drives them.
//!
//! Devices are built from the configuration, put behind virtio-mmio transports in the
//! slots the manager hands out, and wired to KVM: an irqfd per device and an ioeventfd
//! per queue, so the data path never exits to a VMM thread. Every device is also an
//! event-manager subscriber; one thread runs the loop until the VM stops.

#![allow(
    unsafe_code,
    reason = "mapping a register page into the guest is an unsafe ioctl"
)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::hold::DeviceGuards;
use super::VmError;
use crate::config::VmConfig;
use crate::devices::bus::Bus;
use crate::devices::rate_limiter::{LimiterKind, RateLimiterConfig, RateLimiterError};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::manager::VirtioManager;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::persist::{PersistError, SlotState};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::VirtioDevice;

/// A device as the event loop holds it.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Errors while creating or wiring devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A device could not be created from its configuration.
    #[error("{what}: {message}")]
    Create {
        /// Which device (e.g. "disk /path").
        what: String,
        /// Why.
        message: String,
    },
    /// No slot or IRQ left, or a transport could not be built.
    #[error(transparent)]
    Manager(#[from] crate::devices::virtio::manager::ManagerError),
    /// The slot could not be put on the MMIO bus.
    #[error(transparent)]
    Bus(#[from] crate::devices::bus::BusError),
    /// KVM refused an irqfd or ioeventfd.
    #[error("registering the {what} of the device at {base:#x}: {source}")]
    Register {
        /// irqfd or ioeventfd.
        what: &'static str,
        /// Slot base.
        base: u64,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
    /// The event loop could not be set up or started.
    #[error("device event loop: {0}")]
    Loop(String),
    /// A slot's saved state could not be put back.
    #[error(transparent)]
    Persist(#[from] PersistError),
}

/// Devices wired into a VM, before their loop starts.
pub struct VirtioDevices {
    manager: VirtioManager,
    events: EventManager<Subscriber>,
    cmdline: Vec<String>,
    /// irqfds and ioeventfds to hand to KVM (see [`VirtioDevices::register`]); kept for
    /// the VM's lifetime.
    pending: Vec<Registration>,
    disks: usize,
    taps: Vec<String>,
    /// Every device, for [`DeviceLoop::describe`].
    all: Vec<Arc<Mutex<dyn VirtioDevice>>>,
    /// Every device's transport, in slot order (the same order as `all`).
    transports: Vec<Arc<Mutex<MmioTransport>>>,
}

impl VirtioDevices {
    fn new() -> Result<Self, DeviceError> {
        Ok(Self {
            manager: VirtioManager::default(),
            events: EventManager::new().map_err(|e| DeviceError::Loop(format!("{e:?}")))?,
            cmdline: Vec::new(),
            pending: Vec::new(),
            disks: 0,
            taps: Vec::new(),
            all: Vec::new(),
            transports: Vec::new(),
        })
    }

    /// Kernel command-line fragments announcing the devices (and the root disk).
    pub fn cmdline(&self) -> String {
        self.cmdline.join(" ")
    }

    fn add<D>(&mut self, mem: &GuestMemoryMmap, bus: &mut Bus, dev: D) -> Result<(), DeviceError>
    where
        D: VirtioDevice + MutEventSubscriber + Send + 'static,
    {
        let dev = Arc::new(Mutex::new(dev));
        self.events.add_subscriber(dev.clone());
        self.all.push(dev.clone());
        let info = self.manager.attach(mem.clone(), dev)?;
        let base = info.slot.base;
        bus.insert(info.transport.clone(), base, info.slot.len)?;
        let host = info
            .transport
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .register_page_address();
        self.pending.push(Registration::Window { base, host });
        self.transports.push(info.transport.clone());
        let gsi = info.slot.irq;
        self.pending.push(Registration::Irq {
            fd: info.irqfd,
            gsi,
            base,
        });
        for ioe in info.ioevents {
            let (fd, addr, datamatch) = (ioe.fd, ioe.addr, ioe.datamatch);
            self.pending.push(Registration::Notify {
                fd,
                addr,
                datamatch,
                base,
            });
        }
        self.cmdline.push(info.slot.cmdline());
        Ok(())
    }

    /// The TAP interface of each network card, in the configuration's order.
    pub fn tap_names(&self) -> &[String] {
        &self.taps
    }

    /// Give KVM every device's irqfd and queue ioeventfds, and map each slot's
    /// register page read-only over its window where KVM can (see [`windows`]).
    pub fn register(&self, vm: &VmFd) -> Result<(), DeviceError> {
        let windows = windows(vm);
        let mut slot = WINDOW_SLOTS;
        for reg in &self.pending {
            let (what, base, result) = match reg {
                Registration::Irq { fd, gsi, base } => ("irqfd", base, vm.register_irqfd(fd, *gsi)),
                Registration::Notify {
                    fd,
                    addr,
                    datamatch,
                    base,
                } => {
                    let addr = IoEventAddress::Mmio(*addr);
                    (
                        "ioeventfd",
                        base,
                        vm.register_ioevent(fd, &addr, *datamatch),
                    )
                }
                Registration::Window { .. } if !windows => continue,
                Registration::Window { base, host } => {
                    slot += 1;
                    (
                        "register page",
                        base,
                        map_window(vm, slot - 1, *base, *host),
                    )
                }
            };
            result.map_err(|source| DeviceError::Register {
                what,
                base: *base,
                source,
            })?;
        }
        Ok(())
    }

    /// Put each slot's saved state back (a restore, before any vCPU runs): the slots
    /// must be the snapshot's, in order.
    pub fn restore(&self, slots: &[SlotState]) -> Result<(), DeviceError> {
        if slots.len() != self.transports.len() {
            return Err(DeviceError::Create {
                what: "devices".into(),
                message: format!(
                    "the snapshot has {} virtio devices, this VM {}",
                    slots.len(),
                    self.transports.len()
                ),
            });
        }
        for (i, (transport, saved)) in self.transports.iter().zip(slots).enumerate() {
            let mut transport = transport.lock().unwrap_or_else(|e| e.into_inner());
            transport.restore(i, saved)?;
        }
        Ok(())
    }

    /// Start the event loop thread; it runs until [`DeviceLoop::stop`].
    pub fn start(mut self) -> Result<DeviceLoop, DeviceError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| DeviceError::Loop(e.to_string()))?;
        let stop = Arc::new(StopState {
            evt,
            stopped: AtomicBool::new(false),
        });
        let subscriber: Subscriber = Arc::new(Mutex::new(LoopStop(stop.clone())));
        self.events.add_subscriber(subscriber);
        let state = stop.clone();
        let (filtered, result) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("husk-devices".into())
            .spawn(move || {
                let mut events = self.events;
                let _keep_registered = self.pending;
                let applied = super::seccomp::apply(super::seccomp::ThreadKind::Devices);
                let ok = applied.is_ok();
                drop(filtered.send(applied));
                while ok && !state.stopped.load(Ordering::Acquire) {
                    if let Err(e) = events.run() {
                        log::error!("device event loop failed: {e:?}");
                        break;
                    }
                }
            })
            .map_err(|e| DeviceError::Loop(e.to_string()))?;
        let applied = result
            .recv()
            .unwrap_or_else(|_| Err(super::seccomp::SeccompError::thread_gone("devices")));
        let device_loop = DeviceLoop {
            stop,
            thread: Some(thread),
            devices: self.all,
            transports: self.transports,
        };
        // On failure the loop never ran; dropping it joins the thread.
        applied.map_err(|e| DeviceError::Loop(e.to_string()))?;
        Ok(device_loop)
    }
}

/// An eventfd KVM must know about.
enum Registration {
    /// A device's interrupt line.
    Irq { fd: EventFd, gsi: u32, base: u64 },
    /// A queue's QueueNotify doorbell.
    Notify {
        fd: EventFd,
        addr: u64,
        datamatch: u32,
        base: u64,
    },
    /// A slot's register page (`host`) to map over its window at `base`.
    Window { base: u64, host: u64 },
}

/// KVM memory slots of the register pages start here (guest RAM takes 0 and 1).
const WINDOW_SLOTS: u32 = 16;

/// Whether the register pages are mapped into the guest: KVM must offer read-only
/// memory slots (`KVM_CAP_READONLY_MEM`, x86 since Linux 3.16), and
/// `HUSK_MMIO_WINDOW=0` in the environment turns it off (every register read then exits
/// to husk, as before; for measuring the difference).
fn windows(vm: &VmFd) -> bool {
    let wanted = std::env::var_os("HUSK_MMIO_WINDOW").is_none_or(|v| v != "0");
    wanted && vm.check_extension(kvm_ioctls::Cap::ReadonlyMem)
}

/// Map the register page at `host` read-only at guest address `base`, in KVM slot
/// `slot`: reads are served from it, writes exit as MMIO (or hit an ioeventfd).
fn map_window(vm: &VmFd, slot: u32, base: u64, host: u64) -> Result<(), kvm_ioctls::Error> {
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot,
        guest_phys_addr: base,
        memory_size: crate::devices::virtio::register_page::PAGE_SIZE as u64,
        userspace_addr: host,
        flags: kvm_bindings::KVM_MEM_READONLY,
    };
    // SAFETY: `host` is the page-aligned mapping of a slot's `RegisterPage`, one page
    // long. The page belongs to the slot's interrupt, which the transport on the MMIO
    // bus holds; every vCPU thread holds the bus, so the mapping outlives every
    // KVM_RUN that could read it. The slot is read-only: the guest never writes it.
    unsafe { vm.set_user_memory_region(region) }
}

/// Create every device `config` asks for and put it on `bus`; KVM learns of them later,
/// through [`VirtioDevices::register`].
pub fn create(
    mem: &GuestMemoryMmap,
    bus: &mut Bus,
    config: &VmConfig,
) -> Result<VirtioDevices, DeviceError> {
    let mut devices = VirtioDevices::new()?;
    let failed = |what: String| {
        move |e: &dyn std::error::Error| DeviceError::Create {
            what,
            message: crate::error_chain(e),
        }
    };
    for disk in &config.disks {
        let what = format!("disk {}", disk.path.display());
        let dev = Block::new(disk.clone()).map_err(|e| failed(what)(&e))?;
        devices.add(mem, bus, dev)?;
        if disk.root {
            let name = disk_name(devices.disks);
            let mode = if disk.read_only { "ro" } else { "rw" };
            devices.cmdline.push(format!("root=/dev/{name} {mode}"));
        }
        devices.disks += 1;
    }
    for net in &config.nets {
        let what = format!("network {}", net.tap.as_deref().unwrap_or("(new TAP)"));
        let dev = Net::new(net.clone()).map_err(|e| failed(what)(&e))?;
        if !net.unplugged {
            devices.taps.push(dev.tap_name().to_string());
        }
        devices.add(mem, bus, dev)?;
    }
    if let Some(vsock) = &config.vsock {
        let what = format!("vsock {}", vsock.uds.display());
        let dev = Vsock::new(vsock.clone()).map_err(|e| failed(what)(&e))?;
        devices.add(mem, bus, dev)?;
    }
    if config.rng {
        let dev = Rng::new(config.rng_rate_limiter.as_ref())
            .map_err(|e| failed("entropy device".into())(&e))?;
        devices.add(mem, bus, dev)?;
    }
    // Last, so the slots of the devices a template has stay where they are.
    for fs in &config.fs {
        let what = format!("shared folder {}", fs.tag);
        let dev = Fs::new(fs.clone()).map_err(|e| failed(what)(&e))?;
        devices.add(mem, bus, dev)?;
    }
    Ok(devices)
}

/// The slot [`create`] puts the `index`-th network card of `config` in: after the
/// disks (a disk's slot is its index).
pub fn net_slot(config: &VmConfig, index: usize) -> usize {
    config.disks.len() + index
}

/// The guest's name for the `index`-th virtio disk: vda..vdz, vdaa...
pub fn disk_name(index: usize) -> String {
    let letter = |i: usize| char::from(b'a' + (i % 26) as u8);
    if index < 26 {
        format!("vd{}", letter(index))
    } else {
        format!("vd{}{}", letter(index / 26 - 1), letter(index))
    }
}

/// The running event loop.
pub struct DeviceLoop {
    stop: Arc<StopState>,
    thread: Option<JoinHandle<()>>,
    devices: Vec<Arc<Mutex<dyn VirtioDevice>>>,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
}

impl DeviceLoop {
    /// Lock every device (so the event loop stops touching guest memory and queues),
    /// let each finish what it has in flight, and read each slot's state. The vCPUs
    /// must be parked: they take the transport locks, then a device's, and here devices
    /// are locked first. A device that cannot stop refuses the hold: the others go on
    /// where they were (the guards' drop) and the error names its slot.
    pub fn hold(&self) -> Result<(DeviceGuards<'_>, Vec<SlotState>), VmError> {
        let mut guards = DeviceGuards::lock(&self.devices);
        // A device with requests in flight (blk on io_uring) completes them now, a card
        // on vhost-net takes its rings back from the kernel.
        guards.quiesce()?;
        let slots = self
            .transports
            .iter()
            .zip(guards.devices())
            .map(|(t, dev)| {
                let t = t.lock().unwrap_or_else(|e| e.into_inner());
                t.save_with(dev)
            })
            .collect();
        Ok((guards, slots))
    }

    /// Change a rate limiter of the device in `slot` (see [`VirtioDevice::update_rate_limiter`]);
    /// the limits then in force. The event loop waits for the device meanwhile.
    pub fn update_rate_limiter(
        &self,
        slot: usize,
        kind: LimiterKind,
        change: &RateLimiterConfig,
    ) -> Result<RateLimiterConfig, RateLimiterError> {
        let device = self
            .devices
            .get(slot)
            .ok_or(RateLimiterError::Unsupported {
                device: "an empty slot",
                kind,
            })?;
        let mut device = device.lock().unwrap_or_else(|e| e.into_inner());
        device.update_rate_limiter(kind, change)
    }

    /// Every device's [`VirtioDevice::describe`], one after the other. A device the
    /// loop thread holds for longer than `patience` is reported as busy (a device stuck
    /// in its own work is itself the answer) rather than waited for.
    pub fn describe(&self, patience: Duration) -> String {
        let mut out = String::new();
        for device in &self.devices {
            let start = Instant::now();
            let line = loop {
                match device.try_lock() {
                    Ok(d) => break d.describe(),
                    Err(TryLockError::Poisoned(p)) => {
                        break format!("{} (a device thread panicked)", p.into_inner().describe())
                    }
                    Err(TryLockError::WouldBlock) if start.elapsed() < patience => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(TryLockError::WouldBlock) => {
                        break format!("a device busy for over {patience:?} in the event loop")
                    }
                }
            };
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    /// Stop the loop and join its thread; devices (TAPs, sockets) are dropped with it.
    pub fn stop(&mut self) {
        self.stop.stopped.store(true, Ordering::Release);
        let _ = self.stop.evt.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DeviceLoop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The stop flag and the eventfd that wakes the loop to see it.
struct StopState {
    evt: EventFd,
    stopped: AtomicBool,
}

/// The loop's subscriber for [`StopState::evt`].
struct LoopStop(Arc<StopState>);

impl MutEventSubscriber for LoopStop {
    fn process(&mut self, _: Events, _: &mut EventOps) {
        let _ = self.0.evt.read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.0.evt, EventSet::IN)) {
            log::error!("device event loop: cannot watch the stop event: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_disks_are_vda_vdb() {
        assert_eq!(disk_name(0), "vda");
        assert_eq!(disk_name(1), "vdb");
    }

    #[test]
    fn disk_27_is_vdab() {
        assert_eq!(disk_name(25), "vdz");
        assert_eq!(disk_name(27), "vdab");
    }
}
