//! `husk image ...` and `husk kernel ...`.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::CliResult;

/// How to reach a registry: the options `husk pull`, `husk login` and `husk run` share.
#[derive(Args, Clone, Default)]
pub(crate) struct RegistryArgs {
    /// Allow plain HTTP and TLS without certificate checks for this registry (plain
    /// HTTP is always allowed for a registry on this machine: localhost, 127.0.0.0/8, ::1).
    #[arg(long)]
    insecure: bool,
    /// Trust the CA certificates (*.crt) in DIR for the registry [default:
    /// /etc/docker/certs.d/REGISTRY/ when it exists, else the public roots].
    #[arg(long, value_name = "DIR")]
    cert_dir: Option<PathBuf>,
}

impl RegistryArgs {
    pub(crate) fn connection(&self) -> husk::image::registry::Connection {
        husk::image::registry::Connection {
            insecure: self.insecure,
            cert_dir: self.cert_dir.clone(),
            ..Default::default()
        }
    }
}

/// `husk run --pull`: when to pull the image.
#[derive(ValueEnum, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum PullPolicy {
    /// Pull when the store has no image of that name.
    #[default]
    Missing,
    /// Pull every time (the layers already kept are not fetched again).
    Always,
    /// Never pull: the image must be in the store.
    Never,
}

#[derive(Args)]
pub(crate) struct PullArgs {
    /// The image: `[REGISTRY[:PORT]/]REPOSITORY[:TAG][@DIGEST]` (`busybox` is
    /// docker.io/library/busybox:latest).
    reference: String,
    /// No progress bars.
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Args)]
pub(crate) struct LoginArgs {
    /// The registry (`host[:port]`) [default: docker.io].
    #[arg(default_value = "docker.io")]
    registry: String,
    /// The user name.
    #[arg(short, long)]
    username: String,
    /// Read the password from standard input (one line) instead of the terminal.
    #[arg(long)]
    password_stdin: bool,
    #[command(flatten)]
    connection: RegistryArgs,
}

/// `husk pull`: prints the image's digest (the erofs file's, as `husk image ls`).
pub(crate) fn pull(args: PullArgs) -> CliResult {
    let store = husk::image::ImageStore::open(None)?;
    let options = husk::image::PullOptions {
        connection: args.registry.connection(),
        progress: !args.quiet,
    };
    let image = store.pull(&args.reference, &options)?;
    eprintln!(
        "{}: {}",
        image.name.as_deref().unwrap_or(&args.reference),
        image.source
    );
    println!("{}", image.digest);
    Ok(())
}

/// `husk login`: checks the credentials with the registry and stores them in
/// `~/.docker/config.json`, where `husk pull` (and docker) find them.
pub(crate) fn login(args: LoginArgs) -> CliResult {
    use std::io::BufRead;
    let password = if args.password_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\n', '\r']).to_string()
    } else {
        eprint!("Password: ");
        read_password()?
    };
    if password.is_empty() {
        return Err("an empty password".into());
    }
    let credentials = husk::image::registry::Credentials {
        username: args.username,
        password,
    };
    let path = husk::image::login(&args.registry, credentials, &args.connection.connection())?;
    eprintln!("Login succeeded: credentials stored in {}", path.display());
    Ok(())
}

/// A line from the terminal without echo (stdin when it is no terminal).
fn read_password() -> std::io::Result<String> {
    use std::io::BufRead;
    let echo_off = husk::sandbox::terminal::NoEcho::enable()?;
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    drop(echo_off);
    eprintln!();
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

#[derive(Subcommand)]
pub(crate) enum ImageCommand {
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

#[derive(Subcommand)]
pub(crate) enum KernelCommand {
    /// Build the guest kernel from Debian's linux-source package (cached; a second call is instant).
    Build {
        /// Parallel make jobs [default: number of CPUs].
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// Print the path of the cached guest kernel (fails if none is built).
    Path,
}

pub(crate) fn kernel_build(jobs: Option<usize>) -> CliResult {
    let opts = husk::kernel::BuildOptions {
        jobs,
        cache_dir: None,
        progress: true,
    };
    let kernel = husk::kernel::build(&opts)?;
    println!("{}", kernel.vmlinux.display());
    Ok(())
}

pub(crate) fn image(cmd: ImageCommand) -> CliResult {
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
