//! The user namespace of a jail started by a caller that is not root: it maps only the
//! caller's own uid and gid (so files keep their owners and the process its ids), and
//! its capabilities, which are worth nothing outside it, are what lets the process make
//! its mount, pid, ipc and uts namespaces and build its root before dropping them all.
//!
//! Kernels may refuse such namespaces (Debian's `kernel.unprivileged_userns_clone = 0`,
//! `user.max_user_namespaces = 0`, a container's seccomp filter) or give them no
//! capabilities (Ubuntu's AppArmor, `kernel.apparmor_restrict_unprivileged_userns = 1`);
//! [`probe`] tells in advance, and both it and the jail name the cause.

use std::sync::OnceLock;

use super::JailError;

/// Where a user namespace was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Making it (`unshare(CLONE_NEWUSER)`).
    Create,
    /// Using its capabilities (making a mount namespace in it).
    Use,
}

/// The sysctls that decide whether an unprivileged user namespace works, as read.
#[derive(Debug, Default)]
struct Sysctls {
    unprivileged_userns_clone: Option<String>,
    max_user_namespaces: Option<String>,
    apparmor_restrict: Option<String>,
}

impl Sysctls {
    fn read() -> Self {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_string())
        };
        Self {
            unprivileged_userns_clone: read("/proc/sys/kernel/unprivileged_userns_clone"),
            max_user_namespaces: read("/proc/sys/user/max_user_namespaces"),
            apparmor_restrict: read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
        }
    }
}

/// Why the kernel refused a user namespace at `stage` with `errno`, given `sysctls`.
fn refusal(errno: i32, stage: Stage, sysctls: &Sysctls) -> String {
    let is = |value: &Option<String>, want: &str| value.as_deref() == Some(want);
    match (stage, errno) {
        (Stage::Create, libc::EPERM) if is(&sysctls.unprivileged_userns_clone, "0") => {
            "the kernel refuses unprivileged user namespaces \
             (kernel.unprivileged_userns_clone = 0)"
                .into()
        }
        (Stage::Create, libc::EPERM | libc::ENOSPC) if is(&sysctls.max_user_namespaces, "0") => {
            "the kernel allows no user namespaces (user.max_user_namespaces = 0)".into()
        }
        (Stage::Create, libc::ENOSPC) => format!(
            "too many user namespaces (user.max_user_namespaces = {}, or the nesting limit)",
            sysctls.max_user_namespaces.as_deref().unwrap_or("?")
        ),
        (Stage::Create, libc::EPERM) => "the kernel refused a new user namespace \
             (a security module, or a seccomp filter around the caller such as a container's)"
            .into(),
        (Stage::Use, libc::EPERM) if is(&sysctls.apparmor_restrict, "1") => {
            "AppArmor gives unprivileged user namespaces no capabilities \
             (kernel.apparmor_restrict_unprivileged_userns = 1)"
                .into()
        }
        (Stage::Use, libc::EPERM) => {
            "a new user namespace has no capabilities (a security module denies them)".into()
        }
        (stage, errno) => {
            let call = match stage {
                Stage::Create => "unshare(CLONE_NEWUSER)",
                Stage::Use => "unshare(CLONE_NEWNS) in a new user namespace",
            };
            format!("{call}: {}", std::io::Error::from_raw_os_error(errno))
        }
    }
}

/// The error of a refusal at `stage`, with the host's sysctls read.
fn refused(errno: i32, stage: Stage) -> JailError {
    JailError::NoUserNamespace(refusal(errno, stage, &Sysctls::read()))
}

/// The `uid_map`/`gid_map` line that maps `id` to itself, and nothing else.
pub(super) fn id_map(id: u32) -> String {
    format!("{id} {id} 1\n")
}

fn write_proc(path: &str, text: &str) -> Result<(), JailError> {
    std::fs::write(path, text).map_err(|source| JailError::Os {
        what: format!("write {text:?} to {path}"),
        source,
    })
}

