//! Guest RAM: one memfd laid out as up to two regions around the MMIO hole.
//!
//! The memfd (instead of anonymous memory) lets a later snapshot write guest RAM out as
//! a file, or map a snapshot file privately, without changing how devices see memory.
#![allow(
    unsafe_code,
    reason = "memfd_create has no safe wrapper in our dependencies"
)]

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout::{MMIO_GAP_END, MMIO_GAP_START};

/// Smallest guest RAM husk accepts, in MiB: the kernel, its initrd and page tables must fit.
pub const MIN_MEMORY_MIB: u64 = 32;

/// Errors while creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is below [`MIN_MEMORY_MIB`].
    #[error("memory {0} MiB is too small: husk needs at least {MIN_MEMORY_MIB} MiB")]
    TooSmall(u64),
    /// The requested size is more than the host has.
    #[error("memory {requested} MiB is more than this host's {host} MiB of RAM")]
    TooLarge {
        /// Requested MiB.
        requested: u64,
        /// Host RAM in MiB.
        host: u64,
    },
    /// memfd_create or sizing the memfd failed.
    #[error("cannot create a {mib} MiB memfd for guest RAM: {source}")]
    Memfd {
        /// Requested MiB.
        mib: u64,
        /// The OS error.
        source: std::io::Error,
    },
    /// Mapping the regions failed.
    #[error("cannot map {mib} MiB of guest RAM: {source}")]
    Map {
        /// Requested MiB.
        mib: u64,
        /// The vm-memory error.
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Guest RAM and the memfd that backs it.
pub struct GuestRam {
    /// The mapped regions, shared with devices.
    pub memory: GuestMemoryMmap,
    /// The memfd behind every region (region offsets are contiguous in it).
    pub file: Arc<File>,
}

/// The RAM ranges for `size` bytes: from 0 up to the MMIO hole, the rest from 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), size - MMIO_GAP_START),
        ]
    }
}

/// Check a requested RAM size against the minimum and the host's RAM.
pub fn validate_size(mib: u64, host_mib: u64) -> Result<u64, MemoryError> {
    if mib < MIN_MEMORY_MIB {
        return Err(MemoryError::TooSmall(mib));
    }
    if mib > host_mib {
        return Err(MemoryError::TooLarge {
            requested: mib,
            host: host_mib,
        });
    }
    Ok(mib << 20)
}

/// Total RAM of this host in MiB (from sysinfo), or `u64::MAX` when it cannot be read.
pub fn host_ram_mib() -> u64 {
    let mut info = std::mem::MaybeUninit::<libc::sysinfo>::zeroed();
    // SAFETY: sysinfo writes into the struct we pass and nothing else.
    let ret = unsafe { libc::sysinfo(info.as_mut_ptr()) };
    if ret != 0 {
        return u64::MAX;
    }
    // SAFETY: sysinfo returned 0, so it initialized the struct.
    let info = unsafe { info.assume_init() };
    info.totalram.saturating_mul(u64::from(info.mem_unit)) >> 20
}

/// Create `mib` MiB of guest RAM backed by a memfd.
pub fn create(mib: u64) -> Result<GuestRam, MemoryError> {
    let size = validate_size(mib, host_ram_mib())?;
    let memfd_err = |source| MemoryError::Memfd { mib, source };
    // SAFETY: the name is a valid NUL-terminated string; the returned fd is checked.
    let fd = unsafe { libc::memfd_create(c"husk-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(memfd_err(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(memfd_err)?;
    let file = Arc::new(file);
    let mut offset = 0;
    let ranges: Vec<_> = ram_ranges(size)
        .into_iter()
        .map(|(addr, len)| {
            let region = (
                addr,
                len as usize,
                Some(FileOffset::from_arc(file.clone(), offset)),
            );
            offset += len;
            region
        })
        .collect();
    let memory = GuestMemoryMmap::from_ranges_with_files(ranges)
        .map_err(|source| MemoryError::Map { mib, source })?;
    Ok(GuestRam { memory, file })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend;

    #[test]
    fn small_memory_is_one_region_from_zero() {
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
    }

    #[test]
    fn memory_past_the_hole_continues_at_4gib() {
        assert_eq!(
            ram_ranges(4 << 30),
            vec![
                (GuestAddress(0), MMIO_GAP_START),
                (GuestAddress(MMIO_GAP_END), (4 << 30) - MMIO_GAP_START)
            ]
        );
    }

    #[test]
    fn memory_exactly_up_to_the_hole_is_one_region() {
        assert_eq!(ram_ranges(MMIO_GAP_START).len(), 1);
    }

    #[test]
    fn too_small_memory_names_the_value() {
        let err = validate_size(1, 1024).unwrap_err();
        assert_eq!(
            err.to_string(),
            "memory 1 MiB is too small: husk needs at least 32 MiB"
        );
    }

    #[test]
    fn too_large_memory_names_both_sizes() {
        let err = validate_size(4096, 1024).unwrap_err();
        assert_eq!(
            err.to_string(),
            "memory 4096 MiB is more than this host's 1024 MiB of RAM"
        );
    }

    #[test]
    fn created_memory_is_backed_by_one_memfd_of_the_full_size() {
        let ram = create(64).unwrap();
        assert_eq!(ram.file.metadata().unwrap().len(), 64 << 20);
        assert_eq!(ram.memory.num_regions(), 1);
    }
}
