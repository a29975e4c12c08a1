//! The allow-lists: what a `husk vmm` process may call, and what its vCPUs and device
//! loop may call on top of that (see the parent module).

use std::collections::BTreeMap;

use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::ThreadKind;

pub(super) type Rules = BTreeMap<i64, Vec<SeccompRule>>;

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

/// `ioctl` on KVM's fds (request type 0xAE) when `kvm`, on vhost-net's (type 0xAF: a
/// card with `vhost=on` is set up at build and handed its rings by the vCPU that
/// writes DRIVER_OK) when both `kvm` and `vhost`, and with the host requests husk uses.
fn allow_ioctls(rules: &mut Rules, kvm: bool, vhost: bool) {
    let mut list: Vec<SeccompRule> = HOST_IOCTLS
        .iter()
        .map(|&request| rule(vec![condition(1, SeccompCmpOp::Eq, request)]))
        .collect();
    // A claimed TAP's persistence cleared (`Tap::claim`), never set.
    list.push(rule(vec![
        condition(1, SeccompCmpOp::Eq, libc::TUNSETPERSIST),
        condition(2, SeccompCmpOp::Eq, 0),
    ]));
    let by_type = |kind| rule(vec![condition(1, SeccompCmpOp::MaskedEq(0xff00), kind)]);
    if kvm {
        list.push(by_type(KVMIO));
    }
    if kvm && vhost {
        list.push(by_type(VHOST_VIRTIO));
    }
    rules.insert(libc::SYS_ioctl, list);
}

/// KVM's ioctl type, in bits 8-15 of a request.
const KVMIO: u64 = 0xae00;
/// The kernel vhost drivers' ioctl type.
const VHOST_VIRTIO: u64 = 0xaf00;

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

/// ioctls outside KVM's (besides TUNSETPERSIST to 0): the TAP's setup, non-blocking and close-on-exec flags,
/// terminal queries (is standard error a terminal, its size), a block device's size,
/// and reflink copies of snapshot files.
const HOST_IOCTLS: &[u64] = &[
    libc::TUNSETIFF,
    libc::TUNSETVNETHDRSZ,
    libc::TUNSETOFFLOAD,
    libc::FIONBIO,
    libc::FIOCLEX,
    libc::FIONCLEX,
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
    // Submitting to and reaping a disk's io_uring, which can only read, write and sync
    // (see `block::ring`); making or configuring one is the process list's.
    libc::SYS_io_uring_enter,
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
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_register,
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

/// The process's list; `vhost`: with vhost-net's ioctls (`husk vmm --vhost-net`).
pub(super) fn process_rules(vhost: bool) -> Rules {
    let mut r = Rules::new();
    allow(&mut r, COMMON);
    allow(&mut r, DEVICE_IO);
    allow(&mut r, BUILD);
    allow_unix_sockets(&mut r);
    allow_threads(&mut r);
    allow_ioctls(&mut r, true, vhost);
    r
}

/// `kind`'s list on top of the process's; `vhost` as there.
pub(super) fn thread_rules(kind: ThreadKind, vhost: bool) -> Rules {
    let mut r = Rules::new();
    allow(&mut r, COMMON);
    allow(&mut r, DEVICE_IO);
    // A vCPU's MMIO write may reset a vsock device, which connects no socket but may
    // close them; a device loop connects a guest's stream to a host Unix socket.
    allow_unix_sockets(&mut r);
    allow_ioctls(&mut r, kind == ThreadKind::Vcpu, vhost);
    r
}
