//! Where a sandboxed process's stdio comes from and goes to.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use husk_protocol::{Message, ProcessId, MAX_DATA_CHUNK};

use super::demux::{Demux, Sink};

/// Where a process's stdio comes from and goes to.
pub struct Stdio {
    /// Standard input (`None`: the process gets an empty stdin).
    pub stdin: Option<Box<dyn Read + Send>>,
    /// Standard output.
    pub stdout: Sink,
    /// Standard error.
    pub stderr: Sink,
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

    /// No input; output kept in memory: returns the stdio and its (stdout, stderr).
    pub fn capture() -> (Self, Buffer, Buffer) {
        let (out, err) = (Buffer::default(), Buffer::default());
        let stdio = Self {
            stdin: None,
            stdout: Box::new(out.clone()),
            stderr: Box::new(err.clone()),
        };
        (stdio, out, err)
    }
}

/// Output kept in memory; clones share the bytes.
#[derive(Clone, Default)]
pub struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Buffer {
    /// A copy of the bytes written so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// The bytes written so far as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }
}

impl Write for Buffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("a writer panicked"))?
            .extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Copy `input` to the process until its end, then close the process's stdin.
pub(crate) fn forward_stdin(mut input: Box<dyn Read + Send>, demux: &Demux, process: ProcessId) {
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
        if demux.send(&msg).is_err() {
            return;
        }
    }
    drop(demux.send(&Message::StdinClose { process }));
}
