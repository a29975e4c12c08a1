//! The monitor process of a detached sandbox: owns its VM, logs the main process's
//! output, serves the control socket, and records how the sandbox ended.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use super::control::serve_client;
use super::{io_err, Request, SandboxDir, State, Status, KILL_TIMEOUT};
use crate::sandbox::{Sandbox, SandboxConfig, Stdio};
use husk_protocol::ExitStatus;

pub(super) enum Event {
    MainExited(Result<ExitStatus, String>),
    Stop(&'static str),
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
    state.status = Status::Running;
    dir.write_state(&state)?;
    println!("ok");
    io::stdout().flush()?;

    let (events, next) = mpsc::channel();
    {
        let (main, events) = (main.clone(), events.clone());
        std::thread::spawn(move || {
            drop(events.send(Event::MainExited(main.wait().map_err(|e| e.to_string()))));
        });
    }
    if let Some(timeout) = request.timeout {
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
        let (sandbox, main) = (sandbox.clone(), main.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (sandbox, main, events) = (sandbox.clone(), main.clone(), events.clone());
                std::thread::spawn(move || serve_client(conn, &sandbox, &main, &events));
            }
        });
    }
    let (ended, stopped_by) = match next.recv() {
        Ok(Event::MainExited(result)) => (result, None),
        Ok(Event::Stop(why)) => {
            log::warn!("stopping sandbox {} on {why}", dir.name);
            // Kill the main process first so its exit status is known; the VM's
            // shutdown would kill it too, but a reset can cut its Exited frame off.
            drop(main.signal(libc::SIGKILL));
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
    drop(fs::remove_file(dir.control_socket()));
    if let Err(e) = sandbox.stop() {
        log::warn!("stopping the sandbox VM: {e}");
    }
    state.status = match ended {
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
    if request.remove_on_exit {
        dir.remove()?;
    } else {
        dir.write_state(&state)?;
    }
    Ok(())
}

type Started = (Arc<Sandbox>, Arc<crate::sandbox::Process>, UnixListener);

fn start_main(dir: &SandboxDir, request: &Request) -> Result<Started, Box<dyn std::error::Error>> {
    let mut config = SandboxConfig::new(request.image.clone(), request.kernel.clone());
    if let Some(timeout) = request.timeout {
        config.boot_timeout = timeout;
    }
    config.cpus = request.cpus;
    config.memory_mib = request.memory_mib;
    config.network = request.network;
    config.scratch_disk_mib = request.scratch_disk_mib;
    config.runtime_parent = Some(dir.path.clone());
    config.warm = request.warm;
    if let Some(console) = &request.console {
        config.console = crate::config::ConsoleConfig::File(console.clone());
    }
    let sandbox = Sandbox::start(config)?;
    let log = |stderr: bool| {
        let path = dir.log(stderr);
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err("cannot open", &path))
    };
    let stdio = Stdio {
        stdin: None,
        stdout: Box::new(log(false)?),
        stderr: Box::new(log(true)?),
    };
    let main = sandbox.spawn(&request.spec, stdio)?;
    let socket = dir.control_socket();
    let listener = UnixListener::bind(&socket).map_err(io_err("cannot listen on", &socket))?;
    Ok((Arc::new(sandbox), Arc::new(main), listener))
}
