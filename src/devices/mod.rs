//! Emulated devices and the bus they sit on.
pub mod bus;
pub mod virtio;
