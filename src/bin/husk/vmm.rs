//! `husk vmm`: one VM in this process, driven over a REST API socket (a
//! Firecracker-compatible subset) or started from a config file.

use std::path::PathBuf;

use clap::Args;
use husk::config::ConsoleConfig;

use crate::CliResult;

#[derive(Args)]
pub(crate) struct VmmArgs {
    /// Serve the API on this Unix socket (created with mode 0600, removed at exit).
    #[arg(long, value_name = "PATH", required_unless_present = "no_api")]
    api_sock: Option<PathBuf>,
    /// Configure the VM from this file (Firecracker's config JSON: `machine-config`,
    /// `boot-source`, `drives`, `network-interfaces`, `vsock`...) and start it at once.
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// Serve no API (needs --config-file).
    #[arg(long, requires = "config_file", conflicts_with = "api_sock")]
    no_api: bool,
    /// The instance id `GET /` reports.
    #[arg(long, default_value = "husk-vmm")]
    id: String,
    /// Write the guest console to FILE instead of standard output.
    #[arg(long, value_name = "FILE")]
    console: Option<PathBuf>,
    /// When the VM ends, write how (clean end or failure, the guest's last output,
    /// metrics) as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    exit_report: Option<PathBuf>,
    /// Stop the VM when standard input reaches its end (the parent holds a pipe to it,
    /// which closes when the parent goes).
    #[arg(long)]
    die_with_parent: bool,
}

pub(crate) fn vmm(args: VmmArgs) -> CliResult {
    let options = husk::api::server::VmmOptions {
        api_sock: args.api_sock,
        config_file: args.config_file,
        id: args.id,
        console: args
            .console
            .map_or(ConsoleConfig::Stdout, ConsoleConfig::File),
        exit_report: args.exit_report,
        die_with_parent: args.die_with_parent,
    };
    // A signal stops the VM through the same path as a guest exit; the API socket goes.
    husk::sandbox::signals::block()?;
    let report = husk::api::server::run(&options)?;
    report.outcome?;
    Ok(())
}
