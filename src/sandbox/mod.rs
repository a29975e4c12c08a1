//! Sandboxes: a micro-VM booted with the husk agent as PID 1, reached over vsock, running
//! a container from a read-only image disk. This is what `husk run` and embedders use.
//!
//! ```text
//! Sandbox::start(config)   boot the VM (agent initramfs, image as vda, vsock), connect,
//!                          handshake
//! sandbox.run(spec, stdio) start a container, stream its stdio, return its exit status
//! sandbox.spawn(spec, stdio) start a container and return its first Process at once
//! sandbox.exec(container, spec, stdio) start another Process in a running container
//! process.wait()           the process's exit status (process.signal/resize meanwhile)
//! sandbox.stop()           ask the agent to shut down, wait for the VM, clean up
//! sandbox.stopper()        a handle that ends the sandbox from another thread (a
//!                          timeout): every run, wait and request then returns
//! ```
//! A sandbox is `Sync`: several threads may spawn, exec and wait at once; one reader
//! thread per sandbox routes the agent's frames to the processes ([`demux`]).
//! Everything a sandbox owns (VM threads, the vsock socket, its runtime folder) is
//! released when it is stopped or dropped, so many sandboxes can live in one process.

pub mod agent;
mod config;
mod connect;
mod copy;
mod demux;
mod dns;
mod error;
mod image_template;
pub mod initramfs;
pub mod jailing;
pub mod launch;
pub mod nat;
pub mod net;
mod persist;
mod pool;
pub mod ports;
mod process;
pub mod rates;
pub mod scratch;
pub mod signals;
mod start;
pub(crate) mod stdio;
mod stock;
pub mod template;
pub mod terminal;
#[cfg(test)]
mod tests;
mod timings;
pub mod virtiofsd;
pub mod vmm_process;
pub mod volumes;
pub mod vsock;

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk_protocol::{write_message, ImageSpec, Message, WritableLayer};

pub use husk_protocol::Limits as ContainerLimits;

/// The guest's block device of the sandbox's image (the templates' first disk slot).
const IMAGE_DEVICE: &str = "/dev/vda";

pub use config::{RunSpec, SandboxBuilder, SandboxConfig, SandboxImage};
pub(crate) use copy::message as copy_message;
pub use copy::CopyRequest;
pub use demux::Sink;
pub use error::SandboxError;
pub use husk_protocol::{ExitStatus, TtySize};
pub use net::{Ipv4Net, Nat};
pub use persist::{RestoreSandbox, SandboxSnapshot, SnapshotReport};
pub use pool::{Refill, SandboxPool, VmmPool};
pub use ports::Publish;
pub use process::Process;
pub use rates::ByteRate;
pub use stdio::{Buffer, Stdio};
pub use template::Template;
pub use timings::SandboxTimings;
pub use volumes::Volume;

use connect::new_id;
pub(crate) use start::agent_initrd;
use start::{runtime_dir, Assembly, NetRequest};
use timings::Marks;

use crate::api::server::ExitReport;
use vmm_process::{VmmProcess, VmmStopper};

/// The guest CID of every sandbox (each VM has its own vsock device and host socket).
const GUEST_CID: u64 = 3;
/// How long a guest may take to reset after Shutdown before the host stops it.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// The least time a guest that accepted the agent connection gets to send its Hello.
const HANDSHAKE_MIN: Duration = Duration::from_secs(30);
/// The longest pause between two tries of the agent's port while the guest boots or
/// resumes; the first pauses are shorter (1, 2, 4, 8 ms): a restored guest refuses the
/// first try, made before it has handled the vsock transport reset, and answers a few
/// milliseconds later.
const CONNECT_INTERVAL: Duration = Duration::from_millis(10);
/// How long the agent connection stays open after the guest reset or powered off by
/// itself, for frames still passing through the vsock device.
const CLEAN_END_GRACE: Duration = Duration::from_millis(200);

/// The agent connection's write half, shared by every thread that sends.
pub(crate) type Writer = Arc<Mutex<UnixStream>>;

/// Send one message under the writer lock.
pub(crate) fn send(writer: &Writer, message: &Message) -> Result<(), husk_protocol::ProtocolError> {
    let mut conn = writer.lock().unwrap_or_else(|e| e.into_inner());
    write_message(&mut *conn, message)
}

