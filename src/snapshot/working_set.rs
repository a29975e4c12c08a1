//! A snapshot's working set: the pages of its memory file that a restored guest touched
//! on its way from the restore to a finished workload, recorded once from a real run
//! and kept beside the snapshot. A later restore maps them into the guest before its
//! first instruction (see `vmm::prefault`), so the guest does not stop on a nested
//! page fault for each of them.
//!
//! Recorded from outside the VMM, which is jailed and may not write the snapshot's
//! folder: its `/proc/PID/maps` names the mappings of the memory file (by device and
//! inode) and `/proc/PID/pagemap` says which of their pages are present. Only pages
//! that hold data in the file count: a page the guest took from its free memory is a
//! hole in the file, and mapping it ahead of time would only fill the page cache with
//! zeros.
//!
//! Pages the run wrote are kept apart (`written`): their mappings were private copies
//! in the VMM (`pagemap` says "not a file page"), holes of the file included (pages
//! the guest took from its free memory). A restore copies them ahead too, so the guest
//! does not stop for a copy-on-write fault on each either.
//!
//! File format (little endian): the magic `HUSKWSET`, a u32 version, a u32 count of
//! read ranges, a u32 count of written ranges, then those ranges of (first page,
//! pages) as two u64, each list sorted and disjoint.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::files::seek;

/// The file's name in a snapshot's folder.
pub const FILE: &str = "working-set";
const MAGIC: &[u8; 8] = b"HUSKWSET";
const VERSION: u32 = 2;
/// Most ranges a file may hold.
const MAX_RANGES: usize = 1 << 16;
/// Most pages a working set covers (64 MiB; a container's start from a template
/// touches about 13 MiB): a sandbox whose guest touched more ran a workload, not a start,
/// and records nothing (see [`record`]).
pub const MAX_PAGES: u64 = 1 << 14;
/// Most written pages a working set copies ahead (16 MiB; a container's start writes
/// about 4): more, and the recorded sandbox ran a workload, and nothing is recorded.
pub const MAX_WRITTEN: u64 = 1 << 12;
/// Guest pages are 4 KiB in the memory file.
pub const PAGE: u64 = 4096;
/// `/proc/PID/pagemap`: the page is present in RAM.
const PRESENT: u64 = 1 << 63;
/// `/proc/PID/pagemap`: a file page (or shared anonymous); clear for a private copy.
const FILE_PAGE: u64 = 1 << 61;
/// The header: magic, version, two counts.
const HEADER: usize = 20;

/// Page ranges of a memory file, sorted and disjoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkingSet {
    /// Pages read: (first page, pages).
    pub ranges: Vec<(u64, u64)>,
    /// Pages written (private copies): (first page, pages).
    pub written: Vec<(u64, u64)>,
}

/// Why a working-set file was not used.
#[derive(Debug, thiserror::Error)]
pub enum WorkingSetError {
    /// It could not be read.
    #[error("cannot read {FILE}")]
    Io(#[from] io::Error),
    /// It is not a working-set file of this version, or its ranges are not sane.
    #[error("{FILE} is not valid: {0}")]
    Invalid(String),
}

impl WorkingSet {
    /// Pages covered, read and written.
    pub fn pages(&self) -> u64 {
        self.ranges.iter().chain(&self.written).map(|r| r.1).sum()
    }

    /// Pages written.
    pub fn written_pages(&self) -> u64 {
        self.written.iter().map(|r| r.1).sum()
    }

