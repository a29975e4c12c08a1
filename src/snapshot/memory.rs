//! Writing guest RAM to a snapshot's memory file, sparsely: the file has the RAM's size,
//! and only pages holding something other than zeros are written, so never-touched and
//! zeroed pages stay holes (they take no disk, and read back as zeros when mapped).
//!
//! RAM on a memfd is read through the file with `SEEK_DATA`/`SEEK_HOLE`, which skips
//! pages the guest never touched without faulting them in. Anonymous RAM and RAM
//! restored from a snapshot are read through their mapping (an untouched anonymous page
//! reads as the shared zero page, an untouched restored one comes from the old file's
//! page cache).
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use vm_memory::{Address, Bytes, GuestMemoryBackend, GuestMemoryRegion};

use super::files::seek;
use crate::memory::{Backing, GuestRam};

/// Bytes read and written per step.
const CHUNK: usize = 1 << 20;
/// The unit a hole is made of.
const PAGE: usize = 4096;

/// What a memory file write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Guest RAM in bytes (the file's length).
    pub total: u64,
    /// Bytes of non-zero pages written.
    pub written: u64,
}

fn is_zero(page: &[u8]) -> bool {
    page.chunks_exact(16)
        .all(|c| u128::from_ne_bytes(c.try_into().expect("16 bytes")) == 0)
}

/// Write the non-zero pages of `data` (which sits at `offset` of RAM) into `out`.
fn write_pages(out: &File, offset: u64, data: &[u8], stats: &mut MemoryStats) -> io::Result<()> {
    for (i, page) in data.chunks(PAGE).enumerate() {
        if !is_zero(page) {
            out.write_all_at(page, offset + (i * PAGE) as u64)?;
            stats.written += page.len() as u64;
        }
    }
    Ok(())
}

/// Write `ram` to a new file at `path` (which must not exist); with `durable`, the file
/// is synced before this returns.
pub fn write(ram: &GuestRam, path: &Path, durable: bool) -> io::Result<MemoryStats> {
    let out = File::options().write(true).create_new(true).open(path)?;
    let total: u64 = ram.memory.iter().map(|r| r.len()).sum();
    out.set_len(total)?;
    let mut stats = MemoryStats { total, written: 0 };
    let mut buf = vec![0u8; CHUNK];
    match &ram.backing {
        Backing::Memfd(memfd) => write_from_memfd(memfd, total, &out, &mut buf, &mut stats)?,
        Backing::Anonymous => {
            // Untouched chunks are skipped when this process's page map can be read.
            let pagemap = File::open("/proc/self/pagemap").ok();
            write_from_mapping(ram, pagemap.as_ref(), &out, &mut buf, &mut stats)?;
        }
        Backing::Snapshot(_) => write_from_mapping(ram, None, &out, &mut buf, &mut stats)?,
    }
    if durable {
        out.sync_all()?;
    }
    Ok(stats)
}

/// The memfd holds RAM at the same offsets as the memory file will.
fn write_from_memfd(
    memfd: &File,
    total: u64,
    out: &File,
    buf: &mut [u8],
    stats: &mut MemoryStats,
) -> io::Result<()> {
    let mut at = 0;
    while at < total {
        let Some(start) = seek(memfd, at, libc::SEEK_DATA)? else {
            break;
        };
        let end = seek(memfd, start, libc::SEEK_HOLE)?
            .unwrap_or(total)
            .min(total);
        let mut pos = start;
        while pos < end {
            let n = usize::try_from(end - pos).unwrap_or(CHUNK).min(buf.len());
            memfd.read_exact_at(&mut buf[..n], pos)?;
            write_pages(out, pos, &buf[..n], stats)?;
            pos += n as u64;
        }
        at = end;
    }
    Ok(())
}

/// `/proc/self/pagemap` bits of a page: present in RAM, swapped out.
const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;

/// Whether any of the `pages` pages at `addr` of this process is present or swapped
/// out, from its `pagemap`: an anonymous page that is neither was never touched (or
/// was given back) and reads as zeros. True when the map cannot be read.
fn any_touched(pagemap: &File, addr: u64, pages: usize) -> bool {
    let mut entries = vec![0u8; pages * 8];
    if pagemap
        .read_exact_at(&mut entries, addr / PAGE as u64 * 8)
        .is_err()
    {
        return true;
    }
    entries.chunks_exact(8).any(|e| {
        let entry = u64::from_le_bytes(e.try_into().expect("8 bytes"));
        entry & (PRESENT | SWAPPED) != 0
    })
}