/// Forwards signals (Ctrl-C, SIGTERM) to a sandbox's running process.
#[derive(Clone)]
pub struct Signaller {
    demux: Arc<demux::Demux>,
    current: Arc<AtomicU32>,
}

impl Signaller {
    /// Send `signal` to the running process; false when none is running.
    pub fn send(&self, signal: i32) -> bool {
        let process = self.current.load(Ordering::SeqCst);
        process != 0
            && self
                .demux
                .send(&Message::Signal { process, signal })
                .is_ok()
    }

    /// Resize the running process's terminal; false when none is running.
    pub fn resize(&self, size: TtySize) -> bool {
        let process = self.current.load(Ordering::SeqCst);
        let message = Message::Resize {
            process,
            rows: size.rows,
            cols: size.cols,
        };
        process != 0 && self.demux.send(&message).is_ok()
    }
}

/// Ends a sandbox from any thread, whatever its guest is doing: the VM is stopped from the
/// host, and its end closes the agent connection (see [`watch_vm`]), so every `run`,
/// [`Process::wait`] and request in progress returns (with [`SandboxError::Lost`]). The
/// sandbox's resources are released by its `stop` or drop, as usual. Stopping twice, or
/// after the sandbox ended, does nothing.
#[derive(Clone)]
pub struct Stopper {
    vm: VmmStopper,
}

impl Stopper {
    /// End the sandbox now.
    pub fn stop(&self) {
        self.vm.stop();
    }
}

/// A running sandbox.
pub struct Sandbox {
    id: String,
    image: SandboxImage,
    vm: Mutex<Option<Arc<VmmProcess>>>,
    /// Started from a template.
    warm: bool,
    /// The agent connection, kept to shut it down once the VM is gone (or a
    /// [`Stopper`] ends the sandbox).
    conn: Arc<UnixStream>,
    demux: Arc<demux::Demux>,
    reader: Mutex<Option<JoinHandle<()>>>,
    /// The process the current `run` streams (0: none), for signal forwarding.
    current: Arc<AtomicU32>,
    marks: Mutex<Marks>,
    /// The runtime folder (removed when the sandbox stops) and its path.
    runtime: Mutex<Option<tempfile::TempDir>>,
    runtime_path: PathBuf,
    containers: AtomicU32,
    /// The environment each running container was started with, for `exec`.
    container_env: Mutex<HashMap<String, Vec<String>>>,
    /// Where containers' writable layers go (tmpfs, or the scratch disk).
    writable_layer: WritableLayer,
    /// The scratch disk's file, if any.
    scratch: Option<PathBuf>,
    /// Stop through the agent (the caller's disks must be synced).
    graceful_stop: bool,
    /// What the host set up for the network (link, nftables table, published ports),
    /// released with the sandbox.
    host_net: Mutex<Option<net::HostNet>>,
    /// The network it was asked for, for its snapshots.
    net_request: NetRequest,
    /// Its shared host folders: their daemons and the mounts of every container.
    shares: volumes::Shares,
    /// Taken from a [`SandboxPool`]: released once the sandbox is down, which lets the
    /// pool start the next.
    lease: Mutex<Option<stock::Lease>>,
}

impl Sandbox {
    /// Whether this sandbox started from a template.
    pub fn is_warm(&self) -> bool {
        self.warm
    }

    /// This sandbox's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn marks(&self) -> MutexGuard<'_, Marks> {
        self.marks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn vm(&self) -> MutexGuard<'_, Option<Arc<VmmProcess>>> {
        self.vm.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When this sandbox reached each milestone, in ms from the start of `start`.
    pub fn timings(&self) -> SandboxTimings {
        let m = *self.marks();
        let ms = |t: Option<Instant>| crate::metrics::ms_since(m.created, t);
        SandboxTimings {
            initramfs_ready_ms: ms(Some(m.initramfs_ready)),
            snapshot_loaded_ms: ms(m.snapshot_loaded),
            vm_requested_ms: ms(m.vm_requested),
            agent_answered_ms: ms(m.agent_answered),
            warm: self.warm,
            vm_running_ms: ms(Some(m.vm_running)),
            agent_ready_ms: ms(Some(m.agent_ready)),
            run_sent_ms: ms(m.run_sent),
            process_started_ms: ms(m.process_started),
            process_exited_ms: ms(m.process_exited),
            container_prepared: m.container_prepared,
        }
    }

