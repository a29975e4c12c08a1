//! What every device holds once activated, and the queue loop they share.
//!
//! [`QueueSet`] keeps the guest memory, interrupt, queues and notify eventfds a device
//! received in `activate`, plus an activation eventfd: the transport activates a device
//! on a vCPU thread, and the event-manager thread learns about it through that eventfd
//! and then registers the queue eventfds (see each device's `event_handler.rs`).

use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

use super::{Interrupt, VirtioError};
use crate::devices::rate_limiter::{Throttle, Unthrottled};

/// Event data of the activation eventfd; queue eventfds use their queue index.
pub const ACTIVATE_TOKEN: u32 = 0x100;

/// Errors from the split virtqueue itself (not from one request).
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The ring could not be read or written.
    #[error("virtqueue {index}")]
    Ring {
        /// Queue index.
        index: usize,
        /// The virtio-queue error.
        #[source]
        source: virtio_queue::Error,
    },
    /// A request could not be completed even with an error status.
    #[error("virtqueue {index}: unusable request")]
    Request {
        /// Queue index.
        index: usize,
        /// What was wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The state of an activated device.
#[derive(Debug)]
pub struct Active {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
    /// The queues, in device order.
    pub queues: Vec<Queue>,
}

/// Queues, eventfds and activation state of one device.
#[derive(Debug)]
pub struct QueueSet {
    name: &'static str,
    max_sizes: Vec<u16>,
    /// Set by `activate`, cleared by `reset`.
    pub active: Option<Active>,
    evts: Vec<EventFd>,
    stale: Vec<EventFd>,
    activate_evt: EventFd,
    broken: bool,
    /// The first breakage was logged at warn level (kept across resets).
    warned: bool,
}

impl QueueSet {
    /// File descriptors a set of `queues` queues may hold at once: the activation
    /// eventfd, and the notify eventfd clones of the current and of the previous
    /// activation (kept until the loop has unregistered them).
    pub const fn max_fds(queues: usize) -> usize {
        1 + 2 * queues
    }

    /// An inactive set for device `name` with queues of `max_sizes`.
    pub fn new(name: &'static str, max_sizes: &[u16]) -> Result<Self, VirtioError> {
        Ok(Self {
            name,
            max_sizes: max_sizes.to_vec(),
            active: None,
            evts: Vec::new(),
            stale: Vec::new(),
            activate_evt: EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC).map_err(VirtioError::EventFd)?,
            broken: false,
            warned: false,
        })
    }

    /// Queue maximum sizes.
    pub fn max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }

    /// Store what `VirtioDevice::activate` received and wake the event loop.
    pub fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<(Queue, EventFd)>,
    ) -> Result<(), VirtioError> {
        if queues.len() != self.max_sizes.len() {
            return Err(VirtioError::QueueCount {
                device: self.name,
                expected: self.max_sizes.len(),
                got: queues.len(),
            });
        }
        let (queues, evts): (Vec<_>, Vec<_>) = queues.into_iter().unzip();
        self.stale.append(&mut self.evts);
        self.evts = evts;
        self.active = Some(Active {
            mem,
            interrupt,
            queues,
        });
        self.broken = false;
        self.activate_evt
            .write(1)
            .map_err(|source| VirtioError::Backend {
                device: self.name,
                source,
            })
    }

    /// Forget the queues; the eventfds stay registered until the next activation.
    pub fn reset(&mut self) {
        self.active = None;
        self.broken = false;
    }

    /// The notify eventfds of the current activation, in queue order.
    pub fn events(&self) -> &[EventFd] {
        &self.evts
    }

    /// Take every notify eventfd (current and stale) out of the set, for a device that
    /// watches them itself and closes them at its reset; the set then holds none.
    pub fn take_events(&mut self) -> Vec<EventFd> {
        let mut all = std::mem::take(&mut self.evts);
        all.append(&mut self.stale);
        all
    }

    /// Active and not broken.
    pub fn is_running(&self) -> bool {
        self.active.is_some() && !self.broken
    }

    /// Whether the device gave up on the guest.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Stop processing and report DEVICE_NEEDS_RESET; warns only the first time in
    /// the device's life (a guest could reset and break it again forever).
    pub fn mark_broken(&mut self, why: &dyn std::error::Error) {
        let why = crate::error_chain(why);
        if self.broken {
            return;
        }
        self.broken = true;
        match std::mem::replace(&mut self.warned, true) {
            false => log::warn!("virtio-{}: {why}; device needs reset", self.name),
            true => log::debug!("virtio-{}: {why}; device needs reset", self.name),
        }
        if let Some(active) = &self.active {
            active.interrupt.set_needs_reset();
        }
    }

    /// Register the activation eventfd (from `MutEventSubscriber::init`).
    pub fn init_events(&self, ops: &mut EventOps) {
        let ev = Events::with_data(&self.activate_evt, ACTIVATE_TOKEN, EventSet::IN);
        if let Err(e) = ops.add(ev) {
            log::error!(
                "virtio-{}: cannot register activation eventfd: {e}",
                self.name
            );
        }
    }

    /// Handle the activation eventfd: swap stale queue eventfds for the current ones.
    pub fn on_activate(&mut self, ops: &mut EventOps) {
        let _ = self.activate_evt.read();
        for evt in self.stale.drain(..) {
            let _ = ops.remove(Events::empty(&evt));
        }
        for (i, evt) in self.evts.iter().enumerate() {
            let data = u32::try_from(i).expect("a device has few queues");
            if let Err(e) = ops.add(Events::with_data(evt, data, EventSet::IN)) {
                log::error!(
                    "virtio-{}: cannot register queue {i} eventfd: {e}",
                    self.name
                );
            }
        }
    }

    /// Consume a notification on queue `index`; true when the device should process it.
    pub fn take_queue_event(&self, index: usize) -> bool {
        if let Some(evt) = self.evts.get(index) {
            let _ = evt.read();
        }
        self.is_running()
    }

    /// Ask the event loop to come back to queue `index` (work left after a budget).
    pub fn requeue(&self, index: usize) {
        if let Some(evt) = self.evts.get(index) {
            let _ = evt.write(1);
        }
    }

    /// Act on a processing pass of queue `index`: interrupt the driver if it asked,
    /// come back if the budget ran out, or mark the device broken on a guest error.
    pub fn finish<E: std::error::Error>(&mut self, index: usize, result: Result<Drained, E>) {
        match result {
            Ok(d) => {
                if d.notify {
                    self.signal_used();
                }
                if d.more {
                    self.requeue(index);
                }
            }
            Err(e) => self.mark_broken(&e),
        }
    }

    /// A report of where each queue stands, for a guest that hangs: the driver's avail
    /// index against the device's next one (a gap the device does not serve means a
    /// lost notification), the used index against the driver's `used_event` (an
    /// interrupt it waits for), and the interrupt status register.
    pub fn describe(&self) -> String {
        let Some(active) = &self.active else {
            return format!("virtio-{}: not activated", self.name);
        };
        let state = if self.broken { "broken" } else { "running" };
        let mut out = format!(
            "virtio-{}: {state}, interrupt status {:#x}",
            self.name,
            active.interrupt.status()
        );
        for (i, queue) in active.queues.iter().enumerate() {
            out.push_str(&format!(
                "\n  queue {i}: {}",
                describe_queue(queue, &active.mem)
            ));
        }
        out
    }

    /// The positions of the active queues, for a snapshot (empty when inactive).
    pub fn snapshots(&self) -> Vec<super::persist::QueueSnapshot> {
        self.active.as_ref().map_or_else(Vec::new, |active| {
            active
                .queues
                .iter()
                .map(super::persist::QueueSnapshot::of)
                .collect()
        })
    }

    /// Make the event loop look at every queue once (after a restore: a notification
    /// the guest sent just before the snapshot may not have been served).
    pub fn kick_all(&self) {
        (0..self.evts.len()).for_each(|i| self.requeue(i));
    }

    /// Raise the used-ring interrupt.
    pub fn signal_used(&self) {
        if let Some(active) = &self.active {
            if let Err(e) = active.interrupt.signal_used_queue() {
                log::warn!("virtio-{}: {e}", self.name);
            }
        }
    }
}

