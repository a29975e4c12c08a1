//! The boot sequence of docs/design.md as one straight function ([`start`]), and the
//! restore of a snapshot beside it ([`restore`]): the same steps, with state put back
//! where a boot would load a kernel and set up fresh vCPUs.
#![allow(
    unsafe_code,
    reason = "registering guest memory with KVM is an unsafe ioctl"
)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::prefault::Prefaulted;
use crate::snapshot::working_set::WorkingSet;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::{self as arch, layout};
use crate::boot::{self, BootRequest};
use crate::config::{ConsoleConfig, VmConfig};
use crate::devices::bus::Bus;
use crate::devices::i8042::{I8042State, I8042};
use crate::devices::serial::{ConsoleLog, ConsoleOut, SerialDevice, SerialPersist};
use crate::devices::virtio::net::NetConfig;
use crate::devices::virtio::vsock::VsockConfig;
use crate::kvm::KvmFlavor;

use super::exit::ExitCause;
use super::parking::Parking;
use super::persist::MicrovmState;
use super::running::{Parts, SetupMarks};
use super::vcpu::{ExitCounters, ExitSink, SaveContext, Vcpu, VcpuShared};
use super::vstate::vcpu::xsave2_size;
use super::{devices, fd_limit, hang_report, setup, RunningVm, VmError};

/// Build a VM from `config` and start its vCPUs.
pub fn start(config: &VmConfig) -> Result<RunningVm, VmError> {
    let started = Instant::now();
    config.validate()?;
    // Before anything of the VM exists, its share of the descriptor limit, so VMs in
    // one process cannot exhaust it together (a guest's vsock budget included).
    let fds = fd_limit::reserve(fd_limit::vm_fds(config))?;
    // Everything that only reads the user's input comes before KVM, so a bad kernel or
    // initrd is named even on a host without /dev/kvm.
    // A vhost-user daemon maps guest RAM too: it needs a file of it.
    let sharing = if config.fs.is_empty() {
        crate::memory::Sharing::Private
    } else {
        crate::memory::Sharing::WithDaemons
    };
    let ram = crate::memory::create(config.memory_mib, sharing)?;
    let mut mmio = Bus::new();
    let virtio = devices::create(&ram.memory, &mut mmio, config)?;
    let entry = load_guest(config, &ram.memory, &virtio.cmdline())?;
    arch::mptable::setup_mptable(&ram.memory, config.cpus)?;
    let guest_loaded = Instant::now();

    let kvm = crate::kvm::open()?;
    if let Some(warning) = KvmFlavor::probe().warning() {
        log::warn!("{warning}");
    }
    let vm = kvm.create_vm().map_err(setup("creating the VM"))?;
    register_memory(&vm, &ram.memory)?;
    create_platform(&vm)?;
    virtio.register(&vm)?;
    let kvm_ready = Instant::now();

    let console = Arc::new(ConsoleLog::default());
    let exit = Arc::new(ExitSink::default());
    let ports = port_devices(&vm, config, console.clone(), exit.clone(), None)?;
    let shared = vcpu_shared(&kvm, &vm, config, ports.bus, mmio, exit, false)?;
    let vcpus = create_vcpus(&kvm, &vm, config.cpus, &ram.memory, &entry, &shared)?;
    RunningVm::launch(Parts {
        shared,
        virtio,
        vcpus,
        ram,
        vm,
        console,
        serial: ports.serial,
        i8042: ports.i8042,
        config: config.clone(),
        fds,
        started,
        setup: SetupMarks {
            guest_loaded,
            kvm_ready,
            vcpus_created: Instant::now(),
            prefaulted: None,
        },
    })
}