    /// A handle that ends this sandbox from another thread (a timeout): see [`Stopper`].
    /// None once the sandbox is stopped.
    pub fn stopper(&self) -> Option<Stopper> {
        self.vm().as_ref().map(|vm| Stopper { vm: vm.stopper() })
    }

    /// Whether the VM still runs.
    pub fn is_running(&self) -> bool {
        self.vm().as_ref().is_some_and(|vm| vm.is_running())
    }

    /// A handle that forwards signals to the process the current `run` streams.
    pub fn signaller(&self) -> Signaller {
        Signaller {
            demux: self.demux.clone(),
            current: self.current.clone(),
        }
    }

    /// The end of the guest console and of the guest kernel's log (read from guest
    /// memory), for reporting a guest that stopped answering.
    pub fn failure_output(&self) -> String {
        self.vm()
            .as_ref()
            .map(|vm| vm.failure_output())
            .unwrap_or_default()
    }

    /// The end of the guest console (for error reports).
    pub fn console_tail(&self) -> String {
        self.vm()
            .as_ref()
            .map(|vm| vm.console_tail())
            .unwrap_or_default()
    }

    /// The folder holding this sandbox's sockets.
    pub fn runtime_dir(&self) -> &std::path::Path {
        &self.runtime_path
    }

    /// Run a container process to its end, streaming its stdio through `stdio`.
    pub fn run(&self, spec: &RunSpec, stdio: Stdio) -> Result<ExitStatus, SandboxError> {
        self.marks().run_sent = Some(Instant::now());
        let process = self.spawn(spec, stdio)?;
        let mut marks = self.marks();
        marks.process_started = Some(process.started);
        marks.container_prepared = Some(process.prepared);
        drop(marks);
        self.current.store(process.id, Ordering::SeqCst);
        let status = process.wait();
        self.current.store(0, Ordering::SeqCst);
        self.marks().process_exited = Some(Instant::now());
        status
    }

    /// Create a container from the image and start `spec` as its first process; the
    /// container ends when that process does.
    pub fn spawn(&self, spec: &RunSpec, stdio: Stdio) -> Result<Process, SandboxError> {
        let n = self.containers.fetch_add(1, Ordering::SeqCst) + 1;
        let container = format!("{}-{n}", self.id);
        let args = if spec.args.is_empty() {
            self.image.command.clone()
        } else {
            spec.args.clone()
        };
        let mut env = self.image.env.clone();
        env.extend(spec.env.iter().cloned());
        let run = Message::Run {
            id: container.clone(),
            image: ImageSpec {
                device: IMAGE_DEVICE.into(),
                fstype: self.image.fstype.clone(),
            },
            args,
            env: env.clone(),
            cwd: spec.cwd.clone().or_else(|| self.image.working_dir.clone()),
            user: spec.user.clone().or_else(|| self.image.user.clone()),
            tty: spec.tty,
            limits: spec.limits,
            writable_layer: self.writable_layer.clone(),
            hostname: Some(format!("husk-{}", self.id)),
            volumes: self.shares.mounts().to_vec(),
        };
        let process = self.request(&run, container.clone(), stdio)?;
        self.container_env
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(container, env);
        Ok(process)
    }

    /// Start another process in the running container `container` (see
    /// [`Process::container_id`]). It gets the container's environment plus `spec.env`;
    /// `spec.limits` does not apply (the container's cgroup does).
    pub fn exec(
        &self,
        container: &str,
        spec: &RunSpec,
        stdio: Stdio,
    ) -> Result<Process, SandboxError> {
        let mut env = self
            .container_env
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(container)
            .cloned()
            .unwrap_or_else(|| self.image.env.clone());
        env.extend(spec.env.iter().cloned());
        let exec = Message::Exec {
            container_id: container.to_string(),
            args: spec.args.clone(),
            env,
            cwd: spec.cwd.clone().or_else(|| self.image.working_dir.clone()),
            user: spec.user.clone().or_else(|| self.image.user.clone()),
            tty: spec.tty,
        };
        self.request(&exec, container.to_string(), stdio)
    }

