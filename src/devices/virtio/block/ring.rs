//! Several block requests in flight through io_uring.
//!
//! The event loop pops every request the guest made available, queues each read and
//! write as one `IORING_OP_READV`/`WRITEV` straight between the image and guest memory,
//! and submits them all with one system call. On a file whose data is in the page
//! cache the kernel completes them during that call; others complete on the kernel's
//! own workers, in parallel, and their completions wake the loop through an eventfd
//! registered with the ring. A request's iovecs and a clone of the guest memory handle
//! stay in [`InFlight`] until its completion is reaped, so the memory the kernel writes
//! to stays mapped; [`Ring::wait_all`] reaps every one (before a snapshot, a reset, and
//! when the device goes away).
#![expect(
    unsafe_code,
    reason = "io_uring submissions name buffers the kernel uses after the call"
)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use io_uring::register::Restriction;
use io_uring::{opcode, squeue, types, IoUring};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

use super::request::{IoKind, IoRequest};
use crate::devices::virtio::guest_io::IoVecs;

/// The iovecs of a submission: pointers into guest memory.
#[derive(Debug)]
struct RawIovecs(
    #[expect(
        dead_code,
        reason = "only the kernel reads the iovecs, through the submission"
    )]
    Vec<libc::iovec>,
);

// SAFETY: the pointers name guest memory, which every thread of the VMM may access
// (the guest shares it anyway); husk itself never reads or writes through them, only
// the kernel does, for whichever thread submitted them.
unsafe impl Send for RawIovecs {}

/// A request the kernel is working on.
#[derive(Debug)]
struct InFlight {
    req: IoRequest,
    /// The iovecs the submission points to (a stable heap allocation).
    _iov: RawIovecs,
    /// Keeps the guest's mapping alive while the kernel may write to it.
    mem: GuestMemoryMmap,
}

/// A request whose transfer ended: whether it succeeded.
#[derive(Debug)]
pub struct Completed {
    /// The request.
    pub req: IoRequest,
    /// All its bytes moved (or the flush succeeded).
    pub ok: bool,
}

/// An io_uring with the requests in flight on it.
pub struct Ring {
    ring: IoUring,
    evt: EventFd,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    in_flight: usize,
    unsubmitted: bool,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl Ring {
    /// A ring for at most `depth` requests in flight, its completions signalled on an
    /// eventfd. Fails where io_uring is unavailable (old kernel, seccomp, sysctl).
    ///
    /// The ring can only ever read, write and sync (its restrictions are registered
    /// before it is enabled, and no registration is allowed after): a thread that took
    /// over the process could not use it to open files or sockets behind the syscall
    /// filters' back.
    pub fn new(depth: u16) -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_r_disabled()
            .build(u32::from(depth))?;
        let evt = EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC)?;
        let submitter = ring.submitter();
        submitter.register_eventfd(evt.as_raw_fd())?;
        let mut allowed = [
            Restriction::sqe_op(opcode::Readv::CODE),
            Restriction::sqe_op(opcode::Writev::CODE),
            Restriction::sqe_op(opcode::Fsync::CODE),
            Restriction::sqe_flags_allowed(squeue::Flags::IO_DRAIN.bits()),
        ];
        submitter.register_restrictions(&mut allowed)?;
        submitter.register_enable_rings()?;
        Ok(Self {
            ring,
            evt,
            slots: (0..depth).map(|_| None).collect(),
            free: (0..usize::from(depth)).rev().collect(),
            in_flight: 0,
            unsubmitted: false,
        })
    }

    /// The eventfd the kernel signals on completions (for the event loop).
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// Requests queued or in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether another request can be queued.
    pub fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    /// Queue `req` on `file` (submitted by the next [`Ring::submit`]). A request that
    /// cannot be queued (no room, or its buffers are not guest memory) comes back.
    pub fn push(
        &mut self,
        file: &File,
        mem: &GuestMemoryMmap,
        req: IoRequest,
    ) -> Result<(), IoRequest> {
        let Some(slot) = self.free.pop() else {
            return Err(req);
        };
        let iov = match IoVecs::new(mem, &req.bufs) {
            Ok(iov) => iov.into_raw(),
            Err(_) => {
                self.free.push(slot);
                return Err(req);
            }
        };
        let fd = types::Fd(file.as_raw_fd());
        let count = u32::try_from(iov.len()).expect("at most MAX_DESCRIPTORS buffers");
        let entry = match req.kind {
            IoKind::Read => opcode::Readv::new(fd, iov.as_ptr(), count)
                .offset(req.offset)
                .build(),
            IoKind::Write => opcode::Writev::new(fd, iov.as_ptr(), count)
                .offset(req.offset)
                .build(),
            // IO_DRAIN: the flush starts once every request queued before it is done.
            IoKind::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .flags(squeue::Flags::IO_DRAIN),
        };
        let entry = entry.user_data(slot as u64);
        // SAFETY: the submission points to `iov` (moved into the slot below, so its
        // heap buffer does not move) and through it to guest memory, whose mapping the
        // cloned `mem` keeps; both stay in `slots[slot]` until this request's
        // completion is reaped (`reap`), and `Drop` waits for every completion.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            self.free.push(slot);
            return Err(req);
        }
        self.slots[slot] = Some(InFlight {
            req,
            _iov: RawIovecs(iov),
            mem: mem.clone(),
        });
        self.in_flight += 1;
        self.unsubmitted = true;
        Ok(())
    }

    /// Hand every queued request to the kernel (one system call).
    pub fn submit(&mut self) -> io::Result<()> {
        if self.unsubmitted {
            self.ring.submit()?;
            self.unsubmitted = false;
        }
        Ok(())
    }

    /// Take the completions that are there, finishing short transfers on this thread.
    pub fn reap(&mut self, file: &File) -> Vec<Completed> {
        let _ = self.evt.read();
        let done: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        done.into_iter()
            .filter_map(|(slot, res)| self.complete(file, slot, res))
            .collect()
    }

    fn complete(&mut self, file: &File, slot: u64, res: i32) -> Option<Completed> {
        let slot = usize::try_from(slot).ok()?;
        let flight = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        self.in_flight -= 1;
        let req = flight.req;
        let ok = match usize::try_from(res) {
            Err(_) => {
                let e = io::Error::from_raw_os_error(-res);
                log::warn!("virtio-blk: {:?} at {}: {e}", req.kind, req.offset);
                false
            }
            Ok(n) if req.kind == IoKind::Flush || n == req.data_len() => true,
            Ok(n) => finish_short(file, &flight.mem, &req, n),
        };
        Some(Completed { req, ok })
    }

    /// Wait until nothing is in flight; every completion.
    pub fn wait_all(&mut self, file: &File) -> Vec<Completed> {
        let mut all = Vec::new();
        while self.in_flight > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => self.unsubmitted = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::error!("virtio-blk: waiting for io_uring: {e}");
                    break;
                }
            }
            all.extend(self.reap(file));
        }
        all
    }
}

