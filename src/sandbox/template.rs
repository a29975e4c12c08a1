//! Templates: a sandbox VM booted once to the point where its agent answers, and kept
//! as a snapshot, so that sandboxes start by restoring it instead of booting a kernel.
//!
//! One template per (vCPUs, guest RAM), made for the kernel and agent in use; a template
//! whose kernel or agent has changed since is stale and rebuilt (one warning). Every
//! template has the same devices, so that a sandbox's own ones can be attached at
//! restore without hotplug:
//!
//! ```text
//! vda  virtio-blk, read-only, empty   -> the sandbox's image (erofs)
//! vdb  virtio-blk, read-write, empty  -> the scratch disk (--disk), or stays empty
//! eth0 virtio-net, unplugged          -> a new TAP (--net), or stays unplugged
//! vsock (cid 3)                       -> a new socket in the sandbox's runtime folder
//! virtio-rng
//! ```
//! An empty disk has no sectors; its new file is announced with a configuration change,
//! and the agent waits until the guest sees the size (`Restored`). Templates live in
//! `<cache>/templates/<cpus>cpu-<mib>mib/` (`template.json`, `snapshot/state`,
//! `snapshot/memory`), written into a temp folder and renamed, so a crash never leaves
//! half a template.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::connect::{connect_agent, runtime_root};
use super::jailing::VmmJail;
use super::vmm_process::VmmProcess;
use super::SandboxError;
use crate::config::{ConsoleConfig, VmConfig};
use crate::devices::virtio::block::BlockConfig;
use crate::devices::virtio::net::NetConfig;
use crate::devices::virtio::vsock::VsockConfig;
use crate::snapshot::fingerprint::Expect;

/// The device list every template has (see the module documentation).
pub const DEVICES: &str = "blk,blk,net,vsock,rng";
/// The template's disk slots.
pub const IMAGE_SLOT: usize = 0;
/// The scratch disk's slot.
pub const SCRATCH_SLOT: usize = 1;
/// The network card's slot.
pub const NET_SLOT: usize = 0;
/// Bumped when what a template VM is made of changes (devices, command line) or how
/// it is kept (2: readable by jailed VMMs through the shared gid; 3: its snapshot in
/// the state format 2, with the devices' rate limiters; 4: the entropy device's
/// rate limiter in its `VmConfig`).
const SHAPE_VERSION: u32 = 4;
/// The description of a template in its folder.
const INFO_FILE: &str = "template.json";
/// The snapshot's folder in a template.
pub(super) const SNAPSHOT_DIR: &str = "snapshot";

/// What a template is made of.
#[derive(Debug, Clone)]
pub struct TemplateSpec {
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The agent initramfs.
    pub initrd: PathBuf,
    /// vCPUs.
    pub cpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// How long the template's boot may take.
    pub boot_timeout: Duration,
}

/// A template's description (`template.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateInfo {
    /// The folder name: `<cpus>cpu-<mib>mib`.
    pub name: String,
    /// What the template VM is made of ([`SHAPE_VERSION`]).
    pub shape_version: u32,
    /// The kernel it booted.
    pub kernel: PathBuf,
    /// That kernel's sha256.
    pub kernel_sha256: String,
    /// The agent's digest.
    pub agent_digest: String,
    /// vCPUs.
    pub cpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// When it was made (seconds since the epoch).
    pub created: u64,
    /// How long making it took, in ms (boot to agent, snapshot).
    pub build_ms: f64,
    /// Bytes of guest memory the snapshot holds (non-zero pages).
    pub memory_bytes: u64,
    /// An image template's image (the sha256 of its filesystem image), whose first
    /// container is made ahead in the snapshot; none for a plain template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// A template on disk, ready to restore.
#[derive(Debug, Clone)]
pub struct Template {
    pub(super) dir: PathBuf,
    pub(super) info: TemplateInfo,
}

/// The agent's digest, as the initramfs built for it is named (`agent-<digest>.cpio`).
pub fn agent_digest(initrd: &Path) -> String {
    initrd
        .file_stem()
        .and_then(|s| s.to_str())
        .map(|s| s.trim_start_matches("agent-").to_string())
        .unwrap_or_default()
}

/// Where templates live.
pub fn root() -> PathBuf {
    crate::kernel::cache_root().join("templates")
}

pub(super) fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError {
    let what = format!("{what} {}", path.display());
    move |e| SandboxError::Template(format!("{what}: {e}"))
}

