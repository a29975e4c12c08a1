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
mod demux;
pub mod initramfs;
pub mod net;
pub mod scratch;
pub mod signals;
pub(crate) mod stdio;
pub mod terminal;
pub mod vsock;

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk_protocol::{
    host_handshake, write_message, ImageSpec, Limits, Message, ProcessId, WritableLayer,
};

pub use husk_protocol::Limits as ContainerLimits;

pub use demux::Sink;
pub use husk_protocol::{ExitStatus, TtySize};
pub use stdio::{Buffer, Stdio};

use crate::config::{ConsoleConfig, VmConfig};
use crate::devices::virtio::block::BlockConfig;
use crate::devices::virtio::net::NetConfig;
use crate::devices::virtio::vsock::VsockConfig;
use crate::vmm::exit::VmExit;
use crate::vmm::{self, RunningVm, VmError};

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
}

/// Instants of a sandbox's life.
#[derive(Debug, Clone, Copy)]
struct Marks {
    created: Instant,
    initramfs_ready: Instant,
    vm_running: Instant,
    agent_ready: Instant,
    run_sent: Option<Instant>,
    process_started: Option<Instant>,
    process_exited: Option<Instant>,
}

impl Default for Marks {
    fn default() -> Self {
        let now = Instant::now();
        Self {
            created: now,
            initramfs_ready: now,
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
    vm: vmm::Stopper,
}

impl Stopper {
    /// End the sandbox now.
    pub fn stop(&self) {
        self.vm.stop();
    }
}

/// The image a sandbox runs: its filesystem image and defaults from its config.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SandboxImage {
    /// The read-only filesystem image (erofs), attached as the guest's first disk.
    pub fs_image: PathBuf,
    /// Filesystem type of `fs_image`.
    pub fstype: String,
    /// Default environment (`K=V`).
    pub env: Vec<String>,
    /// Default command: entrypoint followed by cmd.
    pub command: Vec<String>,
    /// Default working directory.
    pub working_dir: Option<String>,
    /// Default user.
    pub user: Option<String>,
}

/// How to build a sandbox.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The image.
    pub image: SandboxImage,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Agent binary (default: [`agent::agent_binary`]).
    pub agent: Option<PathBuf>,
    /// vCPUs.
    pub cpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// More disks after the image (vdb, ...).
    pub disks: Vec<BlockConfig>,
    /// Network cards.
    pub nets: Vec<NetConfig>,
    /// Give the guest a network: a TAP husk creates, a /30 link between host and guest,
    /// the guest's eth0 configured by the agent ([`net`]).
    pub network: bool,
    /// Put the containers' writable layers on a scratch disk of this many MiB (a sparse
    /// ext4 file in the runtime folder, removed with it) instead of a tmpfs in guest RAM.
    pub scratch_disk_mib: Option<u64>,
    /// Guest console (default: kept in memory only, shown when the agent fails).
    pub console: ConsoleConfig,
    /// How long the guest may take to boot to its agent.
    pub boot_timeout: Duration,
    /// Where the sandbox's runtime folder (sockets, scratch disk) is created [default:
    /// `$XDG_RUNTIME_DIR`, else the temp folder]. The folder is removed at the end.
    pub runtime_parent: Option<PathBuf>,
}

impl SandboxConfig {
    /// Defaults for everything but the image and the kernel.
    pub fn new(image: SandboxImage, kernel: PathBuf) -> Self {
        Self {
            image,
            kernel,
            agent: None,
            cpus: 1,
            memory_mib: 256,
            disks: Vec::new(),
            nets: Vec::new(),
            network: false,
            scratch_disk_mib: None,
            console: ConsoleConfig::Off,
            boot_timeout: Duration::from_secs(600),
            runtime_parent: None,
        }
    }
}

/// Builds a [`Sandbox`]: `Sandbox::builder(image, kernel).cpus(2).network(true).start()`.
#[derive(Debug, Clone)]
pub struct SandboxBuilder {
    config: SandboxConfig,
}

impl SandboxBuilder {
    /// vCPUs (default 1).
    pub fn cpus(mut self, cpus: u8) -> Self {
        self.config.cpus = cpus;
        self
    }

