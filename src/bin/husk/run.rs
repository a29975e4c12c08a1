//! `husk run`: a command in a container in a new micro-VM, in the foreground or
//! detached; the signal forwarding and terminal handling it shares with `husk exec`.

use std::path::PathBuf;

use clap::Args;

use husk::config::ConsoleConfig;

use crate::forward::{forward_signals, tty_setup};
use crate::images::{PullPolicy, RegistryArgs};
use crate::pool::{refill_after, run_detached_pooled, run_pooled, Pooled};
use crate::{render, with_watchdog};

/// How the command runs: the options `husk run` and `husk exec` share.
#[derive(Args)]
pub(crate) struct ProcessArgs {
    /// Pass this process's standard input to the command.
    #[arg(short, long)]
    pub(crate) interactive: bool,
    /// Give the command a terminal (a pseudo-terminal in the guest, sized like this one
    /// and resized with it; with -i this terminal is in raw mode while it runs).
    #[arg(short, long)]
    pub(crate) tty: bool,
    /// Set an environment variable (repeatable), over the image's.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    workdir: Option<String>,
    /// User inside the container: name, UID or UID:GID.
    #[arg(short = 'u', long = "user")]
    user: Option<String>,
}

impl ProcessArgs {
    /// The process to run: `command` with these options (no terminal size yet).
    pub(crate) fn spec(&self, command: Vec<String>) -> husk::sandbox::RunSpec {
        husk::sandbox::RunSpec {
            args: command,
            env: self.env.clone(),
            cwd: self.workdir.clone(),
            user: self.user.clone(),
            ..husk::sandbox::RunSpec::default()
        }
    }
}

