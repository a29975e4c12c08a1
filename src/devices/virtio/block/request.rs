//! virtio-blk request parsing and execution (virtio 1.2 §5.2.6) on guest memory.
//!
//! A request is a 16-byte header (type, reserved, sector), data, and a status byte
//! that is the last byte of the last device-writable buffer. Anything wrong with a
//! request that still has a status byte is answered with IOERR or UNSUPP; a chain
//! without a status byte cannot be answered and is a queue error.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::GuestMemoryMmap;

use super::disk::{Disk, WriteZeroes};
use crate::devices::rate_limiter::Throttle;
use crate::devices::virtio::descriptor::{
    read_bytes, sub_range, total_len, write_bytes, Buffer, Chain, DescriptorError,
};
use crate::devices::virtio::queues::{drain_throttled, Drained, QueueError};

/// Sector size of the virtio-blk interface.
pub const SECTOR_SIZE: u64 = 512;
/// Most descriptors in a request (SEG_MAX data segments + header + status).
pub const MAX_DESCRIPTORS: usize = 128;
/// Largest discard / write-zeroes request, in sectors (2 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
const HEADER_LEN: usize = 16;
const SEGMENT_LEN: usize = 16;

/// Errors that leave a request without an answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The chain itself is invalid.
    #[error("block request")]
    Descriptor(#[from] DescriptorError),
    /// No device-writable byte for the status.
    #[error("block request {head} has no status byte")]
    NoStatus {
        /// Head index.
        head: u16,
    },
}

/// Status and bytes written to data buffers.
type Outcome = (u32, u32);

const IOERR: Outcome = (VIRTIO_BLK_S_IOERR, 0);
const UNSUPP: Outcome = (VIRTIO_BLK_S_UNSUPP, 0);

/// What moves data or makes it durable: done later (the device's io_uring) or at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    /// VIRTIO_BLK_T_IN.
    Read,
    /// VIRTIO_BLK_T_OUT.
    Write,
    /// VIRTIO_BLK_T_FLUSH.
    Flush,
}

/// A checked read, write or flush, with where its status byte goes.
#[derive(Debug)]
pub struct IoRequest {
    /// Head index of the chain.
    pub head: u16,
    /// What to do.
    pub kind: IoKind,
    /// Byte offset in the image (reads and writes).
    pub offset: u64,
    /// The data buffers (guest memory, checked).
    pub bufs: Vec<Buffer>,
    status: Buffer,
}

/// A request after [`prepare`].
#[derive(Debug)]
pub enum Prepared {
    /// Answered already (status written); the used length.
    Done(u32),
    /// To be carried out, then [`IoRequest::finish`]ed.
    Io(IoRequest),
}

impl IoRequest {
    /// A request as `prepare` would make it (head 0), for tests.
    #[cfg(test)]
    pub fn for_test(kind: IoKind, offset: u64, bufs: Vec<Buffer>, status: Buffer) -> Self {
        Self {
            head: 0,
            kind,
            offset,
            bufs,
            status,
        }
    }

    /// Bytes of data.
    pub fn data_len(&self) -> usize {
        total_len(&self.bufs)
    }

    /// What a rate limiter's byte bucket is charged for it: its data.
    pub fn charge(&self) -> u64 {
        u64::try_from(self.data_len()).unwrap_or(u64::MAX)
    }

    /// Carry the request out on this thread; whether it succeeded.
    pub fn run_sync(&self, mem: &GuestMemoryMmap, disk: &Disk) -> bool {
        let (what, result) = match self.kind {
            IoKind::Read => ("read", disk.read_into(mem, self.offset, &self.bufs)),
            IoKind::Write => ("write", disk.write_from(mem, self.offset, &self.bufs)),
            IoKind::Flush => ("flush", disk.flush()),
        };
        if let Err(e) = &result {
            let path = disk.path().display();
            log::warn!("virtio-blk: {what} of {path} at {}: {e}", self.offset);
        }
        result.is_ok()
    }

