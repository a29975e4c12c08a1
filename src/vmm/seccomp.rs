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
use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

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
    let program = compile("process", process_rules(), mismatch, SeccompAction::Allow)?;
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
    let program = compile(what, thread_rules(kind), mismatch, SeccompAction::Allow)?;
    seccompiler::apply_filter(&program).map_err(|e| SeccompError {
        what,
        message: e.to_string(),
    })
}

/// Set in a `husk vmm`'s environment, this makes each vCPU thread try `execve` right
/// after its filter went on: the tests' way to see a forbidden call kill the process
/// and its caller say so. Nothing happens unless the mode is `Kill`.
pub const FORBIDDEN_CALL_TEST_ENV: &str = "HUSK_TEST_VCPU_EXECVE";

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

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn allow(rules: &mut Rules, syscalls: &[libc::c_long]) {
    for &s in syscalls {
        rules.insert(s, Vec::new());
    }
}

fn condition(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).expect("a valid condition")
}

fn rule(conditions: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conditions).expect("a rule with conditions")
}

/// `ioctl` on KVM's fds (request type 0xAE) when `kvm`, and with the host requests
/// husk uses.
fn allow_ioctls(rules: &mut Rules, kvm: bool) {
    let mut list: Vec<SeccompRule> = HOST_IOCTLS
        .iter()
        .map(|&request| rule(vec![condition(1, SeccompCmpOp::Eq, request)]))
        .collect();
    if kvm {
        list.push(rule(vec![condition(
            1,
            SeccompCmpOp::MaskedEq(0xff00),
            0xae00,
        )]));
    }
    rules.insert(libc::SYS_ioctl, list);
}

/// `socket` for Unix sockets only.
fn allow_unix_sockets(rules: &mut Rules) {
    let unix = condition(0, SeccompCmpOp::Eq, libc::AF_UNIX as u64);
    rules.insert(libc::SYS_socket, vec![rule(vec![unix])]);
}

/// `clone` that makes a thread (CLONE_THREAD set), never a process.
fn allow_threads(rules: &mut Rules) {
    let thread = libc::CLONE_THREAD as u64;
    let cond = condition(0, SeccompCmpOp::MaskedEq(thread), thread);
    rules.insert(libc::SYS_clone, vec![rule(vec![cond])]);
    // Refused with ENOSYS by the second filter (see `apply_process`); listed so the
    // first does not kill for it.
    rules.insert(libc::SYS_clone3, Vec::new());
}

/// ioctls outside KVM's: the TAP's setup, non-blocking and close-on-exec flags,
/// terminal queries (is standard error a terminal, its size), a block device's size,
/// and reflink copies of snapshot files.
const HOST_IOCTLS: &[u64] = &[
    libc::TUNSETIFF,
    libc::TUNSETVNETHDRSZ,
    libc::TUNSETOFFLOAD,
    libc::FIONBIO,
    libc::FIOCLEX,
    libc::FIONCLEX,
    libc::FIONREAD,
    libc::TCGETS,
    libc::TIOCGWINSZ,
    // BLKGETSIZE64: _IOR(0x12, 114, u64).
    0x8008_1272,
    // FICLONE: _IOW(0x94, 9, int).
    0x4004_9409,
];

/// What every thread does: memory, locks, time, signals, reading and writing fds it
/// holds, exiting.
const COMMON: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getrandom,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_restart_syscall,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_tgkill,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_prctl,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
];

/// Host fds the devices serve: eventfds, timers, epoll, Unix sockets.
const DEVICE_IO: &[libc::c_long] = &[
    libc::SYS_eventfd2,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
];

