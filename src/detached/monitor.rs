//! The monitor process of a detached sandbox: owns its VM, logs the main process's
//! output, serves the control socket, and records how the sandbox ended.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use husk_protocol::ExitStatus;
use serde::{Deserialize, Serialize};

use super::control::serve_client;
use super::{io_err, Request, SandboxDir, State, Status, KILL_TIMEOUT};
use crate::sandbox::{Process, RestoreSandbox, Sandbox, SandboxConfig, Stdio};

pub(super) enum Event {
    MainExited(Result<ExitStatus, String>),
    Stop(&'static str),
}

/// What the monitor's threads share.
pub(super) struct Monitor {
    /// The sandbox's folder.
    pub dir: SandboxDir,
    /// What started it.
    pub request: Request,
    /// `state.json` as last written.
    pub state: Mutex<State>,
    /// The sandbox.
    pub sandbox: Arc<Sandbox>,
    /// Its main process: started with the sandbox, or for a parked one (a pool's) the
    /// one its claim started.
    pub main: OnceLock<Arc<Process>>,
    /// Held while a parked sandbox is being claimed, so only one claim starts a main.
    pub claiming: Mutex<()>,
    /// A parked sandbox that `husk run -d` took (see [`super::adopt`]): its folder and
    /// request from then on.
    pub adopted: OnceLock<Adopted>,
}

/// What a parked sandbox became when `husk run -d` took it.
pub(super) struct Adopted {
    /// Its folder, renamed.
    pub dir: SandboxDir,
    /// Its request as a `husk run -d` of its own would have made it.
    pub request: Request,
}

/// What a detached sandbox's snapshot adds to a sandbox snapshot (`detached.json`): how
/// to run it as a detached sandbox again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetachedSnapshot {
    /// The request the saved sandbox was started with.
    pub request: Request,
    /// Its main process, to adopt.
    pub main_process: u32,
    /// The main process's container.
    pub main_container: String,
}

/// The detached part's file in a snapshot folder.
pub const DETACHED_FILE: &str = "detached.json";

impl Monitor {
    /// The sandbox's folder (renamed, once adopted).
    pub(super) fn dir(&self) -> &SandboxDir {
        self.adopted.get().map_or(&self.dir, |a| &a.dir)
    }

    /// The sandbox's request (its own, once adopted).
    pub(super) fn request(&self) -> &Request {
        self.adopted.get().map_or(&self.request, |a| &a.request)
    }

    /// Record `status` in `state.json`.
    pub(super) fn set_status(&self, status: Status) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.status = status;
        if let Err(e) = self.dir().write_state(&state) {
            log::warn!("{e}");
        }
    }

    /// Pause the guest (`husk pause`).
    pub(super) fn pause(&self) -> Result<String, String> {
        self.sandbox.pause().map_err(|e| crate::error_chain(&e))?;
        self.set_status(Status::Paused);
        Ok("paused".into())
    }

    /// Let the guest run again (`husk resume`).
    pub(super) fn resume(&self) -> Result<String, String> {
        self.sandbox.resume().map_err(|e| crate::error_chain(&e))?;
        self.set_status(Status::Running);
        Ok("running".into())
    }

    /// Save the sandbox into `dir` (`husk snapshot create`, `husk fork`).
    pub(super) fn snapshot_to(&self, dir: &Path, durable: bool) -> Result<String, String> {
        let main = self
            .main
            .get()
            .ok_or("a parked sandbox has no main process to save yet")?;
        let report = self
            .sandbox
            .snapshot_to(dir, durable)
            .map_err(|e| crate::error_chain(&e))?;
        let detached = DetachedSnapshot {
            request: self.request().clone(),
            main_process: main.id(),
            main_container: main.container_id().to_string(),
        };
        let path = dir.join(DETACHED_FILE);
        let json = serde_json::to_vec_pretty(&detached).map_err(|e| e.to_string())?;
        fs::write(&path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(format!(
            "{} KiB of memory, paused {:.0} ms",
            report.memory_written >> 10,
            crate::metrics::ms(report.total)
        ))
    }
}

