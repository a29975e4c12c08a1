//! `husk cp` with a sandbox's container: a copy runs as a process of the agent's
//! (`Message::CopyOut`, `Message::CopyIn`), so the archive travels as its stdout or
//! its flow-controlled stdin and its end is an `Exited` like any other (see
//! `docs/protocol.md`). The archives themselves are `husk-copy`'s.

use husk_protocol::Message;

use super::{Process, Sandbox, SandboxError, Stdio};

pub use husk_copy::CopyRequest;

/// The agent's request for `copy` with container `container`.
pub(crate) fn message(copy: &CopyRequest, container: &str) -> Message {
    let container_id = container.to_string();
    match copy.clone() {
        CopyRequest::Out { path } => Message::CopyOut { container_id, path },
        CopyRequest::In {
            path,
            contents,
            preserve_owner,
            as_is,
        } => Message::CopyIn {
            container_id,
            path,
            contents,
            preserve_owner,
            as_is,
        },
    }
}

impl Sandbox {
    /// Start `copy` with the running container `container`: its archive is the
    /// process's stdout (`CopyRequest::Out`) or must be given as its stdin (`CopyRequest::In`); the
    /// process ends with code 0, or 1 after the reason on its stderr. A missing
    /// source, or a destination whose parent is missing, is refused at once.
    pub fn copy(
        &self,
        container: &str,
        copy: &CopyRequest,
        stdio: Stdio,
    ) -> Result<Process, SandboxError> {
        self.request(&message(copy, container), container.to_string(), stdio)
    }
}
