//! Kernel loading and boot information: detects the kernel format (ELF `vmlinux` with a
//! PVH note, or bzImage), loads it, the command line and the initrd, and writes the
//! structures the kernel reads at entry (PVH start info, or the Linux zero page).

pub mod bzimage;
pub mod cmdline;
pub mod e820;
pub mod initrd;
pub mod pvh;
pub mod symbols;
#[cfg(test)]
mod testing;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use vm_memory::{GuestAddress, GuestMemoryMmap};

pub use bzimage::BzImageError;
pub use cmdline::CmdlineError;
pub use e820::{e820_entries, E820Entry, E820_RAM, E820_RESERVED};
pub use initrd::{InitrdError, InitrdPlacement};
pub use pvh::PvhError;

use crate::arch::x86_64::layout::MMIO_GAP_START;

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootEntry {
    /// 32-bit protected-mode entry with RBX = start_info (PVH boot ABI).
    Pvh {
        /// The PVH entry point from the ELF note.
        entry: GuestAddress,
        /// The `hvm_start_info` address.
        start_info: GuestAddress,
    },
    /// 64-bit entry of the Linux boot protocol with RSI = zero page.
    Linux64 {
        /// `startup_64`: load address + 0x200.
        entry: GuestAddress,
        /// The `boot_params` address.
        zero_page: GuestAddress,
    },
}

/// What to load besides the kernel.
#[derive(Debug, Default)]
pub struct BootRequest<'a> {
    /// The kernel command line.
    pub cmdline: &'a str,
    /// The initrd file, if any.
    pub initrd: Option<&'a mut File>,
    /// The initrd path, for error messages.
    pub initrd_path: Option<&'a Path>,
}

