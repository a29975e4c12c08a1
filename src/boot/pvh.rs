//! PVH boot: loads an ELF `vmlinux` through its Xen PVH entry note and writes the
//! `hvm_start_info`, the module list (the initrd) and the memory map.
//!
//! See <https://xenbits.xen.org/docs/unstable/misc/pvh.html> for the boot ABI.

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::e820::e820_entries;
use super::initrd::InitrdPlacement;
use crate::arch::x86_64::layout::{
    CMDLINE_START, HIMEM_START, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START,
    ZERO_PAGE_START,
};

/// `hvm_start_info.magic` ("xEn3" with the top bit set).
pub const HVM_START_MAGIC: u32 = 0x336e_c578;

/// Errors loading a PVH kernel or writing its start info.
#[derive(Debug, thiserror::Error)]
pub enum PvhError {
    /// linux-loader rejected the ELF file (truncated, corrupt, not x86_64, ...).
    #[error("cannot load ELF kernel {}", path.display())]
    Load {
        /// The kernel file.
        path: PathBuf,
        /// The loader's reason.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The ELF file has no `XEN_ELFNOTE_PHYS32_ENTRY` note.
    #[error("ELF kernel {} has no PVH entry note (build it with CONFIG_PVH=y)", path.display())]
    NoPvhEntry {
        /// The kernel file.
        path: PathBuf,
    },
    /// The memory map has more entries than fit before the zero page.
    #[error("PVH memory map has {0} entries, too many for its slot")]
    MemmapTooLarge(usize),
    /// Writing a boot structure into guest memory failed.
    #[error("cannot write PVH {what} at guest address {addr:#x}")]
    Write {
        /// Which structure.
        what: &'static str,
        /// Where.
        addr: u64,
        /// The guest memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// A loaded PVH kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PvhKernel {
    /// The 32-bit PVH entry point.
    pub entry: GuestAddress,
    /// First address past the kernel image (including its BSS).
    pub end: u64,
}

/// Loads the ELF kernel at its physical addresses and returns its PVH entry.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    kernel: &mut File,
    path: &Path,
) -> Result<PvhKernel, PvhError> {
    let loaded =
        Elf::load(mem, None, kernel, Some(GuestAddress(HIMEM_START))).map_err(|source| {
            PvhError::Load {
                path: path.to_path_buf(),
                source,
            }
        })?;
    match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok(PvhKernel {
            entry,
            end: loaded.kernel_end,
        }),
        _ => Err(PvhError::NoPvhEntry {
            path: path.to_path_buf(),
        }),
    }
}

/// Builds the `hvm_start_info` pointing at the command line, the module list
/// and the memory map at their fixed addresses.
pub fn start_info(memmap_entries: u32, initrd: Option<InitrdPlacement>) -> hvm_start_info {
    hvm_start_info {
        magic: HVM_START_MAGIC,
        version: 1,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: if initrd.is_some() {
            PVH_MODLIST_START
        } else {
            0
        },
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries,
        ..Default::default()
    }
}

