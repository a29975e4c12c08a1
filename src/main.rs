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
    Boot(BootArgs),
    /// Build or locate the husk guest kernel.
    #[command(subcommand)]
    Kernel(KernelCommand),
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

fn boot(args: BootArgs) -> CliResult {
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
    let report = husk::vmm::run(&config)?;
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
