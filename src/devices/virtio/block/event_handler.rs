//! Event-manager glue of virtio-blk: the activation eventfd and the queue eventfd.

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::Block;
use crate::devices::virtio::queues::ACTIVATE_TOKEN;

impl MutEventSubscriber for Block {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ACTIVATE_TOKEN => self.queues.on_activate(ops),
            0 if self.queues.take_queue_event(0) => self.process(),
            _ => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.queues.init_events(ops);
    }
}
