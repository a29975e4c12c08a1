//! A terminal's window size (interfaces are configured through `husk-netif`).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use nix::pty::Winsize;

/// Sets a terminal's size (TIOCSWINSZ); the foreground process gets SIGWINCH.
pub fn set_window_size(tty: &File, size: &Winsize) -> io::Result<()> {
    // SAFETY: tty is an open fd and size a valid winsize the kernel only reads.
    let ret = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, size as *const Winsize) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
