//! Emulated devices and the bus they sit on.
pub mod bus;
pub mod i8042;
pub mod serial;
pub mod virtio;