/// Move the rest of a transfer the kernel did `n` bytes of, here and now.
fn finish_short(file: &File, mem: &GuestMemoryMmap, req: &IoRequest, n: usize) -> bool {
    let Ok(mut iov) = IoVecs::new(mem, &req.bufs) else {
        return false;
    };
    iov.advance(n);
    let offset = req.offset + n as u64;
    let result = match req.kind {
        IoKind::Read => iov.read_exact_at(file, offset),
        _ => iov.write_all_at(file, offset),
    };
    if let Err(e) = &result {
        log::warn!("virtio-blk: {:?} at {offset}: {e}", req.kind);
    }
    result.is_ok()
}

impl Drop for Ring {
    /// The kernel must be done with guest memory before the iovecs and the mapping go:
    /// wait for every request (their results are dropped).
    fn drop(&mut self) {
        while self.in_flight > 0 {
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.kind() != io::ErrorKind::Interrupted {
                    // The kernel may still use them: leak rather than free.
                    log::error!("virtio-blk: io_uring at drop: {e}");
                    std::mem::forget(std::mem::take(&mut self.slots));
                    return;
                }
            }
            let done: Vec<u64> = self.ring.completion().map(|c| c.user_data()).collect();
            for slot in done {
                let taken = usize::try_from(slot)
                    .ok()
                    .and_then(|s| self.slots.get_mut(s))
                    .and_then(Option::take);
                if taken.is_some() {
                    self.in_flight -= 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::block::request::IoRequest;
    use crate::devices::virtio::descriptor::test_util::{memory, TempImage};
    use crate::devices::virtio::descriptor::Buffer;

    fn buf(addr: u64, len: u32) -> Buffer {
        Buffer {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn a_read_in_flight_lands_in_guest_memory_once_reaped() {
        let (mem, img) = (memory(), TempImage::new(8192, 0x42));
        let file = File::open(&img.0).unwrap();
        let mut ring = Ring::new(8).unwrap();
        let req = IoRequest::for_test(IoKind::Read, 4096, vec![buf(0x1000, 4096)], buf(0x3000, 1));
        ring.push(&file, &mem, req).unwrap();
        ring.submit().unwrap();
        let done = ring.wait_all(&file);
        assert_eq!(done.len(), 1);
        assert!(done[0].ok);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x1fff)).unwrap(), 0x42);
    }

    #[test]
    fn the_ring_refuses_anything_but_reads_writes_and_syncs() {
        let mut ring = Ring::new(8).unwrap();
        let path = c"/etc/hostname";
        let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr())
            .build()
            .user_data(7);
        // SAFETY: the path outlives the submission, which the kernel refuses anyway.
        unsafe { ring.ring.submission().push(&open).unwrap() };
        ring.ring.submit_and_wait(1).unwrap();
        let cqe = ring.ring.completion().next().unwrap();
        assert_eq!((cqe.user_data(), cqe.result()), (7, -libc::EACCES));
        // Nor may it be given anything more once enabled.
        let err = ring.ring.submitter().register_eventfd(ring.evt.as_raw_fd());
        assert!(err.is_err());
    }
}
