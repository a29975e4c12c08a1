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
pub mod initramfs;
pub mod jailing;
pub mod launch;
pub mod nat;
pub mod net;
mod persist;
mod pool;
pub mod ports;
mod process;
pub mod scratch;
pub mod signals;
pub(crate) mod stdio;
pub mod template;
pub mod terminal;
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

use husk_protocol::{write_message, ImageSpec, Message, ProcessId, WritableLayer};

pub use husk_protocol::Limits as ContainerLimits;

pub use config::{RunSpec, SandboxBuilder, SandboxConfig, SandboxImage};
pub use copy::CopyRequest;
pub use demux::Sink;
pub use husk_protocol::{ExitStatus, TtySize};
pub use net::{Ipv4Net, Nat};
pub use persist::{RestoreSandbox, SandboxSnapshot, SnapshotReport};
pub use pool::VmmPool;
pub use ports::Publish;
pub use process::Process;
pub use stdio::{Buffer, Stdio};
pub use template::Template;
pub use volumes::Volume;

use connect::{new_id, runtime_root, watch_vm};

use crate::api::server::ExitReport;
use crate::vmm::VmError;
use vmm_process::{VmmProcess, VmmStopper};

/// The guest CID of every sandbox (each VM has its own vsock device and host socket).
const GUEST_CID: u64 = 3;
/// How long a guest may take to reset after Shutdown before the host stops it.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// The least time a guest that accepted the agent connection gets to send its Hello.
const HANDSHAKE_MIN: Duration = Duration::from_secs(30);
/// How often to retry the agent while the guest boots.
const CONNECT_INTERVAL: Duration = Duration::from_millis(10);
/// How long the agent connection stays open after the guest reset or powered off by
/// itself, for frames still passing through the vsock device.
const CLEAN_END_GRACE: Duration = Duration::from_millis(200);

