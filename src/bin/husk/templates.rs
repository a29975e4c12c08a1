//! `husk template build|ls|rm`: the snapshots of booted guests that `husk run` starts
//! sandboxes from.

use std::path::PathBuf;

use clap::Subcommand;
use husk::sandbox::{SandboxConfig, SandboxImage, Template};

use crate::CliResult;

#[derive(Subcommand)]
pub(crate) enum TemplateCommand {
    /// Boot a guest to its agent and keep it as the template for these vCPUs and this
    /// memory (replacing one there); `husk run` otherwise makes it on first use.
    Build {
        #[command(flatten)]
        shape: ShapeArgs,
    },
    /// List the templates: vCPUs, guest RAM, the kernel and agent they were made with,
    /// and the memory their snapshot holds. An image's own template (its container made
    /// ahead, made by its first `husk run`) is named after the plain one and the
    /// first 12 digits of the image's sha256.
    Ls,
    /// Remove templates by name (`husk template ls`); `husk run` makes them again.
    Rm {
        /// The templates.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// The vCPUs, memory and kernel of the sandboxes a template or a pool is for.
#[derive(clap::Args)]
pub(crate) struct ShapeArgs {
    /// vCPUs, as `husk run --cpus`.
    #[arg(long, default_value_t = 1)]
    pub(crate) cpus: u8,
    /// Container memory limit in MiB, as `husk run --memory` (the VM has 64 MiB more).
    #[arg(long, default_value_t = 256)]
    pub(crate) memory: u64,
    /// Guest kernel [default: `husk kernel path`].
    #[arg(long)]
    kernel: Option<PathBuf>,
}

impl ShapeArgs {
    /// The kernel given, else the cached one.
    pub(crate) fn kernel(&self) -> Result<PathBuf, husk::kernel::KernelError> {
        match &self.kernel {
            Some(k) => Ok(k.clone()),
            None => Ok(husk::kernel::cached(None)?.vmlinux),
        }
    }
}

pub(crate) fn template(cmd: TemplateCommand) -> CliResult {
    match cmd {
        TemplateCommand::Build { shape } => {
            let (cpus, memory, kernel) = (shape.cpus, shape.memory, shape.kernel()?);
            let mut config = SandboxConfig::new(SandboxImage::default(), kernel);
            config.cpus = cpus;
            config.memory_mib = memory + 64;
            eprintln!(
                "husk: booting a guest for the template of {cpus} vCPU(s), {} MiB",
                memory + 64
            );
            let template = Template::rebuild_for_config(&config)?;
            let info = template.info();
            eprintln!(
                "husk: template {} made in {:.0} ms ({} KiB of guest memory)",
                info.name,
                info.build_ms,
                info.memory_bytes >> 10
            );
            println!("{}", template.dir().display());
        }
        TemplateCommand::Ls => {
            println!(
                "{:<28} {:>4} {:>8}  {:<14} {:<18} {:>10}  CREATED",
                "NAME", "CPUS", "MEMORY", "KERNEL", "AGENT", "SNAPSHOT"
            );
            for t in Template::list()? {
                let i = t.info();
                println!(
                    "{:<28} {:>4} {:>6}Mi  {:<14} {:<18} {:>8}Ki  {}",
                    i.name,
                    i.cpus,
                    i.memory_mib,
                    i.kernel_sha256.chars().take(12).collect::<String>(),
                    i.agent_digest,
                    i.memory_bytes >> 10,
                    crate::sandboxes::age(i.created),
                );
            }
        }
        TemplateCommand::Rm { names } => {
            for name in names {
                Template::remove(&name)?;
                println!("{name}");
            }
        }
    }
    Ok(())
}