impl TemplateSpec {
    /// The template's folder name.
    pub fn name(&self) -> String {
        format!("{}cpu-{}mib", self.cpus, self.memory_mib)
    }

    /// The same spec with absolute file paths (a jailed VMM sees them from its root).
    pub(super) fn absolute(&self) -> Result<Self, SandboxError> {
        Ok(Self {
            kernel: super::config::absolute(&self.kernel)?,
            initrd: super::config::absolute(&self.initrd)?,
            ..self.clone()
        })
    }

    pub(super) fn kernel_sha256(&self) -> Result<String, SandboxError> {
        crate::digest::sha256_cached(&self.kernel, &crate::kernel::cache_root().join("digests"))
            .map_err(io("cannot read the kernel", &self.kernel))
    }

    /// What a restore of this spec's template must find in its snapshot.
    fn expect(&self, kernel_sha256: &str) -> Expect {
        Expect {
            kernel_sha256: Some(kernel_sha256.to_string()),
            agent_digest: Some(agent_digest(&self.initrd)),
            memory_mib: Some(self.memory_mib),
            vcpus: Some(self.cpus),
            devices: Some(DEVICES.into()),
        }
    }
}

impl Template {
    /// The template's description.
    pub fn info(&self) -> &TemplateInfo {
        &self.info
    }

    /// The template's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The snapshot to restore.
    pub fn snapshot_dir(&self) -> PathBuf {
        self.dir.join(SNAPSHOT_DIR)
    }

    /// The template for `spec`: the one on disk if it is fresh, else a new one. A stale
    /// one (another kernel or agent) is replaced, with a warning saying why.
    pub fn ensure(spec: &TemplateSpec) -> Result<Self, SandboxError> {
        let spec = &spec.absolute()?;
        let dir = root().join(spec.name());
        let kernel_sha256 = spec.kernel_sha256()?;
        if let Some(fresh) = Self::open(&dir).ok().filter(|t| {
            t.staleness(&kernel_sha256, &agent_digest(&spec.initrd))
                .is_none()
        }) {
            return Ok(fresh);
        }
        // One builder at a time per template: sandboxes starting together (in one
        // process or several) wait for the first one's build instead of each making
        // one and replacing the others' under their feet.
        let _lock = lock(&spec.name())?;
        match Self::open(&dir) {
            Ok(t) => match t.staleness(&kernel_sha256, &agent_digest(&spec.initrd)) {
                None => return Ok(t),
                Some(why) => log::warn!("template {} is stale ({why}); rebuilding it", t.info.name),
            },
            Err(_) if !dir.exists() => {}
            Err(e) => log::warn!("template {} is unusable ({e}); rebuilding it", spec.name()),
        }
        Self::build_with(spec, &kernel_sha256)
    }

    /// Why this template does not fit the kernel and agent given, if it does not.
    pub(super) fn staleness(&self, kernel_sha256: &str, agent: &str) -> Option<String> {
        let short = |d: &str| d.chars().take(12).collect::<String>();
        if self.info.shape_version != SHAPE_VERSION {
            return Some(format!(
                "shape {} ≠ {SHAPE_VERSION}",
                self.info.shape_version
            ));
        }
        if self.info.kernel_sha256 != kernel_sha256 {
            return Some(format!(
                "kernel changed: {}… → {}…",
                short(&self.info.kernel_sha256),
                short(kernel_sha256)
            ));
        }
        if self.info.agent_digest != agent {
            return Some(format!(
                "agent changed: {} → {}",
                self.info.agent_digest, agent
            ));
        }
        None
    }