/// RAM read region by region through the guest's view: anonymous RAM (with its
/// `pagemap`, whose untouched chunks are skipped), or a snapshot's memory file mapped.
fn write_from_mapping(
    ram: &GuestRam,
    pagemap: Option<&File>,
    out: &File,
    buf: &mut [u8],
    stats: &mut MemoryStats,
) -> io::Result<()> {
    let mut file_offset = 0u64;
    for region in ram.memory.iter() {
        let len = region.len();
        let mut done = 0u64;
        while done < len {
            let n = usize::try_from(len - done).unwrap_or(CHUNK).min(buf.len());
            let addr = region.start_addr().unchecked_add(done);
            let host = region.as_ptr() as u64 + done;
            if pagemap.is_some_and(|map| !any_touched(map, host, n.div_ceil(PAGE))) {
                done += n as u64;
                continue;
            }
            ram.memory
                .read_slice(&mut buf[..n], addr)
                .map_err(io::Error::other)?;
            write_pages(out, file_offset + done, &buf[..n], stats)?;
            done += n as u64;
        }
        file_offset += len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    use crate::memory::Sharing;

    #[test]
    fn only_non_zero_pages_are_written_and_the_file_reads_back_the_same() {
        // Anonymous RAM (read through the mapping) and a memfd (through the file).
        for sharing in [Sharing::Private, Sharing::WithDaemons] {
            let ram = crate::memory::create(32, sharing).unwrap();
            ram.memory
                .write_obj(0xdead_beef_u32, GuestAddress(0x1234))
                .unwrap();
            ram.memory.write_obj(7u8, GuestAddress(0x1ff_f000)).unwrap();
            ram.memory.write_obj(0u64, GuestAddress(0x50_0000)).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("memory");
            let stats = write(&ram, &path, false).unwrap();
            assert_eq!(
                stats,
                MemoryStats {
                    total: 32 << 20,
                    written: 2 * PAGE as u64
                },
                "{sharing:?}"
            );
            let back = crate::memory::map_snapshot(File::open(&path).unwrap(), 32).unwrap();
            let word: u32 = back.memory.read_obj(GuestAddress(0x1234)).unwrap();
            let byte: u8 = back.memory.read_obj(GuestAddress(0x1ff_f000)).unwrap();
            assert_eq!((word, byte), (0xdead_beef, 7), "{sharing:?}");
        }
    }

    #[test]
    fn untouched_anonymous_ram_is_skipped_not_faulted_in() {
        let ram = crate::memory::create(32, Sharing::Private).unwrap();
        ram.memory.write_obj(9u8, GuestAddress(0x1234)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let stats = write(&ram, &path, false).unwrap();
        assert_eq!(stats.written, PAGE as u64);
        let pagemap = File::open("/proc/self/pagemap").unwrap();
        let base = ram.memory.iter().next().unwrap().as_ptr() as u64;
        // Reading the untouched half would have mapped the zero page there.
        assert!(!any_touched(&pagemap, base + (16 << 20), 4096));
        assert!(any_touched(&pagemap, base, 2));
        let back = crate::memory::map_snapshot(File::open(&path).unwrap(), 32).unwrap();
        assert_eq!(back.memory.read_obj::<u8>(GuestAddress(0x1234)).unwrap(), 9);
    }

    #[test]
    fn a_restored_ram_is_written_with_its_own_changes() {
        let ram = crate::memory::create(32, Sharing::Private).unwrap();
        ram.memory.write_obj(1u8, GuestAddress(0)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("first");
        write(&ram, &first, false).unwrap();
        let restored = crate::memory::map_snapshot(File::open(&first).unwrap(), 32).unwrap();
        restored
            .memory
            .write_obj(2u8, GuestAddress(0x3000))
            .unwrap();
        let second = dir.path().join("second");
        let stats = write(&restored, &second, false).unwrap();
        assert_eq!(stats.written, 2 * PAGE as u64);
        let back = crate::memory::map_snapshot(File::open(&second).unwrap(), 32).unwrap();
        let bytes: [u8; 2] = [
            back.memory.read_obj(GuestAddress(0)).unwrap(),
            back.memory.read_obj(GuestAddress(0x3000)).unwrap(),
        ];
        assert_eq!(bytes, [1, 2]);
        // The first file is untouched by the restored VM's writes.
        let first_again = crate::memory::map_snapshot(File::open(&first).unwrap(), 32).unwrap();
        assert_eq!(
            first_again
                .memory
                .read_obj::<u8>(GuestAddress(0x3000))
                .unwrap(),
            0
        );
    }

    #[test]
    fn an_existing_file_is_not_overwritten() {
        let ram = crate::memory::create(32, Sharing::Private).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        std::fs::write(&path, b"keep").unwrap();
        assert!(write(&ram, &path, false).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"keep");
    }
}
