//! `husk pool add|ls|rm`, and `husk run` claiming a parked sandbox of a pool.

use std::path::Path;
use std::time::Instant;

use clap::Subcommand;
use husk::detached::pool::{self, Claim, Pool, PoolSpec};
use husk::sandbox::{RunSpec, SandboxImage, Stdio};

use crate::forward::ForwardTarget;
use crate::images::{PullPolicy, RegistryArgs};
use crate::run::resolve_image;
use crate::templates::ShapeArgs;
use crate::CliResult;

#[derive(Subcommand)]
pub(crate) enum PoolCommand {
    /// Start SIZE sandboxes of IMAGE now and keep them parked: restored, agent ready,
    /// the container made ahead, waiting. A `husk run` of that image with the same
    /// --cpus, --memory and --kernel, and none of --net, -p, --disk, -v, --disk-rate,
    /// --net-rate, --console, --timeout, --cold or --no-prepared, then claims one
    /// instead of starting a VM: its command runs in it as in a sandbox of its own, the
    /// exit code comes back as soon as the command ends, the sandbox is torn down after,
    /// and a new one is started in the background to take its place. `husk run -d`
    /// takes one the same way: it becomes the detached sandbox of that name, its command
    /// runs as its main process, and a replacement starts at once. Parked sandboxes
    /// cost their memory (a few MiB each beyond what they share) until `husk pool rm`.
    /// Running it again for the same pool sets its size.
    Add {
        /// Sandboxes to keep parked.
        #[arg(long, default_value_t = 1)]
        size: usize,
        #[command(flatten)]
        shape: ShapeArgs,
        #[command(flatten)]
        registry: RegistryArgs,
        /// The image, as `husk run` names it.
        image: String,
    },
    /// List the pools: image, vCPUs, memory, sandboxes parked and the size kept.
    Ls,
    /// Stop a pool's parked sandboxes and remove it (by image as given to `husk pool
    /// add`, or by key from `husk pool ls`); sandboxes already claimed finish their
    /// command.
    Rm {
        /// Every pool.
        #[arg(long, conflicts_with = "pools")]
        all: bool,
        /// Images or keys.
        #[arg(required_unless_present = "all")]
        pools: Vec<String>,
    },
}

pub(crate) fn pool(cmd: PoolCommand) -> CliResult {
    match cmd {
        PoolCommand::Add {
            size,
            shape,
            registry,
            image,
        } => {
            let store = husk::image::ImageStore::open(None)?;
            let resolved = resolve_image(&store, &image, PullPolicy::Missing, &registry)?;
            let spec = PoolSpec {
                image: SandboxImage::from_store(&resolved),
                kernel: std::path::absolute(shape.kernel()?)?,
                cpus: shape.cpus,
                memory_mib: shape.memory,
            };
            let husk = std::env::current_exe()?;
            let mut progress = |n: usize, of: usize, took: std::time::Duration| {
                eprintln!(
                    "husk: parked sandbox {n} of {of} ready ({:.0} ms)",
                    husk::metrics::ms(took)
                );
            };
            let pool = pool::add(&image, spec, size, &husk, &mut progress)?;
            println!("{}", pool.key);
            Ok(())
        }
        PoolCommand::Ls => {
            println!(
                "{:<14} {:<28} {:>4} {:>8} {:>6} {:>5}",
                "KEY", "IMAGE", "CPUS", "MEMORY", "PARKED", "SIZE"
            );
            for pool in Pool::list()? {
                let spec = &pool.file.spec;
                println!(
                    "{:<14} {:<28} {:>4} {:>6}Mi {:>6} {:>5}",
                    pool.key,
                    pool.file.image_ref,
                    spec.cpus,
                    spec.memory_mib,
                    pool.parked(),
                    pool.file.size
                );
            }
            Ok(())
        }
        PoolCommand::Rm { all, pools } => {
            let every = Pool::list()?;
            let mut failed = false;
            for name in &pools {
                if !every
                    .iter()
                    .any(|p| &p.key == name || &p.file.image_ref == name)
                {
                    eprintln!("husk: error: no pool of {name:?} (see `husk pool ls`)");
                    failed = true;
                }
            }
            let chosen = every
                .iter()
                .filter(|p| all || pools.iter().any(|n| n == &p.key || n == &p.file.image_ref));
            for pool in chosen {
                match pool::remove(pool) {
                    Ok(()) => println!("{}", pool.key),
                    Err(e) => {
                        eprintln!("husk: error: {}", crate::render(&e));
                        failed = true;
                    }
                }
            }
            match failed {
                true => Err("not every pool was removed".into()),
                false => Ok(()),
            }
        }
    }
}

