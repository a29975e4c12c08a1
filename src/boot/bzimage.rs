//! bzImage boot through the 64-bit Linux boot protocol: loads the protected-mode part
//! at `code32_start` and fills the zero page (`boot_params`).
//!
//! See the kernel's Documentation/arch/x86/boot.rst ("64-bit Boot Protocol").

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{BzImage, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::e820::E820Entry;
use super::initrd::InitrdPlacement;
use crate::arch::x86_64::layout::{CMDLINE_START, HIMEM_START, ZERO_PAGE_START};

/// Offset of the 64-bit entry point (`startup_64`) from the load address.
const STARTUP_64_OFFSET: u64 = 0x200;
/// `type_of_loader` value for a boot loader without an assigned id.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `xloadflags` bit: the kernel has the 64-bit entry at load address + 0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// First boot protocol version with `xloadflags` (2.12).
const MIN_64BIT_VERSION: u16 = 0x020c;
/// `initrd_addr_max` assumed by the boot protocol when the header has none.
const DEFAULT_INITRD_ADDR_MAX: u32 = 0x37ff_ffff;

/// Errors loading a bzImage or writing its zero page.
#[derive(Debug, thiserror::Error)]
pub enum BzImageError {
    /// linux-loader rejected the image.
    #[error("cannot load bzImage kernel {}", path.display())]
    Load {
        /// The kernel file.
        path: PathBuf,
        /// The loader's reason.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The image lacks the 64-bit entry point.
    #[error("bzImage {} (boot protocol {version:#x}) has no 64-bit entry point", path.display())]
    No64BitEntry {
        /// The kernel file.
        path: PathBuf,
        /// Its boot protocol version.
        version: u16,
    },
    /// The e820 table is larger than the zero page holds.
    #[error("e820 table has {0} entries, the zero page holds 128")]
    TooManyE820Entries(usize),
    /// Writing the zero page failed.
    #[error("cannot write the zero page at guest address {:#x}", ZERO_PAGE_START)]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// A loaded bzImage kernel.
#[derive(Clone, Copy, Debug)]
pub struct BzImageKernel {
    /// The setup header read from the image (with `code32_start` set to the load address).
    pub header: setup_header,
    /// The 64-bit entry point.
    pub entry: GuestAddress,
    /// First address the kernel may use while decompressing (load address + `init_size`).
    pub end: u64,
}

/// Loads the protected-mode kernel of a bzImage at its `code32_start`.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    kernel: &mut File,
    path: &Path,
) -> Result<BzImageKernel, BzImageError> {
    let loaded =
        BzImage::load(mem, None, kernel, Some(GuestAddress(HIMEM_START))).map_err(|source| {
            BzImageError::Load {
                path: path.to_path_buf(),
                source,
            }
        })?;
    let header = loaded
        .setup_header
        .expect("BzImage::load always returns the setup header");
    check_64bit(&header, path)?;
    let load = loaded.kernel_load.0;
    Ok(BzImageKernel {
        header,
        entry: GuestAddress(load + STARTUP_64_OFFSET),
        end: loaded.kernel_end.max(load + u64::from(header.init_size)),
    })
}

fn check_64bit(header: &setup_header, path: &Path) -> Result<(), BzImageError> {
    if header.version < MIN_64BIT_VERSION || header.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BzImageError::No64BitEntry {
            path: path.to_path_buf(),
            version: header.version,
        });
    }
    Ok(())
}

/// First address (exclusive) the initrd must stay below, from `initrd_addr_max`.
pub fn initrd_limit(header: &setup_header) -> u64 {
    let max = match header.initrd_addr_max {
        0 => DEFAULT_INITRD_ADDR_MAX,
        max => max,
    };
    u64::from(max) + 1
}

/// Builds the zero page: the image's setup header completed with the loader type, the
/// command line, the initrd and the e820 table.
pub fn zero_page(
    header: &setup_header,
    cmdline_size: usize,
    initrd: Option<InitrdPlacement>,
    e820: &[E820Entry],
) -> Result<boot_params, BzImageError> {
    let mut params = boot_params {
        hdr: *header,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_size as u32;
    if let Some(initrd) = initrd {
        // The initrd is placed below the MMIO gap, so both halves fit in 32 bits.
        params.hdr.ramdisk_image = initrd.addr.0 as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    if e820.len() > params.e820_table.len() {
        return Err(BzImageError::TooManyE820Entries(e820.len()));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = e820.len() as u8;
    Ok(params)
}

/// Writes the zero page at [`ZERO_PAGE_START`] and returns that address (the guest's RSI).
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    params: &boot_params,
) -> Result<GuestAddress, BzImageError> {
    let addr = GuestAddress(ZERO_PAGE_START);
    mem.write_obj(*params, addr).map_err(BzImageError::Write)?;
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::e820::{e820_entries, E820_RAM};
    use crate::boot::testing::{file_with, minimal_bzimage};

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).expect("mmap")
    }

    #[test]
    fn hand_built_bzimage_loads_at_code32_start_with_entry_at_0x200() {
        let mut file = file_with(&minimal_bzimage(0x020f, 1));
        let kernel = load_kernel(&mem(), &mut file, Path::new("bz")).expect("load");
        assert_eq!(kernel.entry, GuestAddress(HIMEM_START + 0x200));
        assert_eq!(kernel.end, HIMEM_START + 0x40_0000);
        assert_eq!({ kernel.header.version }, 0x020f);
        assert_eq!(initrd_limit(&kernel.header), 0x7fff_ffff + 1);
    }

    #[test]
    fn bzimage_without_64bit_entry_is_rejected() {
        let mut file = file_with(&minimal_bzimage(0x020f, 0));
        let err = load_kernel(&mem(), &mut file, Path::new("/bz")).expect_err("32-bit only");
        assert_eq!(
            err.to_string(),
            "bzImage /bz (boot protocol 0x20f) has no 64-bit entry point"
        );
    }

    #[test]
    fn zero_page_has_loader_cmdline_initrd_and_e820() {
        let mem = mem();
        let mut file = file_with(&minimal_bzimage(0x020f, 1));
        let kernel = load_kernel(&mem, &mut file, Path::new("bz")).expect("load");
        let initrd = InitrdPlacement {
            addr: GuestAddress(0x1f0_0000),
            size: 0x1234,
        };
        let params = zero_page(&kernel.header, 20, Some(initrd), &e820_entries(&mem)).expect("zp");
        assert_eq!({ params.hdr.type_of_loader }, 0xff);
        assert_eq!({ params.hdr.boot_flag }, 0xaa55);
        assert_eq!({ params.hdr.header }, 0x5372_6448);
        assert_eq!({ params.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ params.hdr.cmdline_size }, 20);
        assert_eq!(
            ({ params.hdr.ramdisk_image }, { params.hdr.ramdisk_size }),
            (0x1f0_0000, 0x1234)
        );
        assert_eq!({ params.e820_entries }, 3);
        assert_eq!({ params.e820_table[2].addr }, HIMEM_START);
        assert_eq!({ params.e820_table[2].r#type }, E820_RAM);
    }

    #[test]
    fn zero_page_is_written_at_zero_page_start() {
        let mem = mem();
        let params = boot_params::default();
        assert_eq!(
            write_zero_page(&mem, &params).expect("write"),
            GuestAddress(ZERO_PAGE_START)
        );
    }
}
