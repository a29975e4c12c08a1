//! The errors of the agent's container runtime.

use crate::cgroup::CgroupError;
use crate::prepare::PrepareError;
use crate::rootfs::RootfsError;
use crate::spawn::SpawnError;
use crate::spec::SpecError;

/// Errors of a Run or Exec request, sent to the host as Error messages.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// An invalid request.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The process could not be prepared.
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    /// The cgroup could not be set up.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The root filesystem could not be mounted.
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    /// The process could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// An agent-side resource failed.
    #[error("{what}")]
    Io {
        /// What failed.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Exec named a container that does not run.
    #[error("no such container: {0}")]
    NoContainer(String),
    /// Run named a container that already runs.
    #[error("container {0} already exists")]
    Exists(String),
    /// A copy (`husk cp`) could not start.
    #[error("{0}")]
    Copy(String),
    /// A container cannot be made ahead (Prepare).
    #[error("{0}")]
    NotPreparable(String),
    /// Limits were asked for but the agent has no cgroup hierarchy.
    #[error("limits for container {0} need cgroup v2, which is not available")]
    NoCgroups(String),
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    move |source| AgentError::Io {
        what: what.into(),
        source,
    }
}
