//! Pools of parked sandboxes, so that `husk run` need not start a VM.
//!
//! `husk pool add IMAGE --size K` starts K sandboxes of an image the way `husk run`
//! would (from its image template: restored, agent ready, the container made ahead)
//! and *parks* them: each is a detached sandbox's monitor (`husk __monitor`) with no
//! main process, waiting on its control socket. A `husk run` whose sandbox would be
//! one of them (same image, kernel, vCPUs and memory; no network, disk, volume, rate,
//! console or timeout) claims one instead of starting its own: it sends its command as
//! an `Exec`, which the monitor runs as the sandbox's main process in a container of
//! its own (the first `Exec` wins; another client is told the sandbox is claimed and
//! tries the next). Output streams as for `husk exec`. When the command exits, the
//! client has its exit status at once and the monitor tears the sandbox down on its
//! own, then starts a replacement in the background. A claimed sandbox whose client
//! goes away is stopped (and replaced). A `husk run` that finds no parked sandbox free
//! starts one of its own, then tops the pool up.
//!
//! Pools live in `<root>/.pool/<key>/` (the detached root, see [`super::root`]; `husk
//! ps` does not list them): `pool.json` ([`PoolFile`]) and one folder per parked
//! sandbox, laid out as any detached sandbox's. The key is a digest of the
//! [`PoolSpec`]. A pool made by another kernel, agent or husk binary (their file
//! stamps differ) is stale: a claim drains it and refills it instead.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::client::{launch_in, spawn_monitor, Control};
use super::control::CLAIMED;
use super::{generate_name, io_err, root, DetachedError, Request, SandboxDir, Status};
use crate::sandbox::{ContainerLimits, RunSpec, SandboxImage};

/// The folder of every pool, under the detached root.
const POOLS: &str = ".pool";
/// A pool's description, in its folder.
const POOL_FILE: &str = "pool.json";
/// How long `husk pool rm` waits for a parked sandbox's monitor to end.
const REMOVE_WAIT: Duration = Duration::from_secs(30);

/// What every sandbox of a pool is: what a `husk run` must ask for to claim one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// The image.
    pub image: SandboxImage,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// vCPUs.
    pub cpus: u8,
    /// The container's memory limit in MiB (the VM has 64 MiB more).
    pub memory_mib: u64,
}

impl PoolSpec {
    /// The pool's key: 12 hex digits of the spec's digest.
    pub fn key(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        crate::digest::hex(&Sha256::digest(&json))[..12].to_string()
    }

    /// The monitor request of one parked sandbox.
    fn request(&self, name: String, image_ref: &str) -> Request {
        Request {
            name,
            image_ref: image_ref.to_string(),
            image: self.image.clone(),
            kernel: self.kernel.clone(),
            cpus: self.cpus,
            memory_mib: self.memory_mib + 64,
            network: false,
            nat: None,
            publish: Vec::new(),
            scratch_disk_mib: None,
            volumes: Vec::new(),
            disk_rate: None,
            net_rate: None,
            net_vhost: false,
            console: None,
            spec: RunSpec {
                limits: ContainerLimits {
                    memory_bytes: Some(self.memory_mib << 20),
                    ..Default::default()
                },
                ..RunSpec::default()
            },
            remove_on_exit: true,
            timeout: None,
            warm: true,
            prepared: true,
            restore: None,
            parked: true,
        }
    }
}

/// `pool.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFile {
    /// The image as the user named it.
    pub image_ref: String,
    /// The sandboxes.
    pub spec: PoolSpec,
    /// How many to keep parked.
    pub size: usize,
    /// What the parked sandboxes were started by: file stamps of the kernel, the agent
    /// and the husk binary.
    pub made_by: Vec<(String, Option<String>)>,
}

/// The file stamps a pool's sandboxes depend on, named.
fn made_by(spec: &PoolSpec, husk: &Path) -> Vec<(String, Option<String>)> {
    let agent = crate::sandbox::agent::agent_binary().ok();
    let stamp = |p: &Path| crate::digest::file_stamp(p);
    vec![
        ("kernel".into(), stamp(&spec.kernel)),
        ("agent".into(), agent.as_deref().and_then(stamp)),
        ("husk".into(), stamp(husk)),
    ]
}