/// What a restore changes of the saved VM: its backends and how it starts.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreOptions {
    /// New backing files by disk slot (0 is vda); a slot not named keeps its saved file.
    pub disks: BTreeMap<usize, PathBuf>,
    /// New backends by network slot; a slot not named gets what its saved config says
    /// (a new TAP, or none for an unplugged card).
    pub nets: BTreeMap<usize, NetConfig>,
    /// The vsock device's new socket and CID (a restored VM must not share the saved
    /// one's socket); `None` keeps the saved config.
    pub vsock: Option<VsockConfig>,
    /// Where the console goes.
    pub console: ConsoleConfig,
    /// Keep the vCPUs parked until [`RunningVm::resume`].
    pub paused: bool,
    /// The pages this restored guest touches will be recorded as the snapshot's
    /// working set (`snapshot::working_set::record`): load each page of the memory
    /// file on its own, so the VMM's page tables hold only pages the guest touched
    /// (see [`crate::memory::load_pages_singly`]).
    #[serde(default)]
    pub record_touched: bool,
}

/// Apply `options` to the saved configuration; a slot the VM does not have is an error.
fn restore_config(saved: &VmConfig, options: &RestoreOptions) -> Result<VmConfig, VmError> {
    let mut config = saved.clone();
    for (&slot, path) in &options.disks {
        let disk = config.disks.get_mut(slot).ok_or(VmError::NoSlot {
            what: "disk",
            slot,
            count: saved.disks.len(),
        })?;
        disk.path = path.clone();
    }
    for (&slot, net) in &options.nets {
        let card = config.nets.get_mut(slot).ok_or(VmError::NoSlot {
            what: "network card",
            slot,
            count: saved.nets.len(),
        })?;
        *card = net.clone();
    }
    if let Some(vsock) = &options.vsock {
        if config.vsock.is_none() {
            return Err(VmError::NoSlot {
                what: "vsock device",
                slot: 0,
                count: 0,
            });
        }
        config.vsock = Some(vsock.clone());
    }
    config.console = options.console.clone();
    config.profile = false;
    Ok(config)
}

/// Rebuild a saved VM: `state` as read from a snapshot, guest RAM mapped privately from
/// `memory` (pages load on first touch; clones of one snapshot share the untouched
/// ones). The steps follow [`start`], with saved state where a boot loads a kernel.
pub fn restore(
    state: &MicrovmState,
    memory: File,
    options: &RestoreOptions,
) -> Result<RunningVm, VmError> {
    restore_with(state, memory, None, options)
}

/// [`restore`], mapping `working_set` (pages of `memory`) into the guest before it
/// runs (see [`super::prefault`]).
pub fn restore_with(
    state: &MicrovmState,
    memory: File,
    working_set: Option<&WorkingSet>,
    options: &RestoreOptions,
) -> Result<RunningVm, VmError> {
    let started = Instant::now();
    let config = restore_config(&state.config, options)?;
    config.validate_resources()?;
    let ids: Vec<u8> = state.vcpus.iter().map(|v| v.id).collect();
    if ids != (0..config.cpus).collect::<Vec<u8>>() {
        return Err(VmError::State(format!(
            "the snapshot's configuration has {} vCPUs but its state holds vCPUs {ids:?}",
            config.cpus
        )));
    }
    let fds = fd_limit::reserve(fd_limit::vm_fds(&config))?;
    let single = options.record_touched && working_set.is_none();
    if single {
        crate::memory::drop_cached_pages(&memory);
    }
    let ram = crate::memory::map_snapshot(memory, config.memory_mib)?;
    if single {
        crate::memory::load_pages_singly(&ram.memory);
    }
    let mut mmio = Bus::new();
    let virtio = devices::create(&ram.memory, &mut mmio, &config)?;
    let guest_loaded = Instant::now();

    let kvm = crate::kvm::open()?;
    let vm = kvm.create_vm().map_err(setup("creating the VM"))?;
    register_memory(&vm, &ram.memory)?;
    create_platform(&vm)?;
    state.vm.restore(&vm)?;
    virtio.register(&vm)?;
    let kvm_ready = Instant::now();

    let console = Arc::new(ConsoleLog::default());
    let exit = Arc::new(ExitSink::default());
    let saved = Some((&state.serial, &state.i8042));
    let ports = port_devices(&vm, &config, console.clone(), exit.clone(), saved)?;
    let shared = vcpu_shared(&kvm, &vm, &config, ports.bus, mmio, exit, options.paused)?;
    let prefault = working_set.map(|set| (&kvm, &ram.memory, set));
    let (vcpus, prefaulted) = restore_vcpus(&vm, state, &shared, prefault)?;
    virtio.restore(&state.devices)?;
    RunningVm::launch(Parts {
        shared,
        virtio,
        vcpus,
        ram,
        vm,
        console,
        serial: ports.serial,
        i8042: ports.i8042,
        config,
        fds,
        started,
        setup: SetupMarks {
            guest_loaded,
            kvm_ready,
            vcpus_created: Instant::now(),
            prefaulted,
        },
    })
}

