//! The `husk` command line: parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use husk::config::{ConsoleConfig, VmConfig, DEFAULT_MEMORY_MIB};
use husk::devices::virtio::{block::BlockConfig, net::NetConfig, vsock::VsockConfig};

/// husk: a tiny KVM micro-VM monitor that runs containers inside the guest.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a kernel (and initrd) in a micro-VM and stream its console.
    ///
    /// Exits 0 when the guest resets or powers off cleanly, and 1 with one line on stderr
    /// when it panics, triple-faults or cannot run.
    Boot(Box<BootArgs>),
    /// Run a command in a container inside a new micro-VM, like `docker run`.
    ///
    /// Streams the command's stdout and stderr, and exits with its exit code (128+N when
    /// it was killed by signal N, 137 when the memory limit killed it, 125 when husk
    /// itself failed). With -d the sandbox keeps running in the background, named, for
    /// `husk exec`, `ps`, `logs`, `stop` and `rm`.
    Run(Box<RunArgs>),
    /// Run another command in a detached sandbox's container, like `docker exec`.
    ///
    /// Exits with the command's exit code (125 when husk failed).
    Exec(Box<ExecArgs>),
    /// List detached sandboxes (running ones; -a for all).
    Ps {
        /// Also list sandboxes that have ended.
        #[arg(short, long)]
        all: bool,
    },
    /// Print the output of a detached sandbox's main command (stdout, then stderr).
    Logs {
        /// Keep printing new output until the sandbox ends.
        #[arg(short, long)]
        follow: bool,
        /// The sandbox.
        name: String,
    },
    /// Stop detached sandboxes (SIGTERM, then a shutdown after the grace time).
    ///
    /// SIGTERM goes to the main command; if the sandbox has not ended after the grace
    /// time, its VM is shut down (everything in it killed). The record stays for
    /// `husk logs` and `husk rm`.
    Stop {
        /// Seconds to wait after SIGTERM before shutting the VM down.
        #[arg(short, long, default_value_t = 10)]
        time: u64,
        /// The sandboxes.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove ended detached sandboxes (their state and logs).
    Rm {
        /// Stop running ones first (no grace time).
        #[arg(short, long)]
        force: bool,
        /// The sandboxes.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// The monitor process of a detached sandbox (started by `husk run -d`).
    #[command(name = "__monitor", hide = true)]
    Monitor {
        /// The sandbox's folder.
        dir: PathBuf,
    },
    /// Import, list and remove container images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Build or locate the husk guest kernel.
    #[command(subcommand)]
    Kernel(KernelCommand),
}

/// How the command runs: the options `husk run` and `husk exec` share.
#[derive(Args)]
struct ProcessArgs {
    /// Pass this process's standard input to the command.
    #[arg(short, long)]
    interactive: bool,
    /// Give the command a terminal (a pseudo-terminal in the guest, sized like this one
    /// and resized with it; with -i this terminal is in raw mode while it runs).
    #[arg(short, long)]
    tty: bool,
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
    fn spec(&self, command: Vec<String>) -> husk::sandbox::RunSpec {
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
struct RunArgs {
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
    /// Connect the sandbox to the host: a TAP husk creates (and removes at exit) with a
    /// /30 link, the host's end on the TAP and the guest's on eth0, default route via
    /// the host. Reaching further needs forwarding/NAT on the host, which husk leaves alone.
    #[arg(long)]
    net: bool,
    /// Keep the container's writable layer on a scratch disk of SIZE MiB (a sparse ext4
    /// file, removed at exit) instead of in guest RAM.
    #[arg(long = "disk", value_name = "SIZE_MIB")]
    disk: Option<u64>,
    /// Give up after SECONDS from the start, boot included: the sandbox is stopped, the
    /// guest's last console and kernel log lines are printed, and the exit code is 124
    /// (a detached sandbox is stopped and shows as such in `husk ps -a`).
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
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
    /// The image: a name or digest from `husk image ls`; `busybox` is built on first use.
    image: String,
    /// The command and its arguments [default: the image's].
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Args)]
struct ExecArgs {
    #[command(flatten)]
    process: ProcessArgs,
    /// The sandbox (`husk ps`).
    name: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Import an OCI image layout, an OCI archive, a `docker save` archive, or a root
    /// filesystem directory or tarball as a read-only image.
    Import {
        /// The input.
        path: PathBuf,
        /// A name for the image.
        #[arg(long)]
        name: Option<String>,
    },
    /// List the images.
    Ls,
    /// Build the default `busybox` image from Debian's busybox-static (`husk run busybox`
    /// does this on first use).
    Busybox,
    /// Remove an image by name or digest.
    Rm {
        /// Name or digest (a unique prefix of 6 or more hex digits will do).
        image: String,
    },
}

#[derive(Args)]
struct BootArgs {
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
    #[arg(long = "net", value_name = "tap=[NAME][,mac=MAC]")]
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
}

#[derive(Subcommand)]
enum KernelCommand {
    /// Build the guest kernel from Debian's linux-source package (cached; a second call is instant).
    Build {
        /// Parallel make jobs [default: number of CPUs].
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// Print the path of the cached guest kernel (fails if none is built).
    Path,
}

struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn || std::env::var_os("HUSK_DEBUG").is_some()
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let level = match r.level() {
                log::Level::Warn => "warning".to_string(),
                l => l.as_str().to_lowercase(),
            };
            eprintln!("husk: {level}: {}", r.args());
        }
    }
    fn flush(&self) {}
}

