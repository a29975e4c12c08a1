//! Streaming a container process's stdio over the agent connection.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use husk_protocol::{read_message, ExitStatus, Message, ProcessId, MAX_DATA_CHUNK};

use super::{send, SandboxError, Writer};

/// Where a process's stdio comes from and goes to.
pub struct Stdio {
    /// Standard input (`None`: the process gets an empty stdin).
    pub stdin: Option<Box<dyn Read + Send>>,
    /// Standard output.
    pub stdout: Box<dyn Write + Send>,
    /// Standard error.
    pub stderr: Box<dyn Write + Send>,
}

impl Stdio {
    /// Inherit this process's stdout and stderr; stdin too when `with_stdin`.
    pub fn inherit(with_stdin: bool) -> Self {
        Self {
            stdin: with_stdin.then(|| Box::new(std::io::stdin()) as Box<dyn Read + Send>),
            stdout: Box::new(std::io::stdout()),
            stderr: Box::new(std::io::stderr()),
        }
    }
}

/// After a Run or Exec: wait for Started, stream stdio until Exited; returns the exit
/// status and when the process started.
pub fn pump(
    conn: &mut UnixStream,
    writer: &Writer,
    current: &AtomicU32,
    stdio: Stdio,
) -> Result<(ExitStatus, Instant), SandboxError> {
    let process = loop {
        match read_message(conn)? {
            Message::Started { process_id } => break process_id,
            Message::Error { message } => return Err(SandboxError::Refused(message)),
            other => log::debug!("before Started, ignoring {other:?}"),
        }
    };
    let started = Instant::now();
    current.store(process, Ordering::SeqCst);
    match stdio.stdin {
        Some(input) => {
            let writer = writer.clone();
            // The user's stdin may block forever (a terminal); the thread is not joined.
            std::thread::Builder::new()
                .name("husk-stdin".into())
                .spawn(move || forward_stdin(input, &writer, process))
                .map_err(husk_protocol::ProtocolError::Io)?;
        }
        None => send(writer, &Message::StdinClose { process })?,
    }
    let (mut stdout, mut stderr) = (stdio.stdout, stdio.stderr);
    loop {
        match read_message(conn)? {
            Message::Stdout { data, .. } => write_out(&mut stdout, &data),
            Message::Stderr { data, .. } => write_out(&mut stderr, &data),
            Message::Exited { process: p, status } if p == process => return Ok((status, started)),
            Message::Error { message } => return Err(SandboxError::Refused(message)),
            other => log::debug!("while running, ignoring {other:?}"),
        }
    }
}

/// A closed reader (e.g. `| head`) must not stop the container, so errors are dropped.
fn write_out(out: &mut Box<dyn Write + Send>, data: &[u8]) {
    let _ = out.write_all(data).and_then(|()| out.flush());
}

fn forward_stdin(mut input: Box<dyn Read + Send>, writer: &Writer, process: ProcessId) {
    let mut buf = vec![0u8; MAX_DATA_CHUNK];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let msg = Message::Stdin {
            process,
            data: buf[..n].to_vec(),
        };
        if send(writer, &msg).is_err() {
            return;
        }
    }
    let _ = send(writer, &Message::StdinClose { process });
}