    /// Guest RAM in MiB (default 256).
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.config.memory_mib = mib;
        self
    }

    /// A link to the host (`husk run --net`).
    pub fn network(mut self, on: bool) -> Self {
        self.config.network = on;
        self
    }

    /// Writable layers on a scratch disk of `mib` MiB (`husk run --disk`).
    pub fn scratch_disk_mib(mut self, mib: u64) -> Self {
        self.config.scratch_disk_mib = Some(mib);
        self
    }

    /// Another disk after the image (and the scratch disk).
    pub fn disk(mut self, disk: BlockConfig) -> Self {
        self.config.disks.push(disk);
        self
    }

    /// Where the guest console goes (default: kept in memory for error reports).
    pub fn console(mut self, console: ConsoleConfig) -> Self {
        self.config.console = console;
        self
    }

    /// How long the guest may take to boot to its agent (default 600 s).
    pub fn boot_timeout(mut self, timeout: Duration) -> Self {
        self.config.boot_timeout = timeout;
        self
    }

    /// The agent binary (default: [`agent::agent_binary`]).
    pub fn agent(mut self, path: PathBuf) -> Self {
        self.config.agent = Some(path);
        self
    }

    /// The configuration built so far.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Boot the sandbox.
    pub fn start(self) -> Result<Sandbox, SandboxError> {
        Sandbox::start(self.config)
    }
}

/// One process to run in the sandbox; empty fields take the image's defaults.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RunSpec {
    /// Command and arguments (empty: the image's command).
    pub args: Vec<String>,
    /// Extra environment, `K=V`, over the image's.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: Option<String>,
    /// User (`name`, `uid` or `uid:gid`).
    pub user: Option<String>,
    /// A terminal of this size instead of pipes.
    pub tty: Option<TtySize>,
    /// cgroup limits of the container.
    pub limits: Limits,
}

/// A running sandbox.
pub struct Sandbox {
    id: String,
    image: SandboxImage,
    vm: Mutex<Option<RunningVm>>,
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
}

/// A process running in a sandbox's container.
pub struct Process {
    id: ProcessId,
    container: String,
    exit: Mutex<Receiver<demux::ExitResult>>,
    ended: std::sync::OnceLock<Result<ExitStatus, String>>,
    demux: Arc<demux::Demux>,
    started: Instant,
}

impl Process {
    /// The agent's number for this process.
    pub fn id(&self) -> ProcessId {
        self.id
    }

    /// The container it runs in (give it to [`Sandbox::exec`] to run more there).
    pub fn container_id(&self) -> &str {
        &self.container
    }

    /// Send it a signal.
    pub fn signal(&self, signal: i32) -> Result<(), SandboxError> {
        let process = self.id;
        Ok(self.demux.send(&Message::Signal { process, signal })?)
    }

    /// Resize its terminal (processes started with a `tty`).
    pub fn resize(&self, size: TtySize) -> Result<(), SandboxError> {
        let message = Message::Resize {
            process: self.id,
            rows: size.rows,
            cols: size.cols,
        };
        Ok(self.demux.send(&message)?)
    }

    /// Wait for it to end; its output has all been written when this returns. Other
    /// threads may signal or resize it meanwhile; later calls return the same result.
    pub fn wait(&self) -> Result<ExitStatus, SandboxError> {
        let ended = self.ended.get_or_init(|| {
            let exit = self.exit.lock().unwrap_or_else(|e| e.into_inner());
            match exit.recv() {
                Ok(result) => result,
                Err(_) => Err(self.demux.closed_reason()),
            }
        });
        ended.clone().map_err(SandboxError::Lost)
    }
}

impl Sandbox {
    /// A builder with defaults for everything but the image and the kernel.
    pub fn builder(image: SandboxImage, kernel: PathBuf) -> SandboxBuilder {
        SandboxBuilder {
            config: SandboxConfig::new(image, kernel),
        }
    }

