//! The container runtime of the agent: Run creates a container (rootfs, cgroup,
//! namespaces) and starts its first process; Exec starts another one inside it; stdin,
//! signals and resizes are routed by process id; each process's end is reported as an
//! Exited frame after its last output frame.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use husk_protocol::{ExitStatus, Limits, Message, ProcessId, TtySize, WritableLayer};

use crate::cgroup::Cgroup;
use crate::child::Namespaces;
use crate::outbox::Outbox;
use crate::prepare::{self, ProcessRequest};
use crate::process::{self, HostEnds, Process};
use crate::reaper::{reaper, RawExit};
use crate::rootfs::{LowerLayer, Rootfs};
use crate::spawn;
use crate::spec::validate_id;

#[path = "agent_error.rs"]
mod error;
pub(crate) use error::io_err;
pub use error::AgentError;

/// Where the runtime keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    /// Per-container directories (`/run/husk` in the guest).
    pub state_dir: PathBuf,
    /// The cgroup v2 mount (`/sys/fs/cgroup` in the guest); `None` runs without cgroups
    /// and refuses limits.
    pub cgroup_root: Option<PathBuf>,
}

/// A request to create a container.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The container id.
    pub id: String,
    /// The image layer.
    pub lower: LowerLayer,
    /// The writable layer.
    pub writable: WritableLayer,
    /// Resource limits.
    pub limits: Limits,
    /// The hostname (default: the id).
    pub hostname: Option<String>,
    /// The first process.
    pub process: ProcessRequest,
    /// Host folders (virtio-fs tags) mounted into the root.
    pub volumes: Vec<husk_protocol::VolumeMount>,
}

struct Container {
    init_pid: i32,
    hostname: String,
    cgroup: Option<Arc<Cgroup>>,
}

/// A process that has exec'd (or a copy that started), before the agent watches it.
pub(crate) struct Started {
    /// Its process id.
    pub id: ProcessId,
    /// Its pid in the agent's namespace (0: a copy, no process to signal).
    pub pid: i32,
    /// The agent's ends of its stdio.
    pub ends: HostEnds,
    /// Its exit status, when it comes.
    pub exit: Receiver<RawExit>,
    /// A Run that took the prepared container.
    pub prepared: bool,
}

/// What happens when a process ends, beyond reporting it.
pub(crate) enum Ending {
    /// The container's init: tear the container down.
    Init {
        id: String,
        rootfs: Rootfs,
        cgroup: Option<Arc<Cgroup>>,
    },
    /// An exec'd process.
    Exec,
}

/// The agent's containers and processes.
pub struct Agent {
    runtime: Runtime,
    outbox: Arc<Outbox>,
    next_id: AtomicU32,
    processes: Mutex<HashMap<ProcessId, Arc<Process>>>,
    containers: Mutex<HashMap<String, Container>>,
    /// A container made ahead of its Run.
    prepared: Mutex<Option<prepared::Prepared>>,
}

#[path = "prepared.rs"]
mod prepared;

impl Agent {
    /// An agent with no containers yet, sending through `outbox`.
    pub fn new(runtime: Runtime, outbox: Arc<Outbox>) -> Arc<Self> {
        Arc::new(Self {
            runtime,
            outbox,
            next_id: AtomicU32::new(1),
            processes: Mutex::default(),
            containers: Mutex::default(),
            prepared: Mutex::default(),
        })
    }

    fn containers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Container>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn prepared_slot(&self) -> std::sync::MutexGuard<'_, Option<prepared::Prepared>> {
        self.prepared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn processes(&self) -> std::sync::MutexGuard<'_, HashMap<ProcessId, Arc<Process>>> {
        self.processes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a container and starts its first process; sends Started and returns its
    /// process id.
    pub fn run(self: &Arc<Self>, request: RunRequest) -> Result<ProcessId, AgentError> {
        validate_id(&request.id)?;
        if self.containers().contains_key(&request.id) {
            return Err(AgentError::Exists(request.id));
        }
        if let Some(started) = self.run_prepared(&request) {
            return started;
        }
        let cgroup = self.create_cgroup(&request)?;
        let hostname = request
            .hostname
            .clone()
            .unwrap_or_else(|| request.id.clone());
        let (rootfs, started) = match self.mount_and_start(&request, &hostname, cgroup.as_deref()) {
            Ok(done) => done,
            Err(e) => {
                cgroup.iter().for_each(|c| c.remove());
                return Err(e);
            }
        };
        Ok(self.adopt_container(&request.id, hostname, rootfs, cgroup, started))
    }

    /// Records container `id` whose init has started, and watches the init (its end
    /// takes the container down); the init's process id.
    fn adopt_container(
        self: &Arc<Self>,
        id: &str,
        hostname: String,
        rootfs: Rootfs,
        cgroup: Option<Arc<Cgroup>>,
        started: Started,
    ) -> ProcessId {
        let process_id = started.id;
        let container = Container {
            init_pid: started.pid,
            hostname,
            cgroup: cgroup.clone(),
        };
        self.containers().insert(id.to_string(), container);
        let ending = Ending::Init {
            id: id.to_string(),
            rootfs,
            cgroup,
        };
        self.watch(started, id, ending);
        process_id
    }

