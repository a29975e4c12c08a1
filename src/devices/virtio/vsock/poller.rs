//! The vsock device's own epoll: every fd of the device is watched here by token, and
//! the device loop watches only this epoll's fd.
//!
//! Why a nested epoll: a device reset (status 0, written on a vCPU thread) must release
//! every socket and eventfd the guest made husk hold before the reset completes, while
//! registrations with the device loop can only be changed from the loop thread (through
//! event-manager's `EventOps`). Closing a socket that is still in the loop's epoll would
//! be fine for the kernel (it drops an item when the file's last reference goes), but
//! event-manager keeps its own map from fd number to subscriber: the stale entry would
//! make a later `add` of a new fd with the same number fail (`FdAlreadyRegistered`),
//! for this device or for any other device in the loop (a re-activated queue eventfd
//! is the usual next fd), and a queue eventfd clone, whose file the transport keeps
//! open, would stay in the loop's epoll reporting under a number that no longer is
//! its own. So the device registers its fds here instead, and every change to this
//! set happens under the device's mutex, on whichever thread holds it: `reset`
//! removes each fd (`EPOLL_CTL_DEL`) and closes it at once, and the loop, which reads
//! this epoll under the same mutex, can never see an event of an fd that is gone.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Most events taken from the epoll per call of [`Poller::ready`]: work per wake-up of
/// the device loop stays bounded, and the loop comes back while events remain (the
/// loop watches this epoll level-triggered).
const MAX_EVENTS: usize = 64;

/// An epoll set whose events carry a `u32` token.
#[derive(Debug)]
pub struct Poller {
    epoll: Epoll,
}

impl Poller {
    /// A new, empty set.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            epoll: Epoll::new()?,
        })
    }

    /// Watch `fd` for `set`, reporting `token`.
    pub fn watch(&self, fd: RawFd, token: u32, set: EventSet) -> io::Result<()> {
        let event = EpollEvent::new(set, u64::from(token));
        self.epoll.ctl(ControlOperation::Add, fd, event)
    }

    /// Change what `fd` is watched for (an empty `set` pauses it).
    pub fn rewatch(&self, fd: RawFd, token: u32, set: EventSet) -> io::Result<()> {
        let event = EpollEvent::new(set, u64::from(token));
        self.epoll.ctl(ControlOperation::Modify, fd, event)
    }

    /// Stop watching `fd`; call before closing it. An fd that was never added (its
    /// `watch` failed) is not an error worth reporting.
    pub fn unwatch(&self, fd: RawFd) {
        let result = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        if let Err(e) = result.filter_not_found() {
            log::warn!("vsock: cannot stop watching fd {fd}: {e}");
        }
    }

    /// The events waiting now (at most [`MAX_EVENTS`]), without blocking.
    pub fn ready(&self) -> Vec<(u32, EventSet)> {
        let mut events = [EpollEvent::default(); MAX_EVENTS];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => {
                log::warn!("vsock: epoll_wait: {e}");
                0
            }
        };
        events[..n]
            .iter()
            .map(|e| {
                let token = u32::try_from(e.data()).expect("tokens are u32");
                (token, e.event_set())
            })
            .collect()
    }
}

impl AsRawFd for Poller {
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

/// `ENOENT` from `EPOLL_CTL_DEL` means the fd was not in the set.
trait FilterNotFound {
    fn filter_not_found(self) -> io::Result<()>;
}

impl FilterNotFound for io::Result<()> {
    fn filter_not_found(self) -> io::Result<()> {
        match self {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;

    #[test]
    fn written_eventfd_is_reported_with_its_token() {
        let (poller, evt) = (Poller::new().unwrap(), EventFd::new(EFD_NONBLOCK).unwrap());
        poller.watch(evt.as_raw_fd(), 7, EventSet::IN).unwrap();
        evt.write(1).unwrap();
        assert_eq!(poller.ready(), vec![(7, EventSet::IN)]);
    }

    #[test]
    fn unwatched_fd_reports_nothing_even_when_ready() {
        let (poller, evt) = (Poller::new().unwrap(), EventFd::new(EFD_NONBLOCK).unwrap());
        poller.watch(evt.as_raw_fd(), 7, EventSet::IN).unwrap();
        evt.write(1).unwrap();
        poller.unwatch(evt.as_raw_fd());
        assert_eq!(poller.ready(), vec![]);
    }

    #[test]
    fn paused_fd_reports_nothing_until_rewatched() {
        let (poller, evt) = (Poller::new().unwrap(), EventFd::new(EFD_NONBLOCK).unwrap());
        poller.watch(evt.as_raw_fd(), 7, EventSet::IN).unwrap();
        evt.write(1).unwrap();
        poller
            .rewatch(evt.as_raw_fd(), 7, EventSet::empty())
            .unwrap();
        let paused = poller.ready();
        poller.rewatch(evt.as_raw_fd(), 7, EventSet::IN).unwrap();
        assert_eq!((paused, poller.ready()), (vec![], vec![(7, EventSet::IN)]));
    }

    #[test]
    fn unwatching_an_unknown_fd_is_quiet() {
        let (poller, evt) = (Poller::new().unwrap(), EventFd::new(EFD_NONBLOCK).unwrap());
        poller.unwatch(evt.as_raw_fd());
        assert_eq!(poller.ready(), vec![]);
    }
}
