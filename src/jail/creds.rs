//! What a jailed process keeps of the host: no inherited fds but stdio, its own
//! hostname, limits on files, no capabilities, the jail's uid and gid (root's jail; a
//! user-namespace jail keeps the caller's), no new privileges.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use super::{check, os_error, JailConfig, JailError};

/// Highest capability number tried when the bounding set is emptied (the kernel has
/// fewer; the rest fail with EINVAL and are skipped).
const MAX_CAP: libc::c_int = 63;

/// `_LINUX_CAPABILITY_VERSION_3`: capset's 64-bit sets as two 32-bit halves.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Close every fd above stderr the process inherited.
pub(super) fn close_inherited_fds() -> Result<(), JailError> {
    // SAFETY: close_range takes integers; nothing of this process uses fds > 2 yet
    // (the jail is entered before anything is opened).
    let ret = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if ret == 0 {
        return Ok(());
    }
    // Kernels before 5.9: one close per open fd.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|source| JailError::Os {
            what: "list /proc/self/fd".into(),
            source,
        })?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: closing an fd number nothing in this process holds as an object yet;
        // the one read_dir used is already closed (EBADF is ignored).
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Open the network namespace file `path` (before the mount namespace hides it).
pub(super) fn open_netns(path: &Path) -> Result<OwnedFd, JailError> {
    File::open(path)
        .map(OwnedFd::from)
        .map_err(|source| JailError::Os {
            what: format!("open --netns {}", path.display()),
            source,
        })
}

/// Join the network namespace `fd` (opened from `path`).
pub(super) fn join_netns(fd: OwnedFd, path: &Path) -> Result<(), JailError> {
    // SAFETY: an fd we own and a namespace type.
    let ret = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    check(ret, format!("join --netns {}", path.display())).map(drop)
}

/// The jail's hostname: the VM's id (at most 64 bytes).
pub(super) fn set_hostname(id: &str) -> Result<(), JailError> {
    let name = &id.as_bytes()[..id.len().min(64)];
    // SAFETY: a pointer and length within `name`.
    let ret = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    check(ret, format!("set the hostname {id:?}")).map(drop)
}

/// Set `resource` to `value` (soft and hard), at most the current hard limit when
/// `within_hard` (raising it takes CAP_SYS_RESOURCE outside any user namespace).
fn set_limit(
    resource: libc::__rlimit_resource_t,
    value: u64,
    name: &str,
    within_hard: bool,
) -> Result<(), JailError> {
    let mut value = value;
    if within_hard {
        let mut current = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: a valid rlimit to fill.
        let ret = unsafe { libc::getrlimit(resource, &mut current) };
        check(ret, format!("read {name}"))?;
        value = value.min(current.rlim_max);
    }
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: a valid rlimit for the call.
    let ret = unsafe { libc::setrlimit(resource, &limit) };
    check(ret, format!("set {name} to {value}")).map(drop)
}

/// RLIMIT_NOFILE, RLIMIT_FSIZE (when asked) and no core files (guest memory stays in
/// the process). In a user namespace none goes above the caller's hard limit.
pub(super) fn limit(config: &JailConfig) -> Result<(), JailError> {
    let within = config.dropped_ids().is_none();
    set_limit(
        libc::RLIMIT_NOFILE,
        config.max_files,
        "RLIMIT_NOFILE",
        within,
    )?;
    if let Some(bytes) = config.max_file_size {
        set_limit(libc::RLIMIT_FSIZE, bytes, "RLIMIT_FSIZE", within)?;
    }
    set_limit(libc::RLIMIT_CORE, 0, "RLIMIT_CORE", within)
}

/// Empty the bounding and ambient sets, drop to `uid`/`gid` with no supplementary
/// groups (which empties the permitted and effective sets), empty the inheritable
/// set, and set no_new_privs; then check that root cannot be had back.
pub(super) fn drop_privileges(uid: u32, gid: u32) -> Result<(), JailError> {
    drop_bounding_and_ambient()?;
    // SAFETY: an empty list.
    let ret = unsafe { libc::setgroups(0, std::ptr::null()) };
    check(ret, "clear the supplementary groups")?;
    // SAFETY: integer arguments.
    let ret = unsafe { libc::setresgid(gid, gid, gid) };
    check(ret, format!("set gid {gid}"))?;
    // SAFETY: integer arguments.
    let ret = unsafe { libc::setresuid(uid, uid, uid) };
    check(ret, format!("set uid {uid}"))?;
    clear_capabilities()?;
    no_new_privs()?;
    // SAFETY: integer argument; must fail now.
    if unsafe { libc::setuid(0) } == 0 {
        return Err(JailError::Config(
            "uid 0 could be had back after the drop".into(),
        ));
    }
    Ok(())
}

/// In a user namespace: empty the bounding and ambient sets, then the effective,
/// permitted and inheritable ones, and set no_new_privs. The uid stays (the caller's,
/// mapped to itself); uid 0 is not mapped, so it cannot be had back.
pub(super) fn drop_capabilities() -> Result<(), JailError> {
    drop_bounding_and_ambient()?;
    clear_capabilities()?;
    no_new_privs()
}

/// Empty the bounding set (every capability the kernel knows) and the ambient set.
fn drop_bounding_and_ambient() -> Result<(), JailError> {
    for cap in 0..=MAX_CAP {
        // SAFETY: prctl with integer arguments; EINVAL past the last capability.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
    }
    // SAFETY: as above.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    check(ret, "clear the ambient capabilities").map(drop)
}

fn no_new_privs() -> Result<(), JailError> {
    // SAFETY: integer arguments.
    let ret = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check(ret, "set no_new_privs").map(drop)
}

/// capset with every set empty.
fn clear_capabilities() -> Result<(), JailError> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: a version-3 header and the two data structs that version reads.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if ret != 0 {
        return Err(os_error("clear the capability sets"));
    }
    Ok(())
}
