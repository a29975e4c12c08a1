//! The virtio-vsock device: three queues, the guest CID config, and the muxer.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::config::{VsockConfig, VsockConfigError};
use super::interrupts::Coalescer;
use super::muxer::{Muxer, MuxerError};
use crate::devices::virtio::descriptor::Chain;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::persist::DevicePersist;
use crate::devices::virtio::queues::{add_used, pop, Drained, QueueError, QueueSet};
use crate::devices::virtio::{
    feature, Interrupt, VirtioDevice, VirtioError, TYPE_VSOCK, VIRTIO_RING_F_EVENT_IDX,
};

/// Size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
const QUEUES: usize = 3;
pub(super) const RX: usize = 0;
pub(super) const TX: usize = 1;
pub(super) const EVENT: usize = 2;
/// Period of the connection-timeout check.
const TICK: std::time::Duration = std::time::Duration::from_secs(1);
/// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.
const EVENT_TRANSPORT_RESET: u32 = 0;
/// Token of the housekeeping timer in the device's epoll (queue eventfds use their
/// index, host sockets tokens from [`FIRST_STREAM_TOKEN`](super::muxer::FIRST_STREAM_TOKEN)).
pub(super) const TIMER_TOKEN: u32 = 0x103;
/// Token of the interrupt timer (`interrupts.rs`).
pub(super) const IRQ_TIMER_TOKEN: u32 = 0x105;

