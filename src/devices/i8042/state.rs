//! The i8042 controller and the AT keyboard behind it as plain data: what the guest's
//! port reads and writes do to it, free of fds and KVM, so it is saved in a snapshot as
//! it is and tested on its own. Every byte the guest writes is hostile input: any
//! sequence of writes leaves the state valid and the output buffer bounded.
//!
//! What it emulates is what Linux's `i8042` and `atkbd` drivers use: the controller
//! commands for its configuration byte, self-tests and the reset pulse; the keyboard
//! commands a driver sends while probing (reset, identify, LEDs, scan code set,
//! typematic rate, enable/disable), each answered with the keyboard's ACK; and key
//! bytes the host queues ([`I8042State::queue_ctrl_alt_del`]). There is no auxiliary
//! (mouse) port: its loopback and interface tests fail at once, so a driver probing for
//! one gives up without waiting for a timeout.

use serde::{Deserialize, Serialize};

/// Bytes the output buffer holds at most (controller replies and keyboard bytes); what
/// would go beyond is dropped, as a real keyboard drops what overflows its buffer.
pub const OUTPUT_CAPACITY: usize = 16;

/// Offset of the data port (0x60) from the device's base.
pub const DATA_OFFSET: u64 = 0;
/// Offset of the status/command port (0x64) from the device's base.
pub const COMMAND_OFFSET: u64 = 4;

// Status register bits.
const STR_OBF: u8 = 0x01;
const STR_SYS: u8 = 0x04;
const STR_CMD: u8 = 0x08;
/// Set when the keyboard is not inhibited by a key lock.
const STR_UNLOCKED: u8 = 0x10;

// Controller configuration byte (CTR) bits.
const CTR_KBD_INT: u8 = 0x01;
const CTR_SYS: u8 = 0x04;
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;
const CTR_XLATE: u8 = 0x40;
/// At power-on: POST passed, translation on, both ports' interrupts off, no AUX port.
const CTR_POWER_ON: u8 = CTR_SYS | CTR_AUX_DISABLED | CTR_XLATE;
/// The output port at power-on: the reset line (bit 0) and A20 (bit 1) high.
const OUTP_POWER_ON: u8 = 0x03;

// Controller commands (written to port 0x64).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KBD: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_READ_INPUT: u8 = 0xc0;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_WRITE_KBD_OUT: u8 = 0xd2;
const CMD_WRITE_AUX_OUT: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
/// 0xf0-0xff pulse output lines low for a moment; a clear bit 0 pulses the reset line.
const CMD_PULSE_FIRST: u8 = 0xf0;

// Controller replies.
const SELF_TEST_PASSED: u8 = 0x55;
const INTERFACE_OK: u8 = 0x00;
/// The AUX interface test's "data line stuck low": there is no AUX port.
const AUX_ABSENT: u8 = 0x02;

// Keyboard commands (written to port 0x60) and its replies.
const KBD_SET_LEDS: u8 = 0xed;
const KBD_ECHO: u8 = 0xee;
const KBD_SCANCODE_SET: u8 = 0xf0;
const KBD_IDENTIFY: u8 = 0xf2;
const KBD_TYPEMATIC: u8 = 0xf3;
const KBD_ENABLE: u8 = 0xf4;
const KBD_DISABLE: u8 = 0xf5;
const KBD_RESET: u8 = 0xff;
const KBD_ACK: u8 = 0xfa;
const KBD_RESEND: u8 = 0xfe;
const KBD_SELF_TEST_PASSED: u8 = 0xaa;
/// An MF2 keyboard's identity.
const KBD_ID: [u8; 2] = [0xab, 0x83];

/// Ctrl, Alt and Delete pressed, then released: scan code set 2 as the keyboard sends
/// it, and as set 1 after the controller's translation (CTR bit 6).
const CTRL_ALT_DEL_SET2: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];
const CTRL_ALT_DEL_SET1: [u8; 8] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];

/// What a guest access asks of the device's owner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use]
pub struct Effects {
    /// Raise the keyboard interrupt (IRQ 1): a keyboard byte waits to be read.
    pub interrupt: bool,
    /// The guest pulsed the CPU reset line.
    pub reset: bool,
}

