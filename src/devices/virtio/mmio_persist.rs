//! Saving and restoring a virtio-mmio slot ([`SlotState`]): the registers as the driver
//! left them, and, for a device that was running, its queues rebuilt at their saved
//! positions and the device activated again through the same path as DRIVER_OK.

use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

use super::MmioTransport;
use crate::devices::virtio::persist::{PersistError, SlotState};
use crate::devices::virtio::VirtioDevice;

impl MmioTransport {
    /// The slot's state, with `dev` this transport's device, locked by the caller (who
    /// holds every device still while the VM is saved) and the vCPUs parked.
    pub fn save_with(&self, dev: &dyn VirtioDevice) -> SlotState {
        SlotState {
            mmio: self.state.clone(),
            interrupt_status: self.interrupt.status(),
            activated: self.activated,
            queues: if self.activated {
                dev.queue_snapshots()
            } else {
                Vec::new()
            },
            device: dev.persist(),
        }
    }

    /// Put `saved` back into this freshly built slot `slot` (same device kind, new
    /// backend) and, if it ran, activate it with its queues where they were. Nothing of
    /// the guest runs yet, so no lock order with the vCPUs is at stake.
    pub fn restore(&mut self, slot: usize, saved: &SlotState) -> Result<(), PersistError> {
        let here = self.device_type;
        if saved.device.device_type() != here {
            return Err(PersistError::WrongDevice {
                slot,
                saved: saved.device.device_type(),
                here,
            });
        }
        let queue_err = |what: String| PersistError::Queue { slot, what };
        if saved.mmio.queues.len() != self.state.queues.len() {
            return Err(queue_err(format!(
                "{} queue registers saved, the device has {}",
                saved.mmio.queues.len(),
                self.state.queues.len()
            )));
        }
        self.state = saved.mmio.clone();
        self.dev().set_acked_features(saved.mmio.acked_features);
        self.render();
        if saved.activated {
            self.activate_saved(slot, saved)?;
            if self.dev().after_restore(&saved.device) {
                self.notify_config_change();
            }
        }
        // Bits the driver had not acknowledged are raised again: an interrupt in flight
        // at the snapshot is not lost, and a spurious one is harmless.
        let pending = saved.interrupt_status;
        if pending != 0 {
            self.interrupt.raise_bits(pending);
        }
        Ok(())
    }

    fn activate_saved(&mut self, slot: usize, saved: &SlotState) -> Result<(), PersistError> {
        let queue_err = |what: String| PersistError::Queue { slot, what };
        if saved.queues.len() != self.queue_evts.len() {
            return Err(queue_err(format!(
                "{} queues saved, the device has {}",
                saved.queues.len(),
                self.queue_evts.len()
            )));
        }
        let mut queues = Vec::with_capacity(saved.queues.len());
        for (i, (q, evt)) in saved.queues.iter().zip(&self.queue_evts).enumerate() {
            let queue = q
                .to_queue()
                .map_err(|e| queue_err(format!("queue {i}: {e:?}")))?;
            if !queue.is_valid(&self.mem) {
                return Err(queue_err(format!("queue {i}: rings outside guest memory")));
            }
            let evt: EventFd = evt
                .try_clone()
                .map_err(|e| queue_err(format!("queue {i} eventfd: {e}")))?;
            queues.push((queue, evt));
        }
        let (mem, irq) = (self.mem.clone(), self.interrupt.clone());
        self.dev()
            .activate(mem, irq, queues)
            .map_err(|e| PersistError::Activate {
                slot,
                message: crate::error_chain(&e),
            })?;
        self.activated = true;
        Ok(())
    }
}
