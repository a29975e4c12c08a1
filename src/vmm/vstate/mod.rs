//! KVM state as plain data: per vCPU ([`vcpu`]) and per VM ([`vm`]).

pub mod vcpu;
pub mod vm;

pub use vcpu::{VcpuState, VcpuStateError};
pub use vm::{VmState, VmStateError};
