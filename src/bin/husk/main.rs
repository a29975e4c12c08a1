//! The `husk` command line: parses arguments and calls the library. Each command's
//! arguments and code live in a module of their own.

mod boot;
mod cp;
mod forward;
mod images;
mod pool;
mod run;
mod sandboxes;
mod templates;
mod vmm;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use boot::BootArgs;
use images::{ImageCommand, KernelCommand, LoginArgs, PullArgs};
use run::RunArgs;
use sandboxes::{ExecArgs, SnapshotCommand};
use templates::TemplateCommand;

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
    /// One VM in this process, configured and driven over a REST API on a Unix socket
    /// (a Firecracker-compatible subset), or from a config file.
    ///
    /// Exits 0 when the guest resets or powers off cleanly, 1 when it fails.
    Vmm(Box<vmm::VmmArgs>),
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
    /// Copy files between a detached sandbox and the host, like `docker cp`.
    ///
    /// `husk cp NAME:PATH DEST` copies out of sandbox NAME's container, `husk cp SRC
    /// NAME:PATH` into it; `-` as DEST writes a tar stream to stdout, as SRC reads one
    /// from stdin. Modes and modification times are kept. Where a copy lands follows
    /// docker: a directory goes into an existing directory under its own name (only
    /// its contents for `SRC/.`), a file into a directory or onto a file.
    Cp(cp::CpArgs),
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
    /// Pause detached sandboxes: their guests stop running until `husk resume`.
    Pause {
        /// The sandboxes.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Let paused sandboxes run again.
    Resume {
        /// The sandboxes.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Clone a running detached sandbox: the new one starts with a copy of its memory,
    /// its container's processes and its writable layer, and an identity of its own
    /// (hostname, MAC, address, vsock socket); the original runs on.
    Fork {
        /// The sandbox to clone.
        #[arg(value_name = "NAME")]
        source: String,
        /// The new sandbox's name [default: husk-XXXXXXXX].
        #[arg(long = "name", value_name = "NEW")]
        new_name: Option<String>,
    },
    /// Save a detached sandbox to a folder, or start one from such a folder.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
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
    /// Pull an image from a registry into the image store, like `docker pull`.
    ///
    /// Follows the OCI distribution protocol (OCI and Docker schema 2 manifests, the
    /// linux/amd64 image of a multi-platform one), checks every blob's digest, keeps
    /// layers by digest so that images sharing them fetch them once, and stores the
    /// image under its full name (docker.io/library/busybox:latest). Credentials come
    /// from ~/.docker/config.json (`husk login`, or docker's own login).
    Pull(PullArgs),
    /// Store registry credentials in ~/.docker/config.json (checked with the registry
    /// first).
    Login(LoginArgs),
    /// Import, list and remove container images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Build or locate the husk guest kernel.
    #[command(subcommand)]
    Kernel(KernelCommand),
    /// Build, list and remove templates (snapshots of booted guests `husk run` starts
    /// sandboxes from instead of booting a kernel).
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Keep sandboxes of an image parked, started and waiting, for `husk run` to claim
    /// instead of starting a VM (`husk pool add --help`).
    #[command(subcommand)]
    Pool(pool::PoolCommand),
}

/// `husk vmm` on its own. A VMM process lives as long as its VM and there is one per
/// VM, so it builds only its own arguments' parser, not every command's: less code
/// run and less heap at start, fewer pages resident (docs/design.md, "Memory").
#[derive(Parser)]
#[command(name = "husk vmm", version, long_about = None)]
struct VmmCli {
    #[command(flatten)]
    args: vmm::VmmArgs,
}

impl VmmCli {
    /// The arguments after `husk vmm`, when this is `husk vmm`.
    fn parse_if_vmm() -> Option<Self> {
        let mut argv = std::env::args_os();
        let program = argv.next()?;
        if argv.next()? != "vmm" {
            return None;
        }
        let mut name = program;
        name.push(" vmm");
        Some(Self::parse_from(std::iter::once(name).chain(argv)))
    }
}

struct StderrLogger;

/// When this process started, for the times of debug lines.
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let level = match r.level() {
                log::Level::Warn => "warning".to_string(),
                l => l.as_str().to_lowercase(),
            };
            if r.level() == log::Level::Debug {
                // Debug lines carry the time since husk started, to see where it goes.
                let ms = STARTED
                    .get()
                    .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1000.0);
                eprintln!("husk: {level} [{ms:.1} ms]: {}", r.args());
            } else {
                eprintln!("husk: {level}: {}", r.args());
            }
        }
    }
    fn flush(&self) {}
}

