//! The guest's physical memory map as an e820 table, shared by the PVH memmap and the
//! Linux zero page.

use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::layout::{EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory (the EBDA and the legacy BIOS/video hole).
pub const E820_RESERVED: u32 = 2;

/// One e820 memory range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// First guest physical address of the range.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The windows where guest RAM may be reported as usable: below the EBDA, from 1 MiB to
/// the MMIO gap, and above 4 GiB.
const RAM_WINDOWS: [(u64, u64); 3] = [
    (0, EBDA_START),
    (HIMEM_START, MMIO_GAP_START),
    (MMIO_GAP_END, u64::MAX),
];

/// Builds the e820 table for `mem`: RAM below the EBDA, the EBDA up to 1 MiB reserved,
/// RAM from 1 MiB up to the MMIO gap and RAM above 4 GiB, in address order.
pub fn e820_entries(mem: &GuestMemoryMmap) -> Vec<E820Entry> {
    let mut entries = Vec::new();
    for (window_start, window_end) in RAM_WINDOWS {
        for region in mem.iter() {
            let start = region.start_addr().raw_value().max(window_start);
            let end = region
                .start_addr()
                .raw_value()
                .saturating_add(region.len())
                .min(window_end);
            if start < end {
                entries.push(E820Entry {
                    addr: start,
                    size: end - start,
                    kind: E820_RAM,
                });
            }
        }
        if window_start == 0 && mem.address_in_range(vm_memory::GuestAddress(EBDA_START)) {
            entries.push(E820Entry {
                addr: EBDA_START,
                size: HIMEM_START - EBDA_START,
                kind: E820_RESERVED,
            });
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    const MIB: u64 = 1 << 20;

    #[test]
    fn small_memory_gives_low_ram_reserved_ebda_and_high_ram() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 128 << 20)]).expect("mmap");
        let entries = e820_entries(&mem);
        assert_eq!(
            entries,
            vec![
                E820Entry {
                    addr: 0,
                    size: EBDA_START,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: EBDA_START,
                    size: HIMEM_START - EBDA_START,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: HIMEM_START,
                    size: 127 * MIB,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn memory_across_the_gap_gives_ram_below_gap_and_above_4g() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), MMIO_GAP_START as usize),
            (GuestAddress(MMIO_GAP_END), 64 << 20),
        ])
        .expect("mmap");
        let entries = e820_entries(&mem);
        assert_eq!(entries.len(), 4);
        assert_eq!(
            entries[2],
            E820Entry {
                addr: HIMEM_START,
                size: MMIO_GAP_START - HIMEM_START,
                kind: E820_RAM
            }
        );
        assert_eq!(
            entries[3],
            E820Entry {
                addr: MMIO_GAP_END,
                size: 64 * MIB,
                kind: E820_RAM
            }
        );
    }
}