/// Errors creating a vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] VsockConfigError),
    /// The host socket could not be created.
    #[error(transparent)]
    Muxer(#[from] MuxerError),
    /// Eventfds could not be created.
    #[error("virtio-vsock setup")]
    Setup(#[from] VirtioError),
    /// The housekeeping timer could not be created.
    #[error("virtio-vsock timer")]
    Timer(#[source] vmm_sys_util::errno::Error),
    /// The housekeeping timer could not be watched.
    #[error("virtio-vsock timer")]
    WatchTimer(#[source] std::io::Error),
}

/// The device's state as plain data (connections are not part of it: a restored
/// guest gets a transport reset event).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    /// The configuration it was built from.
    pub config: VsockConfig,
    /// Features the driver accepted.
    pub acked_features: u64,
}

/// A virtio socket device.
#[derive(Debug)]
pub struct Vsock {
    pub(super) queues: QueueSet,
    pub(super) muxer: Muxer,
    /// Ticks every [`TICK`] to expire connection attempts.
    pub(super) timer: TimerFd,
    /// Interrupts owed: one goes out when the wake-up's work is done
    /// ([`Vsock::flush_interrupt`]), however many passes of the TX and RX queues it
    /// took; TX completions alone wait a little (`interrupts.rs`).
    irq: Coalescer,
    state: VsockState,
}

impl Vsock {
    /// File descriptors a device built from `config` and its virtio-mmio transport
    /// hold at most: the listener, the timer, the device's epoll, the queue set's
    /// activation eventfd, the interrupt timer, the queue eventfd clones (closed at reset, so one
    /// activation's worth), the transport's eventfds, and the host sockets the guest
    /// may make it hold (the budget).
    pub fn max_fds(config: &VsockConfig) -> usize {
        let own = 3 + 1 + 1 + QUEUES;
        own + MmioTransport::max_fds(QUEUES) + config.max_sockets
    }

    /// Listen on `config.uds` for a guest with CID `config.cid`.
    pub fn new(config: VsockConfig) -> Result<Self, VsockError> {
        config.validate()?;
        let mut timer = TimerFd::new().map_err(VsockError::Timer)?;
        timer.reset(TICK, Some(TICK)).map_err(VsockError::Timer)?;
        let irq = Coalescer::new().map_err(VsockError::Timer)?;
        let muxer = Muxer::new(&config)?;
        let poller = muxer.poller();
        poller
            .watch(timer.as_raw_fd(), TIMER_TOKEN, EventSet::IN)
            .map_err(VsockError::WatchTimer)?;
        poller
            .watch(irq.as_raw_fd(), IRQ_TIMER_TOKEN, EventSet::IN)
            .map_err(VsockError::WatchTimer)?;
        Ok(Self {
            queues: QueueSet::new("vsock", &[QUEUE_SIZE; QUEUES])?,
            muxer,
            timer,
            irq,
            state: VsockState {
                config,
                acked_features: 0,
            },
        })
    }

    /// Stop watching the queue eventfds and close them (this device's clones; the
    /// transport keeps its own for KVM).
    fn release_queue_events(&mut self) {
        for evt in self.queues.take_events() {
            self.muxer.poller().unwatch(evt.as_raw_fd());
        }
    }

    /// Watch the queue eventfds of a new activation, by queue index.
    fn watch_queue_events(&self) -> std::io::Result<()> {
        for (index, evt) in self.queues.events().iter().enumerate() {
            let token = u32::try_from(index).expect("three queues");
            self.muxer
                .poller()
                .watch(evt.as_raw_fd(), token, EventSet::IN)?;
        }
        Ok(())
    }

    /// The device's state.
    pub fn state(&self) -> VsockState {
        self.state.clone()
    }

    fn finish(&mut self, index: usize, result: Result<Drained, QueueError>) {
        match result {
            Ok(d) if d.notify => {
                let ring = self.queues.active.as_ref();
                let size = ring
                    .and_then(|a| a.queues.get(index))
                    .map_or(0, virtio_queue::QueueT::size);
                self.irq.owe(index == TX, d.used, size);
            }
            Ok(_) => {}
            Err(e) => return self.queues.mark_broken(&e),
        }
        if result.is_ok_and(|d| d.more) {
            self.queues.requeue(index);
        }
    }

    /// Interrupt the driver once if a pass since the last call used RX buffers it asked
    /// to hear about (the queues' used rings are both written by then); TX completions
    /// alone wait for the interrupt timer.
    pub(super) fn flush_interrupt(&mut self) {
        if self.irq.flush() {
            self.queues.signal_used();
        }
    }

    /// The interrupt timer expired: raise TX completions still owed.
    pub(super) fn on_irq_timer(&mut self) {
        if self.irq.on_timer() {
            self.queues.signal_used();
        }
    }

    /// Consume guest packets from the TX queue.
    pub(super) fn process_tx(&mut self) {
        if !self.queues.is_running() {
            return;
        }
        let Some(active) = self.queues.active.as_mut() else {
            return;
        };
        let result = self.muxer.process_tx(&mut active.queues[TX], &active.mem);
        let throttled = self.muxer.tx_throttled;
        self.finish(
            TX,
            result.map(|d| Drained {
                more: d.more && !throttled,
                ..d
            }),
        );
    }

    /// Fill the RX queue with control packets and host data; resume a throttled TX.
    pub(super) fn process_rx(&mut self) {
        if !self.queues.is_running() {
            return;
        }
        let Some(active) = self.queues.active.as_mut() else {
            return;
        };
        let result = self.muxer.process_rx(&mut active.queues[RX], &active.mem);
        self.finish(RX, result);
        if self.muxer.tx_throttled {
            self.process_tx();
        }
    }

    /// Handle a timer tick: expire stale connection attempts.
    pub(super) fn on_timer(&mut self) {
        // Readable per epoll, so this read does not block.
        let _ = self.timer.wait();
        self.muxer.expire(std::time::Instant::now());
    }

    /// Tell the driver all connections are gone (e.g. after a snapshot restore);
    /// needs a buffer in the event queue.
    pub fn send_transport_reset(&mut self) {
        self.muxer.reset();
        let Some(active) = self.queues.active.as_mut() else {
            return;
        };
        let (queue, mem) = (&mut active.queues[EVENT], &active.mem);
        let result = pop(queue, mem, EVENT).and_then(|chain| {
            let Some(chain) = chain else {
                log::warn!("vsock: no event buffer for the transport reset");
                return Ok(false);
            };
            let head = chain.head_index();
            let parsed = Chain::parse(chain, mem, 4).ok();
            let buf = parsed
                .and_then(|c| c.writable.first().copied())
                .filter(|b| b.len >= 4);
            let len = match buf.map(|b| mem.write_obj(EVENT_TRANSPORT_RESET.to_le(), b.addr)) {
                Some(Ok(())) => 4,
                _ => 0,
            };
            add_used(queue, mem, EVENT, head, len).map(|()| true)
        });
        match result {
            Ok(true) => self.queues.signal_used(),
            Ok(false) => {}
            Err(e) => self.queues.mark_broken(&e),
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        self.queues.max_sizes()
    }

    fn avail_features(&self) -> u64 {
        feature(VIRTIO_RING_F_EVENT_IDX)
    }

    fn set_acked_features(&mut self, features: u64) {
        self.state.acked_features = features;
    }

    /// `struct virtio_vsock_config { le64 guest_cid; }`.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::read_config_bytes(
            &self.state.config.cid.to_le_bytes(),
            offset,
            data,
        );
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::debug!("virtio-vsock: config write at {offset:#x} ignored");
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<(Queue, EventFd)>,
    ) -> Result<(), VirtioError> {
        self.release_queue_events();
        self.queues.activate(mem, interrupt, queues)?;
        let watched = self
            .watch_queue_events()
            .map_err(|source| VirtioError::Backend {
                device: "vsock",
                source,
            });
        if watched.is_err() {
            self.queues.reset();
            self.release_queue_events();
        }
        watched?;
        // Host clients may have asked for guest ports before the driver was ready:
        // have the loop look at the RX queue once.
        self.queues.requeue(RX);
        Ok(())
    }

    /// Runs on the vCPU thread that wrote status 0; everything the device held for
    /// the guest (host sockets and their buffers, the queue eventfds, control packets)
    /// is closed or freed before it returns (see `poller.rs`). The listener and the
    /// timer belong to the device, not to the guest, and stay.
    fn reset(&mut self) {
        self.irq.clear();
        self.queues.reset();
        self.release_queue_events();
        self.muxer.reset();
        self.state.acked_features = 0;
    }

    /// Nothing is in flight; an interrupt still owed goes out now, before the
    /// transport's InterruptStatus is saved.
    fn quiesce(&mut self) -> Result<(), VirtioError> {
        if self.irq.take() {
            self.queues.signal_used();
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("{}\n{}", self.queues.describe(), self.muxer.describe())
    }

    fn persist(&self) -> DevicePersist {
        self.persist_state()
    }

    fn queue_set(&self) -> Option<&QueueSet> {
        Some(&self.queues)
    }

    fn after_restore(&mut self, _saved: &DevicePersist) -> bool {
        self.restored()
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::devices::virtio::descriptor::test_util::*;

    fn vsock(tag: &str) -> Vsock {
        let uds =
            std::env::temp_dir().join(format!("husk-vsock-dev-{tag}-{}.sock", std::process::id()));
        Vsock::new(VsockConfig::new(42, uds)).unwrap()
    }

    #[test]
    fn config_space_holds_guest_cid() {
        let v = vsock("cfg");
        let mut cid = [0u8; 8];
        v.read_config(0, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), 42);
    }

    #[test]
    fn transport_reset_fills_event_buffer_and_interrupts() {
        let mem = memory();
        let mut v = vsock("evt");
        let (_rx, rxq) = queue(&mem, 0, 16);
        let (_tx, txq) = queue(&mem, 0x4000, 16);
        let (ev, evq) = queue(&mem, 0x8000, 16);
        ev.add_desc_chains(&[w(0x10000, 4)], 0).unwrap();
        mem.write_obj(0xffff_ffffu32, GuestAddress(0x10000))
            .unwrap();
        let irq = Arc::new(Interrupt::new().unwrap());
        let queues = [rxq, txq, evq]
            .into_iter()
            .map(|q| (q, EventFd::new(EFD_NONBLOCK).unwrap()));
        v.activate(mem.clone(), irq.clone(), queues.collect())
            .unwrap();
        v.send_transport_reset();
        assert_eq!(used(&ev, 0), (0, 4));
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x10000)).unwrap(), 0);
        assert_eq!(irq.status(), crate::devices::virtio::INT_VRING);
    }

    #[test]
    fn cid_below_three_is_rejected() {
        let uds = std::env::temp_dir().join("husk-vsock-never.sock");
        let e = Vsock::new(VsockConfig::new(1, uds)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad vsock cid \"1\": must be a number from 3 to 4294967294"
        );
    }
}
