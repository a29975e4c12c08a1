//! Event-manager glue of virtio-net: queue eventfds, the TAP (edge-triggered) and the
//! rate limiters' timers; on the kernel path (`vhost=on`) nothing of the data path
//! (the kernel signals the irqfd itself).

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Backend;
use super::Net;
use crate::devices::virtio::queues::ACTIVATE_TOKEN;

/// Event data of the TAP fd.
const TAP_TOKEN: u32 = 0x102;
/// Event data of the RX rate limiter's timer.
const RX_LIMITER_TOKEN: u32 = 0x103;
/// Event data of the TX rate limiter's timer.
const TX_LIMITER_TOKEN: u32 = 0x104;

impl MutEventSubscriber for Net {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ACTIVATE_TOKEN => {
                self.queues.on_activate(ops);
                self.process_rx();
            }
            0 if self.queues.take_queue_event(0) => self.process_rx(),
            1 if self.queues.take_queue_event(1) => self.process_tx(),
            TAP_TOKEN => {
                self.rx.readable = true;
                self.process_rx();
            }
            RX_LIMITER_TOKEN => {
                self.rx_limiter.on_timer();
                self.process_rx();
            }
            TX_LIMITER_TOKEN => {
                self.tx_limiter.on_timer();
                self.process_tx();
            }
            _ => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.queues.init_events(ops);
        for (limiter, token) in [
            (&self.rx_limiter, RX_LIMITER_TOKEN),
            (&self.tx_limiter, TX_LIMITER_TOKEN),
        ] {
            if let Err(e) = ops.add(Events::with_data(limiter.timer(), token, EventSet::IN)) {
                log::error!("virtio-net: cannot watch a rate limiter's timer: {e}");
            }
        }
        // On the kernel path only the kernel reads the TAP.
        let (Backend::Tap(tap), None) = (&self.tap, &self.kernel) else {
            return;
        };
        let set = EventSet::IN | EventSet::EDGE_TRIGGERED;
        if let Err(e) = ops.add(Events::with_data(tap, TAP_TOKEN, set)) {
            log::error!("virtio-net: cannot watch tap {}: {e}", tap.name());
        }
    }
}