    /// Build from sorted page numbers read and written.
    pub fn from_pages(
        read: impl IntoIterator<Item = u64>,
        written: impl IntoIterator<Item = u64>,
    ) -> Self {
        Self {
            ranges: merge(read),
            written: merge(written),
        }
    }

    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 16 * self.ranges.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.ranges.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.written.len() as u32).to_le_bytes());
        for (first, n) in self.ranges.iter().chain(&self.written) {
            out.extend_from_slice(&first.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }

    /// Decode and check a file of a memory file of `file_pages` pages.
    pub fn decode(bytes: &[u8], file_pages: u64) -> Result<Self, WorkingSetError> {
        let bad = |what: String| WorkingSetError::Invalid(what);
        let header = bytes
            .get(..HEADER)
            .ok_or_else(|| bad("shorter than its header".into()))?;
        if &header[..8] != MAGIC {
            return Err(bad("no HUSKWSET magic".into()));
        }
        let word = |at: usize| {
            u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        let (version, read, written) = (word(8), word(12) as usize, word(16) as usize);
        if version != VERSION {
            return Err(bad(format!("version {version}, this husk reads {VERSION}")));
        }
        let count = read.saturating_add(written);
        if count > MAX_RANGES || bytes.len() != HEADER + 16 * count {
            return Err(bad(format!("{count} ranges in {} bytes", bytes.len())));
        }
        let body = &bytes[HEADER..];
        let (read_bytes, written_bytes) = body.split_at(16 * read);
        let ranges = decode_ranges(read_bytes, file_pages)?;
        let written = decode_ranges(written_bytes, file_pages)?;
        let set = Self { ranges, written };
        if set.pages() > MAX_PAGES || set.written_pages() > MAX_WRITTEN {
            return Err(bad(format!(
                "more than {MAX_PAGES} pages, or {MAX_WRITTEN} written"
            )));
        }
        Ok(set)
    }

    /// Read `dir`'s working set for a memory file of `file_pages` pages; `Ok(None)`
    /// when it has none.
    pub fn read(dir: &Path, file_pages: u64) -> Result<Option<Self>, WorkingSetError> {
        match std::fs::read(dir.join(FILE)) {
            Ok(bytes) => Self::decode(&bytes, file_pages).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Write it into `dir` under a temporary name, then rename: a reader sees the whole
    /// file or none. An existing one (another run was quicker) is kept.
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        let target = dir.join(FILE);
        if target.exists() {
            return Ok(());
        }
        let temp = dir.join(format!(".{FILE}.{}", std::process::id()));
        std::fs::write(&temp, self.encode())?;
        std::fs::rename(&temp, &target).inspect_err(|_| drop(std::fs::remove_file(&temp)))
    }
}

/// Sorted page numbers as ranges, neighbours merged, repeats dropped.
fn merge(pages: impl IntoIterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for page in pages {
        match ranges.last_mut() {
            Some((first, n)) if *first + *n == page => *n += 1,
            Some((first, n)) if page < *first + *n => {}
            _ => ranges.push((page, 1)),
        }
    }
    ranges
}

/// Ranges of 16 bytes each, checked sorted, disjoint, non-empty and inside a memory
/// file of `file_pages` pages.
fn decode_ranges(bytes: &[u8], file_pages: u64) -> Result<Vec<(u64, u64)>, WorkingSetError> {
    let mut ranges = Vec::with_capacity(bytes.len() / 16);
    let mut end = 0u64;
    for chunk in bytes.chunks_exact(16) {
        let mut half = [0u8; 8];
        half.copy_from_slice(&chunk[..8]);
        let first = u64::from_le_bytes(half);
        half.copy_from_slice(&chunk[8..]);
        let n = u64::from_le_bytes(half);
        let last = first.checked_add(n).filter(|&e| n > 0 && e <= file_pages);
        let Some(range_end) = last.filter(|_| first >= end) else {
            return Err(WorkingSetError::Invalid(format!(
                "range of {n} pages at page {first} (memory file: {file_pages} pages)"
            )));
        };
        end = range_end;
        ranges.push((first, n));
    }
    Ok(ranges)
}

/// The pages of `memory` (a snapshot's memory file) that process `pid`, or the child
/// it runs the VM in (a jailed VMM's), has present in its mappings of it and that hold
/// data in the file; none when they are more than [`MAX_PAGES`] (a later, shorter
/// sandbox records them).
pub fn record(pid: u32, memory: &Path) -> io::Result<WorkingSet> {
    let file = File::open(memory)?;
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"));
    let pids = std::iter::once(pid).chain(
        children
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect::<Vec<u32>>(),
    );
    let mut present = Vec::new();
    for pid in pids {
        present_pages(pid, &file, &mut present)?;
    }
    // A page mapped by both processes counts as written if either copied it.
    present.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    present.dedup_by_key(|(page, _)| *page);
    let file_pages = file.metadata()?.len() / PAGE;
    let (mut read, mut written) = (Vec::new(), Vec::new());
    for (page, copied) in present.into_iter().filter(|&(p, _)| p < file_pages) {
        if copied {
            written.push(page);
        } else if holds_data(&file, page)? {
            read.push(page);
        }
        if (read.len() + written.len()) as u64 > MAX_PAGES || written.len() as u64 > MAX_WRITTEN {
            return Ok(WorkingSet::default());
        }
    }
    Ok(WorkingSet::from_pages(read, written))
}

/// Add the file pages `pid` has present in its mappings of `file` to `present`, each
/// with whether the mapping is a private copy (the page was written).
fn present_pages(pid: u32, file: &File, present: &mut Vec<(u64, bool)>) -> io::Result<()> {
    let meta = file.metadata()?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mut pagemap = File::open(format!("/proc/{pid}/pagemap"))?;
    for mapping in maps.lines().filter_map(parse_maps_line) {
        if mapping.dev != (libc::major(meta.dev()), libc::minor(meta.dev()))
            || mapping.inode != meta.ino()
        {
            continue;
        }
        let pages = (mapping.end - mapping.start) / PAGE;
        pagemap.seek(SeekFrom::Start(mapping.start / PAGE * 8))?;
        let mut entries = vec![0u8; 8 * 4096];
        let mut done = 0;
        while done < pages {
            let n = (pages - done).min(4096);
            let chunk = &mut entries[..(n * 8) as usize];
            pagemap.read_exact(chunk)?;
            for (i, entry) in chunk.chunks_exact(8).enumerate() {
                let mut word = [0u8; 8];
                word.copy_from_slice(entry);
                let entry = u64::from_le_bytes(word);
                if entry & PRESENT != 0 {
                    let page = mapping.offset / PAGE + done + i as u64;
                    present.push((page, entry & FILE_PAGE == 0));
                }
            }
            done += n;
        }
    }
    Ok(())
}

/// Whether the file has data (not a hole) at `page`.
fn holds_data(file: &File, page: u64) -> io::Result<bool> {
    let at = page * PAGE;
    Ok(seek(file, at, libc::SEEK_DATA)?.is_some_and(|data| data < at + PAGE))
}

/// One line of `/proc/PID/maps`, the parts a working set needs.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: u64,
    end: u64,
    offset: u64,
    dev: (u32, u32),
    inode: u64,
}

/// `start-end perms offset major:minor inode [path]`, all numbers hex but the inode.
fn parse_maps_line(line: &str) -> Option<Mapping> {
    let mut fields = line.split_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let _perms = fields.next()?;
    let offset = fields.next()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let inode = fields.next()?.parse().ok()?;
    let hex = |s: &str| u64::from_str_radix(s, 16).ok();
    let mapping = Mapping {
        start: hex(start)?,
        end: hex(end)?,
        offset: hex(offset)?,
        dev: (
            u32::from_str_radix(major, 16).ok()?,
            u32::from_str_radix(minor, 16).ok()?,
        ),
        inode,
    };
    (mapping.end > mapping.start && mapping.start.is_multiple_of(PAGE)).then_some(mapping)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pages_merge_into_ranges() {
        let set = WorkingSet::from_pages([1, 2, 3, 7, 9, 10], [4, 5, 5]);
        assert_eq!(set.ranges, vec![(1, 3), (7, 1), (9, 2)]);
        assert_eq!(set.written, vec![(4, 2)]);
        assert_eq!((set.pages(), set.written_pages()), (8, 2));
    }

    #[test]
    fn a_file_round_trips() {
        let set = WorkingSet::from_pages([0, 1, 5, 6, 7, 100], [2, 3, 50]);
        assert_eq!(WorkingSet::decode(&set.encode(), 101).unwrap(), set);
    }

    #[test]
    fn ranges_past_the_memory_file_are_refused() {
        let set = WorkingSet::from_pages([0, 100], []);
        let e = WorkingSet::decode(&set.encode(), 100).unwrap_err();
        assert!(e.to_string().contains("at page 100"), "{e}");
        let set = WorkingSet::from_pages([0], [100]);
        let e = WorkingSet::decode(&set.encode(), 100).unwrap_err();
        assert!(e.to_string().contains("at page 100"), "{e}");
    }

    #[test]
    fn overlapping_or_unsorted_ranges_are_refused() {
        let set = WorkingSet {
            ranges: vec![(10, 5), (12, 1)],
            written: Vec::new(),
        };
        assert!(WorkingSet::decode(&set.encode(), 100).is_err());
        let set = WorkingSet {
            ranges: Vec::new(),
            written: vec![(10, 0)],
        };
        assert!(WorkingSet::decode(&set.encode(), 100).is_err());
    }

    #[test]
    fn a_foreign_or_truncated_file_is_refused() {
        let bytes = WorkingSet::from_pages([3], [4]).encode();
        assert!(WorkingSet::decode(&bytes[..bytes.len() - 1], 10).is_err());
        assert!(WorkingSet::decode(b"HUSKSNAP\x01\0\0\0\0\0\0\0", 10).is_err());
        let mut other = bytes.clone();
        other[8] = 1;
        let e = WorkingSet::decode(&other, 10).unwrap_err();
        assert!(e.to_string().contains("version 1"), "{e}");
    }

    #[test]
    fn maps_lines_parse() {
        let line = "7f12a000-7f12c000 rw-p 00003000 fd:01 1234   /tmp/x/memory";
        assert_eq!(
            parse_maps_line(line),
            Some(Mapping {
                start: 0x7f12a000,
                end: 0x7f12c000,
                offset: 0x3000,
                dev: (0xfd, 1),
                inode: 1234,
            })
        );
        assert_eq!(parse_maps_line("garbage"), None);
        assert_eq!(parse_maps_line("7f12c000-7f12a000 rw-p 0 00:00 0"), None);
    }

    #[test]
    fn this_process_present_pages_of_a_sparse_file_are_recorded() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        file.set_len(64 * PAGE).unwrap();
        // The kernel maps up to 16 cached neighbours of a faulting page ("fault
        // around"), so the untouched data page is 16 pages away from the touched ones.
        for page in [2u64, 3, 40] {
            file.write_all_at(&[7u8; 4096], page * PAGE).unwrap();
        }
        file.sync_all().unwrap();
        let map = memmap_private(&file, 64 * PAGE as usize);
        // Read pages 2, 3 (data) and 20 (a hole): the hole is left out. Write 60 (a
        // hole) and 40 (data): both are private copies now, recorded as written.
        let touched: u64 = [2usize, 3, 20]
            .iter()
            .map(|&p| u64::from(map[p * 4096]))
            .sum();
        assert_eq!(touched, 14);
        map[60 * 4096] = 1;
        map[40 * 4096] = 1;
        let set = record(std::process::id(), &path).unwrap();
        assert_eq!(set.ranges, vec![(2, 2)]);
        assert_eq!(set.written, vec![(40, 1), (60, 1)]);
    }

    #[allow(unsafe_code, reason = "a test mapping of a file")]
    fn memmap_private(file: &File, len: usize) -> &'static mut [u8] {
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh private mapping of an open file, leaked for the test's
        // duration; nothing else maps or truncates it, and writes stay in this process.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            std::slice::from_raw_parts_mut(p.cast::<u8>(), len)
        }
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = WorkingSet::decode(&bytes, 1 << 20);
        }

        #[test]
        fn any_page_set_round_trips(
            mut pages in proptest::collection::vec(0u64..5000, 0..300),
            mut written in proptest::collection::vec(0u64..5000, 0..300),
        ) {
            pages.sort_unstable();
            pages.dedup();
            written.sort_unstable();
            written.dedup();
            let set = WorkingSet::from_pages(pages.iter().copied(), written.iter().copied());
            prop_assert_eq!(set.pages(), (pages.len() + written.len()) as u64);
            prop_assert_eq!(WorkingSet::decode(&set.encode(), 5000).unwrap(), set);
        }
    }
}
