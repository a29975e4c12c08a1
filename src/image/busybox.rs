//! The default `busybox` image: Debian's static busybox, one symlink per applet, and
//! the few files a shell expects (`/etc/passwd`, `/etc/group`, mount points).

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::apt::{ensure_package, tail};
use super::{ImageConfig, ImageError};

/// The name the default image is stored under.
pub(crate) const NAME: &str = "busybox";
const BUSYBOX: &str = "/bin/busybox";
const PACKAGE: &str = "busybox-static";

/// Mount points and standard directories of the root filesystem, with their modes.
const DIRS: &[(&str, u32)] = &[
    ("bin", 0o755),
    ("dev", 0o755),
    ("etc", 0o755),
    ("proc", 0o555),
    ("root", 0o700),
    ("run", 0o755),
    ("sbin", 0o755),
    ("sys", 0o555),
    ("tmp", 0o1777),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("var/tmp", 0o1777),
];

const ETC_FILES: &[(&str, &str)] = &[
    (
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    ),
    ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
    ("etc/hostname", "husk\n"),
];

/// How the busybox image runs: a shell.
pub(crate) fn config() -> ImageConfig {
    ImageConfig {
        cmd: vec!["sh".to_string()],
        ..ImageConfig::rootfs_default()
    }
}

/// Builds the root filesystem in `<tmp>/busybox-rootfs`, installing busybox-static if
/// needed, and returns it.
pub(crate) fn build_rootfs(tmp: &Path) -> Result<PathBuf, ImageError> {
    ensure_package(PACKAGE, package_installed)?;
    let root = tmp.join("busybox-rootfs");
    for (dir, mode) in DIRS {
        let path = root.join(dir);
        fs::create_dir_all(&path).map_err(ImageError::io("create", &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode))
            .map_err(ImageError::io("chmod", &path))?;
    }
    for (file, content) in ETC_FILES {
        let path = root.join(file);
        fs::write(&path, content).map_err(ImageError::io("write", &path))?;
    }
    let binary = root.join("bin/busybox");
    fs::copy(BUSYBOX, &binary).map_err(ImageError::io("copy", Path::new(BUSYBOX)))?;
    for applet in applets()? {
        link_applet(&root, &applet)?;
    }
    zero_mtimes(&root)?;
    Ok(root)
}

/// Sets every mtime in the tree to the epoch, so the image's digest depends only on
/// the busybox binary and its applet list.
fn zero_mtimes(root: &Path) -> Result<(), ImageError> {
    let epoch = filetime::FileTime::zero();
    for entry in walkdir::WalkDir::new(root).contents_first(true) {
        let entry = entry.map_err(|e| ImageError::Io {
            op: "walk",
            path: root.to_path_buf(),
            source: e.into(),
        })?;
        filetime::set_symlink_file_times(entry.path(), epoch, epoch)
            .map_err(ImageError::io("set mtime of", entry.path()))?;
    }
    Ok(())
}

/// Whether Debian's busybox-static (not the dynamic `busybox` package) is installed.
fn package_installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", PACKAGE])
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout.ends_with(b"installed"))
        && Path::new(BUSYBOX).is_file()
}

/// The applets' install paths (`usr/bin/env`, ...), from `busybox --list-full`.
fn applets() -> Result<Vec<String>, ImageError> {
    let tool = format!("{BUSYBOX} --list-full");
    let out = Command::new(BUSYBOX)
        .arg("--list-full")
        .output()
        .map_err(|source| ImageError::ToolSpawn {
            tool: tool.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(ImageError::Tool {
            tool,
            status: out.status.to_string(),
            stderr: tail(&out.stderr),
        });
    }
    let list = String::from_utf8_lossy(&out.stdout);
    Ok(list
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect())
}

/// Links one applet to `/bin/busybox` (absolute target: resolved in the guest).
fn link_applet(root: &Path, applet: &str) -> Result<(), ImageError> {
    let rel = applet.trim_start_matches('/');
    if rel == "bin/busybox" || rel.split('/').any(|c| c == ".." || c.is_empty()) {
        return Ok(());
    }
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(ImageError::io("create", parent))?;
    }
    match symlink(BUSYBOX, &path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(ImageError::io("symlink", &path)(e))
        }
        _ => Ok(()),
    }
}