/// A pool's folder and description.
#[derive(Debug, Clone)]
pub struct Pool {
    /// Its key.
    pub key: String,
    /// Its folder.
    pub path: PathBuf,
    /// `pool.json`.
    pub file: PoolFile,
}

/// How a claim went.
pub enum Claim {
    /// No pool for this spec.
    NoPool,
    /// The pool has no parked sandbox free.
    Empty(Pool),
    /// The pool was made by another kernel, agent or husk (which one): drained.
    Stale(Pool, String),
    /// A parked sandbox now runs the command: stream it with [`Control::stream`].
    Claimed {
        /// The pool.
        pool: Pool,
        /// The claim's connection.
        control: Box<Control>,
        /// When the connection to the parked sandbox's monitor was made.
        connected: Instant,
    },
}

fn pools_root() -> PathBuf {
    root().join(POOLS)
}

impl Pool {
    /// The pool of `spec`, if there is one.
    pub fn find(spec: &PoolSpec) -> Result<Option<Self>, DetachedError> {
        let key = spec.key();
        let path = pools_root().join(&key);
        if !path.join(POOL_FILE).is_file() {
            return Ok(None);
        }
        Self::open(key, path).map(Some)
    }

    fn open(key: String, path: PathBuf) -> Result<Self, DetachedError> {
        let file_path = path.join(POOL_FILE);
        let text = fs::read_to_string(&file_path).map_err(io_err("cannot read", &file_path))?;
        let file = serde_json::from_str(&text).map_err(|e| {
            io_err("corrupt", &file_path)(io::Error::new(io::ErrorKind::InvalidData, e))
        })?;
        Ok(Self { key, path, file })
    }

    /// Every pool.
    pub fn list() -> Result<Vec<Self>, DetachedError> {
        let mut pools: Vec<Self> = super::named_entries(&pools_root())?
            .into_iter()
            .filter_map(|(key, path)| Self::open(key, path).ok())
            .collect();
        pools.sort_by(|a, b| a.file.image_ref.cmp(&b.file.image_ref));
        Ok(pools)
    }

    /// The pool's sandbox folders, with their status (`None`: not written yet). Folders
    /// of sandboxes that ended without removing them (a start that failed, a monitor
    /// that was killed) are removed on the way; a failed start is logged as a warning.
    fn sandboxes(&self) -> Vec<(SandboxDir, Option<Status>)> {
        let Ok(entries) = fs::read_dir(&self.path) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let dir = SandboxDir {
                    name,
                    path: e.path(),
                };
                let state = dir.state().ok();
                if let Some(state) = state.as_ref().filter(|s| ended(s)) {
                    if let Status::Failed { message } = &state.status {
                        log::warn!(
                            "a parked sandbox of {} failed: {message}",
                            self.file.image_ref
                        );
                    }
                    drop(dir.remove());
                    return None;
                }
                Some((dir, state.map(|s| s.status)))
            })
            .collect()
    }

    /// Parked sandboxes whose monitor answers.
    pub fn parked(&self) -> usize {
        self.sandboxes()
            .iter()
            .filter(|(dir, status)| *status == Some(Status::Parked) && dir.is_running())
            .count()
    }

    /// Sandboxes parked or on their way (a claimed one is neither).
    fn coming(&self) -> usize {
        self.sandboxes()
            .iter()
            .filter(|(_, status)| matches!(status, None | Some(Status::Starting | Status::Parked)))
            .count()
    }

    fn new_dir(&self) -> Result<SandboxDir, DetachedError> {
        loop {
            let name = generate_name();
            let path = self.path.join(&name);
            match fs::create_dir(&path) {
                Ok(()) => return Ok(SandboxDir { name, path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("cannot create", &path)(e)),
            }
        }
    }

    /// Start parked sandboxes until `size` are parked or coming, each in the
    /// background; how many were started.
    pub fn refill(&self, husk: &Path) -> Result<usize, DetachedError> {
        let missing = self.file.size.saturating_sub(self.coming());
        for _ in 0..missing {
            let dir = self.new_dir()?;
            let request = self
                .file
                .spec
                .request(dir.name.clone(), &self.file.image_ref);
            // Not waited for: it parks on its own, or records why it failed.
            drop(spawn_monitor(&dir, &request, husk, false)?);
        }
        Ok(missing)
    }

    /// Stop every parked sandbox (claimed ones run on and remove themselves).
    fn drain(&self) {
        self.stop_parked(usize::MAX, false);
    }

    /// Stop up to `n` parked sandboxes; with `wait`, until each is gone.
    fn stop_parked(&self, n: usize, wait: bool) {
        let parked = self
            .sandboxes()
            .into_iter()
            .filter(|(_, status)| *status == Some(Status::Parked));
        for (dir, _) in parked.take(n) {
            if let Ok(mut control) = Control::connect_at(&dir.control_socket(), &dir.name) {
                drop(control.shutdown());
                if wait {
                    control.wait_gone(REMOVE_WAIT);
                }
            }
        }
    }

    fn write(&self) -> Result<(), DetachedError> {
        let path = self.path.join(POOL_FILE);
        let json = serde_json::to_vec_pretty(&self.file).map_err(|e| {
            io_err("cannot encode", &path)(io::Error::new(io::ErrorKind::InvalidData, e))
        })?;
        crate::digest::write_atomically(&path, &json).map_err(io_err("cannot write", &path))
    }
}

