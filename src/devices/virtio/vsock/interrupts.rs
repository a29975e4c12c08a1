//! When the vsock device interrupts its driver: at once for the RX and event queues,
//! a little later for TX completions.
//!
//! A used TX buffer only lets the driver free it (Linux's `virtio_transport_tx_work`);
//! nothing in the guest waits for it unless its TX ring is full. A used RX buffer is
//! data or a control packet a guest process waits for. So a wake-up of the device
//! that used only TX buffers does not interrupt: it arms a one-shot timer of
//! [`TX_DELAY`], and the TX completions ride on the next RX interrupt if one comes
//! first (a request/response exchange: the guest's reply is consumed, the host's next
//! request follows), else the timer raises them. Half a TX ring of completions owed
//! interrupts at once, so a guest that sends many small packets never waits for the
//! timer with a full ring. Each interrupt costs the guest an
//! injection, an entry into its handler and an EOI (the InterruptStatus read and
//! InterruptACK write no longer exit to the VMM); an exchange of small messages had two
//! interrupts per round trip, now one. Interrupt coalescing of this kind is what NICs do for their
//! transmit completions.

use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use vmm_sys_util::timerfd::TimerFd;

/// Longest a TX completion waits for an RX interrupt to ride on: long enough for a
/// host peer to answer a message on a loaded (or emulated) host; nothing in the guest
/// waits for it (a TX ring half full of completions interrupts at once).
pub const TX_DELAY: Duration = Duration::from_millis(5);

/// Interrupts the device owes its driver.
#[derive(Debug)]
pub struct Coalescer {
    timer: TimerFd,
    /// The timer is set and its expiry not read yet.
    armed: bool,
    /// Used RX or event buffers the driver asked to hear about.
    now: bool,
    /// Used TX buffers the driver asked to hear about.
    tx: bool,
    /// TX buffers used since the last interrupt.
    tx_used: usize,
}

impl Coalescer {
    /// Nothing owed, the timer unset.
    pub fn new() -> Result<Self, vmm_sys_util::errno::Error> {
        Ok(Self {
            timer: TimerFd::new()?,
            armed: false,
            now: false,
            tx: false,
            tx_used: 0,
        })
    }

    /// A pass used `used` buffers, the driver asked to hear about it: TX ones (`tx`, of
    /// a ring of `ring_size`) or others.
    pub fn owe(&mut self, tx: bool, used: usize, ring_size: u16) {
        if !tx {
            self.now = true;
            return;
        }
        self.tx = true;
        self.tx_used = self.tx_used.saturating_add(used);
        if self.tx_used.saturating_mul(2) >= usize::from(ring_size) {
            self.now = true;
        }
    }

    /// End of a wake-up: whether to interrupt now (RX or event buffers were used; TX
    /// completions owed go with it, and the timer is stopped). Owing only TX
    /// completions sets the timer, unless it is set already.
    pub fn flush(&mut self) -> bool {
        if std::mem::take(&mut self.now) {
            self.tx = false;
            self.tx_used = 0;
            self.disarm();
            return true;
        }
        if self.tx && !self.armed {
            match self.timer.reset(TX_DELAY, None) {
                Ok(()) => self.armed = true,
                // Without a timer, interrupt at once, as for RX.
                Err(e) => {
                    log::debug!("vsock: interrupt timer: {e}");
                    self.tx = false;
                    self.tx_used = 0;
                    return true;
                }
            }
        }
        false
    }

    /// The timer expired (its fd is readable): whether to interrupt for TX completions.
    pub fn on_timer(&mut self) -> bool {
        // Readable per epoll and not reset since (only `flush` and `clear` reset it,
        // at the end of a wake-up or between them), so this read does not block.
        let _ = self.timer.wait();
        self.armed = false;
        self.tx_used = 0;
        std::mem::take(&mut self.tx)
    }

    /// Whether anything is owed, forgetting it (a snapshot's hold interrupts now).
    pub fn take(&mut self) -> bool {
        let owed = std::mem::take(&mut self.now) | std::mem::take(&mut self.tx);
        self.tx_used = 0;
        self.disarm();
        owed
    }

    /// Owe nothing (device reset).
    pub fn clear(&mut self) {
        self.take();
    }

    fn disarm(&mut self) {
        if std::mem::take(&mut self.armed) {
            if let Err(e) = self.timer.clear() {
                log::debug!("vsock: interrupt timer: {e}");
            }
        }
    }
}

impl AsRawFd for Coalescer {
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rx_interrupts_at_once_and_takes_tx_completions_along() {
        let mut c = Coalescer::new().unwrap();
        c.owe(true, 1, 256);
        let first = c.flush();
        c.owe(false, 1, 256);
        assert_eq!(
            (first, c.flush(), c.armed, c.tx),
            (false, true, false, false)
        );
    }

    #[test]
    fn tx_completions_alone_wait_for_the_timer() {
        let mut c = Coalescer::new().unwrap();
        c.owe(true, 1, 256);
        let early = c.flush();
        assert_eq!((early, c.on_timer(), c.flush()), (false, true, false));
    }

    #[test]
    fn a_timer_after_an_rx_interrupt_owes_nothing() {
        let mut c = Coalescer::new().unwrap();
        c.owe(true, 1, 256);
        c.flush();
        c.owe(false, 1, 256);
        c.flush();
        assert!(!c.take());
    }

    #[test]
    fn half_a_tx_ring_of_completions_interrupts_at_once() {
        let mut c = Coalescer::new().unwrap();
        c.owe(true, 100, 256);
        let below = c.flush();
        c.owe(true, 28, 256);
        assert_eq!((below, c.flush(), c.armed), (false, true, false));
    }

    #[test]
    fn nothing_used_interrupts_never() {
        let mut c = Coalescer::new().unwrap();
        assert_eq!((c.flush(), c.take(), c.armed), (false, false, false));
    }
}
