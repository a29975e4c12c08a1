//! The receive side: frames from the backend into the guest's RX buffers.
//!
//! The device keeps the RX chains it popped and has not filled yet ([`RxState`]'s
//! cache), so a frame can be read with one `readv` straight into guest buffers: when
//! the cached buffers can hold the largest frame ([`MAX_FRAME`] and its header: with
//! MRG_RXBUF across as many chains as needed, otherwise in one big chain), the backend
//! writes directly into them and the device only fixes the header's `num_buffers`
//! (virtio 1.2 §5.1.6.4). Otherwise (a driver with small buffers and no MRG_RXBUF, or
//! too few buffers posted) the frame is read into a staging buffer and copied, and
//! waits there until buffers come. Cached chains are counted as not yet taken in a
//! snapshot ([`RxState::held_chains`]).

use std::collections::VecDeque;
use std::io;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::header::{NetHeader, Offloads, MAX_FRAME, NET_HDR_LEN};
use super::queues::FrameIo;
use crate::devices::rate_limiter::Throttle;
use crate::devices::virtio::descriptor::{read_bytes, total_len, write_bytes, Buffer, Chain};
use crate::devices::virtio::guest_io::IoVecs;
use crate::devices::virtio::queues::{add_used, pop, QueueError};

const RX: usize = 0;
/// Most descriptors in one RX chain.
const MAX_DESCRIPTORS: usize = 64;
/// Bytes the largest frame needs with its header.
const MAX_RX: usize = NET_HDR_LEN + MAX_FRAME;

/// A popped RX chain not filled yet.
#[derive(Debug)]
struct RxChain {
    head: u16,
    bufs: Vec<Buffer>,
    len: usize,
}

/// Receive-side state: cached RX chains, a staged frame, backend readiness, offloads.
#[derive(Debug)]
pub struct RxState {
    staged: Vec<u8>,
    pending: Option<usize>,
    chains: VecDeque<RxChain>,
    cached: usize,
    /// The backend may have frames (edge-triggered readiness seen).
    pub readable: bool,
    /// What the driver negotiated.
    pub offloads: Offloads,
}

impl Default for RxState {
    fn default() -> Self {
        Self {
            staged: vec![0; MAX_RX],
            pending: None,
            chains: VecDeque::new(),
            cached: 0,
            readable: false,
            offloads: Offloads::default(),
        }
    }
}

/// What one step of RX did.
pub(super) enum RxStep {
    /// Chains were completed (possibly none, when a runt frame was dropped).
    Used(usize),
    /// No frame, or no buffer for the one waiting.
    Idle,
}

/// What a frame of `n` bytes read with its header costs a rate limiter: its bytes.
fn frame_bytes(n: usize) -> u64 {
    u64::try_from(n.saturating_sub(NET_HDR_LEN)).unwrap_or(u64::MAX)
}

fn request_error(e: impl std::error::Error + Send + Sync + 'static) -> QueueError {
    QueueError::Request {
        index: RX,
        source: Box::new(e),
    }
}

impl RxState {
    /// Forget the waiting frame and the cached chains (the queue is gone: reset).
    pub fn clear(&mut self) {
        self.pending = None;
        self.chains.clear();
        self.cached = 0;
    }

    /// RX chains popped from the ring but not used yet: a snapshot puts the queue's
    /// next available index back by this many, so a restored device sees them again.
    pub fn held_chains(&self) -> u16 {
        u16::try_from(self.chains.len()).expect("at most a queue's size")
    }

    /// A frame waits for guest buffers.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Read the next frame into the staging buffer if none waits; false when the
    /// backend has nothing.
    fn stage<T: FrameIo>(&mut self, io: &mut T, throttle: &mut impl Throttle) -> bool {
        while self.pending.is_none() && self.readable {
            match io.read_frame(&IoVecs::from_host(&mut self.staged)) {
                Ok(n) if n > NET_HDR_LEN => {
                    throttle.charge(frame_bytes(n));
                    self.pending = Some(n);
                }
                Ok(0) => self.readable = false,
                Ok(_) => log::debug!("virtio-net: runt frame dropped"),
                Err(e) => self.read_failed(&e),
            }
        }
        self.pending.is_some()
    }

