//! What can go wrong in a sandbox's life.

use std::path::PathBuf;

use super::{net, scratch, volumes};
use crate::vmm::VmError;

/// Errors of a sandbox's life.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The agent binary or its initramfs is not available.
    #[error("guest agent: {0}")]
    Agent(String),
    /// The VM could not be built or started.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The runtime folder could not be created.
    #[error("cannot create a runtime folder in {dir}: {source}")]
    Runtime {
        /// Where.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The agent did not answer in time, or the guest ended before it did.
    #[error("the guest agent did not come up: {reason}; last console output:\n{console}")]
    AgentDown {
        /// What happened.
        reason: String,
        /// The end of the guest console.
        console: String,
    },
    /// The agent broke the protocol, refused a request, or the connection failed.
    #[error("talking to the guest agent: {0}")]
    Protocol(#[from] husk_protocol::ProtocolError),
    /// The agent reported an error for a request.
    #[error("the guest agent refused: {0}")]
    Refused(String),
    /// The connection to the agent ended (the guest stopped or broke the protocol).
    #[error("lost the guest agent: {0}")]
    Lost(String),
    /// The scratch disk (`--disk`) could not be made.
    #[error(transparent)]
    Scratch(#[from] scratch::ScratchError),
    /// The network (`--net`) could not be set up.
    #[error(transparent)]
    Network(#[from] net::NetError),
    /// A template could not be made, read or removed.
    #[error("template: {0}")]
    Template(String),
    /// A snapshot could not be taken or restored.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// The VMM process could not be started or driven.
    #[error("VMM process: {0}")]
    Vmm(String),
    /// A volume (`-v`) is invalid or its virtiofsd could not run.
    #[error(transparent)]
    Volume(#[from] volumes::VolumeError),
}
