//! Guest RAM, laid out as up to two regions around the MMIO hole.
//!
//! A booted guest's RAM is anonymous memory advised for transparent huge pages, as a
//! process's heap would be: KVM then maps it 2 MiB at a time where the host backs it so,
//! and each 2 MiB the guest touches first costs one second-level page fault instead of
//! 512. RAM another process must map too (a vhost-user device's daemon) is a memfd
//! instead, advised the same (huge only where the host's `shmem_enabled` allows it).
//! A snapshot's RAM is its memory file, mapped privately. See docs/design.md, "Guest RAM".
#![allow(
    unsafe_code,
    reason = "memfd_create and madvise have no safe wrapper in our dependencies"
)]

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

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
    /// A snapshot's memory file is not the size of the RAM it should hold.
    #[error(
        "the memory file holds {actual} bytes, not the {mib} MiB of guest RAM the snapshot has"
    )]
    FileSize {
        /// Guest RAM in MiB.
        mib: u64,
        /// The file's size.
        actual: u64,
    },
    /// A snapshot's memory file could not be mapped.
    #[error("cannot map the {mib} MiB memory file: {source}")]
    MapFile {
        /// Guest RAM in MiB.
        mib: u64,
        /// The mmap error.
        source: vm_memory::mmap::MmapRegionError,
    },
    /// The mapped regions do not form guest memory.
    #[error("guest RAM of {mib} MiB: {message}")]
    Regions {
        /// Guest RAM in MiB.
        mib: u64,
        /// What is wrong.
        message: String,
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

/// What the guest's RAM pages live in, with the file behind every region when there is
/// one (region offsets are contiguous in it).
#[derive(Debug, Clone)]
pub enum Backing {
    /// Anonymous private memory, advised for huge pages: only this process maps it.
    Anonymous,
    /// A memfd mapped shared: the file holds every page the guest wrote.
    Memfd(Arc<File>),
    /// A snapshot's memory file mapped private: pages the guest (or a device) wrote
    /// since the restore are anonymous copies, the rest are the file's page cache,
    /// shared by every VM restored from it.
    Snapshot(Arc<File>),
}

/// Guest RAM and what backs it.
pub struct GuestRam {
    /// The mapped regions, shared with devices.
    pub memory: GuestMemoryMmap,
    /// What the regions map.
    pub backing: Backing,
}

/// Who maps guest RAM besides this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Nobody: anonymous memory (unless `HUSK_HUGE_PAGES=0` asks for a memfd).
    Private,
    /// A daemon gets the memory's file (vhost-user): a memfd.
    WithDaemons,
}

