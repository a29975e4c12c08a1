//! Event-manager glue of virtio-vsock: queue eventfds, the listening socket and one
//! edge-triggered registration per host stream.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::muxer::{FdChange, LISTENER_TOKEN};
use super::Vsock;
use crate::devices::virtio::queues::ACTIVATE_TOKEN;

impl Vsock {
    fn apply_fd_changes(&mut self, ops: &mut EventOps) {
        for change in self.muxer.take_fd_changes() {
            let result = match &change {
                FdChange::Add { fd, token } => {
                    let set = EventSet::IN
                        | EventSet::OUT
                        | EventSet::EDGE_TRIGGERED
                        | EventSet::READ_HANG_UP;
                    ops.add(Events::with_data_raw(*fd, *token, set))
                }
                // Removed before the socket is dropped, while its fd is still valid.
                FdChange::Remove(stream) => ops.remove(Events::empty(stream)),
            };
            if let Err(e) = result {
                log::warn!("vsock: event registration: {e}");
            }
        }
    }
}

impl MutEventSubscriber for Vsock {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let set = events.event_set();
        match events.data() {
            ACTIVATE_TOKEN => self.queues.on_activate(ops),
            0 => {
                self.queues.take_queue_event(0);
            }
            1 if self.queues.take_queue_event(1) => self.process_tx(),
            // The driver refilled the event queue; nothing waits for it.
            2 | 1 => {
                self.queues.take_queue_event(2);
            }
            LISTENER_TOKEN => self.muxer.accept(),
            token => {
                let readable =
                    set.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP);
                self.muxer
                    .on_stream_event(token, readable, set.contains(EventSet::OUT));
            }
        }
        self.process_rx();
        self.apply_fd_changes(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.queues.init_events(ops);
        let listener = Events::with_data(self.muxer.listener(), LISTENER_TOKEN, EventSet::IN);
        if let Err(e) = ops.add(listener) {
            log::error!("vsock: cannot watch the host socket: {e}");
        }
    }
}
