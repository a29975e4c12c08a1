//! Frames between the virtqueues and a TAP-like backend, on any guest memory.
//!
//! Every frame carries a 12-byte `virtio_net_hdr_v1` (virtio 1.2 §5.1.6), which the
//! backend takes and gives too (`header.rs`). TX frames go to the backend with one
//! `writev` from the guest's buffers, behind the header the device checked and rebuilt;
//! RX frames are read straight into the guest's buffers where they can hold any frame
//! (`rx.rs`).

use std::io;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::header::{NetHeader, Offloads, MAX_FRAME, NET_HDR_LEN};
use super::rx::{RxState, RxStep};
use crate::devices::rate_limiter::Throttle;
use crate::devices::virtio::descriptor::{read_bytes, sub_range, total_len, Chain};
use crate::devices::virtio::guest_io::IoVecs;
use crate::devices::virtio::queues::{drain_throttled, needs_notification, rearm};
use crate::devices::virtio::queues::{Drained, QueueError};

const MAX_DESCRIPTORS: usize = 64;
const RX: usize = 0;
const TX: usize = 1;

/// A packet-oriented backend: one call moves one frame (with its virtio-net header).
pub trait FrameIo {
    /// Read one frame into `iov`; `WouldBlock` when none is waiting.
    fn read_frame(&mut self, iov: &IoVecs) -> io::Result<usize>;
    /// Write one whole frame: `hdr`, then the bytes of `iov`.
    fn write_frame(&mut self, hdr: &[u8; NET_HDR_LEN], iov: &IoVecs) -> io::Result<usize>;
}

impl FrameIo for std::os::unix::net::UnixDatagram {
    fn read_frame(&mut self, iov: &IoVecs) -> io::Result<usize> {
        iov.read_from(self, None)
    }

    fn write_frame(&mut self, hdr: &[u8; NET_HDR_LEN], iov: &IoVecs) -> io::Result<usize> {
        iov.write_with_prefix(self, hdr)
    }
}

fn request_error(e: impl std::error::Error + Send + Sync + 'static) -> QueueError {
    QueueError::Request {
        index: TX,
        source: Box::new(e),
    }
}

/// Send up to `budget` guest frames from the TX queue to `io`, with the offloads the
/// driver negotiated, each once `throttle` lets it (one operation and the frame's
/// bytes, without the virtio-net header). Frames with a header beyond the offloads are
/// dropped (and charged: the guest sent them).
pub fn process_tx<T: FrameIo>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    io: &mut T,
    offloads: Offloads,
    budget: usize,
    throttle: &mut impl Throttle,
) -> Result<Drained, QueueError> {
    drain_throttled(queue, mem, TX, budget, throttle, |chain| {
        let chain = Chain::parse(chain, mem, MAX_DESCRIPTORS).map_err(request_error)?;
        let total = total_len(&chain.readable);
        let len = total.saturating_sub(NET_HDR_LEN);
        if !chain.writable.is_empty() || total < NET_HDR_LEN || len > MAX_FRAME {
            log::debug!("virtio-net: malformed TX chain {} dropped", chain.head);
            return Ok((0, 0));
        }
        let charge = u64::try_from(len).unwrap_or(u64::MAX);
        let mut raw = [0u8; NET_HDR_LEN];
        read_bytes(mem, &chain.readable, 0, &mut raw).map_err(request_error)?;
        let hdr = match offloads.check_tx(&NetHeader::from_bytes(&raw), len) {
            Ok(hdr) => hdr,
            Err(e) => {
                log::debug!("virtio-net: TX chain {} dropped: {e}", chain.head);
                return Ok((0, charge));
            }
        };
        let frame = sub_range(&chain.readable, NET_HDR_LEN, len).map_err(request_error)?;
        let iov = IoVecs::new(mem, &frame).map_err(request_error)?;
        // A full TAP queue drops the frame, as a NIC would.
        if let Err(e) = io.write_frame(&hdr.to_bytes(), &iov) {
            log::debug!("virtio-net: TX frame dropped: {e}");
        }
        Ok((0, charge))
    })
}

/// Deliver frames from `io` into the RX queue, completing up to about `budget` chains;
/// no frame is read from `io` while `throttle` blocks (it is charged one operation and
/// the frame's bytes, without the virtio-net header, per frame read).
pub fn process_rx<T: FrameIo>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    io: &mut T,
    state: &mut RxState,
    budget: usize,
    throttle: &mut impl Throttle,
) -> Result<Drained, QueueError> {
    let mut used = 0;
    loop {
        while used < budget {
            match state.step(queue, mem, io, throttle)? {
                RxStep::Used(n) => used += n,
                RxStep::Idle => break,
            }
        }
        if used >= budget {
            let notify = needs_notification(queue, mem, RX)?;
            return Ok(Drained {
                used,
                notify,
                more: state.has_pending() || state.readable,
            });
        }
        // A frame waits for buffers: ask for a notification, and look again if some
        // arrived meanwhile.
        if !state.has_pending() || !rearm(queue, mem, RX)? {
            break;
        }
    }
    let notify = used > 0 && needs_notification(queue, mem, RX)?;
    Ok(Drained {
        used,
        notify,
        more: false,
    })
}

#[cfg(test)]
#[path = "queues_tests.rs"]
mod tests;
