//! The jail's filesystem, built by the child in its own mount namespace: a small tmpfs
//! on the jail folder holding the binds at their host paths, the device nodes a VMM
//! needs (made as root; bind-mounted from the host in a user namespace, where mknod is
//! refused), and /proc; then pivot_root into it, the host's tree detached, and the root
//! made read-only. The host sees only an empty jail folder.

use std::ffi::CString;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::ptr::null;

use super::{c_path, check, Bind, JailConfig, JailError};

/// The devices a VMM opens, with their modes in the jail; each is made only when the
/// host has it, and `/dev/vhost-net` only for a VMM started for it
/// ([`JailConfig::vhost_net`]). Those a VMM writes to are owned by the jail's uid.
const DEVICES: [(&str, u32, bool); 5] = [
    ("/dev/kvm", 0o600, true),
    ("/dev/net/tun", 0o600, true),
    ("/dev/vhost-net", 0o600, true),
    ("/dev/null", 0o666, false),
    ("/dev/urandom", 0o444, false),
];

/// Make the jail folder if missing (mode 0700), or check that it is an empty folder.
/// Whether it was made here (then the supervisor removes it at the end).
pub(super) fn prepare_dir(dir: &Path) -> Result<bool, JailError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(false),
            Some(_) => Err(JailError::Config(format!(
                "--jail {}: the folder is not empty",
                dir.display()
            ))),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(|source| JailError::Os {
                    what: format!("make the jail folder {}", dir.display()),
                    source,
                })?;
            Ok(true)
        }
        Err(source) => Err(JailError::Os {
            what: format!("read the jail folder {}", dir.display()),
            source,
        }),
    }
}

fn mount(
    source: Option<&CString>,
    target: &Path,
    fstype: Option<&CString>,
    flags: libc::c_ulong,
    data: Option<&CString>,
) -> Result<(), JailError> {
    let target_c = c_path(target)?;
    let ptr = |s: Option<&CString>| s.map_or(null(), |s| s.as_ptr());
    // SAFETY: NUL-terminated strings (or NULL where mount(2) allows it), valid for the
    // call.
    let ret = unsafe {
        libc::mount(
            ptr(source),
            target_c.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        )
    };
    check(ret, format!("mount on {}", target.display())).map(drop)
}

/// Refuse binds that hold the jail folder or lie inside it; binds sorted parents
/// first, so a file inside a bound folder lands on top of it.
fn ordered_binds(config: &JailConfig) -> Result<Vec<&Bind>, JailError> {
    for bind in &config.binds {
        if config.dir.starts_with(&bind.path) || bind.path.starts_with(&config.dir) {
            return Err(JailError::Config(format!(
                "bind {}: it holds or lies in the jail folder {}",
                bind.path.display(),
                config.dir.display()
            )));
        }
    }
    let mut binds: Vec<&Bind> = config.binds.iter().collect();
    binds.sort_by_key(|b| b.path.components().count());
    Ok(binds)
}

/// Bind `bind` at the same path under `root`.
fn bind_into(root: &Path, bind: &Bind) -> Result<(), JailError> {
    let relative = bind.path.strip_prefix("/").unwrap_or(&bind.path);
    let target = root.join(relative);
    let io = |what: &str| {
        let what = format!("{what} {}", target.display());
        move |source| JailError::Os { what, source }
    };
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(io("make the folders of"))?;
    }
    if bind.path.is_dir() {
        std::fs::create_dir_all(&target).map_err(io("make"))?;
    } else if !target.exists() {
        std::fs::File::create(&target).map_err(io("make"))?;
    }
    let source = c_path(&bind.path)?;
    mount(
        Some(&source),
        &target,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
    if !bind.writable {
        flags |= libc::MS_RDONLY;
    }
    mount(None, &target, None, flags | kept_flags(&target)?, None)
}

