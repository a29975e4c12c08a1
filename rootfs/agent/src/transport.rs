//! How host connections arrive: a small [`Listener`] trait, implemented by the AF_VSOCK
//! listener the guest uses and by Unix sockets, which stand in for vsock in tests.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};

use nix::sys::socket::{
    accept4, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};

/// One host connection: read requests from it, hand out a writer for replies.
pub trait Connection: Read + Send {
    /// An independent writer on the same connection.
    fn writer(&self) -> io::Result<Box<dyn Write + Send>>;
}

/// A source of host connections.
pub trait Listener {
    /// The connection type.
    type Conn: Connection;
    /// Waits for the next host connection.
    fn accept(&mut self) -> io::Result<Self::Conn>;
}

impl Connection for UnixStream {
    fn writer(&self) -> io::Result<Box<dyn Write + Send>> {
        Ok(Box::new(self.try_clone()?))
    }
}

impl Listener for UnixListener {
    type Conn = UnixStream;
    fn accept(&mut self) -> io::Result<UnixStream> {
        UnixListener::accept(self).map(|(stream, _)| stream)
    }
}

/// A connected AF_VSOCK stream socket (read and write are plain syscalls on the fd).
pub struct VsockStream(File);

impl Read for VsockStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Connection for VsockStream {
    fn writer(&self) -> io::Result<Box<dyn Write + Send>> {
        Ok(Box::new(self.0.try_clone()?))
    }
}

/// A listening AF_VSOCK socket on any local CID.
pub struct VsockListener(OwnedFd);

impl VsockListener {
    /// Listens on `port` (the host connects from CID 2).
    pub fn bind(port: u32) -> io::Result<Self> {
        let fd = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &VsockAddr::new(libc::VMADDR_CID_ANY, port),
        )?;
        listen(&fd, Backlog::new(4)?)?;
        Ok(Self(fd))
    }
}

impl Listener for VsockListener {
    type Conn = VsockStream;
    fn accept(&mut self) -> io::Result<VsockStream> {
        let raw = accept4(
            std::os::fd::AsRawFd::as_raw_fd(&self.0),
            SockFlag::SOCK_CLOEXEC,
        )?;
        // SAFETY: accept4 returned a new fd that nothing else owns.
        Ok(VsockStream(unsafe { File::from_raw_fd(raw) }))
    }
}