/// Writes the start info, the module list and the memory map; returns the start info
/// address (the guest's RBX at entry).
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    initrd: Option<InitrdPlacement>,
) -> Result<GuestAddress, PvhError> {
    let memmap: Vec<hvm_memmap_table_entry> = e820_entries(mem)
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let slot = (ZERO_PAGE_START - PVH_MEMMAP_START) as usize;
    if memmap.len() * std::mem::size_of::<hvm_memmap_table_entry>() > slot {
        return Err(PvhError::MemmapTooLarge(memmap.len()));
    }
    let mut addr = PVH_MEMMAP_START;
    for entry in &memmap {
        write(mem, "memory map entry", addr, *entry)?;
        addr += std::mem::size_of::<hvm_memmap_table_entry>() as u64;
    }
    if let Some(initrd) = initrd {
        let module = hvm_modlist_entry {
            paddr: initrd.addr.0,
            size: initrd.size,
            ..Default::default()
        };
        write(mem, "module list", PVH_MODLIST_START, module)?;
    }
    let count = u32::try_from(memmap.len()).expect("checked against the slot size above");
    write(mem, "start info", PVH_INFO_START, start_info(count, initrd))?;
    Ok(GuestAddress(PVH_INFO_START))
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    value: T,
) -> Result<(), PvhError> {
    mem.write_obj(value, GuestAddress(addr))
        .map_err(|source| PvhError::Write { what, addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::e820::{E820_RAM, E820_RESERVED};
    use crate::boot::testing::{file_with, minimal_elf, minimal_pvh_elf};

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).expect("mmap")
    }

    #[test]
    fn start_info_has_magic_version_and_one_module() {
        let initrd = InitrdPlacement {
            addr: GuestAddress(0x100_0000),
            size: 10,
        };
        let info = start_info(3, Some(initrd));
        assert_eq!(info.magic, 0x336e_c578);
        assert_eq!(info.version, 1);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.modlist_paddr, PVH_MODLIST_START);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.memmap_paddr, PVH_MEMMAP_START);
        assert_eq!(info.memmap_entries, 3);
    }

    #[test]
    fn start_info_without_initrd_has_no_modules() {
        let info = start_info(3, None);
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
    }

    #[test]
    fn boot_info_memmap_and_module_are_written_to_guest_memory() {
        let mem = mem();
        let initrd = InitrdPlacement {
            addr: GuestAddress(0x100_0000),
            size: 10,
        };
        let addr = write_boot_info(&mem, Some(initrd)).expect("write");
        let info: hvm_start_info = mem.read_obj(addr).expect("read");
        let third: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(PVH_MEMMAP_START + 48))
            .expect("read");
        let second: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(PVH_MEMMAP_START + 24))
            .expect("read");
        let module: hvm_modlist_entry =
            mem.read_obj(GuestAddress(PVH_MODLIST_START)).expect("read");
        assert_eq!(addr, GuestAddress(PVH_INFO_START));
        assert_eq!(info.memmap_entries, 3);
        assert_eq!((second.addr, second.type_), (0x9fc00, E820_RESERVED));
        assert_eq!(
            (third.addr, third.size, third.type_),
            (HIMEM_START, 31 << 20, E820_RAM)
        );
        assert_eq!((module.paddr, module.size), (0x100_0000, 10));
    }

    #[test]
    fn elf_without_pvh_note_is_rejected_with_a_hint() {
        let mut file = file_with(&minimal_elf());
        let err = load_kernel(&mem(), &mut file, Path::new("/k/vmlinux")).expect_err("no note");
        assert_eq!(
            err.to_string(),
            "ELF kernel /k/vmlinux has no PVH entry note (build it with CONFIG_PVH=y)"
        );
    }

    #[test]
    fn truncated_elf_is_a_load_error() {
        let elf = minimal_elf();
        let mut file = file_with(&elf[..100]);
        let err = load_kernel(&mem(), &mut file, Path::new("/k/vmlinux")).expect_err("truncated");
        assert!(matches!(err, PvhError::Load { .. }), "{err:?}");
    }

    #[test]
    fn elf_with_pvh_note_gives_its_entry_and_end_including_bss() {
        let mut file = file_with(&minimal_pvh_elf(0x10_0040));
        let kernel = load_kernel(&mem(), &mut file, Path::new("k")).expect("load");
        assert_eq!(
            kernel,
            PvhKernel {
                entry: GuestAddress(0x10_0040),
                end: 0x30_0000
            }
        );
    }

    #[test]
    fn elf_segment_beyond_guest_memory_is_a_load_error() {
        let mut elf = minimal_elf();
        elf[64 + 24..64 + 32].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let mut file = file_with(&elf);
        let err = load_kernel(&mem(), &mut file, Path::new("k")).expect_err("outside memory");
        assert!(matches!(err, PvhError::Load { .. }), "{err:?}");
    }

    #[test]
    fn elf_with_huge_program_header_count_is_a_load_error() {
        let mut elf = minimal_elf();
        elf[56..58].copy_from_slice(&u16::MAX.to_le_bytes());
        let mut file = file_with(&elf);
        let err = load_kernel(&mem(), &mut file, Path::new("k")).expect_err("truncated");
        assert!(matches!(err, PvhError::Load { .. }), "{err:?}");
    }
}