/// One queue's indices as the device and the driver see them; `?` for what guest
/// memory does not hold.
fn describe_queue(queue: &Queue, mem: &GuestMemoryMmap) -> String {
    use std::sync::atomic::Ordering;
    use vm_memory::{Bytes, GuestAddress};
    let show = |v: Option<u16>| v.map_or_else(|| "?".to_string(), |v| v.to_string());
    let size = u64::from(queue.size());
    // The ring's trailing event fields (virtio 1.2 §2.7.6, §2.7.8): the driver's
    // used_event after the avail ring, the device's avail_event after the used ring.
    let field = |ring: u64, offset: u64| {
        mem.read_obj::<u16>(GuestAddress(ring.checked_add(offset)?))
            .ok()
            .map(u16::from_le)
    };
    let avail = queue.avail_idx(mem, Ordering::Acquire).ok().map(|w| w.0);
    let used = queue.used_idx(mem, Ordering::Acquire).ok().map(|w| w.0);
    format!(
        "size {}, avail idx {} (device at {}, notify it at {}), used idx {} (driver \
         interrupted at {}), event idx {}",
        queue.size(),
        show(avail),
        queue.next_avail(),
        show(field(queue.used_ring(), 4 + 8 * size)),
        show(used),
        show(field(queue.avail_ring(), 4 + 2 * size)),
        if queue.event_idx_enabled() {
            "on"
        } else {
            "off"
        }
    )
}

