//! A minimal i8042 keyboard controller: enough for the guest to reset the machine.
//!
//! Linux with `reboot=k` polls the status port until the input buffer is empty and then
//! writes the pulse-reset command (0xfe) to port 0x64. Nothing else is emulated; there is
//! no keyboard, so the data port reads 0.

use crate::devices::bus::BusDevice;

/// The command that pulses the CPU reset line.
const CMD_RESET_CPU: u8 = 0xfe;
/// Offset of the command/status port (0x64) from the data port (0x60).
const COMMAND_OFFSET: u64 = 4;

/// The i8042, mapped at port 0x60 with length 5. `on_reset` runs when the guest resets.
pub struct I8042 {
    on_reset: Box<dyn FnMut() + Send>,
}

impl I8042 {
    /// A controller that calls `on_reset` on each reset request.
    pub fn new(on_reset: Box<dyn FnMut() + Send>) -> Self {
        Self { on_reset }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty, no errors.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            (self.on_reset)();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn counting() -> (I8042, Arc<AtomicUsize>) {
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let dev = I8042::new(Box::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
        }));
        (dev, count)
    }

    #[test]
    fn reset_command_on_port_0x64_requests_reset() {
        let (mut dev, count) = counting();
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn reset_value_on_data_port_is_ignored() {
        let (mut dev, count) = counting();
        dev.write(0, &[CMD_RESET_CPU]);
        dev.write(COMMAND_OFFSET, &[0xd1]);
        assert_eq!(count.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn status_port_reads_idle() {
        let (mut dev, _) = counting();
        let mut data = [0xffu8; 1];
        dev.read(COMMAND_OFFSET, &mut data);
        assert_eq!(data[0], 0);
    }
}
