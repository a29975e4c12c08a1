//! New limits for a running VM's disk or network card (an API `PATCH`): the device
//! changes its rate limiter on its own, and the VM's configuration records the limits
//! then in force, so a snapshot taken afterwards restores them.

use crate::devices::rate_limiter::{LimiterKind, RateLimiterConfig};

use super::{devices, RunningVm, VmError};

/// Which limiter of a running VM a change is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimiterTarget<'a> {
    /// The disk whose configured `id` (its serial) is this.
    Disk(&'a str),
    /// One direction of the network card whose configured `id` is this.
    Net(&'a str, LimiterKind),
}

impl RunningVm {
    /// Change the limits of `target` while the guest runs (or is paused): each bucket
    /// `change` gives replaces the device's, full, and one of size 0 removes it. The
    /// limits then in force.
    pub fn update_rate_limiter(
        &mut self,
        target: LimiterTarget<'_>,
        change: &RateLimiterConfig,
    ) -> Result<RateLimiterConfig, VmError> {
        let (slot, index, name) = self.limiter_slot(target)?;
        let kind = match target {
            LimiterTarget::Disk(_) => LimiterKind::Disk,
            LimiterTarget::Net(_, kind) => kind,
        };
        let device_loop = self
            .device_loop
            .as_ref()
            .ok_or_else(|| VmError::State("the VM's devices are gone".into()))?;
        let now = device_loop
            .update_rate_limiter(slot, kind, change)
            .map_err(|source| VmError::RateLimiter {
                device: name,
                source,
            })?;
        let in_force = RateLimiterConfig::in_force(Some(&now));
        let config = &mut self.config;
        match target {
            LimiterTarget::Disk(_) => config.disks[index].rate_limiter = in_force,
            LimiterTarget::Net(_, LimiterKind::Receive) => {
                config.nets[index].rx_rate_limiter = in_force;
            }
            LimiterTarget::Net(_, LimiterKind::Transmit) => {
                config.nets[index].tx_rate_limiter = in_force;
            }
            // A network card has no disk limiter: it refused above.
            LimiterTarget::Net(_, LimiterKind::Disk) => {}
        }
        Ok(now)
    }

    /// The device slot of `target`, its index among the disks or the network cards,
    /// and a name for messages.
    fn limiter_slot(&self, target: LimiterTarget<'_>) -> Result<(usize, usize, String), VmError> {
        let missing = |what, id: &str| VmError::NoDevice {
            what,
            id: id.to_string(),
        };
        match target {
            LimiterTarget::Disk(id) => {
                let index = (self.config.disks.iter())
                    .position(|d| d.id.as_deref() == Some(id))
                    .ok_or_else(|| missing("disk", id))?;
                Ok((index, index, format!("disk {id}")))
            }
            LimiterTarget::Net(id, _) => {
                let index = (self.config.nets.iter())
                    .position(|n| n.id.as_deref() == Some(id))
                    .ok_or_else(|| missing("network card", id))?;
                let slot = devices::net_slot(&self.config, index);
                Ok((slot, index, format!("network card {id}")))
            }
        }
    }
}
