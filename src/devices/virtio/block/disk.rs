//! The backing file of a block device and what it can do.
//!
//! Discard and write-zeroes map to `fallocate(2)`, which std does not wrap; they are
//! only offered to the guest when a probe at open time shows the file supports them.
#![expect(
    unsafe_code,
    reason = "fallocate(2) has no safe wrapper in std or libc"
)]

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use vm_memory::GuestMemoryMmap;

use super::config::{BlockConfig, ID_BYTES};
use crate::devices::virtio::descriptor::Buffer;
use crate::devices::virtio::guest_io::IoVecs;

/// Errors opening a disk.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The image could not be opened.
    #[error("cannot open disk image {path}")]
    Open {
        /// Image path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The image size could not be read.
    #[error("cannot get the size of disk image {path}")]
    Size {
        /// Image path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// How VIRTIO_BLK_T_WRITE_ZEROES is carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteZeroes {
    /// Not offered.
    Unsupported,
    /// `FALLOC_FL_ZERO_RANGE`.
    ZeroRange,
    /// `FALLOC_FL_PUNCH_HOLE`: a hole reads back as zeroes.
    PunchHole,
}

/// An open disk image.
#[derive(Debug)]
pub struct Disk {
    file: File,
    path: PathBuf,
    read_only: bool,
    sectors: u64,
    discard: bool,
    write_zeroes: WriteZeroes,
    id: [u8; ID_BYTES],
}

fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let offset = libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
    let len = libc::off_t::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: fallocate only reads its integer arguments; the fd is owned by `file`,
    // which outlives the call.
    let ret = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) };
    match ret {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

const PUNCH: libc::c_int = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
const ZERO: libc::c_int = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

/// Probe `mode` on the sector just past the end of the file, where it cannot harm data
/// (KEEP_SIZE leaves the file length alone).
fn probe(file: &File, mode: libc::c_int, len: u64) -> bool {
    fallocate(file, mode, len, super::SECTOR_SIZE).is_ok()
}

impl Disk {
    /// Open the image of `config` and probe what it supports.
    pub fn open(config: &BlockConfig) -> Result<Self, DiskError> {
        let path = config.path.clone();
        // A jailed VMM may hold the file, opened as root before its uid drop.
        let opened = crate::jail::held_file(&path, !config.read_only).unwrap_or_else(|| {
            OpenOptions::new()
                .read(true)
                .write(!config.read_only)
                .open(&path)
        });
        let mut file = opened.map_err(|source| DiskError::Open {
            path: path.clone(),
            source,
        })?;
        let len = file
            .seek(SeekFrom::End(0))
            .map_err(|source| DiskError::Size {
                path: path.clone(),
                source,
            })?;
        let regular = file.metadata().is_ok_and(|m| m.is_file());
        let can = |mode| regular && !config.read_only && probe(&file, mode, len);
        let write_zeroes = match (can(ZERO), can(PUNCH)) {
            (true, _) => WriteZeroes::ZeroRange,
            (false, true) => WriteZeroes::PunchHole,
            (false, false) => WriteZeroes::Unsupported,
        };
        let mut id = [0u8; ID_BYTES];
        let serial = config.id.as_deref().unwrap_or("");
        let n = serial.len().min(ID_BYTES);
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        Ok(Self {
            discard: can(PUNCH),
            file,
            path,
            read_only: config.read_only,
            sectors: len / super::SECTOR_SIZE,
            write_zeroes,
            id,
        })
    }

    /// The open image file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Image path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Capacity in 512-byte sectors (a partial last sector is not exposed).
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether discard (hole punching) works on this file.
    pub fn discard(&self) -> bool {
        self.discard
    }

    /// How write-zeroes is done, if at all.
    pub fn write_zeroes(&self) -> WriteZeroes {
        self.write_zeroes
    }

    /// The 20-byte serial id (zero padded).
    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.id
    }

    /// Read from byte `offset` of the image into guest buffers (one `preadv` for the
    /// whole request unless the kernel returns less).
    pub fn read_into(&self, mem: &GuestMemoryMmap, offset: u64, bufs: &[Buffer]) -> io::Result<()> {
        IoVecs::new(mem, bufs)
            .map_err(io::Error::other)?
            .read_exact_at(&self.file, offset)
    }

    /// Write guest buffers to byte `offset` of the image (one `pwritev`, as above).
    pub fn write_from(
        &self,
        mem: &GuestMemoryMmap,
        offset: u64,
        bufs: &[Buffer],
    ) -> io::Result<()> {
        IoVecs::new(mem, bufs)
            .map_err(io::Error::other)?
            .write_all_at(&self.file, offset)
    }

    /// Make written data durable.
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Deallocate `len` bytes at `offset`.
    pub fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        fallocate(&self.file, PUNCH, offset, len)
    }

    /// Zero `len` bytes at `offset` with the probed method.
    pub fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        match self.write_zeroes {
            WriteZeroes::ZeroRange => fallocate(&self.file, ZERO, offset, len),
            WriteZeroes::PunchHole => fallocate(&self.file, PUNCH, offset, len),
            WriteZeroes::Unsupported => Err(io::ErrorKind::Unsupported.into()),
        }
    }
}
