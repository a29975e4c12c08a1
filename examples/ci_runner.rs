//! A CI runner in miniature: runs a batch of jobs, each in its own husk sandbox (a
//! micro-VM), several at once from one process, and collects every job's output and
//! exit code. The sandboxes start from one template (a snapshot of a booted guest),
//! built once before the first job: no job waits for a kernel to boot; and each takes a
//! VMM process already spawned by a pool (as many as run at once) instead of spawning
//! its own. With `--sandbox-pool`, whole sandboxes are started ahead instead (a
//! `SandboxPool` as large as the batch): a job takes one that waits, restored and its
//! container made ahead, and only sends its command.
//!
//! ```sh
//! cargo run --release --example ci_runner -- [--parallel N] [--kernel VMLINUX]
//!     [--job-timeout SECS] [--console-dir DIR] [--cold | --sandbox-pool]
//! ```
//! The busybox image is built on first use; the kernel defaults to `husk kernel path`;
//! `--cold` boots every sandbox instead. Prints `template=...`, one `job=NAME
//! exit=CODE stdout=...` line per job, then `jobs=N failed=M`, and with
//! `--sandbox-pool` how many jobs took a started sandbox (`pooled_jobs=K`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use std::sync::Arc;

use husk::config::ConsoleConfig;
use husk::sandbox::{SandboxPool, Template, VmmPool};
use husk::{RunSpec, Sandbox, SandboxImage, Stdio};

/// A job: a name, a command, and the exit code it should end with. A job with `exec`
/// starts `command` as a service container and runs `exec` inside it; the job's result
/// is the exec'd command's, and the service is killed afterwards.
struct Job {
    name: &'static str,
    command: &'static [&'static str],
    exec: Option<&'static [&'static str]>,
    expect: i32,
}

const JOBS: &[Job] = &[
    Job {
        name: "build",
        command: &["sh", "-c", "echo compiling; echo done"],
        exec: None,
        expect: 0,
    },
    Job {
        name: "test",
        command: &["sh", "-c", "seq 1 100 | wc -l"],
        exec: None,
        expect: 0,
    },
    Job {
        name: "lint",
        command: &["sh", "-c", "echo 'style error' >&2; exit 3"],
        exec: None,
        expect: 3,
    },
    Job {
        name: "env",
        command: &["sh", "-c", "echo $CI_JOB on $(hostname)"],
        exec: None,
        expect: 0,
    },
    Job {
        name: "service",
        command: &["sh", "-c", "echo up > /tmp/state; exec sleep 600"],
        exec: Some(&[
            "sh",
            "-c",
            "until [ -e /tmp/state ]; do sleep 0.1; done; echo exec sees $(cat /tmp/state) as $CI_JOB; exit 5",
        ]),
        expect: 5,
    },
];

struct Outcome {
    name: &'static str,
    exit: Result<i32, String>,
    expect: i32,
    stdout: String,
    stderr: String,
    seconds: f64,
    /// It took a sandbox the pool had started.
    pooled: bool,
}

/// Settings shared by every job.
#[derive(Clone)]
struct Settings {
    image: SandboxImage,
    kernel: PathBuf,
    /// A job still running after this long is stopped and fails.
    timeout: Duration,
    /// Where each job's guest console goes (`<dir>/<job>.console`), if anywhere.
    console_dir: Option<PathBuf>,
    /// The template every sandbox starts from (`None`: each boots).
    template: Option<Arc<Template>>,
    /// Pre-spawned VMM processes the sandboxes take.
    pool: Arc<VmmPool>,
    /// Sandboxes started ahead (`--sandbox-pool`), taken before starting one.
    sandboxes: Option<Arc<SandboxPool>>,
}

fn run_job(job: &Job, settings: Settings) -> Outcome {
    let start = Instant::now();
    let (stdio, stdout, stderr) = Stdio::capture();
    let mut pooled = false;
    let exit = (|| {
        let mut builder = Sandbox::builder(settings.image, settings.kernel)
            .boot_timeout(settings.timeout)
            .pool(settings.pool.clone());
        if let Some(dir) = &settings.console_dir {
            builder = builder.console(ConsoleConfig::File(
                dir.join(format!("{}.console", job.name)),
            ));
        }
        let taken = settings.sandboxes.as_ref().and_then(|p| p.take());
        pooled = taken.is_some();
        let sandbox = match (taken, &settings.template) {
            (Some(sandbox), _) => Ok(sandbox),
            (None, Some(template)) => template.start(builder.config().clone()),
            (None, None) => builder.warm(false).start(),
        }
        .map_err(|e| e.to_string())?;
        let spec = RunSpec {
            args: job.command.iter().map(|s| s.to_string()).collect(),
            env: vec![format!("CI_JOB={}", job.name)],
            ..RunSpec::default()
        };
        let timed_out = AtomicBool::new(false);
        let status = std::thread::scope(|scope| {
            // A job that overruns is ended from the host; its run then fails. Dropping
            // `done` when the job ends first lets the watchdog go.
            let (done, finished) = mpsc::channel::<()>();
            if let Some(stopper) = sandbox.stopper() {
                let timed_out = &timed_out;
                scope.spawn(move || {
                    if finished.recv_timeout(settings.timeout) == Err(RecvTimeoutError::Timeout) {
                        timed_out.store(true, Ordering::SeqCst);
                        stopper.stop();
                    }
                });
            }
            let status = match job.exec {
                None => sandbox.run(&spec, stdio).map_err(|e| e.to_string()),
                Some(exec) => run_with_exec(&sandbox, &spec, exec, stdio),
            };
            drop(done);
            status
        })
        .map_err(|e| match timed_out.load(Ordering::SeqCst) {
            true => format!("timed out after {:?} ({e})", settings.timeout),
            false => e,
        })?;
        sandbox.stop().map_err(|e| e.to_string())?;
        Ok(status.docker_code())
    })();
    Outcome {
        name: job.name,
        exit,
        expect: job.expect,
        stdout: one_line(&stdout.text()),
        stderr: one_line(&stderr.text()),
        seconds: start.elapsed().as_secs_f64(),
        pooled,
    }
}

