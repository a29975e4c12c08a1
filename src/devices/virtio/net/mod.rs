//! virtio-net (virtio 1.2 §5.1) backed by a TAP device, with checksum and TSO offloads.
//!
//! `config` parses `tap=NAME[,mac=..]`, `tap` opens the TAP (the only ioctls),
//! `header` checks the virtio-net header against the negotiated offloads, `queues`
//! moves frames between the virtqueues and any [`FrameIo`] (a TAP, or a datagram
//! socket in tests and benches), with `rx` filling RX buffers in place, `vhost` hands
//! both to the host kernel's vhost-net instead (`vhost=on`), `device` is the
//! `VirtioDevice`, and `event_handler` ties the queue eventfds and the TAP fd to the
//! event loop.

mod config;
mod device;
mod event_handler;
mod header;
mod persist;
mod queues;
mod rx;
pub mod tap;
#[cfg(test)]
mod transport_tests;
mod vhost;

pub use config::{validate_ifname, MacAddr, NetConfig, NetConfigError};
pub use device::{Net, NetError, NetState, QUEUE_SIZE};
pub use header::{HeaderError, NetHeader, Offloads, MAX_FRAME, NET_HDR_LEN};
pub use persist::NetPersist;
pub use queues::{process_rx, process_tx, FrameIo};
pub use rx::RxState;
pub use tap::{Tap, TapError};
pub use vhost::VhostNetError;
