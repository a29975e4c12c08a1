//! The user's terminal for `-t`: raw mode while a sandboxed process owns it, and its
//! window size for the guest's pseudo-terminal.
#![allow(
    unsafe_code,
    reason = "termios and TIOCGWINSZ have no safe std wrapper"
)]

use std::io::{self, IsTerminal};
use std::os::fd::{AsRawFd, RawFd};

use husk_protocol::TtySize;

/// The size used when no terminal tells us one.
pub const DEFAULT_SIZE: TtySize = TtySize { rows: 24, cols: 80 };

/// Raw mode on stdin until dropped (then the saved settings come back).
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    /// Put stdin in raw mode: keys (Ctrl-C too) go to the sandboxed process as bytes and
    /// nothing is echoed locally. `None` when stdin is not a terminal.
    pub fn enable() -> io::Result<Option<Self>> {
        // SAFETY: raw is a valid termios; cfmakeraw only changes its flags.
        Self::change(|raw| unsafe { libc::cfmakeraw(raw) })
    }

    /// Apply `change` to stdin's settings until dropped; `None` when stdin is not a
    /// terminal.
    fn change(change: impl FnOnce(&mut libc::termios)) -> io::Result<Option<Self>> {
        let stdin = io::stdin();
        if !stdin.is_terminal() {
            return Ok(None);
        }
        let fd = stdin.as_raw_fd();
        let mut saved = std::mem::MaybeUninit::<libc::termios>::zeroed();
        // SAFETY: fd is an open terminal; tcgetattr fills the termios we own.
        if unsafe { libc::tcgetattr(fd, saved.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: tcgetattr succeeded, so the termios is initialized.
        let saved = unsafe { saved.assume_init() };
        let mut raw = saved;
        change(&mut raw);
        // SAFETY: fd is an open terminal and raw a valid termios the kernel only reads.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Some(Self { fd, saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: fd is still stdin and saved the settings read from it.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Echo off on stdin until dropped, for a password prompt.
pub struct NoEcho {
    _saved: RawMode,
}

impl NoEcho {
    /// Stop echoing typed characters; `None` when stdin is not a terminal.
    pub fn enable() -> io::Result<Option<Self>> {
        Ok(RawMode::change(|t| t.c_lflag &= !libc::ECHO)?.map(|saved| Self { _saved: saved }))
    }
}

/// The size of the terminal on stdout, else stdin; `None` when neither is one.
pub fn window_size() -> Option<TtySize> {
    [io::stdout().as_raw_fd(), io::stdin().as_raw_fd()]
        .into_iter()
        .find_map(size_of)
}

fn size_of(fd: RawFd) -> Option<TtySize> {
    let mut size = std::mem::MaybeUninit::<libc::winsize>::zeroed();
    // SAFETY: TIOCGWINSZ writes one winsize into the buffer we own; a non-terminal fd
    // fails with ENOTTY and leaves it alone.
    let ret = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, size.as_mut_ptr()) };
    if ret != 0 {
        return None;
    }
    // SAFETY: the ioctl succeeded and filled the winsize.
    let size = unsafe { size.assume_init() };
    (size.ws_row > 0 && size.ws_col > 0).then_some(TtySize {
        rows: size.ws_row,
        cols: size.ws_col,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_has_no_window_size() {
        let (reader, _writer) = std::io::pipe().unwrap();
        assert_eq!(size_of(reader.as_raw_fd()), None);
    }
}