/// How `husk run` went through a pool.
pub(crate) enum Pooled {
    /// A parked sandbox ran the command: its exit code.
    Ran(i32),
    /// None was claimed: the caller starts a sandbox of its own, then refills this
    /// pool (if any) so the two do not compete for the CPU.
    NotClaimed(Option<Box<Pool>>),
}

/// `husk run -d` through a pool: a parked sandbox of `spec` becomes the detached
/// sandbox `request` describes, if one can be taken (see `husk::detached::pool::adopt`),
/// and the pool starts its replacement. `Ran(0)` when it did.
pub(crate) fn run_detached_pooled(
    spec: &PoolSpec,
    request: &husk::detached::Request,
) -> Result<Pooled, Box<dyn std::error::Error>> {
    let husk = std::env::current_exe()?;
    let adopt = husk_protocol::Message::Adopt {
        name: request.name.clone(),
        args: request.spec.args.clone(),
        env: request.spec.env.clone(),
        cwd: request.spec.cwd.clone(),
        user: request.spec.user.clone(),
        tty: request.spec.tty,
        remove_on_exit: request.remove_on_exit,
    };
    let claim = pool::adopt(spec, &adopt, &husk)?;
    let Claim::Claimed { pool, .. } = claim else {
        return Ok(not_taken(claim));
    };
    // One sandbox short for good: its replacement starts now.
    refill_after(Some(Box::new(pool)));
    Ok(Pooled::Ran(0))
}

/// What a claim that took no parked sandbox leaves the caller: the pool to refill once
/// it has started a sandbox of its own (a stale pool said so on stderr).
fn not_taken(claim: Claim) -> Pooled {
    match claim {
        Claim::Stale(pool, what) => {
            eprintln!(
                "husk: the pool of {} was made with another {what}: its sandboxes are replaced",
                pool.file.image_ref
            );
            Pooled::NotClaimed(Some(Box::new(pool)))
        }
        Claim::Empty(pool) => Pooled::NotClaimed(Some(Box::new(pool))),
        Claim::NoPool | Claim::Claimed { .. } => Pooled::NotClaimed(None),
    }
}

/// Refill `pool` after a run that did not claim from it (see [`Pooled`]).
pub(crate) fn refill_after(pool: Option<Box<Pool>>) {
    let Some(pool) = pool else { return };
    let refilled = std::env::current_exe()
        .map_err(|e| e.to_string())
        .and_then(|husk| pool.refill(&husk).map_err(|e| e.to_string()));
    if let Err(e) = refilled {
        log::warn!("the pool of {} was not refilled: {e}", pool.file.image_ref);
    }
}

/// `husk run` through a pool: a parked sandbox of `spec` runs `run`, if one can be
/// claimed. Output streams to this process's; signals go to the command once it runs.
pub(crate) fn run_pooled(
    spec: &PoolSpec,
    run: &RunSpec,
    interactive: bool,
    target: &ForwardTarget,
    timings: Option<&Path>,
    (began, resolved): (Instant, Instant),
) -> Result<Pooled, Box<dyn std::error::Error>> {
    let husk = std::env::current_exe()?;
    let claim = pool::claim(spec, run, &husk)?;
    let Claim::Claimed {
        pool,
        mut control,
        connected,
    } = claim
    else {
        return Ok(not_taken(claim));
    };
    let claimed = began.elapsed();
    if let Ok(mut t) = target.lock() {
        *t = Some(Box::new(control.signaller()));
    }
    let status = control.stream(Stdio::inherit(interactive))?;
    let exited = began.elapsed();
    if status.oom_killed {
        eprintln!("husk: the container was killed for exceeding its memory limit");
    }
    // Its monitor starts the next parked sandbox once this one is torn down.
    drop(pool);
    if let Some(path) = timings {
        let ms = husk::metrics::ms;
        let json = serde_json::json!({
            "sandbox": {
                "pooled": true,
                "image_resolved_ms": ms(resolved - began),
                "connected_ms": ms(connected - began),
                "claimed_ms": ms(claimed),
                "process_exited_ms": ms(exited),
            },
            "torn_down_ms": null,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(Pooled::Ran(status.docker_code()))
}