impl GuestRam {
    /// Where each region is mapped in this process (for telling guest RAM's resident
    /// pages from the VMM's own).
    pub fn host_ranges(&self) -> Vec<std::ops::Range<u64>> {
        self.memory
            .iter()
            .map(|region| {
                let start = region.as_ptr() as u64;
                start..start + region.len()
            })
            .collect()
    }
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

/// Create `mib` MiB of guest RAM: anonymous memory when only this process maps it,
/// a memfd when daemons must map it too; either advised for huge pages.
/// `HUSK_HUGE_PAGES=0` takes a memfd without the advice, as RAM was made before huge
/// pages (for measuring them).
pub fn create(mib: u64, sharing: Sharing) -> Result<GuestRam, MemoryError> {
    let huge = std::env::var_os("HUSK_HUGE_PAGES").is_none_or(|v| v != "0");
    let ram = match (sharing, huge) {
        (Sharing::Private, true) => create_anonymous(mib)?,
        _ => create_memfd(mib)?,
    };
    if huge {
        advise_huge_pages(&ram.memory);
    }
    keep_out_of_forks(&ram.memory);
    Ok(ram)
}

/// `mib` MiB of anonymous private memory.
fn create_anonymous(mib: u64) -> Result<GuestRam, MemoryError> {
    let size = validate_size(mib, host_ram_mib())?;
    let ranges: Vec<_> = ram_ranges(size)
        .into_iter()
        .map(|(addr, len)| (addr, len as usize, None))
        .collect();
    let memory = GuestMemoryMmap::from_ranges_with_files(ranges)
        .map_err(|source| MemoryError::Map { mib, source })?;
    Ok(GuestRam {
        memory,
        backing: Backing::Anonymous,
    })
}

/// Size of a huge page (a second-level page table's 2 MiB entry) on x86-64.
const HUGE_PAGE: usize = 2 << 20;

/// Advise every region of `memory` for transparent huge pages (`MADV_HUGEPAGE`).
/// KVM maps a guest page huge only where its host address and guest address agree
/// modulo 2 MiB; Linux 6.7 and later align large anonymous mappings so, older ones may
/// not (logged, and the advice still spares host page faults). Best effort: a host
/// without transparent huge pages refuses the advice, and RAM works as before.
fn advise_huge_pages(memory: &GuestMemoryMmap) {
    for region in memory.iter() {
        let offset = (region.as_ptr() as usize).wrapping_sub(region.start_addr().0 as usize);
        if !offset.is_multiple_of(HUGE_PAGE) {
            log::debug!(
                "guest RAM at {:p} is not 2 MiB aligned: KVM maps it in 4 KiB pages",
                region.as_ptr()
            );
        }
    }
    advise(memory, libc::MADV_HUGEPAGE, "MADV_HUGEPAGE");
}

/// Keep guest RAM out of any child this process forks (`MADV_DONTFORK`): a library
/// caller holding a VM that forks (a `Command` with `pre_exec`, say) would otherwise
/// copy the RAM's page tables and share its pages copy-on-write until the child
/// execs, and every guest write in that window would copy a page. A child never
/// touches guest RAM: husk's own forks (the jail) happen before any is made.
fn keep_out_of_forks(memory: &GuestMemoryMmap) {
    advise(memory, libc::MADV_DONTFORK, "MADV_DONTFORK");
}

/// `madvise(advice)` over every region of `memory`. Best effort: a refused advice is
/// logged, and RAM works as before.
fn advise(memory: &GuestMemoryMmap, advice: libc::c_int, name: &str) {
    for region in memory.iter() {
        let (addr, len) = (region.as_ptr(), region.len() as usize);
        // SAFETY: the range is exactly one mapping this memory owns; the advices given
        // here (huge pages, no read-ahead, not copied into forks) change how the
        // kernel backs, loads or forks it, never its contents.
        let rc = unsafe { libc::madvise(addr.cast(), len, advice) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            log::debug!("madvise({name}) of guest RAM at {addr:p}: {e}");
        }
    }
}

/// `mib` MiB of guest RAM backed by a memfd.
fn create_memfd(mib: u64) -> Result<GuestRam, MemoryError> {
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
    Ok(GuestRam {
        memory,
        backing: Backing::Memfd(file),
    })
}

/// Map a snapshot's memory file of `mib` MiB as guest RAM, privately: nothing is read
/// now, pages load on first touch, and writes never reach the file.
pub fn map_snapshot(file: File, mib: u64) -> Result<GuestRam, MemoryError> {
    let size = validate_size(mib, host_ram_mib())?;
    let actual = file
        .metadata()
        .map_err(|source| MemoryError::Memfd { mib, source })?
        .len();
    if actual != size {
        return Err(MemoryError::FileSize { mib, actual });
    }
    let file = Arc::new(file);
    let mut offset = 0;
    let mut regions = Vec::new();
    for (addr, len) in ram_ranges(size) {
        let len_usize = usize::try_from(len).map_err(|_| MemoryError::FileSize { mib, actual })?;
        let mapping = MmapRegionBuilder::new(len_usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .with_file_offset(FileOffset::from_arc(file.clone(), offset))
            .build()
            .map_err(|source| MemoryError::MapFile { mib, source })?;
        let region =
            GuestRegionMmap::new(mapping, addr).ok_or(MemoryError::FileSize { mib, actual })?;
        regions.push(region);
        offset += len;
    }
    let memory = GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Regions {
        mib,
        message: e.to_string(),
    })?;
    keep_out_of_forks(&memory);
    Ok(GuestRam {
        memory,
        backing: Backing::Snapshot(file),
    })
}

/// Drops the pages of `file` that the host's page cache holds and no process maps
/// (`POSIX_FADV_DONTNEED`), so that each page is read from the file on first touch.
/// Best effort: pages other VMs map stay cached.
pub fn drop_cached_pages(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: plain system call on a descriptor this function borrows; it changes
    // only the page cache's contents, never the file's.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        log::debug!("posix_fadvise(DONTNEED) of guest memory: error {rc}");
    }
}