    /// Mounts the container's root and starts its init; unmounts again on failure.
    fn mount_and_start(
        &self,
        request: &RunRequest,
        hostname: &str,
        cgroup: Option<&Cgroup>,
    ) -> Result<(Rootfs, Started), AgentError> {
        let state = &self.runtime.state_dir;
        let mut rootfs = Rootfs::mount(state, &request.id, &request.lower, &request.writable)?;
        if let Err(e) = rootfs.mount_volumes(&request.volumes) {
            rootfs.unmount();
            return Err(e.into());
        }
        let merged = rootfs.merged();
        crate::network::install_resolv_conf(&merged);
        let namespaces = prepare::c_string(hostname).and_then(|hostname| {
            let rootfs = prepare::c_string(&merged.display().to_string())?;
            Ok(Namespaces::Create { hostname, rootfs })
        });
        match namespaces.map_err(AgentError::from).and_then(|namespaces| {
            self.start(&request.process, &merged, hostname, namespaces, cgroup)
        }) {
            Ok(started) => Ok((rootfs, started)),
            Err(e) => {
                rootfs.unmount();
                Err(e)
            }
        }
    }

    fn create_cgroup(&self, request: &RunRequest) -> Result<Option<Arc<Cgroup>>, AgentError> {
        match &self.runtime.cgroup_root {
            Some(root) => Ok(Some(Arc::new(Cgroup::create(
                root,
                &request.id,
                &request.limits,
            )?))),
            None if request.limits == Limits::default() => Ok(None),
            None => Err(AgentError::NoCgroups(request.id.clone())),
        }
    }

