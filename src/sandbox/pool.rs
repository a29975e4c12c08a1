//! A pool of pre-spawned, API-ready `husk vmm` processes, for a program that starts many
//! sandboxes (a CI runner): a sandbox whose config names the pool takes a waiting VMM
//! and its runtime folder instead of spawning one, and a thread of the pool's own
//! spawns the next in the background. The VMMs are jailed (as root) for the files of
//! the pool's prototype config; a sandbox whose files differ spawns its own. Dropping
//! the pool ends the VMMs still waiting (their lifeline pipes close) and its thread.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::jailing::{self, VmmJail};
use super::vmm_process::VmmProcess;
use super::{SandboxConfig, SandboxError};

/// How long the pool waits after a failed spawn before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A waiting VMM and the runtime folder it listens in.
pub(crate) struct Pooled {
    /// The folder: becomes the sandbox's runtime folder.
    pub runtime: tempfile::TempDir,
    /// The VMM, not yet given a VM.
    pub vm: VmmProcess,
}

struct State {
    ready: VecDeque<Pooled>,
    closed: bool,
}

struct Shared {
    size: usize,
    parent: PathBuf,
    /// The config the VMMs are jailed for (its console aside).
    prototype: SandboxConfig,
    initrd: PathBuf,
    state: Mutex<State>,
    changed: Condvar,
}

/// K `husk vmm` processes kept spawned and listening (see the module's doc).
pub struct VmmPool {
    shared: Arc<Shared>,
    filler: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for VmmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmmPool")
            .field("size", &self.shared.size)
            .field("ready", &self.ready())
            .finish()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn_one(&self) -> Result<Pooled, SandboxError> {
        let runtime = tempfile::Builder::new()
            .prefix("husk-pool-")
            .tempdir_in(&self.parent)
            .map_err(|source| SandboxError::Runtime {
                dir: self.parent.clone(),
                source,
            })?;
        let jail = VmmJail::for_sandbox(&self.prototype, runtime.path(), &self.initrd, Vec::new())?;
        let vm = VmmProcess::spawn(runtime.path(), "husk-pooled", jail)?;
        Ok(Pooled { runtime, vm })
    }

    /// Keep `size` VMMs ready until the pool closes.
    fn fill(&self) {
        loop {
            {
                let mut state = self.lock();
                while !state.closed && state.ready.len() >= self.size {
                    state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                if state.closed {
                    return;
                }
            }
            match self.spawn_one() {
                Ok(pooled) => {
                    self.lock().ready.push_back(pooled);
                    self.changed.notify_all();
                }
                Err(e) => {
                    log::warn!("VMM pool: {}", crate::error_chain(&e));
                    let state = self.lock();
                    drop(self.changed.wait_timeout(state, RETRY_AFTER));
                }
            }
        }
    }
}

impl VmmPool {
    /// A pool that keeps `size` VMMs ready for sandboxes like `prototype` (its kernel,
    /// image, agent, runtime parent), each in a runtime folder of its own.
    pub fn new(size: usize, prototype: &SandboxConfig) -> Result<Self, SandboxError> {
        let mut prototype = prototype.clone().with_absolute_paths()?;
        prototype.console = crate::config::ConsoleConfig::Off;
        prototype.pool = None;
        let initrd = super::agent_initrd(&prototype)?;
        let shared = Arc::new(Shared {
            size,
            parent: prototype
                .runtime_parent
                .clone()
                .unwrap_or_else(super::connect::runtime_root),
            prototype,
            initrd,
            state: Mutex::new(State {
                ready: VecDeque::new(),
                closed: false,
            }),
            changed: Condvar::new(),
        });
        let filling = shared.clone();
        let filler = std::thread::Builder::new()
            .name("husk-vmm-pool".into())
            .spawn(move || filling.fill())
            .map_err(|e| SandboxError::Vmm(format!("cannot start the VMM pool's thread: {e}")))?;
        Ok(Self {
            shared,
            filler: Some(filler),
        })
    }

    /// How many VMMs wait now.
    pub fn ready(&self) -> usize {
        self.shared.lock().ready.len()
    }

    /// Block until `n` VMMs wait (at most the pool's size), or `timeout` passed;
    /// whether they do.
    pub fn wait_ready(&self, n: usize, timeout: Duration) -> bool {
        let n = n.min(self.shared.size);
        let state = self.shared.lock();
        let (state, _) = self
            .shared
            .changed
            .wait_timeout_while(state, timeout, |s| s.ready.len() < n)
            .unwrap_or_else(|e| e.into_inner());
        state.ready.len() >= n
    }

    /// A waiting VMM whose process still runs and whose jail serves `config` (with the
    /// agent `initrd`), if one is ready; the pool makes another.
    pub(crate) fn take(&self, config: &SandboxConfig, initrd: &Path) -> Option<Pooled> {
        let fits = match self.shared.lock().ready.front().map(|p| p.vm.jail()) {
            Some(Some(jail)) => jail.serves(config, initrd),
            Some(None) => !jailing::jails(config),
            None => return None,
        };
        if !fits {
            return None;
        }
        let mut state = self.shared.lock();
        let taken = loop {
            match state.ready.pop_front() {
                Some(p) if p.vm.is_running() => break Some(p),
                Some(_) => continue,
                None => break None,
            }
        };
        drop(state);
        self.shared.changed.notify_all();
        taken
    }
}

impl Drop for VmmPool {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
        if let Some(filler) = self.filler.take() {
            drop(filler.join());
        }
        // The waiting VMMs go with their handles: each sees its lifeline close.
        self.shared.lock().ready.clear();
    }
}