    fn request(
        &self,
        message: &Message,
        container: String,
        stdio: Stdio,
    ) -> Result<Process, SandboxError> {
        let accepted = self.demux.request(message, stdio.stdout, stdio.stderr)?;
        let process = Process {
            id: accepted.process,
            container,
            exit: Mutex::new(accepted.exit),
            ended: std::sync::OnceLock::new(),
            demux: self.demux.clone(),
            started: Instant::now(),
            prepared: accepted.prepared,
        };
        match stdio.stdin {
            Some(input) => {
                let (demux, window) = (self.demux.clone(), accepted.stdin.clone());
                let id = process.id;
                // The user's stdin may block forever (a terminal); the thread is not joined.
                std::thread::Builder::new()
                    .name("husk-stdin".into())
                    .spawn(move || {
                        stdio::forward_stdin(input, id, &window, |m| demux.send(m).is_ok())
                    })
                    .map_err(husk_protocol::ProtocolError::Io)?;
            }
            None => self.demux.send(&Message::StdinClose {
                process: process.id,
            })?,
        }
        Ok(process)
    }

    /// End the sandbox and wait for its VM to end. Processes still waited for get
    /// their exit or a `Lost` error. A sandbox with disks of the caller's
    /// ([`SandboxConfig::disks`]) asks its agent to shut the guest down (containers
    /// killed, filesystems synced); any other is stopped from the host at once: its
    /// image is read-only and its scratch disk and memory are thrown away, so nothing
    /// in the guest is worth the round trip.
    pub fn stop(&self) -> Result<ExitReport, SandboxError> {
        let Some(vm) = self.vm().take() else {
            return Err(SandboxError::Refused(
                "the sandbox is already stopped".into(),
            ));
        };
        // A template's first sandbox that ran a container leaves the pages it touched for
        // the next ones to map ahead.
        if self.containers.load(Ordering::Relaxed) > 0 {
            vm.record_working_set();
        }
        log::debug!("stop: stopping the VM");
        let report = match self.graceful_stop && self.demux.send(&Message::Shutdown).is_ok() {
            // A guest that does not reset in time is stopped from the host.
            true => vm.wait(Some(SHUTDOWN_TIMEOUT)).unwrap_or_else(|| vm.stop()),
            false => vm.stop(),
        };
        log::debug!("stop: the VMM ended");
        self.release();
        log::debug!("stop: released");
        Ok(report)
    }

    /// The host's end of the sandbox's link, its guest's address, and its nftables
    /// table, when it has a network.
    pub fn network(&self) -> Option<(net::GuestNet, Option<String>)> {
        let host_net = self.host_net.lock().unwrap_or_else(|e| e.into_inner());
        host_net
            .as_ref()
            .map(|n| (n.link.clone(), n.table().map(str::to_string)))
    }

    /// The TAPs of the VM's network cards, in the cards' order (the sandbox network's
    /// first when it has one, then the caller's): for a card that asked for a new TAP,
    /// the name it got.
    pub fn tap_names(&self) -> Result<Vec<String>, SandboxError> {
        match self.vm().as_ref() {
            Some(vm) => vm.tap_names(),
            None => Err(SandboxError::Refused("the sandbox is stopped".into())),
        }
    }

    /// With the VM gone, end the connection and its reader thread, the volumes'
    /// daemons, remove the network's rules and ports and the runtime folder.
    fn release(&self) {
        self.shares.end();
        drop(
            self.host_net
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        drop(
            self.runtime
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        drop(self.conn.shutdown(std::net::Shutdown::Both));
        let reader = self.reader.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(reader) = reader {
            drop(reader.join());
        }
        drop(self.lease.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(vm) = self.vm().take() {
            vm.stop();
        }
        self.release();
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    //! A fake agent: a connected socket pair, the guest end driven by the test.
    use std::os::unix::net::UnixStream;
    use std::sync::{Arc, Mutex};

    pub use super::Buffer as Capture;

    pub struct FakeAgent {
        pub host: UnixStream,
        pub guest: UnixStream,
    }

    impl FakeAgent {
        pub fn new() -> Self {
            let (host, guest) = UnixStream::pair().unwrap();
            Self { host, guest }
        }

        pub fn writer(&self) -> super::Writer {
            Arc::new(Mutex::new(self.host.try_clone().unwrap()))
        }
    }
}
