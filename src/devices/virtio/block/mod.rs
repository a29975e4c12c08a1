//! virtio-blk (virtio 1.2 §5.2) backed by a raw image file.
//!
//! `config` parses the command-line form, `disk` owns the file and its capabilities,
//! `request` parses and executes requests on guest memory, `ring` keeps several in
//! flight through io_uring and `inflight` serves the queue through it, `device` is the
//! `VirtioDevice`, and `event_handler` ties the queue and completion eventfds to the
//! event loop.

mod config;
mod device;
mod disk;
mod event_handler;
mod inflight;
mod persist;
mod request;
mod ring;

pub use config::{BlockConfig, BlockConfigError};
pub use device::{Block, BlockError, BlockState, QUEUE_SIZE};
pub use disk::{Disk, DiskError, WriteZeroes};
pub use persist::BlockPersist;
pub use request::{process_queue, SECTOR_SIZE};

#[cfg(test)]
pub(crate) use inflight::{finish as finish_in_flight, start as start_in_flight};
#[cfg(test)]
pub(crate) use ring::Ring;