/// Move this (single-threaded) process into a new user namespace that maps only its
/// own uid and gid; it then holds every capability inside it. setgroups is denied
/// first: an unprivileged process may write its gid_map only then (and so can never
/// drop a supplementary group to reach a file that a group is denied).
pub(super) fn enter() -> Result<(), JailError> {
    // SAFETY: geteuid and getegid only return values.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    // SAFETY: unshare takes flags only; the caller checked the process is single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER) } == -1 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        return Err(refused(errno, Stage::Create));
    }
    write_proc("/proc/self/setgroups", "deny")?;
    write_proc("/proc/self/uid_map", &id_map(uid))?;
    write_proc("/proc/self/gid_map", &id_map(gid))
}

/// The error for a failed `unshare` of the child's namespaces in the user namespace
/// (`source`): a refusal named by its cause when it is EPERM.
pub(super) fn namespaces_refused(source: std::io::Error) -> JailError {
    match source.raw_os_error() {
        Some(libc::EPERM) => refused(libc::EPERM, Stage::Use),
        _ => JailError::Os {
            what: "unshare the mount, ipc and uts namespaces".into(),
            source,
        },
    }
}

/// Exit status of the probe's child for a refusal at `stage` with `errno`.
fn probe_status(stage: Stage, errno: i32) -> i32 {
    let errno = errno.clamp(1, 127);
    match stage {
        Stage::Create => errno,
        Stage::Use => 128 + errno,
    }
}

/// Whether a user-namespace jail can be made here, tried once per process in a forked
/// child (a process with threads cannot unshare a user namespace): it makes a user
/// namespace, then a mount namespace in it. `Err` names the cause.
pub fn probe() -> Result<(), JailError> {
    static PROBED: OnceLock<Result<(), (Stage, i32)>> = OnceLock::new();
    let result = PROBED.get_or_init(|| {
        // SAFETY: the child only makes raw system calls (unshare, _exit), which are
        // async-signal-safe, so forking a process with threads is sound.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // Reading errno allocates nothing.
            let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            // SAFETY: as above.
            unsafe {
                if libc::unshare(libc::CLONE_NEWUSER) == -1 {
                    libc::_exit(probe_status(Stage::Create, errno()));
                }
                if libc::unshare(libc::CLONE_NEWNS) == -1 {
                    libc::_exit(probe_status(Stage::Use, errno()));
                }
                libc::_exit(0);
            }
        }
        if pid == -1 {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            return Err((Stage::Create, errno));
        }
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid status pointer.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        match libc::WEXITSTATUS(status) {
            0 if libc::WIFEXITED(status) => Ok(()),
            code if code > 128 => Err((Stage::Use, code - 128)),
            code => Err((Stage::Create, code)),
        }
    });
    result.map_err(|(stage, errno)| refused(errno, stage))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_map_maps_the_callers_id_to_itself_only() {
        assert_eq!(id_map(1000), "1000 1000 1\n");
        assert_eq!(id_map(0), "0 0 1\n");
    }

    fn sysctls(clone: &str, max: &str, apparmor: &str) -> Sysctls {
        let value = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Sysctls {
            unprivileged_userns_clone: value(clone),
            max_user_namespaces: value(max),
            apparmor_restrict: value(apparmor),
        }
    }

    #[test]
    fn a_refusal_names_the_sysctl_that_causes_it() {
        let debian = refusal(libc::EPERM, Stage::Create, &sysctls("0", "7841", ""));
        assert!(
            debian.contains("kernel.unprivileged_userns_clone = 0"),
            "{debian}"
        );
        let none = refusal(libc::ENOSPC, Stage::Create, &sysctls("", "0", ""));
        assert!(none.contains("user.max_user_namespaces = 0"), "{none}");
        let full = refusal(libc::ENOSPC, Stage::Create, &sysctls("1", "5", ""));
        assert!(full.contains("user.max_user_namespaces = 5"), "{full}");
        let ubuntu = refusal(libc::EPERM, Stage::Use, &sysctls("1", "7841", "1"));
        assert!(
            ubuntu.contains("kernel.apparmor_restrict_unprivileged_userns = 1"),
            "{ubuntu}"
        );
        let other = refusal(libc::EPERM, Stage::Create, &sysctls("1", "7841", ""));
        assert!(other.contains("a security module"), "{other}");
    }

    #[test]
    fn the_probe_status_keeps_the_stage_and_errno() {
        assert_eq!(probe_status(Stage::Create, libc::EPERM), 1);
        assert_eq!(probe_status(Stage::Use, libc::EPERM), 129);
    }
}
