//! The i8042 on husk's port bus: the state machine of [`super::state`], the keyboard's
//! interrupt line (an irqfd on IRQ 1) and what a reset request does.

use vmm_sys_util::eventfd::EventFd;

use super::state::{Effects, I8042State, KeysError};
use crate::devices::bus::BusDevice;

/// What runs when the guest pulses the reset line.
pub type OnReset = Box<dyn FnMut() + Send>;

/// The i8042 and its keyboard, mapped at port 0x60 with length 5.
pub struct I8042 {
    state: I8042State,
    /// Raises IRQ 1 (an irqfd, so any thread may raise it).
    interrupt: EventFd,
    on_reset: OnReset,
}

impl I8042 {
    /// A controller as at power-on; `interrupt` raises IRQ 1, `on_reset` runs on each
    /// reset request.
    pub fn new(interrupt: EventFd, on_reset: OnReset) -> Self {
        Self::from_state(I8042State::default(), interrupt, on_reset)
    }

    /// A controller in a saved state (see [`I8042State::is_valid`]; the caller checks).
    pub fn from_state(state: I8042State, interrupt: EventFd, on_reset: OnReset) -> Self {
        Self {
            state,
            interrupt,
            on_reset,
        }
    }

    /// Its state, to save.
    pub fn state(&self) -> I8042State {
        self.state.clone()
    }

    /// Queue Ctrl+Alt+Del (pressed, released) for the guest and raise its interrupt.
    pub fn send_ctrl_alt_del(&mut self) -> Result<(), KeysError> {
        let effects = self.state.queue_ctrl_alt_del()?;
        self.apply(effects);
        Ok(())
    }

    fn apply(&mut self, effects: Effects) {
        if effects.interrupt {
            // An eventfd write fails only when its counter would overflow, and then
            // an interrupt is already pending.
            if let Err(e) = self.interrupt.write(1) {
                log::debug!("i8042: raising IRQ 1: {e}");
            }
        }
        if effects.reset {
            (self.on_reset)();
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let (value, effects) = self.state.read(offset);
        data.fill(value);
        self.apply(effects);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&value) = data.first() {
            let effects = self.state.write(offset, value);
            self.apply(effects);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::{COMMAND_OFFSET, DATA_OFFSET};
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn counting() -> (I8042, Arc<AtomicUsize>) {
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let dev = I8042::new(
            irq,
            Box::new(move || {
                c.fetch_add(1, Ordering::SeqCst);
            }),
        );
        (dev, count)
    }

    #[test]
    fn reset_command_on_port_0x64_requests_reset() {
        let (mut dev, count) = counting();
        dev.write(COMMAND_OFFSET, &[0xfe]);
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn reset_value_on_data_port_is_ignored() {
        let (mut dev, count) = counting();
        dev.write(DATA_OFFSET, &[0xfe]);
        dev.write(u64::MAX, &[0xfe]);
        assert_eq!(count.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn status_port_reads_idle_at_power_on() {
        let (mut dev, _) = counting();
        let mut data = [0xffu8; 1];
        dev.read(COMMAND_OFFSET, &mut data);
        assert_eq!(data[0] & 0x03, 0);
    }

    #[test]
    fn ctrl_alt_del_signals_the_irqfd() {
        let (mut dev, _) = counting();
        dev.write(COMMAND_OFFSET, &[0x60]);
        dev.write(DATA_OFFSET, &[0x65]);
        dev.send_ctrl_alt_del().expect("queued");
        assert_eq!(dev.interrupt.read().expect("raised"), 1);
    }
}
