//! Building and running one VM: the boot sequence of docs/design.md, in order
//! ([`builder`]), the running VM ([`running`]), and its state as plain data for
//! snapshots ([`persist`], [`vstate`]).

pub mod builder;
pub mod devices;
pub mod exit;
pub mod fd_limit;
pub mod guest_log;
pub mod hang_report;
pub mod hold;
pub mod parking;
pub mod persist;
pub mod prefault;
pub mod rate_limits;
pub mod resident;
pub mod running;
pub mod seccomp;
pub mod vcpu;
pub mod vstate;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64 as arch;
use crate::boot;
use crate::config::{ConfigError, VmConfig};
use crate::devices::bus::BusError;
use crate::devices::serial::ConsoleLog;
use crate::kvm::KvmError;
use crate::memory::MemoryError;
use crate::metrics::RunMetrics;
use crate::profile::RipHistogram;
use exit::{classify, ExitCause, GuestError, VmExit, WARM_REBOOT_FLAG_ADDR};
use vcpu::ExitSink;

pub use builder::{restore, restore_with, start, RestoreOptions};
pub use rate_limits::LimiterTarget;
pub use running::RunningVm;

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
    /// A restore named a device slot the snapshot does not have.
    #[error("the snapshot has {count} {what}(s); there is no slot {slot}")]
    NoSlot {
        /// Which kind of device.
        what: &'static str,
        /// The slot asked for.
        slot: usize,
        /// How many the snapshot has.
        count: usize,
    },
    /// A vCPU's state could not be saved or restored.
    #[error(transparent)]
    VcpuState(#[from] vstate::VcpuStateError),
    /// The VM's state could not be saved or restored.
    #[error(transparent)]
    VmState(#[from] vstate::VmStateError),
    /// A device's state could not be restored.
    #[error(transparent)]
    Persist(#[from] crate::devices::virtio::persist::PersistError),
    /// The console's state could not be restored.
    #[error("serial console state: {0}")]
    Serial(String),
    /// The VM is not in a state that allows the request.
    #[error("{0}")]
    State(String),
    /// A device could not be held still for a snapshot (the VM goes on as it was).
    #[error("the device in slot {slot}")]
    Hold {
        /// Its slot.
        slot: usize,
        /// Why.
        #[source]
        source: crate::devices::virtio::VirtioError,
    },
    /// A thread's syscall filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    /// A request named a device the VM does not have.
    #[error("this VM has no {what} {id}")]
    NoDevice {
        /// Which kind of device.
        what: &'static str,
        /// The id asked for.
        id: String,
    },
    /// A device refused new limits.
    #[error("{device}")]
    RateLimiter {
        /// The device.
        device: String,
        /// Why.
        #[source]
        source: crate::devices::rate_limiter::RateLimiterError,
    },
    /// The process has no room for this VM's file descriptors.
    #[error(transparent)]
    Descriptors(#[from] fd_limit::FdLimitError),
}

fn setup(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Setup { what, source }
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

/// The flag a panicking Linux leaves at 0x472 before it resets (see [`exit::classify`]).
fn warm_flag(memory: &GuestMemoryMmap) -> u16 {
    memory
        .read_obj::<u16>(GuestAddress(WARM_REBOOT_FLAG_ADDR))
        .unwrap_or(0)
}

/// Boot `config` and wait for the guest to end.
pub fn run(config: &VmConfig) -> Result<RunReport, VmError> {
    Ok(start(config)?.wait())
}