/// The monitor of `husk run -d` (the hidden `husk __monitor DIR` command): reads a
/// [`Request`] as JSON from stdin, starts the sandbox, prints `ok` (or `error: ...`) on
/// stdout for the waiting `husk run -d`, then serves the control socket until the
/// sandbox ends. Call before any other thread is started (it blocks signals).
pub fn monitor(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    crate::sandbox::signals::block()?;
    let created = Instant::now();
    let mut input = String::new();
    io::stdin().read_to_string(&mut input)?;
    let request: Request = serde_json::from_str(&input)?;
    let dir = SandboxDir {
        name: request.name.clone(),
        path: dir.to_path_buf(),
    };
    let mut state = State {
        name: request.name.clone(),
        image: request.image_ref.clone(),
        command: if request.spec.args.is_empty() {
            request.image.command.clone()
        } else {
            request.spec.args.clone()
        },
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        monitor_pid: std::process::id(),
        status: Status::Starting,
    };
    let parked = request.parked;
    dir.write_state(&state)?;
    let started = start_main(&dir, &request);
    let (sandbox, main, listener) = match started {
        Ok(parts) => parts,
        Err(e) => {
            let message = crate::error_chain(e.as_ref());
            state.status = Status::Failed {
                message: message.clone(),
            };
            dir.write_state(&state)?;
            println!("error: {message}");
            return Ok(());
        }
    };
    state.status = if parked {
        Status::Parked
    } else {
        Status::Running
    };
    dir.write_state(&state)?;
    println!("ok");
    io::stdout().flush()?;
    let monitor = Arc::new(Monitor {
        dir: dir.clone(),
        request,
        state: Mutex::new(state),
        sandbox: sandbox.clone(),
        main: main.map_or_else(OnceLock::new, OnceLock::from),
        claiming: Mutex::new(()),
        adopted: OnceLock::new(),
    });
    if let Some(from) = monitor.request.restore.as_ref().filter(|r| r.remove_after) {
        // A fork's snapshot: the restored VM maps its memory file, which stays
        // readable after the folder is gone.
        drop(fs::remove_dir_all(&from.dir));
    }

    let (events, next) = mpsc::channel();
    // A parked sandbox's main is waited for by the connection that claimed it
    // (`control`), which reports its exit to its client before this loop ends it.
    if let Some(main) = monitor.main.get() {
        let (main, events) = (main.clone(), events.clone());
        std::thread::spawn(move || {
            drop(events.send(Event::MainExited(main.wait().map_err(|e| e.to_string()))));
        });
    }
    if let Some(timeout) = monitor.request.timeout {
        let events = events.clone();
        std::thread::spawn(move || {
            std::thread::sleep(timeout.saturating_sub(created.elapsed()));
            drop(events.send(Event::Stop("--timeout")));
        });
    }
    {
        let events = events.clone();
        std::thread::spawn(move || loop {
            let signal = crate::sandbox::signals::wait();
            // A detached sandbox outlives its terminal: only TERM/INT/QUIT stop it.
            if matches!(signal, libc::SIGTERM | libc::SIGINT | libc::SIGQUIT) {
                drop(events.send(Event::Stop("a signal")));
            }
        });
    }
    {
        let monitor = monitor.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (monitor, events) = (monitor.clone(), events.clone());
                std::thread::spawn(move || serve_client(conn, &monitor, &events));
            }
        });
    }
    let (ended, stopped_by) = match next.recv() {
        Ok(Event::MainExited(result)) => (result, None),
        Ok(Event::Stop(why)) if monitor.main.get().is_none() => {
            // A parked sandbox that was never claimed (`husk pool rm`).
            (Err(format!("stopped by {why}")), Some(why))
        }
        Ok(Event::Stop(why)) => {
            log::warn!("stopping sandbox {} on {why}", monitor.dir().name);
            // Kill the main process first so its exit status is known; the VM's
            // shutdown would kill it too, but a reset can cut its Exited frame off.
            if let Some(main) = monitor.main.get() {
                drop(main.signal(libc::SIGKILL));
            }
            let ended = loop {
                match next.recv_timeout(KILL_TIMEOUT) {
                    Ok(Event::MainExited(result)) => break result,
                    Ok(Event::Stop(_)) => {}
                    Err(_) => break Err(format!("stopped by {why}")),
                }
            };
            (ended, Some(why))
        }
        Err(_) => (Err("the monitor lost its event channel".into()), None),
    };
    // Adopted meanwhile or not, from here on the folder is where it now is.
    let dir = monitor.dir().clone();
    drop(fs::remove_file(dir.control_socket()));
    if let Err(e) = sandbox.stop() {
        log::warn!("stopping the sandbox VM: {e}");
    }
    let status = match ended {
        Ok(status) => Status::Exited {
            code: status.docker_code(),
            oom_killed: status.oom_killed,
        },
        Err(_) if stopped_by.is_some() => Status::Stopped {
            by: stopped_by.unwrap_or_default().to_string(),
        },
        Err(message) => Status::Failed { message },
    };
    drop(sandbox);
    // Empty now (the VM removed its own runtime folder), unless it lives in the folder.
    dir.remove_vm_runtime();
    if monitor.request().remove_on_exit {
        dir.remove()?;
    } else {
        monitor.set_status(status);
    }
    if parked && monitor.main.get().is_some() && monitor.adopted.get().is_none() {
        // A claimed sandbox of a pool: a new one takes its place, now that this one
        // no longer needs the CPU (its client had its exit status before).
        super::pool::refill_pool_of(&dir.path);
    }
    Ok(())
}