    /// Write the status byte (OK or IOERR); the used length (data read + status).
    pub fn finish(&self, mem: &GuestMemoryMmap, ok: bool) -> Result<u32, RequestError> {
        let status = if ok {
            VIRTIO_BLK_S_OK
        } else {
            VIRTIO_BLK_S_IOERR
        };
        let at = self.status.len as usize - 1;
        write_bytes(mem, &[self.status], at, &[status as u8])?;
        let data = match (self.kind, ok) {
            (IoKind::Read, true) => u32::try_from(self.data_len()).unwrap_or(u32::MAX),
            _ => 0,
        };
        Ok(data.saturating_add(1))
    }
}

/// Check one chain; answer at once what needs no data transfer (and every malformed
/// request that still has a status byte), hand reads, writes and flushes back.
pub fn prepare(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    disk: &Disk,
) -> Result<Prepared, RequestError> {
    let chain = Chain::parse(chain, mem, MAX_DESCRIPTORS)?;
    let head = chain.head;
    let last = *chain
        .writable
        .last()
        .filter(|b| b.len > 0)
        .ok_or(RequestError::NoStatus { head })?;
    let in_len = total_len(&chain.writable) - 1;
    let in_bufs = sub_range(&chain.writable, 0, in_len)?;
    let io = |kind, offset, bufs| {
        Prepared::Io(IoRequest {
            head,
            kind,
            offset,
            bufs,
            status: last,
        })
    };
    let (status, written) = match classify(mem, &chain.readable, in_bufs, disk) {
        Classified::Io(kind, offset, bufs) => return Ok(io(kind, offset, bufs)),
        Classified::Now(kind, data, in_bufs) => execute(mem, kind, &data, &in_bufs, disk),
        Classified::Answer(outcome) => outcome,
    };
    write_bytes(mem, &[last], last.len as usize - 1, &[status as u8])?;
    Ok(Prepared::Done(written + 1))
}

/// Execute one chain on `disk` on this thread; returns the used length and the bytes
/// of data it moved (what a rate limiter charges).
pub fn handle_request(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    disk: &Disk,
) -> Result<(u32, u64), RequestError> {
    match prepare(mem, chain, disk)? {
        Prepared::Done(len) => Ok((len, 0)),
        Prepared::Io(req) => {
            let ok = req.run_sync(mem, disk);
            Ok((req.finish(mem, ok)?, req.charge()))
        }
    }
}

/// A request sorted by what it needs.
enum Classified {
    /// A read, write or flush (kind, byte offset, data buffers).
    Io(IoKind, u64, Vec<Buffer>),
    /// Another type, done at once on (type, data after the header, device-writable data).
    Now(u32, Vec<Buffer>, Vec<Buffer>),
    /// Refused before anything is done.
    Answer(Outcome),
}

fn classify(
    mem: &GuestMemoryMmap,
    out: &[Buffer],
    in_bufs: Vec<Buffer>,
    disk: &Disk,
) -> Classified {
    let mut hdr = [0u8; HEADER_LEN];
    if read_bytes(mem, out, 0, &mut hdr).is_err() {
        return Classified::Answer(IOERR);
    }
    let kind = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let sector = u64::from_le_bytes(hdr[8..16].try_into().expect("8 bytes"));
    let data_len = total_len(out) - HEADER_LEN;
    let Ok(data) = sub_range(out, HEADER_LEN, data_len) else {
        return Classified::Answer(IOERR);
    };
    let range = |bufs: &[Buffer]| byte_range(disk, sector, total_len(bufs) as u64);
    match kind {
        VIRTIO_BLK_T_IN if data.is_empty() => match range(&in_bufs) {
            Some(offset) => Classified::Io(IoKind::Read, offset, in_bufs),
            None => Classified::Answer(IOERR),
        },
        VIRTIO_BLK_T_OUT if in_bufs.is_empty() && !disk.read_only() => match range(&data) {
            Some(offset) => Classified::Io(IoKind::Write, offset, data),
            None => Classified::Answer(IOERR),
        },
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => Classified::Answer(IOERR),
        VIRTIO_BLK_T_FLUSH => Classified::Io(IoKind::Flush, 0, Vec::new()),
        _ => Classified::Now(kind, data, in_bufs),
    }
}

