//! husk: a tiny KVM micro-VM monitor.
//!
//! The library owns everything; the `husk` binary only parses its command line. See
//! `docs/design.md` for the boot steps, the threads and the devices.
pub mod api;
pub mod arch;
pub mod boot;
pub mod config;
pub mod detached;
pub mod devices;
pub mod digest;
pub mod image;
pub mod jail;
pub mod kernel;
pub mod kvm;
pub mod memory;
pub mod metrics;
pub mod profile;
pub mod sandbox;
pub mod snapshot;
pub mod vmm;

#[cfg(test)]
pub(crate) mod test_log;

pub use sandbox::{
    ExitStatus, Process, RunSpec, Sandbox, SandboxBuilder, SandboxConfig, SandboxError,
    SandboxImage, Stdio,
};

/// An error and its chain of causes on one line (causes already in the text are skipped).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !line.contains(&text) {
            line = format!("{line}: {text}");
        }
        source = s.source();
    }
    line
}
