//! What a `husk vmm` process keeps resident of its own (guest RAM aside) once it is
//! serving. Start-up leaves freed heap behind, and maps pages of the binary that only
//! start-up runs (argument parsing, the jail, the syscall filters, later the guest's
//! boot); [`release_startup_pages`] gives them back. See docs/design.md, "Memory".
#![allow(
    unsafe_code,
    reason = "malloc_trim, madvise and the auxiliary vector have no safe std wrapper"
)]

use libc::Elf64_Phdr;

/// Base pages on x86-64; ranges are rounded inward to them.
const PAGE: usize = 4096;

/// A page-aligned range of this process's address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    start: usize,
    len: usize,
}

/// Hand back what start-up left resident: free heap memory to the kernel
/// (`malloc_trim`), and the binary's read-only pages (code and constants), unmapped
/// from this process alone. Those stay in the page cache, shared with every process
/// running the binary; a page this process runs again maps back in on its first touch,
/// a minor fault without I/O. Writable and relocated (RELRO) pages are left alone:
/// they hold this process's own data.
pub fn release_startup_pages() {
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe { libc::malloc_trim(0) };
    for range in read_only_segments() {
        // SAFETY: the range lies inside a read-only segment of the binary (no
        // writable or relocated page, see `read_only`), a private file mapping never
        // written: its pages read back the same from the file, so dropping them loses
        // nothing and no Rust object lives there.
        let done = unsafe {
            libc::madvise(
                range.start as *mut libc::c_void,
                range.len,
                libc::MADV_DONTNEED,
            )
        };
        if done != 0 {
            let error = std::io::Error::last_os_error();
            log::debug!("vmm: cannot release {range:x?}: {error}");
        }
    }
}

/// The binary's read-only segments, from its program headers in memory.
fn read_only_segments() -> Vec<Range> {
    // SAFETY: getauxval reads the auxiliary vector the kernel gave the process.
    let (at, count) = unsafe {
        (
            libc::getauxval(libc::AT_PHDR) as usize,
            libc::getauxval(libc::AT_PHNUM) as usize,
        )
    };
    if at == 0 || count == 0 {
        return Vec::new();
    }
    // SAFETY: AT_PHDR is the address of the program's AT_PHNUM program headers,
    // mapped read-only for the life of the process.
    let headers = unsafe { std::slice::from_raw_parts(at as *const Elf64_Phdr, count) };
    read_only(at, headers)
}

/// The loadable segments of `headers` that are never written, rounded inward to
/// whole pages, given that the headers themselves are at address `at` (so the load
/// bias is `at` less the PT_PHDR's address). None without a PT_PHDR, and none that
/// overlaps the RELRO range: those pages are written (relocated) before they are made
/// read-only.
fn read_only(at: usize, headers: &[Elf64_Phdr]) -> Vec<Range> {
    let Some(phdr) = headers.iter().find(|h| h.p_type == libc::PT_PHDR) else {
        return Vec::new();
    };
    let bias = at.wrapping_sub(phdr.p_vaddr as usize);
    let span = |h: &Elf64_Phdr| {
        let start = bias.wrapping_add(h.p_vaddr as usize);
        (start, start.saturating_add(h.p_memsz as usize))
    };
    let relro: Vec<(usize, usize)> = headers
        .iter()
        .filter(|h| h.p_type == libc::PT_GNU_RELRO)
        .map(span)
        .collect();
    headers
        .iter()
        .filter(|h| h.p_type == libc::PT_LOAD && h.p_flags & libc::PF_W == 0)
        .map(span)
        .filter(|&(start, end)| relro.iter().all(|&(s, e)| end <= s || e <= start))
        .filter_map(|(start, end)| {
            let start = start.div_ceil(PAGE) * PAGE;
            let end = end / PAGE * PAGE;
            (end > start).then_some(Range {
                start,
                len: end - start,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(p_type: u32, p_flags: u32, p_vaddr: u64, p_memsz: u64) -> Elf64_Phdr {
        Elf64_Phdr {
            p_type,
            p_flags,
            p_offset: 0,
            p_vaddr,
            p_paddr: p_vaddr,
            p_filesz: p_memsz,
            p_memsz,
            p_align: 0x1000,
        }
    }

    /// The layout of a static PIE: constants, code, RELRO, data.
    fn static_pie() -> Vec<Elf64_Phdr> {
        let (r, rx, rw) = (libc::PF_R, libc::PF_R | libc::PF_X, libc::PF_R | libc::PF_W);
        vec![
            header(libc::PT_PHDR, r, 0x40, 0x268),
            header(libc::PT_LOAD, r, 0, 0x15_5584),
            header(libc::PT_LOAD, rx, 0x15_65c0, 0x60_ced0),
            header(libc::PT_LOAD, rw, 0x76_4490, 0x2_9b70),
            header(libc::PT_LOAD, rw, 0x78_e250, 0x95d8),
            header(libc::PT_GNU_RELRO, r, 0x76_4490, 0x2_9b70),
        ]
    }

    #[test]
    fn only_whole_pages_of_the_read_only_segments_are_released() {
        let bias = 0x5555_0000_0000;
        let ranges = read_only(bias + 0x40, &static_pie());
        let expected = [
            Range {
                start: bias,
                len: 0x15_5000,
            },
            Range {
                start: bias + 0x15_7000,
                len: 0x76_3000 - 0x15_7000,
            },
        ];
        assert_eq!(ranges, expected);
    }

    #[test]
    fn a_read_only_segment_inside_relro_is_kept() {
        let mut headers = static_pie();
        headers.push(header(libc::PT_LOAD, libc::PF_R, 0x76_5000, 0x2000));
        let ranges = read_only(0x40, &headers);
        assert_eq!(ranges.len(), 2);
        assert!(ranges.iter().all(|r| r.start + r.len <= 0x76_3000));
    }

    #[test]
    fn without_a_phdr_header_nothing_is_released() {
        let headers: Vec<_> = static_pie()[1..].to_vec();
        assert!(read_only(0x40, &headers).is_empty());
    }
}