    /// Read the template in `dir`.
    pub fn open(dir: &Path) -> Result<Self, SandboxError> {
        let path = dir.join(INFO_FILE);
        let text = std::fs::read_to_string(&path).map_err(io("cannot read", &path))?;
        let info = serde_json::from_str(&text)
            .map_err(|e| SandboxError::Template(format!("{}: {e}", path.display())))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            info,
        })
    }

    /// Every template on disk (unreadable folders are skipped).
    pub fn list() -> Result<Vec<Self>, SandboxError> {
        let root = root();
        let entries = match std::fs::read_dir(&root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("cannot list", &root)(e)),
        };
        let mut templates: Vec<Self> = entries
            .filter_map(Result::ok)
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| Self::open(&e.path()).ok())
            .collect();
        templates.sort_by(|a, b| a.info.name.cmp(&b.info.name));
        Ok(templates)
    }

    /// Remove the template named `name` (`<cpus>cpu-<mib>mib`).
    pub fn remove(name: &str) -> Result<(), SandboxError> {
        let valid = !name.is_empty() && !name.starts_with('.') && !name.contains('/');
        let dir = root().join(name);
        if !valid || !dir.join(INFO_FILE).is_file() {
            return Err(SandboxError::Template(format!(
                "no template named {name:?}"
            )));
        }
        std::fs::remove_dir_all(&dir).map_err(io("cannot remove", &dir))
    }

    /// Boot a VM for `spec` to its agent, snapshot it, and store it as the template
    /// (replacing the one there).
    pub fn build(spec: &TemplateSpec) -> Result<Self, SandboxError> {
        let spec = &spec.absolute()?;
        let kernel_sha256 = spec.kernel_sha256()?;
        let _lock = lock(&spec.name())?;
        Self::build_with(spec, &kernel_sha256)
    }

    fn build_with(spec: &TemplateSpec, kernel_sha256: &str) -> Result<Self, SandboxError> {
        build_in_temp(&spec.name(), |tmp, started| {
            let memory_bytes = snapshot_booted_vm(spec, tmp)?;
            Ok(TemplateInfo {
                name: spec.name(),
                shape_version: SHAPE_VERSION,
                kernel: spec.kernel.clone(),
                kernel_sha256: kernel_sha256.to_string(),
                agent_digest: agent_digest(&spec.initrd),
                cpus: spec.cpus,
                memory_mib: spec.memory_mib,
                created: now_secs(),
                build_ms: crate::metrics::ms(started.elapsed()),
                memory_bytes,
                image: None,
            })
        })
    }

    /// What a restore of this template for `spec` must find in its snapshot.
    pub(super) fn expect(&self, spec: &TemplateSpec) -> Expect {
        spec.expect(&self.info.kernel_sha256)
    }
}

impl Template {
    /// Start a sandbox from this template: `config` gives the image, disks, network,
    /// vCPUs and RAM (which must be the template's). Build a template once with
    /// [`Template::ensure`], then start as many sandboxes from it as needed; they share
    /// the template's untouched memory pages.
    pub fn start(&self, config: super::SandboxConfig) -> Result<super::Sandbox, SandboxError> {
        if (config.cpus, config.memory_mib) != (self.info.cpus, self.info.memory_mib) {
            return Err(SandboxError::Template(format!(
                "template {} has {} vCPUs and {} MiB; the sandbox asks for {} and {} MiB",
                self.info.name,
                self.info.cpus,
                self.info.memory_mib,
                config.cpus,
                config.memory_mib
            )));
        }
        super::Sandbox::start_with(config, Some(self))
    }

    /// The template for `config` (see [`Template::ensure`]).
    pub fn for_config(config: &super::SandboxConfig) -> Result<Self, SandboxError> {
        Self::ensure(&spec_for(config)?)
    }

    /// A new template for `config`, replacing the one there (see [`Template::build`]).
    pub fn rebuild_for_config(config: &super::SandboxConfig) -> Result<Self, SandboxError> {
        Self::build(&spec_for(config)?)
    }
}

fn spec_for(config: &super::SandboxConfig) -> Result<TemplateSpec, SandboxError> {
    let agent = match &config.agent {
        Some(p) => p.clone(),
        None => super::agent::agent_binary()?,
    };
    let initrd =
        super::agent::agent_initramfs(&agent, &crate::kernel::cache_root().join("initramfs"))?;
    Ok(super::launch::template_spec(config, initrd))
}

/// Seconds since the epoch, as a template's `created`.
pub(super) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Make template `name` in a temp folder of the templates' root: `make` fills the
/// folder (given it and when the build started) and describes it; the description is
/// written beside, and the folder installed as the template (see [`install`]).
pub(super) fn build_in_temp(
    name: &str,
    make: impl FnOnce(&Path, Instant) -> Result<TemplateInfo, SandboxError>,
) -> Result<Template, SandboxError> {
    let started = Instant::now();
    let root = root();
    std::fs::create_dir_all(&root).map_err(io("cannot create", &root))?;
    let tmp = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(&root)
        .map_err(io("cannot create a folder in", &root))?;
    let info = make(tmp.path(), started)?;
    let json =
        serde_json::to_vec_pretty(&info).map_err(|e| SandboxError::Template(e.to_string()))?;
    let info_path = tmp.path().join(INFO_FILE);
    std::fs::write(&info_path, json).map_err(io("cannot write", &info_path))?;
    let dir = root.join(name);
    install(tmp.keep(), &dir)?;
    Ok(Template { dir, info })
}

