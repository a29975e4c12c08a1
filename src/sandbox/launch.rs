//! Bringing a sandbox's VM up to an agent that answers: a cold boot of the kernel, or a
//! warm start from a template (restore, attach the sandbox's own disks, card and
//! socket, then give the guest its identity: `Restored` with fresh entropy, the time,
//! its hostname and the disk sizes to wait for).

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Instant;

use husk_protocol::{read_message, write_message, DiskSize, Message};

use super::connect::connect_agent;
use super::jailing::{JailTap, VmmJail};
use super::template::{Template, TemplateSpec, IMAGE_SLOT, NET_SLOT, SCRATCH_SLOT};
use super::vmm_process::VmmProcess;
use super::{config, net, SandboxConfig, SandboxError, GUEST_CID, HANDSHAKE_MIN};
use crate::devices::virtio::fs::FsConfig;
use crate::devices::virtio::net::{MacAddr, NetConfig};
use crate::devices::virtio::vsock::VsockConfig;
use crate::snapshot::{self, fingerprint::Expect};
use crate::vmm::RestoreOptions;

/// A VM whose agent answered, and what the host set up for it.
pub(super) struct Launched {
    /// The VM's process.
    pub vm: VmmProcess,
    /// The agent connection, handshake (and identity, network) done.
    pub conn: UnixStream,
    /// When the VM was built and running.
    pub vm_running: Instant,
    /// When the snapshot was read and checked (restores only).
    pub loaded: Option<Instant>,
    /// When the VMM was asked to boot or restore (its process spawned and jailed).
    pub requested: Instant,
    /// When the agent answered the handshake.
    pub answered: Instant,
    /// Whether it came from a template.
    pub warm: bool,
    /// The host's side of its network.
    pub net: Option<net::HostNet>,
}

/// What a launch works with.
pub(super) struct LaunchPaths<'a> {
    /// The sandbox's runtime folder.
    pub runtime: &'a Path,
    /// The agent initramfs.
    pub initrd: PathBuf,
    /// The scratch disk, if any.
    pub scratch: Option<PathBuf>,
    /// The sandbox's hostname.
    pub hostname: String,
    /// The virtio-fs devices of its volumes (their daemons already listen).
    pub fs: Vec<FsConfig>,
}

/// Whether `config` can start from a template: templates have exactly the sandbox's
/// own devices (image, scratch, one card, vsock, rng), without rate limits, and nothing
/// more. Volumes never do: a virtio-fs device's state is its daemon's, which no
/// snapshot holds.
pub fn fits_template(config: &SandboxConfig) -> bool {
    config.warm && config.disks.is_empty() && config.nets.is_empty() && cold_only(config).is_none()
}

/// Why `config` boots cold even with a template given, if it does.
fn cold_only(config: &SandboxConfig) -> Option<&'static str> {
    if !config.volumes.is_empty() {
        return Some("volumes");
    }
    if config.disk_rate.is_some() || config.net_rate.is_some() {
        return Some("rate limits");
    }
    None
}

/// Where `config` starts from, given a template the caller chose (if any); a sandbox
/// with volumes or rate limits boots cold even then.
pub(super) fn origin_for<'a>(config: &SandboxConfig, template: Option<&'a Template>) -> Origin<'a> {
    match template {
        Some(t) if cold_only(config).is_none() => Origin::Template(Some(t)),
        None if fits_template(config) => Origin::Template(None),
        _ => Origin::Boot,
    }
}

