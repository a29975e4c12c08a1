//! Emulated devices, the bus they sit on, and the virtio devices' rate limiters.
pub mod bus;
pub mod i8042;
pub mod rate_limiter;
pub mod serial;
pub mod virtio;