/// The byte offset of `sector` if `len` bytes from there are inside the disk.
fn byte_range(disk: &Disk, sector: u64, len: u64) -> Option<u64> {
    let offset = sector.checked_mul(SECTOR_SIZE)?;
    let end = offset.checked_add(len)?;
    (len.is_multiple_of(SECTOR_SIZE) && end <= disk.sectors() * SECTOR_SIZE).then_some(offset)
}

/// The requests that move no data (GET_ID, DISCARD, WRITE_ZEROES, unknown types), on
/// `data` (after the header) and `in_bufs` (device-writable, before the status).
fn execute(
    mem: &GuestMemoryMmap,
    kind: u32,
    data: &[Buffer],
    in_bufs: &[Buffer],
    disk: &Disk,
) -> Outcome {
    match kind {
        VIRTIO_BLK_T_GET_ID => get_id(mem, disk, in_bufs),
        VIRTIO_BLK_T_DISCARD if disk.discard() => range_op(mem, disk, data, false),
        VIRTIO_BLK_T_WRITE_ZEROES if disk.write_zeroes() != WriteZeroes::Unsupported => {
            range_op(mem, disk, data, true)
        }
        _ => UNSUPP,
    }
}

fn get_id(mem: &GuestMemoryMmap, disk: &Disk, bufs: &[Buffer]) -> Outcome {
    let n = total_len(bufs).min(disk.id().len());
    match write_bytes(mem, bufs, 0, &disk.id()[..n]) {
        Ok(()) => (VIRTIO_BLK_S_OK, u32::try_from(n).expect("at most 20")),
        Err(_) => IOERR,
    }
}

/// Discard or write-zeroes with exactly one segment (max_*_seg = 1).
fn range_op(mem: &GuestMemoryMmap, disk: &Disk, data: &[Buffer], zeroes: bool) -> Outcome {
    let mut seg = [0u8; SEGMENT_LEN];
    if total_len(data) != SEGMENT_LEN || read_bytes(mem, data, 0, &mut seg).is_err() {
        return IOERR;
    }
    let sector = u64::from_le_bytes(seg[0..8].try_into().expect("8 bytes"));
    let sectors = u32::from_le_bytes(seg[8..12].try_into().expect("4 bytes"));
    let flags = u32::from_le_bytes(seg[12..16].try_into().expect("4 bytes"));
    let allowed_flags = match zeroes {
        true => VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
        false => 0,
    };
    if flags & !allowed_flags != 0 {
        return UNSUPP;
    }
    let len = u64::from(sectors) * SECTOR_SIZE;
    let Some(offset) = byte_range(disk, sector, len).filter(|_| sectors <= MAX_DISCARD_SECTORS)
    else {
        return IOERR;
    };
    let result = match zeroes {
        true => disk.zero_range(offset, len),
        false => disk.punch_hole(offset, len),
    };
    match result {
        Ok(()) => (VIRTIO_BLK_S_OK, 0),
        Err(e) => {
            log::warn!(
                "virtio-blk: discard/zero of {} at {offset}: {e}",
                disk.path().display()
            );
            IOERR
        }
    }
}

/// Serve up to `budget` requests of the block queue (index 0), each once `throttle`
/// lets it (one operation and its data bytes).
pub fn process_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    disk: &mut Disk,
    budget: usize,
    throttle: &mut impl Throttle,
) -> Result<Drained, QueueError> {
    drain_throttled(queue, mem, 0, budget, throttle, |chain| {
        handle_request(mem, chain, disk).map_err(|e| QueueError::Request {
            index: 0,
            source: Box::new(e),
        })
    })
}

/// Read the status byte a test request got.
#[cfg(test)]
pub(crate) fn status_at(mem: &GuestMemoryMmap, addr: u64) -> u8 {
    vm_memory::Bytes::read_obj(mem, vm_memory::GuestAddress(addr)).unwrap()
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
