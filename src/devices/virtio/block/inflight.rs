//! The request queue served through a [`Ring`]: when the driver has several requests
//! outstanding, every one is started at once, and completions are put in the used ring
//! as they come, in whatever order the kernel finishes them (virtio 1.2 §2.7.7 lets a
//! device use buffers out of order). A lone request is served on the spot.

use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::disk::Disk;
use super::request::{prepare, Prepared, RequestError};
use super::ring::{Completed, Ring};
use crate::devices::rate_limiter::Throttle;
use crate::devices::virtio::queues::{
    add_used, needs_notification, pop, unpop, Drained, QueueError,
};

fn request_error(e: RequestError) -> QueueError {
    QueueError::Request {
        index: 0,
        source: Box::new(e),
    }
}

/// Start up to `budget` requests of the queue: answer at once what moves no data (and
/// what the ring cannot take), queue reads, writes and flushes on `ring`, and submit
/// them with one system call. `more` is set when the budget ran out; when the ring is
/// full, its completions bring the device back; when `throttle` blocks (asked only when
/// a request is available), the request stays in the ring and the timer brings the
/// device back.
pub fn start(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    disk: &Disk,
    ring: &mut Ring,
    budget: usize,
    throttle: &mut impl Throttle,
) -> Result<Drained, QueueError> {
    let ring_err = |source| QueueError::Ring { index: 0, source };
    let (mut used, mut started, mut more, mut blocked) = (0, 0, false, false);
    loop {
        if queue.event_idx_enabled() {
            queue.disable_notification(mem).map_err(ring_err)?;
        }
        while ring.has_room() {
            if used + started >= budget {
                more = true;
                break;
            }
            let Some(chain) = pop(queue, mem, 0)? else {
                break;
            };
            if throttle.blocked() {
                unpop(queue);
                blocked = true;
                break;
            }
            let head = chain.head_index();
            let prepared = prepare(mem, chain, disk).map_err(request_error)?;
            throttle.charge(match &prepared {
                Prepared::Done(_) => 0,
                Prepared::Io(req) => req.charge(),
            });
            match prepared {
                Prepared::Done(len) => {
                    add_used(queue, mem, 0, head, len)?;
                    used += 1;
                }
                // A lone request gains nothing from the ring: the kernel may hand it
                // to a worker thread (tmpfs always does), which only adds two wake-ups.
                Prepared::Io(req) if ring.in_flight() == 0 && !more_available(queue, mem)? => {
                    let ok = req.run_sync(mem, disk);
                    let len = req.finish(mem, ok).map_err(request_error)?;
                    add_used(queue, mem, 0, req.head, len)?;
                    used += 1;
                }
                Prepared::Io(req) => match ring.push(disk.file(), mem, req) {
                    Ok(()) => started += 1,
                    Err(req) => {
                        let ok = req.run_sync(mem, disk);
                        let len = req.finish(mem, ok).map_err(request_error)?;
                        add_used(queue, mem, 0, req.head, len)?;
                        used += 1;
                    }
                },
            }
        }
        let rearm = !more && !blocked && ring.has_room() && queue.event_idx_enabled();
        if !rearm || !queue.enable_notification(mem).map_err(ring_err)? {
            break;
        }
    }
    if let Err(e) = ring.submit() {
        log::warn!("virtio-blk: io_uring submit: {e}");
    }
    let notify = used > 0 && needs_notification(queue, mem, 0)?;
    Ok(Drained { used, notify, more })
}

/// Whether the driver made more requests available than the device took so far.
fn more_available(queue: &Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|source| QueueError::Ring { index: 0, source })?;
    Ok(avail.0 != queue.next_avail())
}

/// Put finished requests in the used ring (status bytes written); whether the driver
/// wants an interrupt.
pub fn finish(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    done: Vec<Completed>,
) -> Result<bool, QueueError> {
    if done.is_empty() {
        return Ok(false);
    }
    for c in done {
        let len = c.req.finish(mem, c.ok).map_err(request_error)?;
        add_used(queue, mem, 0, c.req.head, len)?;
    }
    needs_notification(queue, mem, 0)
}

#[cfg(test)]
#[path = "inflight_tests.rs"]
mod tests;
