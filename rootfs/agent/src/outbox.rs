//! The agent's sending half: whichever host connection is current. Output threads of
//! every process send through it; frames sent while no host is connected are dropped.

use std::io::Write;
use std::sync::Mutex;

use husk_protocol::{write_message, Message};

/// A shared, replaceable frame writer.
#[derive(Default)]
pub struct Outbox {
    writer: Mutex<Option<Box<dyn Write + Send>>>,
}

impl Outbox {
    /// Makes `writer` the current connection.
    pub fn connect(&self, writer: Box<dyn Write + Send>) {
        *self.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(writer);
    }

    /// Forgets the current connection.
    pub fn disconnect(&self) {
        *self.writer.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Sends one message; a write error drops the connection. Returns whether it was sent.
    pub fn send(&self, message: &Message) -> bool {
        let mut guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let Some(writer) = guard.as_mut() else {
            return false;
        };
        match write_message(writer, message) {
            Ok(()) => true,
            Err(e) => {
                crate::console::log(&format!("dropping host connection: {e}"));
                *guard = None;
                false
            }
        }
    }
}
