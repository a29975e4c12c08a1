//! `husk boot`: the low-level VMM, a kernel and initrd in a micro-VM with its console.

use std::path::PathBuf;

use clap::Args;
use husk::config::{ConsoleConfig, VmConfig, DEFAULT_MEMORY_MIB};
use husk::devices::virtio::{block::BlockConfig, net::NetConfig, vsock::VsockConfig};

use crate::{with_watchdog, CliResult};

#[derive(Args)]
pub(crate) struct BootArgs {
    /// Guest kernel: an ELF vmlinux with a PVH entry, or a bzImage [default: `husk kernel path`].
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initial ramdisk (cpio archive).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Extra kernel command-line arguments, appended to husk's base line.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Number of vCPUs (1 to 32).
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = DEFAULT_MEMORY_MIB)]
    memory: u64,
    /// Write the guest console to FILE instead of standard output.
    #[arg(long, value_name = "FILE")]
    console: Option<PathBuf>,
    /// Sample the guest's RIP and write a symbolized histogram to FILE at exit.
    #[arg(long, value_name = "FILE")]
    profile_guest: Option<PathBuf>,
    /// System.map used to symbolize the profile [default: System.map next to the kernel].
    #[arg(long, value_name = "PATH")]
    system_map: Option<PathBuf>,
    /// Write boot milestones, VM exits, VMM CPU time and RSS as JSON to FILE at exit.
    #[arg(long, value_name = "FILE")]
    timings: Option<PathBuf>,
    /// Add a virtio disk backed by a raw image file; repeat for more (vda, vdb, ...).
    /// `root=true` boots from it (`root=/dev/vdX`).
    #[arg(
        long = "disk",
        value_name = "path=FILE[,ro=BOOL][,id=SERIAL][,root=BOOL]"
    )]
    disks: Vec<BlockConfig>,
    /// Add a virtio network card on a TAP device: an existing one by name, or one husk
    /// creates (and removes at exit) when no name is given (`--net tap=`).
    /// `vhost=on` moves its frames through the host kernel's vhost-net
    /// (/dev/vhost-net) instead of husk's device thread: faster, but no rate limits
    /// and no snapshots of the VM.
    #[arg(long = "net", value_name = "tap=[NAME][,mac=MAC][,vhost=on]")]
    nets: Vec<NetConfig>,
    /// Add a virtio-vsock device with guest CID N; host programs reach the guest through
    /// the Unix socket PATH (`CONNECT <port>`), guest connections to port P reach PATH_P.
    /// `max_sockets` bounds the host sockets the guest can make husk hold at once
    /// (connections either way and host clients before their CONNECT line; default
    /// 128, at most 1024): guest connections beyond it are refused (RST), host clients
    /// wait until one closes.
    #[arg(long, value_name = "cid=N,uds=PATH[,max_sockets=N]")]
    vsock: Option<VsockConfig>,
    /// Leave out the virtio entropy device.
    #[arg(long)]
    no_rng: bool,
    /// Stop the VM after S seconds if it is still running, print where the guest was
    /// (console, kernel log, vCPUs, virtio queues) and exit 124.
    #[arg(long, value_name = "S")]
    timeout: Option<u64>,
    /// Snapshot the VM into DIR (a new folder) the first time its console prints TEXT;
    /// the guest then runs on (see --snapshot-stop).
    #[arg(long, value_name = "TEXT", requires = "snapshot_dir")]
    snapshot_on: Option<String>,
    /// Where --snapshot-on writes the snapshot.
    #[arg(long, value_name = "DIR", requires = "snapshot_on")]
    snapshot_dir: Option<PathBuf>,
    /// Stop the VM once --snapshot-on has written the snapshot (exit 0).
    #[arg(long, requires = "snapshot_on")]
    snapshot_stop: bool,
    /// Restore the VM of the snapshot in DIR instead of booting a kernel: vCPUs, memory
    /// and devices come from the snapshot; --disk replaces the backing files of its
    /// disks in order, --net the backends of its cards, --vsock gives its vsock device
    /// a new socket, --console takes the console.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["kernel", "initrd", "profile_guest"])]
    restore: Option<PathBuf>,
}

