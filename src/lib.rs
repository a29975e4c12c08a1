//! husk: a tiny KVM micro-VM monitor.
//!
//! The library owns everything; the `husk` binary only parses its command line. See
//! `docs/design.md` for the boot steps, the threads and the devices.
pub mod arch;
pub mod boot;
pub mod config;
pub mod devices;
pub mod image;
pub mod kernel;
pub mod kvm;
pub mod memory;
pub mod metrics;
pub mod profile;
pub mod sandbox;
pub mod vmm;
