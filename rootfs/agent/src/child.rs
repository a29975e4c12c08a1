//! The code that runs between `fork` and `execve`. The agent is multi-threaded, so
//! nothing here allocates or takes a lock: every path, argument and id was prepared by
//! the parent in a [`ChildPlan`], and failures are reported as `(step, errno)` on a
//! close-on-exec pipe, then `_exit(127)`.
//!
//! Two processes run this code. The *intermediate* enters (or creates) the container's
//! namespaces and cgroup, forks the real process, sends its pid to the agent and exits.
//! The fork is needed because a new pid namespace only applies to children. The real
//! process is then PID 1 of a new container, or a member of an existing one.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr;

use crate::caps;
use crate::container_fs::{self, mount};

/// The step of process setup that failed, as sent on the error pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    /// unshare(2) of the container namespaces.
    Unshare = 1,
    /// setns(2) into an existing container.
    Setns,
    /// Writing to the cgroup's cgroup.procs.
    JoinCgroup,
    /// fork(2) of the container process.
    Fork,
    /// sethostname(2).
    Hostname,
    /// Making mounts private, mounting /proc, /dev, /sys.
    Mounts,
    /// pivot_root(2) into the container root.
    PivotRoot,
    /// setsid(2), the controlling terminal, dup2(2) of stdio.
    Stdio,
    /// Dropping capabilities and setting no_new_privs.
    Capabilities,
    /// setgroups/setgid/setuid.
    User,
    /// chdir(2) to the working directory.
    Cwd,
    /// execve(2).
    Exec,
    /// A prepared container's process could not receive or read its command.
    Plan,
}

impl Step {
    /// The step for a number read from the error pipe.
    pub fn from_code(code: u32) -> Option<Self> {
        const ALL: [Step; 13] = [
            Step::Unshare,
            Step::Setns,
            Step::JoinCgroup,
            Step::Fork,
            Step::Hostname,
            Step::Mounts,
            Step::PivotRoot,
            Step::Stdio,
            Step::Capabilities,
            Step::User,
            Step::Cwd,
            Step::Exec,
            Step::Plan,
        ];
        ALL.into_iter().find(|s| *s as u32 == code)
    }
}

/// A NUL-terminated pointer array for execve, owning its strings.
pub struct CArray {
    _strings: Vec<CString>,
    ptrs: Vec<*const libc::c_char>,
}

impl CArray {
    /// Builds the array from owned C strings.
    pub fn new(strings: Vec<CString>) -> Self {
        let mut ptrs: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(ptr::null());
        Self {
            _strings: strings,
            ptrs,
        }
    }
}

/// Whether the process creates a container or joins one.
pub enum Namespaces {
    /// New mount, pid, uts and ipc namespaces, root switched to `rootfs`.
    Create {
        /// The container's hostname.
        hostname: CString,
        /// The mounted overlay to pivot into.
        rootfs: CString,
    },
    /// setns into these namespace fds, in order (ipc, uts, pid, mnt).
    Join(Vec<OwnedFd>),
}

/// Everything the child needs, prepared before `fork`.
pub struct ChildPlan {
    /// Create or join.
    pub namespaces: Namespaces,
    /// The container cgroup's cgroup.procs, open for writing.
    pub cgroup_procs: Option<OwnedFd>,
    /// The fds that become 0, 1 and 2.
    pub stdio: [RawFd; 3],
    /// Whether stdio is a terminal to make the controlling one.
    pub tty: bool,
    /// The user id.
    pub uid: libc::uid_t,
    /// The group id.
    pub gid: libc::gid_t,
    /// Supplementary groups.
    pub groups: Vec<libc::gid_t>,
    /// The working directory.
    pub cwd: CString,
    /// The executable's in-container path.
    pub exe: CString,
    /// argv.
    pub argv: CArray,
    /// envp.
    pub envp: CArray,
}

/// Writes `(step, errno)` to the error pipe and exits 127.
pub(crate) fn fail(err_fd: RawFd, step: Step) -> ! {
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    let errno = unsafe { *libc::__errno_location() };
    let mut report = [0u8; 8];
    report[..4].copy_from_slice(&(step as u32).to_le_bytes());
    report[4..].copy_from_slice(&errno.to_le_bytes());
    // SAFETY: writes 8 bytes from a live stack buffer; _exit never returns and skips
    // atexit handlers that are not safe after fork.
    unsafe {
        libc::write(err_fd, report.as_ptr().cast(), report.len());
        libc::_exit(127)
    }
}

