//! Scratch disks for containers' writable layers (`husk run --disk`): a sparse file in
//! the sandbox's runtime folder (removed with it), formatted ext4 on the host with
//! `mkfs.ext4` from e2fsprogs, attached as the guest's second disk. The agent mounts it
//! and gives each container a directory of its own on it.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use husk_protocol::WritableLayer;

use crate::devices::virtio::block::BlockConfig;

/// Smallest scratch disk, in MiB.
pub const MIN_MIB: u64 = 16;
/// Largest scratch disk, in MiB (1 TiB; the file is sparse, so only what the guest
/// writes takes space).
pub const MAX_MIB: u64 = 1 << 20;
/// The scratch disk in the guest: the second disk, right after the image
/// (`Sandbox::start` attaches it there).
pub const GUEST_DEVICE: &str = "/dev/vdb";
/// The file's name in the runtime folder.
const FILE_NAME: &str = "scratch.ext4";
const MKFS: &str = "mkfs.ext4";
/// Where Debian puts it, for a caller whose PATH lacks the sbin folders.
const MKFS_FALLBACKS: [&str; 2] = ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"];

/// Errors creating a scratch disk.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    /// The size is out of range.
    #[error("scratch disk size {0} MiB is out of range ({MIN_MIB} to {MAX_MIB} MiB)")]
    Size(u64),
    /// The sparse file could not be created.
    #[error("cannot create the scratch disk {path}")]
    Create {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// mkfs.ext4 is not installed.
    #[error("{MKFS} not found: a scratch disk needs e2fsprogs (apt-get install e2fsprogs)")]
    MkfsMissing,
    /// mkfs.ext4 could not be run.
    #[error("cannot run {program}")]
    MkfsSpawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// mkfs.ext4 failed.
    #[error("{MKFS} {path} failed ({status}): {stderr}")]
    Mkfs {
        /// The file.
        path: PathBuf,
        /// Its exit status.
        status: String,
        /// What it said.
        stderr: String,
    },
}

/// Checks a scratch disk size.
pub fn validate_size(size_mib: u64) -> Result<(), ScratchError> {
    if (MIN_MIB..=MAX_MIB).contains(&size_mib) {
        Ok(())
    } else {
        Err(ScratchError::Size(size_mib))
    }
}

/// Create a sparse file of `size_mib` MiB in `dir`, formatted ext4; returns its path.
pub fn create(dir: &Path, size_mib: u64) -> Result<PathBuf, ScratchError> {
    create_with(dir, size_mib, MKFS)
}

fn create_with(dir: &Path, size_mib: u64, mkfs: &str) -> Result<PathBuf, ScratchError> {
    validate_size(size_mib)?;
    let path = dir.join(FILE_NAME);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|file| file.set_len(size_mib << 20))
        .map_err(|source| ScratchError::Create {
            path: path.clone(),
            source,
        })?;
    format(&path, mkfs)?;
    Ok(path)
}

/// Formats `path` as ext4 quickly: no journal (the disk dies with the sandbox), inode
/// tables initialised lazily and never discarded (a fresh sparse file reads as zeros),
/// no blocks reserved for root.
fn format(path: &Path, mkfs: &str) -> Result<(), ScratchError> {
    let fallbacks: &[&str] = if mkfs == MKFS { &MKFS_FALLBACKS } else { &[] };
    let candidates = std::iter::once(mkfs).chain(fallbacks.iter().copied());
    for program in candidates {
        let output = Command::new(program)
            .args(["-q", "-F", "-t", "ext4", "-O", "^has_journal", "-m", "0"])
            .args(["-E", "lazy_itable_init=1,nodiscard", "-L", "husk-scratch"])
            .arg(path)
            .stdin(Stdio::null())
            .output();
        let output = match output {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            other => other.map_err(|source| ScratchError::MkfsSpawn {
                program: program.to_string(),
                source,
            })?,
        };
        if !output.status.success() {
            return Err(ScratchError::Mkfs {
                path: path.to_path_buf(),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        return Ok(());
    }
    Err(ScratchError::MkfsMissing)
}

/// The guest disk for the scratch file `path` (read-write, serial `husk-scratch`).
pub fn block_config(path: PathBuf) -> BlockConfig {
    BlockConfig {
        path,
        read_only: false,
        id: Some("husk-scratch".into()),
        root: false,
        rate_limiter: None,
    }
}

/// Where containers' writable layers go: the scratch disk when there is one.
pub fn writable_layer(scratch: Option<&Path>) -> WritableLayer {
    match scratch {
        Some(_) => WritableLayer::Disk {
            device: GUEST_DEVICE.into(),
        },
        None => WritableLayer::Tmpfs,
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// ext4's superblock starts 1024 bytes in; `s_magic` is at offset 56 of it.
    const EXT4_MAGIC_OFFSET: u64 = 1024 + 56;

    fn magic(path: &Path) -> u16 {
        let mut file = std::fs::File::open(path).unwrap();
        let mut bytes = [0u8; 2];
        file.seek(SeekFrom::Start(EXT4_MAGIC_OFFSET)).unwrap();
        file.read_exact(&mut bytes).unwrap();
        u16::from_le_bytes(bytes)
    }

    #[test]
    fn scratch_disk_is_a_sparse_ext4_file_of_the_asked_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = create(dir.path(), 64).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        assert_eq!(magic(&path), 0xef53);
        assert!(
            meta.blocks() * 512 < meta.len() / 4,
            "{} blocks",
            meta.blocks()
        );
    }

    #[test]
    fn size_below_16_mib_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = create(dir.path(), 15).unwrap_err().to_string();
        assert!(err.contains("15 MiB"), "{err}");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[test]
    fn size_above_1_tib_is_refused() {
        assert!(matches!(
            validate_size(MAX_MIB + 1),
            Err(ScratchError::Size(_))
        ));
    }

    #[test]
    fn missing_mkfs_names_e2fsprogs() {
        let dir = tempfile::tempdir().unwrap();
        let err = create_with(dir.path(), 16, "husk-no-such-mkfs.ext4").unwrap_err();
        assert!(err.to_string().contains("e2fsprogs"), "{err}");
    }

    #[test]
    fn disk_layer_is_the_second_guest_disk() {
        let layer = writable_layer(Some(Path::new("/x")));
        assert_eq!(
            layer,
            WritableLayer::Disk {
                device: "/dev/vdb".into()
            }
        );
        assert_eq!(writable_layer(None), WritableLayer::Tmpfs);
    }
}
