//! Initrd placement: page-aligned, as high as possible in RAM below the MMIO gap (and
//! below the kernel's limit), above the end of the kernel.

use std::fs::File;
use std::io::Seek;
use std::path::{Path, PathBuf};

use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use crate::arch::x86_64::layout::MMIO_GAP_START;

const PAGE_SIZE: u64 = 0x1000;

/// Errors loading the initrd.
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    /// The initrd file could not be inspected.
    #[error("cannot read initrd {}", path.display())]
    Metadata {
        /// The initrd file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The initrd file is empty.
    #[error("initrd {} is empty", path.display())]
    Empty {
        /// The initrd file.
        path: PathBuf,
    },
    /// There is not enough room between the kernel and the top of low RAM.
    #[error("initrd {} is {size} bytes, only {room} bytes of guest RAM are free for it", path.display())]
    TooLarge {
        /// The initrd file.
        path: PathBuf,
        /// Initrd size in bytes.
        size: u64,
        /// Room between the kernel end and the highest usable address.
        room: u64,
    },
    /// Copying the file into guest memory failed.
    #[error("cannot copy initrd {} to guest address {addr:#x}", path.display())]
    Copy {
        /// The initrd file.
        path: PathBuf,
        /// Where it was going.
        addr: u64,
        /// The guest memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Where an initrd was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdPlacement {
    /// Guest physical address of the first byte.
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: u64,
}

/// Highest address (exclusive) of RAM below the MMIO gap; 0 if there is none.
pub fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .filter(|r| r.start_addr().raw_value() < MMIO_GAP_START)
        .map(|r| {
            let end = r.start_addr().raw_value().saturating_add(r.len());
            end.min(MMIO_GAP_START)
        })
        .max()
        .unwrap_or(0)
}

/// Chooses the page-aligned address for `size` bytes, as high as possible below
/// `limit` (exclusive) and not below `kernel_end`.
pub fn place(kernel_end: u64, limit: u64, size: u64, path: &Path) -> Result<u64, InitrdError> {
    let lowest = kernel_end.next_multiple_of(PAGE_SIZE);
    let too_large = || InitrdError::TooLarge {
        path: path.to_path_buf(),
        size,
        room: limit.saturating_sub(lowest),
    };
    let addr = limit.checked_sub(size).ok_or_else(too_large)? & !(PAGE_SIZE - 1);
    if addr < lowest {
        return Err(too_large());
    }
    Ok(addr)
}

/// Copies the initrd into guest memory, placed by [`place`] under `max_end`
/// (exclusive; the MMIO gap or the kernel's `initrd_addr_max + 1`, whichever is lower).
pub fn load(
    mem: &GuestMemoryMmap,
    file: &mut File,
    path: &Path,
    kernel_end: u64,
    max_end: u64,
) -> Result<InitrdPlacement, InitrdError> {
    let io_error = |source| InitrdError::Metadata {
        path: path.to_path_buf(),
        source,
    };
    let size = file.metadata().map_err(io_error)?.len();
    file.rewind().map_err(io_error)?;
    if size == 0 {
        return Err(InitrdError::Empty {
            path: path.to_path_buf(),
        });
    }
    let limit = low_ram_end(mem).min(max_end);
    let addr = place(kernel_end, limit, size, path)?;
    let len = usize::try_from(size).map_err(|_| InitrdError::TooLarge {
        path: path.to_path_buf(),
        size,
        room: limit,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), file, len)
        .map_err(|source| InitrdError::Copy {
            path: path.to_path_buf(),
            addr,
            source,
        })?;
    Ok(InitrdPlacement {
        addr: GuestAddress(addr),
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MIB: u64 = 1 << 20;

    #[test]
    fn initrd_is_placed_page_aligned_at_the_top_of_ram() {
        let addr = place(2 * MIB, 64 * MIB, 5000, Path::new("initrd")).expect("fits");
        assert_eq!(addr, 64 * MIB - 0x2000);
    }

    #[test]
    fn initrd_too_large_names_path_size_and_room() {
        let err = place(60 * MIB + 1, 64 * MIB, 8 * MIB, Path::new("/x/initrd.img"))
            .expect_err("too large");
        assert_eq!(
            err.to_string(),
            "initrd /x/initrd.img is 8388608 bytes, only 4190208 bytes of guest RAM are free for it"
        );
    }

    #[test]
    fn low_ram_end_stops_at_the_mmio_gap() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), MMIO_GAP_START as usize),
            (GuestAddress(1 << 32), MIB as usize),
        ])
        .expect("mmap");
        assert_eq!(low_ram_end(&mem), MMIO_GAP_START);
    }

    #[test]
    fn initrd_file_is_copied_below_the_limit() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).expect("mmap");
        let mut file = tempfile();
        file.write_all(b"070701initrd").expect("write");
        let placed = load(&mem, &mut file, Path::new("i"), 2 * MIB, 8 * MIB).expect("load");
        assert_eq!(
            placed,
            InitrdPlacement {
                addr: GuestAddress(8 * MIB - 0x1000),
                size: 12
            }
        );
        let mut buf = [0u8; 12];
        mem.read_slice(&mut buf, placed.addr).expect("read");
        assert_eq!(&buf, b"070701initrd");
    }

    #[test]
    fn empty_initrd_is_an_error() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).expect("mmap");
        let err =
            load(&mem, &mut tempfile(), Path::new("/e"), 2 * MIB, 8 * MIB).expect_err("empty");
        assert_eq!(err.to_string(), "initrd /e is empty");
    }

    fn tempfile() -> File {
        let file = vmm_sys_util::tempfile::TempFile::new().expect("tempfile");
        file.into_file()
    }
}