/// Where a sandbox's VM comes from.
pub(super) enum Origin<'a> {
    /// A boot of the kernel.
    Boot,
    /// A template: this one, or the one for the sandbox's vCPUs and RAM (found or built).
    Template(Option<&'a Template>),
    /// A sandbox snapshot's VM (its `vm` folder).
    Snapshot(&'a Path),
}

/// Start `config`'s VM from `origin` in `vm` (a pooled VMM listening in the runtime
/// folder) or a VMM spawned for it, then reach its agent (and, for a restored VM, give
/// it its identity).
pub(super) fn launch(
    config: &SandboxConfig,
    paths: LaunchPaths<'_>,
    origin: Origin<'_>,
    vm: Option<VmmProcess>,
) -> Result<Launched, SandboxError> {
    net::validate(config)?;
    let uds = paths.runtime.join("vsock.sock");
    let deadline = Instant::now() + config.boot_timeout;
    let mut loaded = None;
    let mut requested = Instant::now();
    let vm = match vm {
        Some(vm) => vm,
        None => {
            // A snapshot to restore is read from the jail too.
            let extra = match origin {
                Origin::Snapshot(dir) => vec![crate::jail::Bind {
                    path: dir.to_path_buf(),
                    writable: false,
                }],
                _ => Vec::new(),
            };
            let jail = VmmJail::for_sandbox(config, paths.runtime, &paths.initrd, extra)?;
            log::debug!("launch: jail chosen, spawning the VMM");
            let vm = VmmProcess::spawn(paths.runtime, &paths.hostname, jail, config.net_vhost)?;
            log::debug!("launch: VMM listening");
            vm
        }
    };
    // Everything after the spawn: a failure stops the VMM and waits for it, so that
    // nothing it holds (its TAPs, sockets, jail) outlives the failed start.
    let bringup = Bringup {
        config,
        paths: &paths,
        origin,
        uds,
        deadline,
    };
    match bringup.run(&vm, (&mut loaded, &mut requested)) {
        Ok(up) => Ok(Launched {
            vm,
            conn: up.conn,
            vm_running: up.vm_running,
            loaded,
            requested,
            answered: up.answered,
            warm: up.warm,
            net: up.net,
        }),
        Err(e) => {
            vm.stop();
            Err(e)
        }
    }
}

/// What follows a VMM's spawn: its TAPs and files handed over, the boot or restore,
/// the agent reached, told who it is and given its network.
struct Bringup<'a> {
    config: &'a SandboxConfig,
    paths: &'a LaunchPaths<'a>,
    origin: Origin<'a>,
    uds: PathBuf,
    deadline: Instant,
}

/// What [`Bringup::run`] brought up.
struct Up {
    conn: UnixStream,
    vm_running: Instant,
    answered: Instant,
    warm: bool,
    net: Option<net::HostNet>,
}

impl Bringup<'_> {
    /// Bring `vm`'s guest up to an agent that answers. `marks`: when the snapshot was
    /// read (restores), when the VMM was asked to boot or restore.
    fn run(
        self,
        vm: &VmmProcess,
        marks: (&mut Option<Instant>, &mut Instant),
    ) -> Result<Up, SandboxError> {
        let Self {
            config,
            paths,
            origin,
            uds,
            deadline,
        } = self;
        let (loaded, requested) = marks;
        if let Some(jail) = vm.jail() {
            if let Some(scratch) = &paths.scratch {
                jail.hand_over(scratch)?;
            }
            // virtiofsd stays outside the jail; only the jail's uid (and root) may connect
            // to its socket (mode 0600), which lies in the runtime folder the jail binds.
            for fs in &paths.fs {
                jail.hand_over(&fs.socket)?;
            }
        }
        let taps = JailTaps::make(config, vm)?;
        let claimed = taps.slot.as_ref().map(JailTap::name);
        let patched;
        let config = match taps.claiming(config) {
            Some(with_claims) => {
                patched = with_claims;
                &patched
            }
            None => config,
        };
        let (warm, mac) = match origin {
            Origin::Boot => {
                let vm_config = config::vm_config(
                    config,
                    paths.initrd.clone(),
                    uds.clone(),
                    paths.scratch.clone(),
                    claimed,
                    paths.fs.clone(),
                );
                *requested = Instant::now();
                vm.start(&vm_config)?;
                (false, None)
            }
            Origin::Template(template) => {
                let spec = template_spec(config, paths.initrd.clone());
                let found;
                let template = match template {
                    Some(t) => t,
                    None => {
                        found = Template::ensure(&spec)?;
                        &found
                    }
                };
                log::debug!("launch: template found");
                // The image's own template, its first container made ahead, if it fits.
                let of_image = super::image_template::for_sandbox(config, &spec, template);
                let template = of_image.as_ref().unwrap_or(template);
                let expect = template.expect(&spec);
                let dir = template.snapshot_dir();
                log::debug!("launch: image template looked up");
                vm.record_working_set_into(&dir);
                let restore = Restore {
                    vm,
                    dir: &dir,
                    expect: &expect,
                    uds: uds.clone(),
                    claimed,
                };
                (
                    true,
                    restore.run(config, paths, (&mut *loaded, &mut *requested))?,
                )
            }
            Origin::Snapshot(dir) => {
                let expect = Expect {
                    agent_digest: Some(super::template::agent_digest(&paths.initrd)),
                    ..Expect::default()
                };
                let restore = Restore {
                    vm,
                    dir,
                    expect: &expect,
                    uds: uds.clone(),
                    claimed,
                };
                (
                    true,
                    restore.run(config, paths, (&mut *loaded, &mut *requested))?,
                )
            }
        };
        let vm_running = Instant::now();
        drop(taps);
        let host_net = (config.network)
            .then(|| Ok::<_, SandboxError>(net::HostNet::set_up(&vm.tap_names()?, config)?))
            .transpose()?;
        log::debug!("launch: VM running");
        let mut conn = connect_agent(vm, &uds, config.boot_timeout)?;
        let answered = Instant::now();
        log::debug!("launch: agent answered");
        let io = |e| SandboxError::Protocol(husk_protocol::ProtocolError::Io(e));
        // The handshake's read timeout still holds: a guest that never answers what
        // follows fails the start instead of hanging the host.
        let left = deadline.saturating_duration_since(Instant::now());
        conn.set_read_timeout(Some(left.max(HANDSHAKE_MIN)))
            .map_err(io)?;
        if warm {
            identify(&mut conn, config, paths)
                .map_err(|e| agent_down(vm, "take its identity", e))?;
        }
        if let Some(host_net) = &host_net {
            let mac = mac.map(|m| m.to_string());
            let dns = host_net.dns.clone();
            net::configure_guest(&mut conn, &host_net.link, mac, dns).map_err(|e| match e {
                net::NetError::Protocol(e) => agent_down(vm, "configure the network", e),
                other => other.into(),
            })?;
        }
        conn.set_read_timeout(None).map_err(io)?;
        Ok(Up {
            conn,
            vm_running,
            answered,
            warm,
            net: host_net,
        })
    }
}

