//! Resident memory of this process split into guest RAM and the VMM's own, from
//! `/proc/self/smaps`: every mapping that overlaps a guest RAM region is guest RAM,
//! whatever backs it. A boot's RAM is anonymous (`RssAnon`; with shared folders a
//! shared memfd, `RssShmem`), but a restore maps the snapshot's memory file privately:
//! pages the guest only read are file pages (`RssFile`) and pages it wrote, or the
//! working set copied ahead, are private copies (`RssAnon`). Counting by mapping
//! instead of by kind keeps all of them out of the VMM's figure. (Where the memory
//! file, or the husk binary, lies on a tmpfs, as in the KVM test host, its pages count
//! as `RssShmem` instead: another reason not to count by kind.)
//!
//! The VMM's own resident memory is mostly the husk binary's text and read-only data:
//! file pages in the page cache, shared by every process running that binary. What
//! each VMM adds by itself is its anonymous memory (heap, stacks, relocated and written
//! data), counted apart as [`RssSplit::vmm_anon_kib`].

use std::ops::Range;

/// Resident KiB of the mappings overlapping `guest` (host address ranges of guest RAM)
/// and of every other mapping, from the text of an `smaps` file.
pub fn split(smaps: &str, guest: &[Range<u64>]) -> RssSplit {
    let mut split = RssSplit::default();
    let mut in_guest = false;
    for line in smaps.lines() {
        if let Some(range) = mapping_range(line) {
            in_guest = guest
                .iter()
                .any(|g| g.start < range.end && range.start < g.end);
        } else if let Some(kib) = field_kib(line, "Rss:") {
            if in_guest {
                split.guest_kib += kib;
            } else {
                split.vmm_kib += kib;
            }
        } else if let Some(kib) = field_kib(line, "Anonymous:") {
            if !in_guest {
                split.vmm_anon_kib += kib;
            }
        }
    }
    split
}

/// Resident memory by owner, in KiB.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RssSplit {
    /// Guest RAM's mappings.
    pub guest_kib: u64,
    /// Everything else: the VMM's code, heap, stacks, buffers.
    pub vmm_kib: u64,
    /// The anonymous part of `vmm_kib`: memory no other process shares.
    pub vmm_anon_kib: u64,
}

/// The address range of a mapping's header line (`start-end perms offset dev inode
/// [path]`), or `None` for a field line.
fn mapping_range(line: &str) -> Option<Range<u64>> {
    let first = line.split_whitespace().next()?;
    let (start, end) = first.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    Some(start..end)
}

/// The value of a `Key:   123 kB` line.
fn field_kib(line: &str, key: &str) -> Option<u64> {
    line.strip_prefix(key)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0100000 r-xp 00000000 08:01 42    /usr/bin/husk
Size:               1024 kB
Rss:                 900 kB
Pss:                 900 kB
7f0000000000-7f0010000000 rw-p 00000000 08:01 77    /snap/memory
Size:             262144 kB
Rss:               16384 kB
Anonymous:          4096 kB
7f0010000000-7f0010021000 rw-p 00000000 00:00 0
Size:                132 kB
Rss:                 100 kB
Anonymous:           100 kB
VmFlags: rd wr mr mw me ac
";

    /// One guest range (an array of one `a..b` reads like a range of numbers).
    fn range(start: u64, end: u64) -> Range<u64> {
        Range { start, end }
    }

    #[test]
    fn a_private_file_mapping_of_guest_ram_counts_as_guest_with_its_copies() {
        let guest = [range(0x7f00_0000_0000, 0x7f00_1000_0000)];
        let split = split(SMAPS, &guest);
        assert_eq!(
            split,
            RssSplit {
                guest_kib: 16384,
                vmm_kib: 1000,
                vmm_anon_kib: 100,
            }
        );
    }

    #[test]
    fn every_mapping_a_guest_range_overlaps_counts_as_guest() {
        let guest = [range(0x7f00_0800_0000, 0x7f00_1000_0001)];
        assert_eq!(split(SMAPS, &guest).guest_kib, 16384 + 100);
    }

    #[test]
    fn without_guest_regions_everything_is_the_vmm() {
        let split = split(SMAPS, &[]);
        assert_eq!(
            (split.vmm_kib, split.vmm_anon_kib),
            (900 + 16384 + 100, 4096 + 100)
        );
    }

    #[test]
    fn garbage_gives_zeroes() {
        assert_eq!(split("nonsense\n-\nRss: x kB", &[]), RssSplit::default());
    }
}
