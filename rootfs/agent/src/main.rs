//! The husk-agent binary: guest setup when PID 1, then the request loop on vsock port
//! 1024 until the host asks for Shutdown (or, as PID 1, Ctrl+Alt+Del is pressed), then
//! a guest reset.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use husk_agent::agent::{Agent, Runtime};
use husk_agent::outbox::Outbox;
use husk_agent::shutdown::{self, Timeouts};
use husk_agent::transport::VsockListener;
use husk_agent::{cad, cgroup, console, init, reaper, server};
use husk_protocol::AGENT_VSOCK_PORT;

fn main() {
    let started = init::since_boot();
    std::panic::set_hook(Box::new(|info| console::fatal(&format!("panic: {info}"))));
    let pid1 = std::process::id() == 1;
    if pid1 {
        // Before any thread exists, so that every thread inherits the blocked SIGINT.
        if let Err(e) = cad::take_over() {
            console::log(&format!("Ctrl+Alt+Del stays an immediate restart: {e}"));
        }
        if let Err(e) = init::setup_guest() {
            console::fatal(&format!("guest setup: {}", server::error_chain(&e)));
        }
    }
    // Reap orphans from the start (PID 1's duty).
    reaper::reaper();
    let cgroups = Path::new("/sys/fs/cgroup");
    let runtime = Runtime {
        state_dir: PathBuf::from("/run/husk"),
        cgroup_root: cgroups
            .join("cgroup.controllers")
            .exists()
            .then(|| cgroups.to_path_buf()),
    };
    if let Some(root) = &runtime.cgroup_root {
        // A container's start tries again (and fails with the cause) if this fails.
        if let Err(e) = cgroup::prepare(root) {
            console::log(&format!("container cgroups: {}", server::error_chain(&e)));
        }
    }
    let outbox = Arc::new(Outbox::default());
    let agent = Agent::new(runtime, outbox.clone());
    if pid1 {
        let agent = agent.clone();
        let cad = move || shutdown::power_off(&*agent, "Ctrl+Alt+Del", Timeouts::CTRL_ALT_DEL);
        if let Err(e) = cad::on_ctrl_alt_del(cad) {
            console::log(&format!(
                "Ctrl+Alt+Del is ignored: cannot start its thread: {e}"
            ));
        }
    }
    let mut listener = match VsockListener::bind(AGENT_VSOCK_PORT) {
        Ok(listener) => listener,
        Err(e) => console::fatal(&format!("listen on vsock port {AGENT_VSOCK_PORT}: {e}")),
    };
    console::log(&format!(
        "listening on vsock port {AGENT_VSOCK_PORT}{}",
        init::boot_times(started, init::since_boot())
    ));
    if let Err(e) = server::serve(&mut listener, &agent, &outbox) {
        console::fatal(&format!("accept on vsock port {AGENT_VSOCK_PORT}: {e}"));
    }
    shutdown::power_off(&*agent, "shutdown", Timeouts::SHUTDOWN);
}