/// The TAPs a jailed VMM claims, made for its uid because it cannot make them: the
/// sandbox network's, and one for each card of the caller's that names none (with the
/// card's index). Dropping them removes the ones no VMM claimed (a failed start).
struct JailTaps {
    slot: Option<JailTap>,
    cards: Vec<(usize, JailTap)>,
}

impl JailTaps {
    fn make(config: &SandboxConfig, vm: &VmmProcess) -> Result<Self, SandboxError> {
        // Root's jails only: a user-namespace jail's VMM has the caller's uid, and a
        // caller that is not root can make no TAP for it.
        let Some(jail) = vm.jail().filter(|j| j.uid().is_some()) else {
            return Ok(Self {
                slot: None,
                cards: Vec::new(),
            });
        };
        let slot = config.network.then(|| JailTap::create(jail)).transpose()?;
        let cards = (config.nets.iter().enumerate())
            .filter(|(_, card)| card.tap.is_none() && !card.unplugged)
            .map(|(i, _)| Ok((i, JailTap::for_card(jail, i)?)))
            .collect::<Result<_, SandboxError>>()?;
        Ok(Self { slot, cards })
    }

    /// `config` with each card that names no TAP claiming the one made for it, if any.
    fn claiming(&self, config: &SandboxConfig) -> Option<SandboxConfig> {
        if self.cards.is_empty() {
            return None;
        }
        let mut config = config.clone();
        for (i, tap) in &self.cards {
            if let Some(card) = config.nets.get_mut(*i) {
                card.tap = Some(tap.name().to_string());
                card.claim = true;
            }
        }
        Some(config)
    }
}

fn agent_down(vm: &VmmProcess, what: &str, e: impl std::fmt::Display) -> SandboxError {
    SandboxError::AgentDown {
        reason: format!("the agent did not {what}: {e}"),
        console: vm.failure_output(),
    }
}

/// The template spec for `config`.
pub fn template_spec(config: &SandboxConfig, initrd: PathBuf) -> TemplateSpec {
    TemplateSpec {
        kernel: config.kernel.clone(),
        initrd,
        cpus: config.cpus,
        memory_mib: config.memory_mib,
        boot_timeout: config.boot_timeout,
    }
}

