//! Event-manager glue of virtio-blk: the activation eventfd, the queue eventfd and the
//! io_uring's completion eventfd.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::Block;
use crate::devices::virtio::queues::ACTIVATE_TOKEN;

/// Event data of the io_uring's completion eventfd.
const RING_TOKEN: u32 = 0x105;

impl MutEventSubscriber for Block {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ACTIVATE_TOKEN => self.queues.on_activate(ops),
            0 if self.queues.take_queue_event(0) => self.process(),
            RING_TOKEN => self.on_completions(),
            _ => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.queues.init_events(ops);
        if let Some(ring) = &self.ring {
            let ev = Events::with_data(ring.eventfd(), RING_TOKEN, EventSet::IN);
            if let Err(e) = ops.add(ev) {
                log::error!("virtio-blk: cannot watch the io_uring: {e}");
            }
        }
    }
}
