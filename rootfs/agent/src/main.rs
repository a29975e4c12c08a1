//! The husk-agent binary: guest setup when PID 1, then the request loop on vsock port
//! 1024 until the host asks for Shutdown, then a guest reset.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use husk_agent::agent::{Agent, Runtime};
use husk_agent::outbox::Outbox;
use husk_agent::transport::VsockListener;
use husk_agent::{cgroup, console, init, reaper, server};
use husk_protocol::AGENT_VSOCK_PORT;

fn main() {
    let started = init::since_boot();
    std::panic::set_hook(Box::new(|info| console::fatal(&format!("panic: {info}"))));
    if std::process::id() == 1 {
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
    console::log("shutdown: killing containers");
    agent.kill_all();
    for _ in 0..100 {
        if agent.container_count() == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    console::reboot();
}
