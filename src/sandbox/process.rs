//! A process running in a sandbox's container: its id, its container, its exit.

use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use husk_protocol::{ExitStatus, Message, ProcessId, TtySize};

use super::{demux, SandboxError};

/// A process running in a sandbox's container.
pub struct Process {
    pub(super) id: ProcessId,
    pub(super) container: String,
    pub(super) exit: Mutex<Receiver<demux::ExitResult>>,
    pub(super) ended: std::sync::OnceLock<Result<ExitStatus, String>>,
    pub(super) demux: Arc<demux::Demux>,
    pub(super) started: Instant,
    /// Its container was the one the agent made ahead (an image template's).
    pub(super) prepared: bool,
}

impl Process {
    /// Whether its container was made ahead, in the image template it started from,
    /// rather than when it was asked for.
    pub fn prepared(&self) -> bool {
        self.prepared
    }

    /// The agent's number for this process.
    pub fn id(&self) -> ProcessId {
        self.id
    }

    /// The container it runs in (give it to [`Sandbox::exec`] to run more there).
    pub fn container_id(&self) -> &str {
        &self.container
    }

    /// Send it a signal.
    pub fn signal(&self, signal: i32) -> Result<(), SandboxError> {
        let process = self.id;
        Ok(self.demux.send(&Message::Signal { process, signal })?)
    }

    /// Resize its terminal (processes started with a `tty`).
    pub fn resize(&self, size: TtySize) -> Result<(), SandboxError> {
        let message = Message::Resize {
            process: self.id,
            rows: size.rows,
            cols: size.cols,
        };
        Ok(self.demux.send(&message)?)
    }

    /// Wait for it to end; its output has all been written when this returns. Other
    /// threads may signal or resize it meanwhile; later calls return the same result.
    pub fn wait(&self) -> Result<ExitStatus, SandboxError> {
        let ended = self.ended.get_or_init(|| {
            let exit = self.exit.lock().unwrap_or_else(|e| e.into_inner());
            match exit.recv() {
                Ok(result) => result,
                Err(_) => Err(self.demux.closed_reason()),
            }
        });
        ended.clone().map_err(SandboxError::Lost)
    }
}
