//! The agent's sending half: whichever host connection is current. Output threads of
//! every process send through it.
//!
//! Between two connections (a guest restored from a snapshot loses the host it had;
//! the new host connects a moment later) frames are kept in a bounded backlog instead
//! of being dropped: the exit of a process that ended meanwhile must reach the new
//! host. The outbox holds frames back from the moment a connection is lost until the
//! new host's first request, so the new connection starts with the handshake and the
//! answer to `Restored`, then the backlog in order, then live frames.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Mutex;

use husk_protocol::{write_message, Message};

/// Most bytes of process output kept while no host listens; older output is dropped
/// first (control frames such as `Exited` are always kept).
pub const BACKLOG_BYTES: usize = 4 << 20;

#[derive(Default)]
struct Inner {
    writer: Option<Box<dyn Write + Send>>,
    /// Frames wait in `backlog` instead of going out (a connection was lost).
    holding: bool,
    backlog: VecDeque<Message>,
    backlog_bytes: usize,
}

/// A shared, replaceable frame writer.
#[derive(Default)]
pub struct Outbox {
    inner: Mutex<Inner>,
}

fn data_len(message: &Message) -> usize {
    match message {
        Message::Stdout { data, .. } | Message::Stderr { data, .. } => data.len(),
        _ => 0,
    }
}

impl Inner {
    fn keep(&mut self, message: &Message) {
        self.backlog_bytes += data_len(message);
        self.backlog.push_back(message.clone());
        while self.backlog_bytes > BACKLOG_BYTES {
            let Some(i) = self.backlog.iter().position(|m| data_len(m) > 0) else {
                break;
            };
            if let Some(dropped) = self.backlog.remove(i) {
                self.backlog_bytes -= data_len(&dropped);
            }
        }
    }

    /// Write `message` now; a write error loses the connection and starts holding.
    fn write(&mut self, message: &Message) -> bool {
        let Some(writer) = self.writer.as_mut() else {
            return false;
        };
        match write_message(writer, message) {
            Ok(()) => true,
            Err(e) => {
                crate::console::log(&format!("dropping host connection: {e}"));
                self.writer = None;
                self.holding = true;
                false
            }
        }
    }
}

impl Outbox {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `writer` the current connection (frames are still held if a connection
    /// was lost before: see [`Outbox::release`]).
    pub fn connect(&self, writer: Box<dyn Write + Send>) {
        self.inner().writer = Some(writer);
    }

    /// Forgets the current connection; frames are held from now on.
    pub fn disconnect(&self) {
        let mut inner = self.inner();
        inner.writer = None;
        inner.holding = true;
    }

    /// Sends one message, or keeps it in the backlog while frames are held or no host
    /// is connected. Returns whether it went out now.
    pub fn send(&self, message: &Message) -> bool {
        let mut inner = self.inner();
        if !inner.holding && inner.write(message) {
            return true;
        }
        inner.keep(message);
        false
    }

    /// Sends `message` ahead of any held frames (the answer to the new host's first
    /// request).
    pub fn send_now(&self, message: &Message) -> bool {
        self.inner().write(message)
    }

    /// Sends what was held, in order, and stops holding (the new host has made its
    /// first request).
    pub fn release(&self) {
        let mut inner = self.inner();
        if !inner.holding || inner.writer.is_none() {
            return;
        }
        while let Some(message) = inner.backlog.pop_front() {
            inner.backlog_bytes -= data_len(&message);
            if !inner.write(&message) {
                inner.backlog.push_front(message);
                return;
            }
        }
        inner.holding = false;
    }

    /// Frames waiting in the backlog.
    pub fn held(&self) -> usize {
        self.inner().backlog.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A writer whose bytes the test reads back as messages.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, d: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(d);
            Ok(d.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn messages(&self) -> Vec<Message> {
            let bytes = self.0.lock().unwrap().clone();
            let mut reader = bytes.as_slice();
            let mut out = Vec::new();
            while let Ok(m) = husk_protocol::read_message(&mut reader) {
                out.push(m);
            }
            out
        }
    }

    fn out(process: u32, data: &[u8]) -> Message {
        Message::Stdout {
            process,
            data: data.to_vec(),
        }
    }

    #[test]
    fn the_first_connection_gets_frames_at_once() {
        let outbox = Outbox::default();
        let wire = Shared::default();
        outbox.connect(Box::new(wire.clone()));
        assert!(outbox.send(&out(1, b"a")));
        assert_eq!(wire.messages(), vec![out(1, b"a")]);
    }

    #[test]
    fn frames_between_connections_reach_the_next_host_after_its_answer() {
        let outbox = Outbox::default();
        outbox.connect(Box::new(Shared::default()));
        outbox.disconnect();
        let exited = Message::Exited {
            process: 1,
            status: husk_protocol::ExitStatus {
                code: Some(0),
                signal: None,
                oom_killed: false,
            },
        };
        assert!(!outbox.send(&out(1, b"late")));
        assert!(!outbox.send(&exited));
        let wire = Shared::default();
        outbox.connect(Box::new(wire.clone()));
        // Live output while the new host has not asked anything is held too.
        assert!(!outbox.send(&out(1, b"live")));
        let ack = Message::RestoredAck { generation: 7 };
        assert!(outbox.send_now(&ack));
        outbox.release();
        assert!(outbox.send(&out(1, b"after")));
        assert_eq!(
            wire.messages(),
            vec![
                ack,
                out(1, b"late"),
                exited,
                out(1, b"live"),
                out(1, b"after")
            ]
        );
        assert_eq!(outbox.held(), 0);
    }

    #[test]
    fn a_full_backlog_drops_the_oldest_output_but_keeps_control_frames() {
        let outbox = Outbox::default();
        outbox.disconnect();
        outbox.send(&out(1, b"first"));
        outbox.send(&Message::StdinAck {
            process: 1,
            bytes: 3,
        });
        let chunk = vec![b'x'; 32 * 1024];
        let chunks = BACKLOG_BYTES / chunk.len();
        (0..chunks).for_each(|_| {
            outbox.send(&out(1, &chunk));
        });
        let inner = outbox.inner();
        assert!(inner.backlog_bytes <= BACKLOG_BYTES);
        assert_eq!(
            inner.backlog.front(),
            Some(&Message::StdinAck {
                process: 1,
                bytes: 3
            })
        );
        assert_eq!(inner.backlog.len(), chunks + 1);
    }
}
