//! The uids husk owns for jailed VMMs: `base + 1 + slot` for 65,536 slots, one per live
//! VMM (a lock file held while it runs), and one shared gid, `base`, for what every
//! jailed VMM may read (template and snapshot files). The base is 1,900,000,000 (below
//! 2^31, above the ranges distributions and container tools hand out), or
//! `HUSK_JAIL_ID_BASE`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::JailError;

/// Default first id of husk's range.
pub const DEFAULT_BASE: u32 = 1_900_000_000;

/// Slots in the range.
const SLOTS: u32 = 65_536;

/// The range's base: `HUSK_JAIL_ID_BASE` or [`DEFAULT_BASE`].
pub fn base() -> Result<u32, JailError> {
    match std::env::var("HUSK_JAIL_ID_BASE") {
        Ok(v) => v
            .parse::<u32>()
            .ok()
            .filter(|b| *b > 0 && b.checked_add(SLOTS).is_some())
            .ok_or_else(|| {
                JailError::Config(format!("HUSK_JAIL_ID_BASE {v:?} is not a usable id"))
            }),
        Err(_) => Ok(DEFAULT_BASE),
    }
}

/// The gid every jailed VMM has.
pub fn shared_gid() -> Result<u32, JailError> {
    base()
}

/// A uid of husk's range, reserved while this lives.
#[derive(Debug)]
pub struct JailIds {
    /// The VMM's uid.
    pub uid: u32,
    /// The shared gid.
    pub gid: u32,
    /// The slot's lock file.
    pub lock_path: std::path::PathBuf,
    _lock: File,
}

impl JailIds {
    /// Reserve a free slot, whose lock file lives in `dir` (made if missing).
    pub fn allocate(dir: &Path) -> Result<Self, JailError> {
        let base = base()?;
        std::fs::create_dir_all(dir).map_err(|source| JailError::Os {
            what: format!("make {}", dir.display()),
            source,
        })?;
        // Start somewhere different in each process, so processes rarely contend.
        let start = std::process::id().wrapping_mul(2_654_435_761) % SLOTS;
        for i in 0..SLOTS {
            let slot = (start + i) % SLOTS;
            let path = dir.join(format!("uid-{slot}.lock"));
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|source| JailError::Os {
                    what: format!("open {}", path.display()),
                    source,
                })?;
            // SAFETY: flock on a file we own; LOCK_NB makes it fail at once if taken.
            let locked =
                unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
            if locked {
                return Ok(Self {
                    uid: base + 1 + slot,
                    gid: base,
                    lock_path: path,
                    _lock: file,
                });
            }
        }
        Err(JailError::Config(format!(
            "every one of the {SLOTS} jail uids in {} is in use",
            dir.display()
        )))
    }
}

/// Whether nobody holds the slot lock at `path`: then `f` runs with it held (so no
/// caller can reserve the slot meanwhile) and its result is returned.
pub(crate) fn while_free<T>(path: &Path, f: impl FnOnce() -> T) -> Option<T> {
    let file = File::options().write(true).open(path).ok()?;
    // SAFETY: flock on a file we own; LOCK_NB makes it fail at once if taken.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    // The lock goes with the file, after `f`.
    locked.then(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_live_reservations_never_share_a_uid_and_a_freed_one_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = JailIds::allocate(dir.path()).unwrap();
        let b = JailIds::allocate(dir.path()).unwrap();
        assert_ne!(a.uid, b.uid);
        assert_eq!((a.gid, b.gid), (DEFAULT_BASE, DEFAULT_BASE));
        assert!(a.uid > DEFAULT_BASE && a.uid <= DEFAULT_BASE + SLOTS);
        let freed = a.uid;
        drop(a);
        let c = JailIds::allocate(dir.path()).unwrap();
        assert_eq!(c.uid, freed);
    }

    #[test]
    fn a_held_slot_is_not_free_and_a_released_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let ids = JailIds::allocate(dir.path()).unwrap();
        let path = ids.lock_path.clone();
        assert_eq!(while_free(&path, || ()), None);
        drop(ids);
        assert_eq!(while_free(&path, || 7), Some(7));
    }
}
