//! virtio-net (virtio 1.2 §5.1) backed by a TAP device, without offloads.
//!
//! `config` parses `tap=NAME[,mac=..]`, `tap` opens the TAP (the only ioctls),
//! `queues` moves frames between the virtqueues and any [`FrameIo`] (a TAP, or a
//! datagram socket in tests and benches), `device` is the `VirtioDevice`, and
//! `event_handler` ties the queue eventfds and the TAP fd to the event loop.

mod config;
mod device;
mod event_handler;
mod persist;
mod queues;
mod tap;
#[cfg(test)]
mod transport_tests;

pub use config::{validate_ifname, MacAddr, NetConfig, NetConfigError};
pub use device::{Net, NetError, NetState, QUEUE_SIZE};
pub use persist::NetPersist;
pub use queues::{process_rx, process_tx, FrameIo, RxState, NET_HDR_LEN};
pub use tap::{Tap, TapError};