#[derive(Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    process: ProcessArgs,
    /// Run in the background: print the sandbox's name and exit once the command runs.
    #[arg(short, long)]
    detach: bool,
    /// Name of a detached sandbox [default: husk-XXXXXXXX].
    #[arg(long, requires = "detach")]
    name: Option<String>,
    /// Remove a detached sandbox's record (logs, state) when it ends.
    #[arg(long, requires = "detach")]
    rm: bool,
    /// vCPUs of the sandbox VM.
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// Memory limit of the container in MiB (the VM gets 64 MiB more for its kernel).
    #[arg(long, default_value_t = 256)]
    memory: u64,
    /// The sandbox's network. none: no network card. link: a TAP husk creates (and
    /// removes at exit) with a /30 link, the host's end on the TAP and the guest's on
    /// eth0, default route via the host; the guest reaches the host only. nat: the
    /// same link, and a way out through the host's NAT (per-sandbox nftables rules,
    /// IPv4 forwarding on) with DNS servers in the guest's /etc/resolv.conf.
    #[arg(long, value_enum, default_value_t = NetMode::None, value_name = "MODE")]
    net: NetMode,
    /// Publish the guest's TCP port on the host (repeatable; needs --net link or nat):
    /// connections to HOST_PORT (on HOST_IP, default all addresses, loopback included)
    /// go to GUEST_PORT in the sandbox.
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[HOST_IP:]HOST_PORT:GUEST_PORT[/tcp]"
    )]
    publish: Vec<husk::sandbox::Publish>,
    /// A DNS server for the guest (repeatable; --net nat) [default: the host's own,
    /// from /etc/resolv.conf, less loopback ones].
    #[arg(long = "dns", value_name = "IP")]
    dns: Vec<std::net::Ipv4Addr>,
    /// Let the guest reach only this network beyond the host (repeatable; --net nat);
    /// its DNS servers stay reachable.
    #[arg(long = "allow", value_name = "CIDR")]
    allow: Vec<husk::sandbox::Ipv4Net>,
    /// Keep the container's writable layer on a scratch disk of SIZE MiB (a sparse ext4
    /// file, removed at exit) instead of in guest RAM.
    #[arg(long = "disk", value_name = "SIZE_MIB")]
    disk: Option<u64>,
    /// Hold each of the sandbox's disks (the image, and the scratch disk of --disk) to
    /// this many bytes per second: a number with an optional K, M or G (powers of
    /// 1024) and /s, such as 10M/s. The guest's reads and writes beyond it wait. The
    /// sandbox boots cold (templates have no limits).
    #[arg(long = "disk-rate", value_name = "BYTES/s")]
    disk_rate: Option<husk::sandbox::ByteRate>,
    /// Hold the sandbox's network card (--net link or nat) to this many bytes per
    /// second in each direction, written as for --disk-rate (such as 1M/s). The sandbox
    /// boots cold.
    #[arg(long = "net-rate", value_name = "BYTES/s")]
    net_rate: Option<husk::sandbox::ByteRate>,
    /// Move the sandbox's network card's frames through the host kernel's vhost-net
    /// (/dev/vhost-net, module vhost_net) instead of husk's device thread: faster, but
    /// the kernel then parses the guest's descriptors for that card. Needs --net link
    /// or nat; no --net-rate.
    #[arg(long = "net-vhost")]
    net_vhost: bool,
    /// Share the host folder HOST with the container at GUEST (repeatable), through
    /// virtio-fs and a virtiofsd per folder; `:ro` makes it read-only. A sandbox with
    /// volumes boots cold and cannot be paused, snapshotted or forked.
    #[arg(short = 'v', long = "volume", value_name = "HOST:GUEST[:ro]")]
    volumes: Vec<husk::sandbox::Volume>,
    /// Give up after SECONDS from the start, boot included: the sandbox is stopped, the
    /// guest's last console and kernel log lines are printed, and the exit code is 124
    /// (a detached sandbox is stopped and shows as such in `husk ps -a`).
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// Boot the guest kernel instead of starting from a template (a snapshot of a
    /// booted guest for these vCPUs and memory, made on first use: `husk template`).
    #[arg(long)]
    cold: bool,
    /// Start from the plain template even when the image's own one could be used (a
    /// template of the image whose first container is made ahead, made on first use;
    /// only for sandboxes without --disk or -v).
    #[arg(long, conflicts_with = "cold")]
    no_prepared: bool,
    /// Start a sandbox of its own even when a pool has one parked that fits (`husk pool
    /// add --help`).
    #[arg(long)]
    no_pool: bool,
    /// Guest kernel [default: `husk kernel path`].
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Write the guest console to FILE (for debugging the guest).
    #[arg(long, value_name = "FILE")]
    console: Option<PathBuf>,
    /// Write the sandbox's milestones (VM running, agent ready, process started and
    /// exited, torn down) and the VM's metrics as JSON to FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "detach")]
    timings: Option<PathBuf>,
    /// When to pull the image from its registry: when the store lacks it, always, or
    /// never.
    #[arg(long, value_enum, default_value_t = PullPolicy::Missing)]
    pull: PullPolicy,
    #[command(flatten)]
    registry: RegistryArgs,
    /// The image: a name or digest from `husk image ls`, or a registry reference
    /// (pulled when missing, see `husk pull`); `busybox`, when the store has no image of
    /// that name, is built from Debian's busybox-static.
    image: String,
    /// The command and its arguments [default: the image's].
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// `husk run --net`.
#[derive(clap::ValueEnum, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum NetMode {
    /// No network card.
    #[default]
    None,
    /// A link to the host only.
    Link,
    /// The link, NAT through the host, DNS.
    Nat,
}

impl RunArgs {
    /// The volumes with absolute host folders that exist (a detached sandbox's monitor
    /// runs elsewhere).
    /// Whether a parked sandbox of a pool could run this (`husk pool add --help`).
    /// Whether a parked sandbox of a pool can serve this run (`-d` included).
    fn fits_a_pool(&self) -> bool {
        !self.no_pool
            && !self.cold
            && !self.no_prepared
            && self.net == NetMode::None
            && self.publish.is_empty()
            && self.disk.is_none()
            && self.volumes.is_empty()
            && self.disk_rate.is_none()
            && self.net_rate.is_none()
            && self.timeout.is_none()
            && self.console.is_none()
    }

    fn checked_volumes(&self) -> Result<Vec<husk::sandbox::Volume>, Box<dyn std::error::Error>> {
        let mut volumes = self.volumes.clone();
        for volume in &mut volumes {
            volume.validate()?;
            volume.host = std::path::absolute(&volume.host)?;
        }
        Ok(volumes)
    }

    /// The network options as the library takes them: a card or not, NAT, ports.
    fn network(&self) -> Result<(bool, Option<husk::sandbox::Nat>), String> {
        if self.net == NetMode::None && !self.publish.is_empty() {
            return Err("-p needs a network: --net link or --net nat".into());
        }
        if self.net == NetMode::None && self.net_rate.is_some() {
            return Err("--net-rate needs a network: --net link or --net nat".into());
        }
        if self.net == NetMode::None && self.net_vhost {
            return Err("--net-vhost needs a network: --net link or --net nat".into());
        }
        if self.net_vhost && self.net_rate.is_some() {
            return Err(
                "--net-vhost takes no --net-rate: husk never sees a vhost-net card's frames".into(),
            );
        }
        if self.net != NetMode::Nat && !(self.dns.is_empty() && self.allow.is_empty()) {
            return Err("--dns and --allow go with --net nat".into());
        }
        let nat = (self.net == NetMode::Nat).then(|| husk::sandbox::Nat {
            dns: self.dns.clone(),
            allow: self.allow.clone(),
        });
        Ok((self.net != NetMode::None, nat))
    }
}