pub(crate) fn check(ret: libc::c_int, err_fd: RawFd, step: Step) {
    if ret < 0 {
        fail(err_fd, step);
    }
}

/// Enters (or creates) `namespaces` and the cgroup, forks a child that runs `child`,
/// writes its pid (u32 LE) to `pid_fd` and exits.
pub(crate) fn enter_and_fork(
    namespaces: &Namespaces,
    cgroup_procs: Option<&OwnedFd>,
    pid_fd: RawFd,
    err_fd: RawFd,
    child: impl FnOnce(),
) -> ! {
    match namespaces {
        Namespaces::Create { .. } => {
            let flags =
                libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
            // SAFETY: unshare only changes this process's namespaces.
            check(unsafe { libc::unshare(flags) }, err_fd, Step::Unshare);
        }
        Namespaces::Join(fds) => {
            for fd in fds {
                // SAFETY: fd is an open namespace fd owned by the plan.
                check(
                    unsafe { libc::setns(fd.as_raw_fd(), 0) },
                    err_fd,
                    Step::Setns,
                );
            }
        }
    }
    if let Some(procs) = cgroup_procs {
        // SAFETY: writing "0" moves the writer itself into the cgroup (cgroup v2).
        let ret = unsafe { libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) };
        check(ret as libc::c_int, err_fd, Step::JoinCgroup);
    }
    // SAFETY: the child only runs `child`, which does not allocate.
    let pid = unsafe { libc::fork() };
    check(pid, err_fd, Step::Fork);
    if pid == 0 {
        child();
        // SAFETY: `child` never returns (it execs or exits); this only guards that.
        unsafe { libc::_exit(127) };
    }
    let bytes = (pid as u32).to_le_bytes();
    // SAFETY: writes 4 bytes from a stack buffer, then exits without atexit handlers.
    unsafe {
        libc::write(pid_fd, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(0)
    }
}

/// Switches into a new container's root: hostname, private mounts, pseudo
/// filesystems, pivot_root with the old root detached.
pub(crate) fn enter_new_root(hostname: &CStr, rootfs: &CStr, err_fd: RawFd) {
    let name = hostname.to_bytes();
    // SAFETY: name points to name.len() valid bytes.
    check(
        unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) },
        err_fd,
        Step::Hostname,
    );
    // Stop mount events leaking back to the agent's namespace.
    check(
        mount(c"none", c"/", c"", libc::MS_REC | libc::MS_PRIVATE, c""),
        err_fd,
        Step::Mounts,
    );
    // SAFETY: rootfs is NUL-terminated.
    check(
        unsafe { libc::chdir(rootfs.as_ptr()) },
        err_fd,
        Step::Mounts,
    );
    container_fs::mount_pseudo_filesystems(err_fd);
    // pivot_root(".", ".") stacks the old root under the new one; detaching "." then
    // drops the old root without needing a directory for it.
    // SAFETY: both arguments are NUL-terminated static strings.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
    check(ret as libc::c_int, err_fd, Step::PivotRoot);
    // SAFETY: "." is the stacked old root; MNT_DETACH unmounts it lazily.
    check(
        unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) },
        err_fd,
        Step::PivotRoot,
    );
    // SAFETY: "/" is NUL-terminated.
    check(
        unsafe { libc::chdir(c"/".as_ptr()) },
        err_fd,
        Step::PivotRoot,
    );
}

/// A new session, the controlling terminal if any, and the stdio fds.
fn setup_stdio(stdio: [RawFd; 3], tty: bool, err_fd: RawFd) {
    // SAFETY: setsid, ioctl and dup2 act on this process and fds the plan owns.
    unsafe {
        check(libc::setsid(), err_fd, Step::Stdio);
        if tty {
            check(
                libc::ioctl(stdio[0], libc::TIOCSCTTY, 0),
                err_fd,
                Step::Stdio,
            );
        }
        for (target, fd) in stdio.iter().enumerate() {
            check(libc::dup2(*fd, target as RawFd), err_fd, Step::Stdio);
        }
    }
}

