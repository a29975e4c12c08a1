//! husk: a tiny KVM micro-VM monitor.
//!
//! The library owns everything; the `husk` binary only parses its command line. See
//! `docs/design.md` for the boot steps, the threads and the devices.
pub mod arch;
pub mod boot;
pub mod devices;
