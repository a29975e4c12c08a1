//! The fork that makes the jailed child: into a new pid namespace and, when the jail
//! has a cgroup leaf, born in it.
//!
//! Moving a running process into a cgroup (a write to `cgroup.procs`) takes the
//! kernel's cgroup thread-group lock for writing, which first waits for an RCU grace
//! period: measured in the KVM test host, ~9 ms for the first move in a while against
//! ~0.3 ms for another right after it, on every VMM start. `clone3` with
//! `CLONE_INTO_CGROUP` (Linux 5.7) places the child in its leaf as it is made, under
//! the read side of that lock only. Older kernels refuse the flag: there, and for a
//! jail without a leaf, the child comes from `unshare(CLONE_NEWPID)` and `fork`, and
//! the supervisor moves it.

use std::os::fd::{AsRawFd, OwnedFd};

use super::cgroup::Leaf;
use super::{check, JailError};

/// `CLONE_INTO_CGROUP` of linux/sched.h (a clone3 flag, above 32 bits).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// How the child was made.
pub(super) enum Forked {
    /// In the child.
    Child,
    /// In the parent: the child's pid, and whether it was born in the leaf (else the
    /// supervisor moves it there).
    Parent { pid: libc::pid_t, in_leaf: bool },
}

/// Fork the jail's child into a new pid namespace, in `leaf` when there is one. The
/// caller is single-threaded.
pub(super) fn fork_child(leaf: Option<&Leaf>) -> Result<Forked, JailError> {
    if let Some(leaf) = leaf {
        match leaf.open().and_then(|dir| clone_into(&dir)) {
            Ok(0) => return Ok(Forked::Child),
            Ok(pid) => return Ok(Forked::Parent { pid, in_leaf: true }),
            Err(e) => log::debug!(
                "jail: clone3 into the cgroup leaf {} refused ({e}), forking",
                leaf.path().display()
            ),
        }
    }
    // SAFETY: unshare takes flags only; the process is single-threaded (the caller's
    // contract).
    let ret = unsafe { libc::unshare(libc::CLONE_NEWPID) };
    check(ret, "unshare the pid namespace")?;
    // SAFETY: single-threaded, so the child may run any code after the fork.
    let pid = check(unsafe { libc::fork() }, "fork the jailed process")?;
    Ok(match pid {
        0 => Forked::Child,
        pid => Forked::Parent {
            pid,
            in_leaf: false,
        },
    })
}

/// `clone3(CLONE_NEWPID | CLONE_INTO_CGROUP)` like a fork: 0 in the child, its pid in
/// the parent.
fn clone_into(cgroup: &OwnedFd) -> std::io::Result<libc::pid_t> {
    let fd = u64::try_from(cgroup.as_raw_fd()).map_err(std::io::Error::other)?;
    let flags = libc::CLONE_NEWPID as u64 | CLONE_INTO_CGROUP;
    // SAFETY: clone_args is plain integers; all zero is "no option".
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = flags;
    args.exit_signal = libc::SIGCHLD as u64;
    args.cgroup = fd;
    // SAFETY: without CLONE_VM and with no stack given, clone3 copies the process as
    // fork does, and the child returns here on its copy of this stack. glibc's fork
    // wrapper is skipped: its handlers only re-initialise locks that other threads
    // could hold, and the process is single-threaded (fork_child's contract); the
    // thread id glibc caches for this thread stays the parent's in the child, which
    // glibc uses only to own recursive mutexes and signal a thread other than the
    // caller (raise and abort ask the kernel for the caller's own). The arguments live
    // across the call and their size is the struct's.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut libc::clone_args,
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    libc::pid_t::try_from(ret).map_err(std::io::Error::other)
}
