//! Builds the read-only erofs image of a staged tree with Debian's `mkfs.erofs`
//! (erofs-utils) and makes it reproducible: fixed UUID, extended inodes (each keeps its
//! own mtime), no superblock checksum, and the superblock build time zeroed afterwards
//! (erofs-utils 1.5 has no option that fixes the build time while keeping file mtimes:
//! `-T` overwrites every file's mtime).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::apt::{ensure_package, in_path, tail};
use super::ImageError;

const MKFS: &str = "mkfs.erofs";
/// The superblock sits 1024 bytes into the image (erofs_fs.h `EROFS_SUPER_OFFSET`).
const SUPER_OFFSET: u64 = 1024;
const SUPER_MAGIC: u32 = 0xE0F5_E1E2;
/// `feature_compat` bit of the superblock checksum, which zeroing the build time would
/// invalidate.
const FEATURE_SB_CSUM: u32 = 0x1;
/// Offset of `build_time` (u64) and `build_time_nsec` (u32) in the superblock.
const BUILD_TIME_OFFSET: u64 = 24;

/// Builds `dir` into the erofs file `out` and returns its digest (`sha256:<hex>`).
pub(crate) fn build(dir: &Path, out: &Path) -> Result<String, ImageError> {
    ensure_package("erofs-utils", || in_path(MKFS))?;
    let tool = format!("{MKFS} {}", dir.display());
    let output = Command::new(MKFS)
        .args([
            "--quiet",
            "--preserve-mtime",
            "-Eforce-inode-extended,nosbcrc",
            "-U00000000-0000-0000-0000-000000000000",
        ])
        .arg(out)
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ImageError::ToolSpawn {
            tool: tool.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(ImageError::Tool {
            tool,
            status: output.status.to_string(),
            stderr: tail(&output.stderr),
        });
    }
    zero_build_time(out)?;
    digest_file(out)
}

/// Zeroes the superblock's build time, after checking it is an erofs superblock
/// without a checksum.
fn zero_build_time(path: &Path) -> Result<(), ImageError> {
    let bad = |what: &str| ImageError::Tool {
        tool: format!("{MKFS} {}", path.display()),
        status: "success".to_string(),
        stderr: format!("unexpected superblock: {what}"),
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(ImageError::io("open", path))?;
    let mut head = [0u8; 12];
    file.seek(SeekFrom::Start(SUPER_OFFSET))
        .and_then(|_| file.read_exact(&mut head))
        .map_err(ImageError::io("read", path))?;
    let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    if word(0) != SUPER_MAGIC {
        return Err(bad("no erofs magic"));
    }
    if word(8) & FEATURE_SB_CSUM != 0 {
        return Err(bad("checksum enabled"));
    }
    file.seek(SeekFrom::Start(SUPER_OFFSET + BUILD_TIME_OFFSET))
        .and_then(|_| file.write_all(&[0u8; 12]))
        .and_then(|_| file.sync_all())
        .map_err(ImageError::io("write", path))
}

/// `sha256:<hex>` of a file's content.
pub(crate) fn digest_file(path: &Path) -> Result<String, ImageError> {
    let mut file = File::open(path).map_err(ImageError::io("open", path))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(ImageError::io("read", path))?;
    Ok(format!("sha256:{:x}", hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn build_time_patch_refuses_a_file_that_is_not_erofs() {
        let file = tempfile::NamedTempFile::new().unwrap();
        fs::write(file.path(), vec![0u8; 4096]).unwrap();
        let err = zero_build_time(file.path()).unwrap_err();
        assert!(matches!(err, ImageError::Tool { stderr, .. } if stderr.contains("magic")));
    }

    #[test]
    fn same_tree_built_twice_has_the_same_digest() {
        let tree = tempfile::tempdir().unwrap();
        fs::write(tree.path().join("f"), "content").unwrap();
        let out = tempfile::tempdir().unwrap();
        let first = build(tree.path(), &out.path().join("1.erofs")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let second = build(tree.path(), &out.path().join("2.erofs")).unwrap();
        assert_eq!(first, second);
    }
}
