//! Vectored I/O straight between guest buffers and host file descriptors.
//!
//! A device that moves a request's bytes through a buffer of its own copies them once
//! more than needed and makes one system call per guest buffer. [`IoVecs`] turns
//! checked guest buffers ([`Buffer`], known to lie inside guest memory) into `iovec`s
//! that point into the guest's mapping, so one `readv`/`preadv`/`writev`/`pwritev`
//! moves a whole chain, and the kernel copies directly to or from guest memory.
#![expect(
    unsafe_code,
    reason = "readv/writev and friends on raw iovecs into the guest mapping"
)]

use std::io;
use std::marker::PhantomData;
use std::os::fd::AsRawFd;

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

use super::descriptor::{Buffer, DescriptorError};

/// Most iovecs one system call takes (`IOV_MAX` on Linux).
pub const IOV_MAX: usize = 1024;

/// Guest buffers as host `iovec`s, valid while the guest memory borrow lives.
#[derive(Debug)]
pub struct IoVecs<'m> {
    iov: Vec<libc::iovec>,
    /// Index of the first iovec not yet consumed by [`IoVecs::advance`].
    first: usize,
    /// The memory the iovecs point into, borrowed for as long as they live.
    _mem: PhantomData<&'m mut [u8]>,
}

impl<'m> IoVecs<'m> {
    /// The iovecs of `bufs` (a buffer that crosses a region boundary becomes several).
    pub fn new(mem: &'m GuestMemoryMmap, bufs: &[Buffer]) -> Result<Self, DescriptorError> {
        let mut iov = Vec::with_capacity(bufs.len());
        for b in bufs {
            let outside = || DescriptorError::OutsideMemory {
                addr: b.addr.0,
                len: b.len,
            };
            for slice in mem.get_slices(b.addr, b.len as usize) {
                let slice = slice.map_err(|_| outside())?;
                iov.push(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                });
            }
        }
        Ok(Self {
            iov,
            first: 0,
            _mem: PhantomData,
        })
    }

    /// One iovec over a buffer of the host's own (a frame staged by a device).
    pub fn from_host(buf: &'m mut [u8]) -> Self {
        let iov = vec![libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        Self {
            iov,
            first: 0,
            _mem: PhantomData,
        }
    }

    /// The iovecs not consumed yet, for a submission the kernel uses after this call
    /// (io_uring). The caller must keep the guest memory mapped until it is done.
    pub fn into_raw(self) -> Vec<libc::iovec> {
        self.iov[self.first..].to_vec()
    }

    /// Bytes not yet consumed.
    pub fn len(&self) -> usize {
        self.iov[self.first..].iter().map(|v| v.iov_len).sum()
    }

    /// Whether no byte is left.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Consume the first `n` bytes (after a partial transfer).
    pub fn advance(&mut self, mut n: usize) {
        while n > 0 && self.first < self.iov.len() {
            let v = &mut self.iov[self.first];
            let take = n.min(v.iov_len);
            // SAFETY: `take` is at most the iovec's length, so the pointer stays inside
            // (or one past the end of) the same guest buffer.
            v.iov_base = unsafe { v.iov_base.cast::<u8>().add(take) }.cast();
            v.iov_len -= take;
            n -= take;
            if v.iov_len == 0 {
                self.first += 1;
            }
        }
    }

    /// The iovecs not consumed yet, at most [`IOV_MAX`] of them.
    fn pending(&self) -> &[libc::iovec] {
        let rest = &self.iov[self.first..];
        &rest[..rest.len().min(IOV_MAX)]
    }

    /// One `readv` (or `preadv` at `offset`) from `fd` into the buffers; bytes read.
    pub fn read_from(&self, fd: &impl AsRawFd, offset: Option<u64>) -> io::Result<usize> {
        let iov = self.pending();
        let count = libc::c_int::try_from(iov.len()).expect("at most IOV_MAX");
        // SAFETY: every iovec points into guest memory mapped for at least `'m` with
        // its length checked against the mapping in `new`; the kernel writes at most
        // that many bytes. Concurrent guest access to the same bytes is allowed (the
        // guest owns them); the host never holds a Rust reference to them.
        let n = unsafe {
            match offset {
                Some(off) => libc::preadv(fd.as_raw_fd(), iov.as_ptr(), count, to_off(off)?),
                None => libc::readv(fd.as_raw_fd(), iov.as_ptr(), count),
            }
        };
        result(n)
    }

    /// One `writev` (or `pwritev` at `offset`) of the buffers to `fd`; bytes written.
    pub fn write_to(&self, fd: &impl AsRawFd, offset: Option<u64>) -> io::Result<usize> {
        let iov = self.pending();
        let count = libc::c_int::try_from(iov.len()).expect("at most IOV_MAX");
        // SAFETY: as in `read_from`; the kernel only reads the buffers.
        let n = unsafe {
            match offset {
                Some(off) => libc::pwritev(fd.as_raw_fd(), iov.as_ptr(), count, to_off(off)?),
                None => libc::writev(fd.as_raw_fd(), iov.as_ptr(), count),
            }
        };
        result(n)
    }

    /// One `writev` of `prefix` (bytes of the host's own, such as a header checked
    /// and rebuilt by the device) followed by the buffers; bytes written.
    pub fn write_with_prefix(&self, fd: &impl AsRawFd, prefix: &[u8]) -> io::Result<usize> {
        let mut iov = Vec::with_capacity(1 + self.pending().len());
        iov.push(libc::iovec {
            iov_base: prefix.as_ptr().cast_mut().cast(),
            iov_len: prefix.len(),
        });
        iov.extend_from_slice(&self.pending()[..self.pending().len().min(IOV_MAX - 1)]);
        let count = libc::c_int::try_from(iov.len()).expect("at most IOV_MAX");
        // SAFETY: the first iovec points to `prefix`, borrowed for the call; the rest as
        // in `read_from`. `writev` only reads all of them.
        let n = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), count) };
        result(n)
    }

    /// Read exactly all the bytes at `offset` of a file (retrying partial reads);
    /// `UnexpectedEof` if the file ends first.
    pub fn read_exact_at(mut self, fd: &impl AsRawFd, mut offset: u64) -> io::Result<()> {
        while !self.is_empty() {
            match self.read_from(fd, Some(offset)) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.advance(n);
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Write all the bytes at `offset` of a file (retrying partial writes).
    pub fn write_all_at(mut self, fd: &impl AsRawFd, mut offset: u64) -> io::Result<()> {
        while !self.is_empty() {
            match self.write_to(fd, Some(offset)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.advance(n);
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Ask for a send buffer of `bytes` on a socket (`SO_SNDBUF`); the kernel caps the
/// request at `net.core.wmem_max` and doubles it for its bookkeeping. Returns the size
/// it then has.
pub fn set_send_buffer(fd: &impl AsRawFd, bytes: usize) -> io::Result<usize> {
    let want = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_SNDBUF reads one int from the pointer, valid for the call, whose
    // length is passed.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&want as *const libc::c_int).cast(),
            size,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let (mut got, mut len): (libc::c_int, libc::socklen_t) = (0, size);
    // SAFETY: SO_SNDBUF writes at most `len` bytes (one int) through the pointer,
    // valid for the call, and the new length through the other.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&mut got as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    match ret {
        0.. => Ok(usize::try_from(got).unwrap_or(0)),
        _ => Err(io::Error::last_os_error()),
    }
}

fn to_off(offset: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput.into())
}

fn result(n: isize) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use vm_memory::{Bytes, GuestAddress};

    use super::*;

    fn two_regions() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000), (GuestAddress(0x1000), 0x1000)])
            .unwrap()
    }

    fn buf(addr: u64, len: u32) -> Buffer {
        Buffer {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn a_buffer_across_two_regions_is_written_whole() {
        let mem = two_regions();
        mem.write_slice(&[7u8; 32], GuestAddress(0xff0)).unwrap();
        let iov = IoVecs::new(&mem, &[buf(0xff0, 32)]).unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        assert_eq!(iov.write_to(&a, None).unwrap(), 32);
        let mut out = [0u8; 32];
        b.read_exact(&mut out).unwrap();
        assert_eq!(out, [7u8; 32]);
    }

    #[test]
    fn a_read_spreads_over_buffers_in_order() {
        let mem = two_regions();
        let iov = IoVecs::new(&mem, &[buf(0x100, 3), buf(0x1800, 5)]).unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"abcdefgh").unwrap();
        assert_eq!(iov.read_from(&b, None).unwrap(), 8);
        let (mut x, mut y) = ([0u8; 3], [0u8; 5]);
        mem.read_slice(&mut x, GuestAddress(0x100)).unwrap();
        mem.read_slice(&mut y, GuestAddress(0x1800)).unwrap();
        assert_eq!((&x, &y), (b"abc", b"defgh"));
    }

    #[test]
    fn advancing_past_a_buffer_starts_in_the_next() {
        let mem = two_regions();
        let mut iov = IoVecs::new(&mem, &[buf(0x100, 3), buf(0x200, 5)]).unwrap();
        iov.advance(4);
        assert_eq!((iov.len(), iov.pending().len()), (4, 1));
    }

    #[test]
    fn a_buffer_outside_memory_is_refused() {
        let mem = two_regions();
        let e = IoVecs::new(&mem, &[buf(0x1f00, 0x200)]).unwrap_err();
        assert!(matches!(e, DescriptorError::OutsideMemory { .. }));
    }

    #[test]
    fn a_prefix_goes_out_before_the_buffers_in_one_datagram() {
        let mem = two_regions();
        mem.write_slice(b"body", GuestAddress(0x100)).unwrap();
        let iov = IoVecs::new(&mem, &[buf(0x100, 4)]).unwrap();
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        assert_eq!(iov.write_with_prefix(&a, b"head").unwrap(), 8);
        let mut out = [0u8; 16];
        let n = b.recv(&mut out).unwrap();
        assert_eq!(&out[..n], b"headbody");
    }

    #[test]
    fn a_file_read_past_its_end_is_unexpected_eof() {
        let mem = two_regions();
        let file = tempfile::tempfile().unwrap();
        (&file).write_all(&[1u8; 10]).unwrap();
        let iov = IoVecs::new(&mem, &[buf(0, 16)]).unwrap();
        let e = iov.read_exact_at(&file, 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
