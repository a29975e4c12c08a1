//! The one-shot timer that brings a blocked device back: a non-blocking `timerfd` the
//! device's event-manager subscriber watches, and when it is due.
//!
//! Only the event loop thread arms or reads it. It is registered once, for the
//! device's life, and never disarmed: a device reset leaves it as it is, and if it
//! fires for a queue that is gone the device finds nothing to serve.
#![expect(unsafe_code, reason = "the timerfd is made non-blocking with fcntl")]

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use vmm_sys_util::timerfd::TimerFd;

/// A timerfd and the instant it is armed for.
#[derive(Debug)]
pub(super) struct WakeTimer {
    fd: TimerFd,
    /// When the armed timer fires, on the limiter's clock; `None` when disarmed, or
    /// fired and read. While `Some`, an event is on its way (or waits in the loop).
    due: Option<u64>,
}

impl WakeTimer {
    /// A disarmed, non-blocking timer.
    pub(super) fn new() -> io::Result<Self> {
        let fd = TimerFd::new()?;
        set_nonblocking(&fd)?;
        Ok(Self { fd, due: None })
    }

    /// The timerfd, to register with the event loop (readable when it fired).
    pub(super) fn fd(&self) -> &TimerFd {
        &self.fd
    }

    /// Make sure an event comes by `now + wait`: arm the timer unless it is armed to
    /// fire by then (or fired and its event waits: arming again would lose it). False
    /// when the timer cannot be armed, and no event will come.
    pub(super) fn wake_by(&mut self, now: u64, wait: Duration) -> bool {
        let wait_ns = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
        let deadline = now.saturating_add(wait_ns);
        if self.due.is_some_and(|at| at <= deadline) {
            return true;
        }
        // At least 1 ns: a zero would disarm the timer.
        match self.fd.reset(wait.max(Duration::from_nanos(1)), None) {
            Ok(()) => {
                self.due = Some(deadline);
                true
            }
            Err(e) => {
                log::warn!("rate limiter: cannot arm its timer ({e}); not limiting");
                false
            }
        }
    }

    /// The timer's event came: take it (a read that finds nothing is fine: the timer
    /// was armed again after it fired).
    pub(super) fn fired(&mut self) {
        let _ = self.fd.wait();
        self.due = None;
    }
}

/// Make the timer's reads return at once when it has not fired: the loop reads it only
/// after epoll said so, but the timer may have been armed again since, and a read that
/// blocked would hold the device's lock until the new deadline.
fn set_nonblocking(timer: &TimerFd) -> io::Result<()> {
    // SAFETY: F_SETFL on a descriptor the TimerFd owns and keeps open for the call; it
    // changes only the file status flags (for a timerfd, O_NONBLOCK is the one to set).
    match unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } {
        -1 => Err(io::Error::last_os_error()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn an_earlier_deadline_arms_again_and_a_later_one_does_not() {
        let mut t = WakeTimer::new().unwrap();
        assert!(t.wake_by(0, Duration::from_secs(60)));
        assert_eq!(t.due, Some(60_000 * MS));
        assert!(t.wake_by(0, Duration::from_secs(120)));
        assert_eq!(t.due, Some(60_000 * MS));
        assert!(t.wake_by(0, Duration::from_millis(5)));
        assert_eq!(t.due, Some(5 * MS));
        assert!(t.fd.is_armed().unwrap());
    }

    #[test]
    fn a_timer_past_due_is_left_for_its_event() {
        let mut t = WakeTimer::new().unwrap();
        assert!(t.wake_by(0, Duration::from_millis(1)));
        // Later than it was due, a shorter wait must not re-arm it: the event that is
        // on its way would be lost.
        assert!(t.wake_by(10 * MS, Duration::from_nanos(1)));
        assert_eq!(t.due, Some(MS));
    }

    #[test]
    fn reading_a_timer_that_did_not_fire_returns_at_once() {
        let mut t = WakeTimer::new().unwrap();
        t.wake_by(0, Duration::from_secs(60));
        t.fired();
        assert_eq!(t.due, None);
    }
}
