//! A running process's host-facing side: its stdio (pipes, or a pty master), the
//! threads that forward output as Stdout/Stderr frames, and stdin, signal and resize.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{self, Receiver, Sender};
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

/// The stdin thread of process `id`: writes each chunk to `stdin` in order (blocking
/// while the process does not read), acknowledges it, and ends at the close (after the
/// EOF character on a terminal) or when the process is gone. A write error (the process
/// closed its stdin) makes later chunks be dropped, still acknowledged.
fn write_stdin(
    mut stdin: File,
    terminal: bool,
    id: ProcessId,
    ops: &Receiver<StdinOp>,
    outbox: &Outbox,
) {
    let mut broken = false;
    while let Ok(op) = ops.recv() {
        match op {
            StdinOp::Data(data) => {
                if !broken {
                    if let Err(e) = stdin.write_all(&data) {
                        crate::console::log(&format!("process {id}: stdin: {e}"));
                        broken = true;
                    }
                }
                ack(outbox, id, &data);
            }
            StdinOp::Close => {
                if terminal && !broken {
                    let _ = stdin.write_all(&[4]);
                }
                return;
            }
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

/// What the request loop hands a process's stdin thread.
/// Tells the host the agent is done with `data` of process `id`'s stdin.
fn ack(outbox: &Outbox, id: ProcessId, data: &[u8]) {
    outbox.send(&Message::StdinAck {
        process: id,
        bytes: data.len() as u64,
    });
}

enum StdinOp {
    Data(Vec<u8>),
    Close,
}

/// A process the host can talk to.
pub struct Process {
    /// Its pid in the agent's namespace.
    pub pid: i32,
    /// The container it runs in.
    pub container: String,
    id: ProcessId,
    /// To the thread that writes stdin; `None` once stdin was closed.
    stdin: Mutex<Option<Sender<StdinOp>>>,
    pty: Option<File>,
    outbox: Arc<Outbox>,
}

impl Process {
    /// Process `id` with the given stdin and optional pty master. Its stdin is written by
    /// a thread of its own, so a process that does not read blocks nothing else; every
    /// chunk written (or dropped) is acknowledged to the host with `StdinAck`.
    pub fn new(
        id: ProcessId,
        pid: i32,
        container: String,
        stdin: File,
        pty: Option<File>,
        outbox: Arc<Outbox>,
    ) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let (terminal, acks) = (pty.is_some(), outbox.clone());
        std::thread::Builder::new()
            .name(format!("in-{id}"))
            .spawn(move || write_stdin(stdin, terminal, id, &rx, &acks))?;
        Ok(Self {
            pid,
            container,
            id,
            stdin: Mutex::new(Some(tx)),
            pty,
            outbox,
        })
    }

    /// Queues stdin bytes for the process; never blocks. Bytes after the close are
    /// dropped and acknowledged at once.
    pub fn write_stdin(&self, data: &[u8]) {
        let stdin = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
        let queued = stdin
            .as_ref()
            .is_some_and(|tx| tx.send(StdinOp::Data(data.to_vec())).is_ok());
        if !queued {
            ack(&self.outbox, self.id, data);
        }
    }

    /// Closes stdin once the queued bytes are written: the pipe is closed, or a terminal
    /// gets its EOF character.
    pub fn close_stdin(&self) {
        let mut stdin = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = stdin.take() {
            let _ = tx.send(StdinOp::Close);
        }
    }

    /// Sends `signal` to the process (a copy, which has no process, ignores it).
    pub fn signal(&self, signal: i32) -> nix::Result<()> {
        let signal = Signal::try_from(signal)?;
        if self.pid <= 0 {
            return Ok(());
        }
        kill(Pid::from_raw(self.pid), signal)
    }

    /// Resizes its terminal; a process without one ignores it.
    pub fn resize(&self, size: TtySize) -> io::Result<()> {
        let Some(pty) = &self.pty else { return Ok(()) };
        crate::ioctl::set_window_size(pty, &winsize(size))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    use husk_protocol::read_message;

    use super::*;

    fn acks(host: &mut UnixStream, want: usize) -> Vec<u64> {
        (0..want)
            .map(|_| match read_message(host).unwrap() {
                Message::StdinAck { process: 5, bytes } => bytes,
                other => panic!("expected a StdinAck of process 5, got {other:?}"),
            })
            .collect()
    }

    #[test]
    fn stdin_is_queued_without_blocking_and_acknowledged_as_written() {
        let (read_end, write_end) = pipe().unwrap();
        let (mut host, agent_end) = UnixStream::pair().unwrap();
        let outbox = Arc::new(Outbox::default());
        outbox.connect(Box::new(agent_end));
        let process = Process::new(5, 0, "c".into(), write_end, None, outbox).unwrap();
        // Far more than a pipe holds, with nobody reading yet: must not block the caller.
        let started = Instant::now();
        process.write_stdin(&vec![1u8; 300_000]);
        process.write_stdin(b"tail");
        process.close_stdin();
        assert!(started.elapsed() < Duration::from_secs(5));
        let mut got = Vec::new();
        let mut read_end = read_end;
        read_end.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), 300_004, "every byte, then EOF after the close");
        assert_eq!(&got[300_000..], b"tail");
        assert_eq!(acks(&mut host, 2), vec![300_000, 4]);
    }

    #[test]
    fn stdin_after_the_close_or_a_broken_pipe_is_dropped_but_acknowledged() {
        let (read_end, write_end) = pipe().unwrap();
        drop(read_end);
        let (mut host, agent_end) = UnixStream::pair().unwrap();
        let outbox = Arc::new(Outbox::default());
        outbox.connect(Box::new(agent_end));
        let process = Process::new(5, 0, "c".into(), write_end, None, outbox).unwrap();
        process.write_stdin(b"into a closed pipe");
        assert_eq!(acks(&mut host, 1), vec![18]);
        process.close_stdin();
        process.write_stdin(b"late");
        assert_eq!(acks(&mut host, 1), vec![4]);
    }
}
