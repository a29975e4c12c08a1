//! `husk cp` with a sandbox's container: a copy runs as a process of the agent's
//! (`Message::CopyOut`, `Message::CopyIn`), so the archive travels as its stdout or
//! its flow-controlled stdin and its end is an `Exited` like any other (see
//! `docs/protocol.md`). The archives themselves are `husk-copy`'s.

use husk_protocol::Message;

use super::{Process, Sandbox, SandboxError, Stdio};

/// One copy between the caller and a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyRequest {
    /// The container's `path` comes out as a tar stream on the process's stdout.
    Out {
        /// The source in the container.
        path: String,
    },
    /// The tar stream given as the process's stdin goes to the container's `path`.
    In {
        /// The destination in the container.
        path: String,
        /// The source was written `DIR/.`: only its contents go.
        contents: bool,
        /// Keep the archived owners (`husk cp -a`); else root owns the files.
        preserve_owner: bool,
        /// The archive is the caller's own tar stream (`husk cp - NAME:DIR`): its
        /// entries go into the existing directory `path` as they are.
        as_is: bool,
    },
}

impl CopyRequest {
    /// The request for container `container`.
    pub fn message(&self, container: &str) -> Message {
        let container_id = container.to_string();
        match self.clone() {
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
        self.request(&copy.message(container), container.to_string(), stdio)
    }
}