    fn read_failed(&mut self, e: &io::Error) {
        match e.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => self.readable = false,
            _ => {
                log::warn!("virtio-net: backend read: {e}");
                self.readable = false;
            }
        }
    }

    /// Whether a frame of any size fits in what is cached, so it can be read in place.
    fn fits_any_frame(&self) -> bool {
        match self.offloads.mergeable() {
            true => self.cached >= MAX_RX,
            false => self.chains.front().is_some_and(|c| c.len >= MAX_RX),
        }
    }

    /// Pop chains until `want` bytes are cached (with MRG_RXBUF) or one chain is (without),
    /// or the ring is empty. Chains that cannot take a frame are completed empty at once;
    /// their number is returned.
    fn fill_cache(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        want: usize,
    ) -> Result<usize, QueueError> {
        let mut returned = 0;
        while match self.offloads.mergeable() {
            true => self.cached < want,
            false => self.chains.is_empty(),
        } {
            let Some(chain) = pop(queue, mem, RX)? else {
                break;
            };
            let chain = Chain::parse(chain, mem, MAX_DESCRIPTORS).map_err(request_error)?;
            let len = total_len(&chain.writable);
            if !chain.readable.is_empty() || len < NET_HDR_LEN {
                log::debug!("virtio-net: unusable RX buffer {} returned", chain.head);
                add_used(queue, mem, RX, chain.head, 0)?;
                returned += 1;
                continue;
            }
            self.cached += len;
            self.chains.push_back(RxChain {
                head: chain.head,
                bufs: chain.writable,
                len,
            });
        }
        Ok(returned)
    }

    /// The buffers of the first `count` cached chains, in order.
    fn buffers(&self, count: usize) -> Vec<Buffer> {
        self.chains
            .iter()
            .take(count)
            .flat_map(|c| c.bufs.iter().copied())
            .collect()
    }

    /// How many cached chains `n` bytes fill.
    fn chains_for(&self, n: usize) -> usize {
        let mut covered = 0;
        let mut count = 0;
        for c in &self.chains {
            if covered >= n {
                break;
            }
            covered += c.len;
            count += 1;
        }
        count
    }

    /// Complete the first `count` cached chains holding an `n`-byte frame whose header
    /// (as the backend wrote it) is already at the start of the first: set its
    /// `num_buffers` and clear what the guest did not negotiate.
    fn complete(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        count: usize,
        n: usize,
    ) -> Result<(), QueueError> {
        let bufs = self.buffers(1);
        let mut raw = [0u8; NET_HDR_LEN];
        read_bytes(mem, &bufs, 0, &mut raw).map_err(request_error)?;
        let num = u16::try_from(count).expect("at most a queue's size");
        let hdr = self.offloads.rx_header(&NetHeader::from_bytes(&raw), num);
        write_bytes(mem, &bufs, 0, &hdr.to_bytes()).map_err(request_error)?;
        let mut left = n;
        for c in self.chains.drain(..count) {
            let len = left.min(c.len);
            left -= len;
            self.cached -= c.len;
            let len = u32::try_from(len).expect("at most a frame");
            add_used(queue, mem, RX, c.head, len)?;
        }
        Ok(())
    }

    /// Read one frame straight into the cached chains (which can hold any frame).
    fn read_in_place<T: FrameIo>(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        io: &mut T,
        throttle: &mut impl Throttle,
    ) -> Result<Option<usize>, QueueError> {
        let count = match self.offloads.mergeable() {
            true => self.chains.len(),
            false => 1,
        };
        let iov = IoVecs::new(mem, &self.buffers(count)).map_err(request_error)?;
        match io.read_frame(&iov) {
            Ok(n) if n > NET_HDR_LEN => {
                throttle.charge(frame_bytes(n));
                let used = self.chains_for(n);
                self.complete(queue, mem, used, n)?;
                Ok(Some(used))
            }
            Ok(0) => {
                self.readable = false;
                Ok(None)
            }
            Ok(_) => {
                log::debug!("virtio-net: runt frame dropped");
                Ok(Some(0))
            }
            Err(e) => {
                self.read_failed(&e);
                Ok(None)
            }
        }
    }

    /// Copy the staged frame into cached chains; None when too few are cached. Without
    /// MRG_RXBUF a frame larger than the first chain is dropped and the chain returned
    /// empty.
    fn deliver_staged(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<Option<usize>, QueueError> {
        let Some(n) = self.pending else {
            return Ok(None);
        };
        let fits = match self.offloads.mergeable() {
            true => self.cached >= n,
            false => self.chains.front().is_some_and(|c| c.len >= n),
        };
        if !fits && (self.offloads.mergeable() || self.chains.is_empty()) {
            return Ok(None);
        }
        self.pending = None;
        if !fits {
            log::debug!("virtio-net: RX buffer too small, frame dropped");
            self.complete_empty(queue, mem)?;
            return Ok(Some(1));
        }
        let count = self.chains_for(n);
        let bufs = self.buffers(count);
        write_bytes(mem, &bufs, 0, &self.staged[..n]).map_err(request_error)?;
        self.complete(queue, mem, count, n)?;
        Ok(Some(count))
    }

    fn complete_empty(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<(), QueueError> {
        if let Some(c) = self.chains.pop_front() {
            self.cached -= c.len;
            add_used(queue, mem, RX, c.head, 0)?;
        }
        Ok(())
    }

    /// Move at most one frame into the guest; none is read from the backend while
    /// `throttle` blocks (a frame already staged is still delivered).
    pub(super) fn step<T: FrameIo>(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        io: &mut T,
        throttle: &mut impl Throttle,
    ) -> Result<RxStep, QueueError> {
        let step = |used: usize| match used {
            0 => RxStep::Idle,
            n => RxStep::Used(n),
        };
        let mut returned = 0;
        if self.pending.is_none() {
            if !self.readable || throttle.blocked() {
                return Ok(RxStep::Idle);
            }
            returned += self.fill_cache(queue, mem, MAX_RX)?;
            if self.fits_any_frame() {
                return Ok(match self.read_in_place(queue, mem, io, throttle)? {
                    Some(used) => RxStep::Used(used + returned),
                    None => step(returned),
                });
            }
            if !self.stage(io, throttle) {
                return Ok(step(returned));
            }
        }
        let want = self.pending.unwrap_or(0);
        returned += self.fill_cache(queue, mem, want)?;
        Ok(match self.deliver_staged(queue, mem)? {
            Some(used) => RxStep::Used(used + returned),
            None => step(returned),
        })
    }
}