type Started = (Arc<Sandbox>, Option<Arc<Process>>, UnixListener);

fn start_main(dir: &SandboxDir, request: &Request) -> Result<Started, Box<dyn std::error::Error>> {
    let mut config = SandboxConfig::new(request.image.clone(), request.kernel.clone());
    if let Some(timeout) = request.timeout {
        config.boot_timeout = timeout;
    }
    config.cpus = request.cpus;
    config.memory_mib = request.memory_mib;
    config.network = request.network;
    config.nat = request.nat.clone();
    config.publish = request.publish.clone();
    config.scratch_disk_mib = request.scratch_disk_mib;
    config.volumes = request.volumes.clone();
    config.disk_rate = request.disk_rate;
    config.net_rate = request.net_rate;
    config.net_vhost = request.net_vhost;
    // A parked sandbox's folder may be renamed (see `super::adopt`): its VM's runtime
    // folder lives elsewhere.
    config.runtime_parent = Some(if request.parked {
        super::adopt::parked_runtime_parent(dir)?
    } else {
        dir.path.clone()
    });
    config.warm = request.warm;
    config.prepared = request.prepared;
    if let Some(console) = &request.console {
        config.console = crate::config::ConsoleConfig::File(console.clone());
    }
    let log = |stderr: bool| dir.open_log(stderr);
    let (sandbox, main) = match &request.restore {
        None if request.parked => (Sandbox::start(config)?, None),
        None => {
            let sandbox = Sandbox::start(config)?;
            let stdio = Stdio {
                stdin: None,
                stdout: Box::new(log(false)?),
                stderr: Box::new(log(true)?),
            };
            let main = sandbox.spawn(&request.spec, stdio)?;
            (sandbox, Some(main))
        }
        Some(from) => {
            let adopt = vec![(
                from.main_process,
                from.main_container.clone(),
                Box::new(log(false)?) as crate::sandbox::Sink,
                Box::new(log(true)?) as crate::sandbox::Sink,
            )];
            let options = RestoreSandbox {
                console: config.console,
                runtime_parent: config.runtime_parent,
                timeout: config.boot_timeout,
                adopt,
                publish: Some(config.publish),
            };
            let (sandbox, mut processes) = Sandbox::restore(&from.dir, options)?;
            let main = processes
                .pop()
                .ok_or("the restored sandbox has no main process")?;
            (sandbox, Some(main))
        }
    };
    let socket = dir.control_socket();
    let listener = UnixListener::bind(&socket).map_err(io_err("cannot listen on", &socket))?;
    Ok((Arc::new(sandbox), main.map(Arc::new), listener))
}
