//! Event-manager glue of virtio-vsock: the loop watches one fd of the device, its own
//! epoll (`poller.rs`), and each wake-up serves what that epoll reports: queue
//! eventfds, the listening socket, the timer and the host streams.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::{EVENT, IRQ_TIMER_TOKEN, RX, TIMER_TOKEN, TX};
use super::muxer::LISTENER_TOKEN;
use super::Vsock;

/// Event data of the device's epoll in the loop.
const POLL_TOKEN: u32 = 0x104;
/// Tokens of the queue eventfds in the device's epoll: their queue index.
const RX_TOKEN: u32 = RX as u32;
const TX_TOKEN: u32 = TX as u32;
const EVENT_TOKEN: u32 = EVENT as u32;

impl Vsock {
    /// Serve one batch of the device's epoll, then fill the RX queue; interrupt the
    /// driver once at the end.
    fn on_ready(&mut self) {
        for (token, set) in self.muxer.ready() {
            match token {
                // Nothing waits for RX or event buffers themselves; the RX pass below
                // uses new buffers.
                RX_TOKEN => {
                    self.queues.take_queue_event(RX);
                }
                EVENT_TOKEN => {
                    self.queues.take_queue_event(EVENT);
                }
                TX_TOKEN => {
                    if self.queues.take_queue_event(TX) {
                        self.process_tx();
                    }
                }
                LISTENER_TOKEN => self.muxer.accept(),
                TIMER_TOKEN => self.on_timer(),
                IRQ_TIMER_TOKEN => self.on_irq_timer(),
                token => {
                    let hang_up = EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR;
                    if set.intersects(hang_up) {
                        self.muxer.on_stream_hang_up(token);
                    }
                    let readable = set.intersects(EventSet::IN | hang_up);
                    self.muxer
                        .on_stream_event(token, readable, set.contains(EventSet::OUT));
                }
            }
        }
        self.process_rx();
        self.flush_interrupt();
    }
}