/// Why keys could not be queued for the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    /// No driver enabled the keyboard and its interrupt.
    #[error(
        "the guest has not enabled its keyboard (no i8042/atkbd driver: CONFIG_SERIO_I8042, \
         CONFIG_KEYBOARD_ATKBD)"
    )]
    KeyboardOff,
    /// The guest has not read the bytes already queued.
    #[error("the i8042's output buffer is full: the guest is not reading its keyboard")]
    Full,
}

/// The controller and its keyboard; plain data, saved in a snapshot as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    /// The controller configuration byte (commands 0x20/0x60).
    pub ctr: u8,
    /// The output port (commands 0xd0/0xd1).
    pub outp: u8,
    /// A controller command waiting for its parameter on the data port.
    pub pending_command: Option<u8>,
    /// A keyboard command waiting for its parameter on the data port.
    pub pending_keyboard: Option<u8>,
    /// The last write went to the command port (status bit 3).
    pub last_was_command: bool,
    /// The keyboard scans and sends key bytes (keyboard commands 0xf4/0xf5).
    pub scanning: bool,
    /// Bytes waiting for the guest, oldest first; at most [`OUTPUT_CAPACITY`].
    pub output: Vec<u8>,
}

impl Default for I8042State {
    fn default() -> Self {
        Self {
            ctr: CTR_POWER_ON,
            outp: OUTP_POWER_ON,
            pending_command: None,
            pending_keyboard: None,
            last_was_command: false,
            scanning: true,
            output: Vec::new(),
        }
    }
}

impl I8042State {
    /// Whether a saved state is one this device can be in (a snapshot file is input too).
    pub fn is_valid(&self) -> bool {
        self.output.len() <= OUTPUT_CAPACITY
    }

    /// The status register (port 0x64).
    pub fn status(&self) -> u8 {
        let mut status = STR_UNLOCKED;
        if !self.output.is_empty() {
            status |= STR_OBF;
        }
        if self.ctr & CTR_SYS != 0 {
            status |= STR_SYS;
        }
        if self.last_was_command {
            status |= STR_CMD;
        }
        status
    }

    /// A guest read of `offset` (0: data, 4: status; anything else reads as absent).
    pub fn read(&mut self, offset: u64) -> (u8, Effects) {
        match offset {
            DATA_OFFSET => {
                let value = if self.output.is_empty() {
                    0
                } else {
                    self.output.remove(0)
                };
                // The next byte, if any, is announced like the first was.
                let interrupt = !self.output.is_empty() && self.keyboard_interrupts();
                (
                    value,
                    Effects {
                        interrupt,
                        reset: false,
                    },
                )
            }
            COMMAND_OFFSET => (self.status(), Effects::default()),
            _ => (0xff, Effects::default()),
        }
    }

    /// A guest write of `value` at `offset` (0: data, 4: command; anything else is
    /// dropped).
    pub fn write(&mut self, offset: u64, value: u8) -> Effects {
        match offset {
            DATA_OFFSET => {
                self.last_was_command = false;
                match self.pending_command.take() {
                    Some(command) => self.command_parameter(command, value),
                    None => self.keyboard_write(value),
                }
            }
            COMMAND_OFFSET => {
                self.last_was_command = true;
                self.command(value)
            }
            _ => Effects::default(),
        }
    }

    /// Queue Ctrl+Alt+Del pressed and released, in the scan code set the guest reads,
    /// and ask for the keyboard interrupt.
    pub fn queue_ctrl_alt_del(&mut self) -> Result<Effects, KeysError> {
        if !self.keyboard_interrupts() || !self.scanning {
            return Err(KeysError::KeyboardOff);
        }
        let keys: &[u8] = if self.ctr & CTR_XLATE != 0 {
            &CTRL_ALT_DEL_SET1
        } else {
            &CTRL_ALT_DEL_SET2
        };
        if self.output.len() + keys.len() > OUTPUT_CAPACITY {
            return Err(KeysError::Full);
        }
        self.output.extend_from_slice(keys);
        Ok(Effects {
            interrupt: true,
            reset: false,
        })
    }