    /// Gives every container named `old` (the hostname the guest had) the hostname
    /// `new`: a guest restored from a snapshot is a new sandbox, its containers too.
    /// Each rename runs on a thread of its own, which joins the container's UTS
    /// namespace for the call (setns changes only the calling thread's).
    pub fn rename_containers(&self, old: &str, new: &str) -> Result<(), AgentError> {
        let mut containers = self.containers();
        for container in containers.values_mut().filter(|c| c.hostname == old) {
            let path = format!("/proc/{}/ns/uts", container.init_pid);
            let ns = File::open(&path).map_err(io_err(format!("open {path}")))?;
            let name = new.to_string();
            std::thread::spawn(move || -> std::io::Result<()> {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWUTS)?;
                nix::unistd::sethostname(&name)?;
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the renaming thread panicked")))
            .map_err(io_err(format!(
                "set the hostname of the container in {path}"
            )))?;
            container.hostname = new.to_string();
        }
        Ok(())
    }

    /// Starts a process in the running container `container_id`; sends Started and
    /// returns its process id.
    pub fn exec(
        self: &Arc<Self>,
        container_id: &str,
        request: ProcessRequest,
    ) -> Result<ProcessId, AgentError> {
        let (init_pid, hostname, cgroup) = match self.containers().get(container_id) {
            Some(c) => (c.init_pid, c.hostname.clone(), c.cgroup.clone()),
            None => return Err(AgentError::NoContainer(container_id.to_string())),
        };
        let proc_dir = PathBuf::from(format!("/proc/{init_pid}"));
        let mut fds = Vec::new();
        for ns in ["ipc", "uts", "pid", "mnt"] {
            let path = proc_dir.join("ns").join(ns);
            let file = File::open(&path).map_err(io_err(format!("open {}", path.display())))?;
            fds.push(file.into());
        }
        let root = proc_dir.join("root");
        let namespaces = Namespaces::Join(fds);
        let started = self.start(&request, &root, &hostname, namespaces, cgroup.as_deref())?;
        let process_id = started.id;
        self.watch(started, container_id, Ending::Exec);
        Ok(process_id)
    }

    /// Prepares, forks and waits for the exec of one process.
    fn start(
        &self,
        request: &ProcessRequest,
        root: &Path,
        hostname: &str,
        namespaces: Namespaces,
        cgroup: Option<&Cgroup>,
    ) -> Result<Started, AgentError> {
        let resolved = prepare::resolve(request, root, hostname)?;
        let procs = match cgroup {
            Some(c) => {
                let path = c.path().join("cgroup.procs");
                let file = std::fs::OpenOptions::new().write(true).open(&path);
                Some(
                    file.map_err(io_err(format!("open {}", path.display())))?
                        .into(),
                )
            }
            None => None,
        };
        let (host, child) = process::make_stdio(request.tty).map_err(io_err("create stdio"))?;
        let plan = prepare::build_plan(namespaces, procs, &child, request, &resolved)?;
        let mut registrar = reaper().registrar();
        let pending = spawn::spawn(&plan)?;
        let pid = pending.pid;
        let exit = registrar.register(pid);
        drop(registrar);
        drop(child);
        pending.wait_exec()?;
        let id = self.next_process_id();
        Ok(Started {
            id,
            pid,
            ends: host,
            exit,
            prepared: false,
        })
    }

    /// The pid of running container `container_id`'s first process.
    pub(crate) fn init_pid(&self, container_id: &str) -> Result<i32, AgentError> {
        self.containers()
            .get(container_id)
            .map(|c| c.init_pid)
            .ok_or_else(|| AgentError::NoContainer(container_id.to_string()))
    }

    /// A new process id.
    pub(crate) fn next_process_id(&self) -> ProcessId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers the process and starts its output and completion threads.
    pub(crate) fn watch(self: &Arc<Self>, started: Started, container: &str, ending: Ending) {
        let Started {
            id,
            pid,
            ends,
            exit,
            prepared,
        } = started;
        // Started goes out before the first output frame can.
        self.outbox.send(&Message::Started {
            process_id: id,
            prepared,
        });
        let mut forwarders = Vec::new();
        let outputs = [(Some(ends.stdout), false), (ends.stderr, true)];
        for (file, is_stderr) in outputs {
            if let Some(file) = file {
                match process::forward(file, id, is_stderr, self.outbox.clone()) {
                    Ok(handle) => forwarders.push(handle),
                    Err(e) => crate::console::log(&format!("process {id}: no output thread: {e}")),
                }
            }
        }
        match Process::new(
            id,
            pid,
            container.to_string(),
            ends.stdin,
            ends.pty,
            self.outbox.clone(),
        ) {
            Ok(process) => {
                self.processes().insert(id, Arc::new(process));
            }
            // Its stdin is dropped (the process sees EOF); output and exit still flow.
            Err(e) => crate::console::log(&format!("process {id}: no stdin thread: {e}")),
        }
        let agent = Arc::clone(self);
        let completion = std::thread::Builder::new()
            .name(format!("wait-{id}"))
            .spawn(move || {
                let (code, signal) = exit.recv().unwrap_or((None, None));
                let oom_killed = agent.end(&ending);
                for forwarder in forwarders {
                    let _ = forwarder.join();
                }
                agent.processes().remove(&id);
                // The exit is reported as soon as the output is complete: the host (a
                // `husk run` waiting to return) need not wait for the container's
                // teardown, which follows. The container's id is taken until then.
                let status = ExitStatus {
                    code,
                    signal,
                    oom_killed,
                };
                agent.outbox.send(&Message::Exited {
                    process: id,
                    status,
                });
                if let Ending::Init {
                    id: cid,
                    mut rootfs,
                    cgroup,
                } = ending
                {
                    rootfs.unmount();
                    cgroup.iter().for_each(|c| c.remove());
                    agent.containers().remove(&cid);
                }
            });
        if let Err(e) = completion {
            crate::console::log(&format!("process {id}: no completion thread: {e}"));
        }
    }

    /// After an init exits: whether it was OOM-killed, and every other process of the
    /// container killed so its output pipes close.
    fn end(&self, ending: &Ending) -> bool {
        match ending {
            Ending::Init {
                cgroup: Some(cgroup),
                ..
            } => {
                let oom = cgroup.oom_kills() > 0;
                cgroup.kill_all();
                oom
            }
            _ => false,
        }
    }

    fn process(&self, id: ProcessId) -> Option<Arc<Process>> {
        self.processes().get(&id).cloned()
    }

    /// Queues stdin bytes for process `id` (without blocking). Unknown ids (a process
    /// that just ended) are ignored: the host learns of the end from Exited.
    pub fn stdin(&self, id: ProcessId, data: &[u8]) {
        if let Some(process) = self.process(id) {
            process.write_stdin(data);
        }
    }

    /// Closes process `id`'s stdin.
    pub fn close_stdin(&self, id: ProcessId) {
        if let Some(process) = self.process(id) {
            process.close_stdin();
        }
    }

    /// Sends `signal` to process `id`.
    pub fn signal(&self, id: ProcessId, signal: i32) {
        if let Some(process) = self.process(id) {
            if let Err(e) = process.signal(signal) {
                crate::console::log(&format!("process {id}: signal {signal}: {e}"));
            }
        }
    }

    /// Resizes process `id`'s terminal.
    pub fn resize(&self, id: ProcessId, size: TtySize) {
        if let Some(process) = self.process(id) {
            if let Err(e) = process.resize(size) {
                crate::console::log(&format!("process {id}: resize: {e}"));
            }
        }
    }

    /// Kills every container (SIGKILL to each init, which takes its pid namespace).
    pub fn kill_all(&self) {
        if let Some(prepared) = self.prepared_slot().take() {
            prepared.discard();
        }
        for container in self.containers().values() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(container.init_pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Sends SIGTERM to every process of every container (each init only, without
    /// cgroups). A container's init takes it only if it handles it (pid namespace
    /// rule); a container made ahead of its Run is left to [`Agent::kill_all`].
    pub fn terminate_all(&self) {
        let term = nix::sys::signal::Signal::SIGTERM;
        for container in self.containers().values() {
            match &container.cgroup {
                Some(cgroup) => cgroup.signal_all(term),
                None => {
                    let init = nix::unistd::Pid::from_raw(container.init_pid);
                    let _ = nix::sys::signal::kill(init, term);
                }
            }
        }
    }

    /// How many containers are running.
    pub fn container_count(&self) -> usize {
        self.containers().len()
    }
}
