//! `husk image ...` and `husk kernel ...`.

use std::path::PathBuf;

use clap::Subcommand;

use crate::CliResult;

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