/// A restore of the snapshot in `dir`, checked against `expect`, in the VMM `vm`.
struct Restore<'a> {
    vm: &'a VmmProcess,
    dir: &'a Path,
    expect: &'a Expect,
    uds: PathBuf,
    /// The TAP made for a jailed VMM's card, which it claims.
    claimed: Option<&'a str>,
}

impl Restore<'_> {
    /// Restore with the sandbox's own image, scratch disk, card and socket; the MAC
    /// given to a plugged card. `marks`: when the snapshot was read, when the VMM was
    /// asked to restore it.
    fn run(
        self,
        config: &SandboxConfig,
        paths: &LaunchPaths<'_>,
        marks: (&mut Option<Instant>, &mut Instant),
    ) -> Result<Option<MacAddr>, SandboxError> {
        let (loaded_at, requested_at) = marks;
        let saved = snapshot::read_config(self.dir)?;
        *loaded_at = Some(Instant::now());
        let mut disks = BTreeMap::from([(IMAGE_SLOT, config.image.fs_image.clone())]);
        if saved.disks.len() > SCRATCH_SLOT {
            let scratch = match &paths.scratch {
                Some(scratch) => scratch.clone(),
                None => {
                    let empty = paths.runtime.join("empty.img");
                    std::fs::write(&empty, b"").map_err(|e| SandboxError::Runtime {
                        dir: paths.runtime.to_path_buf(),
                        source: e,
                    })?;
                    // The slot is writable: a jailed VMM opens it as its own uid.
                    if let Some(jail) = self.vm.jail() {
                        jail.hand_over(&empty)?;
                    }
                    empty
                }
            };
            disks.insert(SCRATCH_SLOT, scratch);
        }
        let mac = (config.network && !saved.nets.is_empty()).then(MacAddr::random);
        let mut nets = BTreeMap::new();
        if !saved.nets.is_empty() {
            let card = match mac {
                Some(mac) => NetConfig {
                    mac: Some(mac),
                    vhost: config.net_vhost,
                    ..NetConfig::claiming(self.claimed)
                },
                None => NetConfig::unplugged(),
            };
            nets.insert(NET_SLOT, card);
        }
        let options = RestoreOptions {
            disks,
            nets,
            vsock: Some(VsockConfig::new(GUEST_CID, self.uds)),
            console: config.console.clone(),
            paused: false,
            record_touched: self.vm.records_working_set(),
        };
        log::debug!("launch: snapshot config read, restoring");
        *requested_at = Instant::now();
        self.vm.restore(self.dir, self.expect, &options)?;
        Ok(mac)
    }
}

/// Tell a restored guest who it is (see `Message::Restored`) and wait for its answer.
fn identify(
    conn: &mut UnixStream,
    config: &SandboxConfig,
    paths: &LaunchPaths<'_>,
) -> Result<(), husk_protocol::ProtocolError> {
    let random = random_bytes(72)?;
    let (seed, entropy) = random.split_at(8);
    let generation = u64::from_le_bytes(seed.try_into().unwrap_or([0; 8])).max(1);
    let mut disks = vec![DiskSize {
        name: "vda".into(),
        sectors: sectors(&config.image.fs_image),
    }];
    if let Some(scratch) = &paths.scratch {
        disks.push(DiskSize {
            name: "vdb".into(),
            sectors: sectors(scratch),
        });
    }
    let restored = Message::Restored {
        generation,
        entropy: entropy.to_vec(),
        unix_time_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        hostname: paths.hostname.clone(),
        disks,
    };
    write_message(conn, &restored)?;
    match read_message(conn)? {
        Message::RestoredAck { generation: g } if g == generation => Ok(()),
        Message::Error { message } => Err(husk_protocol::ProtocolError::Refused(message)),
        other => Err(husk_protocol::ProtocolError::Unexpected(format!(
            "{other:?} instead of RestoredAck for generation {generation}"
        ))),
    }
}

/// A file's size in 512-byte sectors (0 if it cannot be read).
fn sectors(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len() / 512)
}

/// `n` bytes from the kernel's CSPRNG.
pub fn random_bytes(n: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}
