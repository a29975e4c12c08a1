//! Starting a sandbox: its runtime folder, agent initramfs, volumes and VM, then the
//! [`Sandbox`] assembled around the launched VM and agent connection (also by a
//! restore, `persist`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use husk_protocol::ProcessId;

use super::connect::{new_id, runtime_root, watch_vm};
use super::timings::Marks;
use super::{
    agent, demux, launch, scratch, volumes, Nat, Process, Publish, Sandbox, SandboxBuilder,
    SandboxConfig, SandboxError, SandboxImage, Sink, Template, Volume,
};

/// A sandbox's NAT and published ports, as configured.
#[derive(Debug, Clone, Default)]
pub(super) struct NetRequest {
    pub(super) nat: Option<Nat>,
    pub(super) publish: Vec<Publish>,
}

/// What a sandbox is made of besides its VM and agent connection.
pub(super) struct Assembly {
    pub(super) id: String,
    pub(super) image: SandboxImage,
    pub(super) runtime: tempfile::TempDir,
    pub(super) scratch: Option<PathBuf>,
    pub(super) marks: Marks,
    pub(super) containers: u32,
    pub(super) container_env: HashMap<String, Vec<String>>,
    pub(super) graceful_stop: bool,
    pub(super) net_request: NetRequest,
    pub(super) shares: volumes::Shares,
}

/// The sandbox's runtime folder (sockets, scratch disk), removed when it ends.
pub(super) fn runtime_dir(
    config: &SandboxConfig,
    id: &str,
) -> Result<tempfile::TempDir, SandboxError> {
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
        config.volumes.iter().try_for_each(Volume::validate)?;
        // A pooled VMM comes with its runtime folder, already listening in it. A
        // sandbox with volumes gets a VMM of its own: its daemons' sockets are handed to
        // that VMM's jail as it starts (`launch`); so does one on vhost-net, which a
        // pooled VMM was not started for.
        let own_vmm = !config.volumes.is_empty() || config.net_vhost;
        let pool = config.pool.as_ref().filter(|_| !own_vmm);
        let pooled = pool.and_then(|p| p.take(&config, &initrd));
        // The pool spawns the next VMM once this sandbox has ended (or failed to start).
        let (runtime, pooled_vm, lease) = match pooled {
            Some(pooled) => (pooled.runtime, Some(pooled.vm), pooled.lease),
            None => (runtime_dir(&config, &id)?, None, None),
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
        let sandbox = Self::assemble(parts, launched, Vec::new())?.0;
        *sandbox.lease.lock().unwrap_or_else(|e| e.into_inner()) = lease;
        Ok(sandbox)
    }

    /// A sandbox around a launched VM, with routes for `adopt`ed processes that already
    /// run in it (a restored snapshot's).
    pub(super) fn assemble(
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
                prepared: false,
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
            lease: Mutex::new(None),
        };
        Ok((sandbox, processes))
    }
}