/// What every vCPU thread shares; with `paused`, they park before their first run.
fn vcpu_shared(
    kvm: &Kvm,
    vm: &VmFd,
    config: &VmConfig,
    pio: Bus,
    mmio: Bus,
    exit: Arc<ExitSink>,
    paused: bool,
) -> Result<Arc<VcpuShared>, VmError> {
    let msr_list = kvm
        .get_msr_index_list()
        .map_err(setup("reading KVM's MSR list"))?
        .as_slice()
        .to_vec();
    let parking = Parking::new(usize::from(config.cpus));
    if paused {
        parking.request_pause();
    }
    Ok(Arc::new(VcpuShared {
        pio,
        mmio,
        exit,
        stop: AtomicBool::new(false),
        counters: ExitCounters::default(),
        first_run: Default::default(),
        profiling: config.profile,
        states: hang_report::StateBoard::new(usize::from(config.cpus)),
        parking,
        save: SaveContext {
            msr_list,
            xsave2_size: xsave2_size(vm),
        },
    }))
}

fn restore_vcpus(
    vm: &VmFd,
    state: &MicrovmState,
    shared: &Arc<VcpuShared>,
    mut prefault: Option<(&Kvm, &GuestMemoryMmap, &WorkingSet)>,
) -> Result<(Vec<Vcpu>, Option<Prefaulted>), VmError> {
    let host_xsave2 = shared.save.xsave2_size;
    let mut vcpus = Vec::with_capacity(state.vcpus.len());
    let mut prefaulted = None;
    for saved in &state.vcpus {
        let fd = vm
            .create_vcpu(u64::from(saved.id))
            .map_err(setup("creating a vCPU"))?;
        saved.restore(&fd, host_xsave2)?;
        // One vCPU with its state in place maps for all: KVM's page tables are the VM's.
        if let Some((kvm, memory, set)) = prefault.take() {
            prefaulted = super::prefault::prefault(kvm, &fd, memory, set);
        }
        vcpus.push(Vcpu::new(fd, saved.id, shared.clone()));
    }
    Ok((vcpus, prefaulted))
}

fn register_memory(vm: &VmFd, memory: &GuestMemoryMmap) -> Result<(), VmError> {
    for (slot, region) in memory.iter().enumerate() {
        let host = memory
            .get_host_address(region.start_addr())
            .map_err(|_| VmError::Setup {
                what: "mapping guest memory",
                source: kvm_ioctls::Error::new(libc::EFAULT),
            })?;
        let mem_region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping of `region.len()` bytes owned by `memory`,
        // which the RunningVm keeps alive as long as the VM fd.
        unsafe { vm.set_user_memory_region(mem_region) }
            .map_err(setup("registering guest memory"))?;
    }
    Ok(())
}