/// Building the VM and serving the API: files (kernel, disks, snapshots, reports, the
/// socket), threads, limits.
const BUILD: &[libc::c_long] = &[
    libc::SYS_openat,
    libc::SYS_ftruncate,
    libc::SYS_mkdirat,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_getdents64,
    libc::SYS_readlinkat,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_getcwd,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_flock,
    libc::SYS_fstatfs,
    libc::SYS_statfs,
    libc::SYS_fadvise64,
    libc::SYS_copy_file_range,
    libc::SYS_sendfile,
    libc::SYS_memfd_create,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_socketpair,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_sched_setaffinity,
    libc::SYS_getrlimit,
    libc::SYS_prlimit64,
    libc::SYS_setrlimit,
    libc::SYS_sysinfo,
    libc::SYS_uname,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getppid,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_set_tid_address,
    // The x86-64 calls glibc makes for chmod, unlink, rename, mkdir, rmdir, readlink,
    // access, stat, open and dup2 (not their *at forms).
    libc::SYS_chmod,
    libc::SYS_unlink,
    libc::SYS_rename,
    libc::SYS_mkdir,
    libc::SYS_rmdir,
    libc::SYS_readlink,
    libc::SYS_access,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_open,
    libc::SYS_dup2,
    libc::SYS_umask,
    libc::SYS_msync,
    libc::SYS_mincore,
    libc::SYS_getrusage,
    libc::SYS_accept,
    libc::SYS_seccomp,
];

fn process_rules() -> Rules {
    let mut r = Rules::new();
    allow(&mut r, COMMON);
    allow(&mut r, DEVICE_IO);
    allow(&mut r, BUILD);
    allow_unix_sockets(&mut r);
    allow_threads(&mut r);
    allow_ioctls(&mut r, true);
    r
}

fn thread_rules(kind: ThreadKind) -> Rules {
    let mut r = Rules::new();
    allow(&mut r, COMMON);
    allow(&mut r, DEVICE_IO);
    // A vCPU's MMIO write may reset a vsock device, which connects no socket but may
    // close them; a device loop connects a guest's stream to a host Unix socket.
    allow_unix_sockets(&mut r);
    allow_ioctls(&mut r, kind == ThreadKind::Vcpu);
    r
}

#[cfg(test)]
#[allow(
    unsafe_code,
    reason = "the tests fork a child to be killed and wait for it"
)]
mod tests {
    use super::*;

    const FORBIDDEN: &[libc::c_long] = &[
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_fork,
        libc::SYS_vfork,
        libc::SYS_ptrace,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_setns,
        libc::SYS_unshare,
        libc::SYS_chroot,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_kexec_load,
        libc::SYS_bpf,
        libc::SYS_process_vm_writev,
        libc::SYS_setuid,
        libc::SYS_keyctl,
    ];

    #[test]
    fn every_list_compiles_to_a_filter() {
        let programs = [
            compile(
                "process",
                process_rules(),
                SeccompAction::KillProcess,
                SeccompAction::Allow,
            ),
            compile(
                "vcpu",
                thread_rules(ThreadKind::Vcpu),
                SeccompAction::KillProcess,
                SeccompAction::Allow,
            ),
            compile(
                "devices",
                thread_rules(ThreadKind::Devices),
                SeccompAction::KillProcess,
                SeccompAction::Allow,
            ),
        ];
        for program in programs {
            assert!(!program.unwrap().is_empty());
        }
    }

    #[test]
    fn no_list_allows_running_a_program_or_changing_the_process() {
        let lists = [
            process_rules(),
            thread_rules(ThreadKind::Vcpu),
            thread_rules(ThreadKind::Devices),
        ];
        for (i, r) in lists.iter().enumerate() {
            for forbidden in FORBIDDEN {
                assert!(
                    !r.contains_key(forbidden),
                    "list {i} allows syscall {forbidden}"
                );
            }
        }
        // The threads that serve the guest open no files and make no threads.
        for kind in [ThreadKind::Vcpu, ThreadKind::Devices] {
            let r = thread_rules(kind);
            for call in [
                libc::SYS_openat,
                libc::SYS_clone,
                libc::SYS_clone3,
                libc::SYS_bind,
                libc::SYS_unlinkat,
            ] {
                assert!(!r.contains_key(&call), "{kind:?} allows syscall {call}");
            }
        }
    }

