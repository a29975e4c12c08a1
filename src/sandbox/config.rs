//! How to build a sandbox: its image, its configuration and builder, the processes it
//! runs, and the VM configuration a cold boot derives from them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_protocol::{Limits, TtySize};

use super::{scratch, Sandbox, SandboxError, GUEST_CID};
use crate::config::{ConsoleConfig, VmConfig};
use crate::devices::virtio::block::BlockConfig;
use crate::devices::virtio::fs::FsConfig;
use crate::devices::virtio::net::NetConfig;
use crate::devices::virtio::vsock::VsockConfig;

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
    /// Network cards of the caller's, after the sandbox's own (each on the TAP it
    /// names, which a jailed VMM holds: `sandbox::jailing`).
    pub nets: Vec<NetConfig>,
    /// Give the guest a network: a TAP husk creates, a /30 link between host and guest,
    /// the guest's eth0 configured by the agent ([`super::net`]).
    pub network: bool,
    /// A way out beyond the host through NAT, with DNS (`--net nat`; needs `network`).
    pub nat: Option<super::Nat>,
    /// Host ports forwarded to the guest's (`-p`; needs `network`).
    pub publish: Vec<super::Publish>,
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
    /// Start from a template (a snapshot of a booted guest, made on first use) instead
    /// of booting the kernel, when the sandbox's devices fit one (default: true).
    pub warm: bool,
    /// With `warm`, start from the template of the sandbox's image, whose first
    /// container is made ahead (root mounted, namespaces entered, waiting for the
    /// command); made from the plain template on first use. Only for sandboxes without
    /// a scratch disk (default: true).
    pub prepared: bool,
    /// Take a pre-spawned `husk vmm` from this pool instead of spawning one (default:
    /// none).
    pub pool: Option<std::sync::Arc<super::pool::VmmPool>>,
    /// Jail the sandbox's `husk vmm` when the caller is root (default: true; see
    /// `sandbox::jailing` for what is jailed).
    pub jail: bool,
    /// Host folders shared with every container (`-v`), each through virtio-fs and a
    /// `virtiofsd` of its own. A sandbox with volumes boots cold and cannot be paused,
    /// snapshotted or forked.
    pub volumes: Vec<super::Volume>,
    /// Hold each of the sandbox's own disks (the image and the scratch disk) to this
    /// many bytes per second (`--disk-rate`); a caller's disk keeps its own
    /// `rate_limiter`. A sandbox with a rate boots cold (a template's devices have none).
    pub disk_rate: Option<super::ByteRate>,
    /// Hold the sandbox's own network card to this many bytes per second each way
    /// (`--net-rate`). A sandbox with a rate boots cold.
    pub net_rate: Option<super::ByteRate>,
    /// Move the sandbox's own card's frames through the host kernel's vhost-net
    /// (`--net-vhost`; needs `network`, takes no `net_rate`). A snapshot or fork of it
    /// takes the rings back from the kernel for the moment it saves them.
    pub net_vhost: bool,
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
            nat: None,
            publish: Vec::new(),
            scratch_disk_mib: None,
            console: ConsoleConfig::Off,
            boot_timeout: Duration::from_secs(600),
            runtime_parent: None,
            warm: true,
            prepared: true,
            pool: None,
            jail: true,
            volumes: Vec::new(),
            disk_rate: None,
            net_rate: None,
            net_vhost: false,
        }
    }

    /// The same config with every host path absolute (relative ones taken from the
    /// current folder): a jailed VMM sees the files at the same paths from the jail's
    /// root, not from the caller's folder.
    pub(super) fn with_absolute_paths(mut self) -> Result<Self, SandboxError> {
        self.image.fs_image = absolute(&self.image.fs_image)?;
        self.kernel = absolute(&self.kernel)?;
        if let Some(agent) = &self.agent {
            self.agent = Some(absolute(agent)?);
        }
        for disk in &mut self.disks {
            disk.path = absolute(&disk.path)?;
        }
        if let ConsoleConfig::File(path) = &self.console {
            self.console = ConsoleConfig::File(absolute(path)?);
        }
        for volume in &mut self.volumes {
            volume.host = absolute(&volume.host)?;
        }
        if let Some(parent) = &self.runtime_parent {
            self.runtime_parent = Some(absolute(parent)?);
        }
        Ok(self)
    }
}

/// `path` made absolute against the current folder (not resolving links).
pub(super) fn absolute(path: &Path) -> Result<PathBuf, SandboxError> {
    std::path::absolute(path)
        .map_err(|e| SandboxError::Vmm(format!("cannot make {} absolute: {e}", path.display())))
}

