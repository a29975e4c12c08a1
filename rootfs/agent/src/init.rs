//! PID 1 setup of the guest, in libkrun's order: root filesystem, pseudo filesystems,
//! cgroups, network, hostname. Runs once before the agent listens.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::unistd::{chdir, chroot, sethostname};

use crate::cgroup;

/// The guest's hostname (containers get their own in their UTS namespace).
pub const GUEST_HOSTNAME: &str = "husk";

/// Errors of guest setup.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A mount or root switch failed.
    #[error("{what} {target}")]
    Sys {
        /// The operation.
        what: &'static str,
        /// Its target.
        target: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// A directory could not be created.
    #[error("create {path}")]
    Mkdir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// cgroup v2 could not be prepared.
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    /// The loopback interface could not be brought up.
    #[error("bring up lo")]
    Loopback(#[source] std::io::Error),
}

fn sys<'a>(what: &'static str, target: &'a Path) -> impl FnOnce(nix::Error) -> InitError + 'a {
    move |source| InitError::Sys {
        what,
        target: target.to_path_buf(),
        source,
    }
}

fn mkdir(path: &Path) -> Result<(), InitError> {
    fs::create_dir_all(path).map_err(|source| InitError::Mkdir {
        path: path.to_path_buf(),
        source,
    })
}

/// (source, target, fstype, flags, options) of the guest's pseudo filesystems, in order.
const MOUNTS: [(&str, &str, &str, MsFlags, &str); 8] = [
    ("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, ""),
    ("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, ""),
    (
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        "mode=0755",
    ),
    (
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        "ptmxmode=0666,mode=0620",
    ),
    (
        "shm",
        "/dev/shm",
        "tmpfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        "mode=1777",
    ),
    (
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        "mode=1777",
    ),
    (
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        "mode=0755",
    ),
    (
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        NOSUID_NODEV_NOEXEC,
        "",
    ),
];

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// Moves the root onto a tmpfs. The initramfs root can never be pivoted away from
/// (pivot_root refuses the parentless rootfs mount), so containers could not
/// pivot_root; on a tmpfs stacked over it they can.
pub fn move_root_to_tmpfs() -> Result<(), InitError> {
    let new_root = Path::new("/husk-root");
    mkdir(new_root)?;
    mount(
        Some("tmpfs"),
        new_root,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(sys("mount tmpfs on", new_root))?;
    chdir(new_root).map_err(sys("chdir", new_root))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(sys("move root to", new_root))?;
    chroot(".").map_err(sys("chroot", new_root))?;
    chdir("/").map_err(sys("chdir", Path::new("/")))
}

/// Mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /tmp, /run and cgroup2; an already
/// mounted target (EBUSY, e.g. a devtmpfs the kernel mounted) is fine.
pub fn mount_pseudo_filesystems() -> Result<(), InitError> {
    for (source, target, fstype, flags, options) in MOUNTS {
        let target = Path::new(target);
        mkdir(target)?;
        let data = (!options.is_empty()).then_some(options);
        match mount(Some(source), target, Some(fstype), flags, data) {
            Ok(()) | Err(nix::Error::EBUSY) => {}
            Err(e) => return Err(sys("mount", target)(e)),
        }
    }
    Ok(())
}

/// The whole guest setup, for PID 1.
pub fn setup_guest() -> Result<(), InitError> {
    move_root_to_tmpfs()?;
    mount_pseudo_filesystems()?;
    cgroup::enable_controllers(Path::new("/sys/fs/cgroup"))?;
    husk_netif::interface_up("lo").map_err(InitError::Loopback)?;
    sethostname(GUEST_HOSTNAME).map_err(sys("sethostname", Path::new(GUEST_HOSTNAME)))?;
    Ok(())
}

/// Seconds since the guest booted (CLOCK_BOOTTIME), for telling where a slow boot went.
pub fn since_boot() -> Option<f64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
    Some(now.tv_sec() as f64 + now.tv_nsec() as f64 / 1e9)
}

/// `" (agent started at S s, ready at T s after boot)"`.
pub fn boot_times(started: Option<f64>, ready: Option<f64>) -> String {
    match (started, ready) {
        (Some(s), Some(r)) => format!(" (agent started at {s:.2} s, ready at {r:.2} s after boot)"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod boot_time_tests {
    use super::*;

    #[test]
    fn boot_times_read_well() {
        assert_eq!(
            boot_times(Some(1.834), Some(2.5)),
            " (agent started at 1.83 s, ready at 2.50 s after boot)"
        );
        assert_eq!(boot_times(None, Some(2.5)), "");
        assert!(since_boot().is_some_and(|t| t > 0.0));
    }
}
