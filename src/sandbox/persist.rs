//! A whole sandbox kept and brought back: its VM (a snapshot), its writable layer (the
//! scratch disk, copied), and what the host knew of it (image, containers and their
//! environment). Pause and resume, snapshot and restore, and fork (a snapshot restored
//! at once as a second sandbox) are built on it.
//!
//! ```text
//! DIR/sandbox.json   SandboxSnapshot (below)
//! DIR/vm/            the VM's snapshot (state, memory)
//! DIR/scratch.img    the scratch disk, when the sandbox has one
//! ```
//! A restored sandbox is a new sandbox: its own id, hostname, runtime folder, vsock
//! socket, TAP, MAC and address (when it has a network), and a generation of its own
//! (see `Message::Restored`). Its containers' processes run on; the caller adopts the
//! ones it wants to wait for ([`RestoreSandbox::adopt`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_protocol::{ProcessId, WritableLayer};
use serde::{Deserialize, Serialize};

use super::launch::{self, LaunchPaths, Origin};
use super::vmm_process::VmmProcess;
use super::{
    agent_initrd, new_id, runtime_dir, Assembly, Marks, Process, Sandbox, SandboxConfig,
    SandboxError, SandboxImage, Sink,
};
use crate::config::ConsoleConfig;
use crate::snapshot;
use crate::snapshot::files::copy_sparse;

/// The sandbox description's file in a snapshot folder.
pub const SANDBOX_FILE: &str = "sandbox.json";
/// The VM snapshot's folder in a snapshot folder.
pub const VM_DIR: &str = "vm";
/// The scratch disk's copy in a snapshot folder.
pub const SCRATCH_FILE: &str = "scratch.img";
/// The layout of `sandbox.json`.
const FORMAT: u32 = 1;

/// What the host knew of a sandbox when it was saved (`sandbox.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSnapshot {
    /// The layout version ([`FORMAT`]).
    pub format: u32,
    /// The saved sandbox's id (its containers are named after it).
    pub id: String,
    /// The image; its filesystem file must still be in the image store.
    pub image: SandboxImage,
    /// The guest kernel (for error reports; it is in the VM's memory).
    pub kernel: PathBuf,
    /// vCPUs.
    pub cpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Whether it had a network card on a TAP.
    pub network: bool,
    /// Whether that card was on the host kernel's vhost-net.
    #[serde(default)]
    pub net_vhost: bool,
    /// Its NAT (`--net nat`), if any.
    #[serde(default)]
    pub nat: Option<super::Nat>,
    /// Its published ports.
    #[serde(default)]
    pub publish: Vec<super::Publish>,
    /// Whether `scratch.img` holds its writable layers.
    pub scratch: bool,
    /// Containers started so far (new ones are numbered on from here).
    pub containers: u32,
    /// Each running container's environment, for `exec`.
    pub container_env: HashMap<String, Vec<String>>,
}

/// How a sandbox snapshot was made.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotReport {
    /// Bytes of guest memory the snapshot holds (non-zero pages).
    pub memory_written: u64,
    /// How long the VM's state and memory took to write, in ms.
    pub vm_ms: f64,
    /// How the scratch disk was copied, if there is one.
    pub scratch: Option<snapshot::files::Copied>,
    /// The whole snapshot, pause to resume.
    pub total: Duration,
}

/// How to bring a sandbox snapshot back.
pub struct RestoreSandbox {
    /// Where the guest console goes.
    pub console: ConsoleConfig,
    /// Where the runtime folder is made (see [`SandboxConfig::runtime_parent`]).
    pub runtime_parent: Option<PathBuf>,
    /// How long the agent may take to answer.
    pub timeout: Duration,
    /// Processes that run in the snapshot to wait for: id, container, stdout, stderr.
    pub adopt: Vec<(ProcessId, String, Sink, Sink)>,
    /// The ports to publish (`None`: the saved sandbox's; a fork publishes none, its
    /// original holds them).
    pub publish: Option<Vec<super::Publish>>,
}