/// Turns read-ahead off for every region of `memory` (`MADV_RANDOM`): a page the
/// guest touches is then read on its own, and the kernel's fault-around (which maps
/// the cached neighbours of a faulting page too) finds no neighbours cached that the
/// guest did not touch itself. With [`drop_cached_pages`] first, the VMM's page
/// tables then hold exactly the pages its guest touched: what a working set records.
/// Best effort: a failure only makes that record larger.
pub fn load_pages_singly(memory: &GuestMemoryMmap) {
    advise(memory, libc::MADV_RANDOM, "MADV_RANDOM");
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

    /// The `VmFlags` of the mapping that holds `addr`, from `/proc/self/smaps`.
    fn vm_flags(addr: u64) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let range = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'));
            if let Some((start, end)) = range {
                if let (Ok(start), Ok(end)) =
                    (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
                {
                    inside = (start..end).contains(&addr);
                    continue;
                }
            }
            if inside {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return flags.to_string();
                }
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[test]
    fn private_ram_is_anonymous_and_shared_ram_a_memfd_both_advised_huge() {
        let thp = std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists();
        for (sharing, memfd) in [(Sharing::Private, false), (Sharing::WithDaemons, true)] {
            let ram = create(64, sharing).unwrap();
            // The variant is the backing, and a memfd's file comes with it.
            match &ram.backing {
                Backing::Anonymous => assert!(!memfd, "{sharing:?}"),
                Backing::Memfd(_) => assert!(memfd, "{sharing:?}"),
                Backing::Snapshot(_) => panic!("{sharing:?}: a new RAM is no snapshot"),
            }
            let region = ram.memory.iter().next().unwrap();
            let flags = vm_flags(region.as_ptr() as u64);
            // `hg`: MADV_HUGEPAGE took (a kernel without THP refuses it).
            assert_eq!(flags.contains(" hg"), thp, "{sharing:?}: {flags}");
            assert_eq!(flags.contains(" sh"), memfd, "{flags}");
            // `dc`: MADV_DONTFORK took.
            assert!(flags.contains(" dc"), "{sharing:?}: {flags}");
        }
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
    fn pages_loaded_singly_are_exactly_the_pages_touched() {
        use std::io::Write;
        use vm_memory::Bytes;
        // On the repository's filesystem: a disk one, where the page cache can be
        // dropped (on tmpfs the file's pages are always cached, and the kernel maps
        // cached neighbours of a fault whatever the advice).
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("memory");
        let pages = 64u64;
        let mut file = File::create(&path).unwrap();
        file.write_all(&vec![0x5a; pages as usize * 4096]).unwrap();
        file.sync_all().unwrap();
        let file = File::open(&path).unwrap();
        drop_cached_pages(&file);
        let mapping: vm_memory::MmapRegion = MmapRegionBuilder::new(pages as usize * 4096)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .with_file_offset(FileOffset::new(file, 0))
            .build()
            .unwrap();
        let region = GuestRegionMmap::new(mapping, GuestAddress(0)).unwrap();
        let memory = GuestMemoryMmap::from_regions(vec![region]).unwrap();
        load_pages_singly(&memory);
        for page in [5u64, 9, 20, 21] {
            let byte: u8 = memory.read_obj(GuestAddress(page * 4096 + 7)).unwrap();
            assert_eq!(byte, 0x5a);
        }
        // What the working-set recorder reads of this process: only those pages.
        let set = crate::snapshot::working_set::record(std::process::id(), &path).unwrap();
        assert_eq!(set.ranges, [(5, 1), (9, 1), (20, 2)]);
        assert!(set.written.is_empty());
    }

    #[test]
    fn shared_memory_is_backed_by_one_memfd_of_the_full_size() {
        let ram = create(64, Sharing::WithDaemons).unwrap();
        let Backing::Memfd(file) = ram.backing else {
            panic!("RAM shared with daemons is a memfd");
        };
        assert_eq!(file.metadata().unwrap().len(), 64 << 20);
        assert_eq!(ram.memory.num_regions(), 1);
    }
}