pub(crate) use husk::error_chain as render;

fn main() -> ExitCode {
    static LOGGER: StderrLogger = StderrLogger;
    let _ = STARTED.set(std::time::Instant::now());
    let _ = log::set_logger(&LOGGER);
    // Decided once: a debug line costs nothing more than a comparison unless asked for
    // (some sit on paths a hostile guest can drive, such as dropped descriptor chains).
    log::set_max_level(match std::env::var_os("HUSK_DEBUG") {
        Some(_) => log::LevelFilter::Debug,
        None => log::LevelFilter::Warn,
    });
    if let Some(vmm) = VmmCli::parse_if_vmm() {
        return finish(vmm::vmm(vmm.args));
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Boot(args) => boot::boot(args),
        Command::Vmm(args) => vmm::vmm(*args),
        Command::Run(args) => return exit_code(run::run_container(*args)),
        Command::Exec(args) => return exit_code(sandboxes::exec(*args)),
        Command::Cp(args) => cp::cp(args),
        Command::Ps { all } => sandboxes::ps(all),
        Command::Logs { follow, name } => sandboxes::logs(&name, follow),
        Command::Stop { time, names } => sandboxes::stop(&names, time),
        Command::Rm { force, names } => sandboxes::rm(&names, force),
        Command::Pause { names } => sandboxes::pause(&names, true),
        Command::Resume { names } => sandboxes::pause(&names, false),
        Command::Fork { source, new_name } => sandboxes::fork(&source, new_name),
        Command::Snapshot(cmd) => sandboxes::snapshot(cmd),
        Command::Monitor { dir } => husk::detached::monitor(&dir),
        Command::Image(cmd) => images::image(cmd),
        Command::Pull(args) => images::pull(args),
        Command::Login(args) => images::login(args),
        Command::Template(cmd) => templates::template(cmd),
        Command::Pool(cmd) => pool::pool(cmd),
        Command::Kernel(KernelCommand::Build { jobs }) => images::kernel_build(jobs),
        Command::Kernel(KernelCommand::Path) => husk::kernel::cached(None)
            .map(|k| println!("{}", k.vmlinux.display()))
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error>),
    };
    finish(result)
}

/// Exit 0, or 1 with the error on one line.
fn finish(result: CliResult) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("husk: error: {}", render(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

pub(crate) type CliResult = Result<(), Box<dyn std::error::Error>>;

/// Runs `work` on this thread while a watchdog waits up to `limit` (None: no watchdog);
/// if `work` is still going then, `on_timeout` runs and should make it end. Returns what
/// `work` returned and whether the watchdog fired.
pub(crate) fn with_watchdog<T>(
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use husk::devices::virtio::vsock::{DEFAULT_MAX_SOCKETS, MAX_SOCKETS_LIMIT};

    #[test]
    fn husk_vmm_parses_its_own_arguments_on_its_own() {
        use clap::Parser;
        super::VmmCli::command().debug_assert();
        let argv = ["husk vmm", "--api-sock", "/run/a.sock", "--id", "vm1"];
        let vmm = super::VmmCli::try_parse_from(argv);
        assert!(vmm.is_ok(), "{:?}", vmm.err());
        let none = super::VmmCli::try_parse_from(["husk vmm"]);
        assert!(none.is_err(), "--api-sock or --no-api is required");
    }

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
