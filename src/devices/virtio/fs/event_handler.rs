//! Event-manager glue of virtio-fs: the daemon's call eventfds become the device's
//! interrupt, one for the signals that arrived since the last. virtiofsd signals each
//! request it completes, from a pool of threads; handing it the irqfd itself (which
//! INT_VRING staying set would allow, as vhost-net has it) was tried, and is not done
//! until a measurement shows it better (see design.md, "virtio-fs as a vhost-user
//! frontend"). Tested with a real daemon in `daemon_tests.rs`.

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