fn create_platform(vm: &VmFd) -> Result<(), VmError> {
    vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
        .map_err(setup("setting the TSS address"))?;
    vm.create_irq_chip()
        .map_err(setup("creating the in-kernel irqchip"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(setup("creating the in-kernel PIT"))
}

fn open(path: &Path) -> Result<File, VmError> {
    File::open(path).map_err(|source| VmError::Open {
        path: path.to_path_buf(),
        source,
    })
}

fn load_guest(
    config: &VmConfig,
    memory: &GuestMemoryMmap,
    device_cmdline: &str,
) -> Result<boot::BootEntry, VmError> {
    let mut kernel = open(&config.kernel)?;
    let mut initrd = config.initrd.as_deref().map(open).transpose()?;
    let cmdline = config.full_cmdline(device_cmdline);
    log::debug!("kernel command line: {cmdline}");
    let req = BootRequest {
        cmdline: &cmdline,
        initrd: initrd.as_mut(),
        initrd_path: config.initrd.as_deref(),
    };
    Ok(boot::load(memory, &mut kernel, &config.kernel, req)?)
}

fn console_sink(config: &VmConfig) -> Result<Option<Box<dyn Write + Send>>, VmError> {
    Ok(match &config.console {
        ConsoleConfig::Stdout => Some(Box::new(std::io::stdout())),
        ConsoleConfig::Off => None,
        ConsoleConfig::File(path) => Some(Box::new(File::create(path).map_err(|source| {
            VmError::Open {
                path: path.clone(),
                source,
            }
        })?)),
    })
}

/// The legacy port devices of a VM, on their bus.
struct PortDevices {
    bus: Bus,
    serial: Arc<Mutex<SerialDevice>>,
    i8042: Arc<Mutex<I8042>>,
}

fn port_devices(
    vm: &VmFd,
    config: &VmConfig,
    console: Arc<ConsoleLog>,
    exit: Arc<ExitSink>,
    saved: Option<(&SerialPersist, &I8042State)>,
) -> Result<PortDevices, VmError> {
    let mut bus = Bus::new();
    let irq = irqfd(vm, layout::SERIAL_IRQ, "the serial irqfd")?;
    let out = ConsoleOut::new(console_sink(config)?, console);
    let serial = match saved {
        Some((state, _)) => SerialDevice::from_state(state, irq, out)?,
        None => SerialDevice::new(irq, out),
    };
    let serial = Arc::new(Mutex::new(serial));
    bus.insert(serial.clone(), u64::from(layout::SERIAL_PORT), 8)?;
    let irq = irqfd(vm, layout::KEYBOARD_IRQ, "the keyboard irqfd")?;
    let on_reset = Box::new(move || exit.report(ExitCause::ResetRequested));
    let i8042 = match saved {
        Some((_, state)) if !state.is_valid() => {
            return Err(VmError::State(format!(
                "the snapshot's i8042 holds {} output bytes, more than it can",
                state.output.len()
            )))
        }
        Some((_, state)) => I8042::from_state(state.clone(), irq, on_reset),
        None => I8042::new(irq, on_reset),
    };
    let i8042 = Arc::new(Mutex::new(i8042));
    bus.insert(i8042.clone(), u64::from(layout::I8042_DATA_PORT), 5)?;
    Ok(PortDevices { bus, serial, i8042 })
}

/// A new eventfd registered as the irqfd of `gsi`.
fn irqfd(vm: &VmFd, gsi: u32, what: &'static str) -> Result<EventFd, VmError> {
    let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Setup {
        what,
        source: kvm_ioctls::Error::new(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    vm.register_irqfd(&fd, gsi).map_err(setup(what))?;
    Ok(fd)
}

fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    cpus: u8,
    memory: &GuestMemoryMmap,
    entry: &boot::BootEntry,
    shared: &Arc<VcpuShared>,
) -> Result<Vec<Vcpu>, VmError> {
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(setup("reading the supported CPUID"))?;
    let options = arch::CpuidOptions {
        tsc_deadline: kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer),
        // The one CPUID bit a paravirtual KVM honours; its emulator lacks cmpxchg16b.
        clear_cx16: KvmFlavor::probe() == KvmFlavor::Paravirtual,
    };
    log::debug!("CPUID adjustments: {options:?}");
    let mut vcpus = Vec::with_capacity(usize::from(cpus));
    for id in 0..cpus {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(setup("creating a vCPU"))?;
        arch::configure_vcpu_with(&fd, &supported, id, cpus, options)?;
        if id == 0 {
            arch::setup_boot_regs(&fd, memory, entry)?;
        }
        vcpus.push(Vcpu::new(fd, id, shared.clone()));
    }
    Ok(vcpus)
}
