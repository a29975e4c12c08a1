//! Reads an image's likely-run files into the guest's page cache while a container is
//! made ahead ([`husk_protocol::Message::Prepare`]), so that the image template's
//! snapshot carries them: a sandbox restored from it then runs its first command from
//! memory the host already holds (mapped from the snapshot file, shared by every
//! clone) instead of reading it through the image disk.
//!
//! What is read, in this order, until a byte budget is spent: small files of `/etc`
//! (the loader's cache, passwd, nsswitch), shared libraries in the library folders
//! (the loader and libc first), then executables in the `bin` folders; smaller files
//! first within each group. Only regular files are read (symbolic links are never
//! followed, so a link out of the image or to a FIFO reads nothing), a file with
//! several names counts once, and a folder's listing is cut at
//! [`MAX_ENTRIES_PER_DIR`]. The image is the guest's own input: a hostile one can only
//! make this read less.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Files of `/etc` larger than this are not read.
const ETC_MAX_FILE: u64 = 64 << 10;

/// Entries looked at per folder.
pub const MAX_ENTRIES_PER_DIR: usize = 4096;

const LIB_DIRS: [&str; 7] = [
    "lib",
    "lib64",
    "lib/x86_64-linux-gnu",
    "usr/lib",
    "usr/lib64",
    "usr/lib/x86_64-linux-gnu",
    "usr/local/lib",
];
const BIN_DIRS: [&str; 5] = ["bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin"];

/// A file to read: its path and size.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    path: PathBuf,
    len: u64,
    /// Read before the others of its group (the loader, libc).
    first: bool,
}

/// What [`warm`] read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Warmed {
    /// Files read.
    pub files: usize,
    /// Bytes read.
    pub bytes: u64,
}

/// Reads the image files under `root` (a container's merged root) as the module says,
/// at most `budget` bytes.
pub fn warm(root: &Path, budget: u64) -> Warmed {
    let mut left = budget;
    let mut warmed = Warmed::default();
    for group in groups(root) {
        for file in group {
            if file.len > left {
                continue;
            }
            if let Some(n) = read_through(&file.path) {
                left = left.saturating_sub(n);
                warmed.files += 1;
                warmed.bytes += n;
            }
        }
    }
    warmed
}

/// The three groups, each ordered; a file with several names is in the first only.
fn groups(root: &Path) -> [Vec<Candidate>; 3] {
    let mut inodes = HashSet::new();
    let etc = list(&root.join("etc"), &mut inodes, |_, m| {
        m.len() <= ETC_MAX_FILE
    });
    let mut libs = Vec::new();
    for dir in LIB_DIRS {
        libs.extend(list(&root.join(dir), &mut inodes, |name, _| {
            is_library(name)
        }));
    }
    let mut bins = Vec::new();
    for dir in BIN_DIRS {
        bins.extend(list(&root.join(dir), &mut inodes, |_, m| {
            m.permissions().mode() & 0o111 != 0
        }));
    }
    [etc, libs, bins].map(|mut group| {
        group.sort_by_key(|c| (!c.first, c.len));
        group
    })
}

/// The regular files directly in `dir` that `keep` accepts, each inode once.
fn list(
    dir: &Path,
    inodes: &mut HashSet<(u64, u64)>,
    keep: impl Fn(&str, &std::fs::Metadata) -> bool,
) -> Vec<Candidate> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.take(MAX_ENTRIES_PER_DIR).flatten() {
        // `DirEntry::metadata` does not follow a symbolic link.
        let Ok(meta) = entry.metadata() else { continue };
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !meta.file_type().is_file() || !keep(name, &meta) {
            continue;
        }
        if !inodes.insert((meta.dev(), meta.ino())) {
            continue;
        }
        found.push(Candidate {
            path: entry.path(),
            len: meta.len(),
            first: is_loader_or_libc(name),
        });
    }
    found
}

fn is_library(name: &str) -> bool {
    name.ends_with(".so") || name.contains(".so.")
}

fn is_loader_or_libc(name: &str) -> bool {
    name.starts_with("ld-") || name.starts_with("libc.")
}

/// Reads `path` to its end (into the page cache); the bytes read.
fn read_through(path: &Path) -> Option<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file: File = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.file_type().is_file() {
        return None;
    }
    std::io::copy(&mut file, &mut std::io::sink()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn file(root: &Path, path: &str, len: usize, mode: u32) {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, vec![7u8; len]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn names(group: &[Candidate], root: &Path) -> Vec<String> {
        group
            .iter()
            .map(|c| c.path.strip_prefix(root).unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn groups_are_etc_then_libraries_then_executables_loader_first_then_smallest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        file(root, "etc/ld.so.cache", 100, 0o644);
        file(root, "etc/huge.db", 1 << 20, 0o644);
        file(root, "lib/libz.so.1", 300, 0o755);
        file(root, "lib/libc.so.6", 900, 0o755);
        file(root, "lib/ld-linux-x86-64.so.2", 500, 0o755);
        file(root, "lib/readme.txt", 10, 0o644);
        file(root, "usr/bin/big", 800, 0o755);
        file(root, "bin/small", 20, 0o755);
        file(root, "bin/notes", 5, 0o644);
        let [etc, libs, bins] = groups(root);
        assert_eq!(names(&etc, root), ["etc/ld.so.cache"]);
        assert_eq!(
            names(&libs, root),
            ["lib/ld-linux-x86-64.so.2", "lib/libc.so.6", "lib/libz.so.1"]
        );
        assert_eq!(names(&bins, root), ["bin/small", "usr/bin/big"]);
    }

    #[test]
    fn hard_links_count_once_and_symbolic_links_and_fifos_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        file(root, "bin/busybox", 1000, 0o755);
        fs::hard_link(root.join("bin/busybox"), root.join("bin/sh")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", root.join("bin/escape")).unwrap();
        nix::unistd::mkfifo(
            &root.join("bin/fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o755),
        )
        .unwrap();
        let warmed = warm(root, 1 << 20);
        assert_eq!(
            warmed,
            Warmed {
                files: 1,
                bytes: 1000
            }
        );
    }

    #[test]
    fn the_budget_is_never_exceeded_and_smaller_files_still_fit() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        file(root, "bin/a", 600, 0o755);
        file(root, "bin/b", 500, 0o755);
        file(root, "bin/c", 300, 0o755);
        // Smallest first: c (300) and b (500) fit in 900; a does not.
        assert_eq!(
            warm(root, 900),
            Warmed {
                files: 2,
                bytes: 800
            }
        );
        assert_eq!(warm(root, 0), Warmed::default());
    }

    #[test]
    fn a_root_without_these_folders_reads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(warm(dir.path(), 1 << 20), Warmed::default());
    }
}
