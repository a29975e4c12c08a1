//! The i8042 keyboard controller with an AT keyboard behind it: enough for Linux's
//! `i8042` and `atkbd` drivers to bind, so that the guest's reboot through the reset
//! pulse (`reboot=k`) ends the VM and the API's `SendCtrlAltDel` reaches the guest as
//! the three keys. The state machine (`state`) is plain data, saved in snapshots; the
//! bus device (`device`) adds the keyboard interrupt (IRQ 1) and the reset.

mod device;
pub mod state;

pub use device::{OnReset, I8042};
pub use state::{I8042State, KeysError};
