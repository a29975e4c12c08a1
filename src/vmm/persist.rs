//! A whole VM as plain data ([`MicrovmState`]): the configuration it was built from,
//! the KVM state of the VM and of each vCPU, the console UART, the i8042, and every
//! virtio slot.
//! Guest memory is not in it: [`crate::snapshot`] writes it beside, as its own file.
//!
//! Taking it: the vCPUs are parked (each saves itself on its own thread), then every
//! virtio device is locked, which holds the device event loop at its next event, so
//! neither guest code nor a device changes guest memory or a queue while the state and
//! the memory are read. [`Quiesced`] keeps those locks until it is dropped.

use std::sync::MutexGuard;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
use crate::devices::i8042::I8042State;
use crate::devices::serial::SerialPersist;
use crate::devices::virtio::persist::SlotState;

use super::hold::DeviceGuards;
use super::vstate::{VcpuState, VmState};
use super::{RunningVm, VmError};

/// How long a save waits for the parked vCPUs to answer.
const SAVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything of a VM but its memory.
#[derive(Serialize, Deserialize)]
pub struct MicrovmState {
    /// The configuration it was built from; a restore rebuilds the devices in the same
    /// slots from it, with new backends.
    pub config: VmConfig,
    /// PICs, IOAPIC, PIT, kvmclock.
    pub vm: VmState,
    /// Each vCPU, in id order.
    pub vcpus: Vec<VcpuState>,
    /// COM1.
    pub serial: SerialPersist,
    /// The i8042 and its keyboard (bytes the guest has not read yet included).
    pub i8042: I8042State,
    /// Each virtio-mmio slot, in slot order.
    pub devices: Vec<SlotState>,
}

impl std::fmt::Debug for MicrovmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MicrovmState")
            .field("cpus", &self.vcpus.len())
            .field("memory_mib", &self.config.memory_mib)
            .field("devices", &self.devices.len())
            .finish_non_exhaustive()
    }
}

/// A paused VM with its devices held: guest memory stays as it is while this lives.
pub struct Quiesced<'a> {
    _devices: DeviceGuards<'a>,
    _serial: MutexGuard<'a, crate::devices::serial::SerialDevice>,
    /// The state taken.
    pub state: MicrovmState,
}

impl RunningVm {
    /// Take the VM's state; the vCPUs must be paused ([`RunningVm::pause`]). The returned
    /// guard holds the devices still until dropped, so that guest memory can be copied
    /// consistently with the state.
    pub fn quiesce(&self) -> Result<Quiesced<'_>, VmError> {
        if !self.is_paused() {
            return Err(VmError::State("the VM must be paused to save it".into()));
        }
        let count = self.vcpu_count();
        let mut vcpus = Vec::with_capacity(count);
        for (id, answer) in self
            .shared
            .parking
            .save_all(count, SAVE_TIMEOUT)
            .into_iter()
            .enumerate()
        {
            match answer {
                Some(Ok(state)) => vcpus.push(state),
                Some(Err(e)) => return Err(VmError::State(format!("saving vCPU {id}: {e}"))),
                None => {
                    return Err(VmError::State(format!(
                        "vCPU {id} did not save its state within {SAVE_TIMEOUT:?}"
                    )))
                }
            }
        }
        let loop_ = self
            .device_loop
            .as_ref()
            .ok_or_else(|| VmError::State("the VM's devices are gone".into()))?;
        let (devices, slots) = loop_.hold()?;
        let serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        let state = MicrovmState {
            config: self.config.clone(),
            vm: VmState::save(&self.vm)?,
            vcpus,
            serial: serial.persist(),
            i8042: self.i8042.lock().unwrap_or_else(|e| e.into_inner()).state(),
            devices: slots,
        };
        Ok(Quiesced {
            _devices: devices,
            _serial: serial,
            state,
        })
    }

    /// Guest RAM (for writing it out while [`Quiesced`]).
    pub fn guest_ram(&self) -> &crate::memory::GuestRam {
        &self.ram
    }
}