use husk::error_chain as render;

fn main() -> ExitCode {
    static LOGGER: StderrLogger = StderrLogger;
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Debug);
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Boot(args) => boot(args),
        Command::Run(args) => return exit_code(run_container(*args)),
        Command::Exec(args) => return exit_code(exec(*args)),
        Command::Ps { all } => ps(all),
        Command::Logs { follow, name } => logs(&name, follow),
        Command::Stop { time, names } => stop(&names, time),
        Command::Rm { force, names } => rm(&names, force),
        Command::Monitor { dir } => husk::detached::monitor(&dir),
        Command::Image(cmd) => image(cmd),
        Command::Kernel(KernelCommand::Build { jobs }) => kernel_build(jobs),
        Command::Kernel(KernelCommand::Path) => husk::kernel::cached(None)
            .map(|k| println!("{}", k.vmlinux.display()))
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error>),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("husk: error: {}", render(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

fn kernel_build(jobs: Option<usize>) -> CliResult {
    let opts = husk::kernel::BuildOptions {
        jobs,
        cache_dir: None,
        progress: true,
    };
    let kernel = husk::kernel::build(&opts)?;
    println!("{}", kernel.vmlinux.display());
    Ok(())
}

/// Runs `work` on this thread while a watchdog waits up to `limit` (None: no watchdog);
/// if `work` is still going then, `on_timeout` runs and should make it end. Returns what
/// `work` returned and whether the watchdog fired.
fn with_watchdog<T>(
    limit: Option<std::time::Duration>,
    on_timeout: impl FnOnce() + Send,
    work: impl FnOnce() -> T,
) -> (T, bool) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc::{channel, RecvTimeoutError};
    let fired = AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        // Dropping `done` (the work ended) wakes the watchdog early.
        let (done, finished) = channel::<()>();
        if let Some(limit) = limit {
            let fired = &fired;
            scope.spawn(move || {
                if finished.recv_timeout(limit) == Err(RecvTimeoutError::Timeout) {
                    fired.store(true, Ordering::SeqCst);
                    on_timeout();
                }
            });
        }
        let result = work();
        drop(done);
        result
    });
    (result, fired.into_inner())
}

fn boot(args: Box<BootArgs>) -> CliResult {
    let mut config = VmConfig {
        initrd: args.initrd,
        cmdline: args.cmdline,
        cpus: args.cpus,
        memory_mib: args.memory,
        console: args
            .console
            .map_or(ConsoleConfig::Stdout, ConsoleConfig::File),
        profile: args.profile_guest.is_some(),
        disks: args.disks,
        nets: args.nets,
        vsock: args.vsock,
        rng: !args.no_rng,
        ..VmConfig::new(args.kernel.clone().unwrap_or_default())
    };
    // Numbers first: a bad --cpus is reported even when no kernel is built yet.
    config.validate_resources()?;
    if args.kernel.is_none() {
        config.kernel = husk::kernel::cached(None)?.vmlinux;
    }
    let kernel = config.kernel.clone();
    // Ctrl-C or SIGTERM stop the VM through the same path as a guest exit, so TAPs,
    // sockets and threads are cleaned up before husk exits.
    husk::sandbox::signals::block()?;
    let vm = husk::vmm::start(&config)?;
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
    let (broke, timed_out) = with_watchdog(
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
    );
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
            .unwrap_or_else(|| kernel.with_file_name("System.map"));
        let symbols = husk::profile::SymbolTable::from_system_map(&map)?;
        let mut out = std::fs::File::create(path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        husk::profile::write_report(&report.samples, Some(&symbols), &mut out)?;
    }
    report.outcome?;
    Ok(())
}

