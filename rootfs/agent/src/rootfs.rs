//! A container's root filesystem: the read-only image as the lower layer, a tmpfs or
//! scratch disk holding the upper and work dirs, and overlayfs merging them, all under
//! `<state_dir>/<id>/`. Mounted in the agent's namespace before the fork; the child
//! pivots into `merged`.
//!
//! A scratch disk is shared by every container of the guest: each container mounts it
//! (a second mount of an ext4 device shares the first one's superblock) and keeps its
//! layer in a directory of its own, `<disk>/<id>/{upper,work}`, which starts empty and
//! is removed at teardown.

use std::fs;
use std::path::{Path, PathBuf};

use husk_protocol::{VolumeMount, WritableLayer};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Where the lower layer comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LowerLayer {
    /// A block device with a filesystem image, mounted read-only (the guest case).
    Device {
        /// E.g. `/dev/vdb`.
        device: PathBuf,
        /// E.g. `erofs`.
        fstype: String,
    },
    /// An existing directory used as is (tests on a host).
    Directory(PathBuf),
}

/// Errors of building or removing a root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A directory could not be created.
    #[error("create {path}")]
    Mkdir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A stale directory could not be removed.
    #[error("remove {path}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A mount failed.
    #[error("mount {what} on {target}")]
    Mount {
        /// What was mounted.
        what: String,
        /// Where.
        target: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
}

/// A mounted container root; [`Rootfs::unmount`] undoes it.
#[derive(Debug)]
pub struct Rootfs {
    dir: PathBuf,
    mounted: Vec<PathBuf>,
    /// The container's directory on a shared scratch disk, removed before the disk is
    /// unmounted.
    disk_layer: Option<PathBuf>,
}

fn mkdir(path: &Path) -> Result<(), RootfsError> {
    fs::create_dir_all(path).map_err(|source| RootfsError::Mkdir {
        path: path.to_path_buf(),
        source,
    })
}

/// Removes `path` and everything below it; a missing path is fine.
fn remove_tree(path: &Path) -> Result<(), RootfsError> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RootfsError::Remove {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// The overlayfs mount options for the three directories.
pub fn overlay_options(lower: &Path, upper: &Path, work: &Path) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    )
}

impl Rootfs {
    /// Mounts the layers for container `id` under `state_dir/<id>`.
    pub fn mount(
        state_dir: &Path,
        id: &str,
        lower: &LowerLayer,
        writable: &WritableLayer,
    ) -> Result<Self, RootfsError> {
        let mut rootfs = Self {
            dir: state_dir.join(id),
            mounted: Vec::new(),
            disk_layer: None,
        };
        if let Err(e) = rootfs.mount_layers(id, lower, writable) {
            rootfs.unmount();
            return Err(e);
        }
        Ok(rootfs)
    }

    fn mount_layers(
        &mut self,
        id: &str,
        lower: &LowerLayer,
        writable: &WritableLayer,
    ) -> Result<(), RootfsError> {
        let lower_dir = match lower {
            LowerLayer::Directory(dir) => dir.clone(),
            LowerLayer::Device { device, fstype } => {
                let target = self.dir.join("lower");
                self.mount_one(
                    Some(device.as_path()),
                    &target,
                    fstype,
                    MsFlags::MS_RDONLY,
                    None,
                )?;
                target
            }
        };
        let scratch = self.dir.join("scratch");
        let layer = match writable {
            WritableLayer::Tmpfs => {
                self.mount_one(None, &scratch, "tmpfs", MsFlags::empty(), Some("mode=755"))?;
                scratch
            }
            WritableLayer::Disk { device } => {
                // The host formatted the disk with lazily initialised inode tables; the
                // unused ones read as zeros from the sparse file, so skip zeroing them.
                self.mount_one(
                    Some(Path::new(device)),
                    &scratch,
                    "ext4",
                    MsFlags::empty(),
                    Some("noinit_itable"),
                )?;
                let layer = scratch.join(id);
                // A leftover of an earlier container with this id is not ours to reuse.
                remove_tree(&layer)?;
                self.disk_layer = Some(layer.clone());
                layer
            }
        };
        let (upper, work) = (layer.join("upper"), layer.join("work"));
        mkdir(&upper)?;
        mkdir(&work)?;
        let options = overlay_options(&lower_dir, &upper, &work);
        self.mount_one(
            None,
            &self.merged(),
            "overlay",
            MsFlags::empty(),
            Some(&options),
        )
    }

    fn mount_one(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), RootfsError> {
        mkdir(target)?;
        let source_name = source.map_or_else(|| fstype.to_string(), |s| s.display().to_string());
        mount(
            Some(source_name.as_str()),
            target,
            Some(fstype),
            flags,
            data,
        )
        .map_err(|source| RootfsError::Mount {
            what: format!("{fstype} {source_name}"),
            target: target.to_path_buf(),
            source,
        })?;
        self.mounted.push(target.to_path_buf());
        Ok(())
    }

    /// Mounts each shared host folder (a virtio-fs tag) at its path in the merged root;
    /// a read-only one is then remounted read-only (its virtiofsd refuses writes too).
    /// Each container mounts the tag anew: the guest kernel shares one superblock.
    pub fn mount_volumes(&mut self, volumes: &[VolumeMount]) -> Result<(), RootfsError> {
        for volume in volumes {
            let target = self.merged().join(volume.target.trim_start_matches('/'));
            let tag = Path::new(&volume.tag);
            self.mount_one(Some(tag), &target, "virtiofs", MsFlags::empty(), None)?;
            if volume.read_only {
                let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                mount(None::<&str>, &target, None::<&str>, flags, None::<&str>).map_err(
                    |source| RootfsError::Mount {
                        what: format!("read-only {}", volume.tag),
                        target: target.clone(),
                        source,
                    },
                )?;
            }
        }
        Ok(())
    }

    /// The merged root the container pivots into.
    pub fn merged(&self) -> PathBuf {
        self.dir.join("merged")
    }

    /// Unmounts everything (lazily, so late processes cannot block it) and removes the
    /// container's state directory. Best effort.
    pub fn unmount(&mut self) {
        let merged = self.merged();
        while let Some(target) = self.mounted.pop() {
            let _ = umount2(&target, MntFlags::MNT_DETACH);
            if target == merged {
                // The overlay is gone: its layer on a shared disk can go too, while the
                // disk is still mounted.
                if let Some(layer) = self.disk_layer.take() {
                    let _ = remove_tree(&layer);
                }
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_name_the_three_dirs() {
        let options = overlay_options(Path::new("/l"), Path::new("/s/upper"), Path::new("/s/work"));
        assert_eq!(options, "lowerdir=/l,upperdir=/s/upper,workdir=/s/work");
    }
}