/// Errors of a sandbox's life.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The agent binary or its initramfs is not available.
    #[error("guest agent: {0}")]
    Agent(String),
    /// The VM could not be built or started.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The runtime folder could not be created.
    #[error("cannot create a runtime folder in {dir}: {source}")]
    Runtime {
        /// Where.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The agent did not answer in time, or the guest ended before it did.
    #[error("the guest agent did not come up: {reason}; last console output:\n{console}")]
    AgentDown {
        /// What happened.
        reason: String,
        /// The end of the guest console.
        console: String,
    },
    /// The agent broke the protocol, refused a request, or the connection failed.
    #[error("talking to the guest agent: {0}")]
    Protocol(#[from] husk_protocol::ProtocolError),
    /// The agent reported an error for a request.
    #[error("the guest agent refused: {0}")]
    Refused(String),
    /// The connection to the agent ended (the guest stopped or broke the protocol).
    #[error("lost the guest agent: {0}")]
    Lost(String),
    /// The scratch disk (`--disk`) could not be made.
    #[error(transparent)]
    Scratch(#[from] scratch::ScratchError),
    /// The network (`--net`) could not be set up.
    #[error(transparent)]
    Network(#[from] net::NetError),
    /// A template could not be made, read or removed.
    #[error("template: {0}")]
    Template(String),
    /// A snapshot could not be taken or restored.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// The VMM process could not be started or driven.
    #[error("VMM process: {0}")]
    Vmm(String),
    /// A volume (`-v`) is invalid or its virtiofsd could not run.
    #[error(transparent)]
    Volume(#[from] volumes::VolumeError),
}

/// Instants of a sandbox's life.
#[derive(Debug, Clone, Copy)]
struct Marks {
    created: Instant,
    initramfs_ready: Instant,
    /// A restore's snapshot was read and checked (template found or built first).
    snapshot_loaded: Option<Instant>,
    /// The agent answered the handshake (before identity and network).
    agent_answered: Option<Instant>,
    vm_running: Instant,
    agent_ready: Instant,
    run_sent: Option<Instant>,
    process_started: Option<Instant>,
    process_exited: Option<Instant>,
}

impl Marks {
    /// The marks of a sandbox whose agent is ready now.
    fn launched(created: Instant, initramfs_ready: Instant, launched: &launch::Launched) -> Self {
        Self {
            created,
            initramfs_ready,
            vm_running: launched.vm_running,
            snapshot_loaded: launched.loaded,
            agent_answered: Some(launched.answered),
            agent_ready: Instant::now(),
            ..Marks::default()
        }
    }
}

impl Default for Marks {
    fn default() -> Self {
        let now = Instant::now();
        Self {
            created: now,
            initramfs_ready: now,
            snapshot_loaded: None,
            agent_answered: None,
            vm_running: now,
            agent_ready: now,
            run_sent: None,
            process_started: None,
            process_exited: None,
        }
    }
}

/// Milestones of a sandbox, in ms from the start of [`Sandbox::start`] (the last `run`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SandboxTimings {
    /// The runtime folder exists and the agent initramfs is found (or built).
    pub initramfs_ready_ms: Option<f64>,
    /// Warm starts: the template (or snapshot) was found, read and checked.
    pub snapshot_loaded_ms: Option<f64>,
    /// The agent answered the handshake (warm: before it took its identity).
    pub agent_answered_ms: Option<f64>,
    /// Whether the sandbox started from a template or snapshot.
    pub warm: bool,
    /// The VM is built and its vCPUs run (kernel loaded, devices wired).
    pub vm_running_ms: Option<f64>,
    /// The agent answered on vsock and the handshake is done (guest booted).
    pub agent_ready_ms: Option<f64>,
    /// The Run request was sent.
    pub run_sent_ms: Option<f64>,
    /// The agent reported the container's process started (container created).
    pub process_started_ms: Option<f64>,
    /// The agent reported the process exited.
    pub process_exited_ms: Option<f64>,
}

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
}

/// A sandbox's NAT and published ports, as configured.
#[derive(Debug, Clone, Default)]
struct NetRequest {
    nat: Option<Nat>,
    publish: Vec<Publish>,
}

/// What a sandbox is made of besides its VM and agent connection.
struct Assembly {
    id: String,
    image: SandboxImage,
    runtime: tempfile::TempDir,
    scratch: Option<PathBuf>,
    marks: Marks,
    containers: u32,
    container_env: HashMap<String, Vec<String>>,
    graceful_stop: bool,
    net_request: NetRequest,
    shares: volumes::Shares,
}

/// The sandbox's runtime folder (sockets, scratch disk), removed when it ends.
fn runtime_dir(config: &SandboxConfig, id: &str) -> Result<tempfile::TempDir, SandboxError> {
    let root = config.runtime_parent.clone().unwrap_or_else(runtime_root);
    tempfile::Builder::new()
        .prefix(&format!("husk-{id}-"))
        .tempdir_in(&root)
        .map_err(|source| SandboxError::Runtime { dir: root, source })
}

/// The agent initramfs for `config`'s agent (built once per agent, cached).
pub(crate) fn agent_initrd(config: &SandboxConfig) -> Result<PathBuf, SandboxError> {
    let agent = match &config.agent {
        Some(p) => p.clone(),
        None => agent::agent_binary()?,
    };
    agent::agent_initramfs(&agent, &crate::kernel::cache_root().join("initramfs"))
}

impl Sandbox {
    /// A builder with defaults for everything but the image and the kernel.
    pub fn builder(image: SandboxImage, kernel: PathBuf) -> SandboxBuilder {
        SandboxBuilder {
            config: SandboxConfig::new(image, kernel),
        }
    }

    /// Start the sandbox's VM (from a template when it fits one, see
    /// [`SandboxConfig::warm`]) and connect to its agent.
    pub fn start(config: SandboxConfig) -> Result<Self, SandboxError> {
        Self::start_with(config, None)
    }

    /// Start the sandbox's VM from `template` (see [`Template::start`]), or as
    /// [`Sandbox::start`] does without one.
    pub(crate) fn start_with(
        config: SandboxConfig,
        template: Option<&Template>,
    ) -> Result<Self, SandboxError> {
        let created = Instant::now();
        let config = config.with_absolute_paths()?;
        let id = new_id();
        let initrd = agent_initrd(&config)?;
        // A pooled VMM comes with its runtime folder, already listening in it.
        config.volumes.iter().try_for_each(Volume::validate)?;
        // A pooled VMM may be jailed, and a jail cannot reach virtiofsd's sockets.
        let pool = config.pool.as_ref().filter(|_| config.volumes.is_empty());
        let pooled = pool.and_then(|p| p.take(&config, &initrd));
        let (runtime, pooled_vm) = match pooled {
            Some(pooled) => (pooled.runtime, Some(pooled.vm)),
            None => (runtime_dir(&config, &id)?, None),
        };
        // Before the VM: its devices connect to the daemons as it is built.
        let (shares, fs) = volumes::Shares::start(&config.volumes, runtime.path())?;
        let initramfs_ready = Instant::now();
        let scratch = (config.scratch_disk_mib)
            .map(|mib| scratch::create(runtime.path(), mib))
            .transpose()?;
        let paths = launch::LaunchPaths {
            runtime: runtime.path(),
            initrd,
            scratch: scratch.clone(),
            hostname: format!("husk-{id}"),
            fs,
        };
        let origin = launch::origin_for(&config, template);
        // A daemon that died explains a failed start better than the VMM's view of it.
        let launched = launch::launch(&config, paths, origin, pooled_vm)
            .map_err(|e| shares.ended().map_or(e, SandboxError::from))?;
        let marks = Marks::launched(created, initramfs_ready, &launched);
        let parts = Assembly {
            id,
            image: config.image,
            runtime,
            scratch,
            marks,
            containers: 0,
            container_env: HashMap::new(),
            graceful_stop: !config.disks.is_empty(),
            net_request: NetRequest {
                nat: config.nat,
                publish: config.publish,
            },
            shares,
        };
        Ok(Self::assemble(parts, launched, Vec::new())?.0)
    }

    /// A sandbox around a launched VM, with routes for `adopt`ed processes that already
    /// run in it (a restored snapshot's).
    fn assemble(
        parts: Assembly,
        launched: launch::Launched,
        adopt: Vec<(ProcessId, String, Sink, Sink)>,
    ) -> Result<(Self, Vec<Process>), SandboxError> {
        let io = |e| SandboxError::Protocol(husk_protocol::ProtocolError::Io(e));
        let conn = launched.conn;
        let host_net = launched.net;
        let writer = Arc::new(Mutex::new(conn.try_clone().map_err(io)?));
        let (containers, routes): (Vec<String>, Vec<_>) = adopt
            .into_iter()
            .map(|(p, container, out, err)| (container, (p, out, err)))
            .unzip();
        let (demux, reader, accepted) =
            demux::Demux::start_adopting(conn.try_clone().map_err(io)?, writer, routes)
                .map_err(io)?;
        let conn = Arc::new(conn);
        let vm = Arc::new(launched.vm);
        watch_vm(vm.clone(), &demux, &conn).map_err(io)?;
        let processes = accepted
            .into_iter()
            .zip(containers)
            .map(|(a, container)| Process {
                id: a.process,
                container,
                exit: Mutex::new(a.exit),
                ended: std::sync::OnceLock::new(),
                demux: demux.clone(),
                started: Instant::now(),
            })
            .collect();
        let sandbox = Self {
            id: parts.id,
            image: parts.image,
            vm: Mutex::new(Some(vm)),
            warm: launched.warm,
            conn,
            demux,
            reader: Mutex::new(Some(reader)),
            current: Arc::new(AtomicU32::new(0)),
            marks: Mutex::new(parts.marks),
            runtime_path: parts.runtime.path().to_path_buf(),
            runtime: Mutex::new(Some(parts.runtime)),
            containers: AtomicU32::new(parts.containers),
            container_env: Mutex::new(parts.container_env),
            writable_layer: scratch::writable_layer(parts.scratch.as_deref()),
            scratch: parts.scratch,
            graceful_stop: parts.graceful_stop,
            host_net: Mutex::new(host_net),
            net_request: parts.net_request,
            shares: parts.shares,
        };
        Ok((sandbox, processes))
    }

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
            agent_answered_ms: ms(m.agent_answered),
            warm: self.warm,
            vm_running_ms: ms(Some(m.vm_running)),
            agent_ready_ms: ms(Some(m.agent_ready)),
            run_sent_ms: ms(m.run_sent),
            process_started_ms: ms(m.process_started),
            process_exited_ms: ms(m.process_exited),
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
        self.marks().process_started = Some(process.started);
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
                device: "/dev/vda".into(),
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
        let report = match self.graceful_stop && self.demux.send(&Message::Shutdown).is_ok() {
            // A guest that does not reset in time is stopped from the host.
            true => vm.wait(Some(SHUTDOWN_TIMEOUT)).unwrap_or_else(|| vm.stop()),
            false => vm.stop(),
        };
        self.release();
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
mod tests {
    use std::time::Duration;

    use husk_protocol::{read_message, write_message, Message};

    use super::tests_support::{Capture, FakeAgent};
    use super::*;

    #[test]
    fn a_guest_that_dies_ends_every_wait_with_its_failure() {
        let agent = FakeAgent::new();
        let (demux, reader) =
            demux::Demux::start(agent.host.try_clone().unwrap(), agent.writer()).unwrap();
        let conn = Arc::new(agent.host.try_clone().unwrap());
        let (vm, ending) = VmmProcess::without_process();
        watch_vm(Arc::new(vm), &demux, &conn).unwrap();
        let mut guest = agent.guest;
        let guest_thread = std::thread::spawn(move || {
            assert!(matches!(read_message(&mut guest), Ok(Message::Exec { .. })));
            write_message(&mut guest, &Message::Started { process_id: 7 }).unwrap();
            // The guest keeps its end open, as the vsock device does after a crash.
            guest
        });
        let exec = Message::Exec {
            container_id: "c".into(),
            args: vec!["cat".into()],
            env: vec![],
            cwd: None,
            user: None,
            tty: None,
        };
        let (out, err) = (Capture::default(), Capture::default());
        let accepted = demux.request(&exec, Box::new(out), Box::new(err)).unwrap();
        let _guest = guest_thread.join().unwrap();
        ending(ExitReport {
            error: Some("guest triple fault on vCPU 0 (RIP unknown: KVM reset the vCPU)".into()),
            ..ExitReport::default()
        });
        let ended = accepted.exit.recv_timeout(Duration::from_secs(10));
        let reason = ended.expect("the wait ended").unwrap_err();
        assert!(
            reason.contains("the guest failed: guest triple fault on vCPU 0"),
            "{reason}"
        );
        reader.join().unwrap();
        assert!(demux.closed_reason().contains("triple fault"));
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