/// Hold the build lock of template `name` (released when the file is dropped).
pub(super) fn lock(name: &str) -> Result<std::fs::File, SandboxError> {
    let root = root();
    std::fs::create_dir_all(&root).map_err(io("cannot create", &root))?;
    let path = root.join(format!(".{name}.lock"));
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io("cannot open", &path))?;
    file.lock().map_err(io("cannot lock", &path))?;
    Ok(file)
}

/// Put the finished template folder `built` at `dir`. A template already there is
/// replaced; if another process installed one meanwhile, theirs is kept.
fn install(built: PathBuf, dir: &Path) -> Result<(), SandboxError> {
    if dir.exists() {
        // Move the old one aside first: a rename does not replace a full folder.
        let aside = built.with_extension("old");
        if std::fs::rename(dir, &aside).is_ok() {
            drop(std::fs::remove_dir_all(&aside));
        }
    }
    match std::fs::rename(&built, dir) {
        Ok(()) => Ok(()),
        Err(_) if dir.join(INFO_FILE).is_file() => {
            drop(std::fs::remove_dir_all(&built));
            Ok(())
        }
        Err(e) => {
            drop(std::fs::remove_dir_all(&built));
            Err(io("cannot install the template at", dir)(e))
        }
    }
}

/// The VM configuration of a template (see the module documentation).
fn template_config(spec: &TemplateSpec, dir: &Path, uds: PathBuf) -> VmConfig {
    let disk = |name: &str, read_only: bool, id: &str| BlockConfig {
        path: dir.join(name),
        read_only,
        id: Some(id.into()),
        root: false,
        rate_limiter: None,
    };
    VmConfig {
        initrd: Some(spec.initrd.clone()),
        cmdline: "quiet".into(),
        cpus: spec.cpus,
        memory_mib: spec.memory_mib,
        console: ConsoleConfig::Off,
        disks: vec![
            disk("empty-image.img", true, "husk-image"),
            disk("empty-scratch.img", false, "husk-scratch"),
        ],
        nets: vec![NetConfig::unplugged()],
        vsock: Some(VsockConfig::new(super::GUEST_CID, uds)),
        ..VmConfig::new(spec.kernel.clone())
    }
}

/// Boot the template VM in `dir`, wait for its agent, snapshot it into
/// `dir/snapshot`, stop it; the bytes of memory the snapshot holds.
fn snapshot_booted_vm(spec: &TemplateSpec, dir: &Path) -> Result<u64, SandboxError> {
    for name in ["empty-image.img", "empty-scratch.img"] {
        let path = dir.join(name);
        std::fs::write(&path, b"").map_err(io("cannot create", &path))?;
    }
    // The socket lives in the runtime folder: socket paths are short, cache paths
    // may not be.
    let runtime = tempfile::Builder::new()
        .prefix("husk-template-")
        .tempdir_in(runtime_root())
        .map_err(io("cannot create a runtime folder in", &runtime_root()))?;
    let uds = runtime.path().join("vsock.sock");
    let jail = VmmJail::for_template(&spec.kernel, &spec.initrd, runtime.path(), dir)?;
    let vm = VmmProcess::spawn(runtime.path(), "husk-template", jail, false)?;
    vm.start(&template_config(spec, dir, uds.clone()))?;
    // The connection stays open into the snapshot: a restored guest gets a transport
    // reset, which ends it, and its agent accepts the restored sandbox's connection.
    let conn = connect_agent(&vm, &uds, spec.boot_timeout)?;
    let digest = agent_digest(&spec.initrd);
    let created = vm.snapshot(&dir.join(SNAPSHOT_DIR), true, Some(&digest));
    vm.stop();
    drop(conn);
    let written = created?["memory_written"].as_u64().unwrap_or(0);
    // Every sandbox's VMM restores it, each jailed as a uid of its own.
    super::jailing::share_with_jails(dir)?;
    Ok(written)
}

#[cfg(test)]
#[path = "template_tests.rs"]
mod tests;
