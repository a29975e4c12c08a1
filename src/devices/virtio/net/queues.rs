//! Frames between the virtqueues and a TAP-like backend, on any guest memory.
//!
//! Every frame carries a 12-byte `virtio_net_hdr_v1` (virtio 1.2 §5.1.6). No offload
//! is negotiated, so the header is all zeroes both ways (with `num_buffers` = 1 on
//! RX): the device writes its own header on each side and never passes guest header
//! bytes to the host kernel.

use std::io;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use crate::devices::virtio::descriptor::{read_bytes, sub_range, total_len, write_bytes, Chain};
use crate::devices::virtio::queues::{add_used, drain, needs_notification, pop, rearm};
use crate::devices::virtio::queues::{Drained, QueueError};

/// Length of `struct virtio_net_hdr_v1`.
pub const NET_HDR_LEN: usize = 12;
/// Largest Ethernet frame accepted either way (64 KiB, without the header).
pub const MAX_FRAME: usize = 65535;
const MAX_DESCRIPTORS: usize = 64;
const RX: usize = 0;
const TX: usize = 1;

/// A packet-oriented backend: one call moves one frame (with its virtio-net header).
pub trait FrameIo {
    /// Read one frame into `buf`; `WouldBlock` when none is waiting.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Write one whole frame.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize>;
}

impl FrameIo for std::os::unix::net::UnixDatagram {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv(buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.send(frame)
    }
}

/// Receive-side state: a frame read from the backend that waits for a guest buffer.
#[derive(Debug)]
pub struct RxState {
    buf: Vec<u8>,
    pending: Option<usize>,
    /// The backend may have frames (edge-triggered readiness seen).
    pub readable: bool,
}

impl Default for RxState {
    fn default() -> Self {
        Self {
            buf: vec![0; NET_HDR_LEN + MAX_FRAME],
            pending: None,
            readable: false,
        }
    }
}

impl RxState {
    /// Forget the waiting frame (device reset).
    pub fn clear(&mut self) {
        self.pending = None;
    }

    /// Read the next frame if none waits; false when the backend has nothing.
    fn fill<T: FrameIo>(&mut self, io: &mut T) -> bool {
        while self.pending.is_none() && self.readable {
            match io.read_frame(&mut self.buf) {
                Ok(n) if n > NET_HDR_LEN => self.pending = Some(n),
                Ok(0) => self.readable = false,
                Ok(_) => log::debug!("virtio-net: runt frame dropped"),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        log::warn!("virtio-net: backend read: {e}");
                    }
                    self.readable = false;
                }
            }
        }
        self.pending.is_some()
    }
}

/// Send up to `budget` guest frames from the TX queue to `io`.
pub fn process_tx<T: FrameIo>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    io: &mut T,
    budget: usize,
) -> Result<Drained, QueueError> {
    let mut frame = vec![0u8; NET_HDR_LEN + MAX_FRAME];
    drain(queue, mem, TX, budget, |chain| {
        let chain = Chain::parse(chain, mem, MAX_DESCRIPTORS).map_err(|e| QueueError::Request {
            index: TX,
            source: Box::new(e),
        })?;
        let total = total_len(&chain.readable);
        let len = total.saturating_sub(NET_HDR_LEN);
        if !chain.writable.is_empty() || total < NET_HDR_LEN || len > MAX_FRAME {
            log::debug!("virtio-net: malformed TX chain {} dropped", chain.head);
            return Ok(0);
        }
        frame[..NET_HDR_LEN].fill(0);
        let out = &mut frame[NET_HDR_LEN..NET_HDR_LEN + len];
        if read_bytes(mem, &chain.readable, NET_HDR_LEN, out).is_ok() {
            // A full TAP queue drops the frame, as a NIC would.
            if let Err(e) = io.write_frame(&frame[..NET_HDR_LEN + len]) {
                log::debug!("virtio-net: TX frame dropped: {e}");
            }
        }
        Ok(0)
    })
}

/// Deliver up to `budget` frames from `io` into the RX queue.
pub fn process_rx<T: FrameIo>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    io: &mut T,
    state: &mut RxState,
    budget: usize,
) -> Result<Drained, QueueError> {
    let mut used = 0;
    loop {
        while used < budget && state.fill(io) {
            let Some(chain) = pop(queue, mem, RX)? else {
                break;
            };
            let head = chain.head_index();
            let chain =
                Chain::parse(chain, mem, MAX_DESCRIPTORS).map_err(|e| QueueError::Request {
                    index: RX,
                    source: Box::new(e),
                })?;
            let len = deliver(mem, &chain, state);
            add_used(queue, mem, RX, head, len)?;
            used += 1;
        }
        if used >= budget {
            let notify = needs_notification(queue, mem, RX)?;
            return Ok(Drained {
                used,
                notify,
                more: state.fill(io),
            });
        }
        if state.pending.is_none() || !rearm(queue, mem, RX)? {
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

/// Copy the waiting frame into `chain`; a frame that does not fit is dropped and the
/// buffer returned empty.
fn deliver(mem: &GuestMemoryMmap, chain: &Chain, state: &mut RxState) -> u32 {
    let Some(n) = state.pending.take() else {
        return 0;
    };
    let bufs = &chain.writable;
    if !chain.readable.is_empty() || total_len(bufs) < n {
        log::debug!(
            "virtio-net: RX buffer {} too small, frame dropped",
            chain.head
        );
        return 0;
    }
    let mut hdr = [0u8; NET_HDR_LEN];
    hdr[10] = 1; // num_buffers, le16
    let data = &state.buf[NET_HDR_LEN..n];
    let written = write_bytes(mem, bufs, 0, &hdr)
        .and_then(|()| sub_range(bufs, NET_HDR_LEN, data.len()))
        .and_then(|data_bufs| write_bytes(mem, &data_bufs, 0, data));
    match written {
        Ok(()) => u32::try_from(n).expect("frames are at most 64 KiB"),
        Err(_) => 0,
    }
}

#[cfg(test)]
#[path = "queues_tests.rs"]
mod tests;
