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
    /// it was killed by signal N, 137 when the memory limit killed it).
    Run(Box<RunArgs>),
    /// Import, list and remove container images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Build or locate the husk guest kernel.
    #[command(subcommand)]
    Kernel(KernelCommand),
}

#[derive(Args)]
struct RunArgs {
    /// Pass this process's standard input to the command.
    #[arg(short, long)]
    interactive: bool,
    /// vCPUs of the sandbox VM.
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// Memory limit of the container in MiB (the VM gets 64 MiB more for its kernel).
    #[arg(long, default_value_t = 256)]
    memory: u64,
    /// Set an environment variable (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    workdir: Option<String>,
    /// User inside the container: name, UID or UID:GID.
    #[arg(short = 'u', long = "user")]
    user: Option<String>,
    /// Connect the sandbox to the host: a TAP husk creates (and removes at exit) with a
    /// /30 link, the host's end on the TAP and the guest's on eth0, default route via
    /// the host. Reaching further needs forwarding/NAT on the host, which husk leaves alone.
    #[arg(long)]
    net: bool,
    /// Keep the container's writable layer on a scratch disk of SIZE MiB (a sparse ext4
    /// file, removed at exit) instead of in guest RAM.
    #[arg(long = "disk", value_name = "SIZE_MIB")]
    disk: Option<u64>,
    /// Give up and stop the sandbox after SECONDS (exit code 124).
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
    #[arg(long, value_name = "FILE")]
    timings: Option<PathBuf>,
    /// The image: a name or digest from `husk image ls`; `busybox` is built on first use.
    image: String,
    /// The command and its arguments [default: the image's].
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
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
    #[arg(long, value_name = "cid=N,uds=PATH")]
    vsock: Option<VsockConfig>,
    /// Leave out the virtio entropy device.
    #[arg(long)]
    no_rng: bool,
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

/// An error and its chain of causes on one line.
fn render(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !line.contains(&text) {
            line = format!("{line}: {text}");
        }
        source = s.source();
    }
    line
}

fn main() -> ExitCode {
    static LOGGER: StderrLogger = StderrLogger;
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Debug);
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Boot(args) => boot(args),
        Command::Run(args) => return run(*args),
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
            husk::sandbox::signals::wait(),
            std::sync::atomic::Ordering::SeqCst,
        );
        stopper.stop();
    });
    let report = vm.wait();
    let signal = signalled.load(std::sync::atomic::Ordering::SeqCst);
    if signal != 0 {
        eprintln!("husk: stopped by signal {signal}");
        std::process::exit(128 + signal);
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

/// `husk run`: exits with the container's code, or 125 when husk itself failed (as
/// `docker run` does).
fn run(args: RunArgs) -> ExitCode {
    match run_container(args) {
        Ok(code) => ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)),
        Err(e) => {
            eprintln!("husk: error: {}", render(e.as_ref()));
            ExitCode::from(125)
        }
    }
}

fn run_container(args: RunArgs) -> Result<i32, Box<dyn std::error::Error>> {
    use husk::sandbox::{signals, RunSpec, Sandbox, SandboxConfig, SandboxImage, Stdio};
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::sync::{Arc, Mutex};
    // Before any thread starts: Ctrl-C and friends go to the forwarding thread only.
    signals::block()?;
    let pending = Arc::new(AtomicI32::new(0));
    let target: Arc<Mutex<Option<husk::sandbox::Signaller>>> = Arc::default();
    {
        let (pending, target) = (pending.clone(), target.clone());
        std::thread::spawn(move || loop {
            let sig = signals::wait();
            let sent = target
                .lock()
                .map(|t| t.as_ref().is_some_and(|s| s.send(sig)));
            if !sent.unwrap_or(false) {
                pending.store(sig, Ordering::SeqCst);
            }
        });
    }
    let store = husk::image::ImageStore::open(None)?;
    let image = match store.resolve(&args.image) {
        Ok(image) => image,
        Err(_) if args.image == "busybox" => store.ensure_busybox(true)?,
        Err(e) => return Err(e.into()),
    };
    let kernel = match args.kernel {
        Some(k) => k,
        None => husk::kernel::cached(None)?.vmlinux,
    };
    let mut config = SandboxConfig::new(SandboxImage::from_store(&image), kernel);
    config.cpus = args.cpus;
    config.memory_mib = args.memory + 64;
    config.network = args.net;
    config.scratch_disk_mib = args.disk;
    if let Some(secs) = args.timeout {
        config.boot_timeout = std::time::Duration::from_secs(secs);
    }
    if let Some(path) = args.console {
        config.console = ConsoleConfig::File(path);
    }
    let sandbox = Sandbox::start(config)?;
    if let Ok(mut t) = target.lock() {
        *t = Some(sandbox.signaller());
    }
    let early = pending.load(Ordering::SeqCst);
    if early != 0 {
        // Signalled while the VM booted: nothing to forward to yet; stop cleanly.
        drop(sandbox.stop());
        return Ok(128 + early);
    }
    let timed_out = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let (Some(secs), Some(stopper)) = (args.timeout, sandbox.stopper()) {
        let flag = timed_out.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(secs));
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            stopper.stop();
        });
    }
    let spec = RunSpec {
        args: args.command,
        env: args.env,
        cwd: args.workdir,
        user: args.user,
        tty: None,
        limits: husk_protocol::Limits {
            memory_bytes: Some(args.memory << 20),
            ..Default::default()
        },
    };
    let result = sandbox.run(&spec, Stdio::inherit(args.interactive));
    if timed_out.load(std::sync::atomic::Ordering::SeqCst) {
        eprintln!(
            "husk: the sandbox was stopped after {} s (--timeout)",
            args.timeout.unwrap_or(0)
        );
        return Ok(124);
    }
    let status = result?;
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