    /// The keyboard port is enabled and raises its interrupt.
    fn keyboard_interrupts(&self) -> bool {
        self.ctr & CTR_KBD_INT != 0 && self.ctr & CTR_KBD_DISABLED == 0
    }

    fn command(&mut self, command: u8) -> Effects {
        // A new command abandons a parameter not given.
        self.pending_command = None;
        match command {
            CMD_READ_CTR => self.reply(self.ctr),
            CMD_WRITE_CTR | CMD_WRITE_OUTP | CMD_WRITE_KBD_OUT | CMD_WRITE_AUX_OUT
            | CMD_WRITE_AUX => self.pending_command = Some(command),
            CMD_DISABLE_AUX => self.ctr |= CTR_AUX_DISABLED,
            CMD_ENABLE_AUX => self.ctr &= !CTR_AUX_DISABLED,
            CMD_TEST_AUX => self.reply(AUX_ABSENT),
            CMD_SELF_TEST => self.reply(SELF_TEST_PASSED),
            CMD_TEST_KBD => self.reply(INTERFACE_OK),
            CMD_DISABLE_KBD => self.ctr |= CTR_KBD_DISABLED,
            CMD_ENABLE_KBD => self.ctr &= !CTR_KBD_DISABLED,
            CMD_READ_INPUT => self.reply(0),
            CMD_READ_OUTP => self.reply(self.outp),
            CMD_PULSE_FIRST..=u8::MAX if command & 1 == 0 => {
                return Effects {
                    interrupt: false,
                    reset: true,
                }
            }
            _ => {}
        }
        Effects::default()
    }

    fn command_parameter(&mut self, command: u8, value: u8) -> Effects {
        match command {
            CMD_WRITE_CTR => self.ctr = value,
            CMD_WRITE_OUTP => self.outp = value,
            // As if the keyboard had sent it.
            CMD_WRITE_KBD_OUT => return self.keyboard_reply(&[value]),
            // As if the AUX device had sent it; there is none, so it arrives without the
            // AUX bit and a driver's loopback test fails at once.
            CMD_WRITE_AUX_OUT => self.reply(value),
            // CMD_WRITE_AUX: to a device that is not there.
            _ => {}
        }
        Effects::default()
    }

    fn keyboard_write(&mut self, value: u8) -> Effects {
        if let Some(command) = self.pending_keyboard.take() {
            return match command {
                KBD_SCANCODE_SET if value == 0 => self.keyboard_reply(&[KBD_ACK, 2]),
                _ => self.keyboard_reply(&[KBD_ACK]),
            };
        }
        match value {
            KBD_SET_LEDS | KBD_SCANCODE_SET | KBD_TYPEMATIC => {
                self.pending_keyboard = Some(value);
                self.keyboard_reply(&[KBD_ACK])
            }
            KBD_ECHO => self.keyboard_reply(&[KBD_ECHO]),
            KBD_IDENTIFY => self.keyboard_reply(&[KBD_ACK, KBD_ID[0], KBD_ID[1]]),
            KBD_ENABLE => {
                self.scanning = true;
                self.keyboard_reply(&[KBD_ACK])
            }
            KBD_DISABLE => {
                self.scanning = false;
                self.keyboard_reply(&[KBD_ACK])
            }
            KBD_RESET => {
                self.scanning = true;
                self.output.clear();
                self.keyboard_reply(&[KBD_ACK, KBD_SELF_TEST_PASSED])
            }
            // Defaults, the set-all/set-key modes: acknowledged, nothing to change.
            0xf6..=0xfd => self.keyboard_reply(&[KBD_ACK]),
            _ => self.keyboard_reply(&[KBD_RESEND]),
        }
    }

    /// A controller command's answer: read by polling, no interrupt.
    fn reply(&mut self, value: u8) {
        self.push(&[value]);
    }

    /// Bytes from the keyboard: they raise its interrupt when it is on.
    fn keyboard_reply(&mut self, bytes: &[u8]) -> Effects {
        self.push(bytes);
        Effects {
            interrupt: self.keyboard_interrupts(),
            reset: false,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let room = OUTPUT_CAPACITY.saturating_sub(self.output.len());
        self.output.extend(bytes.iter().take(room));
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