impl Default for RestoreSandbox {
    fn default() -> Self {
        Self {
            console: ConsoleConfig::Off,
            runtime_parent: None,
            timeout: Duration::from_secs(600),
            adopt: Vec::new(),
            publish: None,
        }
    }
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError {
    let what = format!("{what} {}", path.display());
    move |e| SandboxError::Template(format!("{what}: {e}"))
}

impl Sandbox {
    /// Stop the guest (every vCPU parks) until [`Sandbox::resume`]; processes in it
    /// stop running, their host side waits.
    pub fn pause(&self) -> Result<(), SandboxError> {
        self.shares.refuse("pause")?;
        let vm = self.vm();
        vm.as_ref().ok_or_else(stopped)?.set_paused(true)
    }

    /// Let a paused guest run again.
    pub fn resume(&self) -> Result<(), SandboxError> {
        let vm = self.vm();
        vm.as_ref().ok_or_else(stopped)?.set_paused(false)
    }

    /// Whether the guest is paused.
    pub fn is_paused(&self) -> bool {
        self.vm().as_ref().is_some_and(|vm| vm.is_paused())
    }

    /// Save this sandbox into the new folder `dir`: its VM, scratch disk and what the
    /// host knows of it; it is paused meanwhile and goes on after. Restore it with
    /// [`Sandbox::restore`], from any process, as long as the image stays in the store.
    pub fn snapshot(&self, dir: &Path) -> Result<SnapshotReport, SandboxError> {
        self.snapshot_to(dir, true)
    }

    /// [`Sandbox::snapshot`], synced to disk or not (a fork's snapshot is read once
    /// right away).
    pub(crate) fn snapshot_to(
        &self,
        dir: &Path,
        durable: bool,
    ) -> Result<SnapshotReport, SandboxError> {
        self.shares.refuse("snapshot or fork")?;
        let started = Instant::now();
        let vm = self.vm();
        let vm = vm.as_ref().ok_or_else(stopped)?;
        std::fs::create_dir(dir).map_err(io("cannot create", dir))?;
        let was_paused = vm.is_paused();
        if !was_paused {
            vm.set_paused(true)?;
        }
        let result = self.write_snapshot(vm, dir, durable);
        if !was_paused {
            vm.set_paused(false)?;
        }
        let (created, scratch) = result?;
        Ok(SnapshotReport {
            memory_written: created["memory_written"].as_u64().unwrap_or(0),
            vm_ms: created["save_state_ms"].as_f64().unwrap_or(0.0)
                + created["write_memory_ms"].as_f64().unwrap_or(0.0),
            scratch,
            total: started.elapsed(),
        })
    }

    /// The paused VM, its scratch disk and the description, into `dir`.
    fn write_snapshot(
        &self,
        vm: &VmmProcess,
        dir: &Path,
        durable: bool,
    ) -> Result<(serde_json::Value, Option<snapshot::files::Copied>), SandboxError> {
        let config = vm.config()?;
        let digest = config.initrd.as_deref().map(super::template::agent_digest);
        let created = vm.snapshot(&dir.join(VM_DIR), durable, digest.as_deref())?;
        let scratch = match &self.scratch {
            Some(path) => {
                let copy = dir.join(SCRATCH_FILE);
                Some(
                    copy_sparse(path, &copy)
                        .map_err(io("cannot copy the scratch disk to", &copy))?,
                )
            }
            None => None,
        };
        let description = SandboxSnapshot {
            format: FORMAT,
            id: self.id.clone(),
            image: self.image.clone(),
            kernel: config.kernel.clone(),
            cpus: config.cpus,
            memory_mib: config.memory_mib,
            network: !vm.tap_names()?.is_empty(),
            net_vhost: config.nets.iter().any(|n| n.vhost),
            nat: self.net_request.nat.clone(),
            publish: self.net_request.publish.clone(),
            scratch: self.scratch.is_some(),
            containers: self.containers.load(std::sync::atomic::Ordering::SeqCst),
            container_env: self
                .container_env
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        };
        let json = serde_json::to_vec_pretty(&description)
            .map_err(|e| SandboxError::Template(e.to_string()))?;
        let path = dir.join(SANDBOX_FILE);
        std::fs::write(&path, json).map_err(io("cannot write", &path))?;
        Ok((created, scratch))
    }