/// Errors loading the kernel and writing the boot information.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be read.
    #[error("cannot read kernel {}", path.display())]
    Read {
        /// The kernel file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is neither an ELF nor a bzImage.
    #[error("{} is not a kernel: {reason}", path.display())]
    NotAKernel {
        /// The file.
        path: PathBuf,
        /// Why (too short, unknown magic).
        reason: String,
    },
    /// PVH (ELF) loading failed.
    #[error(transparent)]
    Pvh(#[from] PvhError),
    /// bzImage loading failed.
    #[error(transparent)]
    BzImage(#[from] BzImageError),
    /// The command line is invalid or too long.
    #[error(transparent)]
    Cmdline(#[from] CmdlineError),
    /// The initrd could not be loaded.
    #[error(transparent)]
    Initrd(#[from] InitrdError),
}

/// The kernel formats husk boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KernelKind {
    Elf,
    BzImage,
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// Offset and value of the Linux setup header magic ("HdrS").
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;
const BZIMAGE_MAGIC: &[u8; 4] = b"HdrS";

/// Loads the kernel (ELF with a PVH note, or bzImage, detected by content), the command
/// line, the initrd, and writes the boot information (PVH start_info + memmap + module
/// list, or the zero page with e820) into guest memory.
pub fn load(
    mem: &GuestMemoryMmap,
    kernel: &mut File,
    kernel_path: &Path,
    req: BootRequest,
) -> Result<BootEntry, BootError> {
    let cmdline_size = cmdline::write_cmdline(mem, req.cmdline)?;
    match detect(kernel, kernel_path)? {
        KernelKind::Elf => {
            let loaded = pvh::load_kernel(mem, kernel, kernel_path)?;
            let initrd = load_initrd(mem, req, loaded.end, MMIO_GAP_START)?;
            let start_info = pvh::write_boot_info(mem, initrd)?;
            Ok(BootEntry::Pvh {
                entry: loaded.entry,
                start_info,
            })
        }
        KernelKind::BzImage => {
            let loaded = bzimage::load_kernel(mem, kernel, kernel_path)?;
            let limit = bzimage::initrd_limit(&loaded.header);
            let initrd = load_initrd(mem, req, loaded.end, limit)?;
            let params =
                bzimage::zero_page(&loaded.header, cmdline_size, initrd, &e820_entries(mem))?;
            let zero_page = bzimage::write_zero_page(mem, &params)?;
            Ok(BootEntry::Linux64 {
                entry: loaded.entry,
                zero_page,
            })
        }
    }
}

fn load_initrd(
    mem: &GuestMemoryMmap,
    req: BootRequest,
    kernel_end: u64,
    limit: u64,
) -> Result<Option<InitrdPlacement>, InitrdError> {
    let Some(file) = req.initrd else {
        return Ok(None);
    };
    let path = req.initrd_path.unwrap_or(Path::new("(initrd)"));
    initrd::load(mem, file, path, kernel_end, limit).map(Some)
}

/// Tells an ELF from a bzImage by their magic numbers.
fn detect(kernel: &mut File, path: &Path) -> Result<KernelKind, BootError> {
    let read_error = |source| BootError::Read {
        path: path.to_path_buf(),
        source,
    };
    let not_a_kernel = |reason: String| BootError::NotAKernel {
        path: path.to_path_buf(),
        reason,
    };
    let len = kernel.metadata().map_err(read_error)?.len();
    let mut magic = [0u8; 4];
    if len < ELF_MAGIC.len() as u64 {
        return Err(not_a_kernel(format!("it is only {len} bytes long")));
    }
    kernel.seek(SeekFrom::Start(0)).map_err(read_error)?;
    kernel.read_exact(&mut magic).map_err(read_error)?;
    if &magic == ELF_MAGIC {
        return Ok(KernelKind::Elf);
    }
    if len < BZIMAGE_MAGIC_OFFSET + 4 {
        return Err(not_a_kernel(format!(
            "it is only {len} bytes long and has no ELF magic"
        )));
    }
    kernel
        .seek(SeekFrom::Start(BZIMAGE_MAGIC_OFFSET))
        .map_err(read_error)?;
    kernel.read_exact(&mut magic).map_err(read_error)?;
    if &magic == BZIMAGE_MAGIC {
        return Ok(KernelKind::BzImage);
    }
    Err(not_a_kernel(
        "neither ELF magic nor the bzImage \"HdrS\" header at 0x202".to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::{PVH_INFO_START, PVH_MODLIST_START};
    use testing::{file_with, minimal_bzimage, minimal_elf, minimal_pvh_elf};
    use vm_memory::Bytes;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).expect("mmap")
    }

    #[test]
    fn garbage_file_is_not_a_kernel() {
        let mut file = file_with(&[0x55u8; 4096]);
        let err =
            load(&mem(), &mut file, Path::new("/g"), BootRequest::default()).expect_err("garbage");
        assert_eq!(
            err.to_string(),
            "/g is not a kernel: neither ELF magic nor the bzImage \"HdrS\" header at 0x202"
        );
    }

    #[test]
    fn tiny_file_is_not_a_kernel_because_too_short() {
        let mut file = file_with(b"ab");
        let err =
            load(&mem(), &mut file, Path::new("/t"), BootRequest::default()).expect_err("short");
        assert_eq!(
            err.to_string(),
            "/t is not a kernel: it is only 2 bytes long"
        );
    }

    #[test]
    fn elf_kernel_is_detected_as_elf() {
        let mut file = file_with(&minimal_elf());
        assert_eq!(
            detect(&mut file, Path::new("k")).expect("detect"),
            KernelKind::Elf
        );
    }

    #[test]
    fn bzimage_boots_through_linux64_with_initrd_and_cmdline() {
        let mem = mem();
        let mut kernel = file_with(&minimal_bzimage(0x020f, 1));
        let mut initrd = file_with(b"initrd");
        let req = BootRequest {
            cmdline: "console=ttyS0",
            initrd: Some(&mut initrd),
            initrd_path: Some(Path::new("/i")),
        };
        let entry = load(&mem, &mut kernel, Path::new("/bz"), req).expect("load");
        let ramdisk_image: u32 = mem.read_obj(GuestAddress(0x7000 + 0x218)).expect("read");
        assert_eq!(
            entry,
            BootEntry::Linux64 {
                entry: GuestAddress(0x10_0200),
                zero_page: GuestAddress(0x7000)
            }
        );
        assert_eq!(ramdisk_image, (32 << 20) - 0x1000);
    }

    #[test]
    fn pvh_elf_boots_with_start_info_and_initrd_module() {
        let mem = mem();
        let mut kernel = file_with(&minimal_pvh_elf(0x10_0040));
        let mut initrd = file_with(b"initrd");
        let req = BootRequest {
            cmdline: "console=ttyS0",
            initrd: Some(&mut initrd),
            initrd_path: Some(Path::new("/i")),
        };
        let entry = load(&mem, &mut kernel, Path::new("/vmlinux"), req).expect("load");
        let module_addr: u64 = mem.read_obj(GuestAddress(PVH_MODLIST_START)).expect("read");
        assert_eq!(
            entry,
            BootEntry::Pvh {
                entry: GuestAddress(0x10_0040),
                start_info: GuestAddress(PVH_INFO_START)
            }
        );
        assert_eq!(module_addr, (32 << 20) - 0x1000);
    }

    #[test]
    fn truncated_elf_kernel_is_an_error_not_a_panic() {
        let elf = minimal_pvh_elf(0x10_0040);
        let mut kernel = file_with(&elf[..130]);
        let err = load(
            &mem(),
            &mut kernel,
            Path::new("/vmlinux"),
            BootRequest::default(),
        )
        .expect_err("truncated");
        assert_eq!(err.to_string(), "cannot load ELF kernel /vmlinux");
    }
}
