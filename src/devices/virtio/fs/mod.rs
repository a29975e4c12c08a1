//! virtio-fs (virtio 1.2 §5.11) as a vhost-user frontend: the device's queues are
//! served by a `virtiofsd` process, which husk reaches over a Unix socket. husk keeps
//! the transport and the configuration space (the tag); at activation it hands the
//! daemon the guest memory (the memfd), each queue's rings, its kick eventfd (the
//! queue's KVM ioeventfd itself) and the transport's irqfd, which the daemon signals
//! when it used buffers: an interrupt never passes through husk.

mod config;
mod device;

pub use config::{FsConfig, TAG_LEN};
pub use device::{Fs, FsError};

#[cfg(test)]
mod daemon_tests;
