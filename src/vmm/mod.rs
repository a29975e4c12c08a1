//! Building and running one VM: the boot sequence of docs/design.md, in order.
#![allow(
    unsafe_code,
    reason = "registering guest memory with KVM is an unsafe ioctl"
)]

pub mod devices;
pub mod exit;
pub mod fd_limit;
pub mod guest_log;
pub mod vcpu;
pub mod vcpu_state;

use std::fs::File;
use std::io::Write;
use std::os::unix::thread::JoinHandleExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::{self as arch, layout};
use crate::boot::{self, BootRequest};
use crate::config::{ConfigError, ConsoleConfig, VmConfig};
use crate::devices::bus::{Bus, BusError};
use crate::devices::i8042::I8042;
use crate::devices::serial::{ConsoleLog, ConsoleOut, SerialDevice};
use crate::kvm::{KvmError, KvmFlavor};
use crate::memory::{GuestRam, MemoryError};
use crate::metrics::{ms_since, ExitCounts, RunMetrics, Timeline};
use crate::profile::RipHistogram;
use exit::{classify, ExitCause, GuestError, VmExit, WARM_REBOOT_FLAG_ADDR};
use vcpu::{ExitCounters, ExitSink, Vcpu, VcpuShared};

/// Lines of the guest kernel's log shown when a guest fails (see [`RunningVm::failure_output`]).
const FAILURE_LOG_LINES: usize = 60;

/// How long a hung guest's report waits for its vCPUs' registers.
const VCPU_STATE_TIMEOUT: Duration = Duration::from_millis(500);

/// How often the profiler samples each vCPU.
const PROFILE_INTERVAL: Duration = Duration::from_millis(1);

