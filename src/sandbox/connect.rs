//! Reaching a sandbox's agent: connecting while the guest boots (or wakes from a
//! template), and watching the VM so that its end ends every wait on the agent.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use husk_protocol::host_handshake;

use super::vmm_process::VmmProcess;
use super::{demux, vsock, SandboxError, CLEAN_END_GRACE, CONNECT_INTERVAL, HANDSHAKE_MIN};
use crate::api::server::ExitReport;
use crate::vmm::exit::VmExit;

/// Why an ended VM's agent connection is gone, for every wait that ends with it.
pub(super) fn end_reason(report: &ExitReport) -> String {
    match (&report.end, &report.error) {
        (_, Some(e)) => format!("the guest failed: {e}"),
        (Some(VmExit::Stopped), None) => "the sandbox's VM was stopped".to_string(),
        (Some(end), None) => format!("the guest ended ({end:?}) while the sandbox ran"),
        (None, None) => "the sandbox's VM ended".to_string(),
    }
}

/// End the agent connection when the VM ends, however it ends. A guest that dies on its
/// own (a triple fault, a panic) leaves the host's end of the vsock stream open, since
/// the device outlives its vCPUs until the sandbox is stopped; without this, every
/// process wait and request would hang on it. The thread ends with the VM, which always
/// ends: stop and drop end it.
pub(super) fn watch_vm(
    vm: Arc<VmmProcess>,
    demux: &Arc<demux::Demux>,
    conn: &Arc<UnixStream>,
) -> std::io::Result<()> {
    let (demux, conn) = (demux.clone(), conn.clone());
    std::thread::Builder::new()
        .name("husk-vm-watch".into())
        .spawn(move || {
            let report = vm.wait(None).unwrap_or_default();
            demux.end_because(end_reason(&report));
            if matches!(report.end, Some(VmExit::Reset | VmExit::PowerOff)) {
                // Frames a guest sent just before it ended by itself may still be on
                // their way through the device.
                std::thread::sleep(CLEAN_END_GRACE);
            }
            drop(conn.shutdown(std::net::Shutdown::Both));
        })
        .map(drop)
}

/// Retry the agent's port until it answers, the guest ends, or `timeout` passes. The
/// connection comes back with a read timeout still set.
pub(super) fn connect_agent(
    vm: &VmmProcess,
    uds: &std::path::Path,
    timeout: Duration,
) -> Result<UnixStream, SandboxError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    let down = |reason: String| SandboxError::AgentDown {
        reason,
        console: vm.failure_output(),
    };
    loop {
        if let Some(report) = vm.exit_report() {
            return Err(down(format!(
                "the guest ended before its agent answered ({})",
                end_reason(&report)
            )));
        }
        let attempt = vsock::connect_once(uds, husk_protocol::AGENT_VSOCK_PORT);
        log::debug!(
            "agent connect: {}",
            attempt
                .as_ref()
                .map_or_else(|e| e.to_string(), |_| "OK".into())
        );
        match attempt {
            Ok(mut conn) => {
                // A guest that accepted but never greets must not hang the host.
                let left = timeout.saturating_sub(start.elapsed()).max(HANDSHAKE_MIN);
                let io = |e| SandboxError::Protocol(husk_protocol::ProtocolError::Io(e));
                conn.set_read_timeout(Some(left)).map_err(io)?;
                if let Err(e) = host_handshake(&mut conn) {
                    return Err(down(format!("the agent's handshake failed: {e}")));
                }
                return Ok(conn);
            }
            Err(e) if start.elapsed() >= timeout => {
                return Err(down(format!(
                    "no answer on vsock port 1024 within {timeout:?} ({e})"
                )))
            }
            Err(_) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(CONNECT_INTERVAL);
            }
        }
    }
}

/// A short id, unique enough for one host: process id and clock.
pub(super) fn new_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{:x}{:05x}", std::process::id(), nanos & 0xfffff)
}

/// `$XDG_RUNTIME_DIR`, else the system temp folder.
pub(super) fn runtime_root() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}