/// The mount flags of `path`'s mount that a remount must keep: in a user namespace
/// the host's noexec and read-only are locked, and a remount without them is refused.
fn kept_flags(path: &Path) -> Result<libc::c_ulong, JailError> {
    let path_c = c_path(path)?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: a NUL-terminated path and a statvfs buffer we own.
    let ret = unsafe { libc::statvfs(path_c.as_ptr(), stat.as_mut_ptr()) };
    check(ret, format!("statvfs {}", path.display()))?;
    // SAFETY: statvfs filled the buffer (it returned 0).
    let flags = unsafe { stat.assume_init() }.f_flag;
    let mut kept = 0;
    if flags & libc::ST_NOEXEC != 0 {
        kept |= libc::MS_NOEXEC;
    }
    if flags & libc::ST_RDONLY != 0 {
        kept |= libc::MS_RDONLY;
    }
    Ok(kept)
}

/// Bind the host's device `path` (if it has it) at the same path under `root`, for a
/// jail in a user namespace.
fn bind_device(root: &Path, path: &str) -> Result<(), JailError> {
    if !Path::new(path).exists() {
        return Ok(());
    }
    let target = root.join(path.trim_start_matches('/'));
    let io = |what: String| move |source| JailError::Os { what, source };
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("make {}", parent.display())))?;
    }
    std::fs::File::create(&target).map_err(io(format!("make {}", target.display())))?;
    let source = c_path(Path::new(path))?;
    mount(Some(&source), &target, None, libc::MS_BIND, None)?;
    let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NOEXEC;
    mount(None, &target, None, flags | kept_flags(&target)?, None)
}

/// Make the device node `path` under `root` like the host's, owned by the jail's ids
/// when `owned`.
fn make_device(
    root: &Path,
    (path, mode, owned): (&str, u32, bool),
    ids: (u32, u32),
) -> Result<(), JailError> {
    let Ok(host) = std::fs::metadata(path) else {
        return Ok(());
    };
    let target = root.join(path.trim_start_matches('/'));
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|source| JailError::Os {
            what: format!("make {}", parent.display()),
            source,
        })?;
    }
    let target_c = c_path(&target)?;
    // SAFETY: a NUL-terminated path; mknod makes a character device like the host's.
    let ret = unsafe { libc::mknod(target_c.as_ptr(), libc::S_IFCHR | mode, host.rdev()) };
    check(ret, format!("make the device node {}", target.display()))?;
    // SAFETY: as above; chmod undoes the umask's effect on the mode.
    let ret = unsafe { libc::chmod(target_c.as_ptr(), mode) };
    check(ret, format!("chmod {}", target.display()))?;
    if owned {
        // SAFETY: as above.
        let ret = unsafe { libc::chown(target_c.as_ptr(), ids.0, ids.1) };
        check(ret, format!("chown {}", target.display()))?;
    }
    Ok(())
}

/// Build the jail's root on `config.dir` and enter it.
pub(super) fn build_root(config: &JailConfig) -> Result<(), JailError> {
    let root = config.dir.as_path();
    let binds = ordered_binds(config)?;
    // Nothing mounted from here on propagates back to the host.
    let slash = PathBuf::from("/");
    mount(None, &slash, None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    let tmpfs = CString::from(c"tmpfs");
    let options = CString::from(c"mode=0755,size=1m,nr_inodes=4096");
    mount(
        Some(&tmpfs),
        root,
        Some(&tmpfs),
        libc::MS_NOSUID,
        Some(&options),
    )?;
    for bind in binds {
        bind_into(root, bind)?;
    }
    let wanted = |device: &(&str, u32, bool)| config.vhost_net || device.0 != "/dev/vhost-net";
    for device in DEVICES.into_iter().filter(wanted) {
        match config.dropped_ids() {
            Some(ids) => make_device(root, device, ids)?,
            None => bind_device(root, device.0)?,
        }
    }
    for dir in ["proc", ".old-root"] {
        std::fs::create_dir_all(root.join(dir)).map_err(|source| JailError::Os {
            what: format!("make {}", root.join(dir).display()),
            source,
        })?;
    }
    // Mounted before the pivot: in a user namespace a proc is mounted only while the
    // host's, fully visible, is in the namespace too. It shows the jail's pid namespace.
    let proc_c = CString::from(c"proc");
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount(
        Some(&proc_c),
        &root.join("proc"),
        Some(&proc_c),
        flags,
        None,
    )?;
    pivot_into(root)?;
    mount(
        None,
        &slash,
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID,
        None,
    )
}

/// pivot_root into `root`, then detach the old root. On a host whose root is the
/// initramfs (rootfs, which cannot be pivoted away), move `root` onto `/` and chroot
/// into it instead: the old root stays underneath, out of reach without chroot (which
/// no capability and no filter allows).
fn pivot_into(root: &Path) -> Result<(), JailError> {
    let root_c = c_path(root)?;
    let old = root.join(".old-root");
    let old_c = c_path(&old)?;
    // SAFETY: two NUL-terminated paths; pivot_root has no libc wrapper.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, root_c.as_ptr(), old_c.as_ptr()) };
    if ret != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINVAL) {
            return Err(JailError::Os {
                what: format!("pivot_root into {}", root.display()),
                source: err,
            });
        }
        log::debug!("jail: the host's root cannot be pivoted away (an initramfs)");
        return move_and_chroot(root);
    }
    // SAFETY: NUL-terminated paths.
    let ret = unsafe { libc::chdir(c"/".as_ptr()) };
    check(ret, "chdir to the jail's root")?;
    // SAFETY: as above.
    let ret = unsafe { libc::umount2(c"/.old-root".as_ptr(), libc::MNT_DETACH) };
    check(ret, "detach the host's root")?;
    // SAFETY: as above.
    let ret = unsafe { libc::rmdir(c"/.old-root".as_ptr()) };
    check(ret, "remove /.old-root")?;
    log::debug!(
        "jail: pivoted into {}, the host's tree detached",
        root.display()
    );
    Ok(())
}

