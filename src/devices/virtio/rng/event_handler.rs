//! Event-manager glue of virtio-rng: the activation eventfd and the queue eventfd.

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::Rng;
use crate::devices::virtio::queues::ACTIVATE_TOKEN;

impl MutEventSubscriber for Rng {
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, SubscriberOps};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::devices::virtio::descriptor::test_util::*;
    use crate::devices::virtio::{Interrupt, VirtioDevice};

    #[test]
    fn queue_notification_through_event_loop_fills_buffer_and_interrupts() {
        let mem = memory();
        let (mock, q) = queue(&mem, 0, 16);
        mock.add_desc_chains(&[w(0x10000, 32)], 0).unwrap();
        let rng = Arc::new(Mutex::new(Rng::new().unwrap()));
        let mut manager = EventManager::<Arc<Mutex<Rng>>>::new().unwrap();
        manager.add_subscriber(rng.clone());
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let kick = evt.try_clone().unwrap();
        let irq = Arc::new(Interrupt::new().unwrap());
        rng.lock()
            .unwrap()
            .activate(mem.clone(), irq.clone(), vec![(q, evt)])
            .unwrap();
        manager.run_with_timeout(100).unwrap();
        kick.write(1).unwrap();
        manager.run_with_timeout(100).unwrap();
        assert_eq!(used(&mock, 0), (0, 32));
        assert_eq!(irq.status(), crate::devices::virtio::INT_VRING);
    }
}

#[cfg(test)]
mod hostile_tests {
    use std::sync::Arc;

    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::devices::virtio::descriptor::test_util::*;
    use crate::devices::virtio::{Interrupt, VirtioDevice};

    #[test]
    fn chain_outside_memory_breaks_device_and_later_chains_are_ignored() {
        let mem = memory();
        let (mock, q) = queue(&mem, 0, 16);
        mock.add_desc_chains(&[w(0x2000_0000, 8), w(0x10000, 8)], 0)
            .unwrap();
        let mut rng = Rng::new().unwrap();
        let irq = Arc::new(Interrupt::new().unwrap());
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        rng.activate(mem.clone(), irq.clone(), vec![(q, evt)])
            .unwrap();
        rng.process();
        rng.process();
        assert!(irq.needs_reset());
        assert_eq!(mock.used().idx().load(), 0);
    }
}
