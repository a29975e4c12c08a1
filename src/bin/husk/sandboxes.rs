//! The commands on detached sandboxes: `exec`, `ps`, `logs`, `stop`, `rm`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::forward::{forward_signals, tty_setup};
use crate::run::ProcessArgs;
use crate::{render, CliResult};

#[derive(Args)]
pub(crate) struct ExecArgs {
    #[command(flatten)]
    process: ProcessArgs,
    /// The sandbox (`husk ps`).
    name: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

pub(crate) fn exec(args: ExecArgs) -> Result<i32, Box<dyn std::error::Error>> {
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

/// How long ago `created` (seconds since the epoch) was: `5s ago`, `3m ago`, `2h ago`.
pub(crate) fn age(created: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let age = now.saturating_sub(created);
    match age {
        0..=119 => format!("{age}s ago"),
        120..=7199 => format!("{}m ago", age / 60),
        _ => format!("{}h ago", age / 3600),
    }
}

pub(crate) fn ps(all: bool) -> CliResult {
    use husk::detached::{describe, SandboxDir};
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
        let created = age(state.created);
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

pub(crate) fn logs(name: &str, follow: bool) -> CliResult {
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

pub(crate) fn stop(names: &[String], grace_secs: u64) -> CliResult {
    let grace = std::time::Duration::from_secs(grace_secs);
    each_sandbox(names, "stop", |name| {
        husk::detached::stop(name, grace).map(drop)
    })
}

pub(crate) fn rm(names: &[String], force: bool) -> CliResult {
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

#[derive(Subcommand)]
pub(crate) enum SnapshotCommand {
    /// Save the running detached sandbox NAME into the new folder DIR: its VM (memory
    /// and state), its scratch disk and how to run it. It is paused meanwhile.
    Create {
        /// The sandbox.
        name: String,
        /// The folder to create.
        dir: PathBuf,
    },
    /// Start a detached sandbox from DIR (made by `husk snapshot create`, by any husk
    /// process, gone or not): its processes run on from where they were.
    Restore {
        /// The snapshot folder.
        dir: PathBuf,
        /// The new sandbox's name [default: husk-XXXXXXXX].
        #[arg(long)]
        name: Option<String>,
    },
}

pub(crate) fn pause(names: &[String], pause: bool) -> CliResult {
    let verb = if pause { "pause" } else { "resume" };
    each_sandbox(names, verb, |name| {
        husk::detached::pause_or_resume(name, pause).map(drop)
    })
}

pub(crate) fn fork(name: &str, new_name: Option<String>) -> CliResult {
    let husk = std::env::current_exe()?;
    let dir = husk::detached::fork(name, new_name, &husk)?;
    println!("{}", dir.name());
    Ok(())
}

pub(crate) fn snapshot(cmd: SnapshotCommand) -> CliResult {
    match cmd {
        SnapshotCommand::Create { name, dir } => {
            let detail = husk::detached::snapshot_create(&name, &dir)?;
            eprintln!("husk: {name} saved to {} ({detail})", dir.display());
        }
        SnapshotCommand::Restore { dir, name } => {
            let husk = std::env::current_exe()?;
            let sandbox = husk::detached::restore_snapshot(&dir, name, &husk)?;
            println!("{}", sandbox.name());
        }
    }
    Ok(())
}