fn image(cmd: ImageCommand) -> CliResult {
    let store = husk::image::ImageStore::open(None)?;
    match cmd {
        ImageCommand::Import { path, name } => {
            let image = store.import(&path, name.as_deref(), true)?;
            println!("{}", image.digest);
        }
        ImageCommand::Ls => {
            println!("{:<24} {:<14} {:>10}  SOURCE", "NAME", "ID", "SIZE");
            for image in store.list()? {
                let name = image.name.as_deref().unwrap_or("<none>");
                let size = format!("{:.1}MB", image.size as f64 / 1e6);
                println!(
                    "{name:<24} {:<14} {size:>10}  {}",
                    image.short_id(),
                    image.source
                );
            }
        }
        ImageCommand::Rm { image } => store.remove(&image)?,
        ImageCommand::Busybox => println!("{}", store.ensure_busybox(true)?.digest),
    }
    Ok(())
}

/// `husk run` and `husk exec` exit with the command's code, or 125 when husk itself
/// failed (as docker does).
fn exit_code(result: Result<i32, Box<dyn std::error::Error>>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)),
        Err(e) => {
            eprintln!("husk: error: {}", render(e.as_ref()));
            ExitCode::from(125)
        }
    }
}

/// Where forwarded signals and terminal resizes go once a process runs.
trait Forward: Send {
    fn signal(&self, signal: i32) -> bool;
    fn resize(&self, size: husk::sandbox::TtySize) -> bool;
}

impl Forward for husk::sandbox::Signaller {
    fn signal(&self, signal: i32) -> bool {
        self.send(signal)
    }
    fn resize(&self, size: husk::sandbox::TtySize) -> bool {
        husk::sandbox::Signaller::resize(self, size)
    }
}

impl Forward for husk::detached::ControlSignaller {
    fn signal(&self, signal: i32) -> bool {
        husk::detached::ControlSignaller::signal(self, signal)
    }
    fn resize(&self, size: husk::sandbox::TtySize) -> bool {
        husk::detached::ControlSignaller::resize(self, size)
    }
}

type ForwardTarget = std::sync::Arc<std::sync::Mutex<Option<Box<dyn Forward>>>>;

/// Block Ctrl-C and friends (call before any thread starts) and forward them, and
/// terminal resizes, to the target once it is set. Returns the target and the signal
/// that arrived while there was none (0 if none did).
fn forward_signals(
) -> std::io::Result<(ForwardTarget, std::sync::Arc<std::sync::atomic::AtomicI32>)> {
    use husk::sandbox::{signals, terminal};
    use std::sync::atomic::Ordering;
    signals::block()?;
    let pending = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
    let target: ForwardTarget = std::sync::Arc::default();
    let (early, to) = (pending.clone(), target.clone());
    std::thread::spawn(move || loop {
        let sig = signals::wait();
        let guard = to.lock().unwrap_or_else(|e| e.into_inner());
        if sig == libc::SIGWINCH {
            if let (Some(t), Some(size)) = (guard.as_ref(), terminal::window_size()) {
                t.resize(size);
            }
        } else if !guard.as_ref().is_some_and(|t| t.signal(sig)) {
            early.store(sig, Ordering::SeqCst);
        }
    });
    Ok((target, pending))
}

/// The terminal of `-t`: its size, and raw mode when stdin is one and is read.
fn tty_setup(
    tty: bool,
    interactive: bool,
) -> std::io::Result<(
    Option<husk::sandbox::TtySize>,
    Option<husk::sandbox::terminal::RawMode>,
)> {
    use husk::sandbox::terminal;
    if !tty {
        return Ok((None, None));
    }
    let size = terminal::window_size().unwrap_or(terminal::DEFAULT_SIZE);
    let raw = if interactive {
        terminal::RawMode::enable()?
    } else {
        None
    };
    Ok((Some(size), raw))
}

fn resolve_image(
    store: &husk::image::ImageStore,
    name: &str,
) -> Result<husk::image::Image, Box<dyn std::error::Error>> {
    match store.resolve(name) {
        Ok(image) => Ok(image),
        Err(_) if name == "busybox" => Ok(store.ensure_busybox(true)?),
        Err(e) => Err(e.into()),
    }
}

fn run_container(args: RunArgs) -> Result<i32, Box<dyn std::error::Error>> {
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
    // Before any thread starts: Ctrl-C and friends go to the forwarding thread only.
    let (target, pending) = forward_signals()?;
    let store = husk::image::ImageStore::open(None)?;
    let image = resolve_image(&store, &args.image)?;
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
            network: args.net,
            scratch_disk_mib: args.disk,
            console: args.console,
            spec,
            remove_on_exit: args.rm,
            timeout: args.timeout.map(std::time::Duration::from_secs),
        };
        let husk = std::env::current_exe()?;
        let dir = husk::detached::launch(&request, &husk)?;
        println!("{}", dir.name());
        return Ok(0);
    }
    let mut config = SandboxConfig::new(SandboxImage::from_store(&image), kernel);
    config.cpus = args.cpus;
    config.memory_mib = args.memory + 64;
    config.network = args.net;
    config.scratch_disk_mib = args.disk;
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
    if let Err(e) = report.outcome {
        log::warn!("the sandbox VM ended badly after the container exited: {e}");
    }
    Ok(status.docker_code())
}

