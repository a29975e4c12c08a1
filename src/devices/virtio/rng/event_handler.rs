//! Event-manager glue of virtio-rng: the activation eventfd, the queue eventfd and the
//! rate limiter's timer.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::Rng;
use crate::devices::virtio::queues::ACTIVATE_TOKEN;

/// Event data of the rate limiter's timer.
const LIMITER_TOKEN: u32 = 0x106;

impl MutEventSubscriber for Rng {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ACTIVATE_TOKEN => self.queues.on_activate(ops),
            0 if self.queues.take_queue_event(0) => self.process(),
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
            log::error!("virtio-rng: cannot watch the rate limiter's timer: {e}");
        }
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
        let (mut manager, _rng, kick, irq) = activated(&mem, q, None);
        kick.write(1).unwrap();
        manager.run_with_timeout(100).unwrap();
        assert_eq!(used(&mock, 0), (0, 32));
        assert_eq!(irq.status(), crate::devices::virtio::INT_VRING);
    }

    type Manager = EventManager<Arc<Mutex<Rng>>>;

    /// A device (under `limits`) activated with queue `q` in an event loop that has
    /// served the activation; the loop, the device, the queue's kick and its interrupt.
    fn activated(
        mem: &vm_memory::GuestMemoryMmap,
        q: virtio_queue::Queue,
        limits: Option<&crate::devices::rate_limiter::RateLimiterConfig>,
    ) -> (Manager, Arc<Mutex<Rng>>, EventFd, Arc<Interrupt>) {
        let rng = Arc::new(Mutex::new(Rng::new(limits).unwrap()));
        let mut manager = Manager::new().unwrap();
        manager.add_subscriber(rng.clone());
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let kick = evt.try_clone().unwrap();
        let irq = Arc::new(Interrupt::new().unwrap());
        rng.lock()
            .unwrap()
            .activate(mem.clone(), irq.clone(), vec![(q, evt)])
            .unwrap();
        manager.run_with_timeout(100).unwrap();
        (manager, rng, kick, irq)
    }

    /// Run `manager` for one event at a time, `n` times (each waited for at most 10 s),
    /// and give the driver's used index after each.
    fn used_after_each_event(
        manager: &mut Manager,
        mock: &virtio_queue::mock::MockSplitQueue<'_, vm_memory::GuestMemoryMmap>,
        n: usize,
    ) -> Vec<u16> {
        let mut seen = Vec::new();
        while seen.len() < n {
            assert!(manager.run_with_timeout(10_000).unwrap() > 0, "no event");
            seen.push(mock.used().idx().load());
        }
        seen
    }

    #[test]
    fn under_a_byte_cap_each_refill_serves_one_request_and_the_rest_wait_in_the_ring() {
        use crate::devices::rate_limiter::{BucketConfig, RateLimiterConfig};
        // 64 bytes per 400 ms, and requests of 48 bytes: a request leaves the bucket
        // 32 bytes (200 ms) in debt at the start, 48 (300 ms) on each refill after,
        // so each timer event serves exactly one unless the loop is 300 ms late.
        let limits = RateLimiterConfig {
            bandwidth: Some(BucketConfig {
                size: 64,
                one_time_burst: None,
                refill_time: 400,
            }),
            ops: None,
        };
        let mem = memory();
        let (mock, q) = queue(&mem, 0, 16);
        let chains: Vec<_> = (0..5u64).map(|i| w(0x10000 + i * 0x1000, 48)).collect();
        mock.add_desc_chains(&chains, 0).unwrap();
        let (mut manager, rng, kick, _irq) = activated(&mem, q, Some(&limits));
        kick.write(1).unwrap();
        // The queue's event: the full bucket and one request of debt.
        assert_eq!(used_after_each_event(&mut manager, &mock, 1), [2]);
        assert!(rng.lock().unwrap().limiter.timer().is_armed().unwrap());
        assert_eq!(mock.avail().idx().load(), 5);
        // Each event of the timer: one more request of 48 bytes.
        assert_eq!(used_after_each_event(&mut manager, &mock, 3), [3, 4, 5]);
        assert_eq!(used(&mock, 4), (4, 48));
        // Nothing waits: the timer stays disarmed.
        assert!(!rng.lock().unwrap().limiter.timer().is_armed().unwrap());
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
        let mut rng = Rng::new(None).unwrap();
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