/// Pop the next available chain of queue `index`.
pub fn pop<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    index: usize,
) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap>>, QueueError> {
    let ring = |source| QueueError::Ring { index, source };
    Ok(queue.iter(mem).map_err(ring)?.next())
}

/// Put `len` bytes written for chain `head` in the used ring.
pub fn add_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    index: usize,
    head: u16,
    len: u32,
) -> Result<(), QueueError> {
    queue
        .add_used(mem, head, len)
        .map_err(|source| QueueError::Ring { index, source })
}

/// Whether the driver wants an interrupt for what was used (EVENT_IDX aware).
pub fn needs_notification(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    index: usize,
) -> Result<bool, QueueError> {
    queue
        .needs_notification(mem)
        .map_err(|source| QueueError::Ring { index, source })
}

/// Outcome of [`drain`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Chains completed.
    pub used: usize,
    /// The driver asked to be interrupted.
    pub notify: bool,
    /// Chains are left because the budget ran out.
    pub more: bool,
}

/// Complete up to `budget` chains of queue `index`, each with the length `f` returns.
///
/// With EVENT_IDX, notifications are re-enabled before stopping and the ring is
/// checked again, so a buffer added meanwhile is not missed (virtio 1.2 §2.7.10).
pub fn drain<F>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    index: usize,
    budget: usize,
    mut f: F,
) -> Result<Drained, QueueError>
where
    F: FnMut(DescriptorChain<&GuestMemoryMmap>) -> Result<u32, QueueError>,
{
    drain_throttled(queue, mem, index, budget, &mut Unthrottled, |chain| {
        f(chain).map(|len| (len, 0))
    })
}