fn exec(args: ExecArgs) -> Result<i32, Box<dyn std::error::Error>> {
    use husk::sandbox::{RunSpec, Stdio};
    let (target, _) = forward_signals()?;
    let mut control = husk::detached::Control::connect(&args.name)?;
    if let Ok(mut t) = target.lock() {
        *t = Some(Box::new(control.signaller()));
    }
    let process = &args.process;
    let (tty, raw) = tty_setup(process.tty, process.interactive)?;
    let spec = RunSpec {
        tty,
        ..process.spec(args.command)
    };
    let result = control.exec(&spec, Stdio::inherit(process.interactive));
    drop(raw);
    Ok(result?.docker_code())
}

fn ps(all: bool) -> CliResult {
    use husk::detached::{describe, SandboxDir};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    println!(
        "{:<20} {:<16} {:<28} {:>10}  STATUS",
        "NAME", "IMAGE", "COMMAND", "CREATED"
    );
    for dir in SandboxDir::list()? {
        let Ok(state) = dir.state() else { continue };
        let running = dir.is_running();
        if !all && !running {
            continue;
        }
        let mut command = state.command.join(" ");
        if command.chars().count() > 28 {
            command = command.chars().take(25).collect::<String>() + "...";
        }
        let age = now.saturating_sub(state.created);
        let created = match age {
            0..=119 => format!("{age}s ago"),
            120..=7199 => format!("{}m ago", age / 60),
            _ => format!("{}h ago", age / 3600),
        };
        println!(
            "{:<20} {:<16} {:<28} {:>10}  {}",
            state.name,
            state.image,
            command,
            created,
            describe(&state, running)
        );
    }
    Ok(())
}

fn logs(name: &str, follow: bool) -> CliResult {
    use std::io::{Read, Write};
    let dir = husk::detached::SandboxDir::open(name)?;
    let mut files = Vec::new();
    for stderr in [false, true] {
        let path = dir.log(stderr);
        match std::fs::File::open(&path) {
            Ok(file) => files.push((file, stderr)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot open {}: {e}", path.display()).into()),
        }
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Checked before reading, so output written just before the end is not missed.
        let running = follow && dir.is_running();
        for (file, stderr) in &mut files {
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                if *stderr {
                    std::io::stderr().write_all(&buf[..n])?;
                } else {
                    std::io::stdout().write_all(&buf[..n])?;
                }
            }
        }
        std::io::stdout().flush()?;
        if !running {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Apply `action` to every sandbox named, printing each name done and each error;
/// fails naming those that failed.
fn each_sandbox(
    names: &[String],
    verb: &str,
    action: impl Fn(&str) -> Result<(), husk::detached::DetachedError>,
) -> CliResult {
    if let [name] = names {
        action(name)?;
        println!("{name}");
        return Ok(());
    }
    let mut failed = Vec::new();
    for name in names {
        match action(name) {
            Ok(()) => println!("{name}"),
            Err(e) => {
                eprintln!("husk: error: {}", render(&e));
                failed.push(name.as_str());
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("could not {verb}: {}", failed.join(", ")).into())
    }
}

fn stop(names: &[String], grace_secs: u64) -> CliResult {
    let grace = std::time::Duration::from_secs(grace_secs);
    each_sandbox(names, "stop", |name| {
        husk::detached::stop(name, grace).map(drop)
    })
}

fn rm(names: &[String], force: bool) -> CliResult {
    use husk::detached::{DetachedError, SandboxDir};
    each_sandbox(names, "remove", |name| {
        let dir = SandboxDir::open(name)?;
        if dir.is_running() {
            if !force {
                return Err(DetachedError::Running(name.to_string()));
            }
            husk::detached::stop(name, std::time::Duration::ZERO)?;
        }
        dir.remove()
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use husk::devices::virtio::vsock::{DEFAULT_MAX_SOCKETS, MAX_SOCKETS_LIMIT};

    #[test]
    fn boot_help_states_the_vsock_budget_the_library_uses() {
        let mut cli = super::Cli::command();
        let boot = cli.find_subcommand_mut("boot").expect("a boot command");
        let help = boot.render_long_help().to_string();
        let words = help.split_whitespace().collect::<Vec<_>>().join(" ");
        let budget = format!("default {DEFAULT_MAX_SOCKETS}, at most {MAX_SOCKETS_LIMIT}");
        assert!(words.contains(&budget), "{help}");
    }
}
