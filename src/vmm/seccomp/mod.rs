//! Syscall filters (seccomp-bpf, built with `seccompiler`) for a `husk vmm` process.
//!
//! Two layers. The process filter, installed on every thread at once before the VM is
//! built, says what the process may ever do: no program is executed, no process is
//! created (threads only), nothing is traced or mounted, no namespace is changed, no
//! network socket other than a Unix one is opened, and no ioctl outside KVM's, the
//! TAP's and a few terminal and file ones is issued. Each vCPU and the device loop then
//! add a narrower filter of their own when they start (filters stack: a call must pass
//! both): they serve the guest, so they open no files, bind nothing and make no thread.
//!
//! A call outside a list kills the process (SIGSYS). `HUSK_SECCOMP=log` makes it
//! logged by the kernel and allowed instead, for finding what a list lacks
//! (`dmesg | grep type=1326` names the syscall by number).
mod lists;
#[cfg(test)]
mod tests;

use std::sync::OnceLock;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

use lists::{process_rules, thread_rules, Rules};

/// The threads with a list narrower than the process's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU (`husk-vcpuN`).
    Vcpu,
    /// The device event loop (`husk-devices`).
    Devices,
}

/// Whether filters are installed, and what a call outside a list does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No filters (`husk boot`, `husk vmm --no-seccomp`, VMs in a library's process).
    Off,
    /// A call outside a list kills the process.
    Kill,
    /// A call outside a list is logged by the kernel and allowed.
    Log,
}

static MODE: OnceLock<Mode> = OnceLock::new();
/// Whether this process may drive the kernel's vhost-net (`husk vmm --vhost-net`).
static VHOST_NET: OnceLock<bool> = OnceLock::new();

/// Let the filters allow vhost-net's ioctls (once; later calls are ignored). Unset,
/// a filtered process refuses a card with `vhost=on` (`allows_vhost_net`).
pub fn set_vhost_net(allowed: bool) {
    VHOST_NET.get_or_init(|| allowed);
}

/// Whether a card may use vhost-net here: always without filters, with them only
/// when the process was started for it.
pub fn allows_vhost_net() -> bool {
    mode() == Mode::Off || vhost_net_listed()
}

fn vhost_net_listed() -> bool {
    VHOST_NET.get().copied().unwrap_or(false)
}

/// Set this process's mode (once; later calls are ignored); unset means `Off`.
/// `HUSK_SECCOMP=log` turns `Kill` into `Log`.
pub fn set_mode(mode: Mode) {
    let mode = match (mode, std::env::var("HUSK_SECCOMP").as_deref()) {
        (Mode::Kill, Ok("log")) => Mode::Log,
        (mode, _) => mode,
    };
    MODE.get_or_init(|| mode);
}

/// This process's mode.
pub fn mode() -> Mode {
    MODE.get().copied().unwrap_or(Mode::Off)
}

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
#[error("seccomp filter ({what}): {message}")]
pub struct SeccompError {
    what: &'static str,
    message: String,
}

impl SeccompError {
    /// A thread ended before saying whether its filter went on.
    pub fn thread_gone(what: &'static str) -> Self {
        Self {
            what,
            message: "the thread ended before installing it".into(),
        }
    }
}

fn compile(
    what: &'static str,
    rules: Rules,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let err = |message: String| SeccompError { what, message };
    let filter = SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
        .map_err(|e| err(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| err(e.to_string()))
}

fn mismatch_action() -> Option<SeccompAction> {
    match mode() {
        Mode::Off => None,
        Mode::Kill => Some(SeccompAction::KillProcess),
        Mode::Log => Some(SeccompAction::Log),
    }
}

/// Install the process filter on every thread of the process, and on those it makes
/// from now on (nothing when the mode is `Off`). It also makes `clone3` fail with
/// ENOSYS, so threads are made with `clone`, whose flags a filter can check.
pub fn apply_process() -> Result<(), SeccompError> {
    let Some(mismatch) = mismatch_action() else {
        return Ok(());
    };
    one_allocator_arena();
    let rules = process_rules(vhost_net_listed());
    let program = compile("process", rules, mismatch, SeccompAction::Allow)?;
    let mut clone3 = Rules::new();
    clone3.insert(libc::SYS_clone3, Vec::new());
    let no_clone3 = compile(
        "clone3",
        clone3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
    )?;
    let err = |what, e: seccompiler::Error| SeccompError {
        what,
        message: e.to_string(),
    };
    seccompiler::apply_filter_all_threads(&program).map_err(|e| err("process", e))?;
    seccompiler::apply_filter_all_threads(&no_clone3).map_err(|e| err("clone3", e))
}

/// Install `kind`'s filter on the calling thread (nothing when the mode is `Off`).
pub fn apply(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(mismatch) = mismatch_action() else {
        return Ok(());
    };
    let what = match kind {
        ThreadKind::Vcpu => "vcpu",
        ThreadKind::Devices => "devices",
    };
    let rules = thread_rules(kind, vhost_net_listed());
    let program = compile(what, rules, mismatch, SeccompAction::Allow)?;
    seccompiler::apply_filter(&program).map_err(|e| SeccompError {
        what,
        message: e.to_string(),
    })
}

/// Set in a `husk vmm`'s environment, this makes each vCPU thread try `execve` right
/// after its filter went on: the tests' way to see a forbidden call kill the process
/// and its caller say so. Nothing happens unless the mode is `Kill`.
pub const FORBIDDEN_CALL_TEST_ENV: &str = "HUSK_TEST_VCPU_EXECVE";

/// Every thread made from now on allocates from the main arena. glibc (husk links it
/// statically) opens `/proc/sys/vm/overcommit_memory` from inside `free()` the first
/// time a thread's own heap shrinks: in a device or vCPU thread, whose filters allow no
/// open, that killed the VMM (a device thread that buffered a large copy, then freed
/// it). With one arena no thread has a heap of its own, and the main arena shrinks with
/// `brk`. Called before the VM's threads exist.
fn one_allocator_arena() {
    #[allow(unsafe_code, reason = "mallopt has no safe wrapper")]
    // SAFETY: mallopt only sets an allocator parameter, under the allocator's lock.
    let set = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    if set != 1 {
        log::warn!("cannot limit the allocator to one arena (mallopt returned {set})");
    }
}

/// The forbidden call of [`FORBIDDEN_CALL_TEST_ENV`], when asked for and filtered.
pub(crate) fn forbidden_call_if_testing() {
    if mode() != Mode::Kill || std::env::var_os(FORBIDDEN_CALL_TEST_ENV).is_none() {
        return;
    }
    let path = c"/bin/true";
    let argv = [path.as_ptr(), std::ptr::null()];
    #[allow(
        unsafe_code,
        reason = "execv has no safe wrapper that keeps the thread"
    )]
    // SAFETY: NUL-terminated strings and a NULL-terminated argv; under the filter in
    // `Kill` mode the call kills the process instead of running anything.
    unsafe {
        libc::execv(path.as_ptr(), argv.as_ptr());
    }
}