/// Start `spec` as a service, run `exec` in its container, then kill the service.
fn run_with_exec(
    sandbox: &Sandbox,
    spec: &RunSpec,
    exec: &[&str],
    stdio: Stdio,
) -> Result<husk::ExitStatus, String> {
    let (service_stdio, ..) = Stdio::capture();
    let service = sandbox
        .spawn(spec, service_stdio)
        .map_err(|e| e.to_string())?;
    let exec_spec = RunSpec {
        args: exec.iter().map(|s| s.to_string()).collect(),
        ..RunSpec::default()
    };
    let status = sandbox
        .exec(service.container_id(), &exec_spec, stdio)
        .and_then(|p| p.wait())
        .map_err(|e| e.to_string())?;
    service.signal(9).map_err(|e| e.to_string())?;
    let ended = service.wait().map_err(|e| e.to_string())?;
    if ended.signal != Some(9) {
        return Err(format!("the service ended with {ended:?}, not SIGKILL"));
    }
    Ok(status)
}

fn one_line(text: &str) -> String {
    text.trim().replace('\n', "\\n")
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let parallel: usize = arg("--parallel").map_or(Ok(2), |p| p.parse())?;
    let kernel = match arg("--kernel") {
        Some(k) => PathBuf::from(k),
        None => husk::kernel::cached(None)?.vmlinux,
    };
    let store = husk::image::ImageStore::open(None)?;
    let image = SandboxImage::from_store(&store.ensure_busybox(false)?);
    let timeout = Duration::from_secs(arg("--job-timeout").map_or(Ok(300), |t| t.parse())?);
    let console_dir = arg("--console-dir").map(PathBuf::from);
    let started = Instant::now();
    let cold = std::env::args().any(|a| a == "--cold");
    let template = match cold {
        true => None,
        false => {
            let config = Sandbox::builder(image.clone(), kernel.clone()).boot_timeout(timeout);
            let template = Template::for_config(config.config())?;
            println!(
                "template={} made_in_ms={:.0} ready_after_ms={:.0}",
                template.info().name,
                template.info().build_ms,
                husk::metrics::ms(started.elapsed())
            );
            Some(Arc::new(template))
        }
    };
    let prototype = Sandbox::builder(image.clone(), kernel.clone());
    let pool = Arc::new(VmmPool::new(parallel.max(1), prototype.config())?);
    let sandboxes = match std::env::args().any(|a| a == "--sandbox-pool") {
        true => {
            let pool = SandboxPool::new(parallel.max(1), prototype.config())?;
            // A runner's steady state: its pool filled while it waited for work.
            pool.wait_ready(parallel.max(1), timeout);
            Some(Arc::new(pool))
        }
        false => None,
    };
    let settings = Settings {
        image,
        kernel,
        timeout,
        console_dir,
        template,
        pool,
        sandboxes: sandboxes.clone(),
    };
    let mut outcomes = Vec::new();
    for batch in JOBS.chunks(parallel.max(1)) {
        let handles: Vec<_> = batch
            .iter()
            .map(|job| {
                let settings = settings.clone();
                std::thread::spawn(move || run_job(job, settings))
            })
            .collect();
        outcomes.extend(handles.into_iter().filter_map(|h| h.join().ok()));
    }
    let mut failed = 0;
    for o in &outcomes {
        let exit = match &o.exit {
            Ok(code) => code.to_string(),
            Err(e) => format!("error({e})"),
        };
        if o.exit.as_ref().ok() != Some(&o.expect) {
            failed += 1;
        }
        println!(
            "job={} exit={exit} expected={} seconds={:.1} stdout={} stderr={}",
            o.name, o.expect, o.seconds, o.stdout, o.stderr
        );
    }
    println!(
        "jobs={} failed={failed} parallel={parallel} wall_seconds={:.1}",
        outcomes.len(),
        started.elapsed().as_secs_f64()
    );
    if sandboxes.is_some() {
        let pooled = outcomes.iter().filter(|o| o.pooled).count();
        println!("pooled_jobs={pooled}");
    }
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
