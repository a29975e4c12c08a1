//! virtio-rng (virtio 1.2 §5.4): one queue of device-writable buffers, filled with
//! bytes from the host's `/dev/urandom`.

mod device;
mod event_handler;
mod request;

pub use device::{Rng, RngError, RngState, QUEUE_SIZE};
pub use request::{process_queue, MAX_REQUEST_BYTES};