/// Capability header and data of capset(2), version 3.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// Keeps only docker's default capabilities, clears ambient, sets no_new_privs.
fn drop_capabilities(err_fd: RawFd) {
    let mask = caps::default_mask();
    for cap in 0..=caps::CAP_SCAN_LIMIT {
        if mask & (1 << cap) == 0 {
            // SAFETY: prctl with integer arguments; EINVAL past the kernel's last cap.
            let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            if ret < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                fail(err_fd, Step::Capabilities);
            }
        }
    }
    let words = caps::mask_words(mask);
    let header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let data = words.map(|w| CapData {
        effective: w,
        permitted: w,
        inheritable: w,
    });
    // SAFETY: header and data are the version-3 layout the kernel expects (two words).
    let ret = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    check(ret as libc::c_int, err_fd, Step::Capabilities);
    // SAFETY: prctl with integer arguments only.
    unsafe {
        let clear = libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong;
        check(
            libc::prctl(libc::PR_CAP_AMBIENT, clear, 0, 0, 0),
            err_fd,
            Step::Capabilities,
        );
        check(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            err_fd,
            Step::Capabilities,
        );
    }
}

/// What the last steps before `execve` use, borrowed from a [`ChildPlan`] or from a
/// prepared container's received command.
pub(crate) struct ExecSteps<'a> {
    /// The fds that become 0, 1 and 2.
    pub stdio: [RawFd; 3],
    /// Whether stdio is a terminal to make the controlling one.
    pub tty: bool,
    /// The user id.
    pub uid: libc::uid_t,
    /// The group id.
    pub gid: libc::gid_t,
    /// Supplementary groups.
    pub groups: &'a [libc::gid_t],
    /// The working directory.
    pub cwd: &'a CStr,
    /// The executable's in-container path.
    pub exe: &'a CStr,
    /// argv, NULL-terminated.
    pub argv: *const *const libc::c_char,
    /// envp, NULL-terminated.
    pub envp: *const *const libc::c_char,
}

/// The container process: root, then the steps to `execve`.
pub(crate) fn container_process(plan: &ChildPlan, err_fd: RawFd) -> ! {
    if let Namespaces::Create { hostname, rootfs } = &plan.namespaces {
        enter_new_root(hostname, rootfs, err_fd);
    }
    let steps = ExecSteps {
        stdio: plan.stdio,
        tty: plan.tty,
        uid: plan.uid,
        gid: plan.gid,
        groups: &plan.groups,
        cwd: &plan.cwd,
        exe: &plan.exe,
        argv: plan.argv.ptrs.as_ptr(),
        envp: plan.envp.ptrs.as_ptr(),
    };
    exec(&steps, err_fd)
}

/// Empties the calling thread's signal mask.
fn unblock_all_signals() {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set before sigprocmask reads it; both are
    // async-signal-safe and touch only this stack variable and the thread's mask.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigprocmask(libc::SIG_SETMASK, set.as_ptr(), std::ptr::null_mut());
    }
}

/// Stdio, privileges, user, cwd, execve.
pub(crate) fn exec(steps: &ExecSteps<'_>, err_fd: RawFd) -> ! {
    setup_stdio(steps.stdio, steps.tty, err_fd);
    drop_capabilities(err_fd);
    // SAFETY: groups points to groups.len() gids; the id calls take integers; argv and
    // envp are NULL-terminated arrays of NUL-terminated strings that outlive the call.
    unsafe {
        check(
            libc::setgroups(steps.groups.len(), steps.groups.as_ptr()),
            err_fd,
            Step::User,
        );
        check(libc::setgid(steps.gid), err_fd, Step::User);
        check(libc::setuid(steps.uid), err_fd, Step::User);
        check(libc::chdir(steps.cwd.as_ptr()), err_fd, Step::Cwd);
        // Rust ignores SIGPIPE in the agent; an ignored disposition survives execve.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        // PID 1 blocks SIGINT (Ctrl+Alt+Del, `cad`); a blocked mask survives execve.
        unblock_all_signals();
        libc::execve(steps.exe.as_ptr(), steps.argv, steps.envp);
    }
    fail(err_fd, Step::Exec)
}
