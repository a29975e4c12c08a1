//! Sparse files: finding their data with `SEEK_DATA`/`SEEK_HOLE`, and copying them
//! without filling their holes (a clone where the filesystem can share blocks).
#![allow(
    unsafe_code,
    reason = "lseek(SEEK_DATA/SEEK_HOLE) and ioctl(FICLONE) have no safe wrapper"
)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// `FICLONE`: `_IOW(0x94, 9, int)`, share all blocks of one file with another.
const FICLONE: libc::c_ulong = 0x4004_9409;

/// The offset of the next data (`SEEK_DATA`) or hole (`SEEK_HOLE`) at or after `from`,
/// or `None` when there is no data past `from`.
pub fn seek(file: &File, from: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let offset = libc::off_t::try_from(from).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: lseek only moves the file offset of a descriptor `file` owns.
    let at = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if at >= 0 {
        return Ok(Some(at as u64));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENXIO) => Ok(None),
        _ => Err(err),
    }
}

/// How a copy was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copied {
    /// The filesystem shares the blocks (copy-on-write, instant).
    Reflink,
    /// The data was copied, holes left as holes; this many bytes of data.
    Data(u64),
}

/// Copy `src` to the new file `dst`: a reflink where the filesystem allows, else the
/// data regions only, so a sparse disk image stays sparse.
pub fn copy_sparse(src: &Path, dst: &Path) -> io::Result<Copied> {
    let from = File::open(src)?;
    let to = File::options().write(true).create_new(true).open(dst)?;
    // SAFETY: FICLONE reads the source descriptor number; both fds are owned here.
    if unsafe { libc::ioctl(to.as_raw_fd(), FICLONE, from.as_raw_fd()) } == 0 {
        return Ok(Copied::Reflink);
    }
    let len = from.metadata()?.len();
    to.set_len(len)?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut at, mut copied) = (0u64, 0u64);
    while at < len {
        let Some(start) = seek(&from, at, libc::SEEK_DATA)? else {
            break;
        };
        let end = seek(&from, start, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        let mut pos = start;
        while pos < end {
            let n = usize::try_from(end - pos)
                .unwrap_or(buf.len())
                .min(buf.len());
            from.read_exact_at(&mut buf[..n], pos)?;
            to.write_all_at(&buf[..n], pos)?;
            pos += n as u64;
        }
        copied += end - start;
        at = end;
    }
    Ok(Copied::Data(copied))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparse_file_is_copied_whole_and_stays_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"tail", (64 << 20) - 4).unwrap();
        let dst = dir.path().join("dst");
        let copied = copy_sparse(&src, &dst).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
        if let Copied::Data(bytes) = copied {
            assert!(
                bytes < 1 << 20,
                "copied {bytes} bytes of a 64 MiB sparse file"
            );
        }
    }

    #[test]
    fn an_existing_destination_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::write(&src, b"new").unwrap();
        std::fs::write(&dst, b"old").unwrap();
        assert!(copy_sparse(&src, &dst).is_err());
        assert_eq!(std::fs::read(&dst).unwrap(), b"old");
    }
}