/// The image `husk run` names: a name or digest in the store, else the store's image
/// of the full reference (`busybox` is `docker.io/library/busybox:latest`), else the
/// built-in busybox for `busybox`, else a pull (as `policy` allows).
pub(crate) fn resolve_image(
    store: &husk::image::ImageStore,
    name: &str,
    policy: PullPolicy,
    registry: &RegistryArgs,
) -> Result<husk::image::Image, Box<dyn std::error::Error>> {
    use husk::image::registry::Reference;
    let pull = || {
        let options = husk::image::PullOptions {
            connection: registry.connection(),
            progress: true,
        };
        store.pull(name, &options)
    };
    if policy == PullPolicy::Always {
        return Ok(pull()?);
    }
    if let Ok(image) = store.resolve(name) {
        return Ok(image);
    }
    let full = Reference::parse(name).ok().map(|r| r.to_string());
    if let Some(image) = full.and_then(|full| store.resolve(&full).ok()) {
        return Ok(image);
    }
    match policy {
        _ if name == "busybox" => Ok(store.ensure_busybox(true)?),
        PullPolicy::Never => {
            Err(format!("no image {name:?} in the store (and --pull never)").into())
        }
        _ => Ok(pull()?),
    }
}

pub(crate) fn run_container(args: RunArgs) -> Result<i32, Box<dyn std::error::Error>> {
    use husk::sandbox::{RunSpec, Sandbox, SandboxConfig, SandboxError, SandboxImage, Stdio};
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    let began = Instant::now();
    let limit = args.timeout.map(Duration::from_secs);
    let timed_out_message = || {
        eprintln!(
            "husk: the sandbox was stopped after {} s (--timeout)",
            args.timeout.unwrap_or(0)
        );
    };
    let process = &args.process;
    if args.detach && process.interactive {
        return Err(
            "-d and -i cannot be combined: a detached sandbox's main command has no \
                    stdin (use `husk exec -i NAME ...` to talk to it)"
                .into(),
        );
    }
    if let Some(name) = &args.name {
        husk::detached::validate_name(name)?;
    }
    let (network, nat) = args.network()?;
    let fits_a_pool = args.fits_a_pool();
    let volumes = args.checked_volumes()?;
    // Before any thread starts: Ctrl-C and friends go to the forwarding thread only.
    let (target, pending) = forward_signals()?;
    let store = husk::image::ImageStore::open(None)?;
    let image = resolve_image(&store, &args.image, args.pull, &args.registry)?;
    let resolved = Instant::now();
    let kernel = match args.kernel {
        Some(k) => k,
        None => husk::kernel::cached(None)?.vmlinux,
    };
    let mut spec = RunSpec {
        limits: husk_protocol::Limits {
            memory_bytes: Some(args.memory << 20),
            ..Default::default()
        },
        ..process.spec(args.command)
    };
    if args.detach {
        spec.tty = process.tty.then_some(husk::sandbox::terminal::DEFAULT_SIZE);
        let request = husk::detached::Request {
            name: args.name.unwrap_or_else(husk::detached::generate_name),
            image_ref: args.image,
            image: SandboxImage::from_store(&image),
            kernel,
            cpus: args.cpus,
            memory_mib: args.memory + 64,
            network,
            nat,
            publish: args.publish,
            scratch_disk_mib: args.disk,
            volumes: volumes.clone(),
            disk_rate: args.disk_rate,
            net_rate: args.net_rate,
            net_vhost: args.net_vhost,
            console: args.console,
            spec,
            remove_on_exit: args.rm,
            timeout: args.timeout.map(std::time::Duration::from_secs),
            warm: !args.cold,
            prepared: !args.no_prepared,
            restore: None,
            parked: false,
        };
        let mut pool_to_refill = None;
        if fits_a_pool && pending.load(Ordering::SeqCst) == 0 {
            let pool_spec = husk::detached::pool::PoolSpec {
                image: request.image.clone(),
                kernel: std::path::absolute(&request.kernel)?,
                cpus: request.cpus,
                memory_mib: args.memory,
            };
            match run_detached_pooled(&pool_spec, &request)? {
                Pooled::Ran(_) => {
                    println!("{}", request.name);
                    return Ok(0);
                }
                Pooled::NotClaimed(pool) => pool_to_refill = pool,
            }
        }
        let husk = std::env::current_exe()?;
        let dir = husk::detached::launch(&request, &husk)?;
        println!("{}", dir.name());
        refill_after(pool_to_refill);
        return Ok(0);
    }
    let mut pool_to_refill = None;
    if fits_a_pool && pending.load(Ordering::SeqCst) == 0 {
        let pool_spec = husk::detached::pool::PoolSpec {
            image: SandboxImage::from_store(&image),
            kernel: std::path::absolute(&kernel)?,
            cpus: args.cpus,
            memory_mib: args.memory,
        };
        let (tty, raw) = tty_setup(process.tty, process.interactive)?;
        let run = RunSpec {
            tty,
            ..spec.clone()
        };
        let timings = args.timings.as_deref();
        let ran = run_pooled(
            &pool_spec,
            &run,
            process.interactive,
            &target,
            timings,
            (began, resolved),
        );
        drop(raw);
        match ran? {
            Pooled::Ran(code) => return Ok(code),
            Pooled::NotClaimed(pool) => pool_to_refill = pool,
        }
    }
    let mut config = SandboxConfig::new(SandboxImage::from_store(&image), kernel);
    config.cpus = args.cpus;
    config.memory_mib = args.memory + 64;
    config.network = network;
    config.nat = nat;
    config.publish = args.publish.clone();
    config.scratch_disk_mib = args.disk;
    config.volumes = volumes;
    config.disk_rate = args.disk_rate;
    config.net_rate = args.net_rate;
    config.net_vhost = args.net_vhost;
    config.warm = !args.cold;
    config.prepared = !args.no_prepared;
    if let Some(limit) = limit {
        config.boot_timeout = limit;
    }
    if let Some(path) = args.console {
        config.console = ConsoleConfig::File(path);
    }
    let sandbox = match Sandbox::start(config) {
        Ok(sandbox) => sandbox,
        // The guest's last output is in the error.
        Err(e @ SandboxError::AgentDown { .. }) if limit.is_some_and(|l| began.elapsed() >= l) => {
            eprintln!("husk: {}", render(&e));
            timed_out_message();
            return Ok(124);
        }
        Err(e) => return Err(e.into()),
    };
    if let Ok(mut t) = target.lock() {
        *t = Some(Box::new(sandbox.signaller()));
    }
    let early = pending.load(Ordering::SeqCst);
    if early != 0 {
        // Signalled while the VM booted: nothing to forward to yet; stop cleanly.
        drop(sandbox.stop());
        return Ok(128 + early);
    }
    let (tty, raw) = tty_setup(process.tty, process.interactive)?;
    spec.tty = tty;
    let (result, timed_out) = with_watchdog(
        limit.map(|l| l.saturating_sub(began.elapsed())),
        || {
            // What the guest was doing, before the VM is gone.
            eprintln!(
                "husk: --timeout: the guest's last output:\n{}",
                sandbox.failure_output()
            );
            if let Some(stopper) = sandbox.stopper() {
                stopper.stop();
            }
        },
        || sandbox.run(&spec, Stdio::inherit(process.interactive)),
    );
    drop(raw);
    if timed_out {
        timed_out_message();
        return Ok(124);
    }
    let status = match result {
        Ok(status) => status,
        // The guest died under the container: show how far its kernel got.
        Err(e @ SandboxError::Lost(_)) if !sandbox.is_running() => {
            eprintln!(
                "husk: the guest's last output:\n{}",
                sandbox.failure_output()
            );
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    if status.oom_killed {
        eprintln!("husk: the container was killed for exceeding its memory limit");
    }
    let timings = sandbox.timings();
    let stop_started = std::time::Instant::now();
    let report = sandbox.stop()?;
    if let Some(path) = &args.timings {
        let torn_down_ms = timings
            .process_exited_ms
            .map(|t| t + husk::metrics::ms(stop_started.elapsed()));
        let json = serde_json::json!({ "sandbox": timings, "torn_down_ms": torn_down_ms, "vm": report.metrics });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(e) = report.error {
        log::warn!("the sandbox VM ended badly after the container exited: {e}");
    }
    refill_after(pool_to_refill);
    Ok(status.docker_code())
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;
