//! Pools for a program that starts many sandboxes (a CI runner). [`VmmPool`]:
//! pre-spawned, API-ready `husk vmm` processes: a sandbox whose config names the pool
//! takes a waiting VMM and its runtime folder instead of spawning one, and once that
//! sandbox has ended (so a spawn never competes with a sandbox's start or job for the
//! CPUs; the pool's size is the sandboxes run at once), a thread of the pool's own
//! spawns the next in the background. The VMMs are jailed (as root) for the files of
//! the pool's prototype config; a sandbox whose files differ spawns its own. Dropping
//! the pool ends the VMMs still waiting (their lifeline pipes close) and its thread.
//! [`SandboxPool`]: whole sandboxes started ahead. Both keep their stock with
//! [`super::stock::Stock`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::jailing::{self, VmmJail};
use super::stock::{Lease, Stock};
use super::vmm_process::VmmProcess;
use super::{Sandbox, SandboxConfig, SandboxError};

/// A waiting VMM and the runtime folder it listens in.
pub(crate) struct Pooled {
    /// The folder: becomes the sandbox's runtime folder.
    pub runtime: tempfile::TempDir,
    /// The VMM, not yet given a VM.
    pub vm: VmmProcess,
    /// Held until the sandbox that took it has ended; then the pool spawns the next.
    pub lease: Option<Lease>,
}

/// K `husk vmm` processes kept spawned and listening (see the module's doc).
pub struct VmmPool {
    stock: Stock<Pooled>,
}

impl std::fmt::Debug for VmmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmmPool")
            .field("ready", &self.ready())
            .finish()
    }
}

fn spawn_one(
    parent: &Path,
    prototype: &SandboxConfig,
    initrd: &Path,
) -> Result<Pooled, SandboxError> {
    let runtime = tempfile::Builder::new()
        .prefix("husk-pool-")
        .tempdir_in(parent)
        .map_err(|source| SandboxError::Runtime {
            dir: parent.to_path_buf(),
            source,
        })?;
    let jail = VmmJail::for_sandbox(prototype, runtime.path(), initrd, Vec::new())?;
    let vm = VmmProcess::spawn(runtime.path(), "husk-pooled", jail, false)?;
    Ok(Pooled {
        runtime,
        vm,
        lease: None,
    })
}

impl VmmPool {
    /// A pool that keeps `size` VMMs for sandboxes like `prototype` (its kernel, image,
    /// agent, runtime parent), each in a runtime folder of its own: those waiting and
    /// those whose sandboxes still run, together.
    pub fn new(size: usize, prototype: &SandboxConfig) -> Result<Self, SandboxError> {
        let mut prototype = prototype.clone().with_absolute_paths()?;
        prototype.console = crate::config::ConsoleConfig::Off;
        prototype.pool = None;
        let initrd = super::agent_initrd(&prototype)?;
        let parent: PathBuf = prototype
            .runtime_parent
            .clone()
            .unwrap_or_else(super::connect::runtime_root);
        let make = Box::new(move || spawn_one(&parent, &prototype, &initrd));
        Ok(Self {
            stock: Stock::new(size, "VMM pool", "husk-vmm-pool", make)?,
        })
    }

    /// How many VMMs wait now.
    pub fn ready(&self) -> usize {
        self.stock.ready()
    }

    /// Block until `n` VMMs wait (at most the pool's size), or `timeout` passed;
    /// whether they do.
    pub fn wait_ready(&self, n: usize, timeout: Duration) -> bool {
        self.stock.wait_ready(n, timeout)
    }

    /// A waiting VMM whose process still runs and whose jail serves `config` (with the
    /// agent `initrd`), if one is ready; the pool makes another when its lease is
    /// dropped.
    pub(crate) fn take(&self, config: &SandboxConfig, initrd: &Path) -> Option<Pooled> {
        let fits = |p: &Pooled| match p.vm.jail() {
            Some(jail) => jail.serves(config, initrd),
            None => !jailing::jails(config),
        };
        let (mut pooled, lease) = self.stock.take_leased(fits, |p| p.vm.is_running())?;
        pooled.lease = Some(lease);
        Some(pooled)
    }
}

/// K sandboxes kept started, for a program that runs one job per sandbox (a CI runner):
/// each restored from its template, its agent ready and, for an image that fits one,
/// its container made ahead, so a job only sends its command. A thread of the pool's
/// own starts the next one when a taken one ends (or, with [`Refill::OnTake`], as soon
/// as one is taken). Dropping the pool stops the sandboxes still waiting.
pub struct SandboxPool {
    stock: Stock<Sandbox>,
    refill: Refill,
}

/// When a [`SandboxPool`] starts the replacement of a sandbox taken from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Refill {
    /// When the taken sandbox has stopped (or was dropped): the pool holds K sandboxes,
    /// waiting and taken together, and a start never competes with the job of the
    /// sandbox it replaces for the host's CPUs. For hosts with few CPUs, or K equal to
    /// the jobs run at once.
    #[default]
    AfterEnd,
    /// As soon as one is taken: K wait whatever is taken, and the start runs beside
    /// the job. For hosts with CPUs to spare.
    OnTake,
}

impl std::fmt::Debug for SandboxPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxPool")
            .field("ready", &self.ready())
            .finish()
    }
}

impl SandboxPool {
    /// A pool that keeps `size` sandboxes of `config` started (each as
    /// [`Sandbox::start`] would start it, so from its template unless `config` says
    /// otherwise), waiting and taken together: [`Refill::AfterEnd`].
    pub fn new(size: usize, config: &SandboxConfig) -> Result<Self, SandboxError> {
        Self::with_refill(size, config, Refill::AfterEnd)
    }

    /// [`SandboxPool::new`] with the replacement of a taken sandbox started `refill`.
    pub fn with_refill(
        size: usize,
        config: &SandboxConfig,
        refill: Refill,
    ) -> Result<Self, SandboxError> {
        let config = config.clone().with_absolute_paths()?;
        let make = Box::new(move || Sandbox::start(config.clone()));
        Ok(Self {
            stock: Stock::new(size, "sandbox pool", "husk-sandbox-pool", make)?,
            refill,
        })
    }

    /// How many sandboxes wait now.
    pub fn ready(&self) -> usize {
        self.stock.ready()
    }

    /// Block until `n` sandboxes wait (at most the pool's size), or `timeout` passed;
    /// whether they do.
    pub fn wait_ready(&self, n: usize, timeout: Duration) -> bool {
        self.stock.wait_ready(n, timeout)
    }

    /// A started sandbox whose VM still runs, if one waits; the pool starts another
    /// (see [`Refill`]). Use it as one from [`Sandbox::start`]; stop it (or drop it)
    /// when its job is done.
    pub fn take(&self) -> Option<Sandbox> {
        match self.refill {
            Refill::OnTake => self.stock.take(|_| true, Sandbox::is_running),
            Refill::AfterEnd => {
                let (sandbox, lease) = self.stock.take_leased(|_| true, Sandbox::is_running)?;
                *sandbox.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease);
                Some(sandbox)
            }
        }
    }
}