    /// Bring back the sandbox saved in `dir` as a new sandbox. Its processes run on;
    /// those in `options.adopt` are returned, in order, to wait for.
    pub fn restore(
        dir: &Path,
        options: RestoreSandbox,
    ) -> Result<(Sandbox, Vec<Process>), SandboxError> {
        let created = Instant::now();
        let path = dir.join(SANDBOX_FILE);
        let text = std::fs::read_to_string(&path).map_err(io("cannot read", &path))?;
        let saved: SandboxSnapshot = serde_json::from_str(&text)
            .map_err(|e| SandboxError::Template(format!("{}: {e}", path.display())))?;
        if saved.format != FORMAT {
            return Err(SandboxError::Template(format!(
                "{}: format {} ≠ this husk's {FORMAT}",
                path.display(),
                saved.format
            )));
        }
        let mut config = SandboxConfig::new(saved.image.clone(), saved.kernel.clone());
        config.cpus = saved.cpus;
        config.memory_mib = saved.memory_mib;
        config.network = saved.network;
        config.net_vhost = saved.net_vhost;
        config.nat = saved.nat.clone();
        config.publish = options.publish.unwrap_or_else(|| saved.publish.clone());
        config.console = options.console;
        config.boot_timeout = options.timeout;
        config.runtime_parent = options.runtime_parent;
        let id = new_id();
        let runtime = runtime_dir(&config, &id)?;
        let initrd = agent_initrd(&config)?;
        let initramfs_ready = Instant::now();
        let scratch = match saved.scratch {
            true => {
                let copy = runtime.path().join(SCRATCH_FILE);
                let from = dir.join(SCRATCH_FILE);
                copy_sparse(&from, &copy).map_err(io("cannot copy", &from))?;
                Some(copy)
            }
            false => None,
        };
        let paths = LaunchPaths {
            runtime: runtime.path(),
            initrd,
            scratch: scratch.clone(),
            hostname: format!("husk-{id}"),
            fs: Vec::new(),
        };
        let launched = launch::launch(&config, paths, Origin::Snapshot(&dir.join(VM_DIR)), None)?;
        let marks = Marks::launched(created, initramfs_ready, &launched);
        let parts = Assembly {
            id,
            image: saved.image,
            runtime,
            scratch,
            marks,
            containers: saved.containers,
            container_env: saved.container_env,
            graceful_stop: false,
            net_request: super::NetRequest {
                nat: config.nat,
                publish: config.publish,
            },
            shares: super::volumes::Shares::default(),
        };
        Sandbox::assemble(parts, launched, options.adopt)
    }

    /// A second sandbox that starts as a copy of this one: its memory, its containers'
    /// processes and its writable layer, with an identity of its own. This one runs
    /// on. Processes of the copy to wait for go in `adopt` (see [`Sandbox::restore`]).
    pub fn fork(
        &self,
        adopt: Vec<(ProcessId, String, Sink, Sink)>,
    ) -> Result<(Sandbox, Vec<Process>), SandboxError> {
        let parent = self.runtime_path.parent().map(Path::to_path_buf);
        let scratch_dir = tempfile::Builder::new()
            .prefix("husk-fork-")
            .tempdir_in(parent.clone().unwrap_or_else(std::env::temp_dir))
            .map_err(io("cannot create a folder in", &self.runtime_path))?;
        let dir = scratch_dir.path().join("snapshot");
        self.snapshot_to(&dir, false)?;
        let console = ConsoleConfig::Off;
        let options = RestoreSandbox {
            console,
            runtime_parent: parent,
            adopt,
            publish: Some(Vec::new()),
            ..RestoreSandbox::default()
        };
        // The copy maps the memory file privately; the folder can go once it runs.
        Sandbox::restore(&dir, options)
    }

    /// The writable layer's kind, for a caller that records it.
    pub fn writable_layer(&self) -> &WritableLayer {
        &self.writable_layer
    }
}

pub(super) fn stopped() -> SandboxError {
    SandboxError::Refused("the sandbox is already stopped".into())
}
