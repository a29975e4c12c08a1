//! When a sandbox reached each step of its life, and those steps as reported times.

use std::time::Instant;

use super::launch;

/// Instants of a sandbox's life.
#[derive(Debug, Clone, Copy)]
pub(super) struct Marks {
    pub(super) created: Instant,
    pub(super) initramfs_ready: Instant,
    /// A restore's snapshot was read and checked (template found or built first).
    pub(super) snapshot_loaded: Option<Instant>,
    /// The VMM was asked to boot or restore the VM (its process ready).
    pub(super) vm_requested: Option<Instant>,
    /// The agent answered the handshake (before identity and network).
    pub(super) agent_answered: Option<Instant>,
    pub(super) vm_running: Instant,
    pub(super) agent_ready: Instant,
    pub(super) run_sent: Option<Instant>,
    pub(super) process_started: Option<Instant>,
    pub(super) process_exited: Option<Instant>,
    /// The run's container was made ahead (an image template's).
    pub(super) container_prepared: Option<bool>,
}

impl Marks {
    /// The marks of a sandbox whose agent is ready now.
    pub(super) fn launched(
        created: Instant,
        initramfs_ready: Instant,
        launched: &launch::Launched,
    ) -> Self {
        Self {
            created,
            initramfs_ready,
            vm_running: launched.vm_running,
            snapshot_loaded: launched.loaded,
            vm_requested: Some(launched.requested),
            agent_answered: Some(launched.answered),
            agent_ready: Instant::now(),
            ..Marks::default()
        }
    }
}

impl Default for Marks {
    fn default() -> Self {
        let now = Instant::now();
        Self {
            created: now,
            initramfs_ready: now,
            snapshot_loaded: None,
            vm_requested: None,
            agent_answered: None,
            vm_running: now,
            agent_ready: now,
            run_sent: None,
            process_started: None,
            process_exited: None,
            container_prepared: None,
        }
    }
}

/// Milestones of a sandbox, in ms from the start of [`Sandbox::start`] (the last `run`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SandboxTimings {
    /// The runtime folder exists and the agent initramfs is found (or built).
    pub initramfs_ready_ms: Option<f64>,
    /// Warm starts: the template (or snapshot) was found, read and checked.
    pub snapshot_loaded_ms: Option<f64>,
    /// The VMM (spawned and jailed) was asked to boot or restore the VM: where a
    /// restore's or a boot's own time starts.
    pub vm_requested_ms: Option<f64>,
    /// The agent answered the handshake (warm: before it took its identity).
    pub agent_answered_ms: Option<f64>,
    /// Whether the sandbox started from a template or snapshot.
    pub warm: bool,
    /// The VM is built and its vCPUs run (kernel loaded, devices wired).
    pub vm_running_ms: Option<f64>,
    /// The agent answered on vsock and the handshake is done (guest booted).
    pub agent_ready_ms: Option<f64>,
    /// The Run request was sent.
    pub run_sent_ms: Option<f64>,
    /// The agent reported the container's process started (container created).
    pub process_started_ms: Option<f64>,
    /// The agent reported the process exited.
    pub process_exited_ms: Option<f64>,
    /// The run's container was made ahead, in the image template the sandbox started
    /// from (`None`: nothing ran).
    pub container_prepared: Option<bool>,
}