/// Builds a [`Sandbox`]: `Sandbox::builder(image, kernel).cpus(2).network(true).start()`.
#[derive(Debug, Clone)]
pub struct SandboxBuilder {
    pub(super) config: SandboxConfig,
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

    /// A network with NAT and DNS (`husk run --net nat`).
    pub fn nat(mut self, nat: super::Nat) -> Self {
        self.config.network = true;
        self.config.nat = Some(nat);
        self
    }

    /// Publish a guest port on the host (`husk run -p`); needs a network.
    pub fn publish(mut self, mapping: super::Publish) -> Self {
        self.config.publish.push(mapping);
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

    /// A network card of the caller's, on the TAP it names (held by the jail when the
    /// VMM is jailed; a card without a TAP name makes a new TAP and runs the VMM
    /// unjailed).
    pub fn net(mut self, card: NetConfig) -> Self {
        self.config.nets.push(card);
        self
    }

    /// Share the host folder `host` with every container at `guest` (an absolute path),
    /// read-only when `read_only` (`husk run -v HOST:GUEST[:ro]`).
    pub fn volume(mut self, host: impl Into<PathBuf>, guest: &str, read_only: bool) -> Self {
        self.config.volumes.push(super::Volume {
            host: host.into(),
            guest: guest.into(),
            read_only,
        });
        self
    }

    /// Hold the sandbox's own disks to `rate` each (see [`SandboxConfig::disk_rate`]).
    pub fn disk_rate(mut self, rate: super::ByteRate) -> Self {
        self.config.disk_rate = Some(rate);
        self
    }

    /// Hold the sandbox's own card to `rate` each way (see [`SandboxConfig::net_rate`]).
    pub fn net_rate(mut self, rate: super::ByteRate) -> Self {
        self.config.net_rate = Some(rate);
        self
    }

    /// Put the sandbox's own card on the host kernel's vhost-net (see
    /// [`SandboxConfig::net_vhost`]).
    pub fn net_vhost(mut self, on: bool) -> Self {
        self.config.net_vhost = on;
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

    /// Start from a template (default) or, with `false`, boot the kernel (`--cold`).
    pub fn warm(mut self, warm: bool) -> Self {
        self.config.warm = warm;
        self
    }

    /// Where the runtime folder is made (see [`SandboxConfig::runtime_parent`]).
    pub fn runtime_parent(mut self, dir: PathBuf) -> Self {
        self.config.runtime_parent = Some(dir);
        self
    }

    /// Jail the sandbox's VMM when the caller is root (default: true).
    pub fn jail(mut self, jail: bool) -> Self {
        self.config.jail = jail;
        self
    }

    /// Take pre-spawned VMMs from `pool` (see [`super::VmmPool`]).
    pub fn pool(mut self, pool: std::sync::Arc<super::pool::VmmPool>) -> Self {
        self.config.pool = Some(pool);
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

/// The VM of `config`: its agent `initrd`, vsock socket `uds`, `scratch` disk, and for
/// its own card the TAP `claimed` (made for its jail) or a new one, the virtio-fs
/// devices `fs` of its volumes.
pub(super) fn vm_config(
    config: &SandboxConfig,
    initrd: PathBuf,
    uds: PathBuf,
    scratch: Option<PathBuf>,
    claimed: Option<&str>,
    fs: Vec<FsConfig>,
) -> VmConfig {
    let image_disk = BlockConfig {
        path: config.image.fs_image.clone(),
        read_only: true,
        id: Some("husk-image".into()),
        root: false,
        rate_limiter: super::rates::limiter(config.disk_rate),
    };
    // vda is the image, vdb the scratch disk (scratch::GUEST_DEVICE), then the others.
    let mut disks = vec![image_disk];
    disks.extend(scratch.map(|path| BlockConfig {
        rate_limiter: super::rates::limiter(config.disk_rate),
        ..scratch::block_config(path)
    }));
    disks.extend(config.disks.iter().cloned());
    // The sandbox's own card comes first, so it is the guest's eth0.
    let mut nets: Vec<NetConfig> = config
        .network
        .then(|| NetConfig {
            rx_rate_limiter: super::rates::limiter(config.net_rate),
            tx_rate_limiter: super::rates::limiter(config.net_rate),
            vhost: config.net_vhost,
            ..NetConfig::claiming(claimed)
        })
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
        fs,
        ..VmConfig::new(config.kernel.clone())
    }
}
