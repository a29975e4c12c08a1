//! virtio-vsock (virtio 1.2 §5.10) with the hybrid host model.
//!
//! The host side is a Unix socket at `uds`. A host client connects to it, writes
//! `CONNECT <port>\n`, gets `OK <host_port>\n`, and then talks to guest port `<port>`.
//! A guest connection to host port P is connected to the Unix socket `<uds>_P`.
//! `packet` is the wire header, `connection` one stream's state and credit accounting,
//! `muxer` routes packets between the queues and the host sockets within the
//! configured budget, `poller` is the device's own epoll (every fd of the device, so a
//! reset can close them at once), `device` is the `VirtioDevice`, `interrupts` decides
//! when it interrupts the driver, and `event_handler` serves that epoll from the
//! event loop.

mod config;
mod connection;
mod device;
mod event_handler;
mod interrupts;
mod muxer;
mod packet;
mod persist;
mod poller;

pub use config::{VsockConfig, VsockConfigError, DEFAULT_MAX_SOCKETS, MAX_SOCKETS_LIMIT};
pub use device::{Vsock, VsockError, VsockState, QUEUE_SIZE};
pub use muxer::{Muxer, MuxerError, FIRST_STREAM_TOKEN};
pub use packet::{Header, HDR_LEN, HOST_CID};
pub use persist::VsockPersist;
pub use poller::Poller;
