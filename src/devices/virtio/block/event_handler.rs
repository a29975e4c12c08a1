//! Event-manager glue of virtio-blk: the activation eventfd, the queue eventfd, the
//! io_uring's completion eventfd and the rate limiter's timer.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::Block;
use crate::devices::virtio::queues::ACTIVATE_TOKEN;

/// Event data of the io_uring's completion eventfd.
const RING_TOKEN: u32 = 0x105;
/// Event data of the rate limiter's timer.
const LIMITER_TOKEN: u32 = 0x106;

impl MutEventSubscriber for Block {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ACTIVATE_TOKEN => self.queues.on_activate(ops),
            0 if self.queues.take_queue_event(0) => self.process(),
            RING_TOKEN => self.on_completions(),
            LIMITER_TOKEN => {
                self.limiter.on_timer();
                self.process();
            }
            _ => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.queues.init_events(ops);
        let timer = Events::with_data(self.limiter.timer(), LIMITER_TOKEN, EventSet::IN);
        if let Err(e) = ops.add(timer) {
            log::error!("virtio-blk: cannot watch the rate limiter's timer: {e}");
        }
        if let Some(ring) = &self.ring {
            let ev = Events::with_data(ring.eventfd(), RING_TOKEN, EventSet::IN);
            if let Err(e) = ops.add(ev) {
                log::error!("virtio-blk: cannot watch the io_uring: {e}");
            }
        }
    }
}