impl MutEventSubscriber for Vsock {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() == POLL_TOKEN {
            self.on_ready();
        }
    }

    /// Level-triggered: the loop comes back while the device's epoll has events left
    /// after a batch.
    fn init(&mut self, ops: &mut EventOps) {
        let poll = Events::with_data(self.muxer.poller(), POLL_TOKEN, EventSet::IN);
        if let Err(e) = ops.add(poll) {
            log::error!("vsock: cannot watch the device's epoll: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use event_manager::{EventManager, SubscriberOps};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::devices::virtio::descriptor::test_util::*;
    use crate::devices::virtio::vsock::packet::{OP_REQUEST, OP_RESPONSE, TYPE_STREAM};
    use crate::devices::virtio::vsock::{Header, VsockConfig, HDR_LEN, HOST_CID};
    use crate::devices::virtio::{Interrupt, VirtioDevice};

    type Manager = EventManager<Arc<Mutex<Vsock>>>;
    type Mock<'m> = MockSplitQueue<'m, GuestMemoryMmap>;

    fn run(manager: &mut Manager, rounds: usize) {
        (0..rounds).for_each(|_| {
            manager.run_with_timeout(50).unwrap();
        });
    }

    fn header_at(mem: &GuestMemoryMmap, addr: u64) -> Header {
        let mut raw = [0u8; HDR_LEN];
        mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
        Header::from_bytes(&raw)
    }

    /// A vsock device in an event loop, as the VMM wires it.
    fn device_in_loop(tag: &str) -> (Arc<Mutex<Vsock>>, Manager, std::path::PathBuf) {
        let name = format!("husk-vsock-el-{tag}-{}.sock", std::process::id());
        let uds = std::env::temp_dir().join(name);
        let vsock = Arc::new(Mutex::new(
            Vsock::new(VsockConfig::new(3, uds.clone())).unwrap(),
        ));
        let mut manager = Manager::new().unwrap();
        manager.add_subscriber(vsock.clone());
        (vsock, manager, uds)
    }

    /// Activate `vsock` with three queues at `base` (0x4000 apart) and one 4 KiB RX
    /// buffer at `base + 0xc000`, as the transport does: the device gets clones of
    /// the notify eventfds. Returns the RX mock and the transport's eventfds.
    fn activate<'m>(
        vsock: &Mutex<Vsock>,
        mem: &'m GuestMemoryMmap,
        base: u64,
    ) -> (Mock<'m>, Vec<EventFd>) {
        let (rx, rxq) = queue(mem, base, 16);
        let (_tx, txq) = queue(mem, base + 0x4000, 16);
        let (_ev, evq) = queue(mem, base + 0x8000, 16);
        rx.add_desc_chains(&[w(base + 0xc000, 4096)], 0).unwrap();
        let evts: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let clones = evts.iter().map(|e| e.try_clone().unwrap());
        let queues = [rxq, txq, evq].into_iter().zip(clones).collect();
        let irq = Arc::new(Interrupt::new().unwrap());
        vsock
            .lock()
            .unwrap()
            .activate(mem.clone(), irq, queues)
            .unwrap();
        (rx, evts)
    }

    /// A host client that sent `CONNECT 1024`, with a read timeout.
    fn host_client(uds: &std::path::Path) -> UnixStream {
        let mut client = UnixStream::connect(uds).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        client.write_all(b"CONNECT 1024\n").unwrap();
        client
    }

    /// The guest's RESPONSE to the host's REQUEST `req`.
    fn response(req: &Header) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: req.dst_port,
            dst_port: req.src_port,
            type_: TYPE_STREAM,
            op: OP_RESPONSE,
            ..Default::default()
        }
    }

    #[test]
    fn host_client_reaches_guest_and_back_through_event_loop() {
        let (vsock, mut manager, uds) = device_in_loop("basic");
        let mem = memory();
        let _queues = activate(&vsock, &mem, 0);
        let client = host_client(&uds);
        run(&mut manager, 4);
        let req = header_at(&mem, 0xc000);
        assert_eq!((req.op, req.dst_port), (OP_REQUEST, 1024));
        vsock
            .lock()
            .unwrap()
            .muxer
            .guest_packet(&response(&req), &[]);
        let mut line = String::new();
        BufReader::new(&client).read_line(&mut line).unwrap();
        assert_eq!(line, format!("OK {}\n", req.src_port));
    }

    #[test]
    fn reset_closes_host_sockets_and_queue_eventfds_without_the_loop() {
        let (vsock, mut manager, uds) = device_in_loop("reset");
        let mem = memory();
        let (_rx, evts) = activate(&vsock, &mem, 0);
        let mut client = host_client(&uds);
        run(&mut manager, 4);
        let req = header_at(&mem, 0xc000);
        vsock
            .lock()
            .unwrap()
            .muxer
            .guest_packet(&response(&req), &[]);
        BufReader::new(&client)
            .read_line(&mut String::new())
            .unwrap();
        vsock.lock().unwrap().reset();
        evts.iter().for_each(|e| e.write(1).unwrap());
        let dev = vsock.lock().unwrap();
        let queue_events = dev
            .muxer
            .ready()
            .into_iter()
            .filter(|&(t, _)| t < 3)
            .count();
        assert_eq!(client.read(&mut [0u8; 8]).unwrap(), 0);
        assert_eq!(queue_events, 0);
        assert!(dev.queues.events().is_empty());
        assert_eq!(dev.muxer.sockets_held(), 0);
    }

    #[test]
    fn device_reset_and_activated_again_serves_a_new_host_client() {
        let (vsock, mut manager, uds) = device_in_loop("again");
        let mem = memory();
        let first = activate(&vsock, &mem, 0);
        let _old = host_client(&uds);
        run(&mut manager, 4);
        vsock.lock().unwrap().reset();
        drop(first);
        let _second = activate(&vsock, &mem, 0x20000);
        let _new = host_client(&uds);
        run(&mut manager, 4);
        let req = header_at(&mem, 0x2c000);
        assert_eq!((req.op, req.dst_port), (OP_REQUEST, 1024));
    }
}
