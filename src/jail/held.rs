//! Files a jail opens as root before it drops to its uid (`husk vmm --hold PATH[:rw]`),
//! kept open for the VM: a disk whose path is held uses the held file instead of
//! opening the path, so a jailed VMM serves a caller's disk that its uid could not
//! open, and the caller's file keeps its owner and mode.
//!
//! A held file is handed out only for the access it was opened with: a read-only one
//! to a read-only disk, a writable one to a writable disk. Each request gets a
//! duplicate of the descriptor (a VM restored in the same process opens its disks
//! again); reads and writes are positional, so the shared file offset does not matter.
//!
//! TAPs are held the same way (`husk vmm --hold-tap NAME`): attached as root, so a
//! caller's TAP needs no owner of the jail's uid, and a card on that TAP uses the
//! attached descriptor (a duplicate, the same attachment). The TAP keeps its
//! persistence: it stays the caller's after the VM.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::{Bind, JailError};

/// One file opened before the uid drop.
#[derive(Debug)]
struct Held {
    path: PathBuf,
    writable: bool,
    file: File,
}

/// One TAP attached before the uid drop.
#[derive(Debug)]
struct HeldTap {
    name: String,
    file: File,
}

/// The files and TAPs a jail holds, by path and by name.
#[derive(Debug, Default)]
pub(super) struct HeldFiles {
    files: Vec<Held>,
    taps: Vec<HeldTap>,
}

/// The held files of this process, set once by [`super::enter`].
static HELD: OnceLock<HeldFiles> = OnceLock::new();

impl HeldFiles {
    /// Open each of `files`, read-only or (`writable`) read-write, and attach to each
    /// of the TAPs `taps`.
    pub(super) fn open(files: &[Bind], taps: &[String]) -> Result<Self, JailError> {
        let open = |b: &Bind| {
            let file = OpenOptions::new()
                .read(true)
                .write(b.writable)
                .open(&b.path)
                .map_err(|source| JailError::Os {
                    what: format!("open the held file {}", b.path.display()),
                    source,
                })?;
            Ok(Held {
                path: b.path.clone(),
                writable: b.writable,
                file,
            })
        };
        let attach = |name: &String| {
            let file = crate::devices::virtio::net::tap::attach_to_hold(name).map_err(|e| {
                JailError::Config(format!("hold the TAP {name}: {}", crate::error_chain(&e)))
            })?;
            Ok(HeldTap {
                name: name.clone(),
                file,
            })
        };
        Ok(Self {
            files: files.iter().map(open).collect::<Result<_, _>>()?,
            taps: taps.iter().map(attach).collect::<Result<_, _>>()?,
        })
    }

    /// Keep these as the process's held files (once; a second call changes nothing).
    pub(super) fn install(self) {
        if HELD.set(self).is_err() {
            log::warn!("jail: held files were installed already");
        }
    }

    /// A duplicate of the file held at `path` with exactly that access.
    fn get(&self, path: &Path, writable: bool) -> Option<std::io::Result<File>> {
        self.files
            .iter()
            .find(|h| h.path == path && h.writable == writable)
            .map(|h| h.file.try_clone())
    }

    /// A duplicate of the held TAP `name`'s descriptor.
    fn tap(&self, name: &str) -> Option<std::io::Result<File>> {
        self.taps
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.file.try_clone())
    }
}

/// The file this process's jail holds at `path` with `writable` access, duplicated;
/// `None` when it holds none (the caller then opens the path itself).
pub fn held_file(path: &Path, writable: bool) -> Option<std::io::Result<File>> {
    HELD.get()?.get(path, writable)
}

/// The TAP `name` this process's jail attached to, duplicated; `None` when it holds
/// none (the caller then attaches itself).
pub fn held_tap(name: &str) -> Option<std::io::Result<File>> {
    HELD.get()?.tap(name)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn bind(path: &Path, writable: bool) -> Bind {
        Bind {
            path: path.to_path_buf(),
            writable,
        }
    }

    #[test]
    fn a_held_file_is_handed_out_only_with_the_access_it_was_opened_with() {
        let dir = tempfile::tempdir().unwrap();
        let (ro, rw) = (dir.path().join("ro.img"), dir.path().join("rw.img"));
        std::fs::write(&ro, b"read me").unwrap();
        std::fs::write(&rw, b"").unwrap();
        let held = HeldFiles::open(&[bind(&ro, false), bind(&rw, true)], &[]).unwrap();
        let mut text = String::new();
        let mut file = held.get(&ro, false).unwrap().unwrap();
        file.read_to_string(&mut text).unwrap();
        assert_eq!(text, "read me");
        assert!(held.get(&ro, true).is_none());
        assert!(held.get(&rw, false).is_none());
        let mut file = held.get(&rw, true).unwrap().unwrap();
        file.write_all(b"written").unwrap();
        assert_eq!(std::fs::read(&rw).unwrap(), b"written");
        assert!(held.get(&dir.path().join("other.img"), false).is_none());
    }

    #[test]
    fn a_missing_held_file_is_named() {
        let e = HeldFiles::open(&[bind(Path::new("/nonexistent/husk.img"), false)], &[]);
        let e = e.unwrap_err().to_string();
        assert!(
            e.contains("open the held file /nonexistent/husk.img"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_held_tap_is_named() {
        let e = HeldFiles::open(&[], &["husk-no-such".into()]).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("hold the TAP husk-no-such"), "{e}");
    }
}