/// Refill the pool that the parked sandbox folder `dir` was in, if the pool is still
/// there (its monitor calls this when its claimed sandbox has ended).
pub(super) fn refill_pool_of(dir: &Path) {
    let Some(path) = dir.parent().filter(|p| p.join(POOL_FILE).is_file()) else {
        return;
    };
    let key = path
        .file_name()
        .map(|k| k.to_string_lossy().into_owned())
        .unwrap_or_default();
    let refilled = Pool::open(key, path.to_path_buf()).and_then(|pool| {
        let husk = std::env::current_exe().map_err(io_err("cannot find", Path::new("husk")))?;
        pool.refill(&husk)
    });
    if let Err(e) = refilled {
        log::warn!("the pool in {} was not refilled: {e}", path.display());
    }
}

/// Whether a parked sandbox's folder outlived it: its monitor recorded an end, or is gone.
fn ended(state: &super::State) -> bool {
    let monitor_gone = !Path::new("/proc")
        .join(state.monitor_pid.to_string())
        .exists();
    match state.status {
        Status::Starting | Status::Parked | Status::Running | Status::Paused => monitor_gone,
        Status::Exited { .. } | Status::Stopped { .. } | Status::Failed { .. } => true,
    }
}

/// `husk pool add`: make (or resize) the pool of `spec` and start its sandboxes,
/// `progress` told of each as it parks; returns the pool.
pub fn add(
    image_ref: &str,
    spec: PoolSpec,
    size: usize,
    husk: &Path,
    progress: &mut dyn FnMut(usize, usize, Duration),
) -> Result<Pool, DetachedError> {
    let key = spec.key();
    let path = pools_root().join(&key);
    fs::create_dir_all(&path).map_err(io_err("cannot create", &path))?;
    let pool = Pool {
        key,
        path,
        file: PoolFile {
            image_ref: image_ref.to_string(),
            made_by: made_by(&spec, husk),
            spec,
            size,
        },
    };
    pool.write()?;
    // A smaller size: the parked sandboxes beyond it go.
    let extra = pool.coming().saturating_sub(size);
    pool.stop_parked(extra, true);
    let missing = size.saturating_sub(pool.coming());
    for n in 1..=missing {
        let began = Instant::now();
        let dir = pool.new_dir()?;
        let request = pool.file.spec.request(dir.name.clone(), image_ref);
        if let Err(e) = launch_in(&dir, &request, husk) {
            drop(dir.remove());
            return Err(e);
        }
        progress(n, missing, began.elapsed());
    }
    Ok(pool)
}

/// `husk pool rm`: stop the pool's parked sandboxes, wait for them, remove its folder.
pub fn remove(pool: &Pool) -> Result<(), DetachedError> {
    // No refill from now on: a claim finds no pool.
    let file = pool.path.join(POOL_FILE);
    fs::remove_file(&file).map_err(io_err("cannot remove", &file))?;
    for (dir, _) in pool.sandboxes() {
        if let Ok(mut control) = Control::connect_at(&dir.control_socket(), &dir.name) {
            drop(control.shutdown());
            control.wait_gone(REMOVE_WAIT);
        }
    }
    // A claimed sandbox removes its own folder when its command ends; the rest goes.
    for (dir, status) in pool.sandboxes() {
        if status != Some(Status::Running) || !dir.is_running() {
            drop(dir.remove());
        }
    }
    match fs::remove_dir(&pool.path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("cannot remove", &pool.path)(e)),
    }
}

