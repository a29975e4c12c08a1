//! Where a sandboxed process's stdio comes from and goes to.

use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex};

use husk_protocol::{Message, ProcessId, MAX_DATA_CHUNK, STDIN_WINDOW};

use super::demux::Sink;

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

/// The stdin bytes of one process that are on their way to it: sent to the agent and
/// not yet acknowledged (`StdinAck`), at most [`STDIN_WINDOW`].
#[derive(Default)]
pub(crate) struct StdinWindow {
    state: Mutex<WindowState>,
    changed: Condvar,
}

#[derive(Default)]
struct WindowState {
    in_flight: u64,
    /// The process ended or the connection is gone: nothing will be acknowledged.
    closed: bool,
}

impl StdinWindow {
    fn state(&self) -> std::sync::MutexGuard<'_, WindowState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until `n` more bytes fit in the window and count them; false once the window
    /// is closed. A chunk always fits in an empty window.
    pub fn acquire(&self, n: u64) -> bool {
        let mut state = self.state();
        loop {
            if state.closed {
                return false;
            }
            if state.in_flight == 0 || state.in_flight + n <= STDIN_WINDOW {
                state.in_flight += n;
                return true;
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The agent is done with `n` bytes.
    pub fn release(&self, n: u64) {
        let mut state = self.state();
        state.in_flight = state.in_flight.saturating_sub(n);
        self.changed.notify_all();
    }

    /// No more acknowledgements will come (the process ended, or the connection).
    pub fn close(&self) {
        self.state().closed = true;
        self.changed.notify_all();
    }
}

/// Copy `input` to the process until its end, then close the process's stdin; `send`
/// puts a message on the way (to the agent, or to a detached sandbox's monitor) and says
/// whether it could. At most [`STDIN_WINDOW`] bytes are unacknowledged at a time, so a
/// process that does not read holds up only its own stdin, never other requests.
pub(crate) fn forward_stdin(
    mut input: Box<dyn Read + Send>,
    process: ProcessId,
    window: &StdinWindow,
    mut send: impl FnMut(&Message) -> bool,
) {
    let mut buf = vec![0u8; MAX_DATA_CHUNK];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !window.acquire(n as u64) {
            // The process ended: the rest of the input has nowhere to go.
            return;
        }
        let msg = Message::Stdin {
            process,
            data: buf[..n].to_vec(),
        };
        if !send(&msg) {
            return;
        }
    }
    send(&Message::StdinClose { process });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn window_blocks_past_its_size_until_released_or_closed() {
        let window = Arc::new(StdinWindow::default());
        assert!(window.acquire(STDIN_WINDOW - 10));
        let waiter = {
            let window = window.clone();
            std::thread::spawn(move || window.acquire(20))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "20 more bytes do not fit");
        window.release(10);
        assert!(waiter.join().unwrap());
        let waiter = {
            let window = window.clone();
            std::thread::spawn(move || window.acquire(STDIN_WINDOW))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished());
        window.close();
        assert!(!waiter.join().unwrap(), "a closed window takes nothing");
    }

    #[test]
    fn a_chunk_fits_an_empty_window_whatever_its_size() {
        let window = StdinWindow::default();
        assert!(window.acquire(STDIN_WINDOW * 2));
        window.release(STDIN_WINDOW * 2);
        assert!(window.acquire(1));
    }
}