    /// Run `body` in a forked child with the process filter and `thread`'s (if any)
    /// installed in `Kill` mode; the child's wait status.
    fn in_filtered_child(thread: Option<ThreadKind>, body: fn() -> i32) -> i32 {
        // SAFETY: fork in a test; the child installs filters, runs `body` and leaves with
        // _exit, touching no lock another thread of the parent may hold.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            set_mode(Mode::Kill);
            let code = match apply_process().and_then(|()| thread.map_or(Ok(()), apply)) {
                Ok(()) => body(),
                Err(_) => 90,
            };
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child, with a valid status pointer.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid);
        status
    }

    fn killed_by_sigsys(status: i32) -> bool {
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS
    }

    #[test]
    fn executing_a_program_kills_the_process() {
        let status = in_filtered_child(None, || {
            let path = c"/bin/true";
            let argv = [path.as_ptr(), std::ptr::null()];
            // SAFETY: NUL-terminated strings and a NULL-terminated argv.
            unsafe { libc::execv(path.as_ptr(), argv.as_ptr()) };
            4
        });
        assert!(killed_by_sigsys(status), "status {status:#x}");
    }

    #[test]
    fn making_a_process_kills_it_but_threads_still_start() {
        let status = in_filtered_child(None, || {
            // Threads go through clone3 (refused with ENOSYS) and then clone.
            let thread = std::thread::spawn(|| 7).join();
            if thread.ok() != Some(7) {
                return 5;
            }
            // SAFETY: fork; the child (if the filter let it be) leaves at once.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: as above.
                unsafe { libc::_exit(0) };
            }
            6
        });
        assert!(killed_by_sigsys(status), "status {status:#x}");
    }

    #[test]
    fn a_network_socket_kills_but_a_unix_one_is_allowed() {
        let status = in_filtered_child(None, || {
            if std::os::unix::net::UnixDatagram::unbound().is_err() {
                return 5;
            }
            // SAFETY: socket takes plain integers.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            6
        });
        assert!(killed_by_sigsys(status), "status {status:#x}");
    }

    #[test]
    fn a_vcpu_thread_may_not_open_files() {
        let ok = in_filtered_child(Some(ThreadKind::Vcpu), || {
            // Its own work: eventfds, writes, time.
            let evt = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK);
            match evt.and_then(|e| e.write(1)) {
                Ok(()) => 0,
                Err(_) => 5,
            }
        });
        assert!(
            libc::WIFEXITED(ok) && libc::WEXITSTATUS(ok) == 0,
            "status {ok:#x}"
        );
        let status = in_filtered_child(Some(ThreadKind::Vcpu), || {
            drop(std::fs::File::open("/proc/self/status"));
            6
        });
        assert!(killed_by_sigsys(status), "status {status:#x}");
    }

    #[test]
    fn an_ioctl_outside_the_list_kills() {
        let status = in_filtered_child(Some(ThreadKind::Devices), || {
            // TIOCSTI (push a byte into a terminal's input) is not on any list.
            let byte = 0u8;
            // SAFETY: an ioctl on stdin with a valid pointer; it is refused anyway.
            unsafe { libc::ioctl(0, libc::TIOCSTI, &byte) };
            6
        });
        assert!(killed_by_sigsys(status), "status {status:#x}");
    }

    #[test]
    fn log_mode_comes_from_the_environment_only_instead_of_kill() {
        // The mode is process-wide and set once: checked in a child.
        // SAFETY: as in `in_filtered_child`.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            std::env::set_var("HUSK_SECCOMP", "log");
            set_mode(Mode::Kill);
            let code = if mode() == Mode::Log { 0 } else { 1 };
            // SAFETY: as above.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: as above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "status {status:#x}"
        );
    }
}
