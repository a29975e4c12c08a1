//! Every device held still for a snapshot: locked (the event loop waits at its next
//! event meanwhile) and quiesced, then let go on where it stopped.

use std::sync::{Arc, Mutex, MutexGuard};

use super::VmError;
use crate::devices::virtio::VirtioDevice;

/// Every device locked, in slot order. Dropped, they let each device go on where
/// [`VirtioDevice::quiesce`] stopped it ([`VirtioDevice::resume`]) before its lock goes.
pub struct DeviceGuards<'a>(Vec<MutexGuard<'a, dyn VirtioDevice + 'static>>);

impl Drop for DeviceGuards<'_> {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(|d| d.resume());
    }
}

impl<'a> DeviceGuards<'a> {
    /// Lock each of `devices`, in order (a poisoned lock is taken as it is: the device
    /// is still the one the VM has).
    pub(super) fn lock(devices: &'a [Arc<Mutex<dyn VirtioDevice>>]) -> Self {
        Self(
            devices
                .iter()
                .map(|d| d.lock().unwrap_or_else(|e| e.into_inner()))
                .collect(),
        )
    }

    /// Quiesce every device in slot order; the first that cannot stop ends it with an
    /// error naming its slot (dropping the guards then resumes every device).
    pub(super) fn quiesce(&mut self) -> Result<(), VmError> {
        for (slot, device) in self.0.iter_mut().enumerate() {
            device
                .quiesce()
                .map_err(|source| VmError::Hold { slot, source })?;
        }
        Ok(())
    }

    /// The devices, in slot order.
    pub(super) fn devices(&self) -> impl Iterator<Item = &dyn VirtioDevice> {
        self.0.iter().map(|d| &**d)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use virtio_queue::Queue;
    use vm_memory::GuestMemoryMmap;
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::devices::virtio::persist::DevicePersist;
    use crate::devices::virtio::{Interrupt, VirtioError};

    /// Counts its quiesces and resumes; `fails` refuses to stop.
    struct Probe {
        fails: bool,
        quiesced: Arc<AtomicUsize>,
        resumed: Arc<AtomicUsize>,
    }

    impl VirtioDevice for Probe {
        fn device_type(&self) -> u32 {
            4
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[8]
        }
        fn avail_features(&self) -> u64 {
            0
        }
        fn set_acked_features(&mut self, _: u64) {}
        fn read_config(&self, _: u64, _: &mut [u8]) {}
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(
            &mut self,
            _: GuestMemoryMmap,
            _: Arc<Interrupt>,
            _: Vec<(Queue, EventFd)>,
        ) -> Result<(), VirtioError> {
            Ok(())
        }
        fn reset(&mut self) {}
        fn quiesce(&mut self) -> Result<(), VirtioError> {
            self.quiesced.fetch_add(1, Ordering::Relaxed);
            match self.fails {
                true => Err(VirtioError::Quiesce {
                    device: "probe".into(),
                    source: "the backend kept its rings".into(),
                }),
                false => Ok(()),
            }
        }
        fn resume(&mut self) {
            self.resumed.fetch_add(1, Ordering::Relaxed);
        }
        fn describe(&self) -> String {
            "probe".into()
        }
        fn persist(&self) -> DevicePersist {
            DevicePersist::Rng
        }
    }

    type Devices = Vec<Arc<Mutex<dyn VirtioDevice>>>;

    /// Devices failing as `fails` says, with shared quiesce and resume counters.
    fn probes(fails: &[bool]) -> (Devices, [Arc<AtomicUsize>; 2]) {
        let counters = [Arc::default(), Arc::default()];
        let devices = fails
            .iter()
            .map(|&fails| {
                let probe = Probe {
                    fails,
                    quiesced: Arc::clone(&counters[0]),
                    resumed: Arc::clone(&counters[1]),
                };
                Arc::new(Mutex::new(probe)) as Arc<Mutex<dyn VirtioDevice>>
            })
            .collect();
        (devices, counters)
    }

    fn count(c: &AtomicUsize) -> usize {
        c.load(Ordering::Relaxed)
    }

    #[test]
    fn every_device_quiesces_and_resumes_once() {
        let (devices, [quiesced, resumed]) = probes(&[false, false, false]);
        let mut guards = DeviceGuards::lock(&devices);
        guards.quiesce().expect("no device fails");
        assert_eq!(guards.devices().count(), 3);
        assert_eq!(count(&resumed), 0, "held devices stay still");
        drop(guards);
        assert_eq!((count(&quiesced), count(&resumed)), (3, 3));
        assert!(devices.iter().all(|d| d.try_lock().is_ok()), "locks let go");
    }

    #[test]
    fn a_device_that_cannot_stop_refuses_the_hold_and_every_device_goes_on() {
        let (devices, [quiesced, resumed]) = probes(&[false, true, false]);
        let mut guards = DeviceGuards::lock(&devices);
        let err = guards.quiesce().expect_err("slot 1 fails");
        let chain = crate::error_chain(&err);
        assert!(matches!(err, VmError::Hold { slot: 1, .. }), "{chain}");
        assert!(
            chain.contains("probe") && chain.contains("kept its rings"),
            "{chain}"
        );
        assert_eq!(count(&quiesced), 2, "slot 2 is never asked");
        drop(guards);
        assert_eq!(count(&resumed), 3);
    }
}