/// The rootfs fallback of [`pivot_into`].
fn move_and_chroot(root: &Path) -> Result<(), JailError> {
    let root_c = c_path(root)?;
    // SAFETY: NUL-terminated paths throughout.
    let ret = unsafe { libc::chdir(root_c.as_ptr()) };
    check(ret, format!("chdir to {}", root.display()))?;
    mount(Some(&root_c), Path::new("/"), None, libc::MS_MOVE, None)?;
    // SAFETY: as above.
    let ret = unsafe { libc::chroot(c".".as_ptr()) };
    check(ret, format!("chroot into {}", root.display()))?;
    // SAFETY: as above.
    let ret = unsafe { libc::chdir(c"/".as_ptr()) };
    check(ret, "chdir to the jail's root")?;
    // SAFETY: as above.
    let ret = unsafe { libc::rmdir(c"/.old-root".as_ptr()) };
    check(ret, "remove /.old-root")?;
    log::debug!("jail: moved onto / and chrooted into {}", root.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &str, binds: &[&str]) -> JailConfig {
        let root = crate::jail::JailMode::Root {
            uid: 1000,
            gid: 1000,
        };
        JailConfig {
            binds: binds.iter().map(|b| b.parse().unwrap()).collect(),
            ..JailConfig::for_tests(dir, root)
        }
    }

    #[test]
    fn binds_go_parents_first_and_never_around_the_jail() {
        let c = config("/srv/jail", &["/work/run/vmlinux", "/work/run:rw", "/opt"]);
        let order: Vec<&Path> = ordered_binds(&c)
            .unwrap()
            .iter()
            .map(|b| b.path.as_path())
            .collect();
        assert_eq!(
            order,
            [
                Path::new("/opt"),
                Path::new("/work/run"),
                Path::new("/work/run/vmlinux")
            ]
        );
        let holds = config("/srv/jail", &["/srv"]);
        let err = ordered_binds(&holds).unwrap_err().to_string();
        assert!(
            err.contains("bind /srv: it holds or lies in the jail folder"),
            "{err}"
        );
        let inside = config("/srv/jail", &["/srv/jail/x"]);
        assert!(ordered_binds(&inside).is_err());
    }

    #[test]
    fn a_jail_folder_must_be_empty_and_is_made_when_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("jail");
        assert!(prepare_dir(&missing).unwrap());
        assert!(!prepare_dir(&missing).unwrap());
        std::fs::write(missing.join("x"), "").unwrap();
        let err = prepare_dir(&missing).unwrap_err().to_string();
        assert!(err.contains("the folder is not empty"), "{err}");
    }
}
