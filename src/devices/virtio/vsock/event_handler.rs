//! Event-manager glue of virtio-vsock: queue eventfds, the listening socket and one
//! edge-triggered registration per host stream.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::muxer::{FdChange, LISTENER_TOKEN};
use super::Vsock;
use crate::devices::virtio::queues::ACTIVATE_TOKEN;

/// Event data of the housekeeping timer.
const TIMER_TOKEN: u32 = 0x103;

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
            1 => {
                if self.queues.take_queue_event(1) {
                    self.process_tx();
                }
            }
            // The driver refilled the event queue; nothing waits for it.
            2 => {
                self.queues.take_queue_event(2);
            }
            LISTENER_TOKEN => self.muxer.accept(),
            TIMER_TOKEN => self.on_timer(),
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
        let timer = Events::with_data(&self.timer, TIMER_TOKEN, EventSet::IN);
        if let Err(e) = ops.add(timer) {
            log::error!("vsock: cannot watch the timer: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, SubscriberOps};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::devices::virtio::descriptor::test_util::*;
    use crate::devices::virtio::vsock::{Header, VsockConfig, HDR_LEN};
    use crate::devices::virtio::{Interrupt, VirtioDevice};

    type Manager = EventManager<Arc<Mutex<Vsock>>>;

    fn run(manager: &mut Manager, rounds: usize) {
        (0..rounds).for_each(|_| {
            manager.run_with_timeout(50).unwrap();
        });
    }

    fn rx_header(mem: &GuestMemoryMmap) -> Header {
        let mut raw = [0u8; HDR_LEN];
        mem.read_slice(&mut raw, GuestAddress(0x10000)).unwrap();
        Header::from_bytes(&raw)
    }

    #[test]
    fn host_client_reaches_guest_and_back_through_event_loop() {
        let mem = memory();
        let (rx, rxq) = queue(&mem, 0, 16);
        let (_tx, txq) = queue(&mem, 0x4000, 16);
        let (_ev, evq) = queue(&mem, 0x8000, 16);
        rx.add_desc_chains(&[w(0x10000, 4096)], 0).unwrap();
        let uds = std::env::temp_dir().join(format!("husk-vsock-el-{}.sock", std::process::id()));
        let vsock = Arc::new(Mutex::new(
            Vsock::new(VsockConfig {
                cid: 3,
                uds: uds.clone(),
            })
            .unwrap(),
        ));
        let mut manager = Manager::new().unwrap();
        manager.add_subscriber(vsock.clone());
        let queues = [rxq, txq, evq]
            .into_iter()
            .map(|q| (q, EventFd::new(EFD_NONBLOCK).unwrap()));
        let irq = Arc::new(Interrupt::new().unwrap());
        vsock
            .lock()
            .unwrap()
            .activate(mem.clone(), irq, queues.collect())
            .unwrap();
        let mut client = UnixStream::connect(&uds).unwrap();
        client.write_all(b"CONNECT 1024\n").unwrap();
        run(&mut manager, 4);
        let req = rx_header(&mem);
        assert_eq!(
            (req.op, req.dst_port),
            (crate::devices::virtio::vsock::packet::OP_REQUEST, 1024)
        );
        let resp = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1024,
            dst_port: req.src_port,
            type_: 1,
            op: 2,
            ..Default::default()
        };
        vsock.lock().unwrap().muxer.guest_packet(&resp, &[]);
        let mut line = String::new();
        BufReader::new(&client).read_line(&mut line).unwrap();
        assert_eq!(line, format!("OK {}\n", req.src_port));
    }
}
