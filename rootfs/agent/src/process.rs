//! A running process's host-facing side: its stdio (pipes, or a pty master), the
//! threads that forward output as Stdout/Stderr frames, and stdin, signal and resize.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use husk_protocol::{Message, ProcessId, TtySize, MAX_DATA_CHUNK};
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::pty::{openpty, Winsize};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::outbox::Outbox;
use crate::spawn::pipe;

/// The agent's ends of a process's stdio.
pub struct HostEnds {
    /// Where stdin bytes go.
    pub stdin: File,
    /// stdout, or the terminal's output.
    pub stdout: File,
    /// stderr (`None` with a terminal: it is merged into the terminal).
    pub stderr: Option<File>,
    /// The pty master, for resizing.
    pub pty: Option<File>,
}

/// The child's ends of its stdio; dropped by the agent once the child has exec'd.
pub struct ChildEnds(Vec<OwnedFd>);

impl ChildEnds {
    /// The fds that become 0, 1 and 2.
    pub fn raw(&self) -> [RawFd; 3] {
        let fd = |i: usize| self.0[i.min(self.0.len() - 1)].as_raw_fd();
        [fd(0), fd(1), fd(2)]
    }
}

fn cloexec(fd: &OwnedFd) -> io::Result<()> {
    fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

fn winsize(size: TtySize) -> Winsize {
    Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Creates pipes, or a pty of `tty` size, for a new process.
pub fn make_stdio(tty: Option<TtySize>) -> io::Result<(HostEnds, ChildEnds)> {
    match tty {
        Some(size) => {
            let pty = openpty(Some(&winsize(size)), None)?;
            cloexec(&pty.master)?;
            cloexec(&pty.slave)?;
            let master = File::from(pty.master);
            let host = HostEnds {
                stdin: master.try_clone()?,
                stdout: master.try_clone()?,
                stderr: None,
                pty: Some(master),
            };
            Ok((host, ChildEnds(vec![pty.slave])))
        }
        None => {
            let (stdin_r, stdin_w) = pipe()?;
            let (stdout_r, stdout_w) = pipe()?;
            let (stderr_r, stderr_w) = pipe()?;
            let host = HostEnds {
                stdin: stdin_w,
                stdout: stdout_r,
                stderr: Some(stderr_r),
                pty: None,
            };
            Ok((
                host,
                ChildEnds(vec![stdin_r.into(), stdout_w.into(), stderr_w.into()]),
            ))
        }
    }
}

/// Forwards `source` to the host until end of file (or EIO: a pty whose last slave
/// closed), one frame per read of at most [`MAX_DATA_CHUNK`] bytes.
pub fn forward(
    mut source: File,
    process: ProcessId,
    stderr: bool,
    outbox: Arc<Outbox>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("out-{process}"))
        .spawn(move || {
            let mut buf = vec![0u8; MAX_DATA_CHUNK];
            loop {
                let n = match source.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                let data = buf[..n].to_vec();
                let message = if stderr {
                    Message::Stderr { process, data }
                } else {
                    Message::Stdout { process, data }
                };
                outbox.send(&message);
            }
        })
}

/// A process the host can talk to.
pub struct Process {
    /// Its pid in the agent's namespace.
    pub pid: i32,
    /// The container it runs in.
    pub container: String,
    stdin: Mutex<Option<File>>,
    pty: Option<File>,
}

impl Process {
    /// A process with the given stdin and optional pty master.
    pub fn new(pid: i32, container: String, stdin: File, pty: Option<File>) -> Self {
        Self {
            pid,
            container,
            stdin: Mutex::new(Some(stdin)),
            pty,
        }
    }

    /// Writes stdin bytes (blocking while the process does not read).
    pub fn write_stdin(&self, data: &[u8]) -> io::Result<()> {
        match self
            .stdin
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            Some(stdin) => stdin.write_all(data),
            None => Err(io::Error::new(io::ErrorKind::BrokenPipe, "stdin is closed")),
        }
    }

    /// Closes stdin: the pipe is closed, or a terminal gets its EOF character.
    pub fn close_stdin(&self) {
        let mut stdin = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
        if self.pty.is_some() {
            if let Some(tty) = stdin.as_mut() {
                let _ = tty.write_all(&[4]);
            }
        }
        *stdin = None;
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) -> nix::Result<()> {
        let signal = Signal::try_from(signal)?;
        kill(Pid::from_raw(self.pid), signal)
    }

    /// Resizes its terminal; a process without one ignores it.
    pub fn resize(&self, size: TtySize) -> io::Result<()> {
        let Some(pty) = &self.pty else { return Ok(()) };
        crate::ioctl::set_window_size(pty, &winsize(size))
    }
}