/// Errors while building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// KVM is unusable.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Guest RAM could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The kernel, initrd or boot information could not be loaded.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// vCPU or platform setup failed.
    #[error(transparent)]
    Arch(#[from] arch::ArchError),
    /// The MP table could not be written.
    #[error(transparent)]
    Mptable(#[from] arch::mptable::MptableError),
    /// A KVM call during setup failed.
    #[error("{what}: {source}")]
    Setup {
        /// What was being done.
        what: &'static str,
        /// The KVM error.
        source: kvm_ioctls::Error,
    },
    /// A file could not be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A device could not be placed on a bus.
    #[error("device layout: {0}")]
    Bus(#[from] BusError),
    /// A thread could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The guest ended badly.
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// A virtio device could not be created or wired.
    #[error(transparent)]
    Device(#[from] devices::DeviceError),
    /// The process has no room for this VM's file descriptors.
    #[error(transparent)]
    Descriptors(#[from] fd_limit::FdLimitError),
}

fn setup(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Setup { what, source }
}

/// When `start` finished each setup stage.
#[derive(Debug, Clone, Copy)]
struct SetupMarks {
    guest_loaded: Instant,
    kvm_ready: Instant,
    vcpus_created: Instant,
}

/// A VM whose vCPUs are running.
pub struct RunningVm {
    shared: Arc<VcpuShared>,
    device_loop: Option<devices::DeviceLoop>,
    vcpu_threads: Vec<JoinHandle<RipHistogram>>,
    profiler: Option<JoinHandle<()>>,
    profiler_stop: Arc<AtomicBool>,
    memory: GuestMemoryMmap,
    console: Arc<ConsoleLog>,
    started: Instant,
    setup: SetupMarks,
    kernel: PathBuf,
    taps: Vec<String>,
    // Kept alive for the VM's lifetime: dropping them closes the VM and its memory.
    _vm: VmFd,
    _ram: GuestRam,
    /// This VM's share of the process's descriptor limit, given back last.
    fds: fd_limit::FdReservation,
}

/// How a VM run ended, and what it cost.
pub struct RunReport {
    /// The clean end, or the guest's failure.
    pub outcome: Result<VmExit, GuestError>,
    /// Milestones and counters.
    pub metrics: RunMetrics,
    /// RIP samples of all vCPUs (empty unless profiling was on).
    pub samples: RipHistogram,
}

/// A handle that stops a running VM from any thread.
#[derive(Clone)]
pub struct Stopper(Arc<ExitSink>);

impl Stopper {
    /// Ask the VM to stop; `wait` then returns `VmExit::Stopped`.
    pub fn stop(&self) {
        self.0.report(ExitCause::Stopped);
    }
}

/// A handle that waits, from any thread, for the VM to end and says how it ended: a
/// guest that dies on its own (triple fault, panic, emulation failure) must end whatever
/// waits on it, not only what waits on the VM itself.
#[derive(Clone)]
pub struct ExitWatch {
    exit: Arc<ExitSink>,
    memory: GuestMemoryMmap,
    console: Arc<ConsoleLog>,
}

impl ExitWatch {
    /// Block until the VM ends; how it ended, classified as [`RunningVm::wait`] does.
    pub fn wait(&self) -> Result<VmExit, GuestError> {
        let cause = self.exit.wait();
        classify(cause, warm_flag(&self.memory), &self.console.tail())
    }
}

#[cfg(test)]
impl ExitWatch {
    /// A watch with no VM behind it, and the sink a test reports the VM's end into.
    pub(crate) fn without_vm() -> (Self, Arc<ExitSink>) {
        let exit = Arc::new(ExitSink::default());
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)])
            .expect("a page of test memory");
        let watch = Self {
            exit: exit.clone(),
            memory,
            console: Arc::new(ConsoleLog::default()),
        };
        (watch, exit)
    }
}

/// The flag a panicking Linux leaves at 0x472 before it resets (see [`exit::classify`]).
fn warm_flag(memory: &GuestMemoryMmap) -> u16 {
    memory
        .read_obj::<u16>(GuestAddress(WARM_REBOOT_FLAG_ADDR))
        .unwrap_or(0)
}

/// Build a VM from `config` and start its vCPUs.
pub fn start(config: &VmConfig) -> Result<RunningVm, VmError> {
    let started = Instant::now();
    config.validate()?;
    // Before anything of the VM exists, its share of the descriptor limit, so VMs in
    // one process cannot exhaust it together (a guest's vsock budget included).
    let fds = fd_limit::reserve(fd_limit::vm_fds(config))?;
    // Everything that only reads the user's input comes before KVM, so a bad kernel or
    // initrd is named even on a host without /dev/kvm.
    let ram = crate::memory::create(config.memory_mib)?;
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
    let pio = port_devices(&vm, config, console.clone(), exit.clone())?;
    let shared = Arc::new(VcpuShared {
        pio,
        mmio,
        exit,
        stop: AtomicBool::new(false),
        counters: ExitCounters::default(),
        first_run: Default::default(),
        profiling: config.profile,
        states: vcpu_state::StateBoard::new(usize::from(config.cpus)),
    });
    let vcpus = create_vcpus(&kvm, &vm, config.cpus, &ram.memory, &entry, &shared)?;
    let setup = SetupMarks {
        guest_loaded,
        kvm_ready,
        vcpus_created: Instant::now(),
    };
    vcpu::install_kick_handler().map_err(|source| VmError::Thread {
        what: "vCPU signal handler".into(),
        source,
    })?;
    let taps = virtio.tap_names().to_vec();
    let mut running = RunningVm {
        shared,
        device_loop: Some(virtio.start()?),
        vcpu_threads: Vec::new(),
        profiler: None,
        profiler_stop: Arc::new(AtomicBool::new(false)),
        memory: ram.memory.clone(),
        console,
        started,
        setup,
        kernel: config.kernel.clone(),
        taps,
        _vm: vm,
        _ram: ram,
        fds,
    };
    for vcpu in vcpus {
        running.spawn_vcpu(vcpu)?;
    }
    if config.profile {
        running.spawn_profiler()?;
    }
    Ok(running)
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

fn port_devices(
    vm: &VmFd,
    config: &VmConfig,
    console: Arc<ConsoleLog>,
    exit: Arc<ExitSink>,
) -> Result<Bus, VmError> {
    let mut pio = Bus::new();
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Setup {
        what: "creating the serial irqfd",
        source: kvm_ioctls::Error::new(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    vm.register_irqfd(&irq, layout::SERIAL_IRQ)
        .map_err(setup("registering the serial irqfd"))?;
    let serial = SerialDevice::new(irq, ConsoleOut::new(console_sink(config)?, console));
    pio.insert(
        Arc::new(Mutex::new(serial)),
        u64::from(layout::SERIAL_PORT),
        8,
    )?;
    let reset = I8042::new(Box::new(move || exit.report(ExitCause::ResetRequested)));
    pio.insert(
        Arc::new(Mutex::new(reset)),
        u64::from(layout::I8042_DATA_PORT),
        5,
    )?;
    Ok(pio)
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

impl RunningVm {
    fn spawn_vcpu(&mut self, vcpu: Vcpu) -> Result<(), VmError> {
        let name = format!("husk-vcpu{}", self.vcpu_threads.len());
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || vcpu.run())
            .map_err(|source| VmError::Thread { what: name, source })?;
        self.vcpu_threads.push(handle);
        Ok(())
    }

    fn spawn_profiler(&mut self) -> Result<(), VmError> {
        let threads: Vec<libc::pthread_t> =
            self.vcpu_threads.iter().map(|t| t.as_pthread_t()).collect();
        let stop = self.profiler_stop.clone();
        let handle = std::thread::Builder::new()
            .name("husk-profiler".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    std::thread::sleep(PROFILE_INTERVAL);
                    threads.iter().for_each(|&t| vcpu::kick(t));
                }
            })
            .map_err(|source| VmError::Thread {
                what: "husk-profiler".into(),
                source,
            })?;
        self.profiler = Some(handle);
        Ok(())
    }

    /// The file descriptors this VM reserved of the process's limit: the most it can
    /// hold at once (see [`fd_limit::vm_fds`]).
    pub fn reserved_fds(&self) -> usize {
        self.fds.fds()
    }

    /// A handle to stop this VM from another thread.
    pub fn stopper(&self) -> Stopper {
        Stopper(self.shared.exit.clone())
    }

    /// A handle that waits for this VM's end from another thread.
    pub fn exit_watch(&self) -> ExitWatch {
        ExitWatch {
            exit: self.shared.exit.clone(),
            memory: self.memory.clone(),
            console: self.console.clone(),
        }
    }

    /// Why the VM ended, if it has (not yet classified: see [`RunningVm::wait`]).
    pub fn exit_cause(&self) -> Option<ExitCause> {
        self.shared.exit.peek()
    }

    /// Whether the VM is still running (no vCPU or host has ended it yet).
    pub fn is_running(&self) -> bool {
        self.shared.exit.peek().is_none()
    }

    /// The guest's console output so far (the last few KiB).
    pub fn console_tail(&self) -> String {
        self.console.tail()
    }

    /// The last `lines` records of the guest kernel's log, read from guest memory: every
    /// message whatever the console's log level, even after a triple fault. Needs the
    /// kernel's symbol table (a `vmlinux`; a bzImage has none).
    pub fn kernel_log_tail(&self, lines: usize) -> Result<String, guest_log::GuestLogError> {
        guest_log::tail(&self.memory, &self.kernel, lines)
    }

    /// Where each running vCPU is now: its threads are kicked out of KVM_RUN and read
    /// their registers. A vCPU that does not answer within `timeout` (its thread has
    /// ended, or is busy in a device) is left out.
    pub fn vcpu_states(&self, timeout: Duration) -> Vec<vcpu_state::VcpuState> {
        let generation = self.shared.states.request();
        for handle in self.vcpu_threads.iter().filter(|h| !h.is_finished()) {
            vcpu::kick(handle.as_pthread_t());
        }
        self.shared.states.collect(generation, timeout)
    }

    /// What to show when the guest failed or hangs: the console's tail, the end of the
    /// kernel's log from guest memory (a `quiet` guest prints little, and a triple
    /// fault prints nothing), or why that log could not be read, where the vCPUs are
    /// (named through the kernel's symbols when it has them), and where each virtio
    /// device's queues stand.
    pub fn failure_output(&self) -> String {
        let log = self
            .kernel_log_tail(FAILURE_LOG_LINES)
            .unwrap_or_else(|e| format!("(not available: {e})\n"));
        let mut vcpus = String::new();
        for state in self.vcpu_states(VCPU_STATE_TIMEOUT) {
            // A kernel-mode RIP in none of the kernel's functions means the guest's state
            // is corrupt (or it runs code it generated); say so rather than nothing.
            let symbol = (state.cpl == 0)
                .then(|| {
                    let address = vcpu::profile_address(state.rip, false);
                    match boot::symbols::describe_address(&self.kernel, address) {
                        Ok(Some(name)) => Some(name),
                        Ok(None) => Some("in none of the kernel's functions".to_string()),
                        Err(_) => None,
                    }
                })
                .flatten();
            vcpus.push_str(&state.describe(symbol.as_deref()));
            vcpus.push('\n');
        }
        if vcpus.is_empty() {
            vcpus.push_str("(no vCPU is running)\n");
        }
        let devices = match &self.device_loop {
            Some(devices) => devices.describe(VCPU_STATE_TIMEOUT),
            None => "(the devices are gone)\n".to_string(),
        };
        format!(
            "{}\n--- guest kernel log, read from guest memory ---\n{log}\
             --- vCPUs ---\n{vcpus}--- devices ---\n{devices}",
            self.console.tail()
        )
    }

    /// The host TAP interface of each network card, in the configuration's order; a TAP
    /// husk created exists as long as the VM does.
    pub fn tap_names(&self) -> &[String] {
        &self.taps
    }

    /// Wait up to `timeout` for the guest to end by itself, then stop it; report.
    pub fn wait_or_stop(self, timeout: Duration) -> RunReport {
        if self.shared.exit.wait_timeout(timeout).is_none() {
            self.shared.exit.report(ExitCause::Stopped);
        }
        self.wait()
    }

    /// Wait for the guest to end, stop every thread, and report.
    pub fn wait(mut self) -> RunReport {
        let cause = self.shared.exit.wait();
        let ended = Instant::now();
        let samples = self.shutdown();
        let outcome = classify(cause, warm_flag(&self.memory), &self.console.tail());
        let metrics = self.metrics(ended);
        RunReport {
            outcome,
            metrics,
            samples,
        }
    }

    /// Stop the profiler and the vCPUs and join them; returns the merged RIP samples.
    fn shutdown(&mut self) -> RipHistogram {
        self.profiler_stop.store(true, Ordering::Release);
        if let Some(p) = self.profiler.take() {
            let _ = p.join();
        }
        self.shared.stop.store(true, Ordering::Release);
        let mut samples = RipHistogram::default();
        for handle in self.vcpu_threads.drain(..) {
            // Kick until the thread is out of KVM_RUN: one kick can land just before the
            // thread re-enters, and immediate_exit covers that, but be certain.
            while !handle.is_finished() {
                vcpu::kick(handle.as_pthread_t());
                std::thread::sleep(Duration::from_millis(1));
            }
            if let Ok(s) = handle.join() {
                samples.merge(&s);
            }
        }
        if let Some(mut devices) = self.device_loop.take() {
            devices.stop();
        }
        samples
    }

    fn metrics(&self, ended: Instant) -> RunMetrics {
        let c = &self.shared.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        RunMetrics {
            timeline: Timeline {
                guest_loaded_ms: ms_since(self.started, Some(self.setup.guest_loaded)),
                kvm_ready_ms: ms_since(self.started, Some(self.setup.kvm_ready)),
                vcpus_created_ms: ms_since(self.started, Some(self.setup.vcpus_created)),
                first_kvm_run_ms: ms_since(self.started, self.shared.first_run.get().copied()),
                first_console_byte_ms: ms_since(self.started, self.console.first_byte()),
                exit_ms: ms_since(self.started, Some(ended)),
            },
            exits: ExitCounts {
                io_in: get(&c.io_in),
                io_out: get(&c.io_out),
                mmio_read: get(&c.mmio_read),
                mmio_write: get(&c.mmio_write),
                interrupted: get(&c.interrupted),
                other: get(&c.other),
            },
            process: crate::metrics::ProcessStats::read().unwrap_or_default(),
        }
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        if !self.vcpu_threads.is_empty() {
            self.shared.exit.report(ExitCause::Stopped);
            self.shutdown();
        }
    }
}

/// Boot `config` and wait for the guest to end.
pub fn run(config: &VmConfig) -> Result<RunReport, VmError> {
    Ok(start(config)?.wait())
}