/// [`drain`] under a rate limiter: `throttle` is asked before each available chain is
/// taken, and charged with the bytes `f` returns beside the used length. A blocked
/// limiter leaves the chain in the ring and stops the pass without asking for
/// notifications: its timer brings the device back. An empty ring never asks it (an
/// idle device arms no timer).
pub fn drain_throttled<F>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    index: usize,
    budget: usize,
    throttle: &mut impl Throttle,
    mut f: F,
) -> Result<Drained, QueueError>
where
    F: FnMut(DescriptorChain<&GuestMemoryMmap>) -> Result<(u32, u64), QueueError>,
{
    let ring = |source| QueueError::Ring { index, source };
    let mut used = 0;
    'passes: loop {
        if queue.event_idx_enabled() {
            queue.disable_notification(mem).map_err(ring)?;
        }
        loop {
            let Some(chain) = pop(queue, mem, index)? else {
                break;
            };
            if throttle.blocked() {
                unpop(queue);
                break 'passes;
            }
            let head = chain.head_index();
            let (len, bytes) = f(chain)?;
            throttle.charge(bytes);
            add_used(queue, mem, index, head, len)?;
            used += 1;
            if used >= budget {
                let notify = needs_notification(queue, mem, index)?;
                return Ok(Drained {
                    used,
                    notify,
                    more: true,
                });
            }
        }
        if !queue.event_idx_enabled() || !queue.enable_notification(mem).map_err(ring)? {
            break;
        }
    }
    let notify = used > 0 && needs_notification(queue, mem, index)?;
    Ok(Drained {
        used,
        notify,
        more: false,
    })
}

/// With EVENT_IDX, ask for a notification on the next buffer; true when buffers
/// arrived meanwhile (the caller should look again). Without EVENT_IDX, false.
pub fn rearm(queue: &mut Queue, mem: &GuestMemoryMmap, index: usize) -> Result<bool, QueueError> {
    if !queue.event_idx_enabled() {
        return Ok(false);
    }
    queue
        .enable_notification(mem)
        .map_err(|source| QueueError::Ring { index, source })
}

/// Give a popped chain back to the ring (nothing to put in it yet).
pub fn unpop(queue: &mut Queue) {
    queue.go_to_previous_position();
}

/// Give the last `n` popped chains back to the ring, none of which was used.
pub fn unpop_many(queue: &mut Queue, n: u16) {
    queue.set_next_avail(queue.next_avail().wrapping_sub(n));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::descriptor::test_util::*;

    fn active_set() -> (QueueSet, Arc<Interrupt>) {
        let mem = memory();
        let (_mock, q) = queue(&mem, 0, 16);
        let irq = Arc::new(Interrupt::new().unwrap());
        let mut set = QueueSet::new("test", &[16]).unwrap();
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        set.activate(mem.clone(), irq.clone(), vec![(q, evt)])
            .unwrap();
        (set, irq)
    }

    #[test]
    fn marking_broken_sets_needs_reset_and_stops_processing() {
        let (mut set, irq) = active_set();
        set.mark_broken(&std::io::Error::other("bad chain"));
        assert!(irq.needs_reset());
        assert!(!set.is_running());
        assert!(!set.take_queue_event(0));
    }

    #[test]
    fn marking_broken_twice_signals_once() {
        let (mut set, irq) = active_set();
        set.mark_broken(&std::io::Error::other("bad chain"));
        set.mark_broken(&std::io::Error::other("bad chain again"));
        assert_eq!(irq.eventfd().read().unwrap(), 1);
    }

    #[test]
    fn activation_with_wrong_queue_count_is_an_error() {
        let mut set = QueueSet::new("test", &[16, 16]).unwrap();
        let irq = Arc::new(Interrupt::new().unwrap());
        let e = set.activate(memory(), irq, vec![]).unwrap_err();
        assert_eq!(e.to_string(), "device test needs 2 queues, got 0");
    }

    #[test]
    fn reset_clears_broken_state() {
        let (mut set, _irq) = active_set();
        set.mark_broken(&std::io::Error::other("bad chain"));
        set.reset();
        assert!(!set.is_broken());
    }
}
