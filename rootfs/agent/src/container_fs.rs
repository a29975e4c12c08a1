//! The container's view of the kernel, mounted by the container process before it
//! pivots (paths are relative to the new root, the current directory): /proc with
//! docker's masked and read-only paths, a small /dev, a read-only /sys. Runs between
//! fork and exec, so it only makes raw syscalls on static strings.

use std::ffi::CStr;
use std::os::fd::RawFd;

use crate::child::{check, Step};

fn mkdir(path: &CStr, mode: libc::mode_t) {
    // SAFETY: path is NUL-terminated; an existing directory (EEXIST) is fine.
    unsafe { libc::mkdir(path.as_ptr(), mode) };
}

pub(crate) fn mount(
    src: &CStr,
    target: &CStr,
    fstype: &CStr,
    flags: libc::c_ulong,
    data: &CStr,
) -> libc::c_int {
    // SAFETY: all strings are NUL-terminated and outlive the call.
    unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    }
}

/// Character devices of the container's /dev: (path, major, minor).
const DEVICES: [(&CStr, u32, u32); 6] = [
    (c"dev/null", 1, 3),
    (c"dev/zero", 1, 5),
    (c"dev/full", 1, 7),
    (c"dev/random", 1, 8),
    (c"dev/urandom", 1, 9),
    (c"dev/tty", 5, 0),
];

const DEV_LINKS: [(&CStr, &CStr); 5] = [
    (c"pts/ptmx", c"dev/ptmx"),
    (c"/proc/self/fd", c"dev/fd"),
    (c"/proc/self/fd/0", c"dev/stdin"),
    (c"/proc/self/fd/1", c"dev/stdout"),
    (c"/proc/self/fd/2", c"dev/stderr"),
];

/// Mounts /proc, a small /dev and a read-only /sys under the current directory.
pub(crate) fn mount_pseudo_filesystems(err_fd: RawFd) {
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mkdir(c"proc", 0o555);
    check(
        mount(c"proc", c"proc", c"proc", nosuid, c""),
        err_fd,
        Step::Mounts,
    );
    mkdir(c"sys", 0o555);
    check(
        mount(c"sysfs", c"sys", c"sysfs", nosuid | libc::MS_RDONLY, c""),
        err_fd,
        Step::Mounts,
    );
    mkdir(c"dev", 0o755);
    let dev_flags = libc::MS_NOSUID | libc::MS_STRICTATIME;
    check(
        mount(
            c"tmpfs",
            c"dev",
            c"tmpfs",
            dev_flags,
            c"mode=755,size=65536k",
        ),
        err_fd,
        Step::Mounts,
    );
    // SAFETY: umask only changes this process's file creation mask.
    let old_umask = unsafe { libc::umask(0) };
    for (path, major, minor) in DEVICES {
        let dev = libc::makedev(major, minor);
        // SAFETY: path is NUL-terminated; creates one character device node.
        check(
            unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, dev) },
            err_fd,
            Step::Mounts,
        );
    }
    // The guest's own devpts (nosuid, noexec), not a new instance: the agent allocates
    // a process's terminal there before the fork, so only then does its name resolve
    // inside the container (`tty`, ttyname(3)). Containers of one sandbox share one VM
    // and trust each other; the VM is the boundary.
    mkdir(c"dev/pts", 0o755);
    check(
        mount(c"/dev/pts", c"dev/pts", c"", libc::MS_BIND, c""),
        err_fd,
        Step::Mounts,
    );
    mkdir(c"dev/shm", 0o1777);
    check(
        mount(
            c"shm",
            c"dev/shm",
            c"tmpfs",
            nosuid,
            c"mode=1777,size=65536k",
        ),
        err_fd,
        Step::Mounts,
    );
    for (target, link) in DEV_LINKS {
        // SAFETY: both strings are NUL-terminated.
        check(
            unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) },
            err_fd,
            Step::Mounts,
        );
    }
    // SAFETY: restores the inherited mask.
    unsafe { libc::umask(old_umask) };
    mask_proc(err_fd);
}

/// docker's masked paths: files hidden behind /dev/null, directories behind an empty
/// read-only tmpfs. Paths the kernel does not have are skipped.
const MASKED_FILES: [&CStr; 4] = [
    c"proc/kcore",
    c"proc/keys",
    c"proc/timer_list",
    c"proc/sched_debug",
];
const MASKED_DIRS: [&CStr; 3] = [c"proc/acpi", c"proc/scsi", c"sys/firmware"];
/// docker's read-only paths under /proc.
const READ_ONLY: [&CStr; 5] = [
    c"proc/bus",
    c"proc/fs",
    c"proc/irq",
    c"proc/sys",
    c"proc/sysrq-trigger",
];

fn exists(path: &CStr) -> bool {
    // SAFETY: path is NUL-terminated; access only reads it.
    unsafe { libc::access(path.as_ptr(), libc::F_OK) == 0 }
}

/// Hides and write-protects the parts of /proc and /sys a container has no business
/// with (the host kernel's memory, keys, sysctls, sysrq).
fn mask_proc(err_fd: RawFd) {
    for path in MASKED_FILES.into_iter().filter(|p| exists(p)) {
        check(
            mount(c"dev/null", path, c"", libc::MS_BIND, c""),
            err_fd,
            Step::Mounts,
        );
    }
    for path in MASKED_DIRS.into_iter().filter(|p| exists(p)) {
        check(
            mount(c"tmpfs", path, c"tmpfs", libc::MS_RDONLY, c"size=0"),
            err_fd,
            Step::Mounts,
        );
    }
    for path in READ_ONLY.into_iter().filter(|p| exists(p)) {
        let bind = libc::MS_BIND | libc::MS_REC;
        check(mount(path, path, c"", bind, c""), err_fd, Step::Mounts);
        let read_only = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
        check(mount(path, path, c"", read_only, c""), err_fd, Step::Mounts);
    }
}
