//! The i8042 keyboard controller: vm-superio's [`I8042Device`], which emulates the CPU
//! reset command and nothing else, on husk's port bus.
//!
//! Linux with `reboot=k` polls the status port until the input buffer is empty and then
//! writes the pulse-reset command (0xfe) to port 0x64. There is no keyboard behind it:
//! the data and status ports read 0 (see `docs/design.md` on `SendCtrlAltDel`).

use std::sync::Mutex;

use vm_superio::{I8042Device, Trigger};

use crate::devices::bus::BusDevice;

/// What runs when the guest asks for a reset.
struct OnReset(Mutex<Box<dyn FnMut() + Send>>);

impl Trigger for OnReset {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        let mut on_reset = self.0.lock().unwrap_or_else(|e| e.into_inner());
        on_reset();
        Ok(())
    }
}

/// The i8042, mapped at port 0x60 with length 5. `on_reset` runs when the guest resets.
pub struct I8042 {
    device: I8042Device<OnReset>,
}

impl I8042 {
    /// A controller that calls `on_reset` on each reset request.
    pub fn new(on_reset: Box<dyn FnMut() + Send>) -> Self {
        Self {
            device: I8042Device::new(OnReset(Mutex::new(on_reset))),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = u8::try_from(offset).map_or(0, |offset| self.device.read(offset));
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) {
            // The trigger cannot fail (Infallible).
            let Ok(()) = self.device.write(offset, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Offset of the command/status port (0x64) from the data port (0x60).
    const COMMAND_OFFSET: u64 = 4;
    /// The command that pulses the CPU reset line.
    const CMD_RESET_CPU: u8 = 0xfe;

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
        dev.write(u64::MAX, &[CMD_RESET_CPU]);
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