/// Claim a parked sandbox of `spec`'s pool for `run` (see the module's doc); `husk`
/// is this husk binary (what a stale pool is checked against).
pub fn claim(spec: &PoolSpec, run: &RunSpec, husk: &Path) -> Result<Claim, DetachedError> {
    claim_with(spec, husk, |control| control.begin_exec(run))
}

/// `husk run -d` through the pool of `spec`: a parked sandbox becomes the detached
/// sandbox `adopt` (a [`husk_protocol::Message::Adopt`]) names, running its command (see
/// `super::adopt`). `Claimed` means it did; its connection is no longer needed.
pub fn adopt(
    spec: &PoolSpec,
    adopt: &husk_protocol::Message,
    husk: &Path,
) -> Result<Claim, DetachedError> {
    claim_with(spec, husk, |control| control.request(adopt).map(drop))
}

/// Offers `offer` to the pool's parked sandboxes in turn until one takes it.
fn claim_with(
    spec: &PoolSpec,
    husk: &Path,
    mut offer: impl FnMut(&mut Control) -> Result<(), DetachedError>,
) -> Result<Claim, DetachedError> {
    let Some(mut pool) = Pool::find(spec)? else {
        return Ok(Claim::NoPool);
    };
    let now = made_by(spec, husk);
    if let Some((what, _)) = now
        .iter()
        .zip(&pool.file.made_by)
        .find(|(a, b)| a != b)
        .map(|(a, _)| a)
    {
        let what = what.clone();
        pool.drain();
        pool.file.made_by = now;
        pool.write()?;
        return Ok(Claim::Stale(pool, what));
    }
    for (dir, status) in pool.sandboxes() {
        if status != Some(Status::Parked) {
            continue;
        }
        let Ok(mut control) = Control::connect_at(&dir.control_socket(), &dir.name) else {
            continue;
        };
        let connected = Instant::now();
        match offer(&mut control) {
            Ok(()) => {
                let control = Box::new(control);
                return Ok(Claim::Claimed {
                    pool,
                    control,
                    connected,
                });
            }
            Err(DetachedError::Exec(message)) if message == CLAIMED => continue,
            // The command itself was refused (no such executable, ...): the user's
            // error, from a sandbox as `husk run` would have made.
            Err(e @ DetachedError::Exec(_)) => return Err(e),
            Err(e) => log::debug!("parked sandbox {}: {e}", dir.name),
        }
    }
    Ok(Claim::Empty(pool))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cpus: u8) -> PoolSpec {
        PoolSpec {
            image: SandboxImage::default(),
            kernel: PathBuf::from("/k"),
            cpus,
            memory_mib: 256,
        }
    }

    #[test]
    fn the_key_names_the_spec() {
        assert_eq!(spec(1).key(), spec(1).key());
        assert_ne!(spec(1).key(), spec(2).key());
        assert_eq!(spec(1).key().len(), 12);
    }

    fn state(status: Status, monitor_pid: u32) -> crate::detached::State {
        crate::detached::State {
            name: "p".into(),
            image: "busybox".into(),
            command: Vec::new(),
            created: 0,
            monitor_pid,
            status,
        }
    }

    #[test]
    fn a_folder_has_outlived_its_sandbox_when_it_ended_or_its_monitor_is_gone() {
        let me = std::process::id();
        // Beyond the kernel's pid limit (4194304 at most): never a process.
        let gone = 5_000_000;
        assert!(!ended(&state(Status::Parked, me)));
        assert!(!ended(&state(Status::Starting, me)));
        assert!(ended(&state(Status::Parked, gone)));
        assert!(ended(&state(Status::Running, gone)));
        let failed = Status::Failed {
            message: "no kernel".into(),
        };
        assert!(ended(&state(failed, me)));
    }

    #[test]
    fn a_parked_request_has_no_main_and_removes_itself() {
        let request = spec(2).request("p".into(), "busybox");
        assert!(request.parked && request.remove_on_exit && request.warm && request.prepared);
        assert_eq!(request.memory_mib, 256 + 64);
        assert_eq!(request.spec.limits.memory_bytes, Some(256 << 20));
        assert!(request.spec.args.is_empty() && !request.network);
    }
}