/// Snapshot `vm` into `dir` once its console shows `text`; with `stop`, stop it after.
/// Ends when the VM does.
fn snapshot_when(vm: &husk::vmm::RunningVm, text: &str, dir: &std::path::Path, stop: bool) {
    while vm.is_running() {
        if vm.console_tail().contains(text) {
            // With --snapshot-stop the guest must not run on after its snapshot.
            if stop {
                if let Err(e) = vm.pause() {
                    eprintln!("husk: error: snapshot: {}", crate::render(&e));
                }
            }
            let options = husk::snapshot::CreateOptions::default();
            match husk::snapshot::create(vm, dir, &options) {
                Ok(done) => eprintln!(
                    "husk: snapshot written to {} ({} KiB of {} MiB memory written; paused \
                     {:.1} ms, state {:.1} ms, memory {:.1} ms)",
                    dir.display(),
                    done.memory.written >> 10,
                    done.memory.total >> 20,
                    husk::metrics::ms(done.pause),
                    husk::metrics::ms(done.save_state),
                    husk::metrics::ms(done.write_memory),
                ),
                Err(e) => eprintln!("husk: error: snapshot: {}", crate::render(&e)),
            }
            if stop {
                vm.stopper().stop();
            }
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The restore options `husk boot --restore` builds from its flags.
fn restore_options(args: &BootArgs, console: ConsoleConfig) -> husk::vmm::RestoreOptions {
    husk::vmm::RestoreOptions {
        disks: args
            .disks
            .iter()
            .map(|d| d.path.clone())
            .enumerate()
            .collect(),
        nets: args.nets.iter().cloned().enumerate().collect(),
        vsock: args.vsock.clone(),
        console,
        paused: false,
        record_touched: false,
    }
}

pub(crate) fn boot(args: Box<BootArgs>) -> CliResult {
    let console = args
        .console
        .clone()
        .map_or(ConsoleConfig::Stdout, ConsoleConfig::File);
    let mut config = VmConfig {
        initrd: args.initrd.clone(),
        cmdline: args.cmdline.clone(),
        cpus: args.cpus,
        memory_mib: args.memory,
        console: console.clone(),
        profile: args.profile_guest.is_some(),
        disks: args.disks.clone(),
        nets: args.nets.clone(),
        vsock: args.vsock.clone(),
        rng: !args.no_rng,
        ..VmConfig::new(args.kernel.clone().unwrap_or_default())
    };
    // Numbers first: a bad --cpus is reported even when no kernel is built yet.
    config.validate_resources()?;
    if args.kernel.is_none() && args.restore.is_none() {
        config.kernel = husk::kernel::cached(None)?.vmlinux;
    }
    // Ctrl-C or SIGTERM stop the VM through the same path as a guest exit, so TAPs,
    // sockets and threads are cleaned up before husk exits.
    husk::sandbox::signals::block()?;
    let vm = match &args.restore {
        Some(dir) => {
            let expect = husk::snapshot::fingerprint::Expect::default();
            husk::snapshot::restore(dir, &expect, &restore_options(&args, console))?
        }
        None => husk::vmm::start(&config)?,
    };
    let kernel = vm.config().kernel.clone();
    let stopper = vm.stopper();
    let signalled = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
    let flag = signalled.clone();
    std::thread::spawn(move || {
        flag.store(
            husk::sandbox::signals::wait_forwarded(),
            std::sync::atomic::Ordering::SeqCst,
        );
        stopper.stop();
    });
    // A guest that broke (triple fault, emulation failure) may have printed nothing:
    // show the end of its kernel log, read from guest memory, before the VM goes.
    // (A panic prints its own message on the console.)
    let (broke, timed_out) = std::thread::scope(|scope| {
        if let (Some(text), Some(dir)) = (&args.snapshot_on, &args.snapshot_dir) {
            let (vm, stop) = (&vm, args.snapshot_stop);
            scope.spawn(move || snapshot_when(vm, text, dir, stop));
        }
        with_watchdog(
            args.timeout.map(std::time::Duration::from_secs),
            || {
                // Where the guest is, before the VM is gone.
                eprintln!(
                    "husk: --timeout: the guest still ran after {} s; its last output:\n{}",
                    args.timeout.unwrap_or(0),
                    vm.failure_output()
                );
                vm.stopper().stop();
            },
            || {
                vm.exit_watch()
                    .wait()
                    .is_err_and(|e| !matches!(e, husk::vmm::exit::GuestError::Panic(_)))
            },
        )
    });
    if broke {
        match vm.kernel_log_tail(30) {
            Ok(log) => {
                eprintln!("husk: the guest kernel's last messages (from guest memory):\n{log}")
            }
            Err(e) => eprintln!("husk: the guest kernel's log is not readable: {e}"),
        }
    }
    let report = vm.wait();
    let signal = signalled.load(std::sync::atomic::Ordering::SeqCst);
    if signal != 0 {
        eprintln!("husk: stopped by signal {signal}");
        std::process::exit(128 + signal);
    }
    if timed_out {
        eprintln!("husk: the VM was stopped after --timeout");
        std::process::exit(124);
    }
    if let Some(path) = &args.timings {
        let json = serde_json::to_string_pretty(&report.metrics)?;
        std::fs::write(path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.profile_guest {
        let map = args
            .system_map
            .clone()
            .unwrap_or_else(|| kernel.with_file_name("System.map"));
        let symbols = husk::profile::SymbolTable::from_system_map(&map)?;
        let mut out = std::fs::File::create(path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        husk::profile::write_report(&report.samples, Some(&symbols), &mut out)?;
    }
    report.outcome?;
    Ok(())
}
