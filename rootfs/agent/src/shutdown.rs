//! How the agent ends the guest: its containers are stopped (politely first when the
//! stop allows a grace, then SIGKILL), filesystems synced, the guest reset. Two causes
//! take this path: the host's `Shutdown` (no grace: the host wants the VM gone) and
//! Ctrl+Alt+Del (a grace: a container may finish its writes, see [`crate::cad`]).

use std::time::{Duration, Instant};

use crate::agent::Agent;

/// How long containers have between SIGTERM and SIGKILL on Ctrl+Alt+Del.
pub const CAD_GRACE: Duration = Duration::from_secs(3);

/// How long the agent waits for killed containers to be torn down before it syncs.
pub const KILL_WAIT: Duration = Duration::from_secs(1);

/// How often the container count is looked at while waiting.
const POLL: Duration = Duration::from_millis(10);

/// What a stop does to the agent's containers.
pub trait Containers {
    /// Sends SIGTERM to the containers' processes.
    fn terminate(&self);
    /// SIGKILLs every container (and discards one made ahead of its Run).
    fn kill(&self);
    /// How many containers are not yet torn down.
    fn count(&self) -> usize;
}

impl Containers for Agent {
    fn terminate(&self) {
        self.terminate_all();
    }

    fn kill(&self) {
        self.kill_all();
    }

    fn count(&self) -> usize {
        self.container_count()
    }
}

/// How long a stop waits at each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Between SIGTERM and SIGKILL; `None` kills at once.
    pub grace: Option<Duration>,
    /// After SIGKILL, for the containers to be torn down.
    pub kill_wait: Duration,
}

impl Timeouts {
    /// The host's `Shutdown`: SIGKILL at once.
    pub const SHUTDOWN: Self = Self {
        grace: None,
        kill_wait: KILL_WAIT,
    };
    /// Ctrl+Alt+Del: SIGTERM, [`CAD_GRACE`], then SIGKILL.
    pub const CTRL_ALT_DEL: Self = Self {
        grace: Some(CAD_GRACE),
        kill_wait: KILL_WAIT,
    };
}

/// What a stop found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Containers still there when SIGKILL went out.
    pub killed: usize,
    /// Containers still there when the stop gave up waiting.
    pub left: usize,
}

/// Stops every container within `timeouts.grace` plus `timeouts.kill_wait` (and the
/// time one look at the count takes): SIGTERM and the grace if there is one, then
/// SIGKILL to whatever is left.
pub fn stop_containers(containers: &impl Containers, timeouts: Timeouts) -> Stopped {
    if let Some(grace) = timeouts.grace {
        containers.terminate();
        wait_until_none(containers, grace);
    }
    let killed = containers.count();
    containers.kill();
    wait_until_none(containers, timeouts.kill_wait);
    Stopped {
        killed,
        left: containers.count(),
    }
}

/// Waits up to `within` for the count to reach zero.
fn wait_until_none(containers: &impl Containers, within: Duration) {
    let deadline = Instant::now() + within;
    while containers.count() > 0 && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
}

/// Stops the containers (`why` names the cause on the console), syncs and resets the
/// guest, which ends the VM.
pub fn power_off(containers: &impl Containers, why: &str, timeouts: Timeouts) -> ! {
    crate::console::log(&format!("{why}: stopping containers"));
    let stopped = stop_containers(containers, timeouts);
    if timeouts.grace.is_some() && stopped.killed > 0 {
        crate::console::log(&format!(
            "{why}: {} container(s) killed after the grace",
            stopped.killed
        ));
    }
    if stopped.left > 0 {
        crate::console::log(&format!("{why}: {} container(s) left", stopped.left));
    }
    crate::console::reboot()
}

#[cfg(test)]
#[path = "shutdown_tests.rs"]
mod tests;