    /// Boot the VM and connect to its agent.
    pub fn start(config: SandboxConfig) -> Result<Self, SandboxError> {
        let created = Instant::now();
        let id = new_id();
        let runtime_root = config.runtime_parent.clone().unwrap_or_else(runtime_root);
        let runtime = tempfile::Builder::new()
            .prefix(&format!("husk-{id}-"))
            .tempdir_in(&runtime_root)
            .map_err(|source| SandboxError::Runtime {
                dir: runtime_root,
                source,
            })?;
        let agent = match &config.agent {
            Some(p) => p.clone(),
            None => agent::agent_binary()?,
        };
        let initrd =
            agent::agent_initramfs(&agent, &crate::kernel::cache_root().join("initramfs"))?;
        let initramfs_ready = Instant::now();
        let uds = runtime.path().join("vsock.sock");
        let scratch = (config.scratch_disk_mib)
            .map(|mib| scratch::create(runtime.path(), mib))
            .transpose()?;
        let vm = vmm::start(&vm_config(&config, initrd, uds.clone(), scratch.clone()))?;
        let vm_running = Instant::now();
        let link = (config.network)
            .then(|| net::configure_host_side(&vm))
            .transpose()?;
        let deadline = Instant::now() + config.boot_timeout;
        let mut conn = connect_agent(&vm, &uds, config.boot_timeout)?;
        let io = |e| SandboxError::Protocol(husk_protocol::ProtocolError::Io(e));
        if let Some(link) = &link {
            // The handshake's read timeout still holds: a guest that never answers the
            // network request fails the boot instead of hanging the host.
            let left = deadline.saturating_duration_since(Instant::now());
            conn.set_read_timeout(Some(left.max(HANDSHAKE_MIN)))
                .map_err(io)?;
            net::configure_guest(&mut conn, link).map_err(|e| match e {
                net::NetError::Protocol(e) => SandboxError::AgentDown {
                    reason: format!("the agent did not configure the network: {e}"),
                    console: vm.failure_output(),
                },
                other => other.into(),
            })?;
        }
        conn.set_read_timeout(None).map_err(io)?;
        let agent_ready = Instant::now();
        let writer = Arc::new(Mutex::new(conn.try_clone().map_err(io)?));
        let (demux, reader) =
            demux::Demux::start(conn.try_clone().map_err(io)?, writer).map_err(io)?;
        let conn = Arc::new(conn);
        watch_vm(vm.exit_watch(), &demux, &conn).map_err(io)?;
        Ok(Self {
            id,
            image: config.image,
            vm: Mutex::new(Some(vm)),
            conn,
            demux,
            reader: Mutex::new(Some(reader)),
            current: Arc::new(AtomicU32::new(0)),
            marks: Mutex::new(Marks {
                created,
                initramfs_ready,
                vm_running,
                agent_ready,
                ..Marks::default()
            }),
            runtime_path: runtime.path().to_path_buf(),
            runtime: Mutex::new(Some(runtime)),
            containers: AtomicU32::new(0),
            container_env: Mutex::default(),
            writable_layer: scratch::writable_layer(scratch.as_deref()),
        })
    }

