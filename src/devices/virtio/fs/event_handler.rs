//! Event-manager glue of virtio-fs: the daemon's call eventfds become the device's
//! interrupt (with INT_VRING set, which the guest's virtio-mmio driver checks; an irqfd
//! handed straight to the daemon would raise the line without it). Tested with a real
//! daemon in `daemon_tests.rs`.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::Fs;
use crate::devices::virtio::Interrupt;

impl MutEventSubscriber for Fs {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let Some(call) = usize::try_from(events.data())
            .ok()
            .and_then(|i| self.calls.get(i))
        else {
            return;
        };
        Interrupt::relay_call(self.interrupt.as_deref(), call, "fs");
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, call) in self.calls.iter().enumerate() {
            let data = u32::try_from(i).expect("a device has few queues");
            if let Err(e) = ops.add(Events::with_data(call, data, EventSet::IN)) {
                log::error!("virtio-fs: cannot watch call eventfd {i}: {e}");
            }
        }
    }
}