    /// This sandbox's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn marks(&self) -> MutexGuard<'_, Marks> {
        self.marks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn vm(&self) -> MutexGuard<'_, Option<RunningVm>> {
        self.vm.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When this sandbox reached each milestone, in ms from the start of `start`.
    pub fn timings(&self) -> SandboxTimings {
        let m = *self.marks();
        let ms = |t: Option<Instant>| crate::metrics::ms_since(m.created, t);
        SandboxTimings {
            initramfs_ready_ms: ms(Some(m.initramfs_ready)),
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
        self.vm().as_ref().is_some_and(RunningVm::is_running)
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
            .map(RunningVm::failure_output)
            .unwrap_or_default()
    }

    /// The end of the guest console (for error reports).
    pub fn console_tail(&self) -> String {
        self.vm()
            .as_ref()
            .map(RunningVm::console_tail)
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

    /// Ask the agent to shut the guest down (its containers are killed) and wait for
    /// the VM to end. Processes still waited for get their exit or a `Lost` error.
    pub fn stop(&self) -> Result<vmm::RunReport, SandboxError> {
        let Some(vm) = self.vm().take() else {
            return Err(SandboxError::Refused(
                "the sandbox is already stopped".into(),
            ));
        };
        if self.demux.send(&Message::Shutdown).is_err() {
            vm.stopper().stop();
        }
        // A guest that does not reset in time is stopped from the host.
        let report = vm.wait_or_stop(SHUTDOWN_TIMEOUT);
        self.release();
        Ok(report)
    }

    /// With the VM gone, end the connection and its reader thread, and remove the
    /// runtime folder.
    fn release(&self) {
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

/// End the agent connection when the VM ends, however it ends. A guest that dies on its
/// own (a triple fault, a panic) leaves the host's end of the vsock stream open, since
/// the device outlives its vCPUs until the sandbox is stopped; without this, every
/// process wait and request would hang on it. The thread ends with the VM, which always
/// ends: stop and drop end it.
fn watch_vm(
    watch: vmm::ExitWatch,
    demux: &Arc<demux::Demux>,
    conn: &Arc<UnixStream>,
) -> std::io::Result<()> {
    let (demux, conn) = (demux.clone(), conn.clone());
    std::thread::Builder::new()
        .name("husk-vm-watch".into())
        .spawn(move || {
            let end = watch.wait();
            let reason = match &end {
                Ok(VmExit::Stopped) => "the sandbox's VM was stopped".to_string(),
                Ok(end) => format!("the guest ended ({end:?}) while the sandbox ran"),
                Err(e) => format!("the guest failed: {e}"),
            };
            demux.end_because(reason);
            if matches!(end, Ok(VmExit::Reset | VmExit::PowerOff)) {
                // Frames a guest sent just before it ended by itself may still be on
                // their way through the device.
                std::thread::sleep(CLEAN_END_GRACE);
            }
            drop(conn.shutdown(std::net::Shutdown::Both));
        })
        .map(drop)
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(vm) = self.vm().take() {
            vm.stopper().stop();
            drop(vm.wait());
        }
        self.release();
    }
}

fn vm_config(
    config: &SandboxConfig,
    initrd: PathBuf,
    uds: PathBuf,
    scratch: Option<PathBuf>,
) -> VmConfig {
    let image_disk = BlockConfig {
        path: config.image.fs_image.clone(),
        read_only: true,
        id: Some("husk-image".into()),
        root: false,
    };
    // vda is the image, vdb the scratch disk (scratch::GUEST_DEVICE), then the others.
    let mut disks = vec![image_disk];
    disks.extend(scratch.map(scratch::block_config));
    disks.extend(config.disks.iter().cloned());
    // The sandbox's own card comes first, so it is the guest's eth0.
    let mut nets: Vec<NetConfig> = config
        .network
        .then(NetConfig::default)
        .into_iter()
        .collect();
    nets.extend(config.nets.iter().cloned());
    VmConfig {
        initrd: Some(initrd),
        cmdline: "quiet".into(),
        cpus: config.cpus,
        memory_mib: config.memory_mib,
        console: config.console.clone(),
        disks,
        nets,
        vsock: Some(VsockConfig::new(GUEST_CID, uds)),
        ..VmConfig::new(config.kernel.clone())
    }
}

/// Retry the agent's port until it answers, the guest ends, or `timeout` passes. The
/// connection comes back with a read timeout still set.
fn connect_agent(
    vm: &RunningVm,
    uds: &std::path::Path,
    timeout: Duration,
) -> Result<UnixStream, SandboxError> {
    let start = Instant::now();
    let down = |reason: String| SandboxError::AgentDown {
        reason,
        console: vm.failure_output(),
    };
    loop {
        if let Some(cause) = vm.exit_cause() {
            return Err(down(format!(
                "the guest ended before its agent answered ({cause:?})"
            )));
        }
        match vsock::connect_once(uds, husk_protocol::AGENT_VSOCK_PORT) {
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
            Err(_) => std::thread::sleep(CONNECT_INTERVAL),
        }
    }
}

/// A short id, unique enough for one host: process id and clock.
fn new_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{:x}{:05x}", std::process::id(), nanos & 0xfffff)
}

/// `$XDG_RUNTIME_DIR`, else the system temp folder.
fn runtime_root() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}

impl SandboxImage {
    /// The image of the image store's `image`.
    pub fn from_store(image: &crate::image::Image) -> Self {
        let config = &image.config;
        Self {
            fs_image: image.fs_image.clone(),
            fstype: "erofs".into(),
            env: config.env.clone(),
            command: config
                .entrypoint
                .iter()
                .chain(&config.cmd)
                .cloned()
                .collect(),
            working_dir: config.working_dir.clone(),
            user: config.user.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use husk_protocol::{read_message, write_message, Message};

    use super::tests_support::{Capture, FakeAgent};
    use super::*;
    use crate::vmm::exit::ExitCause;

    #[test]
    fn a_guest_that_dies_ends_every_wait_with_its_failure() {
        let agent = FakeAgent::new();
        let (demux, reader) =
            demux::Demux::start(agent.host.try_clone().unwrap(), agent.writer()).unwrap();
        let conn = Arc::new(agent.host.try_clone().unwrap());
        let (watch, exit) = vmm::ExitWatch::without_vm();
        watch_vm(watch, &demux, &conn).unwrap();
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
        exit.report(ExitCause::TripleFault { vcpu: 0, rip: None });
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
